"""diffusers' ``HunyuanVideoTransformer3DModel`` (HunyuanVideo 1.0 text-to-video): its dual-stream blocks, then its
single-stream blocks, both taking and returning the (video, text) token pair; their joint attentions; and the
video tokens' queries and keys for the profiler's attention probe.  Its blocks have no cross-attention (the text
joins the video in one attention), so unit caches, which need all three units, refuse it by name.

The joint sequence is [video; text], the rotary embedding applies to the video tokens only, and a dual-stream
block projects the text with its own (``add_*``) projections where a single-stream block uses the video's.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers import HunyuanVideoTransformer3DModel
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.modeling_outputs import Transformer2DModelOutput

from .base import BlockIO, Gather, JointBlockIO, TransformerAdapter, register_adapter


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    return x.unflatten(2, (heads, -1))  # (B, S, heads * D) -> (B, S, heads, D)


def video_queries_keys(attn, hidden_states, image_rotary_emb):
    """(query, key) of the video tokens, (B, S, heads, D) each, as ``HunyuanVideoAttnProcessor2_0`` computes them
    (projection, norm, rotary): the text tokens are not the profiler's measure."""
    query, key = _heads(attn.to_q(hidden_states), attn.heads), _heads(attn.to_k(hidden_states), attn.heads)
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    if image_rotary_emb is not None:
        query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
        key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
    return query, key


def text_queries_keys_values(attn, encoder_hidden_states):
    """The text tokens' (query, key, value): the ``add_*`` projections and norms of a dual-stream block, the
    shared ones of a single-stream block (which projects [video; text] together)."""
    dual = attn.add_q_proj is not None
    projections = (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj) if dual else (attn.to_q, attn.to_k, attn.to_v)
    query, key, value = (_heads(proj(encoder_hidden_states), attn.heads) for proj in projections)
    norm_q, norm_k = (attn.norm_added_q, attn.norm_added_k) if dual else (attn.norm_q, attn.norm_k)
    if norm_q is not None:
        query = norm_q(query)
    if norm_k is not None:
        key = norm_k(key)
    return query, key, value


class HunyuanVideoShardedProcessor:
    """``HunyuanVideoAttnProcessor2_0`` on this rank's shard of the video tokens and the whole text, its attention
    computed by ``attend.joint`` (every rank gets its video shard's output and the whole text's).  The text
    arrives at its valid tokens (the pipeline drops the padding), so no mask is needed."""

    def __init__(self, attend):
        self.attention = attend

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        if attention_mask is not None and not bool(attention_mask.all()):
            raise ValueError("the sharded HunyuanVideo attention takes text without padding (no masked token)")
        query, key = video_queries_keys(attn, hidden_states, image_rotary_emb)
        value = _heads(attn.to_v(hidden_states), attn.heads)
        text_q, text_k, text_v = text_queries_keys_values(attn, encoder_hidden_states)
        video, text = self.attention.joint(query, key, value, text_q, text_k, text_v)
        video, text = video.flatten(2, 3).to(query.dtype), text.flatten(2, 3).to(query.dtype)
        if getattr(attn, "to_out", None) is not None:
            video = attn.to_out[1](attn.to_out[0](video))
        if getattr(attn, "to_add_out", None) is not None:
            text = attn.to_add_out(text)
        return video, text


class HunyuanVideoRecordingProcessor:
    """Runs ``original`` unchanged; while ``active()`` it first hands the video tokens' (query, key) to
    ``record``."""

    def __init__(self, original, record, active):
        self.original, self.record, self.active = original, record, active

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        if self.active():
            with torch.no_grad():
                self.record(*video_queries_keys(attn, hidden_states, image_rotary_emb))
        return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)


@register_adapter(HunyuanVideoTransformer3DModel)
class HunyuanVideoAdapter(TransformerAdapter):
    family = "hunyuan_video"

    def blocks(self) -> list[torch.nn.Module]:
        return list(self.transformer.transformer_blocks) + list(self.transformer.single_transformer_blocks)

    def block_io(self) -> BlockIO:
        return JointBlockIO()

    def units(self, block: torch.nn.Module) -> dict[str, torch.nn.Module]:
        return {"self_attention": getattr(block, "attn", None), "feed_forward": getattr(block, "ff", None)}

    def self_attentions(self) -> list[torch.nn.Module]:
        return [block.attn for block in self.blocks()]

    def recording_processor(self, original, record, active) -> HunyuanVideoRecordingProcessor:
        return HunyuanVideoRecordingProcessor(original, record, active)

    def attention_processor(self, attend) -> HunyuanVideoShardedProcessor:
        return HunyuanVideoShardedProcessor(attend)

    def sharded_forward(self, rank: int, world: int, gather: Gather) -> Callable:
        """``HunyuanVideoTransformer3DModel.forward`` with the video tokens (and their rotary embedding) split into
        contiguous shards after the patch embedding; the refined text stays whole on every rank; the video is
        gathered after the output projection."""

        def forward(
            model,
            hidden_states,
            timestep,
            encoder_hidden_states,
            encoder_attention_mask,
            pooled_projections,
            guidance=None,
            attention_kwargs=None,
            return_dict=True,
        ):
            if model.config.image_condition_type is not None:
                raise ValueError("HunyuanVideo's image-conditioned transformers are not sharded")
            batch, _, frames, height, width = hidden_states.shape
            p, p_t = model.config.patch_size, model.config.patch_size_t
            rotary = model.rope(hidden_states)
            temb, _ = model.time_text_embed(timestep, pooled_projections, guidance)
            video = model.x_embedder(hidden_states)
            text = model.context_embedder(encoder_hidden_states, timestep, encoder_attention_mask)
            if not bool(encoder_attention_mask.bool().all()):
                raise ValueError("the sharded HunyuanVideo forward takes text without padding (no masked token)")
            seq = video.shape[1]
            if seq % world:
                raise ValueError(
                    f"{seq} tokens do not split evenly over {world} ranks; choose sizes or a degree that divide"
                )
            shard = slice(rank * seq // world, (rank + 1) * seq // world)
            video = video[:, shard].contiguous()
            rotary = tuple(r[shard] for r in rotary)
            for block in self.blocks():
                video, text = block(video, text, temb, None, rotary)
            video = model.proj_out(model.norm_out(video, temb))
            video = gather(video)
            output = video.reshape(batch, frames // p_t, height // p, width // p, -1, p_t, p, p)
            output = output.permute(0, 4, 1, 5, 2, 6, 3, 7).flatten(6, 7).flatten(4, 5).flatten(2, 3)
            return Transformer2DModelOutput(sample=output) if return_dict else (output,)

        return forward

    def heads(self) -> int:
        return int(self.transformer.config.num_attention_heads)

    def patch_size(self) -> tuple[int, int, int]:
        config = self.transformer.config
        return (config.patch_size_t, config.patch_size, config.patch_size)

    def token_count(self, latent_shape: tuple[int, ...]) -> int:
        """Latents are (batch, channels, frames, height, width)."""
        p_t, p_h, p_w = self.patch_size()
        return (latent_shape[2] // p_t) * (latent_shape[3] // p_h) * (latent_shape[4] // p_w)
