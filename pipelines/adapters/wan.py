"""diffusers' ``WanTransformer3DModel`` (Wan2.1, Wan2.2, and ditfarm's tiny, which is one): its blocks, their units,
its self-attention as ``WanAttnProcessor`` computes it, and its forward with the token sequence split.

The split is diffusers' own ``_cp_plan`` for Wan: after patch embedding the token sequence and its rotary
embedding are cut into contiguous shards; timestep and text embeddings are computed whole on every rank (they are
tiny); cross-attention needs no communication (the text is replicated); the shards are gathered after the output
projection.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers import WanTransformer3DModel
from diffusers.models.modeling_outputs import Transformer2DModelOutput

from .base import Attend, Gather, TransformerAdapter, register_adapter


def apply_wan_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Wan's rotary embedding on (B, S, heads, D) queries or keys, exactly as ``WanAttnProcessor`` applies it."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[..., 0::2], sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)


def wan_queries_keys_values(attn, hidden_states: torch.Tensor, rotary_emb) -> tuple[torch.Tensor, ...]:
    """(query, key, value) of a Wan self-attention, (B, S, heads, D) each, rotary embedding applied."""
    query = attn.norm_q(attn.to_q(hidden_states)).unflatten(2, (attn.heads, -1))
    key = attn.norm_k(attn.to_k(hidden_states)).unflatten(2, (attn.heads, -1))
    value = attn.to_v(hidden_states).unflatten(2, (attn.heads, -1))
    if rotary_emb is not None:
        query, key = apply_wan_rotary(query, *rotary_emb), apply_wan_rotary(key, *rotary_emb)
    return query, key, value


class WanSelfAttnProcessor:
    """``WanAttnProcessor`` for self-attention with the attention call given: ``attend(q, k, v)``."""

    def __init__(self, attend: Attend):
        self.attention = attend

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError("this processor computes self-attention without a mask only")
        query, key, value = wan_queries_keys_values(attn, hidden_states, rotary_emb)
        out = self.attention(query, key, value).flatten(2, 3).type_as(query)  # (B, S, H, D) in and out
        return attn.to_out[1](attn.to_out[0](out))


class WanRecordingProcessor:
    """Runs ``original`` unchanged; on self-attention calls while ``active()`` it first hands (query, key) to
    ``record``."""

    def __init__(self, original, record: Callable[[torch.Tensor, torch.Tensor], None], active: Callable[[], bool]):
        self.original = original
        self.record = record
        self.active = active

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        if encoder_hidden_states is None and self.active():
            with torch.no_grad():
                query, key, _ = wan_queries_keys_values(attn, hidden_states, rotary_emb)
                self.record(query, key)
        return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)


@register_adapter(WanTransformer3DModel)
class WanAdapter(TransformerAdapter):
    family = "wan"

    def blocks(self) -> list[torch.nn.Module]:
        return list(self.transformer.blocks)

    def units(self, block: torch.nn.Module) -> dict[str, torch.nn.Module]:
        return {
            "self_attention": getattr(block, "attn1", None),
            "cross_attention": getattr(block, "attn2", None),
            "feed_forward": getattr(block, "ffn", None),
        }

    def self_attentions(self) -> list[torch.nn.Module]:
        return [block.attn1 for block in self.transformer.blocks]

    def attention_processor(self, attend: Attend) -> WanSelfAttnProcessor:
        return WanSelfAttnProcessor(attend)

    def token_count(self, latent_shape: tuple[int, ...]) -> int:
        p_t, p_h, p_w = self.transformer.config.patch_size
        frames, height, width = latent_shape[-3:]
        return (frames // p_t) * (height // p_h) * (width // p_w)

    def heads(self) -> int:
        return int(self.transformer.config.num_attention_heads)

    def patch_size(self) -> tuple[int, int, int]:
        return tuple(self.transformer.config.patch_size)

    def recording_processor(self, original, record, active) -> WanRecordingProcessor:
        return WanRecordingProcessor(original, record, active)

    def sharded_forward(self, rank: int, world: int, gather: Gather) -> Callable:
        """``WanTransformer3DModel.forward`` on this rank's shard of the tokens: the same submodules, the same
        maths, the output gathered whole on every rank."""

        def forward(
            model,
            hidden_states,
            timestep,
            encoder_hidden_states,
            encoder_hidden_states_image=None,
            return_dict=True,
            attention_kwargs=None,
        ):
            batch, _, frames, height, width = hidden_states.shape
            p_t, p_h, p_w = model.config.patch_size
            post_f, post_h, post_w = frames // p_t, height // p_h, width // p_w
            seq = post_f * post_h * post_w
            if seq % world:
                raise ValueError(
                    f"{seq} tokens do not split evenly over {world} ranks; choose sizes or a degree that divide"
                )
            shard = slice(rank * seq // world, (rank + 1) * seq // world)

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
            x = gather(model.proj_out(x))
            x = x.reshape(batch, post_f, post_h, post_w, p_t, p_h, p_w, -1).permute(0, 7, 1, 4, 2, 5, 3, 6)
            output = x.flatten(6, 7).flatten(4, 5).flatten(2, 3)
            return Transformer2DModelOutput(sample=output) if return_dict else (output,)

        return forward
