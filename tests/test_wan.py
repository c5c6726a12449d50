"""The Wan2.1 code path (diffusers' WanPipeline components, our loop) on a small random-weight Wan folder."""

import numpy as np
import pytest

import ditfarm
from ditfarm import cache
from ditfarm.commands.cli import main as cli
from ditfarm.jobs.results import read_all_results
from ditfarm.pipelines.families.wan import WanVideoPipeline, make_small_wan_folder

pytestmark = [pytest.mark.process]  # ffmpeg encodes the videos


@pytest.fixture(scope="module")
def wan_folder(tmp_path_factory):
    return make_small_wan_folder(tmp_path_factory.mktemp("small-wan"))


@pytest.fixture(scope="module")
def wan(wan_folder):
    return ditfarm.load_pipeline(wan_folder)


def test_loads_as_wan_and_renders_deterministically(wan):
    assert isinstance(wan, WanVideoPipeline)
    a = wan.generate("a red cat moving left", seed=1, steps=3)
    b = wan.generate("a red cat moving left", seed=1, steps=3)
    c = wan.generate("a red cat moving left", seed=2, steps=3)
    assert a.shape == (9, 64, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_wan_size_rules(wan):
    with pytest.raises(ValueError, match="4k \\+ 1"):
        wan.generate("a cat", num_frames=8, steps=1)
    with pytest.raises(ValueError, match="multiples of 16"):
        wan.generate("a cat", height=60, steps=1)
    with pytest.raises(ValueError, match="prompt is empty"):
        wan.generate("  ", steps=1)


def test_cache_on_wan_exact_at_threshold_zero_and_skips_above(wan):
    base = wan.generate("a blue car on the street", seed=4, steps=8)
    cache.enable(wan, cache.AdaptiveConfig(threshold=0.0))
    try:
        assert np.array_equal(wan.generate("a blue car on the street", seed=4, steps=8), base)
        cache.enable(wan, cache.TaylorSeerConfig(interval=2))
        cached = wan.generate("a blue car on the street", seed=4, steps=8)
        assert cache.last_video_stats(wan).skipped_fraction == pytest.approx(0.5)
        assert not np.array_equal(cached, base)
    finally:
        cache.disable(wan)


def test_render_and_profile_commands_on_a_wan_folder(wan_folder, tmp_path):
    out = tmp_path / "out"
    assert (
        cli(
            [
                "render",
                "--prompt",
                "a white dog in the forest",
                "--model",
                str(wan_folder),
                "--out",
                str(out),
                "--steps",
                "4",
                "--upscale",
                "1",
                "--cache",
                "adaptive",
                "--no-progress",
            ]
        )
        == 0
    )
    row = read_all_results(out).to_pylist()[0]
    assert row["status"] == "ok" and row["frames"] == 9 and row["cache"] == "adaptive"
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red car on the street\na white cat in the sea\n")
    assert (
        cli(
            [
                "profile",
                "--model",
                str(wan_folder),
                "--prompts",
                str(prompts),
                "--out",
                str(tmp_path / "p.json"),
                "--steps",
                "6",
                "--probe-steps",
                "2",
            ]
        )
        == 0
    )
    profile = cache.CacheProfile.load(tmp_path / "p.json")
    assert profile.model == cache.model_identity(ditfarm.load_pipeline(wan_folder).transformer)
    assert len(profile.blocks) == 4
