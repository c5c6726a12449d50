"""Sequence parallelism for WanTransformer3DModel: each rank holds the full weights and 1/N of the tokens.

The plan is diffusers' own ``_cp_plan`` for Wan, carried out with yunchang on any backend (diffusers' context
parallelism refuses the CPU): after patch embedding, the token sequence and its rotary embeddings are split into
N contiguous shards; self-attention runs through yunchang's ``LongContextAttention`` (Ulysses: an all-to-all
turns sequence shards into head shards and back); cross-attention needs no communication, since the text is
replicated and each query attends to it independently; the shards are gathered after the output projection.
Timestep and text embeddings are computed on every rank (they are tiny), so no rank waits for another there.

The sequence length must divide by N: zero-padding (what xDiT does) lets padded keys take softmax weight, so the
result would differ from one GPU.  Ring attention with TORCH_MATH is wrong on CPU (yunchang returns no
log-sum-exp), so on CPU only Ulysses degrees are accepted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.models.modeling_outputs import Transformer2DModelOutput

from ..pipelines.rotary import apply_wan_rotary
from .collectives import all_gather_sequence, backend_device

log = logging.getLogger(__name__)

SP_HOOK = "ditfarm_sequence_parallel"


@dataclass(frozen=True)
class SequenceParallelConfig:
    ulysses_degree: int
    ring_degree: int = 1
    attn_type: str = "torch_math"  # yunchang AttnType name; "fa" (flash attention) on GPU
    long_context: str = "yunchang"  # or "xfuser": xFuserLongContextAttention, where it passes its self-check


class UlyssesSelfAttnProcessor:
    """diffusers' WanAttnProcessor for self-attention, with the attention call replaced by yunchang's."""

    def __init__(self, long_context_attention):
        self.attention = long_context_attention

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError("the sequence-parallel processor handles self-attention without a mask only")
        query = attn.norm_q(attn.to_q(hidden_states)).unflatten(2, (attn.heads, -1))
        key = attn.norm_k(attn.to_k(hidden_states)).unflatten(2, (attn.heads, -1))
        value = attn.to_v(hidden_states).unflatten(2, (attn.heads, -1))
        if rotary_emb is not None:
            query, key = apply_wan_rotary(query, *rotary_emb), apply_wan_rotary(key, *rotary_emb)
        out = self.attention(query, key, value).flatten(2, 3).type_as(query)  # (B, S_local, H, D) in and out
        return attn.to_out[1](attn.to_out[0](out))


class SequenceParallelHook(ModelHook):
    """Replaces WanTransformer3DModel.forward with the sharded one (same submodules, same maths)."""

    def __init__(self, group):
        super().__init__()
        self.group = group

    def new_forward(
        self,
        model,
        hidden_states,
        timestep,
        encoder_hidden_states,
        encoder_hidden_states_image=None,
        return_dict=True,
        attention_kwargs=None,
    ):
        n, rank = dist.get_world_size(self.group), dist.get_rank(self.group)
        batch, _, frames, height, width = hidden_states.shape
        p_t, p_h, p_w = model.config.patch_size
        post_f, post_h, post_w = frames // p_t, height // p_h, width // p_w
        seq = post_f * post_h * post_w
        if seq % n:
            raise ValueError(f"{seq} tokens do not split evenly over {n} ranks; choose sizes or a degree that divide")
        shard = slice(rank * seq // n, (rank + 1) * seq // n)

        cos, sin = model.rope(hidden_states)
        rotary_emb = (cos[:, shard], sin[:, shard])
        x = model.patch_embedding(hidden_states).flatten(2).transpose(1, 2)[:, shard].contiguous()
        if timestep.ndim == 2:  # Wan2.2 ti2v: per-token timesteps, sharded like the tokens
            timestep = timestep[:, shard]
            ts_seq_len = timestep.shape[1]
            timestep = timestep.flatten()
        else:
            ts_seq_len = None
        temb, timestep_proj, encoder_hidden_states, encoder_hidden_states_image = model.condition_embedder(
            timestep, encoder_hidden_states, encoder_hidden_states_image, timestep_seq_len=ts_seq_len
        )
        timestep_proj = timestep_proj.unflatten(2 if ts_seq_len is not None else 1, (6, -1))
        if encoder_hidden_states_image is not None:
            encoder_hidden_states = torch.concat([encoder_hidden_states_image, encoder_hidden_states], dim=1)
        for block in model.blocks:
            x = block(x, encoder_hidden_states, timestep_proj, rotary_emb)
        if temb.ndim == 3:
            shift, scale = (model.scale_shift_table.unsqueeze(0) + temb.unsqueeze(2)).chunk(2, dim=2)
            shift, scale = shift.squeeze(2), scale.squeeze(2)
        else:
            shift, scale = (model.scale_shift_table + temb.unsqueeze(1)).chunk(2, dim=1)
        x = (model.norm_out(x.float()) * (1 + scale) + shift).type_as(x)
        x = all_gather_sequence(model.proj_out(x), self.group, dim=1)
        x = x.reshape(batch, post_f, post_h, post_w, p_t, p_h, p_w, -1).permute(0, 7, 1, 4, 2, 5, 3, 6)
        output = x.flatten(6, 7).flatten(4, 5).flatten(2, 3)
        return Transformer2DModelOutput(sample=output) if return_dict else (output,)


def enable_sequence_parallel(
    transformer, config: SequenceParallelConfig, group=None, timeout: timedelta = timedelta(seconds=60)
) -> None:
    """Shard ``transformer`` over ``group`` (every rank calls this with the same config).  Must come before a
    cache is enabled, because the cache's step hook has to wrap the sharded forward."""
    from yunchang import LongContextAttention
    from yunchang.globals import PROCESS_GROUP
    from yunchang.kernels import AttnType

    from ..cache import engine_of

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
    heads = transformer.config.num_attention_heads
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
        from yunchang import set_seq_parallel_pg

        set_seq_parallel_pg(config.ulysses_degree, config.ring_degree, dist.get_rank(), world)
    attention = long_context_attention(
        config, group, lambda: LongContextAttention(attn_type=AttnType.from_string(config.attn_type))
    )
    for block in transformer.blocks:
        block.attn1.set_processor(UlyssesSelfAttnProcessor(attention))
    HookRegistry.check_if_exists_or_initialize(transformer).register_hook(SequenceParallelHook(group), SP_HOOK)


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
    import inspect

    try:
        from xfuser.core.long_ctx_attention import xFuserLongContextAttention
        from yunchang.kernels import AttnType

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
