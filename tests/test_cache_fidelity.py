"""Fidelity floors: every skipping policy at a fixed knob skips something and stays close to the uncached video.

Floors sit about 3 dB under what these exact cases measure (one seed each; CPU numerics are deterministic for a
given torch), so a broken forecast, a stale residual or a wrong block order fails here instead of passing as
"finite".  `tiny` is the trained model; the small Wan folder has random weights, which still give stable numbers
and exercise the real Wan2.1 code path.  The small Wan folder ships no cache profile, so `profiling` runs on tiny.
"""

import pytest

import ditfarm
from ditfarm import cache
from ditfarm.cache.metrics import psnr
from ditfarm.cache.presets import config_for
from ditfarm.pipelines.families.wan import make_small_wan_folder

pytestmark = [pytest.mark.unit]

# (model, policy, knob): (measured dB, floor dB)
CASES = {
    ("tiny", "bwcache", 0.2): (22.2, 19.0),
    ("tiny", "profiling", 6): (21.9, 19.0),
    ("tiny", "taylorseer", 3): (16.4, 13.5),
    ("tiny", "adaptive", 0.5): (33.2, 30.0),
    ("tiny", "adaptive", 3.0): (16.0, 13.0),
    ("wan", "bwcache", 0.2): (59.7, 56.5),
    ("wan", "taylorseer", 5): (57.7, 54.5),  # 5 of Wan's 50 steps: every 3rd of 30
    ("wan", "adaptive", 0.5): (54.7, 51.5),  # the generic ladder (the small folder's card ships none)
}
STEPS = 30  # both models; the small Wan folder's card says 10, too few for any skip of the generic ladder
PROMPTS = {"tiny": "red circle moving left on blue background", "wan": "a red car moving left on the street"}


@pytest.fixture(scope="module")
def pipes(tmp_path_factory):
    wan = ditfarm.load_pipeline(make_small_wan_folder(tmp_path_factory.mktemp("fidelity-wan")))
    tiny = ditfarm.load_pipeline("tiny")
    return {
        "tiny": (tiny, tiny.generate(PROMPTS["tiny"], seed=3, steps=STEPS)),
        "wan": (wan, wan.generate(PROMPTS["wan"], seed=3, steps=STEPS)),
    }


@pytest.mark.parametrize("model, policy, knob", list(CASES), ids=lambda v: str(v))
def test_skipping_policy_stays_above_its_fidelity_floor(pipes, model, policy, knob):
    pipe, reference = pipes[model]
    cache.enable(pipe, config_for(pipe, policy, knob))
    try:
        frames = pipe.generate(PROMPTS[model], seed=3, steps=STEPS)
        stats = cache.last_video_stats(pipe)
    finally:
        cache.disable(pipe)
    _measured, floor = CASES[(model, policy, knob)]
    assert stats.skipped_fraction > 0.15
    assert psnr(reference, frames) >= floor, f"{policy} {knob} on {model}: {psnr(reference, frames):.2f} dB"
