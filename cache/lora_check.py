"""A cache profile or calibration belongs to a model *and* the LoRAs it was measured with.

Before each video the worker applies the row's LoRA and asks here whether each transformer's cache still fits it.
What a block policy reads from a profile (block classes, change curves) shifts with a LoRA but stays a usable
guide: the run goes on, with one warning per profile and LoRA set.  What a calibrated policy reads (ERTACache's
reuse schedule, phi and per-channel corrections, BAC's similarity tables, HarmoniCa's router) is fitted to the
model's own outputs step by step: used with another LoRA it would be wrong, so the video is refused, naming the
policy, its file and the LoRAs.
"""

from __future__ import annotations

import json
import logging

from ..pipelines.adapters.base import IDENTITY_DEFAULTS
from ..pipelines.compile import CACHE_ENGINE_ATTR
from .profile import ProfileMismatchError, model_identity

log = logging.getLogger(__name__)

CALIBRATED = ("ertacache", "bac", "harmonica")  # fitted to the model's outputs: refused under other LoRAs


def describe_loras(loras: list) -> str:
    return ", ".join(f"{source} x{scale:g}" for source, scale in loras) if loras else "no LoRA"


def check_cache_loras(transformers) -> None:
    """For each transformer's cache: its profile's and router's recorded LoRAs against the ones applied now (a
    warning once per profile and LoRA set, or ProfileMismatchError for a calibrated policy)."""
    for transformer in transformers:
        engine = getattr(transformer, CACHE_ENGINE_ATTR, None)
        config = getattr(getattr(engine, "policy", None), "config", None)
        if config is None:
            continue
        applied = model_identity(transformer)["loras"]
        for trained in (getattr(config, "profile", None), getattr(config, "router", None)):
            if trained is None:
                continue
            recorded = {**IDENTITY_DEFAULTS, **trained.model}["loras"]
            if recorded == applied:
                continue
            where = getattr(trained, "source", None) or "its profile"
            message = (
                f"the {engine.policy.name} cache's {where} was measured with {describe_loras(recorded)}, and this "
                f"video applies {describe_loras(applied)}"
            )
            if engine.policy.name in CALIBRATED:
                raise ProfileMismatchError(
                    f"{message}: its calibration would be wrong here; calibrate it with the LoRA applied, or render "
                    "these rows with another cache"
                )
            warned = engine.__dict__.setdefault("_lora_warnings", set())
            key = (id(trained), json.dumps(applied))
            if key not in warned:
                warned.add(key)
                log.warning("%s; the profile is used as it is", message)
