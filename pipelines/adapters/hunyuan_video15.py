"""diffusers' ``HunyuanVideo15Transformer3DModel`` (HunyuanVideo 1.5): dual-stream blocks only, taking and
returning the (video, text) token pair, whose joint attention projects the text with its own (``add_*``)
projections, as HunyuanVideo 1.0's dual-stream blocks do; the processors are that family's.  The text stream is
the valid image, ByT5 and Qwen tokens in that order (the transformer's own order), padding dropped."""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers import HunyuanVideo15Transformer3DModel
from diffusers.models.modeling_outputs import Transformer2DModelOutput

from .base import Gather, register_adapter
from .hunyuan_video import HunyuanVideoAdapter


def valid_text_tokens(model, encoder_hidden_states, encoder_attention_mask, text_2, mask_2, image_embeds, timestep):
    """The text stream of ``HunyuanVideo15Transformer3DModel.forward`` (the refined Qwen text, the projected ByT5
    text and the projected image embeddings, each with its type embedding) at its valid tokens only, in the
    model's order (image, ByT5, Qwen): what every token of the video may attend to.  One video per call."""
    if encoder_hidden_states.shape[0] != 1:
        raise ValueError("the sharded HunyuanVideo 1.5 forward renders one video per call")
    text = model.context_embedder(encoder_hidden_states, timestep, encoder_attention_mask)
    text = text + model.cond_type_embed(torch.zeros_like(text[:, :, 0], dtype=torch.long))
    text_2 = model.context_embedder_2(text_2)
    text_2 = text_2 + model.cond_type_embed(torch.ones_like(text_2[:, :, 0], dtype=torch.long))
    image = model.image_embedder(image_embeds)
    image = image + model.cond_type_embed(2 * torch.ones_like(image[:, :, 0], dtype=torch.long))
    image_valid = not bool(torch.all(image_embeds == 0))  # zero embeddings: text-to-video, every image token masked
    parts = [text_2[0][mask_2[0].bool()], text[0][encoder_attention_mask[0].bool()]]
    if image_valid:
        parts.insert(0, image[0])
    return torch.cat(parts, dim=0).unsqueeze(0)


@register_adapter(HunyuanVideo15Transformer3DModel)
class HunyuanVideo15Adapter(HunyuanVideoAdapter):
    family = "hunyuan_video15"

    def blocks(self) -> list[torch.nn.Module]:
        return list(self.transformer.transformer_blocks)

    def sharded_forward(self, rank: int, world: int, gather: Gather) -> Callable:
        """``HunyuanVideo15Transformer3DModel.forward`` with the video tokens (and their rotary embedding) split
        into contiguous shards after the patch embedding; the text stream (``valid_text_tokens``) stays whole on
        every rank; the video is gathered after the output projection."""

        def forward(
            model,
            hidden_states,
            timestep,
            encoder_hidden_states,
            encoder_attention_mask,
            timestep_r=None,
            encoder_hidden_states_2=None,
            encoder_attention_mask_2=None,
            image_embeds=None,
            attention_kwargs=None,
            return_dict=True,
        ):
            batch, _, frames, height, width = hidden_states.shape
            p_t, p = model.config.patch_size_t, model.config.patch_size
            rotary = model.rope(hidden_states)
            temb = model.time_embed(timestep, timestep_r=timestep_r)
            video = model.x_embedder(hidden_states)
            text = valid_text_tokens(
                model,
                encoder_hidden_states,
                encoder_attention_mask,
                encoder_hidden_states_2,
                encoder_attention_mask_2,
                image_embeds,
                timestep,
            )
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
