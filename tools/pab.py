"""diffusers' Pyramid Attention Broadcast on a Wan transformer, with one state per CFG branch.

diffusers' ``PyramidAttentionBroadcastHook`` matches Wan's attention (``WanAttention`` is an
``AttentionModuleMixin``): ``blocks.N.attn1`` as spatial attention, ``blocks.N.attn2`` as cross attention (its
``is_cross_attention`` flag); Wan has no temporal attention and the hook leaves FFNs alone.  But the hook keeps one
state per module and counts every call, and ditfarm's loop, like diffusers' own WanPipeline, calls the transformer
twice per step under CFG: a skipped uncond call would return the cond call's attention.  So this module keeps
diffusers' hook and its decision rule and gives it a ``StateManager`` (as diffusers' FirstBlockCache hook has), which
the transformer's ``cache_context("cond" | "uncond")`` then switches: each branch counts its own calls and reuses its
own attention.  The rule is diffusers': compute when nothing is cached, on a branch's first call, outside the
timestep range, or every ``N``-th call; else reuse.  It reads only call counts and the schedule, so every rank of a
gang skips the same attention calls (and the all-to-alls in them).
"""

from __future__ import annotations

from diffusers import PyramidAttentionBroadcastConfig
from diffusers.hooks import HookRegistry
from diffusers.hooks.hooks import StateManager
from diffusers.hooks.pyramid_attention_broadcast import (
    _PYRAMID_ATTENTION_BROADCAST_HOOK,
    PyramidAttentionBroadcastHook,
    PyramidAttentionBroadcastState,
)

#: diffusers' default, and its CogVideoX benchmark setting
TIMESTEP_RANGE = (100, 800)
#: VideoSys' presets grow cross attention's range with spatial's: (2, 6), (3, 7), (5, 9)
CROSS_OVER_SPATIAL = 4


class PerBranchPyramidAttentionBroadcastHook(PyramidAttentionBroadcastHook):
    """diffusers' hook, its state looked up per cache context instead of one per module."""

    def initialize_hook(self, module):
        self.state_manager = StateManager(PyramidAttentionBroadcastState)
        return module

    @property
    def state(self) -> PyramidAttentionBroadcastState:
        return self.state_manager.get_state()

    def reset_state(self, module):
        self.state_manager.reset()
        return module


def pab_config(
    pipe, spatial: int, cross: int | None = None, timestep_range: tuple[int, int] = TIMESTEP_RANGE
) -> PyramidAttentionBroadcastConfig:
    """PAB over every block's attn1 (range ``spatial``) and attn2 (``cross``, default spatial + 4); the current
    timestep is read from the scheduler (ditfarm's loop keeps none on the pipe)."""
    scheduler = pipe.scheduler

    def current_timestep() -> float:
        index = scheduler.step_index if scheduler.step_index is not None else (scheduler.begin_index or 0)
        return float(scheduler.timesteps[index])

    return PyramidAttentionBroadcastConfig(
        spatial_attention_block_skip_range=int(spatial),
        cross_attention_block_skip_range=int(cross if cross is not None else spatial + CROSS_OVER_SPATIAL),
        spatial_attention_timestep_skip_range=timestep_range,
        cross_attention_timestep_skip_range=timestep_range,
        spatial_attention_block_identifiers=(r"^blocks\.\d+\.attn1$",),
        cross_attention_block_identifiers=(r"^blocks\.\d+\.attn2$",),
        current_timestep_callback=current_timestep,
    )


def enable_pab(pipe, spatial: int, cross: int | None = None) -> int:
    """Enable diffusers' PAB on ``pipe.transformer`` (``enable_cache``; ``disable_cache`` removes it) with per-branch
    states; returns how many attention modules it covers."""
    transformer = pipe.transformer
    transformer.enable_cache(pab_config(pipe, spatial, cross))
    swapped = 0
    for _, module in transformer.named_modules():
        registry = getattr(module, "_diffusers_hook", None)
        hook = registry.get_hook(_PYRAMID_ATTENTION_BROADCAST_HOOK) if registry is not None else None
        if hook is None:
            continue
        registry.remove_hook(_PYRAMID_ATTENTION_BROADCAST_HOOK, recurse=False)
        per_branch = PerBranchPyramidAttentionBroadcastHook(
            hook.timestep_skip_range, hook.block_skip_range, hook.current_timestep_callback
        )
        HookRegistry.check_if_exists_or_initialize(module).register_hook(per_branch, _PYRAMID_ATTENTION_BROADCAST_HOOK)
        swapped += 1
    if not swapped:
        raise RuntimeError(f"diffusers' PAB matched no attention module of {type(transformer).__name__}")
    return swapped
