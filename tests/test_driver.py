import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import CountingRenderer

from ditfarm.commands.cli import main as cli
from ditfarm.jobs.driver import RenderSettings, render_manifest
from ditfarm.jobs.results import read_all_results
from ditfarm.pipelines.video_io import read_mp4

pytestmark = [pytest.mark.process]  # ffmpeg encodes the videos

PROMPTS = ["red circle moving left on blue background", "white square moving up on green gradient background"]


@pytest.fixture
def manifest(tmp_path):
    path = tmp_path / "manifest.parquet"
    table = pa.table(
        {
            "id": ["v1", "v2", "bad", "v4"],
            "prompt": [PROMPTS[0], PROMPTS[1], "purple circle moving left on blue background", PROMPTS[0]],
            "seed": pa.array([1, 2, 3, None], pa.int64()),
            "num_frames": pa.array([None, 4, None, None], pa.int64()),
            "batch": ["b1", "b1", "b2", "b2"],
        }
    )
    pq.write_table(table, path)
    return path


def test_render_resume_and_results_table(manifest, tmp_path, random_model_folder):
    out = tmp_path / "out"
    settings = RenderSettings(model=str(random_model_folder), steps=2, upscale=2)
    renderer = CountingRenderer(settings)
    first = render_manifest(manifest, out, settings, renderer=renderer, progress=False)
    assert (first.ok, first.failed, first.skipped) == (3, 1, 0)
    assert renderer.rendered == ["v1", "v2", "bad", "v4"]
    assert "row 2 (id 'bad'): unknown word(s) 'purple'" in first.errors[0]

    v2 = read_mp4(out / "videos" / "v2.mp4")
    assert v2.shape == (4, 64, 64, 3)  # the row's own num_frames, upscaled 2x
    assert not (out / "videos" / "bad.mp4").exists()

    table = read_all_results(out).to_pylist()
    by_id = {r["id"]: r for r in table}
    assert by_id["v1"]["status"] == "ok" and by_id["v1"]["frames"] == 8 and by_id["v1"]["steps"] == 2
    assert by_id["v1"]["uri"] == str((out / "videos" / "v1.mp4").resolve())
    assert by_id["v4"]["seed"] is not None and by_id["v1"]["seed"] == 1
    assert by_id["bad"]["status"] == "failed" and "purple" in by_id["bad"]["error"]
    assert [by_id[i]["batch"] for i in ("v1", "v2", "bad", "v4")] == ["b1", "b1", "b2", "b2"]  # carried through
    assert by_id["v1"]["model"] == str(random_model_folder) and by_id["v1"]["seconds"] > 0

    # A rerun skips what is done, retries what failed, and re-renders a video whose file was lost.
    (out / "videos" / "v4.mp4").unlink()
    renderer.rendered.clear()
    second = render_manifest(manifest, out, settings, renderer=renderer, progress=False)
    assert renderer.rendered == ["bad", "v4"]
    assert (second.ok, second.failed, second.skipped) == (1, 1, 2)
    statuses = [(r["id"], r["status"]) for r in read_all_results(out).to_pylist()[4:]]
    assert sorted(statuses) == [("bad", "failed"), ("v4", "ok")]  # skips are counted, not written


def test_cli_renders_and_reports(manifest, tmp_path, random_model_folder, capsys):
    out = tmp_path / "cli"
    args = ["render", str(manifest), "--out", str(out), "--model", str(random_model_folder), "--steps", "1"]
    assert cli(args + ["--no-progress"]) == 1  # one row failed
    assert "3 ok, 1 failed, 0 skipped" in capsys.readouterr().out
    assert cli(args + ["--no-progress"]) == 1
    assert "0 ok, 1 failed, 3 skipped" in capsys.readouterr().out


def test_cli_schema_error_renders_nothing(tmp_path, capsys):
    path = tmp_path / "m.parquet"
    pq.write_table(pa.table({"id": ["a"], "text": ["red circle moving left on blue background"]}), path)
    assert cli(["render", str(path), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    assert "missing required column(s) prompt" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_cli_single_prompt(tmp_path, random_model_folder, capsys):
    out = tmp_path / "one"
    code = cli(
        ["render", "--prompt", PROMPTS[0], "--id", "hello", "--seed", "4", "--out", str(out)]
        + ["--model", str(random_model_folder), "--steps", "1", "--upscale", "1", "--no-progress"]
    )
    assert code == 0
    frames = read_mp4(out / "videos" / "hello.mp4")
    assert frames.shape == (8, 32, 32, 3) and frames.std() > 0  # a real picture, not a blank
    assert read_all_results(out).to_pylist()[0]["seed"] == 4


def test_cli_needs_manifest_or_prompt(tmp_path, capsys):
    assert cli(["render", "--out", str(tmp_path)]) == 2
    assert "either a MANIFEST or --prompt" in capsys.readouterr().err


def test_cli_cache_policy_is_recorded_per_video(tmp_path, random_model_folder, capsys):
    base = ["render", "--prompt", PROMPTS[0], "--model", str(random_model_folder), "--steps", "30", "--no-progress"]
    out = tmp_path / "cached"
    assert cli(base + ["--out", str(out), "--cache", "taylorseer", "--cache-threshold", "2"]) == 0
    row = read_all_results(out).to_pylist()[0]
    assert row["cache"] == "taylorseer" and row["cache_knob"] == 2
    assert row["skipped_fraction"] == pytest.approx(0.5)  # full steps 0, 2, 4, ... of 30 (the card's own count)
    capsys.readouterr()
    assert cli(base + ["--out", str(tmp_path / "x"), "--cache", "taylorseer", "--cache-threshold", "1.5"]) == 2
    assert "positive integer" in capsys.readouterr().err
    assert cli(base + ["--out", str(tmp_path / "y"), "--cache", "profiling"]) == 2
    assert "needs a profile" in capsys.readouterr().err


def test_fixed_costs_run_beside_the_next_loop_and_change_nothing(tmp_path, random_model_folder, monkeypatch):
    """With overlap (the default) a video is encoded and stored while the next video's denoising loop runs:
    some store overlaps another video's loop in time.  The videos and their cache statistics are exactly those
    of a run with overlap off, where nothing overlaps."""
    import threading
    import time

    import ditfarm.jobs.driver as driver
    from ditfarm.jobs.driver import prompt_task, render_tasks

    spans = {"loop": [], "store": []}
    lock = threading.Lock()
    from ditfarm.pipelines.base import VideoPipelineMixin

    real_store, real_loop = driver.publish_video, VideoPipelineMixin.generate_latents

    def timed(kind, fn):
        def wrapper(*args, **kwargs):
            start = time.monotonic()
            try:
                return fn(*args, **kwargs)
            finally:
                with lock:
                    spans[kind].append((start, time.monotonic()))

        return wrapper

    monkeypatch.setattr(driver, "publish_video", timed("store", real_store))
    monkeypatch.setattr(VideoPipelineMixin, "generate_latents", timed("loop", real_loop))
    prompts = ["red circle moving left on blue background", "white square moving up on green gradient background"]
    tasks = [prompt_task(prompts[i % 2], video_id=f"o{i}") for i in range(4)]
    rows = {}
    for overlap in (True, False):
        spans["loop"].clear(), spans["store"].clear()
        settings = RenderSettings(model=str(random_model_folder), steps=10, cache="adaptive", overlap=overlap)
        out = tmp_path / f"overlap-{overlap}"
        assert render_tasks(tasks, str(out), settings, progress=False).ok == 4
        overlapping = [(s, loop) for s in spans["store"] for loop in spans["loop"] if s[0] < loop[1] and loop[0] < s[1]]
        assert bool(overlapping) == overlap, spans
        rows[overlap] = {r["id"]: r for r in read_all_results(out).to_pylist()}
        rows[overlap]["frames"] = {i: read_mp4(out / "videos" / f"o{i}.mp4") for i in range(4)}
    for i in range(4):
        assert rows[True][f"o{i}"]["skipped_fraction"] == rows[False][f"o{i}"]["skipped_fraction"]
        assert np.array_equal(rows[True]["frames"][i], rows[False]["frames"][i])
