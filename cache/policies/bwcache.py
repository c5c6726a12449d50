"""BWCache (Cui et al., arXiv 2509.13789): reuse all blocks while their outputs barely change.

Indicator, on block outputs h_i at the current step t and the previous computed step:

    L1_rel(h_i) = ||h_i(t) - h_i(prev)||_1 / ||h_i(prev)||_1,      ARL1 = (1/N) sum_i L1_rel(h_i)

When ARL1 < delta (0.15 slow / 0.20 mid / 0.25 fast) the blocks' features are reused for the next R steps
(R = 10% of the steps), then computed again, which also measures the indicator afresh.  Late-stage guard: once
reuse first triggers with k steps left, the last k/2 steps are always computed.  The paper states no warm-up; the
indicator needs two computed steps, so the first ``warmup_steps`` (default 2) always run.  On Wan2.1 the paper
measures the indicator on half of the blocks to save memory (``indicator_fraction``).

The decision is one for all blocks (the mean over blocks), as in the paper; the reuse itself goes through the
engine's residual cache, so a fully reused step costs one add of the whole stack's residual, as in the released
code.  Per CFG branch the engine keeps separate state, so each branch makes its own decision.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .base import CachePolicy, DecisionState, all_blocks


@dataclass
class BWCacheConfig:
    threshold: float = 0.15  # delta
    reuse_fraction: float = 0.10  # R as a fraction of the steps
    warmup_steps: int = 2
    guard_fraction: float = 0.5  # of the steps remaining at the first reuse, computed at the end
    indicator_fraction: float = 1.0  # share of blocks (evenly strided) whose change enters ARL1


class BWCachePolicy(CachePolicy):
    name = "bwcache"
    indicator = "output"

    def __init__(self, config: BWCacheConfig):
        if not config.threshold >= 0:
            raise ValueError(f"bwcache threshold must be >= 0, got {config.threshold}")
        self.config = config

    def new_state(self, num_blocks: int, num_steps: int) -> DecisionState:
        state = super().new_state(num_blocks, num_steps)
        state.reuse_left = 0
        state.guard_from = num_steps
        count = max(1, round(self.config.indicator_fraction * num_blocks))
        state.indicator_blocks = np.unique(np.linspace(0, num_blocks - 1, count).round().astype(int))
        return state

    def reuse_steps(self, num_steps: int) -> int:
        """R, rounded half up; 0 (never reuse) where R is under half a step, as at 4 steps: a reused step of a
        few-step schedule carries a large share of the trajectory."""
        return int(math.floor(self.config.reuse_fraction * num_steps + 0.5))

    def wants_indicator(self, state: DecisionState, step: int) -> np.ndarray:
        """The indicator blocks, from the step that stores the outputs the first free decision compares with, up to
        the late-stage guard; nothing at threshold 0 (it never reuses)."""
        wanted = np.zeros(state.num_blocks, dtype=bool)
        if self.config.threshold > 0 and self.config.warmup_steps - 2 <= step < state.guard_from - 1:
            wanted[state.indicator_blocks] = True
        return wanted

    def decide(self, state: DecisionState, step: int, computed: np.ndarray, sums: np.ndarray) -> np.ndarray:
        c, nxt = self.config, step + 1
        n = state.num_blocks
        if not computed.any():  # a reuse step: count it down, no fresh measurement
            state.reuse_left -= 1
        elif nxt >= c.warmup_steps and nxt < state.guard_from:
            idx = state.indicator_blocks
            numerator, denominator = sums[idx, 0], sums[idx, 1]
            if (denominator > 0).all():
                arl1 = float(np.mean(numerator / denominator))
                if arl1 < c.threshold and self.reuse_steps(state.num_steps) > 0:
                    state.reuse_left = self.reuse_steps(state.num_steps)
                    if state.guard_from == state.num_steps:
                        remaining = state.num_steps - nxt
                        state.guard_from = state.num_steps - int(np.ceil(remaining * c.guard_fraction))
        if state.reuse_left > 0 and nxt < state.guard_from:
            return np.zeros(n, dtype=np.int8)
        state.reuse_left = 0
        return all_blocks(n)

    def describe(self) -> dict:
        c = self.config
        return {
            "policy": self.name,
            "threshold": c.threshold,
            "reuse_fraction": c.reuse_fraction,
            "warmup_steps": c.warmup_steps,
            "guard_fraction": c.guard_fraction,
        }
