"""What a model's card says about caching, read with the model: each policy's default knob (chosen for this
model by ``ditfarm calibrate defaults``, else its family's), the steps its step-counted knobs mean and the ladder
of schedule shapes searched for it (``ditfarm.cache``'s adaptive policy climbs it).

It lives with the models because the card is the model's: a malformed ladder is refused when the model loads,
before any cache is chosen.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .base import CACHE_PROFILE_FILE


@dataclass(frozen=True)
class Rung:
    """One budget's schedule shape (step granularity), in fractions of the video's steps: compute the first
    ``warmup_fraction`` of the steps, then after each computed step allow a run of skipped steps of at most
    min(``max_run``, ``first_run`` + ``growth`` * runs so far) of the schedule (rounded down to whole steps)."""

    budget: float  # the rung applies from this threshold up (to the next rung's)
    warmup_fraction: float
    first_run: float
    growth: float
    max_run: float
    reuse_output: bool = False  # skipped steps reuse the model's output instead of forecasting the stack

    def run_limit(self, num_steps: int, runs_done: int) -> int:
        """Skipped steps allowed in the next run of a ``num_steps``-step video (an integer: ranks agree)."""
        fraction = min(self.max_run, self.first_run + self.growth * runs_done)
        return int(math.floor(fraction * num_steps + 1e-9))

    def max_run_steps(self, num_steps: int) -> int:
        return int(math.floor(self.max_run * num_steps + 1e-9))


@dataclass(frozen=True)
class Ladder:
    """Rungs by rising budget, and where they come from."""

    rungs: tuple[Rung, ...]
    source: str = ""

    def rung_for(self, threshold: float) -> Rung:
        return [r for r in self.rungs if threshold >= r.budget][-1]

    @classmethod
    def from_card(cls, data: dict) -> Ladder:
        """A ladder as a model card writes it: rungs in steps of ``of_steps`` (as they were searched), read as
        fractions of the schedule."""
        n = float(data["of_steps"])
        rungs = tuple(
            Rung(
                r["budget"],
                r["warmup"] / n,
                r["first_run"] / n,
                r["growth"] / n,
                r["max_run"] / n,
                bool(r.get("reuse_output", False)),
            )
            for r in data["rungs"]
        )
        if not rungs or rungs[0].budget != 0 or [r.budget for r in rungs] != sorted(r.budget for r in rungs):
            raise ValueError("a ladder's rungs must start at budget 0 and rise")
        return cls(rungs, data.get("source", ""))


@dataclass(frozen=True)
class ModelCacheSettings:
    """What a model's card says about caching.  ``reference_steps``: the video length that step-counted knobs
    (TaylorSeer's and ProfilingDiT's intervals) mean: the base model's own schedule (tiny 30, Wan2.1 50, also for
    a distilled folder; its card may say otherwise); other lengths scale them.
    ``adaptive_ladder``: the ladder searched for this model (None: GENERIC_LADDER).
    ``knob_defaults``: policy -> (knob, where it comes from) for a run that names no knob: the card's
    ``cache.defaults`` over the family's; a policy in neither takes ditfarm's global default (``cache.presets``).
    ``expert_knobs``: component -> policy -> (knob, source) for the other experts of a model whose experts take
    turns (the card's ``cache.experts.<component>.defaults``); an expert it does not name runs at the first's."""

    reference_steps: int | None = None
    adaptive_ladder: Ladder | None = None
    knob_defaults: Mapping[str, tuple[float, str]] = field(default_factory=dict)
    expert_knobs: Mapping[str, Mapping[str, tuple[float, str]]] = field(default_factory=dict)

    @classmethod
    def from_card(
        cls,
        card: dict,
        default_steps: int | None,
        family_knobs: Mapping[str, float] | None = None,
        family: str = "",
        card_path: str = "ditfarm_model.json",
    ) -> ModelCacheSettings:
        section = card.get("cache", {})
        ladder = section.get("adaptive", {}).get("ladder")
        knobs = {policy: (value, f"the {family} family's default") for policy, value in (family_knobs or {}).items()}
        rule = section.get("defaults_rule")
        chosen = f"{card_path} cache.defaults" + (f" ({rule})" if rule else "")
        knobs.update({policy: (value, chosen) for policy, value in _knobs(section, "cache", card_path).items()})
        experts = section.get("experts", {})
        if not isinstance(experts, dict):
            raise ValueError(f"{card_path}: cache.experts must map expert components to sections, got {experts!r}")
        expert_knobs = {
            name: {
                policy: (value, f"{card_path} cache.experts.{name}.defaults")
                for policy, value in _knobs(part, f"cache.experts.{name}", card_path).items()
            }
            for name, part in experts.items()
        }
        steps = section.get("reference_steps", default_steps)
        return cls(steps, Ladder.from_card(ladder) if ladder else None, knobs, expert_knobs)


def _knobs(section, where: str, card_path: str) -> dict:
    knobs = section.get("defaults", {}) if isinstance(section, dict) else None
    if not isinstance(knobs, dict) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in knobs.values()
    ):
        raise ValueError(f"{card_path}: {where}.defaults must map policy names to numbers, got {knobs!r}")
    return knobs


def shipped_profile(folder: Path) -> Path | None:
    """The cache profile shipped in the folder, if any."""
    profile = Path(folder) / CACHE_PROFILE_FILE
    return profile if profile.exists() else None
