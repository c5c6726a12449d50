"""The dry run refuses exactly what a loaded model refuses, from the model's configs alone (tiny and Wan2.1)."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ditfarm.jobs.dry_run import dry_run
from ditfarm.pipelines.families.wan import make_small_wan_folder
from ditfarm.pipelines.loading import load_pipeline
from ditfarm.pipelines.model_checks import model_checks
from ditfarm.types import RenderSettings

pytestmark = [pytest.mark.process]  # ffmpeg encodes the videos

CASES = [
    dict(),
    dict(num_frames=8),
    dict(num_frames=13),
    dict(height=30),
    dict(height=48, width=80),
    dict(width=36),
    dict(width=34),
    dict(steps=0),
    dict(guidance_scale=-1.0),
]


def refusal(fn, **overrides):
    try:
        fn(**overrides)
    except ValueError as err:
        return str(err)
    return None


@pytest.fixture(scope="module")
def wan_folder(tmp_path_factory):
    return make_small_wan_folder(tmp_path_factory.mktemp("dry-wan"), layers=1)


@pytest.mark.parametrize("which", ["tiny", "wan"])
def test_config_checks_match_the_loaded_pipeline(which, wan_folder):
    model = "tiny" if which == "tiny" else str(wan_folder)
    checks, pipe = model_checks(model), load_pipeline(model)
    assert checks.defaults == pipe.defaults
    verdicts = [refusal(checks.settings, **case) for case in CASES]
    assert verdicts == [refusal(pipe.settings, **case) for case in CASES]
    assert verdicts[0] is None and sum(v is not None for v in verdicts) >= 4  # the cases do tell sizes apart
    for prompt in ("red circle moving left on blue background", "purple circle moving left on blue background", " "):
        assert refusal(checks.check_prompt, prompt=prompt) == refusal(pipe.check_prompt, prompt=prompt)


def test_dry_run_on_a_wan_folder_names_the_sizes_it_refuses(wan_folder, tmp_path):
    manifest = tmp_path / "m.parquet"
    pq.write_table(
        pa.table(
            {
                "id": ["a", "b", "c"],
                "prompt": ["a cat on the street"] * 3,
                "num_frames": pa.array([None, 8, None], pa.int64()),
                "height": pa.array([None, None, 40], pa.int64()),
            }
        ),
        manifest,
    )
    report = dry_run(str(manifest), tmp_path / "out", RenderSettings(model=str(wan_folder)))
    assert (report.would_render, report.would_skip, report.would_fail) == (1, 0, 2)
    reasons = " | ".join(report.failures)
    assert "num_frames must be 4k + 1" in reasons and "multiples of 16" in reasons
    assert not (tmp_path / "out").exists()  # a dry run writes nothing


def run_settings_cases(tmp_path):
    import json

    from ditfarm.pipelines.tiny.weights import BUNDLED_FOLDER

    profile = json.loads((BUNDLED_FOLDER / "cache_profile.json").read_text())
    profile.pop("ertacache")
    uncalibrated = tmp_path / "no-ertacache.json"
    uncalibrated.write_text(json.dumps(profile))
    return [
        (["--device", "cuda"], "--device cuda: no CUDA device is usable here"),
        (["--cache", "profiling", "--profile", str(tmp_path / "missing.json")], "missing.json does not exist"),
        (["--cache", "ertacache", "--profile", str(uncalibrated)], "holds no ERTACache calibration"),
        (["--cache", "ertacache", "--steps", "12"], "was calibrated for 30-step videos; this video has 12 steps"),
        (["--cache", "bac", "--steps", "12"], "was calibrated for 30-step videos; this video has 12 steps"),
    ]


def test_what_the_run_refuses_the_dry_run_refuses_alike_and_neither_writes_anything(tmp_path, capsys):
    """Each setting every row would fail: the dry run and the run both exit 2 with the same message, before the
    output is touched (the run no longer fails row after row, or with a traceback)."""
    from ditfarm.commands.cli import main as cli

    manifest, out = tmp_path / "m.parquet", tmp_path / "out"
    pq.write_table(pa.table({"id": ["a", "b"], "prompt": ["red circle moving left on blue background"] * 2}), manifest)
    for flags, message in run_settings_cases(tmp_path):
        for dry in (["--dry-run"], []):
            assert cli(["render", str(manifest), "--out", str(out), "--no-progress", *flags, *dry]) == 2, flags
            err = capsys.readouterr().err
            assert message in err and "Traceback" not in err, (flags, dry, err)
        assert not out.exists()


def test_a_rows_own_steps_are_checked_against_the_caches_calibration(tmp_path, capsys):
    from ditfarm.commands.cli import main as cli
    from ditfarm.jobs.results import read_results

    manifest, out = tmp_path / "m.parquet", tmp_path / "out"
    pq.write_table(
        pa.table(
            {
                "id": ["a", "b"],
                "prompt": ["red circle moving left on blue background"] * 2,
                "steps": pa.array([None, 12], pa.int64()),
            }
        ),
        manifest,
    )
    args = ["render", str(manifest), "--out", str(out), "--no-progress", "--cache", "ertacache"]
    assert cli([*args, "--dry-run"]) == 1
    assert "1 x ERTACache in" in capsys.readouterr().out
    assert cli(args) == 1
    rows = {r["id"]: r for r in read_results(out).to_pylist()}
    assert rows["a"]["status"] == "ok" and "calibrated for 30-step videos" in rows["b"]["error"]


@pytest.mark.ray  # it looks for a Ray cluster to join, so it runs where no other test's cluster is up
def test_the_dry_run_refuses_a_gang_no_node_could_hold(tmp_path, capsys):
    """No cluster to join: the run would start a local one of this machine's CPUs, which cannot hold a gang of
    one rank more than that; the dry run says so (exit 2), as the run would at once."""
    from ditfarm.commands.cli import main as cli
    from ditfarm.pipelines.threads import usable_cpus

    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.table({"id": ["a"], "prompt": ["red circle moving left on blue background"]}), manifest)
    too_many = usable_cpus() + 1
    assert cli(["render", str(manifest), "--out", str(tmp_path / "out"), "--dry-run", "--sp", str(too_many)]) == 2
    err = capsys.readouterr().err
    assert f"can hold a gang of {too_many} rank(s)" in err and f"--sp {too_many - 1} or fewer" in err, err
