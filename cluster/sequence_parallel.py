"""Sequence parallelism: each rank holds the full weights and 1/N of the tokens.

How a model's sequence is split, how its self-attention computes queries, keys and values, and its forward on a
shard are the model adapter's (``pipelines.adapters``: for Wan, diffusers' own ``_cp_plan``).  This module
carries the plan out with yunchang on any backend (diffusers' context parallelism refuses the CPU): the sharded
self-attention runs through yunchang's ``LongContextAttention`` (Ulysses: an all-to-all turns sequence shards
into head shards and back), and the shards are gathered with a timed collective after the output projection.

The sequence length must divide by N: zero-padding (what xDiT does) lets padded keys take softmax weight, so the
result would differ from one GPU.  Ring attention with TORCH_MATH is wrong on CPU (yunchang returns no
log-sum-exp), so on CPU only Ulysses degrees are accepted.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from diffusers.hooks import HookRegistry, ModelHook

from ..cache import engine_of
from ..pipelines.adapters import adapter_for
from .collectives import all_gather_sequence, backend_device

log = logging.getLogger(__name__)

SP_HOOK = "ditfarm_sequence_parallel"


@dataclass(frozen=True)
class SequenceParallelConfig:
    ulysses_degree: int
    ring_degree: int = 1
    attn_type: str = "torch_math"  # yunchang AttnType name; "fa" (flash attention) on GPU
    long_context: str = "yunchang"  # or "xfuser": xFuserLongContextAttention, where it passes its self-check


class SequenceParallelHook(ModelHook):
    """Replaces the transformer's forward with its adapter's sharded one (same submodules, same maths)."""

    def __init__(self, sharded_forward):
        super().__init__()
        self.sharded_forward = sharded_forward

    def new_forward(self, model, *args, **kwargs):
        return self.sharded_forward(model, *args, **kwargs)


def enable_sequence_parallel(
    transformer, config: SequenceParallelConfig, group=None, timeout: timedelta = timedelta(seconds=60)
) -> None:
    """Shard ``transformer`` over ``group`` (every rank calls this with the same config).  Must come before a
    cache is enabled, because the cache's step hook has to wrap the sharded forward."""
    from yunchang import LongContextAttention  # deferred: yunchang
    from yunchang.globals import PROCESS_GROUP  # deferred: yunchang
    from yunchang.kernels import AttnType  # deferred: yunchang

    if engine_of(transformer) is not None:
        raise RuntimeError("enable sequence parallelism before enabling a cache")
    world = dist.get_world_size(group)
    if config.ulysses_degree * config.ring_degree != world:
        raise ValueError(f"ulysses {config.ulysses_degree} x ring {config.ring_degree} != {world} ranks")
    if config.ring_degree > 1 and config.attn_type.startswith("torch"):
        raise ValueError(
            f"ring attention with {config.attn_type.upper()} is wrong (yunchang's torch kernels return "
            "no log-sum-exp); use a Ulysses degree, ring only with flash-attn kernels on GPU"
        )
    adapter = adapter_for(transformer)
    heads = adapter.heads()
    if heads % config.ulysses_degree:
        raise ValueError(f"{heads} attention heads do not split over a Ulysses degree of {config.ulysses_degree}")
    if config.ring_degree == 1:
        # Our own groups (with the world's timeout), not yunchang's set_seq_parallel_pg (30 min default timeout).
        PROCESS_GROUP.ULYSSES_PG = group or dist.group.WORLD
        for r in range(dist.get_world_size()):  # every rank creates every group, in the same order
            single = dist.new_group([r], timeout=timeout)
            if r == dist.get_rank():
                PROCESS_GROUP.RING_PG = single
    else:
        from yunchang import set_seq_parallel_pg  # deferred: yunchang

        set_seq_parallel_pg(config.ulysses_degree, config.ring_degree, dist.get_rank(), world)
    attention = ShardedAttention(
        long_context_attention(
            config, group, lambda: LongContextAttention(attn_type=AttnType.from_string(config.attn_type))
        ),
        group or dist.group.WORLD,
    )
    for self_attention in adapter.self_attentions():
        self_attention.set_processor(adapter.attention_processor(attention))
    sharded = adapter.sharded_forward(dist.get_rank(group), world, lambda x: all_gather_sequence(x, group, dim=1))
    HookRegistry.check_if_exists_or_initialize(transformer).register_hook(SequenceParallelHook(sharded), SP_HOOK)


class ShardedAttention:
    """The attention a sharded model's processors call (``TransformerAdapter.attention_processor``).

    Called as ``attend(q, k, v)`` on this rank's shard of the tokens, it is the long-context attention (Ulysses: an
    all-to-all turns sequence shards into head shards and back).  ``joint(q, k, v, text_q, text_k, text_v)`` is
    the same for a joint attention whose text tokens every rank holds whole (CogVideoX, HunyuanVideo): after the
    video's all-to-all each rank attends over [its heads of the text; the whole video in its heads], returns the
    video to sequence shards, and gathers the text's heads, so every rank holds the whole text output.  Every
    tensor is (batch, tokens, heads, head_dim)."""

    def __init__(self, attention, group):
        self.attention, self.group = attention, group

    def __call__(self, query, key, value):
        return self.attention(query, key, value)

    def joint(self, query, key, value, text_query, text_key, text_value):
        from yunchang.comm.all_to_all import SeqAllToAll4D  # deferred: yunchang

        world, rank = dist.get_world_size(self.group), dist.get_rank(self.group)
        heads = query.shape[2] // world
        mine = slice(rank * heads, (rank + 1) * heads)

        def whole_video(x):  # (B, S/N, H, D) -> (B, S, H/N, D)
            return SeqAllToAll4D.apply(self.group, x.contiguous(), 2, 1, False)

        q, k, v = (
            torch.cat([text[:, :, mine], whole_video(video)], dim=1).transpose(1, 2)
            for text, video in ((text_query, query), (text_key, key), (text_value, value))
        )
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2)  # (B, T + S, H/N, D)
        text_len = text_query.shape[1]
        video = SeqAllToAll4D.apply(self.group, out[:, text_len:].contiguous(), 1, 2, False)
        text = all_gather_heads(out[:, :text_len].contiguous(), self.group)
        return video, text


def all_gather_heads(x: torch.Tensor, group) -> torch.Tensor:
    """Every rank's heads of ``x`` (batch, tokens, heads/N, head_dim), concatenated in rank order."""
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, x, group=group)
    return torch.cat(parts, dim=2)


def long_context_attention(config: SequenceParallelConfig, group, yunchang_attention):
    """The sharded self-attention: xfuser's where asked for and working on every rank, else yunchang's.

    xfuser's class has changed its call signature and its dependence on xfuser's own runtime between releases,
    so it is built and checked against yunchang's on a small random problem first; the ranks then vote (one
    all-reduce of an integer), so either every rank uses it or none does."""
    fallback = yunchang_attention()
    if config.long_context != "xfuser":
        return fallback
    candidate, problem = _xfuser_attention(config, fallback)
    vote = torch.tensor([0 if candidate is not None else 1], dtype=torch.int64)
    device = backend_device(group)
    vote = vote.to(device) if device is not None else vote
    dist.all_reduce(vote, op=dist.ReduceOp.MAX, group=group)
    if int(vote.item()) == 0:
        log.info("sharded self-attention: xfuser's xFuserLongContextAttention (%s)", config.attn_type)
        return candidate
    log.warning(
        "sharded self-attention: yunchang's LongContextAttention (xfuser's was not usable on every rank%s)",
        f": {problem}" if problem else "",
    )
    return fallback


def _xfuser_attention(config: SequenceParallelConfig, reference):
    """(callable(q, k, v), None) if xFuserLongContextAttention builds and agrees with ``reference``, else
    (None, why)."""
    try:
        from xfuser.core.long_ctx_attention import xFuserLongContextAttention  # deferred: xfuser
        from yunchang.kernels import AttnType  # deferred: yunchang

        impl = xFuserLongContextAttention(attn_type=AttnType.from_string(config.attn_type))
        takes_attn = next(iter(inspect.signature(impl.forward).parameters)) == "attn"

        def attention(query, key, value):
            return impl(None, query, key, value) if takes_attn else impl(query, key, value)

        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else None
        gen = torch.Generator(device="cpu").manual_seed(1234 + dist.get_rank())
        heads = 8 * config.ulysses_degree
        q, k, v = (torch.randn(1, 256, heads, 64, generator=gen).to(device or "cpu", torch.bfloat16) for _ in range(3))
        got, want = attention(q, k, v), reference(q, k, v)
        if not torch.allclose(got.float(), want.float(), atol=3e-2, rtol=3e-2):
            return None, f"its output differs from yunchang's by up to {(got - want).abs().max().item():.3g}"
        return attention, None
    except Exception as err:  # noqa: BLE001 - any failure means: use yunchang's
        return None, f"{type(err).__name__}: {err}"
