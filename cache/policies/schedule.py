"""Policies whose masks follow a schedule fixed before sampling: ProfilingDiT and TaylorSeer.

Neither reads an indicator, so their decisions are trivially identical on every rank.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..profile import CacheProfile
from .base import CachePolicy, DecisionState, all_blocks


@dataclass
class ProfilingConfig:
    """ProfilingDiT (arXiv 2504.03140).

    Foreground blocks (R_attn >= tau in the profile) run every step.  Background blocks run through a warm-up of
    the first ``warmup_fraction`` of steps (the paper: 6 of 50), then only on refresh steps, and in between reuse
    their residuals, per contiguous run of background blocks (Delta-DiT style).  Refresh steps come at an interval
    that shrinks linearly from ``max_interval`` after warm-up to ``min_interval`` at the end (the paper's
    HunyuanVideo schedule 6, 18, 26, 32, 38, 42, 46, 48 shrinks 12 -> 2; its Wan2.1 one refreshes every 6).
    """

    profile: CacheProfile
    max_interval: int = 6
    min_interval: int = 2
    warmup_fraction: float = 0.12
    reference_steps: int | None = None  # the intervals are steps of a video this long (the model's default);
    # other step counts scale them (never below 1); None: as given at any count


def scaled_interval(interval: int, num_steps: int, reference_steps: int | None) -> int:
    """An interval set for ``reference_steps``-step videos, at ``num_steps``: the same fraction of the schedule.
    A 4-step distilled video gets interval 1 (every step computed) from TaylorSeer's 5 of 50."""
    if not reference_steps:
        return interval
    return max(1, round(interval * num_steps / reference_steps))


class ProfilingPolicy(CachePolicy):
    name = "profiling"
    indicator = None

    def __init__(self, config: ProfilingConfig):
        if config.min_interval < 1 or config.max_interval < config.min_interval:
            raise ValueError(
                f"need 1 <= min_interval <= max_interval, got {config.min_interval}, {config.max_interval}"
            )
        self.config = config
        self.background = np.array(config.profile.background_blocks, dtype=np.int64)

    def refresh_steps(self, num_steps: int) -> set[int]:
        """Warm-up steps, then refresh steps from s0 on with a linearly shrinking interval (with
        max_interval == min_interval this is the released code's s < s0 or (s - s0) % interval == 0)."""
        c = self.config
        hi = scaled_interval(c.max_interval, num_steps, c.reference_steps)
        lo = min(hi, scaled_interval(c.min_interval, num_steps, c.reference_steps))
        warmup = max(1, round(c.warmup_fraction * num_steps))
        steps, s = set(range(warmup)), warmup
        while s < num_steps:
            steps.add(s)
            progress = (s - warmup) / max(1, num_steps - warmup)
            s += max(lo, round(hi - (hi - lo) * progress))
        return steps

    def decide(self, state: DecisionState, step: int, computed, sums) -> np.ndarray:
        mask = all_blocks(state.num_blocks)
        if step + 1 not in self.refresh_steps(state.num_steps):
            mask[self.background] = 0
        return mask

    def describe(self) -> dict:
        c = self.config
        return {
            "policy": self.name,
            "max_interval": c.max_interval,
            "min_interval": c.min_interval,
            "warmup_fraction": c.warmup_fraction,
            "background_blocks": self.background.tolist(),
        }


@dataclass
class TaylorSeerConfig:
    """TaylorSeer (arXiv 2503.06923), at block granularity.

        All blocks run on the first ``warmup_steps`` steps and on every step s with s % interval == 0; in between, each block's
        residual is forecast from its values at the last full steps by a Taylor series of order ``order`` whose
        derivatives are finite differences: d_0 = r, d_i = (d_{i-1} - d_{i-1}^prev) / N, r(s + k) ~ sum_i d_i k^i / i!.
        (The paper forecasts attention and MLP outputs; a Wan block's residual is their gated sum, so forecasting it
        is the same series one level up.)  Defaults follow the released code for Wan2.1: N = 5, order 1, first_enhance 1,
    so full steps are 0, 5, 10, ... and the first forecasts (one point of history) are plain reuse.
    """

    interval: int = 5
    order: int = 1
    warmup_steps: int = 1
    final_steps: int = 0  # steps at the end always computed (0: as the paper)
    reference_steps: int | None = None  # ``interval`` is in steps of a video this long; None: as given


class TaylorSeerPolicy(CachePolicy):
    name = "taylorseer"
    indicator = None
    whole_steps = True  # a forecast of every block is a forecast of the stack (the series is linear)

    def __init__(self, config: TaylorSeerConfig):
        if config.interval < 1 or config.order not in (0, 1, 2):
            raise ValueError(f"need interval >= 1 and order in 0..2, got {config.interval}, {config.order}")
        self.config = config
        self.forecast_order = config.order

    def decide(self, state: DecisionState, step: int, computed, sums) -> np.ndarray:
        c, nxt = self.config, step + 1
        interval = scaled_interval(c.interval, state.num_steps, c.reference_steps)
        full = nxt < c.warmup_steps or nxt % interval == 0 or nxt >= state.num_steps - c.final_steps
        return all_blocks(state.num_blocks) if full else np.zeros(state.num_blocks, dtype=np.int8)

    def describe(self) -> dict:
        c = self.config
        return {"policy": self.name, "interval": c.interval, "order": c.order, "warmup_steps": c.warmup_steps}
