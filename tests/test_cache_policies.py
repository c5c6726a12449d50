"""Each policy's decisions on constructed indicator sequences: known inputs, known masks."""

import numpy as np
import pytest
from helpers import tiny_ladder

from ditfarm.cache import AdaptiveConfig, BWCacheConfig, CacheProfile, ProfilingConfig, TaylorSeerConfig
from ditfarm.cache.policies import AdaptivePolicy, BWCachePolicy, ProfilingPolicy, TaylorSeerPolicy
from ditfarm.cache.policies.adaptive import Ladder, Rung
from ditfarm.cache.profile import BACKGROUND, FOREGROUND, BlockProfile

pytestmark = [pytest.mark.unit]

TINY = tiny_ladder()


def drive(policy, num_blocks, num_steps, sums_at):
    """Run observe/decide over a whole video; sums_at(step, computed) gives the reduced (blocks, 2) sums."""
    state = policy.new_state(num_blocks, num_steps)
    mask = np.ones(num_blocks, dtype=np.int8)
    masks = []
    for step in range(num_steps):
        masks.append(mask.copy())
        sums = np.asarray(sums_at(step, mask), dtype=np.float64)
        policy.observe(state, step, mask, sums)
        mask = policy.decide(state, step, mask, sums)
    return np.array(masks)


def profile(classes):
    blocks = [BlockProfile(i, 0.5, c, []) for i, c in enumerate(classes)]
    return CacheProfile(model={}, blocks=blocks, r_attn_threshold=0.5)


def rel(values):
    """Sums whose ratio numerator/denominator is the given per-block value."""
    return np.stack([np.asarray(values, float), np.ones(len(values))], axis=1)


def test_bwcache_reuses_all_blocks_for_r_steps_then_guards_the_end():
    policy = BWCachePolicy(BWCacheConfig(threshold=0.15, reuse_fraction=0.1, warmup_steps=2))
    change = {0: None, 1: 0.3, 2: 0.1}  # step 0 has nothing to compare with; then large, then small

    def sums(step, mask):
        if step == 0 or not mask.any():
            return np.zeros((4, 2))
        return rel([change.get(step, 0.1)] * 4)

    computed = drive(policy, 4, 20, sums).all(axis=1)
    # R = 2 reuse steps after each trigger; the first trigger at step 2 leaves 17 steps, the last 9 always run
    expected = [True] * 3 + [False, False, True, False, False, True, False, False] + [True] * 9
    assert computed.tolist() == expected


def test_bwcache_mean_over_blocks_decides():
    policy = BWCachePolicy(BWCacheConfig(threshold=0.15, warmup_steps=1))
    masks = drive(policy, 2, 10, lambda s, m: rel([0.05, 0.30]) if s else np.zeros((2, 2)))
    assert masks.all()  # mean 0.175 >= 0.15: never reuse, although block 0 alone is below
    masks = drive(policy, 2, 10, lambda s, m: rel([0.05, 0.20]) if s else np.zeros((2, 2)))
    assert not masks[2].any()  # mean 0.125 < 0.15


def test_profiling_keeps_foreground_and_refreshes_on_a_shrinking_schedule():
    policy = ProfilingPolicy(
        ProfilingConfig(profile([BACKGROUND, FOREGROUND, BACKGROUND, BACKGROUND]), max_interval=6, min_interval=2)
    )
    assert sorted(policy.refresh_steps(30)) == [0, 1, 2, 3, 4, 10, 15, 19, 23, 26, 29]
    masks = drive(policy, 4, 30, lambda s, m: np.zeros((4, 2)))
    assert masks[:, 1].all()
    refresh = masks.all(axis=1)
    assert np.flatnonzero(refresh).tolist() == sorted(policy.refresh_steps(30))
    assert (masks[~refresh][:, [0, 2, 3]] == 0).all()


def test_profiling_uniform_schedule_matches_released_code():
    policy = ProfilingPolicy(ProfilingConfig(profile([BACKGROUND]), max_interval=6, min_interval=6))
    assert sorted(policy.refresh_steps(50)) == list(range(7)) + [12, 18, 24, 30, 36, 42, 48]


def test_taylorseer_full_every_n_steps():
    policy = TaylorSeerPolicy(TaylorSeerConfig(interval=5, order=1, warmup_steps=1))
    masks = drive(policy, 3, 16, lambda s, m: np.zeros((3, 2)))
    assert np.flatnonzero(masks.all(axis=1)).tolist() == [0, 5, 10, 15]
    assert not masks[~masks.all(axis=1)].any()
    assert policy.forecast_order == 1


def test_adaptive_skips_by_predicted_error_per_block_and_class():
    config = AdaptiveConfig(
        threshold=0.1,
        order=0,
        max_run=3 / 12,
        warmup_fraction=0.2,
        final_steps=1,
        profile=profile([BACKGROUND, BACKGROUND, FOREGROUND]),
        foreground_scale=0.5,
        granularity="block",
    )
    policy = AdaptivePolicy(config)
    # block 0: error 0.02 per step (order 0: grows ~ g); block 1: 0.5 (too large); block 2: 0.07, below the
    # background threshold 0.1 but above the foreground one 0.05
    errors = np.array([0.02, 0.5, 0.07])

    def sums(step, mask):
        if step == 0:
            return np.zeros((3, 2))
        return rel(errors)  # for a block computed after g steps, the engine's measurement scales with g

    masks = drive(policy, 3, 12, sums)
    assert masks[:2].all()  # warm-up: 20% of 12 steps, at least 2
    assert masks[:, 1].all() and masks[:, 2].all()
    # block 0: predicted error after j+1 skips is 0.02 (j+1) -> skip runs of 3 (max_run), then recompute
    assert masks[2:11, 0].tolist() == [0, 0, 0, 1, 0, 0, 0, 1, 0]
    assert masks[-1].all()  # final step


def stack_error_sums(unit_error, order):
    """Sums for 3 blocks whose forecast over a gap of g steps errs by unit_error * g^(order+1); zeros when skipped."""
    last = {"computed": 0}

    def sums(step, mask):
        if step == 0 or not mask.any():
            return np.zeros((3, 2))
        gap, last["computed"] = step - last["computed"], step
        return rel([unit_error * gap ** (order + 1)] * 3) * gap  # the engine's sums are not divided by the gap

    return sums


def test_adaptive_step_granularity_skips_whole_steps_while_accumulated_error_fits():
    runs_of_3 = Ladder((Rung(0.0, warmup_fraction=0.2, first_run=3 / 12, growth=0.0, max_run=3 / 12),))
    config = AdaptiveConfig(threshold=0.1, order=0, final_steps=1, ladder=runs_of_3)  # fractions of the 12 steps
    masks = drive(AdaptivePolicy(config), 3, 12, stack_error_sums(0.02, order=0))
    assert all(m.all() or not m.any() for m in masks)  # every block together
    # after warm-up: skip while 0.02 * (1 + 2 + ...) < 0.1 -> two skipped steps, then a computed one; last step runs
    assert [int(m[0]) for m in masks] == [1, 1, 0, 0, 1, 0, 0, 1, 0, 0, 1, 1]
    tight = AdaptiveConfig(threshold=0.1, order=0, max_run=1 / 12, final_steps=1, first_run=1 / 12, ladder=runs_of_3)
    assert [int(m[0]) for m in drive(AdaptivePolicy(tight), 3, 12, stack_error_sums(0.02, 0))][2:6] == [0, 1, 0, 1]


def test_adaptive_step_granularity_spends_less_where_the_profile_says_steps_change_more():
    from ditfarm.cache.policies.adaptive import change_prior

    curve = [float("nan")] + [1.0] * 8 + [4.0] * 3  # a profile of 12 steps whose last quarter changes 4x faster
    prof = profile([BACKGROUND] * 3)
    for block in prof.blocks:
        block.change = curve
    prior = change_prior(prof, 12)
    assert prior.mean() == pytest.approx(1.0) and prior[-1] == pytest.approx(4 * prior[2])
    assert change_prior(None, 7).tolist() == [1.0] * 7
    # the same measured errors; entering the fast part (step 8 on) the shaped policy expects 4x the error there, so
    # it spends its budget after one skipped step and computes step 9, where the flat one skips 8 and 9
    runs_of_3 = Ladder((Rung(0.0, warmup_fraction=0.2, first_run=3 / 12, growth=0.0, max_run=3 / 12),))
    flat = drive(
        AdaptivePolicy(AdaptiveConfig(threshold=0.1, order=0, final_steps=1, ladder=runs_of_3)),
        3,
        12,
        stack_error_sums(0.02, 0),
    )
    shaped = drive(
        AdaptivePolicy(AdaptiveConfig(threshold=0.1, order=0, final_steps=1, ladder=runs_of_3, profile=prof)),
        3,
        12,
        stack_error_sums(0.02, 0),
    )
    assert [int(m[0]) for m in flat] == [1, 1, 0, 0, 1, 0, 0, 1, 0, 0, 1, 1]
    assert [int(m[0]) for m in shaped] == [1, 1, 0, 0, 1, 0, 0, 1, 0, 1, 0, 1]


def test_adaptive_threshold_zero_never_skips():
    policy = AdaptivePolicy(AdaptiveConfig(threshold=0.0))
    assert drive(policy, 3, 10, lambda s, m: rel([1e-9] * 3)).all()


def test_adaptive_budget_picks_its_rung_of_the_ladder_unless_the_config_says_otherwise():
    from ditfarm.cache.policies.adaptive import GENERIC_LADDER, ladder

    rungs = TINY.rungs
    assert (
        ladder(AdaptiveConfig(threshold=0.1, ladder=TINY))
        == ladder(AdaptiveConfig(threshold=0.49, ladder=TINY))
        == rungs[0]
    )
    assert ladder(AdaptiveConfig(threshold=0.5, ladder=TINY)) == rungs[1]
    assert ladder(AdaptiveConfig(threshold=0.65, ladder=TINY)) == rungs[2]
    assert ladder(AdaptiveConfig(threshold=99, ladder=TINY)) == rungs[-1]
    mine = ladder(
        AdaptiveConfig(threshold=2.0, max_run=0.1, warmup_fraction=0.3, growth=0, first_run=0.05, ladder=TINY)
    )
    assert (mine.max_run, mine.warmup_fraction, mine.growth, mine.first_run) == (0.1, 0.3, 0, 0.05)
    assert [r.budget for r in rungs] == sorted(r.budget for r in rungs)
    assert ladder(AdaptiveConfig(threshold=3.0)) == GENERIC_LADDER.rungs[0]  # a model without its own ladder


def computed_steps(masks):
    return [i for i, m in enumerate(masks) if m.all()]


SEARCHED = [  # per rung: the schedule benchmarks/schedule-search-*.jsonl picked at its count (first: the gentler shape)
    [0, 1, 2, 3, 4, 5, 6, 8, 10, 13, 16, 20, 24, 28],
    [0, 1, 2, 3, 4, 5, 6, 7, 9, 12, 16, 20, 24, 28],
    [0, 1, 2, 3, 4, 5, 6, 8, 11, 15, 19, 23, 27],
    [0, 1, 2, 3, 4, 5, 8, 11, 15, 19, 23, 27],
    [0, 1, 2, 3, 4, 7, 11, 15, 19, 23, 27],
    [0, 1, 2, 3, 5, 8, 12, 17, 22, 27],
    [0, 1, 2, 3, 6, 10, 15, 21, 27],
    [0, 1, 2, 3, 6, 11, 18, 26],
    [0, 1, 2, 3, 8, 15, 23],
    [0, 1, 2, 8, 15, 23],
    [0, 1, 2, 11, 20],
    [0, 1, 2, 16],
]


@pytest.mark.parametrize("rung", range(12))
def test_each_rung_computes_its_searched_schedule_when_errors_are_small(rung):
    """With a tiny forecast error only the rung's run limits bind."""
    r = TINY.rungs[rung]
    masks = drive(
        AdaptivePolicy(AdaptiveConfig(threshold=r.budget or 0.3, ladder=TINY)), 3, 30, stack_error_sums(1e-4, 0)
    )
    assert computed_steps(masks) == SEARCHED[rung]


def test_a_large_forecast_error_cuts_a_long_run_short():
    """The fastest rung allows runs of 8 after step 2, with the budget scaled to what such runs cost; a video whose
    forecast errs far more than tiny's (unit error 0.03-0.05) computes more often."""
    calm = drive(AdaptivePolicy(AdaptiveConfig(threshold=3.0, ladder=TINY)), 3, 30, stack_error_sums(0.04, 1))
    rough = drive(AdaptivePolicy(AdaptiveConfig(threshold=3.0, ladder=TINY)), 3, 30, stack_error_sums(2.0, 1))
    assert computed_steps(calm) == [0, 1, 2, 11, 20]
    assert len(computed_steps(rough)) > 6
    assert (
        AdaptivePolicy(AdaptiveConfig()).whole_steps
        and not AdaptivePolicy(AdaptiveConfig(granularity="block")).whole_steps
    )


@pytest.mark.parametrize(
    "bad",
    [
        dict(threshold=-1.0),
        dict(order=3),
        dict(max_run=-1),
        dict(granularity="frame"),
        dict(warmup_fraction=1.5),
        dict(growth=-1.0),
        dict(damping=2.0),
        dict(first_run=0),
    ],
)
def test_adaptive_rejects_bad_config(bad):
    with pytest.raises(ValueError):
        AdaptivePolicy(AdaptiveConfig(**bad))


def test_step_counted_knobs_are_fractions_of_the_schedule():
    """TaylorSeer's interval and ProfilingDiT's refresh intervals are steps of the model's reference schedule:
    the same fraction at other lengths, never below every step."""
    from ditfarm.cache.policies.schedule import scaled_interval

    assert scaled_interval(5, 50, 50) == 5 and scaled_interval(5, 30, 50) == 3 and scaled_interval(5, 100, 50) == 10
    assert scaled_interval(5, 4, 50) == 1  # a 4-step distilled schedule: every step
    assert scaled_interval(5, 4, None) == 5  # no reference: as given
    ts = TaylorSeerPolicy(TaylorSeerConfig(interval=5, reference_steps=30))
    masks = drive(ts, 3, 60, lambda s, m: np.zeros((3, 2)))
    assert np.flatnonzero(masks.all(axis=1)).tolist() == list(range(0, 60, 10))


def test_adaptive_run_limits_scale_with_the_steps():
    """tiny's ladder at 50 steps: the same schedule shape as at 30, runs 50/30 as long; at 4 steps nothing runs
    long enough to skip a step."""
    rung = TINY.rung_for(0.5)
    assert [rung.run_limit(30, r) for r in range(4)] == [1, 2, 3, 3]
    assert [rung.run_limit(50, r) for r in range(4)] == [1, 3, 5, 5]
    assert all(rung.run_limit(4, r) == 0 for r in range(4))
    masks = drive(AdaptivePolicy(AdaptiveConfig(threshold=0.5, ladder=TINY)), 3, 50, stack_error_sums(1e-4, 0))
    computed = computed_steps(masks)
    assert computed[:13] == list(range(13))  # warm-up: 8/30 of 50 steps
    assert abs(len(computed) / 50 - 14 / 30) < 0.1  # about the share it computes of 30 (20 of 50: 40% vs 47%)
    for budget in (0.1, 0.5, 1.0, 2.0):  # a 4-step video: every rung up to 2.0 computes every step ...
        assert drive(
            AdaptivePolicy(AdaptiveConfig(threshold=budget, ladder=TINY)), 3, 4, stack_error_sums(1e-4, 0)
        ).all(), budget
    fastest = drive(AdaptivePolicy(AdaptiveConfig(threshold=4.0, ladder=TINY)), 3, 4, stack_error_sums(1e-4, 0))
    assert fastest.all(axis=1).sum() >= 3  # ... and the fastest skips at most one (4 of 30 computed at 30 steps)
