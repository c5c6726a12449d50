"""diffusers' ``CogVideoXTransformer3DModel`` (CogVideoX 2B and 5B): its blocks, which take and return the (video,
text) token pair of their joint attention, their units, and the video tokens' queries and keys for the
profiler's attention probe.  A CogVideoX block has no cross-attention (the text
joins the video in one self-attention), so unit caches, which need all three units, refuse it by name."""

from __future__ import annotations

import torch
from diffusers import CogVideoXTransformer3DModel
from diffusers.models.embeddings import apply_rotary_emb

from .base import BlockIO, JointBlockIO, TransformerAdapter, register_adapter


def video_queries_keys(attn, hidden_states, encoder_hidden_states, image_rotary_emb):
    """(query, key) of the video tokens of a CogVideoX joint attention, (B, S, heads, D) each, computed as
    ``CogVideoXAttnProcessor2_0`` computes them (projections of [text; video], norms, rotary on the video part)."""
    text = encoder_hidden_states.size(1)
    joint = torch.cat([encoder_hidden_states, hidden_states], dim=1)
    query = attn.to_q(joint).unflatten(2, (attn.heads, -1)).transpose(1, 2)
    key = attn.to_k(joint).unflatten(2, (attn.heads, -1)).transpose(1, 2)
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    query, key = query[:, :, text:], key[:, :, text:]
    if image_rotary_emb is not None:
        query, key = apply_rotary_emb(query, image_rotary_emb), apply_rotary_emb(key, image_rotary_emb)
    return query.transpose(1, 2), key.transpose(1, 2)


class CogVideoXRecordingProcessor:
    """Runs ``original`` unchanged; while ``active()`` it first hands the video tokens' (query, key) to
    ``record`` (the text tokens' attention is not the profiler's measure)."""

    def __init__(self, original, record, active):
        self.original, self.record, self.active = original, record, active

    def __call__(self, attn, hidden_states, encoder_hidden_states, attention_mask=None, image_rotary_emb=None):
        if self.active():
            with torch.no_grad():
                self.record(*video_queries_keys(attn, hidden_states, encoder_hidden_states, image_rotary_emb))
        return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)


@register_adapter(CogVideoXTransformer3DModel)
class CogVideoXAdapter(TransformerAdapter):
    family = "cogvideox"

    def blocks(self) -> list[torch.nn.Module]:
        return list(self.transformer.transformer_blocks)

    def block_io(self) -> BlockIO:
        return JointBlockIO()

    def units(self, block: torch.nn.Module) -> dict[str, torch.nn.Module]:
        return {"self_attention": getattr(block, "attn1", None), "feed_forward": getattr(block, "ff", None)}

    def self_attentions(self) -> list[torch.nn.Module]:
        return [block.attn1 for block in self.transformer.transformer_blocks]

    def recording_processor(self, original, record, active) -> CogVideoXRecordingProcessor:
        return CogVideoXRecordingProcessor(original, record, active)

    def heads(self) -> int:
        return int(self.transformer.config.num_attention_heads)

    def patch_size(self) -> tuple[int, int, int]:
        config = self.transformer.config
        return (config.patch_size_t or 1, config.patch_size, config.patch_size)

    def token_count(self, latent_shape: tuple[int, ...]) -> int:
        """Latents are (batch, frames, channels, height, width)."""
        p_t, p_h, p_w = self.patch_size()
        frames, height, width = latent_shape[1], latent_shape[-2], latent_shape[-1]
        return -(-frames // p_t) * (height // p_h) * (width // p_w)
