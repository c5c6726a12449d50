"""ERTACache (Peng et al., arXiv 2508.21091): a reuse schedule calibrated offline, shortened reused intervals, and a
linear correction of the reused residual.

The cached quantity is the whole block stack's residual R = h_out - h_in (TeaCache's residual, the engine's
``whole_steps`` path): a reused step adds the residual R~ of the last computed step to its input.

(a) Offline residual profiling.  From full-compute calibration videos, N[i, s] = sum ||R(i) - R(s)||_1 and
    D[s] = sum ||R(s)||_1 (summed over prompts and CFG branches).  For a threshold lambda, walk the steps with the
    residual cached at the last refresh c: reuse step s while N[c, s] / D[s] < lambda, otherwise compute it and set
    c = s.  Step 0 always computes.  The reused set S is one for all prompts (the paper's observation: cache errors
    are consistent across prompts).

(b) Timestep adjustment.  A reused step's velocity v~ errs; shortening its interval limits how far the error is
    carried.  phi_s = clip(1 - ||v~_s - v_s||_1 / ||v_s - v_{s-1}||_1, 0, 1), measured in a calibration run along
    the cached trajectory; the step's interval becomes phi_s * dt_s and the noise left over is re-spread over the
    remaining steps in proportion to their nominal intervals, so the schedule still ends at sigma = 0 (the last
    step is never shortened).  Applied as a new sigma schedule before sampling: exact for Euler samplers
    (FlowMatchEulerDiscreteScheduler); multistep samplers (UniPC) take it as a schedule with uneven steps.

(c) Error rectification.  The reuse error eps = R~ - R is modelled, per step and channel, as an affine function of
    the cached residual, eps^ = K R~ + B, fitted by least squares on the calibration run (the paper fits
    sigmoid(K v~ + B) and linearises the sigmoid, sigma(z) ~ 1/2 + z/4, to the same least-squares problem; the
    constants fold into K and B here).  A reused step adds R~ - eps^ = (1 - K) R~ - B.

Every rank loads the same tables from the profile and the schedule depends on the step index alone, so all ranks
of a gang reuse the same steps, shift the same sigmas and correct alike (no indicator is measured at run time).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ...pipelines.denoise import adjusted_sigmas
from ..profile import CacheProfile
from .base import CachePolicy, DecisionState, all_blocks
from .calibrated_steps import CalibratedSteps

VARIANTS = ("uniform", "offline", "offline+dt", "full")


class ERTACacheCalibrationError(ValueError):
    """The profile holds no ERTACache calibration that fits this run."""


def offline_schedule(numerator: np.ndarray, denominator: np.ndarray, threshold: float) -> list[int]:
    """(a): the steps reused at ``threshold`` (lambda), walking the calibrated error of the residual cached at the
    last refresh; ``numerator[i, s]`` = ||R(i) - R(s)||_1 summed, ``denominator[s]`` = ||R(s)||_1 summed."""
    numerator, denominator = np.asarray(numerator, float), np.asarray(denominator, float)
    reused, cached = [], 0
    for s in range(1, len(denominator)):
        if denominator[s] > 0 and numerator[cached, s] / denominator[s] < threshold:
            reused.append(s)
        else:
            cached = s
    return reused


def uniform_schedule(num_steps: int, num_reused: int) -> list[int]:
    """The ablation's baseline: as many reused steps, with the computed ones evenly spaced (step 0 first)."""
    computed = set(np.linspace(0, num_steps - 1, num_steps - num_reused).round().astype(int).tolist())
    return [s for s in range(num_steps) if s not in computed]


def rectification_from_sums(sums: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(c): per channel, least-squares K and B of eps ~ K r + B from the sums (n, sum r, sum eps, sum r^2,
    sum r*eps), rows in that order; a channel whose cached residual does not vary gets K = 0."""
    n, sr, se, srr, sre = (np.asarray(row, dtype=np.float64) for row in sums)
    var = n * srr - sr * sr
    safe = var > 1e-12 * np.maximum(n * srr, 1e-300)
    k = np.where(safe, (n * sre - sr * se) / np.where(safe, var, 1.0), 0.0)
    b = (se - k * sr) / np.maximum(n, 1.0)
    return k, b


@dataclass
class ERTACacheConfig:
    """ERTACache at reuse threshold ``threshold`` (the paper's lambda; 0.08 for Wan2.1-1.3B at 50 steps).

    ``variant`` selects the paper's ablation: ``uniform`` (as many reused steps, evenly spaced), ``offline`` (the
    calibrated set), ``offline+dt`` (+ timestep adjustment), ``full`` (+ error rectification).  The profile must
    carry an ERTACache calibration at this threshold (``ditfarm calibrate ertacache``)."""

    threshold: float
    profile: CacheProfile
    variant: str = "full"


class ERTACachePolicy(CalibratedSteps, CachePolicy):
    name = "ertacache"
    method = "ERTACache"
    error = ERTACacheCalibrationError
    indicator = None
    whole_steps = True

    def __init__(self, config: ERTACacheConfig):
        if config.variant not in VARIANTS:
            raise ValueError(f"unknown ertacache variant {config.variant!r}; choose one of {', '.join(VARIANTS)}")
        self.config = config
        self.calibration = config.profile.ertacache
        if not self.calibration:
            raise ERTACacheCalibrationError(
                f"{self._profile_name()} holds no ERTACache calibration; run `ditfarm calibrate ertacache` first"
            )
        self.entry = self._entry(config.threshold)
        self.read_steps(self.calibration, self._profile_name())
        if config.variant == "uniform":
            self.reused = set(uniform_schedule(self.steps, len(self.entry["reused"])))
        else:
            self.reused = set(self.entry["reused"])
        self.phi = np.asarray(self.entry["phi"], dtype=np.float64)
        self._rectify = {
            branch: {int(s): (np.asarray(kb["k"]), np.asarray(kb["b"])) for s, kb in table.items()}
            for branch, table in self.entry["rectify"].items()
        }
        self._tensors: dict = {}

    def _profile_name(self) -> str:
        return (
            f"profile {self.config.profile.source}" if getattr(self.config.profile, "source", None) else "the profile"
        )

    def _entry(self, threshold: float) -> dict:
        for entry in self.calibration["entries"]:
            if abs(entry["lambda"] - threshold) <= 1e-9 * max(1.0, abs(threshold)):
                return entry
        have = ", ".join(f"{e['lambda']:g}" for e in self.calibration["entries"])
        raise ERTACacheCalibrationError(
            f"{self._profile_name()} has ERTACache calibrated at lambda {have}, not {threshold:g}; "
            f"run `ditfarm calibrate ertacache --lambdas {threshold:g}` or pick a calibrated value"
        )

    def new_state(self, num_blocks: int, num_steps: int) -> DecisionState:
        self.check_segment(num_steps)
        return super().new_state(num_blocks, num_steps)

    def decide(self, state: DecisionState, step: int, computed, sums) -> np.ndarray:
        if step + 1 in self.reused:
            return np.zeros(state.num_blocks, dtype=np.int8)
        return all_blocks(state.num_blocks)

    @property
    def adjusts_sigmas(self) -> bool:
        return self.config.variant in ("offline+dt", "full")

    def step_factors(self, num_steps: int) -> np.ndarray:
        """(b): the factor of each of this transformer's ``num_steps`` steps by which the sampler shortens its
        interval (phi; 1 where nothing is reused), for the loop to apply before sampling (``SIGMA_SCHEDULE_ATTR``)."""
        self.check_segment(num_steps)
        return self.phi.copy() if self.adjusts_sigmas else np.ones(num_steps)

    def adjust_sigmas(self, sigmas: np.ndarray) -> np.ndarray:
        """(b) for a schedule of ``len(sigmas) - 1`` steps that this transformer runs alone."""
        return adjusted_sigmas(sigmas, self.step_factors(len(sigmas) - 1))

    def correct_stack(self, state: DecisionState, step: int, residual: torch.Tensor) -> torch.Tensor:
        """(c): the reused stack residual R~ becomes R~ - (K R~ + B), K and B per channel (the last axis)."""
        if self.config.variant != "full":
            return residual
        table = self._rectify.get(getattr(state, "branch", None) or "cond", {})
        if step not in table:
            return residual
        key = (state.branch, step, residual.device, residual.dtype)
        if key not in self._tensors:
            k, b = table[step]
            self._tensors[key] = (
                torch.as_tensor(1.0 - k, dtype=residual.dtype, device=residual.device),
                torch.as_tensor(b, dtype=residual.dtype, device=residual.device),
            )
        keep, offset = self._tensors[key]
        return residual * keep - offset

    def describe(self) -> dict:
        return {
            "policy": self.name,
            "lambda": self.config.threshold,
            "variant": self.config.variant,
            "reused": sorted(self.reused),
        }
