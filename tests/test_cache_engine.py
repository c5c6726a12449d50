"""The engine on a real (random-weight) tiny WanTransformer3DModel: exactness, runs, branches, the reduce seam."""

import numpy as np
import pytest
import torch
from diffusers import WanTransformer3DModel
from helpers import tiny_ladder

import ditfarm
from ditfarm import cache
from ditfarm.cache.metrics import psnr
from ditfarm.cache.policies import AdaptivePolicy, TaylorSeerPolicy
from ditfarm.cache.policies.base import CachePolicy
from ditfarm.cache.profile import BlockProfile
from ditfarm.pipelines.tiny.model_config import TRANSFORMER_CONFIG

pytestmark = [pytest.mark.unit]

PROMPT = "red circle moving left on blue background"


class ScriptedPolicy(CachePolicy):
    """Skips the blocks of a fixed mask on every step after the first."""

    name = "scripted"
    indicator = "residual"

    def __init__(self, mask):
        self.mask = np.asarray(mask, dtype=np.int8)

    def decide(self, state, step, computed, sums):
        return self.mask.copy()


@pytest.fixture(scope="module")
def pipe(random_model_folder):
    return ditfarm.load_pipeline(random_model_folder)


def render_cached(pipe, config, seed, steps):
    """One video with the cache enabled (then disabled): its frames and the cache's stats for it."""
    cache.enable(pipe, config)
    try:
        return pipe.generate(PROMPT, seed=seed, steps=steps), cache.last_video_stats(pipe)
    finally:
        cache.disable(pipe)


def run_calls(transformer, inputs, policy):
    """Call the transformer once per step under cache_context, with the engine attached."""
    engine = cache.CacheEngine(transformer, policy)
    engine.attach()
    calls = []
    hooks = [
        b.attn1.register_forward_hook(lambda m, a, o, i=i: calls.append(i)) for i, b in enumerate(transformer.blocks)
    ]
    outs = []
    try:
        for step, (x, t, text) in enumerate(inputs):
            with transformer.cache_context("cond", step_index=step, num_inference_steps=len(inputs)):
                outs.append(transformer(x, t, text, return_dict=False)[0])
    finally:
        for h in hooks:
            h.remove()
        engine.detach()
    return outs, calls


def test_skipped_run_adds_the_cached_residual_once(pipe):
    transformer = pipe.transformer
    torch.manual_seed(0)
    x, text = torch.randn(1, transformer.config.in_channels, 4, 16, 16), torch.randn(1, 16, 32)
    t = torch.tensor([500.0])
    with torch.no_grad():
        full = transformer(x, t, text, return_dict=False)[0]
        outs, calls = run_calls(transformer, [(x, t, text), (x, t, text)], ScriptedPolicy([1, 0, 0, 1, 1, 0]))
    # step 0 runs all 6 blocks; step 1 skips 1-2 (one run) and 5 (a run of one) - their attention never runs
    assert calls == [0, 1, 2, 3, 4, 5, 0, 3, 4]
    # same input at both steps: reusing the residuals reproduces the full output
    torch.testing.assert_close(outs[0], full, rtol=0, atol=0)
    torch.testing.assert_close(outs[1], full, rtol=1e-5, atol=1e-5)
    # a different input at step 1: the cache is used, so the output is no longer the exact one
    with torch.no_grad():
        x2 = x + 0.5 * torch.randn_like(x)
        exact = transformer(x2, t, text, return_dict=False)[0]
        approx, _ = run_calls(transformer, [(x, t, text), (x2, t, text)], ScriptedPolicy([1, 0, 0, 1, 1, 0]))
    assert (approx[1] - exact).abs().max() > 1e-3


@pytest.mark.parametrize(
    "config",
    [cache.BWCacheConfig(threshold=0.0), cache.AdaptiveConfig(threshold=0.0), cache.TaylorSeerConfig(interval=1)],
)
def test_computing_every_block_reproduces_the_uncached_video(pipe, config):
    base = pipe.generate(PROMPT, seed=3, steps=6)
    cached, stats = render_cached(pipe, config, seed=3, steps=6)
    assert np.array_equal(base, cached)
    assert stats.skipped == 0 and stats.computed == 6 * 6 * 2  # blocks x steps x CFG branches
    assert np.array_equal(pipe.generate(PROMPT, seed=3, steps=6), base)  # disabled cleanly


def test_cfg_branches_keep_separate_state(pipe):
    seen = []

    def spy(vector):
        seen.append(vector.clone())
        return vector

    engine = cache.enable(pipe, cache.AdaptiveConfig(threshold=0.2), reduce=spy)
    during = {}

    def look(step, latents):  # the states are freed when the video ends, so look while it runs
        if step == 7:
            during.update({k: v.stack.terms[0] for k, v in engine.state_manager._state_cache.items()})

    try:
        pipe.generate(PROMPT, seed=1, steps=8, guidance_scale=3.0, on_step=look)
        branches = during
        stats = cache.last_video_stats(pipe)
        assert engine.state_manager._state_cache == {}  # freed after the video
        assert set(branches) == {"cond", "uncond"}
        assert not torch.equal(branches["cond"], branches["uncond"])  # the stack's cached residual per branch
        assert set(stats.masks) == {"cond", "uncond"} and len(stats.masks["cond"]) == 8
        # one reduce per denoising step, both branches in one vector (6 rows x 2 sums each); none after the last
        assert [v.numel() for v in seen] == [24] * 7
        assert stats.peak_bytes > 0
        pipe.generate(PROMPT, seed=1, steps=8, guidance_scale=1.0)  # no CFG: one branch, and a fresh state
        assert set(cache.last_video_stats(pipe).masks) == {"cond"}
    finally:
        cache.disable(pipe)


def test_reduce_seam_steers_the_decisions(pipe):
    def masks_with(reduce):
        cache.enable(
            pipe, cache.AdaptiveConfig(threshold=0.3, warmup_fraction=0.0, first_run=0.1, max_run=0.3), reduce=reduce
        )  # runs of 1 to 3 of the 10 steps
        try:
            pipe.generate(PROMPT, seed=2, steps=10)
            return cache.last_video_stats(pipe)
        finally:
            cache.disable(pipe)

    def inflate(vector):  # what a rank would see if another rank's numerators were huge
        v = vector.clone().reshape(-1, 2)
        v[:, 0] *= 1000
        return v.flatten()

    plain = masks_with(cache.identity_reduce)
    inflated = masks_with(inflate)
    assert plain.skipped > 0
    assert inflated.skipped == 0
    assert plain.masks != inflated.masks


def test_profile_of_another_model_is_refused(pipe):
    profile = cache.CacheProfile(
        model=cache.model_identity(pipe.transformer),
        blocks=[BlockProfile(i, 0.5, "background", []) for i in range(6)],
        r_attn_threshold=0.5,
    )
    cache.enable(pipe, cache.ProfilingConfig(profile=profile))  # same model: accepted
    cache.disable(pipe)
    other = WanTransformer3DModel(**{**TRANSFORMER_CONFIG, "num_layers": 4})
    with pytest.raises(cache.ProfileMismatchError, match="6 blocks.*this model is WanTransformer3DModel with 4 blocks"):
        cache.enable(other, cache.ProfilingConfig(profile=profile))
    assert cache.engine_of(other) is None


def test_profile_round_trips_through_json(tmp_path, pipe):
    profile = cache.CacheProfile(
        model=cache.model_identity(pipe.transformer),
        blocks=[
            BlockProfile(i, 0.1 * i, "foreground" if i % 2 else "background", [float("nan"), 0.1]) for i in range(6)
        ],
        r_attn_threshold=0.25,
        mask_iou=0.7,
    )
    loaded = cache.CacheProfile.load(profile.save(tmp_path / "p.json"))
    assert loaded.foreground_blocks == [1, 3, 5] and loaded.model == profile.model and loaded.mask_iou == 0.7
    (tmp_path / "bad.json").write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="not a ditfarm cache profile"):
        cache.CacheProfile.load(tmp_path / "bad.json")


def test_sums_are_measured_only_where_a_decision_can_use_them(pipe):
    def reduced_vectors(config):
        seen = []

        def spy(vector):
            seen.append(vector.clone())
            return vector

        cache.enable(pipe, config, reduce=spy)
        try:
            pipe.generate(PROMPT, seed=1, steps=8, guidance_scale=1.0)
        finally:
            cache.disable(pipe)
        return [bool(v.abs().sum() > 0) for v in seen]  # one per filed step 0..6

    # a zero budget never skips: nothing to measure, the engine's cost is its hooks alone (still one reduce a step)
    assert reduced_vectors(cache.AdaptiveConfig(threshold=0.0)) == [False] * 7
    assert reduced_vectors(cache.BWCacheConfig(threshold=0.0)) == [False] * 7
    assert any(reduced_vectors(cache.BWCacheConfig(threshold=0.15)))
    # warm-up 25% of 8 steps = 2: the first free decision (for step 2) needs step 1's sums; the last free one is
    # made at step 5 (step 7 always runs); step 0 has nothing to compare with
    tight = cache.AdaptiveConfig(threshold=1e-9, warmup_fraction=0.25, final_steps=1)  # every step runs
    measured = reduced_vectors(tight)
    assert measured == [False, True, True, True, True, True, False]


class PerBlockTaylorSeer(TaylorSeerPolicy):
    whole_steps = False


def test_whole_step_policies_cache_one_stack_residual(pipe):
    """TaylorSeer skips whole steps: the engine's stack path (one residual, one add) renders what the per-block
    path renders, and holds at most a sixth of the bytes (6 blocks)."""
    config = cache.TaylorSeerConfig(interval=3, order=1)
    results = {}
    for policy in (TaylorSeerPolicy(config), PerBlockTaylorSeer(config)):
        engine = cache.CacheEngine(pipe.transformer, policy)
        engine.attach()
        try:
            frames = pipe.generate(PROMPT, seed=4, steps=9)
            results[policy.whole_steps] = (frames, engine.last_video)
        finally:
            engine.detach()
    (stack_frames, stack_stats), (block_frames, block_stats) = results[True], results[False]
    assert stack_stats.masks == block_stats.masks and stack_stats.skipped == 6 * 6 * 2  # 6 steps of 6 blocks x 2
    assert psnr(block_frames, stack_frames) > 50  # the same series, summed in another order
    assert 0 < stack_stats.peak_bytes * 6 <= block_stats.peak_bytes


def test_whole_step_policy_with_a_mixed_mask_is_refused(pipe):
    class Broken(ScriptedPolicy):
        whole_steps = True

    with pytest.raises(RuntimeError, match="declares whole steps but planned"):
        run_calls(
            pipe.transformer,
            [(torch.randn(1, 6, 4, 16, 16), torch.tensor([500.0]), torch.randn(1, 16, 32))] * 2,
            Broken([1, 0, 1, 1, 1, 1]),
        )


class DampedForecastProbe(CachePolicy):
    """Computes every step and measures the error of a half-damped first-order forecast of the stack."""

    name = "damped-probe"
    indicator = "forecast"
    forecast_order = 1
    forecast_damping = 0.5
    whole_steps = True

    def decide(self, state, step, computed, sums):
        return np.ones(state.num_blocks, dtype=np.int8)


def test_forecast_indicator_measures_the_damped_forecast_it_would_use(pipe):
    transformer = pipe.transformer
    torch.manual_seed(0)
    text, t = torch.randn(1, 16, 32), torch.tensor([500.0])
    xs = [torch.randn(1, transformer.config.in_channels, 4, 16, 16) for _ in range(4)]
    edges = []
    hooks = [
        transformer.blocks[0].register_forward_pre_hook(lambda m, a: edges.append(a[0])),
        transformer.blocks[-1].register_forward_hook(lambda m, a, o: edges.append(o)),
    ]
    with torch.no_grad():
        for x in xs[:3]:
            transformer(x, t, text, return_dict=False)
    for h in hooks:
        h.remove()
    r0, r1, r2 = (edges[2 * i + 1].double() - edges[2 * i].double() for i in range(3))
    seen = []
    engine = cache.CacheEngine(transformer, DampedForecastProbe(), reduce=lambda v: seen.append(v.clone()) or v)
    engine.attach()
    try:
        with torch.no_grad():
            for step, x in enumerate(xs):
                with transformer.cache_context("cond", step_index=step, num_inference_steps=4):
                    transformer(x, t, text, return_dict=False)
    finally:
        engine.detach()
    step2 = seen[-1].reshape(-1, 2)  # reduced at step 3: step 2's sums, the stack's in row 0
    expected = (r2 - (r1 + 0.5 * (r1 - r0))).abs().sum()
    assert float(step2[0, 0]) == pytest.approx(float(expected), rel=1e-4)
    assert float(step2[0, 1]) == pytest.approx(float(r2.abs().sum()), rel=1e-4)
    assert float(step2[1:].abs().sum()) == 0.0


class EveryThirdStep(CachePolicy):
    """Whole steps: computes steps 0, 3, 6, ... and reuses the model's output in between."""

    name = "every-third"
    indicator = "forecast"
    whole_steps = True
    reuse_output = True

    def decide(self, state, step, computed, sums):
        return (np.ones if (step + 1) % 3 == 0 else np.zeros)(state.num_blocks, dtype=np.int8)


def test_reuse_output_skips_the_whole_call_and_returns_the_last_output(pipe):
    transformer = pipe.transformer
    torch.manual_seed(0)
    inputs = [(torch.randn(1, 6, 4, 16, 16), torch.tensor([900.0 - 100 * s]), torch.randn(1, 16, 32)) for s in range(7)]
    embeds = []
    hook = transformer.patch_embedding.register_forward_hook(lambda m, a, o: embeds.append(1))
    try:
        with torch.no_grad():
            outs, calls = run_calls(transformer, inputs, EveryThirdStep())
    finally:
        hook.remove()
    assert len(embeds) == 3 and len(calls) == 3 * len(transformer.blocks)  # steps 0, 3, 6 only, embeddings too
    for skipped, source in ((1, 0), (2, 0), (4, 3), (5, 3)):
        assert torch.equal(outs[skipped], outs[source])
    assert not torch.equal(outs[3], outs[0])
    with pytest.raises(ValueError, match="needs whole-step decisions"):
        cache.CacheEngine(transformer, type("Mixed", (ScriptedPolicy,), {"reuse_output": True})([1, 0, 1, 1, 1, 1]))


def test_adaptive_fastest_rungs_reuse_the_output_and_render(pipe):
    fast = cache.AdaptiveConfig(threshold=3.0, ladder=tiny_ladder())
    assert (
        AdaptivePolicy(fast).reuse_output
        and not AdaptivePolicy(cache.AdaptiveConfig(ladder=tiny_ladder())).reuse_output
    )
    assert not AdaptivePolicy(
        cache.AdaptiveConfig(threshold=3.0, granularity="block", ladder=tiny_ladder())
    ).reuse_output
    frames, stats = render_cached(pipe, fast, seed=4, steps=12)
    assert frames.std() > 0 and 0 < stats.skipped_fraction < 1  # fidelity floors: tests/test_cache_fidelity.py
    assert stats.peak_bytes > 0
