"""From a policy name and one knob (what the CLI and the results table speak) to a typed cache config.

Each policy has one knob that trades speed for fidelity, and good defaults for everything else:

    bwcache     threshold delta on the mean relative L1 change of block outputs (0.15 slow, 0.20 mid, 0.25 fast)
    profiling   the refresh interval right after warm-up, T_max (it shrinks to T_min = 2 at the end)
    taylorseer  the interval N between full steps
    ertacache   lambda, the calibrated reuse threshold on the stack residual's relative L1 error (0.08, the
                paper's for Wan2.1-1.3B; the profile must carry a calibration at it: `ditfarm calibrate ertacache`)
    bac         the fraction of steps on which each unit (attn1, attn2, ffn of every block) updates its cache
                (0.3); the profile must carry a BAC calibration (`ditfarm calibrate bac`)
    harmonica   the threshold tau on the trained router's probabilities (0.1); the router lies beside the profile
                (harmonica_router.json, `ditfarm train-router`)
    adaptive    the error budget: predicted relative L1 error of the forecast stack residual, accumulated over a
                run of skipped steps (per block with granularity "block"); it also picks a rung of the model's
                ladder of schedule shapes (tiny's card: searched, 14 down to 4 computed steps of 30)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from ..choices import POLICIES  # noqa: F401 - the policy names live apart from the policies
from ..pipelines.cache_card import ModelCacheSettings
from .policies import (
    AdaptiveConfig,
    BACConfig,
    BACPolicy,
    BWCacheConfig,
    ERTACacheConfig,
    ERTACachePolicy,
    HarmoniCaConfig,
    HarmoniCaPolicy,
    ProfilingConfig,
    TaylorSeerConfig,
)
from .policies.harmonica import Router, router_beside
from .profile import CacheProfile

KNOB_NAMES = {
    "bwcache": "threshold",
    "profiling": "max_interval",
    "taylorseer": "interval",
    "adaptive": "threshold",
    "ertacache": "lambda",
    "bac": "updates",
    "harmonica": "threshold",
}
# The global fallback, for a model whose card and family say nothing (``ModelCacheSettings.knob_defaults``).
# ertacache: the paper's lambda for Wan2.1-1.3B; any value must be calibrated in the profile
# bac: the fraction of steps each unit updates on; harmonica: the router threshold of the released code's README
DEFAULT_KNOBS = {
    "bwcache": 0.15,
    "profiling": 6,
    "taylorseer": 5,
    "adaptive": 0.5,
    "ertacache": 0.08,
    "bac": 0.3,
    "harmonica": 0.1,
}


GLOBAL_SOURCE = "ditfarm's global default"
GIVEN_SOURCE = "the run (--cache-threshold)"


@dataclass(frozen=True)
class KnobChoice:
    """The knob a run's policy uses and where it comes from: the run itself, the model's card, its family, or
    ditfarm's global table (what the dry run prints and every results row records)."""

    value: float | int | None
    source: str

    def describe(self, policy: str) -> str:
        if self.value is None:
            return "no cache"
        return f"{policy} {KNOB_NAMES[policy]} {self.value:g} ({self.source})"


def choose_knob(policy: str, knob: float | None = None, model: ModelCacheSettings | None = None) -> KnobChoice:
    """The knob value a run uses and its source: the given one, else the model's default (its card's, else its
    family's: ``model.knob_defaults``), else ditfarm's global one; checked; None for "none"."""
    if policy not in POLICIES:
        raise ValueError(f"unknown cache policy {policy!r}; choose one of {', '.join(POLICIES)}")
    if policy == "none":
        return KnobChoice(None, "")
    if knob is not None:
        return KnobChoice(_checked_knob(policy, knob), GIVEN_SOURCE)
    value, source = (model.knob_defaults if model is not None else {}).get(
        policy, (DEFAULT_KNOBS[policy], GLOBAL_SOURCE)
    )
    try:
        return KnobChoice(_checked_knob(policy, value), source)
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from None


def resolve_knob(policy: str, knob: float | None = None, model: ModelCacheSettings | None = None) -> float | int | None:
    """The knob value a run uses (``choose_knob`` without its source)."""
    return choose_knob(policy, knob, model).value


def _checked_knob(policy: str, value: float) -> float | int:
    if policy in ("profiling", "taylorseer"):
        if value != int(value) or value < 1:
            raise ValueError(f"the {policy} knob is its {KNOB_NAMES[policy]}: a positive integer, got {value}")
        return int(value)
    if not value >= 0:
        raise ValueError(f"the {policy} knob ({KNOB_NAMES[policy]}) must be >= 0, got {value}")
    return float(value)


def build_config(
    policy: str,
    knob: float | None = None,
    profile: CacheProfile | str | Path | None = None,
    model: ModelCacheSettings | None = None,
):
    """The config for ``policy`` (None for "none"); ``profile`` is required by profiling, used by adaptive;
    ``model``: the model card's cache settings (``pipe.cache_settings``), its default knobs included."""
    value = resolve_knob(policy, knob, model)
    if value is None:
        return None
    model = model or ModelCacheSettings()
    if isinstance(profile, (str, Path)):
        profile = CacheProfile.load(profile)
    if policy == "bwcache":
        return BWCacheConfig(threshold=value)
    if policy == "taylorseer":
        return TaylorSeerConfig(interval=value, reference_steps=model.reference_steps)
    if policy == "profiling":
        if profile is None:
            raise ValueError(
                "the profiling policy needs a profile: pass --profile PROFILE.json (see `ditfarm profile`)"
            )
        return ProfilingConfig(
            profile=profile, max_interval=value, min_interval=min(2, value), reference_steps=model.reference_steps
        )
    if policy == "harmonica":
        if profile is None:
            raise ValueError(
                "the harmonica policy reads its router beside the cache profile: pass --profile "
                "PROFILE.json (see `ditfarm train-router`)"
            )
        config = HarmoniCaConfig(threshold=value, router=Router.load(router_beside(profile)))
        HarmoniCaPolicy(config)  # refuses a threshold out of range before any rendering
        return config
    if policy == "bac":
        if profile is None:
            raise ValueError(
                "the bac policy needs a profile with its calibration: pass --profile PROFILE.json "
                "(see `ditfarm calibrate bac`)"
            )
        config = BACConfig(updates=value, profile=profile)
        for own in each_expert(profile):  # refuses a profile without a BAC calibration, or a knob out of range
            BACPolicy(replace(config, profile=own))
        return config
    if policy == "ertacache":
        if profile is None:
            raise ValueError(
                "the ertacache policy needs a profile with its calibration: pass --profile PROFILE.json "
                "(see `ditfarm calibrate ertacache`)"
            )
        config = ERTACacheConfig(threshold=value, profile=profile)
        for own in each_expert(profile):  # refuses a profile without a calibration at this lambda, before rendering
            ERTACachePolicy(replace(config, profile=own))
        return config
    return AdaptiveConfig(threshold=value, profile=profile, ladder=model.adaptive_ladder)


def each_expert(profile: CacheProfile) -> list[CacheProfile]:
    """The profile and each expert's own in it (a model whose experts take turns: one file holds them all), each
    named by its file in messages."""
    for expert in profile.experts.values():
        expert.source = getattr(profile, "source", None)
    return [profile, *profile.experts.values()]


def config_for(pipe, policy: str, knob: float | None = None, profile: CacheProfile | str | Path | None = None):
    """``build_config`` for a loaded model: its shipped profile unless one is given, and its card's settings.  A
    model whose experts take turns and whose card gives another expert its own default knob (``expert_knobs``)
    gets a config per expert by component name (``cache.enable`` takes either); a knob the run names holds for
    every expert."""
    settings = getattr(pipe, "cache_settings", None)
    profile = profile or pipe.default_cache_profile()
    if isinstance(profile, (str, Path)):
        profile = CacheProfile.load(profile)
    config = build_config(policy, knob, profile, settings)
    if config is None or knob is not None or settings is None or not settings.expert_knobs:
        return config
    configs = {}
    for name in pipe.transformers():
        own = settings.expert_knobs.get(name, {}).get(policy)
        if own is None:
            configs[name] = config
            continue
        try:
            configs[name] = build_config(policy, _checked_knob(policy, own[0]), profile, settings)
        except ValueError as err:
            raise ValueError(f"{own[1]}: {err}") from None
    return configs if len({id(c) for c in configs.values()}) > 1 else config
