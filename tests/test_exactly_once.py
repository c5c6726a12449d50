"""Nothing wrong recorded as ok: a failed or truncated encode is never published (the row fails by name and a
rerun renders it), an ok row whose stored video is gone or cut short is rendered again, a run paused past its
lease publishes nothing after it wakes and exits with its own code, and a duplicate manifest row never hides the
first occurrence's video."""

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ditfarm.jobs.driver import LocalRenderer, RenderSettings, render_manifest
from ditfarm.jobs.results import read_all_results, read_results
from ditfarm.pipelines.video_io import EncodeError, read_mp4, write_mp4

pytestmark = [pytest.mark.process]

PROMPTS = ["red circle moving left on blue background", "white square moving up on green gradient background"]
REAL_FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()

# A stand-in for ffmpeg: encodes with the real one, then does what a full disk or a killed encoder does.
FAKE_FFMPEG = """#!/bin/bash
out="${@: -1}"
if [ "$out" = "-" ]; then exec "%(real)s" "$@"; fi   # reading a file back: the real one
"%(real)s" "$@" || exit $?
case "%(fault)s" in
  truncate) truncate -s 16384 "$out" ;;           # exit 0, a cut-short file (the disk filled up)
  fail) truncate -s 16384 "$out"; exit 1 ;;       # the encoder says it failed
esac
"""


@pytest.fixture
def faulty_encoder(tmp_path, monkeypatch):
    def install(fault: str):
        script = tmp_path / f"ffmpeg-{fault}"
        script.write_text(FAKE_FFMPEG % {"real": REAL_FFMPEG, "fault": fault})
        script.chmod(0o755)
        monkeypatch.setattr(imageio_ffmpeg, "get_ffmpeg_exe", lambda: str(script))

    return install


def frames(t: int = 24, size: int = 64) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (t, size, size, 3), dtype=np.uint8)  # noise: many bytes per frame


@pytest.mark.parametrize("fault", ["truncate", "fail"])
def test_a_failed_or_cut_short_encode_raises_and_leaves_nothing(fault, faulty_encoder, tmp_path):
    faulty_encoder(fault)
    target = tmp_path / "v.mp4"
    with pytest.raises(EncodeError):
        write_mp4(frames(), target)
    assert list(tmp_path.glob("*.mp4")) == [] and not any(p.name.startswith(".v.mp4") for p in tmp_path.iterdir())


def test_a_whole_encode_reads_back_with_every_frame(tmp_path):
    path = write_mp4(frames(t=10, size=32), tmp_path / "v.mp4")
    assert read_mp4(path).shape == (10, 32, 32, 3)


def write_manifest(path: Path, ids: list[str]) -> None:
    pq.write_table(pa.table({"id": ids, "prompt": [PROMPTS[i % 2] for i in range(len(ids))]}), path)


@pytest.fixture
def tiny_job(tmp_path, random_model_folder):
    manifest, out = tmp_path / "m.parquet", tmp_path / "out"
    write_manifest(manifest, ["e0", "e1", "e2"])
    settings = RenderSettings(model=str(random_model_folder), steps=2, upscale=2)
    renderer = LocalRenderer(settings)
    return lambda: render_manifest(manifest, out, settings, renderer=renderer, progress=False), out


def test_a_bad_encode_fails_its_row_by_name_and_the_rerun_renders_it(tiny_job, faulty_encoder, monkeypatch):
    run, out = tiny_job
    faulty_encoder("truncate")
    summary = run()
    assert (summary.ok, summary.failed) == (0, 3)
    assert all("does not read back as a whole video" in e for e in summary.errors), summary.errors
    assert not (out / "videos").exists() or [p for p in (out / "videos").iterdir()] == []
    monkeypatch.setattr(imageio_ffmpeg, "get_ffmpeg_exe", lambda: REAL_FFMPEG)
    again = run()
    assert (again.ok, again.failed, again.skipped) == (3, 0, 0)
    assert {r["id"]: r["status"] for r in read_results(out).to_pylist()} == {"e0": "ok", "e1": "ok", "e2": "ok"}


def test_an_ok_row_whose_video_is_gone_or_cut_short_is_rendered_again(tiny_job):
    run, out = tiny_job
    assert run().ok == 3
    rows = {r["id"]: r for r in read_results(out).to_pylist()}
    assert all(r["video_bytes"] == (out / "videos" / f"{i}.mp4").stat().st_size for i, r in rows.items())
    (out / "videos" / "e0.mp4").unlink()
    with open(out / "videos" / "e1.mp4", "r+b") as f:
        f.truncate(100)
    again = run()
    assert (again.ok, again.skipped) == (2, 1)
    assert all(read_mp4(out / "videos" / f"{i}.mp4").shape[0] == 8 for i in ("e0", "e1", "e2"))


def test_a_duplicate_id_never_hides_the_first_rows_video(tmp_path, random_model_folder, capsys):
    from ditfarm.commands.cli import main as cli

    manifest, out = tmp_path / "m.parquet", tmp_path / "out"
    write_manifest(manifest, ["d0", "d1", "d0"])
    settings = RenderSettings(model=str(random_model_folder), steps=2, upscale=2)
    renderer = LocalRenderer(settings)
    for _ in range(2):  # the rerun skips d0 and d1 and does not record the duplicate again
        summary = render_manifest(manifest, out, settings, renderer=renderer, progress=False)
        assert summary.duplicates == 1 and summary.failed == 0
    assert {r["id"]: r["status"] for r in read_results(out).to_pylist()} == {"d0": "ok", "d1": "ok"}
    statuses = Counter((r["id"], r["status"]) for r in read_all_results(out).to_pylist())
    assert statuses[("d0", "duplicate")] == 1 and statuses[("d0", "ok")] == 1
    capsys.readouterr()
    assert cli(["status", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "2 ids: 2 ok" in printed and "1 duplicate manifest row(s)" in printed and "id duplicates row 0" in printed


@pytest.mark.slow
def test_a_run_paused_past_its_lease_publishes_nothing_after_it_wakes(tmp_path, random_model_folder):
    """SIGSTOP a run, let a second run take its stale lease over and finish, SIGCONT the first: it stops at its
    next write with exit 3 (lease lost), and every id has exactly one counted ok row and one video."""
    manifest, out = tmp_path / "m.parquet", tmp_path / "out"
    ids = [f"p{i}" for i in range(8)]
    write_manifest(manifest, ids)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def start(*extra):
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ditfarm.commands.cli",
                "render",
                str(manifest),
                "--out",
                str(out),
                "--model",
                str(random_model_folder),
                "--steps",
                "6",
                "--upscale",
                "2",
                "--flush-every",
                "1",
                "--lease-seconds",
                "4",
                "--no-progress",
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )

    def stored() -> int:
        folder = out / "videos"
        return (
            len([p for p in folder.iterdir() if p.suffix == ".mp4" and not p.name.startswith(".")])
            if folder.is_dir()
            else 0
        )

    first = start()
    deadline = time.monotonic() + 240
    while stored() < 2:
        assert first.poll() is None, first.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    first.send_signal(signal.SIGSTOP)
    try:
        time.sleep(6)  # past the 4 s ttl: the lease looks abandoned
        second = start()
        out2, err2 = second.communicate(timeout=300)
        assert second.returncode == 0, err2[-3000:]
    finally:
        first.send_signal(signal.SIGCONT)
    out1, err1 = first.communicate(timeout=120)
    assert first.returncode == 3, (first.returncode, err1[-3000:])
    assert "lost the output's lease" in err1
    ok = Counter(r["id"] for r in read_all_results(out).to_pylist() if r["status"] == "ok")
    assert ok == Counter({i: 1 for i in ids}), ok
    assert sorted(p.name for p in (out / "videos").iterdir()) == sorted(f"{i}.mp4" for i in ids)
    assert all(read_mp4(out / "videos" / f"{i}.mp4").shape[0] == 8 for i in ids)


def test_a_lease_lock_held_by_a_paused_process_is_broken_and_its_holder_writes_nothing(tmp_path):
    from ditfarm.storage.conditional import LocalConditionalFile

    paused, taker = LocalConditionalFile(tmp_path / "lease.json"), LocalConditionalFile(tmp_path / "lease.json")
    paused.LOCK_STALE_S = taker.LOCK_STALE_S = 0.3
    with paused._locked() as still_mine:
        assert still_mine()
        time.sleep(0.5)  # paused inside the critical section, past the stale age
        assert taker.create(b'{"run_id": "taker"}') is not None  # broke the lock, wrote the lease
        assert not still_mine()  # so the paused holder's compare-and-swap writes nothing
    assert (tmp_path / "lease.json").read_bytes() == b'{"run_id": "taker"}'


def test_a_part_written_after_the_run_was_fenced_is_not_counted(tmp_path):
    """The run that takes a stale lease over records the old run's parts as they are (fence-<run>.json); a part
    the old run still writes afterwards (it paused between its lease check and its write) is never counted."""
    from ditfarm.jobs.results import RESULT_SCHEMA, new_run_id, read_all_results
    from ditfarm.storage.stores import open_output

    store = open_output(str(tmp_path / "out"))
    store.check_writable()  # makes the folders, as a run does before it writes
    old, new = new_run_id(), new_run_id()

    def part(run: str, n: int, video_id: str):
        row = {name: None for name in RESULT_SCHEMA.names} | {"id": video_id, "status": "ok"}
        store.write_part(f"part-{run}-{n:05d}.parquet", pa.Table.from_pylist([row], schema=RESULT_SCHEMA))

    part(old, 0, "a")
    store.fence_run(old, by=new)
    part(old, 1, "b")  # written after the take-over: not counted
    part(new, 0, "b")
    rows = [(r["id"], r["status"]) for r in read_all_results(store).to_pylist()]
    assert rows == [("a", "ok"), ("b", "ok")]
    assert len(store.part_names()) == 3 and len(store.counted_part_names()) == 2


def test_non_finite_guidance_and_reserved_columns_are_refused_by_name(tmp_path, random_model_folder):
    from ditfarm.jobs.manifest import ManifestError

    settings = RenderSettings(model=str(random_model_folder), steps=2, upscale=2)
    renderer = LocalRenderer(settings)
    manifest, out = tmp_path / "m.parquet", tmp_path / "out"
    pq.write_table(
        pa.table(
            {
                "id": ["g0", "g1", "g2"],
                "prompt": PROMPTS + PROMPTS[:1],
                "guidance_scale": [float("inf"), float("nan"), 4.0],
            }
        ),
        manifest,
    )
    summary = render_manifest(manifest, out, settings, renderer=renderer, progress=False)
    assert (summary.ok, summary.failed) == (1, 2)
    assert all("guidance_scale must be a finite number" in e for e in summary.errors), summary.errors

    reserved = tmp_path / "reserved.parquet"
    pq.write_table(pa.table({"id": ["r0"], "prompt": PROMPTS[:1], "__row": [1]}), reserved)
    with pytest.raises(ManifestError, match="__row.*reserved"):
        render_manifest(reserved, tmp_path / "out2", settings, renderer=renderer, progress=False)


def test_a_video_whose_latents_go_non_finite_fails_its_row_and_nothing_is_stored(tmp_path, random_model_folder):
    from helpers import poisoned_model_folder

    folder = poisoned_model_folder(random_model_folder, tmp_path / "poisoned")
    settings = RenderSettings(model=str(folder), steps=2, upscale=2)
    manifest, out = tmp_path / "m.parquet", tmp_path / "out"
    pq.write_table(
        pa.table(
            {
                "id": ["n0", "n1", "n2"],
                "prompt": [PROMPTS[0], "yellow triangle moving right on black background", PROMPTS[1]],
            }
        ),
        manifest,
    )
    summary = render_manifest(manifest, out, settings, renderer=LocalRenderer(settings), progress=False)
    assert (summary.ok, summary.failed) == (2, 1), summary.errors
    assert "non-finite latents" in summary.errors[0] and "NaN" in summary.errors[0], summary.errors
    rows = {r["id"]: r for r in read_results(out).to_pylist()}
    assert rows["n1"]["status"] == "failed" and rows["n1"]["uri"] is None
    assert sorted(p.name for p in (out / "videos").iterdir()) == ["n0.mp4", "n2.mp4"]


def test_results_stay_readable_when_an_extra_column_changes_type_between_runs(tmp_path, random_model_folder, capsys):
    from ditfarm.commands.cli import main as cli

    settings = RenderSettings(model=str(random_model_folder), steps=2, upscale=2)
    renderer = LocalRenderer(settings)
    out = tmp_path / "out"
    for n, tags in enumerate(([1], ["blue"])):
        manifest = tmp_path / f"m{n}.parquet"
        pq.write_table(pa.table({"id": [f"t{n}"], "prompt": PROMPTS[:1], "tag": tags}), manifest)
        assert render_manifest(manifest, out, settings, renderer=renderer, progress=False).ok == 1
    rows = {r["id"]: r["tag"] for r in read_results(out).to_pylist()}
    assert rows == {"t0": "1", "t1": "blue"}
    assert cli(["status", str(out)]) == 0 and "2 ids: 2 ok" in capsys.readouterr().out


def test_bad_run_settings_refuse_the_run_and_an_oversized_row_gets_a_size_error(tmp_path, random_model_folder, capsys):
    from ditfarm.commands.cli import main as cli
    from ditfarm.pipelines.model_checks import model_checks

    manifest, out = tmp_path / "m.parquet", tmp_path / "out"
    write_manifest(manifest, ["s0"])
    for flags in (["--steps", "0"], ["--height", "-8"], ["--guidance-scale", "inf"]):
        assert cli(["render", str(manifest), "--out", str(out), "--model", str(random_model_folder), *flags]) == 2
        assert "must be" in capsys.readouterr().err
        assert not out.exists()  # refused before anything was written
    for checks in (
        model_checks(random_model_folder),
        LocalRenderer(RenderSettings(model=str(random_model_folder))).pipe,
    ):  # the dry run's checks and the loaded model's agree
        with pytest.raises(ValueError, match="height is too large for this model"):
            checks.settings(height=100000)


def test_a_wan_folder_refuses_sizes_past_its_rotary_table(small_wan_folder):
    from ditfarm.pipelines.model_checks import model_checks

    with pytest.raises(ValueError, match="width is too large for this model"):
        model_checks(small_wan_folder).settings(width=16 * 1024)


def test_rows_past_the_models_limits_or_the_step_cap_fail_by_name_and_the_rest_render(
    tmp_path, random_model_folder, capsys
):
    """The dry run and the run refuse alike: a 1024x1024 tiny row (past the card's limits), 40 frames, and
    steps=10**9 (past --max-steps) each fail as their row, and the good rows around them render."""
    from ditfarm.commands.cli import main as cli

    manifest, out = tmp_path / "m.parquet", tmp_path / "out"
    pq.write_table(
        pa.table(
            {
                "id": ["ok0", "big", "long", "slow", "ok1"],
                "prompt": PROMPTS[:1] * 5,
                "height": pa.array([None, 1024, None, None, None], pa.int64()),
                "width": pa.array([None, 1024, None, None, None], pa.int64()),
                "num_frames": pa.array([None, None, 40, None, None], pa.int64()),
                "steps": pa.array([2, 2, 2, 10**9, 2], pa.int64()),
            }
        ),
        manifest,
    )
    args = ["render", str(manifest), "--out", str(out), "--model", str(random_model_folder), "--no-progress"]
    assert cli([*args, "--dry-run"]) == 1  # rows that would fail
    dry = capsys.readouterr()
    assert cli(args) == 1
    capsys.readouterr()
    rows = {r["id"]: r for r in read_results(out).to_pylist()}
    assert [i for i, r in rows.items() if r["status"] == "ok"] == ["ok0", "ok1"]
    for vid, message in [
        ("big", "height 1024 is more than this model takes: at most 128"),
        ("long", "num_frames 40 is more than this model takes: at most 32"),
        ("slow", "steps 1000000000 is more than this run's cap of 1000 (--max-steps)"),
    ]:
        assert message in rows[vid]["error"], rows[vid]
        assert message in dry.out + dry.err, dry  # the dry run says the same
    assert cli([*args, "--steps", "2000"]) == 2  # a run-wide value past the cap refuses the run
    assert "steps 2000 is more than this run's cap of 1000" in capsys.readouterr().err
    assert cli([*args, "--max-steps", "0"]) == 2
    assert "max_steps must be a positive integer" in capsys.readouterr().err


LIMITED_RENDER = """
import resource, sys
import diffusers, torch  # what every render loads, before the limit is set from the size they give the process
from ditfarm.commands.cli import main
from ditfarm.pipelines.memory import _status_kib
room = int(float(sys.argv[1]) * 2 ** 30)
resource.setrlimit(resource.RLIMIT_AS, (_status_kib("VmSize") * 1024 + room,) * 2)
sys.exit(main(sys.argv[2:]))
"""


def test_under_a_memory_limit_a_row_that_cannot_fit_fails_by_name_and_the_rows_after_it_render(
    tmp_path, random_model_folder
):
    """In a subprocess whose address space is capped (RLIMIT_AS: this machine has no swap, so a row allowed to
    allocate freely would take it down): a 256-frame 256x256 row, which the folder's card allows, is refused by
    the memory estimate before its loop; steps=10**9 and a million frames are refused by the cap and the rotary
    table; the good rows before and after them render, and the command exits 1, not with a traceback."""
    import json
    import shutil

    folder = tmp_path / "long-tiny"
    shutil.copytree(random_model_folder, folder)
    card = json.loads((folder / "ditfarm_model.json").read_text())
    (folder / "ditfarm_model.json").write_text(
        json.dumps({**card, "limits": {"num_frames": 256, "height": 256, "width": 256}})
    )
    manifest, out = tmp_path / "m.parquet", tmp_path / "out"
    pq.write_table(
        pa.table(
            {
                "id": ["ok0", "huge", "forever", "million", "ok1"],
                "prompt": PROMPTS[:1] * 5,
                "num_frames": pa.array([None, 256, None, 10**6, None], pa.int64()),
                "height": pa.array([None, 256, None, None, None], pa.int64()),
                "width": pa.array([None, 256, None, None, None], pa.int64()),
                "steps": pa.array([2, 2, 10**9, 2, 2], pa.int64()),
            }
        ),
        manifest,
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            LIMITED_RENDER,
            "3",
            "render",
            str(manifest),
            "--out",
            str(out),
            "--model",
            str(folder),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    rows = {r["id"]: r for r in read_results(out).to_pylist()}
    assert [i for i, r in rows.items() if r["status"] == "ok"] == ["ok0", "ok1"]
    assert "a video of 256 frames of 256x256 needs at least" in rows["huge"]["error"], rows["huge"]
    assert "GiB available there" in rows["huge"]["error"]
    assert "more than this run's cap of 1000" in rows["forever"]["error"]
    assert "num_frames is too large for this model" in rows["million"]["error"]


def test_a_video_past_its_time_limit_fails_as_its_row_and_the_next_rows_render(tmp_path, random_model_folder, capsys):
    from ditfarm.commands.cli import main as cli
    from ditfarm.pipelines.deadline import DEFAULT_VIDEO_TIMEOUT_S, default_timeout_s
    from ditfarm.pipelines.denoise import SamplerSettings

    manifest, out = tmp_path / "m.parquet", tmp_path / "out"
    pq.write_table(
        pa.table({"id": ["q0", "slow", "q1"], "prompt": PROMPTS[:1] * 3, "steps": pa.array([2, 1000, 2], pa.int64())}),
        manifest,
    )
    args = ["render", str(manifest), "--out", str(out), "--model", str(random_model_folder), "--no-progress"]
    assert cli([*args, "--video-timeout", "1"]) == 1
    rows = {r["id"]: r for r in read_results(out).to_pylist()}
    assert [i for i, r in rows.items() if r["status"] == "ok"] == ["q0", "q1"]
    assert "ran past its time limit of 1 s after step" in rows["slow"]["error"] and "of 1000" in rows["slow"]["error"]
    assert rows["slow"]["attempts"] == 1
    assert cli([*args, "--video-timeout", "0"]) == 2
    assert "video_timeout_s must be a positive number" in capsys.readouterr().err

    # the default grows with the row's work (frames x height x width x steps), never below the base
    defaults = SamplerSettings(8, 32, 32, 30, 3.0)
    assert default_timeout_s(defaults, {"steps": None}) == DEFAULT_VIDEO_TIMEOUT_S
    assert default_timeout_s(defaults, {"steps": 60, "height": 64}) == 4 * DEFAULT_VIDEO_TIMEOUT_S
    assert default_timeout_s(defaults, {"steps": 2}) == DEFAULT_VIDEO_TIMEOUT_S


def test_a_model_card_declares_its_own_limits_and_a_malformed_one_is_refused_at_load(
    tmp_path, random_model_folder, small_wan_folder
):
    import json
    import shutil

    from ditfarm.pipelines.loading import load_pipeline
    from ditfarm.pipelines.model_checks import model_checks

    tiny = tmp_path / "tiny"
    shutil.copytree(random_model_folder, tiny)
    card = json.loads((tiny / "ditfarm_model.json").read_text())
    (tiny / "ditfarm_model.json").write_text(json.dumps({**card, "limits": {"height": 48}}))
    for checks in (model_checks(tiny), load_pipeline(str(tiny))):  # the dry run's checks and the loaded model's
        assert checks.settings(height=48, width=128).height == 48
        with pytest.raises(ValueError, match="height 64 is more than this model takes: at most 48"):
            checks.settings(height=64)
    (tiny / "ditfarm_model.json").write_text(json.dumps({**card, "limits": {"height": "big"}}))
    for load in (model_checks, load_pipeline):
        with pytest.raises(ValueError, match='ditfarm_model.json: "limits" must map'):
            load(str(tiny))

    wan = tmp_path / "wan"
    shutil.copytree(small_wan_folder, wan)
    (wan / "ditfarm_model.json").write_text(json.dumps({"limits": {"width": 32}}))
    with pytest.raises(ValueError, match="width 48 is more than this model takes: at most 32"):
        model_checks(wan).settings(width=48)
    assert model_checks(small_wan_folder).settings(width=48).width == 48


def test_a_killed_runs_leftovers_are_removed_when_the_next_run_starts(tmp_path, random_model_folder, monkeypatch):
    """Temporary folders of dead processes under the temp dir (a killed S3 run's encodes) and temporary files at
    the output's top (a report being written) go; a live process's temporary folder stays."""
    import tempfile

    from ditfarm.storage.stores import LOCAL_TEMP_PREFIX

    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    dead = subprocess.Popen(["true"])
    dead.wait()
    left = temp / f"{LOCAL_TEMP_PREFIX}{dead.pid}-abc"
    live = temp / f"{LOCAL_TEMP_PREFIX}{os.getpid()}-def"
    for folder in (left, live):
        folder.mkdir()
        (folder / "v.mp4").write_bytes(b"x" * 100)
    manifest, out = tmp_path / "m.parquet", tmp_path / "out"
    write_manifest(manifest, ["l0"])
    out.mkdir()
    (out / ".tmp-0123-report.html").write_text("half a report")
    settings = RenderSettings(model=str(random_model_folder), steps=2, upscale=2)
    assert render_manifest(manifest, out, settings, renderer=LocalRenderer(settings), progress=False).ok == 1
    assert not left.exists() and live.exists()
    assert not list(out.glob(".tmp-*"))


def test_a_crash_releases_the_lease(tmp_path):
    """An unexpected error inside the run ends it with its traceback, and the output's lease is given back, so the
    next run starts at once instead of waiting out the ttl."""
    from ditfarm.jobs.driver import render_tasks
    from ditfarm.jobs.manifest import RenderTask

    class Crashing:
        capacity = 1

        def render(self, task, settings, out):
            raise KeyError("a bug")

        def close(self):
            pass

    out = tmp_path / "out"
    with pytest.raises(KeyError):
        render_tasks(
            [RenderTask(row=0, id="c0", prompt=PROMPTS[0], seed=0)],
            out,
            RenderSettings(),
            renderer=Crashing(),
            progress=False,
        )
    assert not (out / "lease.json").exists()


def corrupt_row_groups(path: Path, first: int = 1) -> None:
    """Overwrite the data pages of row groups ``first``.. with garbage, leaving the footer readable: the file
    opens, its schema and row count read, and decoding fails only when that row group is reached."""
    metadata = pq.ParquetFile(path).metadata
    data = bytearray(path.read_bytes())
    for g in range(first, metadata.num_row_groups):
        for c in range(metadata.num_columns):
            column = metadata.row_group(g).column(c)
            start = column.dictionary_page_offset if column.has_dictionary_page else column.data_page_offset
            data[start : start + column.total_compressed_size] = b"\xff" * column.total_compressed_size
    path.write_bytes(bytes(data))


def test_a_manifest_that_breaks_partway_keeps_what_was_rendered_exits_4_and_resumes_once_mended(tmp_path, capsys):
    from ditfarm.commands.cli import main as cli

    folder, out = tmp_path / "manifest", tmp_path / "out"
    folder.mkdir()
    write_manifest(folder / "a.parquet", ["a0", "a1", "a2"])
    pq.write_table(
        pa.table({"id": ["b0", "b1", "b2", "b3"], "prompt": PROMPTS[:1] * 4}), folder / "b.parquet", row_group_size=2
    )
    good_b = (folder / "b.parquet").read_bytes()
    corrupt_row_groups(folder / "b.parquet", first=0)
    args = ["render", str(folder), "--out", str(out), "--steps", "2", "--no-progress"]
    assert cli(args) == 4
    err = capsys.readouterr().err
    assert "the manifest could not be read past its first 3 row(s)" in err and "a rerun resumes" in err, err
    assert "Traceback" not in err
    rows = read_all_results(out).to_pylist()
    assert sorted(r["id"] for r in rows if r["status"] == "ok") == ["a0", "a1", "a2"]
    assert not (out / "lease.json").exists()

    (folder / "b.parquet").write_bytes(good_b)  # mended
    assert cli(args) == 0
    assert "4 ok, 0 failed, 3 skipped" in capsys.readouterr().out
    ok = Counter(r["id"] for r in read_all_results(out).to_pylist() if r["status"] == "ok")
    assert sorted(ok) == ["a0", "a1", "a2", "b0", "b1", "b2", "b3"] and set(ok.values()) == {1}


def test_a_megabyte_id_or_prompt_makes_a_short_error_and_a_small_results_row(tmp_path, capsys):
    from ditfarm.commands.cli import main as cli

    manifest, out = tmp_path / "m.parquet", tmp_path / "out"
    pq.write_table(
        pa.table({"id": ["ok0", "x" * 10**6, "bigprompt"], "prompt": [PROMPTS[0], PROMPTS[0], "red " + "y" * 10**6]}),
        manifest,
    )
    assert cli(["render", str(manifest), "--out", str(out), "--steps", "2", "--no-progress"]) == 1
    printed = capsys.readouterr()
    assert len(printed.out) + len(printed.err) < 4000
    assert "(1000002 characters)" in printed.out + printed.err
    rows = {r["id"][:9]: r for r in read_all_results(out).to_pylist()}
    assert rows["ok0"]["status"] == "ok"
    assert len(rows["xxxxxxxxx"]["id"]) < 1100 and "id must match" in rows["xxxxxxxxx"]["error"]
    assert len(rows["bigprompt"]["error"]) < 2100 and "unknown word(s)" in rows["bigprompt"]["error"]
    assert sum(p.stat().st_size for p in (out / "results").iterdir()) < 50_000


def test_a_rerun_with_another_cache_keeps_the_stored_rows_says_so_and_status_shows_them(
    tmp_path, random_model_folder, capsys
):
    """The cache policy says how a video was computed, not what it shows: a rerun with another one keeps the stored
    videos and says so (steps, which the video shows, render again: tests/test_row_identity.py)."""
    from ditfarm.commands.cli import main as cli

    manifest, out = tmp_path / "m.parquet", tmp_path / "out"
    pq.write_table(
        pa.table({"id": ["s0", "s1", "s2"], "prompt": PROMPTS[:1] * 3, "steps": pa.array([None, None, 3], pa.int64())}),
        manifest,
    )
    args = ["render", str(manifest), "--out", str(out), "--model", str(random_model_folder), "--no-progress"]
    assert cli([*args, "--steps", "2"]) == 0
    capsys.readouterr()
    assert cli([*args, "--steps", "2"]) == 0  # the same settings: nothing to say
    assert "other settings" not in capsys.readouterr().err
    assert cli([*args, "--steps", "2", "--cache", "bwcache"]) == 0
    printed = capsys.readouterr()
    assert "0 ok, 0 failed, 3 skipped" in printed.out
    assert "3 skipped row(s) were rendered with other settings" in printed.err, printed.err
    assert "cache 'none' where this run has 'bwcache' (3 row(s))" in printed.err
    assert "cache_knob" not in printed.err and "--overwrite renders every row again" in printed.err
    assert cli(["status", str(out)]) == 0
    assert "ok rows rendered with: model " in (printed := capsys.readouterr().out)
    assert "steps 2 x2, 3 x1" in printed and "cache none x3" in printed, printed


def test_seconds_count_a_videos_own_cost_and_wall_seconds_its_whole_wait(tmp_path, random_model_folder):
    """With a video's fixed costs beside the next loop, the time from a render's start to its stored video also
    holds the other video's loop; `seconds` (and the report) count the video's own phases, `wall_seconds` all."""
    manifest, out = tmp_path / "m.parquet", tmp_path / "out"
    write_manifest(manifest, [f"w{i}" for i in range(4)])
    settings = RenderSettings(model=str(random_model_folder), steps=4)
    assert render_manifest(manifest, out, settings, progress=False).ok == 4
    for row in read_results(out).to_pylist():
        phases = [row[k] for k in ("text_seconds", "denoise_seconds", "decode_seconds", "store_seconds")]
        assert all(v is not None and v >= 0 for v in phases), row
        assert row["seconds"] == pytest.approx(sum(phases), abs=2e-3)
        assert row["wall_seconds"] >= row["denoise_seconds"] and row["store_seconds"] > 0
