"""A model's checks read from its folder alone (``checks``' rules, no weights loaded): what ``--dry-run`` validates
rows with, the same rules the loaded pipelines apply."""

from __future__ import annotations

import json
from pathlib import Path

from .base import CACHE_PROFILE_FILE, VideoDefaults
from .cache_card import ModelCacheSettings
from .checks import (
    DEFAULT_ROPE_POSITIONS,
    TINY_LIMITS,
    WAN_LIMITS,
    ModelChecks,
    card_limits,
    check_patch_grid,
    check_wan_sizes,
    wan_vae_factors,
)
from .denoise import SamplerSettings
from .folder_checks import check_wan_index
from .loading import resolve_model_folder
from .tiny.weights import VIDEO_DEFAULTS, load_text_encoder
from .wan import WAN_DEFAULTS, WAN_VIDEO, is_wan_folder


def _nonempty(prompt: str) -> None:
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("prompt is empty")


def model_checks(name_or_path: str | Path) -> ModelChecks:
    """The checks of a built-in model or model folder, read from its JSON configs (and, for tiny, its 8 KB word
    table); an ``s3://`` model is fetched to this node's model cache first."""
    folder = resolve_model_folder(name_or_path)
    transformer = json.loads((folder / "transformer" / "config.json").read_text())
    patch = tuple(transformer.get("patch_size", (1, 2, 2)))
    rope = transformer.get("rope_max_seq_len", DEFAULT_ROPE_POSITIONS)
    card_path = folder / "ditfarm_model.json"
    card = json.loads(card_path.read_text()) if card_path.exists() else {}
    if (folder / "model_index.json").exists():  # the dry run refuses what the load would
        check_wan_index(json.loads((folder / "model_index.json").read_text()), folder / "model_index.json")
    if is_wan_folder(folder):
        temporal, spatial = wan_vae_factors(json.loads((folder / "vae" / "config.json").read_text()))
        defaults = SamplerSettings(**{**WAN_DEFAULTS.__dict__, **card.get("defaults", {})})
        limits = card_limits(card, WAN_LIMITS, str(card_path))
        return ModelChecks(
            defaults,
            lambda s: check_wan_sizes(s, temporal, spatial, patch, rope, limits),
            _nonempty,
            *_cache_settings(folder, card, WAN_DEFAULTS.steps),
            video=VideoDefaults(**{**WAN_VIDEO.__dict__, **card.get("video", {})}),
        )
    if card.get("kind") != "tiny":
        raise ValueError(f"{folder} is neither a ditfarm tiny folder nor a diffusers Wan folder")
    encoder = load_text_encoder(folder)
    d = card["defaults"]
    defaults = SamplerSettings(d["num_frames"], d["height"], d["width"], d["steps"], d["guidance_scale"])
    limits = card_limits(card, TINY_LIMITS, str(card_path))
    return ModelChecks(
        defaults,
        lambda s: check_patch_grid(s, patch, rope, limits),
        encoder.token_ids,
        *_cache_settings(folder, card, defaults.steps),
        video=VideoDefaults(**{**VIDEO_DEFAULTS, **card.get("video", {})}),
    )


def _cache_settings(folder: Path, card: dict, reference_steps: int) -> tuple:
    """(ModelCacheSettings, shipped profile or None) as the loaded pipelines derive them (from_folder)."""
    profile = folder / CACHE_PROFILE_FILE
    return ModelCacheSettings.from_card(card, reference_steps), profile if profile.exists() else None
