"""What every cache policy is: a function from reduced indicator sums to an integer compute mask.

The engine measures, for each block it computes, two local sums of the policy's indicator tensor x (the block's
residual or its output): the numerator ||x_now - x_prev||_1 and the denominator ||x_prev||_1, where x_prev is that
block's value at its previous computation.  Those sums, for all blocks, form one small float64 vector that passes
through a single ``reduce`` (identity in one process, an all-reduce under sequence parallelism) before the policy
sees it.  ``decide`` may depend only on that reduced vector, the integer masks of earlier steps and its own
configuration, never on a rank's local tensors, so every rank arrives at the same mask.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class DecisionState:
    """A policy's memory across the steps of one video and CFG branch: integers, and floats derived from reduced
    sums only (identical on every rank)."""

    num_blocks: int
    num_steps: int
    last_computed: np.ndarray = field(init=False)  # step at which each block last ran (-1: never)
    reuse_run: np.ndarray = field(init=False)  # consecutive steps each block has been skipped
    rate: np.ndarray = field(init=False)  # last measured relative change per step of each block's indicator
    accumulated: np.ndarray = field(init=False)  # estimated relative change since each block's last computation
    history: list[np.ndarray] = field(default_factory=list)  # measured relative change per step (NaN: not measured)

    def __post_init__(self):
        self.last_computed = np.full(self.num_blocks, -1, dtype=np.int64)
        self.reuse_run = np.zeros(self.num_blocks, dtype=np.int64)
        self.rate = np.full(self.num_blocks, np.nan)
        self.accumulated = np.zeros(self.num_blocks)


class CachePolicy(ABC):
    """Base class: subclasses set ``indicator`` and ``forecast_order`` and implement ``decide``."""

    name = "base"
    #: which tensor's change the engine sums per computed block: "residual", "output", or None (no indicator)
    indicator: str | None = "residual"
    #: how a skipped block's residual is predicted: 0 reuses the last one, 1-2 is a Taylor forecast of that order
    forecast_order: int = 0
    #: scale of the forecast's derivative terms (1: the Taylor series; below 1: a damped extrapolation)
    forecast_damping: float = 1.0
    #: True when every mask is all ones or all zeros: the engine then caches the whole stack's residual once, and
    #: files the stack's indicator sums in row 0 (the other rows stay zero)
    whole_steps: bool = False
    #: whole-step policies only: a skipped step returns the transformer's last output of its branch (plain reuse
    #: of the model's prediction, so the sampler takes the step with it) instead of running the embeddings, the
    #: forecast stack and the head; a skipped step then costs next to nothing
    reuse_output: bool = False

    def check_steps(self, num_steps: int) -> None:
        """Raise (ValueError) for a video length this policy cannot serve (a calibration made for another)."""

    def new_state(self, num_blocks: int, num_steps: int) -> DecisionState:
        return DecisionState(num_blocks, num_steps)

    def observe(self, state: DecisionState, step: int, computed: np.ndarray, sums: np.ndarray) -> np.ndarray:
        """Fold one step's reduced sums (num_blocks, 2) into the state; returns the per-step relative change of
        each block measured at this step (NaN where the block was skipped or had nothing to compare with)."""
        numerator, denominator = sums[:, 0], sums[:, 1]
        gap = np.maximum(step - state.last_computed, 1)
        measured = np.full(state.num_blocks, np.nan)
        valid = (computed == 1) & (state.last_computed >= 0) & (denominator > 0)
        measured[valid] = numerator[valid] / denominator[valid] / gap[valid]
        state.rate = np.where(valid, measured, state.rate)
        state.accumulated = np.where(computed == 1, 0.0, state.accumulated + np.nan_to_num(state.rate, nan=np.inf))
        state.reuse_run = np.where(computed == 1, 0, state.reuse_run + 1)
        state.last_computed = np.where(computed == 1, step, state.last_computed)
        state.history.append(measured)
        return measured

    def wants_indicator(self, state: DecisionState, step: int) -> bool | np.ndarray:
        """Whether the sums measured at ``step`` can change any decision: one bool, or one per block (they cost a
        few tensor reductions per block, which on small blocks is most of the engine's overhead).  Must depend on
        integers only: every rank has to agree."""
        return self.indicator is not None

    @abstractmethod
    def decide(self, state: DecisionState, step: int, computed: np.ndarray, sums: np.ndarray) -> np.ndarray:
        """Given the reduced sums of step ``step``, return the int8 mask (1 = compute) for step ``step + 1``."""

    def correct_stack(self, state: DecisionState, step: int, residual: torch.Tensor) -> torch.Tensor:
        """Whole-step policies: the stack residual a skipped ``step`` adds, from the cached one (ERTACache's
        rectification); by default the cached residual as it is.  Must depend on integers and tables every rank
        holds alike."""
        return residual

    #: True when the policy changes the sampler's noise schedule (``step_factors``, applied before sampling)
    adjusts_sigmas: bool = False

    def step_factors(self, num_steps: int) -> np.ndarray:
        """Per step this transformer runs, the factor by which the sampler shortens its interval (1: none)."""
        return np.ones(num_steps)

    def describe(self) -> dict:
        return {"policy": self.name}


def all_blocks(num_blocks: int) -> np.ndarray:
    return np.ones(num_blocks, dtype=np.int8)
