"""Block caches for ``pipe.transformer``: enable a policy, render, read what was skipped.

from ditfarm import cache
cache.enable(pipe, cache.AdaptiveConfig(threshold=0.4, profile=cache.CacheProfile.load("p.json")))
frames = pipe.generate(...)
cache.last_video_stats(pipe)   # computed / skipped block computations, bytes held
cache.disable(pipe)
"""

from __future__ import annotations

import dataclasses

import torch

from ..pipelines.adapters import adapter_for
from ..pipelines.compile import CACHE_ENGINE_ATTR, COMPILED_ATTR
from ..pipelines.denoise import SIGMA_SCHEDULE_ATTR
from .engine import CacheEngine, CacheStats, Reduce, identity_reduce
from .policies import (
    POLICY_FOR_CONFIG,
    AdaptiveConfig,
    BACConfig,
    BWCacheConfig,
    ERTACacheConfig,
    HarmoniCaConfig,
    ProfilingConfig,
    TaylorSeerConfig,
)
from .profile import CacheProfile, ProfileMismatchError, model_identity
from .units import UnitCacheEngine, UnitPolicy

ENGINE_ATTR = CACHE_ENGINE_ATTR

__all__ = [
    "AdaptiveConfig",
    "BACConfig",
    "BWCacheConfig",
    "CacheEngine",
    "CacheProfile",
    "CacheStats",
    "ERTACacheConfig",
    "HarmoniCaConfig",
    "ProfileMismatchError",
    "ProfilingConfig",
    "TaylorSeerConfig",
    "disable",
    "enable",
    "engine_of",
    "last_video_stats",
    "model_identity",
]


def _transformers(pipe_or_transformer) -> list[torch.nn.Module]:
    """A transformer, or every transformer a pipeline's loop runs (``transformers()``: two experts take turns on
    a Wan2.2 A14B folder, each with its own cache)."""
    if isinstance(pipe_or_transformer, torch.nn.Module):
        return [pipe_or_transformer]
    named = getattr(pipe_or_transformer, "transformers", None)
    if callable(named):
        return list(named().values())
    return [pipe_or_transformer.transformer]


def engine_of(pipe_or_transformer) -> CacheEngine | UnitCacheEngine | None:
    """The cache engine of a transformer (of a pipeline's first transformer)."""
    return getattr(_transformers(pipe_or_transformer)[0], ENGINE_ATTR, None)


def enable(pipe_or_transformer, config, reduce: Reduce = identity_reduce) -> CacheEngine | None:
    """Attach a cache policy (``None`` means no cache: nothing is attached, so it costs nothing) to a transformer,
    or to each of a pipeline's transformers, each with its own engine and state; returns the first's engine.
    ``config`` may map a pipeline's component names to their own configs (experts at their own knobs)."""
    if isinstance(config, dict):
        named = pipe_or_transformer.transformers()
        unknown = set(config) - set(named)
        if unknown:
            raise ValueError(f"no transformer named {', '.join(sorted(unknown))}; this model has {', '.join(named)}")
        engines = [_enable_one(t, config.get(name), reduce) for name, t in named.items()]
    else:
        engines = [_enable_one(transformer, config, reduce) for transformer in _transformers(pipe_or_transformer)]
    return engines[0]


def _enable_one(transformer: torch.nn.Module, config, reduce: Reduce) -> CacheEngine | None:
    disable(transformer)
    if config is None:
        return None
    for trained in ("profile", "router"):  # an expert's own, where the file holds one per expert
        if getattr(config, trained, None) is not None:
            config = dataclasses.replace(config, **{trained: getattr(config, trained).for_transformer(transformer)})
    policy_cls = POLICY_FOR_CONFIG.get(type(config))
    if policy_cls is None:
        raise TypeError(
            f"not a cache config: {config!r}; use one of {', '.join(c.__name__ for c in POLICY_FOR_CONFIG)}"
        )
    for trained in (getattr(config, "profile", None), getattr(config, "router", None)):
        if trained is not None:  # measured or trained on one model: refused by another (LoRAs: per video)
            trained.check_model(transformer, ignore=("loras",))
    adapter_for(transformer)  # a TypeError naming the class when ditfarm knows no such model family
    policy = policy_cls(config)
    if isinstance(policy, UnitPolicy):  # fixed per-unit schedules: nothing to reduce
        if getattr(transformer, COMPILED_ATTR, None):
            raise ValueError(
                f"{policy.name} caches the attention and FFN inside each block, and the blocks are "
                "compiled whole (--compile): render it with eager blocks"
            )
        engine = UnitCacheEngine(transformer, policy)
    else:
        engine = CacheEngine(transformer, policy, reduce)
    engine.attach()
    setattr(transformer, ENGINE_ATTR, engine)
    if engine.policy.adjusts_sigmas:
        setattr(transformer, SIGMA_SCHEDULE_ATTR, engine.policy.step_factors)
    return engine


def disable(pipe_or_transformer) -> None:
    """Remove ditfarm's cache hooks and free what they hold; a no-op when none is attached."""
    for transformer in _transformers(pipe_or_transformer):
        engine = getattr(transformer, ENGINE_ATTR, None)
        if engine is not None:
            engine.detach()
            delattr(transformer, ENGINE_ATTR)
        if hasattr(transformer, SIGMA_SCHEDULE_ATTR):
            delattr(transformer, SIGMA_SCHEDULE_ATTR)


def last_video_stats(pipe_or_transformer) -> CacheStats | None:
    """Stats of the most recent finished (or running) video: block computations run and skipped, peak bytes;
    over every transformer that took part."""
    parts = []
    for transformer in _transformers(pipe_or_transformer):
        engine = getattr(transformer, ENGINE_ATTR, None)
        if engine is not None:
            parts.append(engine.stats if (engine.stats.computed or engine.stats.skipped) else engine.last_video)
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else CacheStats.joined(parts)
