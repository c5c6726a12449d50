"""``adaptive``: ditfarm's own policy.  Skip whole steps (or single blocks) while the predicted error stays in budget.

What it measures.  Whenever a block runs, the engine compares its fresh residual r(s) with what the cache would
have used had the block been skipped, the forecast r^(s) from its history (plain reuse at order 0; at order 1 a
damped first-order extrapolation r(s0) + a k (r(s0) - r(s_prev)) / gap, with a = ``damping``), and reduces

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

Two granularities share that machinery (``granularity``):

- ``"block"``: each block decides alone, as above.
- ``"step"`` (default): all blocks skip together or run together, so the engine caches one residual for the
  whole block stack R = h_out - h_in (``whole_steps``): a skipped step costs one add for the whole model and a
  computed one a single subtraction.  The stack's forecast error is measured at every computed step as
  E = ||R - R^||_1 / ||R||_1 (errors of the blocks may cancel in the sum, as they do in the output), made a unit
  error u = E / (g^(p+1) w(s)) with w the profile's mean change curve (the U-shape, resampled to this run's steps
  and normalised to mean 1; flat without a profile), and the next step is skipped while the errors accumulated
  since the last computed step, sum_k u k^(p+1) w(s + k), stay in budget and the run under its limit.
  That is MagCache's accumulated-error rule with two changes: the error is measured on this very video rather
  than calibrated once per model (ERTACache's point), and its rise and fall over the schedule comes from the
  profile.  The run limits follow the budget's rung of a searched ladder (below).  Where a run sits matters as
  much as the forecast: on tiny, errors made early cost the most, a skipped middle step the least (BENCHMARKS.md,
  single skipped steps).

The forecast.  TaylorSeer's full first-order extrapolation (damping 1) errs less than plain reuse one step ahead,
yet on tiny its videos come out worse at equal compute, while plain reuse lags.  Damping the derivative to 0.4 of
its value beats both on fixed schedules (BENCHMARKS.md, forecasts on fixed schedules).  The predicted error grows
like g^(1 + order * damping).

One knob.  ``threshold`` is the budget; it also picks a rung of a *ladder* of schedule shapes (warm-up, then
runs of skipped steps that lengthen as the video goes).  Every part of a shape is a fraction of the schedule,
not a count of steps, so a ladder carries over to other step counts: a run limit of 0.1 is 3 steps of 30 and 5
of 50, and at 4 steps (a step-distilled model) it is under one step, so every step is computed, which is what
a few-step schedule needs (each of its steps carries a quarter of the trajectory).  A model's card may ship the
ladder searched for it (tiny's, from benchmarks/schedule_search.py at 30 steps, lives in tiny's card); any other
model gets ``GENERIC_LADDER``, one plain shape with the budget alone deciding how far it goes.  The error
budget grows with the rung's run length, so the indicator cuts a run short only where this video's forecast
errs unusually.  Rungs marked ``reuse_output`` skip whole transformer calls and reuse the model's output instead
of forecasting the stack.  Any of ``warmup_fraction``, ``first_run``, ``growth``, ``max_run`` and
``reuse_output`` set explicitly overrides the rung.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ...pipelines.cache_card import Ladder, Rung
from ..profile import CacheProfile
from .base import CachePolicy, DecisionState, all_blocks

# For models whose card ships no ladder: one plain shape, not searched (a fifth of the schedule computed first,
# as caching papers warm up for 10-20%; then runs of a twenty-fifth of the schedule, growing by a fiftieth per
# run up to a tenth), and the error budget alone sets the speed.
GENERIC_LADDER = Ladder((Rung(0.0, 0.2, 0.04, 0.02, 0.1),), "generic: not searched on any model")


@dataclass
class AdaptiveConfig:
    """Whole steps, a first-order forecast damped to 0.4 (the better of plain reuse and TaylorSeer's full series
    on tiny, the one model measured; BENCHMARKS.md), the schedule shape from the budget's rung of ``ladder``
    (the model card's, else GENERIC_LADDER), no forced final step."""

    threshold: float = 0.5
    profile: CacheProfile | None = None
    foreground_scale: float = 0.5
    background_scale: float = 1.0
    order: int = 1  # forecast order for skipped blocks (0: reuse, 1: first-order Taylor)
    damping: float = 0.4  # scale of the forecast's derivative terms (1: TaylorSeer's series)
    max_run: float | None = None  # fraction of the steps; None: from the rung
    warmup_fraction: float | None = None  # None: from the rung
    final_steps: int = 0
    reuse_output: bool | None = None  # step granularity: skipped steps reuse the model's output; None: the rung's
    first_run: float | None = None  # step granularity: the first run's limit, a fraction of the steps; None: rung's
    growth: float | None = None  # step granularity: added to the run limit per finished run (fraction); None: rung's
    granularity: str = "step"  # "step": every block skips or runs together; "block": each block alone
    ladder: Ladder | None = None  # None: GENERIC_LADDER


GRANULARITIES = ("step", "block")


def ladder(config: AdaptiveConfig) -> Rung:
    """The schedule shape for the config's budget: the highest rung of its ladder whose budget it reaches, with
    any of ``warmup_fraction``, ``first_run``, ``growth``, ``max_run``, ``reuse_output`` the config sets
    explicitly overriding the rung's."""
    rung = (config.ladder or GENERIC_LADDER).rung_for(config.threshold)
    chosen = {
        name: getattr(config, name)
        for name in ("warmup_fraction", "first_run", "growth", "max_run", "reuse_output")
        if getattr(config, name) is not None
    }
    return replace(rung, **chosen)


def change_prior(profile: CacheProfile | None, num_steps: int) -> np.ndarray:
    """(num_steps,) the profile's mean per-step change of the block residuals, resampled by position in the
    schedule and scaled to mean 1: how much harder a step is to forecast than the average one.  Flat without a
    profile."""
    if profile is None:
        return np.ones(num_steps)
    curves = np.array([b.change for b in profile.blocks], dtype=float)  # (blocks, steps); step 0 is NaN
    counted = np.isfinite(curves).sum(axis=0)
    curve = np.where(np.isfinite(curves), curves, 0.0).sum(axis=0) / np.maximum(counted, 1)
    known = (counted > 0) & (curve > 0)
    if known.sum() < 2:
        return np.ones(num_steps)
    position = np.linspace(0.0, 1.0, len(curve))
    resampled = np.interp(np.linspace(0.0, 1.0, num_steps), position[known], curve[known])
    return resampled / resampled.mean()


def prior_at(state: DecisionState, step: int) -> float:
    """The change prior at ``step`` (the last entry for steps past the planned count)."""
    return float(state.prior[min(step, len(state.prior) - 1)])


class AdaptivePolicy(CachePolicy):
    name = "adaptive"
    indicator = "forecast"

    def __init__(self, config: AdaptiveConfig):
        if (
            not config.threshold >= 0
            or (config.max_run is not None and config.max_run < 0)
            or config.order not in (0, 1, 2)
            or config.granularity not in GRANULARITIES
            or (config.warmup_fraction is not None and not 0 <= config.warmup_fraction <= 1)
            or not 0 <= config.damping <= 1
            or (config.growth is not None and not config.growth >= 0)
            or (config.first_run is not None and not config.first_run > 0)
        ):
            raise ValueError(f"bad adaptive config: {config} (granularity: one of {', '.join(GRANULARITIES)})")
        self.config = config
        self.forecast_order = config.order
        self.forecast_damping = config.damping
        # a forecast of order p errs like g^(p+1) over g steps; damping its derivative terms moves that towards g^1
        self.error_power = 1 + config.order * config.damping
        self.whole_steps = config.granularity == "step"
        self.rung = ladder(config)
        self.reuse_output = self.whole_steps and self.rung.reuse_output
        # the budget is for runs of the reference rung's length; a run k times longer, with the same unit error,
        # accumulates about k^(1 + error_power) times the error, so longer rungs get that much more room (their
        # speed is the budget's choice; the indicator still ends a run whose errors are unusually large)
        base = (config.ladder or GENERIC_LADDER).rungs[0]
        self.step_budget = config.threshold * max(1.0, self.rung.max_run / base.max_run) ** (1 + self.error_power)

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
        state.warmup = max(2, round(self.rung.warmup_fraction * num_steps))
        state.prior = change_prior(self.config.profile, num_steps)
        state.step_unit_error = np.nan  # step granularity: unit error of the whole stack's forecast
        state.step_spent = 0.0  # step granularity: predicted error accumulated since the last computed step
        state.runs_done = 0  # step granularity: runs of skipped steps finished so far (an integer: ranks agree)
        state.in_run = False  # step granularity: the last decision skipped
        return state

    def observe(self, state: DecisionState, step: int, computed: np.ndarray, sums: np.ndarray) -> np.ndarray:
        gap = np.maximum(step - state.last_computed, 1)
        measured = super().observe(state, step, computed, sums)  # numerator/denominator/gap, NaN where unmeasured
        power = self.error_power
        fresh = ~np.isnan(measured)
        # super() divided by the gap once; the error of a forecast over g steps grows like g^(p+1)
        state.unit_error[fresh] = measured[fresh] * gap[fresh] / gap[fresh].astype(float) ** power
        if self.whole_steps and fresh[0]:  # the stack ran and was compared with its forecast (row 0)
            stack_error = sums[0, 0] / sums[0, 1]
            g = float(gap.max())
            state.step_unit_error = stack_error / (g**power * prior_at(state, step))
        return measured

    def wants_indicator(self, state: DecisionState, step: int) -> bool:
        """Nothing to measure with a zero budget, nor where every decision that could use it is forced: only the
        step before the first free decision onwards, up to the last free one."""
        c = self.config
        return c.threshold > 0 and state.warmup - 1 <= step < state.num_steps - c.final_steps - 1

    def decide(self, state: DecisionState, step: int, computed: np.ndarray, sums: np.ndarray) -> np.ndarray:
        c, nxt = self.config, step + 1
        if nxt < state.warmup or nxt >= state.num_steps - c.final_steps:
            return all_blocks(state.num_blocks)
        if c.granularity == "step":
            return self.decide_step(state, nxt, computed)
        run = state.reuse_run + 1  # length of the run if the block is skipped at nxt
        predicted = state.unit_error * run.astype(float) ** self.error_power
        skip = ~np.isnan(predicted) & (predicted < state.thresholds) & (run <= self.rung.max_run_steps(state.num_steps))
        return (~skip).astype(np.int8)

    def decide_step(self, state: DecisionState, nxt: int, computed: np.ndarray) -> np.ndarray:
        """Skip every block at ``nxt`` if the accumulated predicted error of the stack's forecast stays in budget."""
        if computed.all():
            state.runs_done += state.in_run
            state.in_run, state.step_spent = False, 0.0
        run = int(state.reuse_run.max()) + 1  # steps since the last computed one, if nxt is skipped
        predicted = state.step_unit_error * run**self.error_power * prior_at(state, nxt)
        limit = self.rung.run_limit(state.num_steps, state.runs_done)
        if np.isnan(predicted) or run > limit or state.step_spent + predicted >= self.step_budget:
            return all_blocks(state.num_blocks)
        state.step_spent += predicted
        state.in_run = True
        return np.zeros(state.num_blocks, dtype=np.int8)

    def describe(self) -> dict:
        c = self.config
        return {
            "policy": self.name,
            "threshold": c.threshold,
            "order": c.order,
            "damping": c.damping,
            "max_run": self.rung.max_run,
            "granularity": c.granularity,
            "foreground_scale": c.foreground_scale,
            "background_scale": c.background_scale,
            "warmup_fraction": self.rung.warmup_fraction,
            "first_run": self.rung.first_run,
            "growth": self.rung.growth,
            "reuse_output": self.reuse_output,
            "final_steps": c.final_steps,
        }
