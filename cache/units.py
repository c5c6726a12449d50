"""Sub-block caching: reuse the outputs of each block's self-attention, cross-attention and FFN separately.

BAC and HarmoniCa cache the *units* of a DiT block rather than the block: its self-attention, cross-attention and
feed-forward (``UNIT_ROLES``; the model's adapter says which modules they are), each wrapped by the block's own
norms, adaLN modulation and gates.  A hook on each unit module returns its cached output on a skipped
step, so the norms, the modulation of this step's timestep and the gates still run fresh around it.

Both methods decide offline: a unit policy gives a (steps, units) integer table before sampling (unit u of block b
is column 3 b + role, in ``UNIT_ROLES`` order), the same for every CFG branch, and on every rank of a gang since it is
built from integers and profile data alone; no indicator is measured.  Caches are kept per branch (diffusers'
``StateManager``, switched by ``cache_context``).  Under sequence parallelism a skipped self-attention skips its
all-to-all on every rank alike.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import BaseState, StateManager

from ..pipelines.adapters import adapter_for
from .stats import CacheStats
from .steps import StepCounter

STEP_HOOK = "ditfarm_unit_cache_step"
UNIT_HOOK = "ditfarm_unit_cache"


def unit_modules(transformer: torch.nn.Module) -> list[torch.nn.Module]:
    """Every block's units in order: block 0's in ``UNIT_ROLES`` order, then block 1's, ..."""
    return adapter_for(transformer).unit_modules()


class UnitPolicy(ABC):
    """A fixed per-unit schedule.  Subclasses implement ``schedule``."""

    name = "units"
    whole_steps = False
    reuse_output = False
    adjusts_sigmas = False

    @abstractmethod
    def schedule(self, num_steps: int, num_units: int) -> np.ndarray:
        """(num_steps, num_units) int8: 1 computes the unit at that step; row 0 must be all ones."""

    def check_steps(self, num_steps: int) -> None:
        """Raise (ValueError) for a video length this policy cannot serve (a calibration made for another)."""

    def describe(self) -> dict:
        return {"policy": self.name}


class UnitBranchState(BaseState):
    def __init__(self, num_units: int):
        super().__init__()
        self.num_units = num_units
        self.reset()

    def reset(self, *args, **kwargs) -> None:
        self.outputs: list[torch.Tensor | None] = [None] * self.num_units
        self.step = -1
        self.mask = np.ones(self.num_units, dtype=np.int8)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.outputs if t is not None)


class UnitStepHook(ModelHook):
    """On the transformer: fixes this step's row of the schedule before the units run."""

    _is_stateful = True

    def __init__(self, engine: UnitCacheEngine):
        super().__init__()
        self.engine = engine
        self.state_manager = engine.state_manager
        self.steps = StepCounter()

    def pre_forward(self, module, *args, **kwargs):
        context = self.state_manager.context
        state: UnitBranchState = self.state_manager.get_state()
        step = self.steps.step_of(context)
        state.step = step
        state.mask = self.engine.row(step, int(context.num_inference_steps or step + 1)).copy()
        never = np.array([o is None for o in state.outputs])
        state.mask[never] = 1  # nothing cached yet: follows from the masks alone, so identical on every rank
        return args, kwargs

    def post_forward(self, module, output):
        state: UnitBranchState = self.state_manager.get_state()
        self.engine.file_step(self.state_manager.context.name, state)
        return output

    def reset_state(self, module):
        self.engine.finish_video()
        self.state_manager.reset()
        self.steps.reset()
        return module


class UnitHook(ModelHook):
    """On one unit module: run it and keep its output, or return the kept one."""

    _is_stateful = True

    def __init__(self, engine: UnitCacheEngine, index: int):
        super().__init__()
        self.engine = engine
        self.state_manager = engine.state_manager
        self.index = index

    def new_forward(self, module, *args, **kwargs):
        state: UnitBranchState = self.state_manager.get_state()
        u = self.index
        if state.mask[u] or state.outputs[u] is None:
            output = self.fn_ref.original_forward(*args, **kwargs)
            state.outputs[u] = output.detach() if isinstance(output, torch.Tensor) else output
            return output
        return state.outputs[u]

    def reset_state(self, module):
        return module


class UnitCacheEngine:
    """Owns the unit hooks, the per-branch caches and the schedule of one transformer (``cache.enable`` builds it
    for unit policies; the same ``stats`` / ``last_video`` as ``CacheEngine``, counted in units)."""

    def __init__(self, transformer: torch.nn.Module, policy: UnitPolicy):
        self.transformer = transformer
        self.policy = policy
        self.units = unit_modules(transformer)
        self.state_manager = StateManager(UnitBranchState, (len(self.units),))
        self.stats = CacheStats()
        self.last_video = CacheStats()
        self._table: np.ndarray | None = None

    def row(self, step: int, num_steps: int) -> np.ndarray:
        if self._table is None or len(self._table) != num_steps:
            table = np.asarray(self.policy.schedule(num_steps, len(self.units)), dtype=np.int8)
            if table.shape != (num_steps, len(self.units)):
                raise RuntimeError(
                    f"{self.policy.name} gave a {table.shape} schedule for {num_steps} steps and "
                    f"{len(self.units)} units"
                )
            table[0] = 1
            self._table = table
        return self._table[min(step, num_steps - 1)]

    def attach(self) -> None:
        HookRegistry.check_if_exists_or_initialize(self.transformer).register_hook(UnitStepHook(self), STEP_HOOK)
        for i, module in enumerate(self.units):
            HookRegistry.check_if_exists_or_initialize(module).register_hook(UnitHook(self, i), UNIT_HOOK)
        HookRegistry.check_if_exists_or_initialize(self.transformer).invalidate_child_registries_cache()

    def detach(self) -> None:
        self.finish_video()
        HookRegistry.check_if_exists_or_initialize(self.transformer).remove_hook(STEP_HOOK, recurse=False)
        for module in self.units:
            HookRegistry.check_if_exists_or_initialize(module).remove_hook(UNIT_HOOK, recurse=False)
        self.state_manager.reset()

    def file_step(self, branch: str, state: UnitBranchState) -> None:
        computed = int(state.mask.sum())
        self.stats.computed += computed
        self.stats.skipped += len(state.mask) - computed
        self.stats.masks.setdefault(branch, []).append(state.mask.astype(int).tolist())
        total = sum(s.nbytes() for s in self.state_manager._state_cache.values())
        self.stats.peak_bytes = max(self.stats.peak_bytes, total)

    def finish_video(self) -> None:
        self.last_video = self.stats  # as CacheEngine.finish_video
        self.stats = CacheStats()
        self._table = None
