"""Stored bytes are checked by content: a row records its video's digest (S3's ETag as written, a local file's
sha256 and time), a rerun renders again a video replaced by other bytes of the same size (on S3 from the listing
alone, downloading nothing), and `ditfarm status` checks the videos as the rerun does and prints ids safely."""

import os
import uuid
from pathlib import Path

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ditfarm.commands.cli import main as cli
from ditfarm.jobs.results import read_results
from ditfarm.storage.stores import s3_client

pytestmark = [pytest.mark.s3, pytest.mark.process]

RED = "red circle moving left on blue background"


def ok_rows(out) -> dict:
    return {r["id"]: r for r in read_results(out).to_pylist() if r["status"] == "ok"}


def test_a_local_video_replaced_by_bytes_of_its_size_is_rendered_again(tmp_path, capsys):
    manifest, out = tmp_path / "m.parquet", tmp_path / "out"
    pq.write_table(pa.table({"id": ["swapped", "touched", "same"], "prompt": [RED] * 3}), manifest)
    base = ["render", str(manifest), "--out", str(out), "--steps", "1", "--no-progress"]
    assert cli(base) == 0
    rows = ok_rows(out)
    assert all(r["video_digest"].startswith("sha256:") and r["video_mtime_ns"] for r in rows.values())
    swapped, touched = out / "videos" / "swapped.mp4", out / "videos" / "touched.mp4"
    swapped.write_bytes(os.urandom(swapped.stat().st_size))  # same size, other bytes
    stamp = touched.stat().st_mtime_ns + 5 * 10**9
    os.utime(touched, ns=(stamp, stamp))  # a copy or a touch: a new time, the same bytes
    capsys.readouterr()

    assert cli(["status", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "3 ids: 3 ok" in printed
    assert "videos: 2 of 3 ok id(s) stored as their rows recorded them; 1 missing or changed since" in printed
    assert "swapped" in printed.split("missing or changed")[1].splitlines()[0]
    assert cli([*base, "--dry-run"]) == 0 and "would render 1, would skip 2" in capsys.readouterr().out

    assert cli(base) == 0
    assert "1 ok, 0 failed, 2 skipped" in capsys.readouterr().out
    after = ok_rows(out)
    assert after["swapped"]["finished_at"] > rows["swapped"]["finished_at"]
    assert after["touched"]["finished_at"] == rows["touched"]["finished_at"]


def test_an_s3_video_replaced_by_bytes_of_its_size_is_rendered_again_from_the_listing_alone(
    s3_endpoint, tmp_path, capsys
):
    bucket = f"bytes-{uuid.uuid4().hex[:8]}"
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=bucket)
    manifest, out = tmp_path / "m.parquet", f"s3://{bucket}/run"
    pq.write_table(pa.table({"id": ["swapped", "same"], "prompt": [RED] * 2}), manifest)
    base = ["render", str(manifest), "--out", out, "--steps", "1", "--no-progress"]
    assert cli(base) == 0
    rows = ok_rows(out)
    head = s3.head_object(Bucket=bucket, Key="run/videos/swapped.mp4")
    assert rows["swapped"]["video_digest"] == "etag:" + head["ETag"].strip('"')
    s3.put_object(Bucket=bucket, Key="run/videos/swapped.mp4", Body=os.urandom(head["ContentLength"]))
    capsys.readouterr()

    fetched = []  # every GET of an object: status and the dry run (the run's own decision) download no video
    client = s3_client()
    handler = lambda params, **_: fetched.append(params["Key"])  # noqa: E731
    client.meta.events.register("before-parameter-build.s3.GetObject", handler)
    try:
        assert cli(["status", out]) == 0
        assert "1 missing or changed since (a rerun renders them again): swapped" in capsys.readouterr().out
        assert cli([*base, "--dry-run"]) == 0 and "would render 1, would skip 1" in capsys.readouterr().out
    finally:
        client.meta.events.unregister("before-parameter-build.s3.GetObject", handler)
    assert fetched and not [key for key in fetched if "/videos/" in key], fetched  # results were read, no video
    assert cli(base) == 0
    assert "1 ok, 0 failed, 1 skipped" in capsys.readouterr().out
    assert ok_rows(out)["same"]["finished_at"] == rows["same"]["finished_at"]


def test_status_prints_ids_and_errors_with_control_characters_escaped(tmp_path, capsys):
    manifest, out = tmp_path / "m.parquet", tmp_path / "out"
    nasty = "bad\x00id\nwith\x1b[2Jescape"
    pq.write_table(pa.table({"id": ["fine", nasty], "prompt": [RED] * 2}), manifest)
    assert cli(["render", str(manifest), "--out", str(out), "--steps", "1", "--no-progress"]) == 1
    capsys.readouterr()
    assert cli(["status", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "\x00" not in printed and "\x1b" not in printed
    failed = [line for line in printed.splitlines() if line.startswith("  failed ")]
    assert len(failed) == 1 and "bad\\x00id\\nwith\\x1b[2Jescape" in failed[0], printed
    assert Path(out / "videos" / "fine.mp4").exists()
