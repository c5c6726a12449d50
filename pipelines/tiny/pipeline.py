"""``tiny`` as a diffusers pipeline: word text encoder, WanTransformer3DModel in pixel space, flow-matching Euler."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler, WanTransformer3DModel
from diffusers.loaders.lora_pipeline import WanLoraLoaderMixin

from ..base import VideoDefaults, VideoPipelineMixin
from ..cache_card import ModelCacheSettings
from ..checks import TINY_LIMITS, card_limits
from ..conditioning import Conditioning
from ..denoise import SamplerSettings
from .model_config import POSITION_CHANNELS, position_grid
from .text_encoder import WordTextEncoder
from .weights import SAMPLER_DEFAULTS, VIDEO_DEFAULTS, load_scheduler, load_text_encoder, read_model_card


def _sampler_defaults(values: dict) -> SamplerSettings:
    return SamplerSettings(
        values["num_frames"], values["height"], values["width"], values["steps"], values["guidance_scale"]
    )


class TinyVideoPipeline(VideoPipelineMixin, DiffusionPipeline):
    """Renders prompts of the tiny vocabulary; latents are pixels in [-1, 1], so decoding is a clamp."""

    model_cpu_offload_seq = "text_encoder->transformer"

    def __init__(
        self,
        transformer: WanTransformer3DModel,
        scheduler: FlowMatchEulerDiscreteScheduler,
        text_encoder: WordTextEncoder,
    ):
        super().__init__()
        self.register_modules(transformer=transformer, scheduler=scheduler, text_encoder=text_encoder)
        self.defaults = _sampler_defaults(SAMPLER_DEFAULTS)
        self.model_name = "tiny"

    @classmethod
    def from_folder(cls, folder: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32):
        folder = Path(folder)
        card = read_model_card(folder)
        pipe = cls(
            transformer=WanTransformer3DModel.from_pretrained(folder / "transformer", torch_dtype=dtype).eval(),
            scheduler=load_scheduler(folder),
            text_encoder=load_text_encoder(folder),
        )
        pipe.defaults = _sampler_defaults(card["defaults"])
        pipe.video = VideoDefaults(**{**VIDEO_DEFAULTS, **card.get("video", {})})
        pipe.cache_settings = ModelCacheSettings.from_card(card, pipe.defaults.steps)
        pipe.model_name = card.get("name", folder.name)
        pipe.limits = card_limits(card, TINY_LIMITS, str(folder / "ditfarm_model.json"))
        pipe.folder = str(folder)
        return pipe.to(device)

    def lora_loader(self):
        return WanLoraLoaderMixin  # tiny's transformer is a Wan transformer: Wan's LoRAs fit its layout

    def check_prompt(self, prompt: str) -> None:
        """Raise PromptError (naming the word and the vocabulary) for a prompt this model cannot read."""
        self.text_encoder.token_ids(prompt)

    def encode_prompt(self, prompt: str, negative_prompt: str = "", guidance_scale: float = 1.0):
        embeds = self.text_encoder([prompt, negative_prompt or ""]).to(self.execution_device, self.transformer.dtype)
        return Conditioning.of_text(embeds[:1], embeds[1:])

    def latent_shape(self, settings: SamplerSettings) -> tuple[int, ...]:
        return (1, 3, settings.num_frames, settings.height, settings.width)

    def transformer_condition(self, latents: torch.Tensor) -> torch.Tensor | None:
        """The (t, y, x) grid for models trained with it (in_channels = out_channels + 3; older ones have none)."""
        extra = self.transformer.config.in_channels - self.transformer.config.out_channels
        if extra == 0:
            return None
        if extra != POSITION_CHANNELS:
            raise ValueError(
                f"a tiny transformer reads 3 or 3 + {POSITION_CHANNELS} channels, this one reads "
                f"{self.transformer.config.in_channels}"
            )
        batch, _, frames, height, width = latents.shape
        return position_grid(batch, frames, height, width, latents.dtype, latents.device)

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        video = ((latents[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # (3, T, H, W)
        return video.permute(1, 2, 3, 0).cpu().numpy()

    __call__ = VideoPipelineMixin.generate
