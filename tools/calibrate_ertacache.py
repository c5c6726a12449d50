"""ERTACache's calibration (``ditfarm calibrate ertacache``): measure what ERTACache needs, on the model itself, into its cache profile.

Two kinds of calibration run per prompt (cache/policies/ertacache.py has the equations):

1. Full compute.  Each CFG branch's stack residual R(s) = h_out - h_in is kept for every step, and the pairwise
   sums N[i, s] = ||R(i) - R(s)||_1 and D[s] = ||R(s)||_1 are added up over prompts and branches.  Any lambda's
   reuse schedule follows from (N, D) by the offline walk.
2. For each lambda, sampling along the cached trajectory: computed steps refresh the cached residual R~; at a
   reused step the transformer runs twice on the same input, once fully (the truth: R and the output) and once
   with the blocks replaced by R~ (the output the sampler then takes, so later steps see the cache's own
   history, as at inference).  This gives phi_s from sum ||v~ - v||_1 / sum ||v_s - v_{s-1}||_1 on the guided
   velocity the sampler steps with (the model output for Wan's flow matching; v = skip x + out F for tiny's
   preconditioned output), and per branch and channel the least-squares sums of eps = R~ - R against R~.

The calibration runs in one process: the whole of every step's residual is at hand, so nothing needs reducing.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import BaseState, StateManager

from ..cache.policies.ertacache import offline_schedule, rectification_from_sums
from ..pipelines.adapters import adapter_for

TAP = "ditfarm_ertacache_calibration"


class _BranchTap(BaseState):
    def __init__(self):
        super().__init__()
        self.reset()

    def reset(self, *args, **kwargs) -> None:
        self.stack_input: torch.Tensor | None = None
        self.residual: torch.Tensor | None = None  # the stack residual of the call that just ran
        self.history: list[torch.Tensor] = []  # record mode: every step's residual (CPU, float32)
        self.cached: torch.Tensor | None = None  # shadow mode: R~


@dataclass
class _Sums:
    """What the shadow runs add up for one lambda: phi's numerator and denominator per step, and per branch and
    reused step the (5, channels) least-squares sums (n, sum r, sum eps, sum r^2, sum r*eps)."""

    phi_numerator: np.ndarray
    phi_denominator: np.ndarray
    rectify: dict


class _Tap:
    """Hooks on the transformer and its blocks: record residuals, or stand in for the stack with R~."""

    def __init__(self, transformer, guidance_scale: float):
        self.transformer = transformer
        self.guidance_scale = guidance_scale  # the scale this transformer's steps are guided at
        self.blocks = adapter_for(transformer).blocks()
        self.state_manager = StateManager(_BranchTap)
        self.mode = "record"  # or "shadow"
        self.skip_blocks = False
        self.reused: set[int] = set()
        self.sums: _Sums | None = None
        self.truth: dict[str, torch.Tensor] = {}  # shadow mode: this step's true output per branch
        self.current_step = -1
        self.previous_velocity: torch.Tensor | None = None

    def observe_step(self, scheduler, model_output, timestep, sample) -> None:
        """At the sampler's step: phi's sums from the guided velocity the sampler takes (the cached one at a
        reused step) and the true one at the same point, v = the scheduler's ``velocity`` where it has one
        (tiny's preconditioning), else the model output itself (flow matching: Wan)."""
        truth = self.truth.get("cond")
        if "uncond" in self.truth:
            truth = self.truth["uncond"] + self.guidance_scale * (truth - self.truth["uncond"])
        to_velocity = getattr(scheduler, "velocity", None)
        if to_velocity is not None:
            true_v = to_velocity(truth, timestep, sample).float()
            taken_v = to_velocity(model_output, timestep, sample).float()
        else:
            true_v, taken_v = truth, model_output.float()
        step = self.current_step
        if step in self.reused and self.previous_velocity is not None:
            self.sums.phi_numerator[step] += float((taken_v - true_v).abs().sum())
            self.sums.phi_denominator[step] += float((true_v - self.previous_velocity).abs().sum())
        self.previous_velocity = true_v
        self.truth = {}

    def attach(self) -> None:
        HookRegistry.check_if_exists_or_initialize(self.transformer).register_hook(_TransformerTap(self), TAP)
        for i, block in enumerate(self.blocks):
            HookRegistry.check_if_exists_or_initialize(block).register_hook(_BlockTap(self, i), TAP)

    def detach(self) -> None:
        HookRegistry.check_if_exists_or_initialize(self.transformer).remove_hook(TAP, recurse=False)
        for block in self.blocks:
            HookRegistry.check_if_exists_or_initialize(block).remove_hook(TAP, recurse=False)
        self.state_manager.reset()


class _TransformerTap(ModelHook):
    _is_stateful = True

    def __init__(self, tap: _Tap):
        super().__init__()
        self.tap = tap
        self.state_manager = tap.state_manager

    def new_forward(self, module, *args, **kwargs):
        tap, state = self.tap, self.state_manager.get_state()
        context = self.state_manager.context
        step, branch = int(context.step_index), context.name
        forward = self.fn_ref.original_forward
        output = forward(*args, **kwargs)  # every block computed: the truth at this input
        if tap.mode == "record":
            state.history.append(state.residual.detach().float().cpu())
            return output
        truth = _first(output).detach().float()
        if step in tap.reused and state.cached is not None:
            tap.skip_blocks = True
            try:
                output = forward(*args, **kwargs)
            finally:
                tap.skip_blocks = False
            sums = tap.sums
            r = state.cached.double().reshape(-1, state.cached.shape[-1])
            eps = r - state.residual.double().reshape(-1, r.shape[-1])
            table = sums.rectify.setdefault(branch, {})
            add = (
                torch.stack([torch.full_like(r[0], r.shape[0]), r.sum(0), eps.sum(0), (r * r).sum(0), (r * eps).sum(0)])
                .cpu()
                .numpy()
            )
            table[step] = table.get(step, 0) + add
        else:
            state.cached = state.residual.detach()
        tap.truth[branch] = truth
        tap.current_step = step
        return output

    def reset_state(self, module):
        self.state_manager.reset()
        return module


class _BlockTap(ModelHook):
    _is_stateful = True

    def __init__(self, tap: _Tap, index: int):
        super().__init__()
        self.tap = tap
        self.state_manager = tap.state_manager
        self.index = index
        self.last = index == len(tap.blocks) - 1

    def new_forward(self, module, hidden_states, *args, **kwargs):
        state = self.state_manager.get_state()
        if self.tap.skip_blocks:
            return hidden_states + state.cached.to(hidden_states.dtype) if self.index == 0 else hidden_states
        if self.index == 0:
            state.stack_input = hidden_states
        output = self.fn_ref.original_forward(hidden_states, *args, **kwargs)
        if self.last:
            state.residual = output - state.stack_input
            state.stack_input = None
        return output

    def reset_state(self, module):
        return module


@contextlib.contextmanager
def _observing_steps(scheduler, taps: list[_Tap]):
    """Let the tap of the transformer that ran each step (the one holding that step's truth) see its
    ``scheduler.step`` call (the guided output and the sample) while sampling."""
    original = scheduler.step

    def step(model_output, timestep, sample, *args, **kwargs):
        for tap in taps:
            if tap.truth:
                tap.observe_step(scheduler, model_output, timestep, sample)
        return original(model_output, timestep, sample, *args, **kwargs)

    scheduler.step = step
    try:
        yield
    finally:
        del scheduler.step


def _first(output) -> torch.Tensor:
    if isinstance(output, (tuple, list)):
        return output[0]
    return getattr(output, "sample", output)


def _pairwise(history: list[torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    steps = len(history)
    numerator, denominator = np.zeros((steps, steps)), np.zeros(steps)
    for s in range(steps):
        denominator[s] = float(history[s].abs().sum(dtype=torch.float64))
        for i in range(s):
            numerator[i, s] = float((history[i] - history[s]).abs().sum(dtype=torch.float64))
    return numerator, denominator


def _round(values) -> list:
    return [float(f"{v:.6g}") for v in np.asarray(values, dtype=np.float64).ravel()]


def calibrate_ertacache(
    pipe,
    prompts: list[str],
    lambdas: list[float],
    seeds: list[int] | None = None,
    steps: int | None = None,
    guidance_scale: float | None = None,
    log=print,
) -> dict[str, dict]:
    """Per transformer (by component; a model whose experts take turns has several), the ``ertacache`` section
    of its cache profile: pairwise residual sums over the steps it runs and, per lambda, its reuse schedule, phi
    per step and the per-channel rectification of each branch.  The experts are calibrated together, each on its
    own segment of the same videos (its steps counted from its first, as its cache counts them), and the shadow
    runs reuse on every expert at once, so each expert's phi and corrections are measured on the trajectory that
    inference takes."""
    if not prompts:
        raise ValueError("ERTACache calibration needs at least one prompt")
    if not lambdas or any(not lam > 0 for lam in lambdas):
        raise ValueError(f"ERTACache thresholds (lambda) must be positive, got {lambdas}")
    settings = pipe.settings(steps=steps, guidance_scale=guidance_scale)
    seeds = list(seeds) if seeds is not None else list(range(len(prompts)))
    scales = [settings.guidance_scale] + [settings.second_guidance_scale] * (len(pipe.transformers()) - 1)
    taps = {name: _Tap(t, scale) for (name, t), scale in zip(pipe.transformers().items(), scales)}
    for tap in taps.values():
        tap.attach()
    try:
        pairwise: dict[str, list] = {name: [0.0, 0.0] for name in taps}  # numerator, denominator per expert
        for prompt, seed in zip(prompts, seeds):
            for tap in taps.values():
                tap.mode = "record"
            histories = {name: {} for name in taps}

            def keep(i, latents, histories=histories):
                for name, tap in taps.items():
                    histories[name].update({b: s.history for b, s in tap.state_manager._state_cache.items()})

            pipe.generate_latents(prompt, seed=seed, settings=settings, on_step=keep)
            for name, branches in histories.items():
                for history in branches.values():
                    n, d = _pairwise(history)
                    pairwise[name] = [pairwise[name][0] + n, pairwise[name][1] + d]
        idle = [name for name, (_, d) in pairwise.items() if np.ndim(d) == 0]
        if idle:
            raise ValueError(
                f"{', '.join(idle)} ran no step of a {settings.steps}-step video: calibrate at more steps, so that "
                "every expert runs"
            )
        log(f"ertacache: residual errors of {len(prompts)} full-compute videos recorded")
        entries = {name: [] for name in taps}
        for lam in lambdas:
            for name, tap in taps.items():
                numerator, denominator = pairwise[name]
                tap.mode, tap.reused = "shadow", set(offline_schedule(numerator, denominator, lam))
                tap.sums = _Sums(np.zeros(len(denominator)), np.zeros(len(denominator)), {})
            if any(tap.reused for tap in taps.values()):
                for prompt, seed in zip(prompts, seeds):
                    for tap in taps.values():
                        tap.previous_velocity = None
                    with _observing_steps(pipe.scheduler, list(taps.values())):
                        pipe.generate_latents(prompt, seed=seed, settings=settings)
            for name, tap in taps.items():
                entries[name].append(_entry(lam, tap))
                log(f"ertacache: {name} at lambda {lam:g} reuses {len(tap.reused)} of its steps {sorted(tap.reused)}")
    finally:
        for tap in taps.values():
            tap.detach()
    return {
        name: {
            "steps": len(pairwise[name][1]),  # the steps this transformer runs (its segment, where experts take turns)
            "video_steps": settings.steps,
            "guidance_scale": tap.guidance_scale,
            "prompts": list(prompts),
            "seeds": seeds,
            "numerator": [_round(row) for row in pairwise[name][0]],
            "denominator": _round(pairwise[name][1]),
            "entries": entries[name],
        }
        for name, tap in taps.items()
    }


def _entry(lam: float, tap: _Tap) -> dict:
    """One lambda's table for one transformer, from what its shadow runs added up."""
    sums, steps = tap.sums, len(tap.sums.phi_numerator)
    phi = np.ones(steps)
    for s in tap.reused:
        if sums.phi_denominator[s] > 0:
            phi[s] = float(np.clip(1.0 - sums.phi_numerator[s] / sums.phi_denominator[s], 0.0, 1.0))
    rectify = {}
    for branch, table in sums.rectify.items():
        rectify[branch] = {}
        for s, rows in sorted(table.items()):
            k, b = rectification_from_sums(rows)
            rectify[branch][str(s)] = {"k": _round(k), "b": _round(b)}
    return {"lambda": float(lam), "reused": sorted(tap.reused), "phi": _round(phi), "rectify": rectify}
