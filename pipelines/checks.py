"""What a model refuses, decided from its folder's configuration alone: no weights are loaded.

``ditfarm render --dry-run`` validates a million rows against a model without loading it, and the loaded
pipelines refuse the same rows with the same messages: both call the size rules below, so the dry run cannot
drift from what a render would do.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .denoise import SamplerSettings


DEFAULT_ROPE_POSITIONS = 1024  # diffusers' WanTransformer3DModel default rope_max_seq_len


def check_rope_reach(sizes: dict[str, tuple[int, int]], rope_positions: int) -> None:
    """Each axis of the patch grid (``name: (patches, pixels or frames per patch)``) within the transformer's
    rotary table: past it the model has no position to give a token, and the render would fail deep inside."""
    for name, (patches, per_patch) in sizes.items():
        if patches > rope_positions:
            raise ValueError(f"{name} is too large for this model: {patches} positions along it, more than the "
                             f"{rope_positions} its rotary embedding has (at most {rope_positions * per_patch})")


def check_patch_grid(settings: SamplerSettings, patch: tuple[int, int, int],
                     rope_positions: int = DEFAULT_ROPE_POSITIONS) -> None:
    """A pixel-space transformer (tiny) takes sizes that are multiples of its patch, within its rotary table."""
    if settings.height % patch[1] or settings.width % patch[2] or settings.num_frames % patch[0]:
        raise ValueError(f"height and width must be multiples of the patch size {tuple(patch)}")
    check_rope_reach({"num_frames": (settings.num_frames // patch[0], patch[0]),
                      "height": (settings.height // patch[1], patch[1]),
                      "width": (settings.width // patch[2], patch[2])}, rope_positions)


def check_wan_sizes(settings: SamplerSettings, temporal: int, spatial: int, patch: tuple[int, int, int],
                    rope_positions: int = DEFAULT_ROPE_POSITIONS) -> None:
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
    check_rope_reach({"num_frames": (latent_frames // patch[0], temporal * patch[0]),
                      "height": (settings.height // (spatial * patch[1]), spatial * patch[1]),
                      "width": (settings.width // (spatial * patch[2]), spatial * patch[2])}, rope_positions)


def wan_vae_factors(vae_config: dict) -> tuple[int, int]:
    """(temporal, spatial) downsampling of a Wan VAE, as diffusers' WanPipeline derives them."""
    downsample = vae_config.get("temperal_downsample", [False, True, True])
    return 2 ** sum(bool(d) for d in downsample), 2 ** len(downsample)


@dataclass
class ModelChecks:
    """A model's refusals: ``check_prompt`` raises for a prompt it cannot read, ``settings`` resolves a row's
    overrides against the model's defaults and raises for sizes it cannot take."""

    defaults: SamplerSettings
    check_sizes: Callable[[SamplerSettings], None]
    check_prompt: Callable[[str], None]

    def settings(self, **overrides) -> SamplerSettings:
        return resolve_settings(self.defaults, self.check_sizes, overrides)


def resolve_settings(defaults: SamplerSettings, check_sizes, overrides: dict) -> SamplerSettings:
    """The defaults with the given (non-None) overrides, validated, and refused where the model cannot take them."""
    values = {k: v for k, v in overrides.items() if v is not None}
    merged = SamplerSettings(**{**defaults.__dict__, **values})
    merged.validate()
    check_sizes(merged)
    return merged


def _nonempty(prompt: str) -> None:
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("prompt is empty")


def model_checks(name_or_path: str | Path) -> ModelChecks:
    """The checks of a built-in model or model folder, read from its JSON configs (and, for tiny, its 8 KB word
    table); an ``s3://`` model is fetched to this node's model cache first."""
    from .loading import resolve_model_folder
    from .wan import WAN_DEFAULTS, is_wan_folder

    folder = resolve_model_folder(name_or_path)
    transformer = json.loads((folder / "transformer" / "config.json").read_text())
    patch = tuple(transformer.get("patch_size", (1, 2, 2)))
    rope = transformer.get("rope_max_seq_len", DEFAULT_ROPE_POSITIONS)
    card_path = folder / "ditfarm_model.json"
    card = json.loads(card_path.read_text()) if card_path.exists() else {}
    if is_wan_folder(folder):
        temporal, spatial = wan_vae_factors(json.loads((folder / "vae" / "config.json").read_text()))
        defaults = SamplerSettings(**{**WAN_DEFAULTS.__dict__, **card.get("defaults", {})})
        return ModelChecks(defaults, lambda s: check_wan_sizes(s, temporal, spatial, patch, rope), _nonempty)
    if card.get("kind") != "tiny":
        raise ValueError(f"{folder} is neither a ditfarm tiny folder nor a diffusers Wan folder")
    from .tiny.weights import load_text_encoder

    encoder = load_text_encoder(folder)
    d = card["defaults"]
    defaults = SamplerSettings(d["num_frames"], d["height"], d["width"], d["steps"], d["guidance_scale"])
    return ModelChecks(defaults, lambda s: check_patch_grid(s, patch, rope), encoder.token_ids)
