"""Object storage end to end on moto's real S3 server (127.0.0.1): manifests in, videos and results out."""

import io
import os
import uuid

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import CountingRenderer

from ditfarm.commands.cli import main as cli
from ditfarm.jobs.driver import RenderSettings, render_manifest
from ditfarm.jobs.manifest import Manifest, ManifestError, RenderTask, RowProblem
from ditfarm.jobs.results import read_all_results, read_results
from ditfarm.pipelines.video_io import read_mp4
from ditfarm.storage.errors import StorageError
from ditfarm.storage.stores import S3Store

pytestmark = [pytest.mark.ray, pytest.mark.s3]

GOOD = "red circle moving left on blue background"


@pytest.fixture
def s3(s3_endpoint):
    return boto3.client("s3")


@pytest.fixture
def bucket(s3):
    name = "b-" + uuid.uuid4().hex[:12]
    s3.create_bucket(Bucket=name)
    return name


def put_parquet(s3, bucket, key, table):
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    s3.put_object(Bucket=bucket, Key=key, Body=buffer.getvalue())
    return f"s3://{bucket}/{key}"


def keys(s3, bucket, prefix=""):
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def unfinished_uploads(s3, bucket):
    return s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])


def test_manifest_from_an_object_a_prefix_and_a_local_folder(s3, bucket, tmp_path):
    first = pa.table({"id": ["a", "b"], "prompt": [GOOD, GOOD], "tag": ["x", "y"]})
    second = pa.table({"id": ["c", "a"], "prompt": [GOOD, GOOD], "tag": ["z", "w"]})
    put_parquet(s3, bucket, "m/part-0.parquet", first)
    put_parquet(s3, bucket, "m/part-1.parquet", second)
    s3.put_object(Bucket=bucket, Key="m/README.txt", Body=b"not a manifest")  # ignored: not .parquet
    (tmp_path / "m").mkdir()
    pq.write_table(first, tmp_path / "m" / "part-0.parquet")
    pq.write_table(second, tmp_path / "m" / "part-1.parquet")
    for source in (f"s3://{bucket}/m/", f"s3://{bucket}/m", str(tmp_path / "m")):
        manifest = Manifest(source, batch_size=1)  # one row per batch: duplicates are caught across batches too
        rows = list(manifest)
        assert manifest.num_rows == 4 and manifest.extra_columns == ["tag"]
        assert [r.id for r in rows] == ["a", "b", "c", "a"]
        assert all(isinstance(r, RenderTask) for r in rows[:3]) and isinstance(rows[3], RowProblem)
        assert rows[3].error == "row 3 (part-1.parquet row 1; id 'a'): id duplicates row 0"  # the first wins
    single = list(Manifest(f"s3://{bucket}/m/part-1.parquet"))
    assert [r.id for r in single] == ["c", "a"] and all(isinstance(r, RenderTask) for r in single)


@pytest.mark.parametrize(
    "make, fragment",
    [
        (lambda s3, b: f"s3://{b}/missing.parquet", "does not exist"),
        (lambda s3, b: f"s3://{b}/nothing-here/", "does not exist"),
        (
            lambda s3, b: (
                s3.put_object(Bucket=b, Key="x.parquet", Body=b"hello, not parquet") and f"s3://{b}/x.parquet"
            ),
            "is not a readable Parquet file",
        ),
        (lambda s3, b: put_parquet(s3, b, "n.parquet", pa.table({"id": ["a"]})), "missing required column(s) prompt"),
        (
            lambda s3, b: put_parquet(s3, b, "t.parquet", pa.table({"id": ["a"], "prompt": [GOOD], "seed": ["1"]})),
            "column 'seed' has type string; expected an integer type",
        ),
        (
            lambda s3, b: s3.put_object(Bucket=b, Key="e/readme.txt", Body=b"x") and f"s3://{b}/e/",
            "no .parquet objects",
        ),
    ],
)
def test_manifest_problems_on_s3_stop_the_run_before_anything_renders(s3, bucket, make, fragment, capsys):
    source = make(s3, bucket)
    with pytest.raises(ManifestError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        Manifest(source)
    assert cli(["render", source, "--out", f"s3://{bucket}/out", "--no-progress"]) == 2
    assert fragment in capsys.readouterr().err
    assert keys(s3, bucket, "out/") == []


def test_unreachable_endpoint_and_missing_output_bucket_are_clear(s3, bucket, tmp_path, monkeypatch, capsys):
    manifest = put_parquet(s3, bucket, "m.parquet", pa.table({"id": ["a"], "prompt": [GOOD]}))
    assert cli(["render", manifest, "--out", "s3://no-such-bucket-here/out", "--no-progress"]) == 2
    assert "NoSuchBucket" in capsys.readouterr().err
    local = tmp_path / "m.parquet"
    pq.write_table(pa.table({"id": ["a"], "prompt": [GOOD]}), local)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    assert cli(["render", manifest, "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    assert "cannot be read" in capsys.readouterr().err
    assert cli(["render", str(local), "--out", f"s3://{bucket}/out", "--no-progress"]) == 2
    assert "endpoint cannot be reached" in capsys.readouterr().err
    assert not (tmp_path / "o" / "videos").exists() or not any((tmp_path / "o" / "videos").iterdir())


def test_s3_in_s3_out_resume_and_rerender_of_deleted_videos(s3, bucket, random_model_folder):
    rows = {
        "id": ["v0", "v1", "bad", "v3"],
        "prompt": [GOOD, GOOD, "purple circle moving left on blue background", GOOD],
        "batch": ["a", "a", "b", "b"],
    }
    manifest = put_parquet(s3, bucket, "in/m.parquet", pa.table(rows))
    out = f"s3://{bucket}/runs/one"
    settings = RenderSettings(model=str(random_model_folder), steps=1, upscale=2)
    renderer = CountingRenderer(settings)
    first = render_manifest(manifest, out, settings, renderer=renderer, progress=False)
    assert (first.ok, first.failed, first.skipped) == (3, 1, 0)
    assert keys(s3, bucket, "runs/one/videos/") == [f"runs/one/videos/{v}.mp4" for v in ("v0", "v1", "v3")]
    body = s3.get_object(Bucket=bucket, Key="runs/one/videos/v1.mp4")["Body"].read()
    path = f"/tmp/{uuid.uuid4().hex}.mp4"
    with open(path, "wb") as f:
        f.write(body)
    assert read_mp4(path).shape == (8, 64, 64, 3)
    os.unlink(path)
    table = read_results(out)
    by_id = {r["id"]: r for r in table.to_pylist()}
    assert by_id["v1"]["uri"] == f"{out}/videos/v1.mp4" and by_id["v1"]["batch"] == "a"
    assert by_id["bad"]["status"] == "failed" and "purple" in by_id["bad"]["error"]

    renderer.rendered.clear()
    again = render_manifest(manifest, out, settings, renderer=renderer, progress=False)
    assert renderer.rendered == ["bad"] and (again.ok, again.failed, again.skipped) == (0, 1, 3)

    for vid in ("v0", "v3"):
        s3.delete_object(Bucket=bucket, Key=f"runs/one/videos/{vid}.mp4")
    renderer.rendered.clear()
    third = render_manifest(manifest, out, settings, renderer=renderer, progress=False)
    assert renderer.rendered == ["v0", "bad", "v3"] and third.ok == 2
    latest = {r["id"]: r["status"] for r in read_results(out).to_pylist()}
    assert latest == {"v0": "ok", "v1": "ok", "bad": "failed", "v3": "ok"}
    parts = keys(s3, bucket, "runs/one/results/")
    assert all(k.startswith("runs/one/results/part-") and k.endswith(".parquet") for k in parts)
    videos = [f"runs/one/videos/{v}.mp4" for v in ("v0", "v1", "v3")]
    assert keys(s3, bucket) == sorted(parts + videos + ["in/m.parquet", "runs/one/report.html"])


def test_a_failed_multipart_upload_fails_the_row_and_leaves_nothing(s3, bucket, monkeypatch, tmp_path):
    import ditfarm.storage.stores as storage

    monkeypatch.setattr(storage, "MULTIPART_THRESHOLD", 5 * 1024 * 1024)  # S3's smallest part
    store = S3Store(bucket, "out")
    calls = []

    def refuse_second_part(params, **kwargs):
        calls.append(params.get("PartNumber"))
        if len(calls) == 2:
            raise ConnectionError("injected: the connection dropped")

    store.client.meta.events.register("before-parameter-build.s3.UploadPart", refuse_second_part)
    with pytest.raises(StorageError, match="cannot upload s3://.*/out/videos/big.mp4"):
        store.store_video("big", lambda path: path.write_bytes(os.urandom(11 * 1024 * 1024)))
    assert len(calls) >= 2
    assert keys(s3, bucket) == [] and unfinished_uploads(s3, bucket) == []
    assert store.store_video("small", lambda path: path.write_bytes(b"x" * 100)).uri.endswith("/out/videos/small.mp4")


def test_dry_run_counts_groups_and_writes_nothing(s3, bucket, random_model_folder, capsys):
    ids = ["v0", "v1", "dup", "dup", "bad word", "purple", "size", "empty", "v8"]
    prompts = [GOOD, GOOD, GOOD, GOOD, GOOD, "purple circle moving left on blue background", GOOD, "", GOOD]
    table = pa.table({"id": ids, "prompt": prompts, "height": pa.array([None] * 6 + [30, None, None], pa.int64())})
    manifest = put_parquet(s3, bucket, "m.parquet", table)
    out = f"s3://{bucket}/out"
    assert (
        render_manifest(
            put_parquet(s3, bucket, "first.parquet", table.slice(0, 1)),
            out,
            RenderSettings(model=str(random_model_folder), steps=1, upscale=2),
            progress=False,
        ).ok
        == 1
    )
    before = keys(s3, bucket)
    dry = ["render", manifest, "--out", out, "--dry-run", "--model", str(random_model_folder)]
    assert cli([*dry, "--steps", "1", "--upscale", "2"]) == 1  # as v0 was rendered: it would be skipped
    printed = capsys.readouterr().out
    assert "9 rows: would render 3, would skip 1 (already ok), would fail 5" in printed
    assert "1 x id duplicates row 2: row 3 (id 'dup')" in printed
    assert "unknown word(s) 'purple'" in printed and "row 5 (id 'purple')" in printed
    assert "multiples of the patch size" in printed and "row 6 (id 'size')" in printed
    assert "prompt is empty: row 7 (id 'empty')" in printed and "row 4 (id 'bad word')" in printed
    assert keys(s3, bucket) == before  # nothing written
    clean = put_parquet(s3, bucket, "clean.parquet", table.slice(0, 2))
    assert cli(["render", clean, "--out", out, "--dry-run", "--model", str(random_model_folder)]) == 0


def test_python_api_strings_dicts_tables_and_frames(tmp_path, random_model_folder):
    import pandas as pd

    import ditfarm

    out = tmp_path / "api"
    common = dict(out=out, model=str(random_model_folder), steps=1, upscale=2)
    rows = list(ditfarm.render([GOOD, "white square moving up on green gradient background"], **common))
    assert [r["status"] for r in rows] == ["ok", "ok"] and rows[0]["id"].startswith("p-")
    again = list(ditfarm.render([GOOD], **common))  # rows come back as videos finish: either may be first
    assert again[0]["status"] == "skipped" and again[0]["id"] in {r["id"] for r in rows}  # same request, same id
    other = list(ditfarm.render([GOOD], **{**common, "steps": 2}))
    assert other[0]["status"] == "ok" and other[0]["id"] not in {r["id"] for r in rows}  # other settings, other id

    dicts = list(ditfarm.render([{"id": "d1", "prompt": GOOD, "seed": 3, "tag": "t"}], **common))
    assert dicts[0]["status"] == "ok" and dicts[0]["seed"] == 3 and dicts[0]["tag"] == "t"
    table_rows = list(ditfarm.render(pa.table({"id": ["t1"], "prompt": [GOOD]}), **common))
    frame_rows = list(ditfarm.render(pd.DataFrame({"id": ["f1", "f2"], "prompt": [GOOD, "purple"]}), **common))
    assert table_rows[0]["status"] == "ok" and {r["id"]: r["status"] for r in frame_rows} == {
        "f1": "ok",
        "f2": "failed",
    }
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.table({"id": ["m1"], "prompt": [GOOD]}), manifest)
    assert [r["status"] for r in ditfarm.render(str(manifest), **common)] == ["ok"]

    latest = ditfarm.read_results(out)
    assert sorted(latest.column("id").to_pylist()) == sorted(
        [rows[0]["id"], rows[1]["id"], other[0]["id"], "d1", "t1", "f1", "f2", "m1"]
    )

    with pytest.raises(ManifestError, match="missing required column"):  # raises at the call, before rendering
        ditfarm.render(pa.table({"id": ["x"], "text": [GOOD]}), **common)
    with pytest.raises(TypeError, match="unknown setting"):
        ditfarm.render([GOOD], **common, stepz=3)


def test_results_are_flushed_by_time_while_videos_take_long(tmp_path):
    import time

    from ditfarm.jobs.driver import render_tasks
    from ditfarm.jobs.manifest import RenderTask
    from ditfarm.types import RenderedVideo

    out = tmp_path / "slow"
    seen_parts = []

    class SlowRenderer:
        capacity = 1

        def render(self, task, settings, location):
            seen_parts.append(len(list((out / "results").glob("part-*.parquet"))))
            time.sleep(0.6)
            uri = location.open().store_video(task.id, lambda p: p.write_bytes(b"mp4")).uri
            return RenderedVideo(uri, task.seed, 1, 2, 2, 1, "fake", 0.0)

    tasks = [RenderTask(row=i, id=f"s{i}", prompt=GOOD, seed=i) for i in range(4)]
    settings = RenderSettings(flush_every=1000, flush_seconds=0.3)
    summary = render_tasks(tasks, out, settings, renderer=SlowRenderer(), progress=False)
    assert summary.ok == 4
    assert seen_parts[-1] >= 2  # rows reached the store during the run, not only at its end
    assert read_all_results(out).num_rows == 4


def test_status_prints_counts_and_failed_rows(s3, bucket, random_model_folder, capsys):
    table = pa.table(
        {"id": ["s0", "s1", "sbad"], "prompt": [GOOD, GOOD, "purple circle moving left on blue background"]}
    )
    manifest = put_parquet(s3, bucket, "m.parquet", table)
    out = f"s3://{bucket}/out"
    render_manifest(manifest, out, RenderSettings(model=str(random_model_folder), steps=1, upscale=2), progress=False)
    capsys.readouterr()
    assert cli(["status", out]) == 0
    printed = capsys.readouterr().out
    assert f"{out}: 3 ids: 1 failed, 2 ok" in printed
    assert "failed sbad: row 2 (id 'sbad'): unknown word(s) 'purple'" in printed
    assert "lease: free" in printed
    from ditfarm.storage.lease import Lease
    from ditfarm.storage.stores import open_output

    held = Lease(open_output(out), "run-live").acquire()
    assert cli(["status", out]) == 0
    assert f"lease: held by run run-live (host {held.holder.host}, pid {held.holder.pid}" in capsys.readouterr().out
    held.release()
    assert cli(["status", "s3://no-such-bucket-at-all/out"]) == 2
    assert "NoSuchBucket" in capsys.readouterr().err


def test_cli_s3_output_goes_to_the_bucket_not_a_local_folder(
    s3, bucket, tmp_path, random_model_folder, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.table({"id": ["c0"], "prompt": [GOOD]}), manifest)
    out = f"s3://{bucket}/cli"
    args = ["render", str(manifest), "--out", out, "--model", str(random_model_folder), "--steps", "1", "--no-progress"]
    assert cli(args) == 0
    assert f"1 ok, 0 failed, 0 skipped; videos in {out}/videos, results in {out}/results" in capsys.readouterr().out
    assert keys(s3, bucket, "cli/videos/") == ["cli/videos/c0.mp4"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.parquet"]  # no local folder named "s3:"


def test_gangs_carry_which_store_but_never_a_key(monkeypatch, tmp_path):
    """Ray writes runtime env variables to its logs and state API, so ranks get the endpoint, region, profile and
    the path of a credentials file from the driver, and find keys and tokens on their own node."""
    from ditfarm.jobs.gang_renderer import gang_config

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1234")
    monkeypatch.setenv("AWS_PROFILE", "farm")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    for name, value in [
        ("AWS_ACCESS_KEY_ID", "AKIDX"),
        ("AWS_SECRET_ACCESS_KEY", "s3cr3t-value"),
        ("AWS_SESSION_TOKEN", "t0ken-value"),
        ("AWS_SECURITY_TOKEN", "t0ken-value"),
        ("AWS_SOME_FUTURE_SECRET", "future-value"),
    ]:
        monkeypatch.setenv(name, value)
    env = dict(gang_config(RenderSettings(sp=2, gangs=1)).env_vars)
    assert env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:1234" and env["AWS_PROFILE"] == "farm"
    assert env["AWS_SHARED_CREDENTIALS_FILE"] == str(tmp_path / "credentials")
    assert not {
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_SOME_FUTURE_SECRET",
    } & set(env)
    assert not any(v.endswith("-value") for v in env.values())
    assert all(k.startswith(("AWS_", "DITFARM_")) for k in env)


def test_a_credentials_file_others_can_read_is_refused_and_an_owner_only_one_works(
    s3, bucket, tmp_path, monkeypatch, capsys
):
    """The file every node reads its key from (AWS_SHARED_CREDENTIALS_FILE) must be its owner's alone."""
    manifest = put_parquet(s3, bucket, "m.parquet", pa.table({"id": ["a"], "prompt": [GOOD]}))
    credentials = tmp_path / "credentials"
    credentials.write_text("[default]\naws_access_key_id = test\naws_secret_access_key = test\n")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    credentials.chmod(0o644)
    out = f"s3://{bucket}/creds-out"
    assert cli(["render", manifest, "--out", out, "--no-progress", "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert f"the credentials file {credentials}" in err and "mode 0644" in err and "chmod 600" in err, err
    assert keys(s3, bucket, "creds-out/") == []
    credentials.chmod(0o600)
    assert cli(["render", manifest, "--out", out, "--no-progress", "--steps", "1"]) == 0
    assert keys(s3, bucket, "creds-out/videos/") == ["creds-out/videos/a.mp4"]


def test_a_job_whose_runtime_env_carries_a_key_is_told_so(monkeypatch, caplog):
    import ray

    from ditfarm.jobs.gang_renderer import warn_of_credentials_in_job_env

    class Context:
        def __init__(self, env_vars):
            self.runtime_env = {"env_vars": env_vars}

    monkeypatch.setattr(ray, "get_runtime_context", lambda: Context({"AWS_ENDPOINT_URL": "http://x"}))
    warn_of_credentials_in_job_env()
    assert "runtime environment carries" not in caplog.text
    monkeypatch.setattr(
        ray,
        "get_runtime_context",
        lambda: Context({"AWS_SECRET_ACCESS_KEY": "s3cr3t-value", "AWS_ACCESS_KEY_ID": "AKIDX"}),
    )
    warn_of_credentials_in_job_env()
    assert "runtime environment carries AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY" in caplog.text
    assert "s3cr3t-value" not in caplog.text and "rotate" in caplog.text


def test_overwrite_renders_everything_again_and_an_upload_failure_fails_only_its_row(
    s3, bucket, random_model_folder, monkeypatch
):
    table = pa.table({"id": ["w0", "w1", "w2"], "prompt": [GOOD] * 3})
    manifest = put_parquet(s3, bucket, "m.parquet", table)
    out = f"s3://{bucket}/out"
    settings = RenderSettings(model=str(random_model_folder), steps=1, upscale=2)
    renderer = CountingRenderer(settings)
    assert render_manifest(manifest, out, settings, renderer=renderer, progress=False).ok == 3
    renderer.rendered.clear()
    again = render_manifest(manifest, out, settings, renderer=renderer, progress=False, overwrite=True)
    assert renderer.rendered == ["w0", "w1", "w2"] and (again.ok, again.skipped) == (3, 0)

    upload = S3Store._upload

    def refuse_w1(self, path, key, expected_etag):
        if key.endswith("/w1.mp4"):
            raise StorageError(f"cannot upload s3://{self.bucket}/{key}: SlowDown (injected)")
        return upload(self, path, key, expected_etag)

    monkeypatch.setattr(S3Store, "_upload", refuse_w1)
    s3.delete_object(Bucket=bucket, Key="out/videos/w1.mp4")
    s3.delete_object(Bucket=bucket, Key="out/videos/w2.mp4")
    third = render_manifest(manifest, out, settings, renderer=renderer, progress=False)
    assert (third.ok, third.failed, third.skipped) == (1, 1, 1)
    assert "row 1 (id 'w1'): cannot upload" in third.errors[0] and "SlowDown" in third.errors[0]
    rows = read_all_results(out).to_pylist()
    assert [(r["id"], r["status"]) for r in rows[-2:]] in (
        [("w1", "failed"), ("w2", "ok")],
        [("w2", "ok"), ("w1", "failed")],
    )
    assert keys(s3, bucket, "out/videos/") == ["out/videos/w0.mp4", "out/videos/w2.mp4"]
    # an id's state is its best row: w1's earlier ok row wins over the failed rerun, and the rerun renders it again
    assert {r["id"]: r["status"] for r in read_results(out).to_pylist()} == {"w0": "ok", "w1": "ok", "w2": "ok"}
    monkeypatch.setattr(S3Store, "_upload", upload)
    fourth = render_manifest(manifest, out, settings, renderer=renderer, progress=False)
    assert (fourth.ok, fourth.skipped) == (1, 2)


def test_off_a_terminal_progress_is_one_plain_line_per_interval(tmp_path, capsys):
    import re
    import time

    from ditfarm.jobs.driver import RenderJob
    from ditfarm.jobs.manifest import RenderTask
    from ditfarm.types import RenderedVideo

    class SlowRenderer:
        capacity = 1

        def gang_health(self):
            return (2, 1)

        def render(self, task, settings, location):
            time.sleep(0.5)
            uri = location.open().store_video(task.id, lambda p: p.write_bytes(b"mp4")).uri
            return RenderedVideo(uri, task.seed, 1, 2, 2, 1, "fake", 0.25)

    tasks = [RenderTask(row=i, id=f"p{i}", prompt=GOOD, seed=i) for i in range(4)]
    job = RenderJob(
        tasks, tmp_path / "out", RenderSettings(), renderer=SlowRenderer(), total=4, progress=True, progress_seconds=0.3
    )
    assert job.run().ok == 4
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("progress: ")]
    assert 4 <= len(lines) <= 12  # about one per 0.3 s over ~2 s, plus the last; no bar fragments
    assert lines[-1].startswith("progress: 4/4 rows: 4 ok, 0 failed, 0 skipped; ")
    assert re.search(r"[0-9.]+ videos/min; ETA 0\.0 min; gangs 2 alive, 1 replaced; cache skipped 25\.0%$", lines[-1])
    assert "\r" not in capsys.readouterr().err


def test_status_of_an_output_that_does_not_exist_says_so_and_exits_2(s3, bucket, tmp_path, capsys):
    for out in (str(tmp_path / "never-written"), f"s3://{bucket}/never-written"):
        assert cli(["status", out]) == 2
        assert f"{out} does not exist" in capsys.readouterr().err
    assert cli(["status", "s3://no-such-bucket-here/out"]) == 2
    assert "NoSuchBucket" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()  # a folder a run is about to fill: no results yet, not an error
    assert cli(["status", str(tmp_path / "empty")]) == 0
    assert "no results yet" in capsys.readouterr().out


def test_a_missing_bucket_or_missing_credentials_for_a_manifest_are_said_as_such(
    s3, bucket, tmp_path, monkeypatch, capsys
):
    from ditfarm.storage import stores as storage

    assert cli(["render", "s3://no-such-bucket-here/m.parquet", "--out", str(tmp_path / "o"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "NoSuchBucket" in err and "not a readable Parquet file" not in err, err
    manifest = put_parquet(s3, bucket, "m.parquet", pa.table({"id": ["a"], "prompt": [GOOD]}))
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    storage._cached_client.cache_clear()
    assert cli(["render", manifest, "--out", str(tmp_path / "o"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "no AWS credentials found" in err and "no answer within" not in err, err


def test_render_rows_dropped_unread_warn_that_nothing_was_rendered(tmp_path):
    import gc
    import warnings

    import ditfarm

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows = ditfarm.render([GOOD], out=str(tmp_path / "never"), steps=1)
        del rows
        gc.collect()
        assert [w for w in caught if "never read, so nothing was rendered" in str(w.message)]
        caught.clear()
        rows = ditfarm.render([GOOD], out=str(tmp_path / "read"), steps=1)
        assert [r["status"] for r in rows] == ["ok"] and rows.summary.ok == 1
        del rows
        gc.collect()
        assert not [w for w in caught if "never read" in str(w.message)]
    assert not (tmp_path / "never" / "videos").exists() or not any((tmp_path / "never" / "videos").iterdir())


def test_a_stored_video_is_read_back_by_head_or_by_listing_where_reading_is_refused(s3_endpoint, monkeypatch):
    """Before each upload the store reads the key (the upload's condition): with one HEAD (a keyed lookup), or,
    once a HEAD is refused (credentials that may write the videos but not read them), with a listing of the key.
    After it, the upload's ETag (the file's MD5) vouches for the bytes; an upload whose answer carries none is read
    back, and a size that differs from what was written is an error naming both."""
    from pathlib import Path

    from botocore.exceptions import ClientError

    bucket = "readback-" + uuid.uuid4().hex[:8]
    boto3.client("s3").create_bucket(Bucket=bucket)
    store = S3Store(bucket, "run")
    calls = []
    real_head, real_list = store.client.head_object, store.client.list_objects_v2

    def head(**kwargs):
        calls.append("head")
        return real_head(**kwargs)

    def refused(**kwargs):
        calls.append("head refused")
        raise ClientError({"Error": {"Code": "403"}, "ResponseMetadata": {"HTTPStatusCode": 403}}, "HeadObject")

    def listing(**kwargs):
        calls.append("list")
        return real_list(**kwargs)

    monkeypatch.setattr(store.client, "list_objects_v2", listing)
    monkeypatch.setattr(store.client, "head_object", head)
    assert store.store_video("a", lambda path: Path(path).write_bytes(b"x" * 100)).size == 100
    monkeypatch.setattr(store.client, "head_object", refused)
    assert store.store_video("b", lambda path: Path(path).write_bytes(b"y" * 50)).size == 50
    assert store.store_video("c", lambda path: Path(path).write_bytes(b"z" * 7)).size == 7
    # each video's key is read once, before its upload (the upload's condition; the upload's own ETag, an MD5 of
    # the file, then vouches for the bytes stored): a HEAD, refused once, then listing only
    assert calls == ["head", "head refused", "list", "list"], calls

    short = S3Store(bucket, "short")
    monkeypatch.setattr(
        short,
        "_upload",
        lambda path, key, expected: real_list.__self__.put_object(Bucket=bucket, Key=key, Body=b"short") and "",
    )
    with pytest.raises(StorageError, match=r"videos/d.mp4 holds 5 bytes after its upload of 100"):
        short.store_video("d", lambda path: Path(path).write_bytes(b"x" * 100))
