"""Local disks that refuse writes: a read-only folder stops the run before anything renders (exit 2, naming the
folder), and a disk that fills mid-run fails the row it hit, writes the rows of the videos already stored, gives
the lease back and exits 5; a rerun on a disk with room resumes.  The disks are tmpfs mounts the tests make
(root ignores permission bits, not a read-only mount or a full one)."""

import subprocess
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ditfarm.commands.cli import main as cli
from ditfarm.jobs.results import read_all_results, read_results

pytestmark = [pytest.mark.s3, pytest.mark.process]

PROMPT = "red circle moving left on blue background"


@pytest.fixture
def mount_tmpfs():
    """mount_tmpfs(path, size, read_only=False): a tmpfs at ``path``, unmounted after the test."""
    mounted = []

    def mount(path, size: str, read_only: bool = False):
        path.mkdir(parents=True, exist_ok=True)
        options = f"size={size}" + (",ro" if read_only else "")
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], check=True, capture_output=True)
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def manifest(path, n: int):
    pq.write_table(pa.table({"id": [f"v{i:02d}" for i in range(n)], "prompt": [PROMPT] * n}), path)
    return path


def test_a_read_only_videos_folder_stops_the_run_before_anything_renders(tmp_path, mount_tmpfs, capsys):
    out = tmp_path / "out"
    mount_tmpfs(out / "videos", "1m", read_only=True)
    rc = cli(["render", str(manifest(tmp_path / "m.parquet", 3)), "--out", str(out), "--steps", "2", "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err
    # (the path as shown has the moto secret "test", which the s3_endpoint fixture may have set, redacted)
    assert "cannot write to output folder " in err and "/out/videos: Read-only file system" in err, err
    assert "Traceback" not in err
    assert not (out / "results").exists() or not any((out / "results").iterdir())
    assert not (out / "lease.json").exists()


def test_a_read_only_temp_folder_stops_an_s3_run_before_anything_renders(
    tmp_path, mount_tmpfs, s3_endpoint, monkeypatch, capsys
):
    import tempfile

    import boto3

    bucket = "ro-tmp"
    boto3.client("s3").create_bucket(Bucket=bucket)
    temp = mount_tmpfs(tmp_path / "tmp", "1m", read_only=True)
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    rc = cli(
        [
            "render",
            str(manifest(tmp_path / "m.parquet", 2)),
            "--out",
            f"s3://{bucket}/out",
            "--steps",
            "2",
            "--no-progress",
        ]
    )
    assert rc == 2
    err = capsys.readouterr().err
    # (the path is shown with the moto secret "test" redacted, as every message is)
    assert "cannot write to the temporary folder " in err and "/tmp (where videos are encoded" in err, err
    assert "Read-only file system" in err
    assert boto3.client("s3").list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0


def test_a_disk_that_fills_mid_run_keeps_the_stored_videos_rows_releases_the_lease_and_exits_5(
    tmp_path, mount_tmpfs, capsys
):
    out = mount_tmpfs(tmp_path / "disk", "1300k") / "out"
    source = manifest(tmp_path / "m.parquet", 40)
    # rows are flushed at the end, so the writes mid-run are the videos': one of them meets the full disk
    args = ["render", str(source), "--out", str(out), "--steps", "2", "--no-progress", "--flush-every", "40"]
    assert cli(args) == 5
    err = capsys.readouterr().err
    assert "the output's disk is full" in err and "their rows are written" in err and "it resumes" in err, err
    assert "Traceback" not in err
    videos = {p.stem for p in (out / "videos").glob("*.mp4")}
    assert 3 <= len(videos) < 40  # the disk filled partway
    rows = read_all_results(out).to_pylist()
    assert {r["id"] for r in rows if r["status"] == "ok"} == videos  # every stored video has its row
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(failed) == 1 and "No space left on device" in failed[0]["error"], failed
    assert not (out / "lease.json").exists()  # given back: the rerun need not wait for it to lapse
    assert not list(out.glob(".tmp-*")) and not list((out / "videos").glob(".tmp-*"))

    subprocess.run(["mount", "-o", "remount,size=8m", str(tmp_path / "disk")], check=True)
    assert cli(args) == 0
    rows = read_all_results(out).to_pylist()
    ok = Counter(r["id"] for r in rows if r["status"] == "ok")
    assert sorted(ok) == [f"v{i:02d}" for i in range(40)] and set(ok.values()) == {1}  # each id ok exactly once
    assert {r["status"] for r in read_results(out).to_pylist()} == {"ok"}
