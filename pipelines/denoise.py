"""The one denoising loop every ditfarm model runs.

It is diffusers' Wan loop reduced to what all our models share: flow-matching scheduler steps, and classifier-free
guidance as two separate transformer calls inside ``transformer.cache_context("cond" | "uncond", ...)`` so that
block caches (diffusers' or ours) keep one state per branch and know the step they are in.  Caching and sequence
parallelism attach to ``transformer``; nothing here needs to know about either.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass(frozen=True)
class SamplerSettings:
    """What a caller may choose per video; everything else belongs to the model."""

    num_frames: int
    height: int
    width: int
    steps: int
    guidance_scale: float

    def validate(self) -> None:
        for name in ("num_frames", "height", "width", "steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not (self.guidance_scale >= 0):  # also refuses NaN
            raise ValueError(f"guidance_scale must be >= 0, got {self.guidance_scale!r}")


StepCallback = Callable[[int, torch.Tensor], None]

#: A transformer may carry a function under this attribute that maps the scheduler's noise levels (one per step
#: plus the final one, as a float64 array) to the ones to sample at: a cache policy that shortens the intervals of
#: the steps it reuses (ERTACache) sets it.
SIGMA_SCHEDULE_ATTR = "_ditfarm_sigma_schedule"


def apply_sigma_schedule(scheduler, adjust: Callable) -> None:
    """Replace the scheduler's sigmas (and the timesteps they stand for, t = sigma * num_train_timesteps, as in
    diffusers' flow-matching schedulers) by ``adjust(sigmas)``."""
    sigmas = getattr(scheduler, "sigmas", None)
    if sigmas is None or len(sigmas) != len(scheduler.timesteps) + 1:
        raise ValueError(
            f"{type(scheduler).__name__} keeps no per-step sigmas; this cache policy changes the noise "
            "schedule and needs a flow-matching scheduler"
        )
    new = torch.as_tensor(adjust(sigmas.detach().cpu().double().numpy()))
    scheduler.sigmas = new.to(dtype=sigmas.dtype, device=sigmas.device)
    scale = scheduler.config.num_train_timesteps
    scheduler.timesteps = (new[:-1] * scale).to(dtype=scheduler.timesteps.dtype, device=scheduler.timesteps.device)


def initial_noise(shape: tuple[int, ...], seed: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Gaussian noise drawn on the CPU from the seed alone, so every device and every rank draws the same."""
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    return torch.randn(shape, generator=gen, dtype=torch.float32).to(device=device, dtype=dtype)


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


@torch.no_grad()
def denoise(
    transformer: torch.nn.Module,
    scheduler,
    latents: torch.Tensor,
    prompt_embeds: torch.Tensor,
    negative_prompt_embeds: torch.Tensor | None,
    steps: int,
    guidance_scale: float,
    on_step: StepCallback | None = None,
    start_step: int = 0,
    condition: torch.Tensor | None = None,
    split: GuidanceSplit | None = None,
) -> torch.Tensor:
    """Run ``steps`` scheduler steps from ``latents`` and return the final latents (in the scheduler's dtype).

    ``start_step`` > 0 starts part-way (SDEdit): ``latents`` must then be noised to ``scheduler.sigmas[start_step]``.
    ``condition`` (channels the model reads but does not denoise) is concatenated to the latents on the channel axis
    at every call, as diffusers' Wan image-to-video pipeline does with its image condition.  ``split``: CFG
    parallelism, this process runs one branch per step (GuidanceSplit).
    """
    reset_caches(transformer)  # a new video: no state from the previous one may leak into this one
    try:
        return _denoise_loop(
            transformer,
            scheduler,
            latents,
            prompt_embeds,
            negative_prompt_embeds,
            steps,
            guidance_scale,
            on_step,
            start_step,
            condition,
            split,
        )
    finally:
        reset_caches(transformer)  # free cached tensors; cache stats of this video stay readable


class GuidanceSplit(Protocol):
    """CFG parallelism (``ditfarm.cluster.cfg_parallel``): this process runs one branch ("cond" or "uncond") and
    ``exchange`` returns both branches' predictions, (cond, uncond), identical on every rank."""

    branch: str

    def exchange(self, prediction: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


def _denoise_loop(
    transformer,
    scheduler,
    latents,
    prompt_embeds,
    negative_prompt_embeds,
    steps,
    guidance_scale,
    on_step,
    start_step=0,
    condition=None,
    split: GuidanceSplit | None = None,
) -> torch.Tensor:
    scheduler.set_timesteps(steps, device=latents.device)
    adjust = getattr(transformer, SIGMA_SCHEDULE_ATTR, None)
    if adjust is not None:
        apply_sigma_schedule(scheduler, adjust)
    scheduler.set_begin_index(start_step)
    # diffusers' ``dtype`` is the compute dtype: a bf16 Wan keeps a few small modules (time embedder, norms) in
    # float32, so its first parameter does not tell
    model_dtype = getattr(transformer, "dtype", None) or next(transformer.parameters()).dtype
    use_cfg = guidance_scale > 1.0 and negative_prompt_embeds is not None
    for i, t in enumerate(scheduler.timesteps):
        if i < start_step:
            continue
        model_input = transformer_input(scheduler, latents, t, condition, model_dtype)
        timestep = t.expand(latents.shape[0])
        context = {"step_index": i, "sigma": float(scheduler.sigmas[i]), "num_inference_steps": steps}
        if use_cfg and split is not None:  # this rank's branch only; the other half of the gang runs the other
            embeds = prompt_embeds if split.branch == "cond" else negative_prompt_embeds
            with transformer.cache_context(split.branch, **context):
                mine = transformer(
                    hidden_states=model_input, timestep=timestep, encoder_hidden_states=embeds, return_dict=False
                )[0]
            noise_cond, noise_uncond = split.exchange(mine)
            noise_pred = noise_uncond + guidance_scale * (noise_cond - noise_uncond)
            latents = scheduler.step(noise_pred.float(), t, latents, return_dict=False)[0]
            if on_step is not None:
                on_step(i, latents)
            continue
        with transformer.cache_context("cond", **context):
            noise_pred = transformer(
                hidden_states=model_input, timestep=timestep, encoder_hidden_states=prompt_embeds, return_dict=False
            )[0]
        if use_cfg:
            with transformer.cache_context("uncond", **context):
                noise_uncond = transformer(
                    hidden_states=model_input,
                    timestep=timestep,
                    encoder_hidden_states=negative_prompt_embeds,
                    return_dict=False,
                )[0]
            noise_pred = noise_uncond + guidance_scale * (noise_pred - noise_uncond)
        latents = scheduler.step(noise_pred.float(), t, latents, return_dict=False)[0]
        if on_step is not None:
            on_step(i, latents)
    return latents


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
