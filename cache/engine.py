"""The block-cache engine: hooks on ``pipe.transformer``'s blocks that compute or reuse each block per step.

Modelled on diffusers' ``hooks/first_block_cache.py``: one ``StateManager`` shared by all hooks keeps one
``BranchState`` per cache context ("cond" / "uncond"), so the two CFG passes never mix their caches.

Per transformer call (one step of one branch):

1. ``StepHook.pre_forward`` fixes this step's plan: the integer mask the policy decided at the end of the previous
   step (all ones at step 0), and the contiguous runs of skipped blocks in it.
2. ``BlockHook`` on each block either runs it, records its residual (output - input) and adds the indicator sums
   ``||x - x_prev||_1`` and ``||x_prev||_1`` to this step's local vector; or, at the first block of a skipped run,
   adds the run's predicted residual to its input (one add for the whole run), and passes the input through
   unchanged for the rest of the run.
3. ``StepHook.post_forward`` files the branch's local sums.  The first transformer call of the next step, before
   fixing its plan, sends the sums of every branch filed in the step before through ``reduce`` as one vector
   (identity in one process, one all-reduce under sequence parallelism: one collective per denoising step, CFG's
   two branches included) and lets the policy turn each branch's reduced sums into its next mask.

Nothing in 3 reads local tensors, so every rank of a gang decides the same mask.

Policies that only ever skip whole steps (``CachePolicy.whole_steps``: every mask all ones or all zeros) get a
cheaper path: the engine keeps one residual for the whole block stack (last block's output minus first block's
input) and sums its indicator on that, instead of one residual, one difference and two norms per block.  A skipped
step is then one add, and a computed one a single subtraction (plus the indicator where the policy wants it).
A whole-step policy that also sets ``reuse_output`` skips the transformer call itself on a skipped step and hands
back the branch's last output (the stack residual and its indicator are still kept at computed steps).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import BaseState, StateManager

from ..pipelines.adapters import adapter_for
from .policies.base import CachePolicy, DecisionState, all_blocks
from .stats import CacheStats
from .steps import StepCounter

STEP_HOOK = "ditfarm_cache_step"
BLOCK_HOOK = "ditfarm_cache_block"

Reduce = Callable[[torch.Tensor], torch.Tensor]


def identity_reduce(vector: torch.Tensor) -> torch.Tensor:
    return vector


class BlockMemory:
    """One block's cached tensors: Taylor terms of its residual (term 0 is the residual itself) and, for policies
    whose indicator is the block output, the last output."""

    __slots__ = ("terms", "step", "output", "carried")

    def __init__(self):
        self.terms: list[torch.Tensor] = []
        self.step = -1
        self.output: torch.Tensor | None = None
        self.carried: tuple[torch.Tensor, ...] = ()  # the last residuals of the streams carried along (BlockIO)

    def update(self, residual: torch.Tensor, step: int, order: int, delta: torch.Tensor | None = None) -> None:
        """TaylorSeer's derivative update: d_0 = r, d_i = (d_{i-1}^new - d_{i-1}^old) / (step gap).
        ``delta`` = r - d_0^old, when the caller already has it."""
        new = [residual]
        if self.terms and order > 0:
            gap = float(step - self.step)
            for i in range(min(order, len(self.terms))):
                diff = delta if (i == 0 and delta is not None) else new[i] - self.terms[i]
                new.append(diff / gap if gap != 1.0 else diff)
        self.terms, self.step = new, step

    def predict(self, step: int, damping: float = 1.0) -> torch.Tensor:
        """d_0 + damping * sum_{i>=1} d_i k^i / i!, k = steps since the last computation (just d_0 when order
        is 0; damping 1 is the plain Taylor series)."""
        out = self.terms[0]
        k, factor = float(step - self.step), damping
        for i in range(1, len(self.terms)):
            factor *= k / i
            out = out + self.terms[i] * factor
        return out

    def nbytes(self) -> int:
        tensors = self.terms + ([self.output] if self.output is not None else []) + list(self.carried)
        return sum(t.numel() * t.element_size() for t in tensors)


class BranchState(BaseState):
    """Everything one CFG branch caches for one video."""

    def __init__(self, num_blocks: int, policy: CachePolicy):
        super().__init__()
        self.num_blocks = num_blocks
        self.policy = policy
        self.reset()

    def reset(self, *args, **kwargs) -> None:
        self.memory = [BlockMemory() for _ in range(self.num_blocks)]
        self.stack = BlockMemory()  # whole-step policies: the residual of the whole block stack
        self.stack_input: tuple[torch.Tensor, ...] | None = None  # the first block's streams, at a computed step
        self.output = None  # reuse_output policies: the transformer's output at the last computed step
        self.step = -1
        self.num_steps = 0
        self.measure = np.ones(self.num_blocks, dtype=bool)  # which blocks sum their indicator this step
        self.plan = all_blocks(self.num_blocks)
        self.next_plan = all_blocks(self.num_blocks)
        self.run_end: dict[int, int] = {}
        self.run_sums: dict[tuple[int, int], tuple[tuple[int, ...], torch.Tensor]] = {}
        self.sums: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.decision: DecisionState | None = None
        self.masks: list[list[int]] = []

    def begin_step(self, step: int, num_steps: int) -> None:
        if self.decision is None:
            self.decision = self.policy.new_state(self.num_blocks, max(num_steps, step + 1))
        self.step, self.num_steps = step, num_steps
        wanted = np.asarray(self.policy.wants_indicator(self.decision, step), dtype=bool)
        self.measure = np.broadcast_to(wanted, (self.num_blocks,))
        plan = self.next_plan.copy()
        if self.policy.whole_steps:
            if plan.min() != plan.max():
                raise RuntimeError(f"{self.policy.name} declares whole steps but planned {plan.tolist()}")
            if self.stack.step < 0:
                plan[:] = 1
        else:
            never_ran = np.array([m.step < 0 for m in self.memory])
            plan[never_ran] = 1  # nothing to reuse yet; identical on every rank since it follows from the masks
        self.plan = plan
        self.run_end = {}
        b = 0
        while b < self.num_blocks:
            if plan[b] == 0:
                start = b
                while b + 1 < self.num_blocks and plan[b + 1] == 0:
                    b += 1
                self.run_end[start] = b
            b += 1
        self.sums = {}

    def predicted_run_residual(self, start: int) -> torch.Tensor:
        """Sum of the run's predicted residuals.  Plain reuse (order 0) does not depend on the step, so the sum is
        kept and reused until a block of the run runs again: a run skipped on many steps costs one add per step."""
        damping = self.policy.forecast_damping
        if self.policy.whole_steps:
            return self.policy.correct_stack(self.decision, self.step, self.stack.predict(self.step, damping))
        end = self.run_end[start]
        blocks = range(start, end + 1)
        static = all(len(self.memory[b].terms) == 1 for b in blocks)
        key = (start, end)
        versions = tuple(self.memory[b].step for b in blocks)
        if static and key in self.run_sums and self.run_sums[key][0] == versions:
            return self.run_sums[key][1]
        total = self.memory[start].predict(self.step, damping)
        for b in blocks[1:]:
            total = total + self.memory[b].predict(self.step, damping)
        if static and len(blocks) > 1:
            self.run_sums = {k: v for k, v in self.run_sums.items() if not set(range(k[0], k[1] + 1)) & set(blocks)}
            self.run_sums[key] = (versions, total)
        return total

    def carried_run(self, start: int, streams: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """The carried streams after the skipped run starting at ``start``: each plus its last residuals over the
        run (over the whole stack for whole-step policies)."""
        if not streams:
            return ()
        memories = [self.stack] if self.policy.whole_steps else self.memory[start : self.run_end[start] + 1]
        out = list(streams)
        for memory in memories:
            out = [x + r.to(x.dtype) for x, r in zip(out, memory.carried)]
        return tuple(out)

    def nbytes(self) -> int:
        run_bytes = sum(t.numel() * t.element_size() for _, t in self.run_sums.values())
        output = self.output[0] if isinstance(self.output, tuple) else getattr(self.output, "sample", None)
        output_bytes = output.numel() * output.element_size() if output is not None else 0
        return sum(m.nbytes() for m in self.memory) + self.stack.nbytes() + run_bytes + output_bytes


class StepHook(ModelHook):
    """On the transformer: fixes each step's plan before the blocks run, and decides the next after."""

    _is_stateful = True

    def __init__(self, engine: CacheEngine):
        super().__init__()
        self.engine = engine
        self.state_manager = engine.state_manager
        self.steps = StepCounter()

    def pre_forward(self, module, *args, **kwargs):
        context = self.state_manager.context
        state: BranchState = self.state_manager.get_state()
        step = self.steps.step_of(context)
        num_steps = int(context.num_inference_steps or 0)
        self.engine.decide_pending(step)
        state.begin_step(step, num_steps)
        state.decision.branch = context.name
        return args, kwargs

    def new_forward(self, module, *args, **kwargs):
        """Policies that reuse the output skip the whole call on a skipped step (every rank alike: the plan is
        the same everywhere, so no rank enters a collective the others skip)."""
        if not self.engine.policy.reuse_output:
            return self.fn_ref.original_forward(*args, **kwargs)
        state: BranchState = self.state_manager.get_state()
        if state.output is not None and not state.plan.any():
            return state.output
        state.output = self.fn_ref.original_forward(*args, **kwargs)
        return state.output

    def post_forward(self, module, output):
        self.engine.end_step(self.state_manager.context.name, self.state_manager.get_state())
        return output

    def reset_state(self, module):
        self.engine.finish_video()
        self.state_manager.reset()
        self.steps.reset()
        return module


class BlockHook(ModelHook):
    """On each transformer block: run it and remember its residual, or stand in for it from the cache."""

    _is_stateful = True

    def __init__(self, engine: CacheEngine, index: int):
        super().__init__()
        self.engine = engine
        self.state_manager = engine.state_manager
        self.index = index
        self.last = index == len(engine.block_modules) - 1

    def new_forward(self, module, *args, **kwargs):
        state: BranchState = self.state_manager.get_state()
        io, b = self.engine.block_io, self.index
        streams = io.inputs(args, kwargs)
        if state.plan[b]:
            output = self.fn_ref.original_forward(*args, **kwargs)
            outputs = io.outputs(output)
            if not self.engine.policy.whole_steps:
                self.engine.record(state, b, streams[0], outputs[0])
                state.memory[b].carried = residuals(streams[1:], outputs[1:])
                return output
            if b == 0:
                state.stack_input = streams
            if self.last:  # the stack's residual and indicator are filed under row 0
                self.engine.record(state, 0, state.stack_input[0], outputs[0], state.stack)
                state.stack.carried = residuals(state.stack_input[1:], outputs[1:])
                state.stack_input = None
            return output
        if b in state.run_end:
            video = streams[0] + state.predicted_run_residual(b).to(streams[0].dtype)
            return io.result((video, *state.carried_run(b, streams[1:])))
        return io.result(streams)

    def reset_state(self, module):
        return module


def residuals(inputs: tuple[torch.Tensor, ...], outputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """What a block added to each carried stream."""
    return tuple((o - i).detach() for i, o in zip(inputs, outputs))


class CacheEngine:
    """Owns the hooks, the per-branch states, the policy and the reduce function of one transformer."""

    def __init__(self, transformer: torch.nn.Module, policy: CachePolicy, reduce: Reduce = identity_reduce):
        self.transformer = transformer
        self.policy = policy
        self.reduce = reduce
        adapter = adapter_for(transformer)
        self.block_modules, self.block_io = adapter.blocks(), adapter.block_io()
        if policy.reuse_output and not policy.whole_steps:
            raise ValueError(f"{policy.name}: reusing the transformer's output needs whole-step decisions")
        self.state_manager = StateManager(BranchState, (len(self.block_modules), policy))
        self.stats = CacheStats()
        self.last_video = CacheStats()
        # (branch state, step, computed mask, local sums) of calls whose decision waits for the next step's reduce
        self.pending: list[tuple[BranchState, int, np.ndarray, torch.Tensor]] = []

    # -- installation -------------------------------------------------------------------------------------------
    def attach(self) -> None:
        HookRegistry.check_if_exists_or_initialize(self.transformer).register_hook(StepHook(self), STEP_HOOK)
        for i, block in enumerate(self.block_modules):
            HookRegistry.check_if_exists_or_initialize(block).register_hook(BlockHook(self, i), BLOCK_HOOK)
        HookRegistry.check_if_exists_or_initialize(self.transformer).invalidate_child_registries_cache()

    def detach(self) -> None:
        self.finish_video()
        HookRegistry.check_if_exists_or_initialize(self.transformer).remove_hook(STEP_HOOK, recurse=False)
        for block in self.block_modules:
            HookRegistry.check_if_exists_or_initialize(block).remove_hook(BLOCK_HOOK, recurse=False)
        self.state_manager.reset()

    # -- the per-block and per-step work ------------------------------------------------------------------------
    def record(
        self,
        state: BranchState,
        b: int,
        block_input: torch.Tensor,
        output: torch.Tensor,
        memory: BlockMemory | None = None,
    ) -> None:
        """Remember a computed block's residual (in ``memory``, by default block ``b``'s) and add its indicator
        sums to row ``b`` of this step's local vector.

        indicator "residual": ||r - r_prev||_1 / ||r_prev||_1 (change since the block last ran)
        indicator "output":   ||h - h_prev||_1 / ||h_prev||_1 (the same on the block output)
        indicator "forecast": ||r - r^||_1 / ||r||_1 (error of the forecast the cache would have used)
        """
        residual = output - block_input
        memory = state.memory[b] if memory is None else memory
        kind = self.policy.indicator if state.measure[b] else None
        delta = None
        if kind == "output":
            if memory.output is not None:
                state.sums[b] = (
                    (output - memory.output).abs().sum(dtype=torch.float32),
                    memory.output.abs().sum(dtype=torch.float32),
                )
            memory.output = output.detach()
        elif kind is not None and memory.terms:  # (order > 0 without a measurement: update() takes the difference)
            delta = residual - memory.terms[0]  # shared by the indicator and the derivative update
            if kind == "residual":
                state.sums[b] = (delta.abs().sum(dtype=torch.float32), memory.terms[0].abs().sum(dtype=torch.float32))
            else:  # forecast error: r - (d_0 + damping sum_i d_i g^i / i!) = delta - damping sum_i ...
                error, factor, gap = delta, self.policy.forecast_damping, float(state.step - memory.step)
                for i in range(1, len(memory.terms)):
                    factor *= gap / i
                    error = error - (memory.terms[i] * factor if factor != 1.0 else memory.terms[i])
                state.sums[b] = (error.abs().sum(dtype=torch.float32), residual.abs().sum(dtype=torch.float32))
        memory.update(residual.detach(), state.step, self.policy.forecast_order, delta)

    def end_step(self, branch: str, state: BranchState) -> None:
        computed = state.plan.copy()
        local = torch.zeros(state.num_blocks, 2, dtype=torch.float64)
        if state.sums:
            blocks = list(state.sums)
            local = local.to(next(iter(state.sums.values()))[0].device)
            local[blocks] = torch.stack([torch.stack(pair) for pair in state.sums.values()]).double()
        self.pending.append((state, state.step, computed, local.flatten()))
        n_run = int(computed.sum())
        self.stats.computed += n_run
        self.stats.skipped += state.num_blocks - n_run
        self.stats.masks.setdefault(branch, []).append(computed.astype(int).tolist())
        held = sum(s.nbytes() for s in self.state_manager._state_cache.values())
        self.stats.peak_bytes = max(self.stats.peak_bytes, held)

    def decide_pending(self, step: int) -> None:
        """When ``step`` is a new denoising step: one reduce for every branch call filed during the previous one,
        then each branch's next mask.  (Every rank sees the same calls, so every rank reduces at the same call.)"""
        if not self.pending or all(filed >= step for _, filed, _, _ in self.pending):
            return
        pending, self.pending = self.pending, []
        vector = torch.cat([local.to(pending[0][3].device) for *_, local in pending])
        reduced = self.reduce(vector).cpu().numpy()
        offset = 0
        for state, filed, computed, local in pending:
            sums = reduced[offset : offset + local.numel()].reshape(state.num_blocks, 2)
            offset += local.numel()
            self.policy.observe(state.decision, filed, computed, sums)
            state.next_plan = np.asarray(self.policy.decide(state.decision, filed, computed, sums), dtype=np.int8)

    def finish_video(self) -> None:
        """Keep the finished video's stats readable after its tensors are freed (the loop resets every transformer
        it may run before and after a video, so an expert that sat a video out reports nothing for it).  Sums
        filed by the last step are dropped: no step follows that could use them (and no rank reduces them, so all
        stay in step); a policy that records every step (the profiler's) gets them reduced here, at the same call
        on every rank."""
        if self.pending and getattr(self.policy, "observes_last_step", False):
            self.decide_pending(step=math.inf)
        self.pending = []
        self.last_video = self.stats
        self.stats = CacheStats()
