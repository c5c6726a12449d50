"""--cfg-parallel: the cond and uncond passes on two halves of a gang, one decision collective per step."""

import pytest

from ditfarm.cache.metrics import psnr
from ditfarm.cluster.local import run_local_gang

pytestmark = [pytest.mark.ray, pytest.mark.process]

PROMPT = "red circle moving left on blue background"
STEPS = 30  # tiny's own count: adaptive's first runs are a thirtieth of the schedule


def render_counting_decisions(rank, world, model, cfg_parallel, steps, policy="adaptive"):
    """One video on this rank; also how many times the cache's decision collective ran."""
    from ditfarm.cluster.gang_rank import RankRenderer
    from ditfarm.types import RenderSettings, RowInputs

    renderer = RankRenderer(
        rank, world, RenderSettings(model=model, cache=policy, cfg_parallel=cfg_parallel, collective_timeout_s=60)
    )
    engine = renderer.cache
    calls = []
    reduce = engine.reduce

    def counted(vector):
        calls.append(vector.numel())
        return reduce(vector)

    engine.reduce = counted
    result = renderer.render(RowInputs(PROMPT, 11, sampler=dict(steps=steps)))
    return result.frames, result.masks, len(calls)


@pytest.fixture(scope="module")
def one_process(tiny_pipe):
    from ditfarm import cache
    from ditfarm.cache.presets import config_for

    cache.enable(tiny_pipe, config_for(tiny_pipe, "adaptive"))
    try:
        frames = tiny_pipe.generate(PROMPT, seed=11, steps=STEPS)
        masks = cache.last_video_stats(tiny_pipe).masks
    finally:
        cache.disable(tiny_pipe)
    return frames, masks


def test_two_ranks_match_one_process_with_identical_masks(one_process):
    """U = 1: rank 0 runs cond, rank 1 uncond; the video is sp=1's at >= 60 dB in float32, each rank's masks
    are sp=1's masks of its branch, and the decision took one collective per step."""
    frames, masks = one_process
    (f0, m0, calls0), (f1, m1, calls1) = run_local_gang(render_counting_decisions, 2, "tiny", True, STEPS)
    assert psnr(frames, f0) >= 60
    assert m0 == {"cond": masks["cond"]} and m1 == {"uncond": masks["uncond"]}
    assert any(0 in step for step in masks["cond"]), "adaptive skipped nothing: the test would prove little"
    assert calls0 == calls1 == STEPS - 1  # steps 1.. each decide once, for both branches together


def test_four_ranks_are_two_ulysses_halves(one_process):
    """U = 2: Ulysses of degree 2 inside each half; still sp=1's video and masks, one collective per step."""
    frames, masks = one_process
    results = run_local_gang(render_counting_decisions, 4, "tiny", True, STEPS, timeout_s=120)
    assert psnr(frames, results[0][0]) >= 60
    for rank, (_, rank_masks, calls) in enumerate(results):
        branch = "cond" if rank < 2 else "uncond"
        assert rank_masks == {branch: masks[branch]}, rank
        assert calls == STEPS - 1


def test_cfg_parallel_needs_an_even_gang():
    from ditfarm.types import RenderSettings

    with pytest.raises(ValueError, match="sp must be even and >= 2, got 3"):
        RenderSettings(sp=3, gangs=1, cfg_parallel=True).validate()
