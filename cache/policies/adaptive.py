"""``adaptive``: ditfarm's own policy.  Per block, skip while the *predicted error of skipping* stays in budget.

What it measures.  Whenever a block runs, the engine compares its fresh residual r(s) with what the cache would
have used had the block been skipped, the forecast r^(s) from its history (plain reuse at order 0, TaylorSeer's
first-order extrapolation at order 1), and reduces

    e_b(s) = ||r_b(s) - r^_b(s)||_1 / ||r_b(s)||_1

across ranks.  This is the error of reuse itself, not a proxy such as the change of an output (ERTACache's point:
measure the error you will make).

How it decides.  A forecast of order p made g steps after the last computation errs roughly like g^(p+1), so each
block keeps a unit error u_b = e_b / g^(p+1) from its latest measurement.  Block b is skipped at the next step if
its predicted error after j+1 skipped steps, u_b (j+1)^(p+1), stays under its class's threshold and the run stays
under ``max_run``.  Thresholds come per class from the profile: foreground blocks (R_attn >= tau) get
``threshold * foreground_scale``, background blocks ``threshold * background_scale``.  The first
``warmup_fraction`` of steps and the last ``final_steps`` always run all blocks (the left and right arms of the
U-shaped change curve).  Skipped blocks form contiguous runs that cost one add each.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..profile import CacheProfile
from .base import CachePolicy, DecisionState, all_blocks


@dataclass
class AdaptiveConfig:
    threshold: float = 0.08
    profile: CacheProfile | None = None
    foreground_scale: float = 0.5
    background_scale: float = 1.0
    order: int = 1  # forecast order for skipped blocks (0: reuse, 1: first-order Taylor)
    max_run: int = 4
    warmup_fraction: float = 0.1
    final_steps: int = 1


class AdaptivePolicy(CachePolicy):
    name = "adaptive"
    indicator = "forecast"

    def __init__(self, config: AdaptiveConfig):
        if not config.threshold >= 0 or config.max_run < 0 or config.order not in (0, 1, 2):
            raise ValueError(f"bad adaptive config: {config}")
        self.config = config
        self.forecast_order = config.order

    def block_thresholds(self, num_blocks: int) -> np.ndarray:
        c = self.config
        scale = np.full(num_blocks, c.background_scale)
        if c.profile is not None:
            scale[c.profile.foreground_blocks] = c.foreground_scale
        return c.threshold * scale

    def new_state(self, num_blocks: int, num_steps: int) -> DecisionState:
        state = super().new_state(num_blocks, num_steps)
        state.unit_error = np.full(num_blocks, np.nan)
        state.thresholds = self.block_thresholds(num_blocks)
        state.warmup = max(2, round(self.config.warmup_fraction * num_steps))
        return state

    def observe(self, state: DecisionState, step: int, computed: np.ndarray, sums: np.ndarray) -> np.ndarray:
        gap = np.maximum(step - state.last_computed, 1)
        measured = super().observe(state, step, computed, sums)  # numerator/denominator/gap, NaN where unmeasured
        power = self.config.order + 1
        fresh = ~np.isnan(measured)
        # super() divided by the gap once; the error of a forecast over g steps grows like g^(p+1)
        state.unit_error[fresh] = measured[fresh] * gap[fresh] / gap[fresh].astype(float) ** power
        return measured

    def decide(self, state: DecisionState, step: int, computed: np.ndarray, sums: np.ndarray) -> np.ndarray:
        c, nxt = self.config, step + 1
        if nxt < state.warmup or nxt >= state.num_steps - c.final_steps:
            return all_blocks(state.num_blocks)
        run = state.reuse_run + 1  # length of the run if the block is skipped at nxt
        predicted = state.unit_error * run.astype(float) ** (c.order + 1)
        skip = ~np.isnan(predicted) & (predicted < state.thresholds) & (run <= c.max_run)
        return (~skip).astype(np.int8)

    def describe(self) -> dict:
        c = self.config
        return {"policy": self.name, "threshold": c.threshold, "order": c.order, "max_run": c.max_run,
                "foreground_scale": c.foreground_scale, "background_scale": c.background_scale,
                "warmup_fraction": c.warmup_fraction, "final_steps": c.final_steps}
