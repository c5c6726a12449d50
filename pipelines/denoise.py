"""The one denoising loop every ditfarm model runs, and the flow-matching sampling most families declare.

The loop (``run_loop``) knows steps, branches and caches; what a step computes is the family's
(``DenoiseSteps``): which transformer runs, with which inputs, how the scheduler steps.  Classifier-free guidance
runs as two separate transformer calls inside ``transformer.cache_context("cond" | "uncond", ...)`` so that block
caches (diffusers' or ours) keep one state per branch and know the step they are in.  Caching and sequence
parallelism attach to the transformers; nothing here needs to know about either.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from .conditioning import Conditioning


@dataclass(frozen=True)
class SamplerSettings:
    """What a caller may choose per video; everything else belongs to the model."""

    num_frames: int
    height: int
    width: int
    steps: int
    guidance_scale: float
    # the second expert's scale (Wan2.2 A14B's low-noise expert); None: ``guidance_scale``, as diffusers defaults it
    guidance_scale_2: float | None = None

    def validate(self) -> None:
        for name in ("num_frames", "height", "width", "steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("guidance_scale", "guidance_scale_2"):
            value = getattr(self, name)
            if value is not None and not (value >= 0):  # also refuses NaN
                raise ValueError(f"{name} must be >= 0, got {value!r}")

    @property
    def second_guidance_scale(self) -> float:
        """The scale the second expert's steps run at."""
        return self.guidance_scale if self.guidance_scale_2 is None else self.guidance_scale_2


StepCallback = Callable[[int, torch.Tensor], None]

#: A transformer may carry a function under this attribute that maps the number of steps it runs in a video (its
#: expert's segment, where experts take turns) to a factor per step (1: as scheduled) by which the sampler shortens
#: each step's interval: a cache policy that shortens the intervals of the steps it reuses (ERTACache) sets it.
SIGMA_SCHEDULE_ATTR = "_ditfarm_sigma_schedule"


def adjusted_sigmas(sigmas, factors):
    """Each step's interval scaled by ``factors[s]`` and the rest of the way re-spread over the later steps in
    proportion to their nominal intervals, so the schedule still ends where it did (the last step is never
    shortened); ``sigmas`` has one entry per step plus the final one."""
    sigmas = np.asarray(sigmas, dtype=np.float64)
    steps = len(sigmas) - 1
    if len(factors) != steps:
        raise ValueError(f"need one factor per step: {steps} steps, {len(factors)} values")
    out = np.empty_like(sigmas)
    out[0] = sigmas[0]
    for s in range(steps):
        scale = out[s] / sigmas[s] if sigmas[s] > 0 else 1.0  # the noise left, relative to the nominal schedule
        factor = 1.0 if s == steps - 1 else float(np.clip(factors[s], 0.0, 1.0))
        out[s + 1] = out[s] - factor * (sigmas[s] - sigmas[s + 1]) * scale
    return out


def apply_sigma_schedule(scheduler, factors) -> None:
    """Replace the scheduler's sigmas (and the timesteps they stand for, t = sigma * num_train_timesteps, as in
    diffusers' flow-matching schedulers) by ``adjusted_sigmas(sigmas, factors)``."""
    sigmas = getattr(scheduler, "sigmas", None)
    if sigmas is None or len(sigmas) != len(scheduler.timesteps) + 1:
        raise ValueError(
            f"{type(scheduler).__name__} keeps no per-step sigmas; this cache policy changes the noise "
            "schedule and needs a flow-matching scheduler"
        )
    new = torch.as_tensor(adjusted_sigmas(sigmas.detach().cpu().double().numpy(), factors))
    scheduler.sigmas = new.to(dtype=sigmas.dtype, device=sigmas.device)
    scale = scheduler.config.num_train_timesteps
    scheduler.timesteps = (new[:-1] * scale).to(dtype=scheduler.timesteps.dtype, device=scheduler.timesteps.device)


def initial_noise(
    shape: tuple[int, ...],
    seed: int,
    device: torch.device,
    dtype: torch.dtype,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Gaussian noise drawn on the CPU from the seed alone, so every device and every rank draws the same.
    ``generator``: the video's own (``seeded_generator(seed)``), when its sampler goes on drawing from it."""
    gen = generator if generator is not None else seeded_generator(seed)
    return torch.randn(shape, generator=gen, dtype=torch.float32).to(device=device, dtype=dtype)


def seeded_generator(seed: int) -> torch.Generator:
    """A video's random source, as diffusers' examples make it: ``torch.Generator("cpu").manual_seed(seed)``."""
    return torch.Generator(device="cpu").manual_seed(int(seed))


def reset_caches(transformer: torch.nn.Module) -> None:
    """Reset every stateful cache hook (diffusers' and ours) on the transformer."""
    if hasattr(transformer, "_reset_stateful_cache"):
        transformer._reset_stateful_cache()


def transformer_input(
    scheduler, latents: torch.Tensor, t, condition: torch.Tensor | None, dtype: torch.dtype
) -> torch.Tensor:
    """What the transformer reads at timestep ``t``: the latents, scaled if the scheduler preconditions its model
    (diffusers' ``scale_model_input`` convention), with the condition channels concatenated."""
    model_input = latents
    if hasattr(scheduler, "scale_model_input"):
        model_input = scheduler.scale_model_input(model_input, t)
    model_input = model_input.to(dtype)
    if condition is not None:
        model_input = torch.cat([model_input, condition.to(model_input)], dim=1)
    return model_input


class GuidanceSplit(Protocol):
    """CFG parallelism (``ditfarm.cluster.cfg_parallel``): this process runs one branch ("cond" or "uncond") and
    ``exchange`` returns both branches' predictions, (cond, uncond), identical on every rank."""

    branch: str

    def exchange(self, prediction: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


class DenoiseSteps(ABC):
    """One video's sampling as its pipeline declares it; the loop (``run_loop``) drives it and names no model.

    ``schedule`` prepares the sampler and returns the timesteps; at step i, ``transformer_at`` is the transformer
    that runs (caches keep their state on it), ``guidance_at`` the guidance scale, ``inputs`` the transformer's
    keyword arguments for one branch (its conditioning's named tensors plus whatever the family adds: timesteps
    per token, rotary positions, masks, image latents), ``guide`` combines the branches' predictions, ``step`` is
    the scheduler's step and ``after_step`` a hook on the new latents."""

    @abstractmethod
    def schedule(self, steps: int, start_step: int, device: torch.device) -> Sequence: ...

    @abstractmethod
    def transformer_at(self, i: int) -> torch.nn.Module: ...

    @abstractmethod
    def transformers(self) -> list[torch.nn.Module]:
        """Every transformer ``transformer_at`` may return: each one's caches are reset before and after a video,
        whether it runs in it or not."""

    @abstractmethod
    def inputs(self, i: int, t, latents: torch.Tensor, branch: dict[str, torch.Tensor]) -> dict: ...

    @abstractmethod
    def step(self, i: int, t, prediction: torch.Tensor, latents: torch.Tensor) -> torch.Tensor: ...

    def guidance_at(self, i: int, guidance_scale: float) -> float:
        return guidance_scale

    def uses_guidance(self, i: int, scale: float) -> bool:
        """Whether step i runs the unconditional pass too (at ``guidance_at``'s scale): above 1, as diffusers' Wan
        and CogVideoX pipelines decide; a family whose pipeline asks a guider says what the guider says."""
        return scale > 1.0

    def guide(self, cond: torch.Tensor, uncond: torch.Tensor, scale: float, i: int, t) -> torch.Tensor:
        """Classifier-free guidance as diffusers' pipelines write it."""
        return uncond + scale * (cond - uncond)

    def after_step(self, i: int, latents: torch.Tensor) -> torch.Tensor:
        return latents

    def finish(self, latents: torch.Tensor, conditioning: Conditioning) -> torch.Tensor:
        """The sampled latents as the video has them (a family that holds a frame fixed puts it back here)."""
        return latents

    def context(self, i: int) -> dict:
        """What step i tells the cache context besides its index (diffusers' ``CacheContext`` fields)."""
        return {}

    def release(self) -> None:
        """After the loop, finished or not: reset what the schedule changed on shared objects."""


class FlowMatchSteps(DenoiseSteps):
    """Flow-matching sampling with one transformer called as diffusers' Wan pipelines call theirs (latents,
    ``timestep`` per video, the branch's text), the condition channels (if any) concatenated to the latents, and
    the scheduler's sigmas adjustable by a cache policy (``SIGMA_SCHEDULE_ATTR``)."""

    def __init__(self, transformer: torch.nn.Module, scheduler, condition: Callable | None = None):
        self.transformer, self.scheduler, self.condition = transformer, scheduler, condition
        # diffusers' ``dtype`` is the compute dtype: a bf16 Wan keeps a few small modules (time embedder, norms)
        # in float32, so its first parameter does not tell
        self.dtype = getattr(transformer, "dtype", None) or next(transformer.parameters()).dtype

    def schedule(self, steps: int, start_step: int, device: torch.device) -> Sequence:
        self.set_timesteps(steps, device)
        factors = getattr(self.transformer, SIGMA_SCHEDULE_ATTR, None)
        if factors is not None:
            apply_sigma_schedule(self.scheduler, factors(steps))
        self.scheduler.set_begin_index(start_step)
        return self.scheduler.timesteps

    def set_timesteps(self, steps: int, device: torch.device) -> None:
        """The scheduler's own spacing of ``steps``; a family whose pipeline passes its own sigmas overrides it."""
        self.scheduler.set_timesteps(steps, device=device)

    def transformer_at(self, i: int) -> torch.nn.Module:
        return self.transformer

    def transformers(self) -> list[torch.nn.Module]:
        return [self.transformer]

    def inputs(self, i: int, t, latents: torch.Tensor, branch: dict[str, torch.Tensor]) -> dict:
        condition = self.condition(latents) if self.condition is not None else None
        return {
            "hidden_states": transformer_input(self.scheduler, latents, t, condition, self.dtype),
            "timestep": t.expand(latents.shape[0]),
            **branch,
        }

    def step(self, i: int, t, prediction: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        return self.scheduler.step(prediction.float(), t, latents, return_dict=False)[0]

    def context(self, i: int) -> dict:
        return {"sigma": float(self.scheduler.sigmas[i])}


@torch.no_grad()
def run_loop(
    steps_of: DenoiseSteps,
    latents: torch.Tensor,
    conditioning: Conditioning,
    steps: int,
    guidance_scale: float,
    on_step: StepCallback | None = None,
    start_step: int = 0,
    split: GuidanceSplit | None = None,
) -> torch.Tensor:
    """Run ``steps`` sampling steps of ``steps_of`` from ``latents`` and return the final latents.

    ``start_step`` > 0 starts part-way (SDEdit): ``latents`` must then be noised to that step.  Classifier-free
    guidance runs as two transformer calls inside ``transformer.cache_context("cond" | "uncond", ...)``, so block
    caches keep one state per branch and know the step they are in; with ``split`` (CFG parallelism) this process
    runs one branch per step.  Every transformer's caches are reset before and after the video."""
    transformers = steps_of.transformers()
    for transformer in transformers:
        reset_caches(transformer)  # a new video: no state from the previous one may leak into this one
    try:
        for i, t in enumerate(steps_of.schedule(steps, start_step, latents.device)):
            if i < start_step:
                continue
            transformer = steps_of.transformer_at(i)
            scale = steps_of.guidance_at(i, guidance_scale)
            use_cfg = steps_of.uses_guidance(i, scale) and conditioning.uncond is not None
            context = {"step_index": i, "num_inference_steps": steps, **steps_of.context(i)}
            if use_cfg and split is not None:  # this rank's branch only; the other half of the gang runs the other
                with transformer.cache_context(split.branch, **context):
                    mine = transformer(
                        **steps_of.inputs(i, t, latents, conditioning.branch(split.branch)), return_dict=False
                    )[0]
                noise_cond, noise_uncond = split.exchange(mine)
                prediction = steps_of.guide(noise_cond, noise_uncond, scale, i, t)
            else:
                with transformer.cache_context("cond", **context):
                    prediction = transformer(**steps_of.inputs(i, t, latents, conditioning.cond), return_dict=False)[0]
                if use_cfg:
                    with transformer.cache_context("uncond", **context):
                        noise_uncond = transformer(
                            **steps_of.inputs(i, t, latents, conditioning.uncond), return_dict=False
                        )[0]
                    prediction = steps_of.guide(prediction, noise_uncond, scale, i, t)
            latents = steps_of.after_step(i, steps_of.step(i, t, prediction, latents))
            if on_step is not None:
                on_step(i, latents)
        return steps_of.finish(latents, conditioning)
    finally:
        for transformer in transformers:
            reset_caches(transformer)  # free cached tensors; cache stats of this video stay readable
        steps_of.release()


def denoise(
    transformer: torch.nn.Module,
    scheduler,
    latents: torch.Tensor,
    prompt_embeds: torch.Tensor,
    negative_prompt_embeds: torch.Tensor | None,
    steps: int,
    guidance_scale: float,
    on_step: StepCallback | None = None,
) -> torch.Tensor:
    """The flow-matching loop of one transformer on bare text embeddings (benchmarks that time the loop alone)."""
    conditioning = Conditioning.of_text(prompt_embeds, negative_prompt_embeds)
    return run_loop(FlowMatchSteps(transformer, scheduler), latents, conditioning, steps, guidance_scale, on_step)


def check_finite_latents(latents: torch.Tensor) -> None:
    """A ValueError (the row's error) when the loop ended in NaN or inf: decoded, they make a black or noisy video
    that would otherwise be stored as ok.  Checked once after the loop (one device sync per video, not one per
    step).  Under sequence parallelism every rank holds the whole gathered latents, so every rank decides alike,
    and no collective follows the loop before rank 0 decodes."""
    finite = torch.isfinite(latents)
    if bool(finite.all()):
        return
    nan, total = int(torch.isnan(latents).sum()), latents.numel()
    inf = total - int(finite.sum()) - nan
    raise ValueError(
        f"the denoising loop ended in non-finite latents ({nan} NaN and {inf} inf of {total} values): "
        f"the model overflowed on this row (its prompt, guidance or sizes), or its weights are broken; "
        f"nothing was stored"
    )
