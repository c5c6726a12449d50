"""Regional compilation: the repeated transformer blocks through ``torch.compile``, the hooks around them not.

diffusers' ``compile_repeated_blocks`` compiles each block's ``_call_impl``, which would also trace the cache's
block hook (its per-step plan and Python state): every change of a skip mask would then be a new graph.  Here
each block's own ``forward`` is compiled *before* any hook wraps it, so the cache's decisions (run the block or
stand in for it) and sequence parallelism's sharding stay in eager Python around an unchanging compiled region.
With ``inline_inbuilt_nn_modules`` (torch's default) the parameters are graph inputs, so one graph serves all
blocks of a model: 40 blocks of Wan2.1-14B compile once, and a video's steps add none.
"""

from __future__ import annotations

import logging

import torch
from torch._dynamo.utils import counters

from .adapters import adapter_for

log = logging.getLogger(__name__)

COMPILED_ATTR = "_ditfarm_compiled"
CACHE_ENGINE_ATTR = "_ditfarm_cache_engine"  # set by ditfarm.cache while its hooks wrap the blocks


def compile_blocks(transformer: torch.nn.Module, backend: str = "inductor", mode: str | None = None) -> int:
    """Compile every block of ``transformer.blocks`` in place; returns how many.  Call after sequence
    parallelism (its attention processor is part of the block) and before a cache is enabled."""
    if getattr(transformer, CACHE_ENGINE_ATTR, None) is not None:
        raise RuntimeError("compile the blocks before enabling a cache: its hooks must stay outside the graph")
    if getattr(transformer, COMPILED_ATTR, None):
        return 0
    blocks = adapter_for(transformer).blocks()
    for block in blocks:
        block.forward = torch.compile(block.forward, backend=backend, mode=mode)
    setattr(transformer, COMPILED_ATTR, backend)
    log.info("compiled %d transformer blocks (backend %s)", len(blocks), backend)
    return len(blocks)


def compiled_graphs() -> int:
    """Graphs torch.compile has built in this process so far (recompilations included)."""
    return int(counters["stats"]["unique_graphs"])
