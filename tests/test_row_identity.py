"""A row's identity is what it renders: a rerun renders again an id whose manifest row now asks for other content
(prompt, negative prompt, seed, sizes, steps, guidance, fps, upscale, model), says how many and which inputs, and
keeps skipping by id when asked; how a video was computed (the cache) keeps its note without rendering again."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ditfarm.commands.cli import main as cli
from ditfarm.jobs.results import read_all_results, read_results

pytestmark = [pytest.mark.process]

RED = "red circle moving left on blue background"
WHITE = "white square moving up on green gradient background"


def write(path, ids, **columns):
    pq.write_table(pa.table({"id": ids, **columns}), path)


def stored_rows(out) -> dict:
    return {r["id"]: r for r in read_results(out).to_pylist()}


def test_a_rerun_renders_again_the_ids_whose_rows_changed_and_says_which_inputs(tmp_path, capsys):
    first, edited, out = tmp_path / "m1.parquet", tmp_path / "m2.parquet", tmp_path / "out"
    ids = ["p", "n", "s", "g", "same"]
    write(first, ids, prompt=[RED] * 5)
    write(
        edited,
        ids,
        prompt=[WHITE, RED, RED, RED, RED],
        negative_prompt=[None, "green", None, None, None],
        seed=pa.array([None, None, 999, None, None], pa.int64()),
        guidance_scale=pa.array([None, None, None, 1.5, None], pa.float64()),
    )
    base = ["--out", str(out), "--steps", "2", "--no-progress"]
    assert cli(["render", str(first), *base]) == 0
    capsys.readouterr()
    before = stored_rows(out)
    assert before["p"]["prompt"] == RED and before["n"]["negative_prompt"] == ""
    assert before["g"]["guidance_scale"] == 3.0 and before["g"]["fps"] == 8 and before["g"]["upscale"] == 8

    assert cli(["render", str(edited), *base, "--dry-run"]) == 0
    said = capsys.readouterr().out
    assert "would render 4, would skip 1" in said, said
    assert "4 id(s) already ok have manifest rows that changed" in said
    assert "seed x1 (e.g. " in said and "-> 999)" in said and "guidance_scale x1 (e.g. 3.0 -> 1.5)" in said

    assert cli(["render", str(edited), *base, "--resume-by-id"]) == 0  # the old behaviour, on request
    printed = capsys.readouterr()
    assert "0 ok, 0 failed, 5 skipped" in printed.out
    assert "4 skipped id(s) were stored with other content" in printed.err and "--resume-by-id" in printed.err
    assert stored_rows(out)["s"]["seed"] == before["s"]["seed"]

    assert cli(["render", str(edited), *base]) == 0
    printed = capsys.readouterr()
    assert "4 ok, 0 failed, 1 skipped" in printed.out, printed.out
    assert "4 id(s) were rendered again: their manifest rows changed" in printed.err
    for column in ("prompt x1", "negative_prompt x1", "seed x1", "guidance_scale x1"):
        assert column in printed.err, printed.err
    after = stored_rows(out)
    assert after["p"]["prompt"] == WHITE and after["n"]["negative_prompt"] == "green"
    assert after["s"]["seed"] == 999 and after["g"]["guidance_scale"] == 1.5
    assert after["same"]["finished_at"] == before["same"]["finished_at"]  # not rendered again

    assert cli(["render", str(edited), *base]) == 0  # now everything matches: nothing to render or say
    printed = capsys.readouterr()
    assert "0 ok, 0 failed, 5 skipped" in printed.out and "rendered again" not in printed.err


def test_sizes_steps_fps_and_model_are_content_and_the_cache_is_not(tmp_path, random_model_folder, capsys):
    manifest, out = tmp_path / "m.parquet", tmp_path / "out"
    write(manifest, ["a", "b"], prompt=[RED, WHITE], steps=pa.array([None, 3], pa.int64()))
    base = ["render", str(manifest), "--out", str(out), "--no-progress", "--steps", "2"]
    assert cli([*base, "--model", str(random_model_folder)]) == 0
    capsys.readouterr()

    assert cli([*base, "--model", str(random_model_folder), "--cache", "bwcache"]) == 0  # how, not what
    printed = capsys.readouterr()
    assert "0 ok, 0 failed, 2 skipped" in printed.out and "rendered again" not in printed.err
    assert "cache 'none' where this run has 'bwcache'" in printed.err

    assert cli([*base[:-1], "4", "--model", str(random_model_folder)]) == 0  # b keeps its own steps 3
    printed = capsys.readouterr()
    assert "1 ok, 0 failed, 1 skipped" in printed.out and "steps x1 (e.g. 2 -> 4)" in printed.err

    assert cli([*base[:-1], "4", "--model", str(random_model_folder), "--fps", "12", "--height", "64"]) == 0
    printed = capsys.readouterr()
    assert "2 ok" in printed.out and "fps x2 (e.g. 8 -> 12)" in printed.err and "height x2" in printed.err

    assert cli([*base[:-1], "4", "--fps", "12", "--height", "64"]) == 0  # the built-in model instead of the folder
    printed = capsys.readouterr()
    assert "2 ok" in printed.out and "model x2" in printed.err, printed.err


def test_rows_recorded_before_the_content_columns_are_compared_on_what_they_hold(tmp_path, capsys):
    """An output written before rows recorded their prompt is not rendered again wholesale by an upgrade; a
    column those rows did hold (the seed) still counts."""
    manifest, out = tmp_path / "m.parquet", tmp_path / "out"
    write(manifest, ["a", "b"], prompt=[RED, RED])
    base = ["render", str(manifest), "--out", str(out), "--steps", "2", "--no-progress"]
    assert cli(base) == 0
    for part in (out / "results").glob("part-*.parquet"):
        table = pq.read_table(part)
        pq.write_table(table.drop(["prompt", "negative_prompt", "guidance_scale", "fps", "upscale"]), part)
    assert "prompt" not in read_all_results(out).column_names
    capsys.readouterr()
    write(manifest, ["a", "b"], prompt=[WHITE, RED], seed=pa.array([None, 5], pa.int64()))
    assert cli(base) == 0
    printed = capsys.readouterr()
    assert "1 ok, 0 failed, 1 skipped" in printed.out and "seed x1" in printed.err and "prompt" not in printed.err
