"""ERTACache: its schedule, timestep adjustment and rectification on constructed inputs, and its calibration on tiny."""

import numpy as np
import pytest
import torch

from ditfarm.cache import CacheProfile, ERTACacheConfig
from ditfarm.cache.policies import ERTACachePolicy
from ditfarm.cache.policies.ertacache import (
    ERTACacheCalibrationError,
    adjusted_sigmas,
    offline_schedule,
    rectification_from_sums,
    uniform_schedule,
)
from ditfarm.cache.presets import build_config

pytestmark = [pytest.mark.unit]


def rel_matrix(errors):
    """(N, D) whose N[i, s] / D[s] is errors[i][s]."""
    errors = np.asarray(errors, float)
    return errors, np.ones(errors.shape[1])


def test_offline_walk_reuses_while_the_error_from_the_last_refresh_stays_under_lambda():
    steps = 6
    err = np.full((steps, steps), 9.0)
    # from step 0: step 1 and 2 close, step 3 far; from step 3: 4 close, 5 far
    err[0, 1], err[0, 2], err[0, 3] = 0.05, 0.09, 0.3
    err[3, 4], err[3, 5] = 0.02, 0.5
    numerator, denominator = rel_matrix(err)
    assert offline_schedule(numerator, denominator, 0.1) == [1, 2, 4]
    assert offline_schedule(numerator, denominator, 0.06) == [1, 4]
    assert offline_schedule(numerator, denominator, 0.01) == []


def test_uniform_schedule_spaces_as_many_computed_steps_evenly():
    reused = uniform_schedule(30, 15)
    computed = [s for s in range(30) if s not in reused]
    assert len(reused) == 15 and computed[0] == 0 and computed[-1] == 29
    assert set(np.diff(computed)) <= {2, 3}


def test_timestep_adjustment_shortens_a_reused_interval_and_still_ends_at_zero():
    sigmas = np.linspace(1.0, 0.0, 11)
    assert np.allclose(adjusted_sigmas(sigmas, np.ones(10)), sigmas)
    phi = np.ones(10)
    phi[3] = 0.5
    out = adjusted_sigmas(sigmas, phi)
    nominal = sigmas[3] - sigmas[4]
    assert out[3] - out[4] == pytest.approx(0.5 * nominal)
    assert out[-1] == 0.0 and np.all(np.diff(out) < 0)
    # the noise not removed at step 3 is shared by the later steps in proportion to their intervals
    later = np.diff(out[4:])
    assert np.allclose(later, later[0]) and -later[0] > nominal
    # the last step is never shortened: the video must reach sigma 0
    phi = np.ones(10)
    phi[-1] = 0.0
    assert adjusted_sigmas(sigmas, phi)[-1] == 0.0


def linear_trajectory(steps=8, tokens=64, channels=6, seed=0):
    """Stack residuals R(s) = A + s (alpha A + m): each channel drifts linearly with the step."""
    g = np.random.default_rng(seed)
    a = g.normal(size=(tokens, channels))
    alpha, m = g.normal(scale=0.05, size=channels), g.normal(scale=0.1, size=channels)
    return [a + s * (alpha * a + m) for s in range(steps)]


def ls_sums(cached, truth):
    eps = cached - truth
    return np.stack(
        [
            np.full(cached.shape[1], cached.shape[0]),
            cached.sum(0),
            eps.sum(0),
            (cached**2).sum(0),
            (cached * eps).sum(0),
        ]
    )


def calibrated_profile(steps, reused, rectify, phi=None):
    phi = np.ones(steps) if phi is None else phi
    entry = {"lambda": 0.1, "reused": reused, "phi": list(phi), "rectify": rectify}
    return CacheProfile(model={}, blocks=[], r_attn_threshold=0.5, ertacache={"steps": steps, "entries": [entry]})


def test_rectification_removes_the_error_of_a_reused_step_on_a_linear_trajectory():
    residuals = linear_trajectory()
    cached, truth = residuals[2], residuals[5]  # computed at step 2, reused at step 5
    k, b = rectification_from_sums(ls_sums(cached, truth))
    profile = calibrated_profile(8, [5], {"cond": {"5": {"k": k.tolist(), "b": b.tolist()}}})
    policy = ERTACachePolicy(ERTACacheConfig(threshold=0.1, profile=profile))
    state = policy.new_state(1, 8)
    state.branch = "cond"
    corrected = policy.correct_stack(state, 5, torch.tensor(cached)).numpy()
    before = np.abs(cached - truth).sum()
    after = np.abs(corrected - truth).sum()
    assert after < 1e-6 * before
    # with noise on top of the drift it cannot be exact, but still errs less than plain reuse
    noisy = truth + np.random.default_rng(1).normal(scale=0.05, size=truth.shape)
    k, b = rectification_from_sums(ls_sums(cached, noisy))
    noisy_fit = cached - (k * cached + b)
    assert np.abs(noisy_fit - noisy).sum() < 0.8 * np.abs(cached - noisy).sum()
    # other variants, steps and branches reuse the cached residual as it is
    for variant in ("offline", "offline+dt"):
        plain = ERTACachePolicy(ERTACacheConfig(threshold=0.1, profile=profile, variant=variant))
        assert torch.equal(plain.correct_stack(state, 5, torch.tensor(cached)), torch.tensor(cached))
    assert torch.equal(policy.correct_stack(state, 4, torch.tensor(cached)), torch.tensor(cached))


def test_masks_follow_the_calibrated_schedule_and_uniform_keeps_its_count():
    profile = calibrated_profile(10, [3, 4, 7], {})
    for variant, reused in (("full", {3, 4, 7}), ("uniform", set(uniform_schedule(10, 3)))):
        policy = ERTACachePolicy(ERTACacheConfig(threshold=0.1, profile=profile, variant=variant))
        state = policy.new_state(4, 10)
        masks = [np.ones(4, dtype=np.int8)] + [policy.decide(state, s, None, None) for s in range(9)]
        assert {s for s, m in enumerate(masks) if not m.any()} == reused
        assert all(m.all() or not m.any() for m in masks)


def test_phi_moves_the_sigmas_only_with_timestep_adjustment():
    phi = np.ones(10)
    phi[4] = 0.25
    profile = calibrated_profile(10, [4], {}, phi)
    sigmas = np.linspace(1.0, 0.0, 11)
    offline = ERTACachePolicy(ERTACacheConfig(threshold=0.1, profile=profile, variant="offline"))
    full = ERTACachePolicy(ERTACacheConfig(threshold=0.1, profile=profile))
    assert not offline.adjusts_sigmas and full.adjusts_sigmas
    assert np.allclose(full.adjust_sigmas(sigmas), adjusted_sigmas(sigmas, phi))


def test_a_profile_without_the_calibration_the_run_needs_is_refused_by_name():
    bare = CacheProfile(model={}, blocks=[], r_attn_threshold=0.5)
    with pytest.raises(ERTACacheCalibrationError, match="calibrate ertacache"):
        build_config("ertacache", 0.1, bare)
    profile = calibrated_profile(10, [4], {})
    with pytest.raises(ERTACacheCalibrationError, match=r"calibrated at lambda 0.1, not 0.3"):
        build_config("ertacache", 0.3, profile)
    policy = ERTACachePolicy(build_config("ertacache", 0.1, profile))
    with pytest.raises(ERTACacheCalibrationError, match="calibrated for 10-step videos; this video has 4 steps"):
        policy.new_state(8, 4)
    with pytest.raises(ValueError, match="unknown ertacache variant"):
        ERTACachePolicy(ERTACacheConfig(threshold=0.1, profile=profile, variant="best"))


def test_calibration_on_tiny_feeds_a_run_that_reuses_shifts_and_corrects(tiny_pipe, tmp_path):
    """End to end on the trained model: calibrate on two prompts at 12 steps, save it in a profile, load it back,
    render: the reused steps are the calibrated ones, the sampler's sigmas moved, and the video stays close."""
    from ditfarm import cache
    from ditfarm.cache.metrics import psnr
    from ditfarm.tools.calibrate_ertacache import calibrate_ertacache

    shipped = CacheProfile.load(tiny_pipe.default_cache_profile())
    prompts = shipped.calibration["prompts"][:2]
    shipped.ertacache = calibrate_ertacache(tiny_pipe, prompts, [0.3], steps=12, log=lambda *a: None)["transformer"]
    path = shipped.save(tmp_path / "profile.json")
    profile = CacheProfile.load(path)
    entry = profile.ertacache["entries"][0]
    assert profile.ertacache["steps"] == 12 and 0 < len(entry["reused"]) < 11
    assert set(entry["rectify"]) == {"cond", "uncond"}
    assert {int(s) for s in entry["rectify"]["cond"]} <= set(entry["reused"])
    assert all(0.0 <= p <= 1.0 for p in entry["phi"])

    prompt = "red circle moving left on blue background"
    reference = tiny_pipe.generate(prompt, seed=3, steps=12)
    seen = []
    cache.enable(tiny_pipe, build_config("ertacache", 0.3, profile))
    try:
        frames = tiny_pipe.generate(prompt, seed=3, steps=12)
        seen = tiny_pipe.scheduler.sigmas.tolist()
        stats = cache.last_video_stats(tiny_pipe)
    finally:
        cache.disable(tiny_pipe)
    skipped_steps = {s for s, m in enumerate(stats.masks["cond"]) if not any(m)}
    assert skipped_steps == set(entry["reused"])
    tiny_pipe.scheduler.set_timesteps(12)
    nominal = tiny_pipe.scheduler.sigmas.tolist()
    moved = any(p < 1.0 for s, p in enumerate(entry["phi"]) if s in skipped_steps and s < 11)
    assert (seen != nominal) == moved
    assert psnr(reference, frames) > 15


def test_calibrate_command_refuses_bad_input_by_name(tmp_path, capsys):
    from ditfarm.commands.cli import main

    out = tmp_path / "p.json"
    assert main(["calibrate", "ertacache", "--lambdas", "0.1,fast", "--out", str(out)]) == 2
    assert "--lambdas takes comma-separated numbers" in capsys.readouterr().err
    assert (
        main(["calibrate", "ertacache", "--lambdas", "0.1", "--prompts", str(tmp_path / "none.txt"), "--out", str(out)])
        == 2
    )
    assert "none.txt does not exist" in capsys.readouterr().err
    assert main(["calibrate", "ertacache", "--lambdas", "-0.1", "--out", str(out)]) == 2
    assert "must be positive" in capsys.readouterr().err
    assert not out.exists()
