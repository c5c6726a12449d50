"""Render one video on a sequence-parallel gang rank (the function each rank of a gang runs)."""

from __future__ import annotations

from datetime import timedelta


def render_on_rank(rank: int, world: int, model: str, prompt: str, seed: int, sampler: dict, cache_policy: str = "none",
                   cache_knob=None, timeout_s: float = 60.0, perturb=None):
    """Every rank loads the model, shards it, enables the cache with the all-reduce, and renders.  Returns the
    frames (rank 0 only), this rank's per-step compute masks and its cache's peak bytes.  ``perturb`` (tests)
    maps the local indicator vector before the all-reduce, to show the ranks still agree."""
    import torch.distributed as dist

    from ..cache import enable, last_video_stats
    from ..cache.presets import build_config
    from ..pipelines.loading import load_pipeline
    from .collectives import make_cache_reduce
    from .sequence_parallel import SequenceParallelConfig, enable_sequence_parallel

    pipe = load_pipeline(model)
    if world > 1:
        enable_sequence_parallel(pipe.transformer, SequenceParallelConfig(ulysses_degree=world),
                                 timeout=timedelta(seconds=timeout_s))
    reduce = make_cache_reduce() if world > 1 else (lambda v: v)
    if perturb is not None:
        inner = reduce
        reduce = lambda v: inner(perturb(rank, v))  # noqa: E731
    config = build_config(cache_policy, cache_knob, pipe.default_cache_profile())
    enable(pipe, config, reduce=reduce)
    frames = pipe.generate(prompt, seed=seed, **sampler)
    stats = last_video_stats(pipe)
    if world > 1:
        dist.barrier()
    return {
        "frames": frames if rank == 0 else None,
        "masks": stats.masks if stats else {},
        "peak_bytes": stats.peak_bytes if stats else 0,
    }
