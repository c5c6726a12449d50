"""What a model refuses, decided from its folder's configuration alone: no weights are loaded.

``ditfarm render --dry-run`` validates a million rows against a model without loading it, and the loaded
pipelines refuse the same rows with the same messages: both call the size rules below, so the dry run cannot
drift from what a render would do.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .denoise import SamplerSettings

DEFAULT_ROPE_POSITIONS = 1024  # diffusers' WanTransformer3DModel default rope_max_seq_len

# The largest size along each axis a model takes, unless its card's "limits" says otherwise.  Past these a model
# renders noise (its relative rotary positions stretched far beyond training) while the loop holds the job for
# hours.  tiny was trained on 8 frames of 32x32 and takes up to 4x that along each axis; Wan2.1 and Wan2.2 were
# trained at 480p and 720p in either orientation, so no side past 1280 (their frame count is bounded by the
# rotary table and by memory).
TINY_LIMITS = {"num_frames": 32, "height": 128, "width": 128}
WAN_LIMITS = {"height": 1280, "width": 1280}


def check_nonempty_prompt(prompt: str) -> None:
    """The prompt check of a model whose tokenizer reads any text: only an empty prompt is refused."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("prompt is empty")


def card_limits(card: dict, family: dict[str, int], where: str) -> dict[str, int]:
    """The limits a model card declares (``"limits": {"height": 1024, ...}``), else its family's; a malformed
    entry is refused at load, naming the folder, rather than failing every row."""
    limits = card.get("limits", family)
    axes = ("num_frames", "height", "width")
    if not isinstance(limits, dict) or any(
        k not in axes or isinstance(v, bool) or not isinstance(v, int) or v < 1 for k, v in limits.items()
    ):
        raise ValueError(f'{where}: "limits" must map some of {", ".join(axes)} to positive integers, got {limits!r}')
    return limits


def check_limits(settings: SamplerSettings, limits: dict[str, int]) -> None:
    """Each size within the model's declared largest (``limits``: axis name -> largest value)."""
    for name, largest in limits.items():
        value = getattr(settings, name)
        if value > largest:
            raise ValueError(
                f"{name} {value} is more than this model takes: at most {largest} (the model's "
                f"limits; a model folder's ditfarm_model.json may declare its own)"
            )


def check_rope_reach(sizes: dict[str, tuple[int, int]], rope_positions: int) -> None:
    """Each axis of the patch grid (``name: (patches, pixels or frames per patch)``) within the transformer's
    rotary table: past it the model has no position to give a token, and the render would fail deep inside."""
    for name, (patches, per_patch) in sizes.items():
        if patches > rope_positions:
            raise ValueError(
                f"{name} is too large for this model: {patches} positions along it, more than the "
                f"{rope_positions} its rotary embedding has (at most {rope_positions * per_patch})"
            )


def check_patch_grid(
    settings: SamplerSettings,
    patch: tuple[int, int, int],
    rope_positions: int = DEFAULT_ROPE_POSITIONS,
    limits: dict[str, int] | None = None,
) -> None:
    """A pixel-space transformer (tiny) takes sizes that are multiples of its patch, within its rotary table and
    its declared limits."""
    if settings.height % patch[1] or settings.width % patch[2] or settings.num_frames % patch[0]:
        raise ValueError(f"height and width must be multiples of the patch size {tuple(patch)}")
    check_rope_reach(
        {
            "num_frames": (settings.num_frames // patch[0], patch[0]),
            "height": (settings.height // patch[1], patch[1]),
            "width": (settings.width // patch[2], patch[2]),
        },
        rope_positions,
    )
    check_limits(settings, TINY_LIMITS if limits is None else limits)


def check_wan_sizes(
    settings: SamplerSettings,
    temporal: int,
    spatial: int,
    patch: tuple[int, int, int],
    rope_positions: int = DEFAULT_ROPE_POSITIONS,
    limits: dict[str, int] | None = None,
) -> None:
    """Wan2.1: frames 4k + 1 (the VAE's temporal factor), height and width multiples of VAE x patch, and a latent
    patch grid within the transformer's rotary table."""
    if (settings.num_frames - 1) % temporal:
        raise ValueError(f"num_frames must be {temporal}k + 1 for this VAE, got {settings.num_frames}")
    multiple = spatial * max(patch[1], patch[2])
    if settings.height % multiple or settings.width % multiple:
        raise ValueError(
            f"height and width must be multiples of {multiple} (VAE {spatial}x times patch {patch[1]}x{patch[2]}), "
            f"got {settings.height}x{settings.width}"
        )
    latent_frames = (settings.num_frames - 1) // temporal + 1
    check_rope_reach(
        {
            "num_frames": (latent_frames // patch[0], temporal * patch[0]),
            "height": (settings.height // (spatial * patch[1]), spatial * patch[1]),
            "width": (settings.width // (spatial * patch[2]), spatial * patch[2]),
        },
        rope_positions,
    )
    check_limits(settings, WAN_LIMITS if limits is None else limits)


def wan_vae_factors(vae_config: dict) -> tuple[int, int]:
    """(temporal, spatial) downsampling of a Wan VAE, as diffusers' WanPipeline reads them: the config's
    ``scale_factor_temporal`` and ``scale_factor_spatial`` (16 for Wan2.2's 48-channel VAE, whose patchified
    input adds a 2x beyond its downsampling stages), each 4 and 8 where the config predates them."""
    temporal = vae_config.get("scale_factor_temporal") or 4
    spatial = vae_config.get("scale_factor_spatial") or 8
    return int(temporal), int(spatial)


@dataclass
class ModelChecks:
    """A model's refusals: ``check_prompt`` raises for a prompt it cannot read, ``settings`` resolves a row's
    overrides against the model's defaults and raises for sizes it cannot take."""

    defaults: SamplerSettings
    check_sizes: Callable[[SamplerSettings], None]
    check_prompt: Callable[[str], None]
    cache_settings: object = None  # the card's ModelCacheSettings, as the loaded pipeline has them
    cache_profile: Path | None = None  # the profile shipped in the folder, if any
    video: object = None  # the card's VideoDefaults (fps, upscale): what an mp4 is written at unless a run says
    check_negative_prompt: Callable[[str], None] | None = None  # None: a negative prompt is read as a prompt is
    classifier_free_guidance: bool = True  # False: guidance is embedded, no unconditional pass (nothing to split)
    experts: int = 1  # transformers that take turns over the steps (2: Wan2.2 A14B)
    check_images: Callable[[dict], None] | None = None  # None: the model takes no images

    def check_row_images(self, images: dict) -> None:
        """Refuse a row's images the model cannot take (or lacks ones it needs), before anything is read."""
        (self.check_images or refuse_images)(images)

    def check_negative(self, text: str) -> None:
        (self.check_negative_prompt or self.check_prompt)(text)

    def settings(self, **overrides) -> SamplerSettings:
        return resolve_settings(self.defaults, self.check_sizes, overrides, self.experts)


def refuse_images(images: dict) -> None:
    """The rule of a model that renders from text alone: any image a row gives is refused, by name."""
    given = [name for name, value in images.items() if value is not None]
    if given:
        raise ValueError(
            f"this model renders from text alone and takes no {' or '.join(given)} (an image-to-video folder, "
            "or Wan2.2 TI2V-5B, takes a first frame)"
        )


def resolve_settings(defaults: SamplerSettings, check_sizes, overrides: dict, experts: int = 1) -> SamplerSettings:
    """The defaults with the given (non-None) overrides, validated, and refused where the model cannot take them
    (``guidance_scale_2`` where no second expert would read it)."""
    values = {k: v for k, v in overrides.items() if v is not None}
    if experts < 2 and values.get("guidance_scale_2") is not None:
        raise ValueError(
            "guidance_scale_2 is the second expert's guidance scale, and this model has one transformer "
            "(a Wan2.2 A14B folder has two)"
        )
    merged = SamplerSettings(**{**defaults.__dict__, **values})
    if experts >= 2 and merged.guidance_scale_2 is None:  # diffusers' default: the first expert's scale
        merged = SamplerSettings(**{**merged.__dict__, "guidance_scale_2": merged.guidance_scale})
    merged.validate()
    check_sizes(merged)
    return merged
