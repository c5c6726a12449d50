import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ditfarm.jobs.manifest import Manifest, ManifestError, RenderTask, RowProblem, seed_from_id

pytestmark = [pytest.mark.process]  # ffmpeg encodes the videos


def write(path, columns):
    pq.write_table(pa.table(columns), path)
    return path


def rows(path):
    return list(Manifest(path))


def test_valid_rows_become_tasks_with_derived_seed_and_extras(tmp_path):
    path = write(
        tmp_path / "m.parquet",
        {
            "id": ["a", "b.2"],
            "prompt": ["red circle moving left on blue background"] * 2,
            "seed": pa.array([5, None], pa.int64()),
            "steps": pa.array([None, 4], pa.int32()),
            "guidance_scale": [2.5, None],
            "shard": ["x", "y"],
        },
    )
    a, b = rows(path)
    assert isinstance(a, RenderTask) and a.seed == 5 and a.steps is None and a.extra == {"shard": "x"}
    assert b.seed == seed_from_id("b.2") and b.steps == 4 and b.guidance_scale is None
    assert seed_from_id("b.2") == seed_from_id("b.2") != seed_from_id("b.3")


@pytest.mark.parametrize(
    "columns, fragment",
    [
        ({"prompt": ["p"]}, "missing required column(s) id"),
        ({"id": ["a"]}, "missing required column(s) prompt"),
        ({"id": [1], "prompt": ["p"]}, "column 'id' has type int64; expected string"),
        ({"id": ["a"], "prompt": ["p"], "seed": [1.5]}, "column 'seed' has type double; expected an integer"),
        ({"id": ["a"], "prompt": ["p"], "guidance_scale": ["high"]}, "'guidance_scale' has type string"),
        ({"id": ["a"], "prompt": ["p"], "status": ["x"]}, "status would overwrite results columns"),
    ],
)
def test_schema_problems_fail_the_whole_manifest(tmp_path, columns, fragment):
    path = write(tmp_path / "m.parquet", columns)
    with pytest.raises(ManifestError) as err:
        Manifest(path)
    assert fragment in str(err.value) and str(path) in str(err.value)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(ManifestError, match="does not exist"):
        Manifest(tmp_path / "nope.parquet")
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(ManifestError, match="not a readable Parquet file"):
        Manifest(tmp_path / "bad.parquet")


def test_bad_rows_fail_alone_with_row_and_problem(tmp_path):
    path = write(
        tmp_path / "m.parquet",
        {
            "id": ["ok1", "bad id", None, "ok1", "empty", "blank", "neg", "x" * 129, "ok2"],
            "prompt": ["p", "p", "p", "p", "", "   ", "p", "p", None],
            "steps": pa.array([None, None, None, None, None, None, -1, None, None], pa.int64()),
        },
    )
    out = rows(path)
    assert isinstance(out[0], RenderTask)
    problems = {r.row: r.error for r in out if isinstance(r, RowProblem)}
    assert (
        problems[1]
        == "row 1 (id 'bad id'): id must match [A-Za-z0-9._-]{1,128} (it names the output file; no '/', no spaces)"
    )
    assert problems[2] == "row 2: id is missing (null)"
    assert problems[3] == "row 3 (id 'ok1'): id duplicates row 0"
    assert problems[4] == "row 4 (id 'empty'): prompt is empty"
    assert problems[5] == "row 5 (id 'blank'): prompt is empty"
    assert problems[6] == "row 6 (id 'neg'): steps must be >= 1, got -1"
    assert "id must match" in problems[7]
    assert problems[8] == "row 8 (id 'ok2'): prompt is empty"
    assert set(problems) == set(range(1, 9))


@pytest.mark.parametrize("bad_id", ["a/b", "../x", "..", ".", ".hidden", "a..b", "has space", "back\\slash", ""])
def test_ids_that_could_leave_the_output_fail_their_row(tmp_path, bad_id):
    path = write(tmp_path / "m.parquet", {"id": [bad_id, "fine"], "prompt": ["p", "p"]})
    problem, fine = rows(path)
    assert isinstance(problem, RowProblem) and isinstance(fine, RenderTask)
    assert problem.error.startswith("row 0") and "id must" in problem.error


def test_a_row_of_a_folder_manifest_is_named_by_its_file_and_its_row_there(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ditfarm.commands.cli import main as cli
    from ditfarm.jobs.results import read_results

    good = "red circle moving left on blue background"
    folder = tmp_path / "manifest"
    folder.mkdir()
    pq.write_table(pa.table({"id": ["a0", "a1"], "prompt": [good, good]}), folder / "a.parquet")
    pq.write_table(pa.table({"id": ["b0", "b 1", "b2"], "prompt": [good, good, "purple cat"]}), folder / "b.parquet")
    args = ["render", str(folder), "--out", str(tmp_path / "out"), "--steps", "1", "--no-progress"]
    assert cli([*args, "--dry-run"]) == 1
    dry = capsys.readouterr().out
    assert "row 3 (b.parquet row 1; id 'b 1')" in dry and "row 4 (b.parquet row 2; id 'b2')" in dry, dry
    assert cli(args) == 1
    errors = {r["id"]: r["error"] for r in read_results(tmp_path / "out").to_pylist() if r["status"] == "failed"}
    assert errors["b2"].startswith("row 4 (b.parquet row 2; id 'b2'): unknown word(s)"), errors
    assert errors["b 1"].startswith("row 3 (b.parquet row 1; id 'b 1'): id must match"), errors
