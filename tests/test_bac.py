"""BAC: its scheduler and bubbling union on constructed similarities, and the unit cache on tiny."""

import itertools

import numpy as np
import pytest

from ditfarm import cache
from ditfarm.cache import BACConfig, CacheProfile
from ditfarm.cache.policies import BACPolicy
from ditfarm.cache.policies.bac import BACCalibrationError, acs_schedule, bubbling_union
from ditfarm.cache.presets import build_config

pytestmark = [pytest.mark.unit]


def coverage(sim, chosen):
    steps = len(sim)
    bounds = list(chosen) + [steps]
    return sum(sim[bounds[m], bounds[m] + 1 : bounds[m + 1]].sum() for m in range(len(chosen)))


def test_acs_finds_the_best_update_steps():
    g = np.random.default_rng(0)
    for _ in range(20):
        steps, updates = 8, int(g.integers(1, 8))
        sim = g.uniform(-1, 1, (steps, steps))
        best = max(coverage(sim, (0,) + rest) for rest in itertools.combinations(range(1, steps), updates - 1))
        chosen = acs_schedule(sim, updates)
        assert chosen[0] == 0 and len(chosen) == updates
        assert coverage(sim, chosen) == pytest.approx(best)


def segments(steps, starts):
    """A similarity matrix of stable segments: features are alike within a segment and unlike across."""
    label = np.searchsorted(starts, np.arange(steps), side="right")
    return np.where(label[:, None] == label[None, :], 1.0, -1.0)


def test_acs_updates_where_the_features_change():
    assert acs_schedule(segments(12, [0, 3, 7]), 3) == [0, 3, 7]
    assert acs_schedule(segments(12, [0, 5]), 2) == [0, 5]


def unit_calibration(similarities, volatility):
    steps = len(similarities[0])
    return CacheProfile(
        model={},
        blocks=[],
        r_attn_threshold=0.5,
        bac={"steps": steps, "similarity": [s.tolist() for s in similarities], "volatility": list(volatility)},
    )


def test_bubbling_union_refreshes_the_volatile_upstream_ffn_when_a_downstream_ffn_updates():
    """Two blocks (units attn1, attn2, ffn, attn1, attn2, ffn): the upstream FFN (unit 2) changes at step 8, the
    downstream FFN (unit 5) at step 4.  Block-wise ACS leaves unit 2 stale at step 4, where unit 5 recomputes on
    its input and would pass the upstream error on (the surge); BU makes unit 2 update there too."""
    steps = 12
    sims = [segments(steps, [0, 6])] * 6
    sims[2], sims[5] = segments(steps, [0, 8]), segments(steps, [0, 4])
    volatility = [0.1, 0.1, 0.9, 0.1, 0.1, 0.2]
    profile = unit_calibration(sims, volatility)
    blockwise = BACPolicy(BACConfig(updates=2 / steps, profile=profile, variant="blockwise")).schedule(steps, 6)
    full = BACPolicy(BACConfig(updates=2 / steps, profile=profile, bubbling_units=1)).schedule(steps, 6)
    assert set(np.flatnonzero(blockwise[:, 2])) == {0, 8} and set(np.flatnonzero(blockwise[:, 5])) == {0, 4}
    assert set(np.flatnonzero(full[:, 2])) == {0, 4, 8}  # refreshed where the downstream FFN updates
    assert np.array_equal(np.delete(full, 2, axis=1), np.delete(blockwise, 2, axis=1))  # nothing else moves
    unified = BACPolicy(BACConfig(updates=2 / steps, profile=profile, variant="unified")).schedule(steps, 6)
    assert all(set(np.flatnonzero(unified[:, u])) == {0, 6} for u in range(6))  # block 0 attn1's schedule
    # stage 1 picks by volatility among FFN units only; downstream of the last FFN there is nothing to add
    schedules = [{0, 6}] * 5 + [{0, 3}]
    assert bubbling_union(schedules, np.array([9, 9, 0.1, 9, 9, 0.5]), 1)[5] == {0, 3}
    assert bubbling_union(schedules, np.array([9, 9, 0.1, 9, 9, 0.5]), 1)[2] == {0, 6}
    assert bubbling_union(schedules, np.array([9, 9, 0.1, 9, 9, 0.5]), 2)[2] == {0, 3, 6}


def test_bac_refuses_a_missing_calibration_a_bad_knob_and_another_step_count():
    bare = CacheProfile(model={}, blocks=[], r_attn_threshold=0.5)
    with pytest.raises(BACCalibrationError, match="calibrate bac"):
        build_config("bac", 0.3, bare)
    profile = unit_calibration([segments(10, [0])] * 3, [0.1] * 3)
    with pytest.raises(ValueError, match="0 < updates <= 1"):
        build_config("bac", 1.5, profile)
    with pytest.raises(BACCalibrationError, match="calibrated for 10-step videos; this video has 4 steps"):
        BACPolicy(build_config("bac", 0.3, profile)).schedule(4, 3)


def test_the_unit_cache_follows_the_schedule_per_branch_on_tiny(tiny_pipe):
    """tiny's shipped profile carries a BAC calibration: the recorded unit masks are the policy's table, a skipped
    self-attention never computes, and the video stays near the uncached one."""
    from ditfarm.cache.metrics import psnr

    prompt = "red circle moving left on blue background"
    reference = tiny_pipe.generate(prompt, seed=2)
    config = build_config("bac", 0.5, tiny_pipe.default_cache_profile())
    engine = cache.enable(tiny_pipe, config)
    queries = []
    handle = tiny_pipe.transformer.blocks[1].attn1.to_q.register_forward_hook(lambda *a: queries.append(1))
    try:
        frames = tiny_pipe.generate(prompt, seed=2)
        stats = cache.last_video_stats(tiny_pipe)
    finally:
        handle.remove()
        cache.disable(tiny_pipe)
    table = engine.policy.schedule(30, 3 * len(tiny_pipe.transformer.blocks))
    assert stats.masks["cond"] == stats.masks["uncond"] == table.tolist()
    assert len(queries) == 2 * table[:, 3].sum() < 2 * 30  # block 1's attn1 (unit 3), both branches
    assert 0.4 < stats.skipped_fraction < 0.6
    assert psnr(reference, frames) > 22


def test_unit_caches_refuse_compiled_blocks(tiny_pipe):
    from ditfarm.pipelines.compile import COMPILED_ATTR

    setattr(tiny_pipe.transformer, COMPILED_ATTR, "inductor")
    try:
        with pytest.raises(ValueError, match="render it with eager blocks"):
            cache.enable(tiny_pipe, build_config("bac", 0.5, tiny_pipe.default_cache_profile()))
    finally:
        delattr(tiny_pipe.transformer, COMPILED_ATTR)
    assert cache.engine_of(tiny_pipe) is None
