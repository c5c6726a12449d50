"""One run per output: the lease refuses a second live run (naming the holder), is taken over once stale by
exactly one contender, is lost by a holder that stopped renewing, and is given back at the end, on a local folder
and on S3 (moto, which honours If-None-Match and If-Match)."""

import threading
import time
import uuid

import boto3
import pytest
from helpers import CountingRenderer

from ditfarm.jobs.driver import RenderJob, RenderSettings, prompt_task
from ditfarm.jobs.results import read_results
from ditfarm.storage.lease import LEASE_NAME, Holder, Lease, LeaseHeld, LeaseLost, current_holder, lease_object
from ditfarm.storage.stores import open_output

pytestmark = [pytest.mark.s3, pytest.mark.process]


@pytest.fixture(params=["local", "s3"])
def out(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "out")
    request.getfixturevalue("s3_endpoint")
    bucket = "lease-" + uuid.uuid4().hex[:10]
    boto3.client("s3").create_bucket(Bucket=bucket)
    return f"s3://{bucket}/out"


def test_a_second_run_refuses_naming_the_holder_and_may_take_the_lease_once_it_is_given_back(out):
    store = open_output(out)
    first = Lease(store, "run-one").acquire()
    with pytest.raises(LeaseHeld) as refused:
        Lease(store, "run-two").acquire()
    message = str(refused.value)
    assert "held by run run-one" in message and f"pid {first.holder.pid}" in message and "--force" in message
    assert current_holder(store).holder.run_id == "run-one"
    first.release()
    assert current_holder(store) is None  # removed, not just marked
    second = Lease(store, "run-two").acquire()
    assert second.took_over is None and current_holder(store).holder.run_id == "run-two"
    second.release()


def test_a_stale_lease_is_taken_over_and_its_old_holder_learns_it_lost(out):
    store = open_output(out)
    dead = Lease(store, "run-dead", ttl_s=1.0).acquire()  # never renews: as if SIGKILLed
    with pytest.raises(LeaseHeld):
        Lease(store, "run-early").acquire()
    time.sleep(2.2)  # S3's Last-Modified has one-second resolution
    taker = Lease(store, "run-new").acquire()
    assert taker.took_over.run_id == "run-dead"
    assert dead.renew() is False and dead.lost.run_id == "run-new"
    with pytest.raises(LeaseLost, match="taken over by run run-new"):
        dead.check()
    dead.release()  # must not remove the new holder's lease
    assert current_holder(store).holder.run_id == "run-new"
    assert taker.renew() is True and current_holder(store).holder.renewals == 1
    taker.release()


def test_renewal_keeps_a_lease_fresh_past_its_ttl(out):
    store = open_output(out)
    with Lease(store, "run-live", ttl_s=2.0):  # renews every 0.5 s
        time.sleep(3.5)
        with pytest.raises(LeaseHeld):
            Lease(store, "run-late").acquire()
        assert current_holder(store).holder.renewals >= 3
    assert current_holder(store) is None


def test_a_renewal_interrupted_after_its_write_is_recognised_as_this_runs_own(out, monkeypatch):
    """A stop signal raised between a renewal's write and the run recording the new version leaves the run with
    a stale version of a lease that names it: its next renewal (the stop's flush) goes on instead of reporting
    the output taken over by its own run."""
    store = open_output(out)
    lease = Lease(store, "run-own", ttl_s=60.0).acquire()
    obj, written = lease.obj, []
    real_replace = obj.replace

    def replace_then_stop(data, version):
        written.append(real_replace(data, version))
        raise KeyboardInterrupt  # what the stop handler raises, after the write landed

    monkeypatch.setattr(obj, "replace", replace_then_stop)
    with pytest.raises(KeyboardInterrupt):
        lease.renew()
    monkeypatch.setattr(obj, "replace", real_replace)
    assert written[0] is not None and current_holder(store).holder.renewals == 1
    assert lease.renew() is True and lease.lost is None
    lease.check()
    assert current_holder(store).holder.renewals == 2
    lease.release()
    assert current_holder(store) is None


def test_force_takes_a_live_lease(out):
    store = open_output(out)
    live = Lease(store, "run-live").acquire()
    forced = Lease(store, "run-forced", force=True).acquire()
    assert forced.took_over.run_id == "run-live"
    assert live.renew() is False
    forced.release()


def test_an_unreadable_lease_is_treated_as_held_until_stale(tmp_path):
    store = open_output(str(tmp_path / "out"))
    store.check_writable()
    (tmp_path / "out" / LEASE_NAME).write_text("not json")
    with pytest.raises(LeaseHeld, match="unreadable lease"):
        Lease(store, "run-two").acquire()
    Lease(store, "run-forced", force=True).acquire().release()


def test_an_empty_lease_older_than_a_few_seconds_is_debris_and_the_next_run_takes_it(out, monkeypatch, capsys):
    """A run killed (or a disk that filled) between creating lease.json and writing it leaves an empty file: after a
    few seconds it holds nothing back, and status says the output is free."""
    import ditfarm.storage.lease as lease_module
    from ditfarm.commands.cli import main as cli

    store = open_output(out)
    store.check_writable()
    store.conditional(LEASE_NAME).create(b"")
    with pytest.raises(LeaseHeld, match="unreadable lease"):  # a moment old: perhaps a holder writing it now
        Lease(store, "run-early").acquire()
    monkeypatch.setattr(lease_module, "DEBRIS_AGE_S", 0.5)  # S3's Last-Modified cannot be set back: wait instead
    time.sleep(1.5)
    assert cli(["status", out]) == 0
    assert "lease: free (lease.json is empty or unreadable" in capsys.readouterr().out
    taken = Lease(store, "run-after").acquire()
    assert taken.version is not None and taken.took_over is None  # no run to fence: debris names none
    taken.release()


def test_of_two_runs_that_see_a_stale_lease_exactly_one_takes_it(tmp_path):
    store = open_output(str(tmp_path / "out"))
    store.check_writable()
    for trial in range(20):
        stale = Holder(run_id=f"dead-{trial}", host="h", pid=1, ray_job=None, started_at="?", ttl_s=0.0)
        (tmp_path / "out" / LEASE_NAME).write_bytes(stale.to_bytes())
        time.sleep(0.01)
        barrier, won, refused = threading.Barrier(2), [], []

        def contend(name, barrier=barrier, won=won, refused=refused):
            barrier.wait()
            try:
                won.append(Lease(store, name).acquire())
            except LeaseHeld:
                refused.append(name)

        threads = [threading.Thread(target=contend, args=(f"run-{trial}-{i}",)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(won) == 1 and len(refused) == 1, (won, refused)
        assert current_holder(store).holder.run_id == won[0].holder.run_id
        won[0].release()


def test_a_job_that_loses_its_lease_stops_before_rendering_beside_the_new_holder(tmp_path):
    out = str(tmp_path / "out")
    tasks = [prompt_task("red circle moving left on blue background", video_id=f"v{i}") for i in range(6)]
    settings = RenderSettings(steps=4, upscale=1)
    renderer = CountingRenderer(settings)
    job = RenderJob(tasks, out, settings, renderer=renderer, progress=False, lease_ttl_s=600)
    rows = iter(job)
    next(rows)
    Lease(job.store, "run-intruder", force=True).acquire()
    assert job.lease.renew() is False  # what the renewal thread sees at its next turn
    with pytest.raises(LeaseLost, match="run-intruder"):
        list(rows)
    assert len(renderer.rendered) <= 1 + renderer.capacity  # those in flight may finish; nothing new starts
    assert lease_object(job.store).read().holder.run_id == "run-intruder"  # its lease is left alone


def test_an_unstarted_job_gives_its_lease_back_when_dropped(tmp_path):
    out = str(tmp_path / "out")
    job = RenderJob(
        [prompt_task("red circle moving left on blue background")],
        out,
        RenderSettings(),
        renderer=object(),
        progress=False,
    )
    assert current_holder(job.store) is not None
    store = job.store
    del job
    assert current_holder(store) is None


def test_a_run_killed_on_this_host_is_taken_over_at_once_and_status_says_its_process_is_gone(tmp_path, capsys):
    """kill -9 leaves the lease behind; its holder's pid and start time on this host show the process is gone, so
    the next run takes over at once (not after the ttl) and `ditfarm status` says why."""
    import os
    import signal
    import subprocess
    import sys

    import pyarrow as pa
    import pyarrow.parquet as pq

    from ditfarm.commands.cli import main as cli

    manifest, out = tmp_path / "m.parquet", tmp_path / "out"
    pq.write_table(
        pa.table({"id": [f"k{i}" for i in range(50)], "prompt": ["red circle moving left on blue background"] * 50}),
        manifest,
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ditfarm.commands.cli",
            "render",
            str(manifest),
            "--out",
            str(out),
            "--steps",
            "30",
            "--no-progress",
            "--lease-seconds",
            "600",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not (out / LEASE_NAME).exists() or not (out / "videos").exists():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    seen = current_holder(open_output(out))
    assert seen is not None and not seen.holder.released and seen.age_s < 600 and seen.holder.gone()
    assert cli(["status", str(out)]) == 0
    assert "its process is gone from this host: the next run takes it over at once" in capsys.readouterr().out
    started = time.monotonic()
    lease = Lease(open_output(out), "next-run", ttl_s=600).acquire()
    assert time.monotonic() - started < 5 and lease.took_over is not None and lease.took_over.pid == proc.pid
    lease.release()


def test_a_live_holder_a_reused_pid_and_another_host(tmp_path):
    import dataclasses
    import os

    from ditfarm.storage.lease import this_process

    live = Holder(
        run_id="r",
        host=__import__("socket").gethostname(),
        pid=os.getpid(),
        ray_job=None,
        started_at="-",
        ttl_s=120,
        process=this_process(),
    )
    assert not live.gone()  # this very process
    boot_ns_pid, start = live.process.rsplit(":", 1)
    assert dataclasses.replace(live, process=f"{boot_ns_pid}:{int(start) + 1}").gone()  # the pid was reused since
    assert not dataclasses.replace(live, host="another-host", process=f"{boot_ns_pid}:1").gone()  # nothing known
    assert not dataclasses.replace(live, process=None).gone()  # a holder from before identities: the ttl decides


@pytest.fixture
def lossy_s3(s3_endpoint, monkeypatch):
    """An S3 output reached through a FaultProxy (tests/fault_proxy.py)."""
    from fault_proxy import FaultProxy

    bucket = "lossy-" + uuid.uuid4().hex[:10]
    boto3.client("s3").create_bucket(Bucket=bucket)
    proxy = FaultProxy(s3_endpoint)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    yield proxy, f"s3://{bucket}/out"
    proxy.close()


def test_a_lease_write_whose_answer_is_lost_is_recognised_as_this_runs_own(lossy_s3):
    """The create, a renewal and the release each land, their answers are lost, and botocore's retry gets 412: the
    run reads the lease back, finds its own bytes and goes on, instead of taking itself for another run."""
    proxy, out = lossy_s3
    store = open_output(out)

    def lease_put(method, path):
        return method == "PUT" and path.split("?")[0].endswith("/out/lease.json")

    proxy.add("lose", lease_put)
    lease = Lease(store, "run-own").acquire()  # the create
    assert lease.version is not None and lease.took_over is None
    proxy.add("lose", lease_put)
    assert lease.renew() is True and lease.lost is None  # a renewal
    lease.ensure_held()
    proxy.add("lose", lease_put)
    proxy.add("lose", lambda method, path: method == "DELETE" and "/out/lease.json" in path)
    lease.release()  # the write that marks it released, then its removal: both answers lost
    assert current_holder(store) is None  # given back, not left behind
    puts = [status for method, path, status in proxy.seen if lease_put(method, path)]
    assert puts.count("lose") == 3 and puts.count(412) >= 3, puts  # each retry was refused: the write had landed
    assert ("DELETE", "lose") in [(m, status) for m, path, status in proxy.seen if "/out/lease.json" in path]
    Lease(store, "run-next").acquire().release()  # free at once for the next run


def test_an_upload_stalled_past_a_take_over_never_lands_over_the_new_holders_video(
    lossy_s3, random_model_folder, monkeypatch
):
    """Run A checks its lease and starts uploading; the upload stalls (held by the proxy) while A's lease goes
    stale and run B takes the output over and stores the same id; then A's upload reaches S3.  It must not land:
    B's row and the stored bytes agree, and A is told it lost the lease."""
    import threading

    from ditfarm.jobs.driver import render_tasks
    from ditfarm.storage.lease import LeaseFence

    proxy, out = lossy_s3
    slow = open_output(out)  # run A, through the proxy
    lease_a = Lease(slow, "run-A", ttl_s=2.0).acquire()  # never renewed: it goes stale while A is stalled
    release = threading.Event()
    proxy.add(("delay", release), lambda method, path: method == "PUT" and "/out/videos/x.mp4" in path)
    outcome = {}

    def store_a():
        try:
            outcome["a"] = slow.store_video(
                "x", lambda path: path.write_bytes(b"A" * 20000), fence=lambda: LeaseFence("run-A").check(slow)
            )
        except Exception as err:  # noqa: BLE001 - what A is told is the assertion
            outcome["a"] = err

    runner = threading.Thread(target=store_a)
    runner.start()
    assert proxy.delaying.wait(60)  # A passed its lease check; its upload is on the wire, held back
    time.sleep(4)  # A's lease is stale now (S3 dates its objects to the second)
    host, port = proxy.target
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{host}:{port}")  # run B reaches S3 itself
    settings = RenderSettings(model=str(random_model_folder), steps=1)
    summary = render_tasks([prompt_task("red circle moving left on blue background", video_id="x")], out, settings)
    assert summary.ok == 1
    release.set()  # A's upload reaches S3 now
    runner.join(timeout=120)
    assert isinstance(outcome["a"], LeaseLost), outcome
    row = [r for r in read_results(out).to_pylist() if r["id"] == "x"][0]
    bucket, key = out[len("s3://") :].split("/", 1)
    head = boto3.client("s3").head_object(Bucket=bucket, Key=f"{key}/videos/x.mp4")
    assert row["video_digest"] == "etag:" + head["ETag"].strip('"') and row["video_bytes"] == head["ContentLength"]
    assert head["ContentLength"] != 20000  # B's video, not A's bytes
    lease_a.version = None  # A's lease is B's now; nothing of A's to give back


def test_a_report_write_stalled_past_a_newer_one_never_replaces_it(lossy_s3, monkeypatch):
    import threading

    proxy, out = lossy_s3
    slow = open_output(out)  # through the proxy, which holds its PUT back
    release = threading.Event()
    proxy.add(("delay", release), lambda method, path: method == "PUT" and path.split("?")[0].endswith("/report.html"))
    runner = threading.Thread(target=slow.write_text, args=("report.html", "older run's page"))
    runner.start()
    assert proxy.delaying.wait(60)
    host, port = proxy.target
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{host}:{port}")
    open_output(out).write_text("report.html", "newer run's page")
    release.set()
    runner.join(timeout=60)
    bucket, key = out[len("s3://") :].split("/", 1)
    page = boto3.client("s3").get_object(Bucket=bucket, Key=f"{key}/report.html")["Body"].read().decode()
    assert page == "newer run's page"
