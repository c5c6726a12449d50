"""One video's sequence, the same in the driver's process and on every gang rank: refuse a bad row before any
work (on a gang, before any collective, so every rank refuses it alike), run the timed loop, decode, and read
what the cache did."""

from __future__ import annotations

from dataclasses import dataclass

from ..cache import last_video_stats
from ..cache.lora_check import check_cache_loras
from ..pipelines.conditioning import Conditioning
from ..pipelines.deadline import VideoDeadline
from ..pipelines.denoise import SamplerSettings
from ..pipelines.images import IMAGE_INPUTS
from ..pipelines.phases import PhaseClock
from ..types import RowInputs


def checked_settings(pipe, row: RowInputs, available_bytes: int | None = None) -> SamplerSettings:
    """The video's sampler settings, or ValueError naming what the model refuses: its prompts, its sizes, or a
    video that cannot fit in ``available_bytes`` (default: what the device has free; a gang passes its least)."""
    pipe.check_prompt(row.prompt)
    if row.negative_prompt:
        pipe.check_negative_prompt(row.negative_prompt)
    pipe.check_images(row_images(row))
    settings = pipe.settings(**row.sampler)
    pipe.check_memory(settings, available_bytes)
    return settings


def row_images(row: RowInputs) -> dict:
    """The row's images by name (``pipelines.images.IMAGE_INPUTS``; None where it has none)."""
    return {name: row.extra.get(name) for name in IMAGE_INPUTS}


def use_row_lora(pipe, row: RowInputs) -> None:
    """Make ``pipe`` compute the row's video with its LoRA at its scale (none: the base model); LoraError (a
    ValueError) names a LoRA that cannot be used.  Called where no other video's loop runs on the same model."""
    lora = row.extra.get("lora") or None
    scale = row.extra.get("lora_scale")
    pipe.use_lora(lora, 1.0 if scale is None else scale)
    check_cache_loras(pipe.transformers().values())  # a calibration made without this LoRA is refused


def encode_text(pipe, clock: PhaseClock, row: RowInputs, settings: SamplerSettings, encode=None) -> Conditioning:
    """The row's Conditioning (its prompt and, under guidance, its negative prompt, encoded; its images read and
    encoded where it has them), timed as the "text" phase; ``encode``: another encoder than the pipeline's own
    (a gang's rank 0 keeps the original)."""
    with clock.phase("text"):
        return (encode or pipe.encode_inputs)(row.prompt, row.negative_prompt, settings, row_images(row))


def denoise_video(
    pipe,
    clock: PhaseClock,
    row: RowInputs,
    settings: SamplerSettings,
    embeddings: Conditioning,
    timeout_s: float | None,
    vote=None,
):
    """The video's final latents, its loop timed as the "denoise" phase and bounded by ``timeout_s`` (checked
    between steps; ``vote``: a gang's agreement on whether any rank is late)."""
    deadline = VideoDeadline(timeout_s, settings.steps, vote) if timeout_s else None
    with clock.phase("denoise"):
        return pipe.generate_latents(
            row.prompt, row.seed, settings, row.negative_prompt, on_step=deadline, embeddings=embeddings
        )


def decode_video(pipe, clock: PhaseClock, latents):
    """uint8 frames (T, H, W, 3), timed as the "decode" phase."""
    with clock.phase("decode"):
        return pipe.decode(latents)


@dataclass(frozen=True)
class CacheOutcome:
    masks: dict  # per CFG branch, per step: which blocks (or units) ran
    peak_bytes: int  # the most the cache held
    skipped_fraction: float
    knob: tuple[float | None, str | None] = (None, None)  # the cache's knob and where it came from


def cache_knob(pipe) -> tuple[float | None, str | None]:
    """(knob, source) of the cache the loader enabled on ``pipe`` (``cache.presets.KnobChoice``), or Nones."""
    choice = getattr(pipe, "cache_knob", None)
    return (choice.value, choice.source) if choice is not None and choice.value is not None else (None, None)


def cache_outcome(pipe) -> CacheOutcome:
    """What the cache did during the video just rendered (nothing, without a cache), and the knob it ran at."""
    stats = last_video_stats(pipe)
    knob = cache_knob(pipe)
    if stats is None:
        return CacheOutcome({}, 0, 0.0, knob)
    return CacheOutcome(stats.masks, stats.peak_bytes, stats.skipped_fraction, knob)
