"""BAC, Block-wise Adaptive Caching (Ji et al., arXiv 2506.13456), on the units of Wan blocks (``cache/units.py``).

Adaptive Caching Scheduler (ACS).  Per unit (the paper's "block": a self-attention, cross-attention or FFN), pick M
update steps 0 = c_1 < ... < c_M < T that maximise how similar the cached feature is to the features it stands in
for:

    sum_m phi(c_m, c_{m+1}),   phi(i, j) = sum_{k=i+1}^{j-1} Sim[i, k],   c_{M+1} = T

with Sim[i, k] the cosine similarity of the unit's output at steps i and k (mean over calibration prompts and CFG
branches), solved exactly by dynamic programming, DP[m][j] = max_{i<j} DP[m-1][i] + phi(i, j), in O(M T^2).

Bubbling Union (BU).  An FFN recomputed on an input that carries an upstream unit's caching error passes that error
on linearly (the paper's Proposition 3.1; its FFN has no normalisation inside), so updating a downstream FFN while
an upstream unit is stale makes the error surge.  Stage 1 takes the ``bubbling_units`` FFN units with the highest
reuse volatility l_u = mean_{t, t'} ||X_u(t) - X_u(t')||_1 / mean_t ||X_u(t)||_1; stage 2 adds to each of them the
update steps of every FFN unit after it: C(u) <- C(u) U (U_{v downstream} C(v)).  Both restrictions to FFN units
follow the implementation read (its comment: "Currently only applies to FFN").

What a Wan block changes.  Each Wan FFN still reads a LayerNorm of its input (plus this step's adaLN shift and
scale) and has no normalisation inside (GELU-tanh, d -> 5.83 d -> d), so Proposition 3.1's linear error path
carries over, scaled by the modulation and by the FFN's gate.  But at video lengths a Wan block is not FFN-heavy:
at 480p self-attention is about 76% of its FLOPs, the FFN 19%, cross-attention 4% (docs/seed-caches.md).  The
updates BU forces on FFN units are cheap; the savings are in the attention units' schedules.

Ablation (the paper's): ``uniform`` (M evenly spaced updates for every unit), ``unified`` (one ACS schedule, block
0's self-attention's, for every unit), ``blockwise`` (ACS per unit), ``full`` (ACS per unit + BU).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...pipelines.adapters import UNIT_ROLES
from ..profile import CacheProfile
from ..units import UnitPolicy
from .calibrated_steps import CalibratedSteps

VARIANTS = ("uniform", "unified", "blockwise", "full")


class BACCalibrationError(ValueError):
    """The profile holds no BAC calibration that fits this run."""


def acs_schedule(similarity: np.ndarray, updates: int) -> list[int]:
    """The ``updates`` update steps (step 0 first) maximising the summed similarity of each step's cached feature
    to the ones it replaces; ``similarity`` is the unit's (T, T) cosine matrix."""
    sim = np.asarray(similarity, dtype=np.float64)
    steps = len(sim)
    updates = int(min(max(updates, 1), steps))
    # cumulative[i, j] = sum_{k<j} sim[i, k], so phi(i, j) = cumulative[i, j] - cumulative[i, i + 1] for j > i
    cumulative = np.concatenate([np.zeros((steps, 1)), np.cumsum(sim, axis=1)], axis=1)  # (T, T + 1)
    rows = np.arange(steps)
    cover = cumulative - cumulative[rows, rows + 1][:, None]
    cover[np.arange(steps + 1)[None, :] <= rows[:, None]] = -np.inf
    best = np.full((updates + 1, steps), -np.inf)
    back = np.zeros((updates + 1, steps), dtype=np.int64)
    best[1, 0] = 0.0
    for m in range(2, updates + 1):
        for jj in range(1, steps):
            values = best[m - 1, :jj] + cover[:jj, jj]
            i = int(np.argmax(values))
            best[m, jj], back[m, jj] = values[i], i
    finals = best[updates] + cover[:, steps]
    last = int(np.argmax(finals))
    chosen = [last]
    for m in range(updates, 1, -1):
        last = int(back[m, last])
        chosen.append(last)
    return sorted(chosen)


def uniform_updates(steps: int, updates: int) -> list[int]:
    return sorted(set(np.linspace(0, steps - 1, int(min(max(updates, 1), steps))).round().astype(int).tolist()))


def bubbling_union(schedules: list[set[int]], volatility: np.ndarray, bubbling_units: int) -> list[set[int]]:
    """BU: the ``bubbling_units`` most volatile FFN units also update whenever any later FFN unit does."""
    feed_forward = [u for u in range(len(schedules)) if UNIT_ROLES[u % len(UNIT_ROLES)] == "feed_forward"]
    upstream = sorted(feed_forward, key=lambda u: -float(volatility[u]))[: max(0, bubbling_units)]
    merged = [set(s) for s in schedules]
    for u in upstream:
        for v in feed_forward:
            if v > u:
                merged[u] |= schedules[v]
    return merged


@dataclass
class BACConfig:
    """BAC with each unit updating on ``updates`` of the steps (a fraction of the schedule: the paper's S/T; its
    simulations use S = 10) and BU over ``bubbling_units`` FFN units (the paper: 5 in simulation, 3 on the robot).
    The profile must carry a BAC calibration (``ditfarm calibrate bac``)."""

    updates: float
    profile: CacheProfile
    bubbling_units: int = 3
    variant: str = "full"


class BACPolicy(CalibratedSteps, UnitPolicy):
    name = "bac"
    method = "BAC"
    error = BACCalibrationError

    def __init__(self, config: BACConfig):
        if config.variant not in VARIANTS:
            raise ValueError(f"unknown bac variant {config.variant!r}; choose one of {', '.join(VARIANTS)}")
        if not 0 < config.updates <= 1:
            raise ValueError(
                f"bac's knob is the fraction of steps each unit updates on: 0 < updates <= 1, got {config.updates}"
            )
        self.config = config
        source = getattr(config.profile, "source", None)
        self._where = f"profile {source}" if source else "the profile"
        self.calibration = config.profile.bac
        if not self.calibration:
            raise BACCalibrationError(f"{self._where} holds no BAC calibration; run `ditfarm calibrate bac` first")
        self.read_steps(self.calibration, self._where)
        self._cache: dict[int, np.ndarray] = {}

    def updates_for(self, num_steps: int) -> int:
        return max(1, round(self.config.updates * num_steps))

    def unit_schedules(self, num_steps: int) -> list[set[int]]:
        self.check_segment(num_steps)
        similarity = np.asarray(self.calibration["similarity"], dtype=np.float64)
        m = self.updates_for(num_steps)
        variant = self.config.variant
        if variant == "uniform":
            return [set(uniform_updates(num_steps, m)) for _ in similarity]
        if variant == "unified":
            shared = set(acs_schedule(similarity[0], m))
            return [set(shared) for _ in similarity]
        schedules = [set(acs_schedule(sim, m)) for sim in similarity]
        if variant == "full":
            schedules = bubbling_union(
                schedules, np.asarray(self.calibration["volatility"]), self.config.bubbling_units
            )
        return schedules

    def schedule(self, num_steps: int, num_units: int) -> np.ndarray:
        if num_steps not in self._cache:
            schedules = self.unit_schedules(num_steps)
            if len(schedules) != num_units:
                raise BACCalibrationError(
                    f"{self._where} has BAC data for {len(schedules)} units, the model {num_units}"
                )
            table = np.zeros((num_steps, num_units), dtype=np.int8)
            for u, steps in enumerate(schedules):
                table[sorted(steps), u] = 1
            self._cache[num_steps] = table
        return self._cache[num_steps]

    def describe(self) -> dict:
        c = self.config
        return {"policy": self.name, "updates": c.updates, "bubbling_units": c.bubbling_units, "variant": c.variant}
