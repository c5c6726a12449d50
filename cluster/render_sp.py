"""Render one video on a local sequence-parallel gang rank (tests and CPU measurements without Ray)."""

from __future__ import annotations

from ..types import RenderSettings, RowInputs
from .gang_rank import RankRenderer


def render_on_rank(
    rank: int,
    world: int,
    model: str,
    prompt: str,
    seed: int,
    sampler: dict,
    cache_policy: str = "none",
    cache_knob=None,
    timeout_s: float = 60.0,
):
    """Every rank loads the model, shards it, enables the cache with the all-reduce, and renders.  Returns the
    frames (rank 0 only), this rank's per-step compute masks and its cache's peak bytes."""
    config = RenderSettings(model=model, cache=cache_policy, cache_knob=cache_knob, collective_timeout_s=timeout_s)
    return RankRenderer(rank, world, config).render(RowInputs(prompt, seed, sampler=sampler))
