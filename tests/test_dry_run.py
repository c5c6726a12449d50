"""The dry run refuses exactly what a loaded model refuses, from the model's configs alone (tiny and Wan2.1)."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ditfarm.jobs.dry_run import dry_run
from ditfarm.jobs.types import RenderSettings
from ditfarm.pipelines.checks import model_checks
from ditfarm.pipelines.loading import load_pipeline
from ditfarm.pipelines.wan import make_small_wan_folder

CASES = [dict(), dict(num_frames=8), dict(num_frames=13), dict(height=30), dict(height=48, width=80), dict(width=36), dict(width=34),
         dict(steps=0), dict(guidance_scale=-1.0)]


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
    pq.write_table(pa.table({"id": ["a", "b", "c"], "prompt": ["a cat on the street"] * 3,
                             "num_frames": pa.array([None, 8, None], pa.int64()),
                             "height": pa.array([None, None, 40], pa.int64())}), manifest)
    report = dry_run(str(manifest), tmp_path / "out", RenderSettings(model=str(wan_folder)))
    assert (report.would_render, report.would_skip, report.would_fail) == (1, 0, 2)
    reasons = " | ".join(report.failures)
    assert "num_frames must be 4k + 1" in reasons and "multiples of 16" in reasons
    assert not (tmp_path / "out").exists()  # a dry run writes nothing
