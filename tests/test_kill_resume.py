"""A driver SIGKILLed mid-manifest, then rerun: exactly one ``ok`` row and one video per good id, and nothing
unfinished left behind (no temporary files, no multipart uploads), on S3 and on a local folder.  While the
killed run's lease is fresh, a second run refuses; once it is stale, the rerun takes over."""

import io
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ditfarm.jobs.results import read_all_results

pytestmark = [pytest.mark.s3, pytest.mark.process]

PROMPTS = ["red circle moving left on blue background", "white square moving up on green gradient background"]
N = 10


def manifest_table():
    ids = [f"k{i}" for i in range(N)] + ["bad"]
    prompts = [PROMPTS[i % 2] for i in range(N)] + ["purple circle moving left on blue background"]
    return pa.table({"id": ids, "prompt": prompts})


def start(manifest: str, out: str, model, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ditfarm.commands.cli",
            "render",
            manifest,
            "--out",
            out,
            "--model",
            str(model),
            "--steps",
            "12",
            "--upscale",
            "2",
            "--flush-every",
            "3",
            "--no-progress",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def kill_after(proc: subprocess.Popen, count_videos, videos: int, timeout_s: float = 240, meanwhile=None) -> int:
    deadline = time.monotonic() + timeout_s
    while count_videos() < videos:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the driver stored too few videos in time"
        if meanwhile is not None and count_videos() >= 1:
            meanwhile()
            meanwhile = None
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return count_videos()


def check_exactly_once(out: str) -> None:
    rows = read_all_results(out).to_pylist()
    ok = Counter(r["id"] for r in rows if r["status"] == "ok")
    assert ok == Counter({f"k{i}": 1 for i in range(N)}), ok


@pytest.mark.parametrize("where", ["s3", "local"])
def test_sigkill_of_the_driver_then_rerun_renders_each_id_exactly_once(
    where, s3_endpoint, random_model_folder, tmp_path
):
    s3 = boto3.client("s3")
    if where == "s3":
        bucket = "kill-" + uuid.uuid4().hex[:10]
        s3.create_bucket(Bucket=bucket)
        buffer = io.BytesIO()
        pq.write_table(manifest_table(), buffer)
        s3.put_object(Bucket=bucket, Key="m.parquet", Body=buffer.getvalue())
        manifest, out = f"s3://{bucket}/m.parquet", f"s3://{bucket}/out"

        def count_videos():
            return s3.list_objects_v2(Bucket=bucket, Prefix="out/videos/").get("KeyCount", 0)
    else:
        manifest, out = str(tmp_path / "m.parquet"), str(tmp_path / "out")
        pq.write_table(manifest_table(), manifest)

        def count_videos():
            folder = tmp_path / "out" / "videos"
            return (
                len([p for p in folder.iterdir() if p.name.endswith(".mp4") and not p.name.startswith(".")])
                if folder.is_dir()
                else 0
            )

    def refused(proc: subprocess.Popen, holder_pid: int) -> None:
        """A run on an output another live run holds refuses at once, naming the holder; it renders nothing."""
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 2, stderr
        assert "is held by run " in stderr and f"pid {holder_pid}" in stderr and "--force" in stderr, stderr

    # 40 steps (the last --steps wins): the refusal check starts a second CLI beside the holder, which on a loaded
    # machine takes as long as many 12-step videos, and the holder must not finish before the kill
    holder = start(manifest, out, random_model_folder, "--lease-seconds", "12", "--steps", "40")
    stored = kill_after(
        holder, count_videos, 4, meanwhile=lambda: refused(start(manifest, out, random_model_folder), holder.pid)
    )
    assert 4 <= stored < N
    # SIGKILLed on this host: its lease is still fresh, but its process is gone (pid and start time), so the next run
    # takes over at once instead of waiting the 12 s (tests/test_lease.py: a holder elsewhere waits for the ttl)
    ok_rows = [r for r in read_all_results(out).to_pylist() if r["status"] == "ok"]
    assert len(ok_rows) <= stored  # a row is written only after its video is stored
    if where == "s3":  # what a driver killed during a multipart upload leaves behind
        s3.create_multipart_upload(Bucket=bucket, Key="out/videos/k9.mp4")
    else:
        (tmp_path / "out" / "videos" / ".tmp-dead-k9.mp4").write_bytes(b"half a video")

    # the rest, quickly: fewer steps, and ids alone count (a row rendered at 40 steps is not rendered again)
    rerun = start(manifest, out, random_model_folder, "--steps", "2", "--resume-by-id")
    stdout, stderr = rerun.communicate(timeout=600)
    assert rerun.returncode == 1, stderr  # the bad row fails again; nothing else does
    check_exactly_once(out)
    if where == "s3":  # (the lease was given back at the end: no lease.json)
        keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="out/")["Contents"])
        videos = [k for k in keys if k.startswith("out/videos/")]
        assert videos == sorted(f"out/videos/k{i}.mp4" for i in range(N))
        others = [k for k in keys if k not in videos and k != "out/report.html"]
        fences = [k for k in others if k.startswith("out/results/fence-") and k.endswith(".json")]
        assert len(fences) == 1, others  # the take-over fenced the killed run's parts
        assert all(k.startswith("out/results/part-") and k.endswith(".parquet") for k in others if k not in fences)
        assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    else:
        names = sorted(os.listdir(tmp_path / "out" / "videos"))
        assert names == sorted(f"k{i}.mp4" for i in range(N))
        results = os.listdir(tmp_path / "out" / "results")
        assert len([n for n in results if n.startswith("fence-")]) == 1, results  # the killed run, fenced
        assert all(n.startswith(("part-", "fence-")) for n in results), results
        assert sorted(os.listdir(tmp_path / "out")) == ["report.html", "results", "videos"]  # no lease left


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_or_ctrl_c_stops_within_seconds_keeps_stored_rows_and_a_rerun_resumes(
    signum, code, random_model_folder, tmp_path
):
    manifest, out = str(tmp_path / "m.parquet"), str(tmp_path / "out")
    pq.write_table(manifest_table(), manifest)
    videos = tmp_path / "out" / "videos"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ditfarm.commands.cli",
            "render",
            manifest,
            "--out",
            out,
            "--model",
            str(random_model_folder),
            "--steps",
            "40",
            "--upscale",
            "2",
            "--no-progress",
        ],  # default flush: nothing is written before the stop
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 240
    while not (videos.is_dir() and len([p for p in videos.iterdir() if not p.name.startswith(".")]) >= 2):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    sent = time.monotonic()
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr
    assert time.monotonic() - sent < 10, "the stop waited for the video in flight"
    assert "stopped by" in stderr and "resumes" in stderr
    ok = [r["id"] for r in read_all_results(out).to_pylist() if r["status"] == "ok"]
    assert len(ok) >= 2  # the rows of stored videos were flushed on the way out
    assert all((videos / f"{i}.mp4").exists() for i in ok)
    rerun = start(manifest, out, random_model_folder, "--steps", "2", "--resume-by-id")
    rerun.communicate(timeout=600)
    assert rerun.returncode == 1  # the bad row
    check_exactly_once(out)


def test_every_video_a_stopped_run_stored_has_its_row_at_any_moment_of_the_stop(random_model_folder, tmp_path):
    """SIGTERM at six moments of a run whose videos finish every second or so (two in flight): a video either lands
    with its row or is not stored, the lease is given back and the page written, and the next run resumes."""
    manifest, out = str(tmp_path / "m.parquet"), tmp_path / "out"
    ids = [f"t{i:02d}" for i in range(40)]
    pq.write_table(pa.table({"id": ids, "prompt": [PROMPTS[i % 2] for i in range(40)]}), manifest)
    videos = out / "videos"

    def stored() -> set[str]:
        return {p.stem for p in videos.glob("*.mp4") if not p.name.startswith(".")} if videos.is_dir() else set()

    delays = [0.0, 0.13, 0.37, 0.55, 0.71, 0.9]  # after the first new video lands: mid-loop, mid-encode, mid-publish
    for delay in delays:
        before = len(stored())
        proc = start(manifest, str(out), random_model_folder, "--steps", "3", "--flush-every", "1000")
        deadline = time.monotonic() + 240
        while len(stored()) <= before:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.02)
        time.sleep(delay)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 143, stderr
        ok = {r["id"] for r in read_all_results(str(out)).to_pylist() if r["status"] == "ok"}
        assert stored() == ok, (delay, sorted(stored() ^ ok))  # no video without its row, no row without its video
        assert not (out / "lease.json").exists() and (out / "report.html").exists()
