"""diffusers' ``CogVideoXTransformer3DModel`` (CogVideoX 2B and 5B): its blocks, which take and return the (video,
text) token pair of their joint attention, their units, and the video tokens' queries and keys for the
profiler's attention probe.  A CogVideoX block has no cross-attention (the text
joins the video in one self-attention), so unit caches, which need all three units, refuse it by name."""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers import CogVideoXTransformer3DModel
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.modeling_outputs import Transformer2DModelOutput

from .base import BlockIO, Gather, JointBlockIO, TransformerAdapter, register_adapter


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


def joint_queries_keys_values(attn, hidden_states, encoder_hidden_states, image_rotary_emb):
    """(video q, k, v, text q, k, v) of a CogVideoX joint attention, (B, S, heads, D) each, computed as
    ``CogVideoXAttnProcessor2_0`` computes them, on whatever share of the video tokens this rank holds (the
    rotary embedding given for the same share)."""
    text = encoder_hidden_states.size(1)
    joint = torch.cat([encoder_hidden_states, hidden_states], dim=1)
    query, key, value = (
        proj(joint).unflatten(2, (attn.heads, -1)).transpose(1, 2) for proj in (attn.to_q, attn.to_k, attn.to_v)
    )
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    if image_rotary_emb is not None:
        query[:, :, text:] = apply_rotary_emb(query[:, :, text:], image_rotary_emb)
        key[:, :, text:] = apply_rotary_emb(key[:, :, text:], image_rotary_emb)
    query, key, value = (x.transpose(1, 2) for x in (query, key, value))  # (B, text + S, heads, D)
    return query[:, text:], key[:, text:], value[:, text:], query[:, :text], key[:, :text], value[:, :text]


class CogVideoXShardedProcessor:
    """``CogVideoXAttnProcessor2_0`` on this rank's shard of the video tokens and the whole text, its attention
    computed by ``attend.joint`` (the gang's joint attention: every rank gets its video shard's output and the
    whole text's)."""

    def __init__(self, attend):
        self.attention = attend

    def __call__(self, attn, hidden_states, encoder_hidden_states, attention_mask=None, image_rotary_emb=None):
        if attention_mask is not None:
            raise ValueError("this processor computes CogVideoX's attention without a mask only")
        q, k, v, text_q, text_k, text_v = joint_queries_keys_values(
            attn, hidden_states, encoder_hidden_states, image_rotary_emb
        )
        video, text = self.attention.joint(q, k, v, text_q, text_k, text_v)
        out = torch.cat([text, video], dim=1).flatten(2, 3).type_as(q)
        out = attn.to_out[1](attn.to_out[0](out))
        return out[:, text.shape[1] :], out[:, : text.shape[1]]


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

    def attention_processor(self, attend) -> CogVideoXShardedProcessor:
        return CogVideoXShardedProcessor(attend)

    def sharded_forward(self, rank: int, world: int, gather: Gather) -> Callable:
        """``CogVideoXTransformer3DModel.forward`` with the video tokens (and their rotary embedding) split into
        contiguous shards after the patch embedding; the text tokens stay whole on every rank (the joint
        attention gathers their heads); the video is gathered after the output projection."""

        def forward(
            model,
            hidden_states,
            encoder_hidden_states,
            timestep,
            timestep_cond=None,
            ofs=None,
            image_rotary_emb=None,
            attention_kwargs=None,
            return_dict=True,
        ):
            if ofs is not None or model.ofs_embedding is not None:
                raise ValueError("CogVideoX's image-to-video offset embedding is not sharded")
            batch, frames, _, height, width = hidden_states.shape
            emb = model.time_embedding(model.time_proj(timestep).to(dtype=hidden_states.dtype), timestep_cond)
            tokens = model.patch_embed(encoder_hidden_states, hidden_states)
            text_len = encoder_hidden_states.shape[1]
            text, video = tokens[:, :text_len], tokens[:, text_len:]
            seq = video.shape[1]
            if seq % world:
                raise ValueError(
                    f"{seq} tokens do not split evenly over {world} ranks; choose sizes or a degree that divide"
                )
            shard = slice(rank * seq // world, (rank + 1) * seq // world)
            video = video[:, shard].contiguous()
            if image_rotary_emb is not None:
                image_rotary_emb = tuple(r[shard] for r in image_rotary_emb)
            for block in model.transformer_blocks:
                video, text = block(
                    hidden_states=video,
                    encoder_hidden_states=text,
                    temb=emb,
                    image_rotary_emb=image_rotary_emb,
                    attention_kwargs=attention_kwargs,
                )
            video = model.proj_out(model.norm_out(model.norm_final(video), temb=emb))
            video = gather(video)
            p, p_t = model.config.patch_size, model.config.patch_size_t
            if p_t is None:
                output = video.reshape(batch, frames, height // p, width // p, -1, p, p)
                output = output.permute(0, 1, 4, 2, 5, 3, 6).flatten(5, 6).flatten(3, 4)
            else:  # CogVideoX 1.5: each token also spans p_t latent frames
                output = video.reshape(batch, (frames + p_t - 1) // p_t, height // p, width // p, -1, p_t, p, p)
                output = output.permute(0, 1, 5, 4, 2, 6, 3, 7).flatten(6, 7).flatten(4, 5).flatten(1, 2)
            return Transformer2DModelOutput(sample=output) if return_dict else (output,)

        return forward

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
