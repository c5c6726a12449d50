"""Wan2.1 text-to-video: diffusers' WanPipeline components (UMT5 text encoder, Wan VAE, WanTransformer3DModel,
flow-matching scheduler) driven by ditfarm's own denoising loop, so caches and sequence parallelism attach to
``pipe.transformer`` exactly as for ``tiny``.

A model folder is a diffusers Wan folder (``model_index.json`` naming WanPipeline, e.g.
Wan-AI/Wan2.1-T2V-1.3B-Diffusers), optionally with a ``ditfarm_model.json`` to override sampler defaults.
``make_small_wan_folder`` writes such a folder with random weights and tiny dimensions, so the real code path is
tested here without any download.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .base import VideoPipelineMixin
from .denoise import SamplerSettings

WAN_DEFAULTS = SamplerSettings(num_frames=81, height=480, width=832, steps=50, guidance_scale=5.0)
MAX_SEQUENCE_LENGTH = 512


def is_wan_folder(folder: Path) -> bool:
    index = Path(folder) / "model_index.json"
    return index.exists() and json.loads(index.read_text()).get("_class_name") == "WanPipeline"


class WanVideoPipeline(VideoPipelineMixin):
    """Renders free-text prompts with a Wan2.1 model folder."""

    def __init__(self, pipe, folder: str | None = None, defaults: SamplerSettings = WAN_DEFAULTS,
                 max_sequence_length: int = MAX_SEQUENCE_LENGTH):
        self.pipe = pipe
        self.folder = folder
        self.defaults = defaults
        self.model_name = Path(folder).name if folder else "wan"
        self.max_sequence_length = max_sequence_length

    @property
    def transformer(self):
        return self.pipe.transformer

    @property
    def scheduler(self):
        return self.pipe.scheduler

    @classmethod
    def from_folder(cls, folder: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32):
        from diffusers import AutoencoderKLWan, WanPipeline

        folder = Path(folder)
        vae = AutoencoderKLWan.from_pretrained(folder / "vae", torch_dtype=torch.float32)  # diffusers: VAE in fp32
        pipe = WanPipeline.from_pretrained(folder, vae=vae, torch_dtype=dtype).to(device)
        defaults, max_len = WAN_DEFAULTS, MAX_SEQUENCE_LENGTH
        card = folder / "ditfarm_model.json"
        if card.exists():
            data = json.loads(card.read_text())
            defaults = SamplerSettings(**{**WAN_DEFAULTS.__dict__, **data.get("defaults", {})})
            max_len = data.get("max_sequence_length", max_len)
        return cls(pipe, str(folder), defaults, max_len)

    def check_prompt(self, prompt: str) -> None:
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("prompt is empty")

    def check_sizes(self, settings: SamplerSettings) -> None:
        from .checks import check_wan_sizes

        check_wan_sizes(settings, self.pipe.vae_scale_factor_temporal, self.pipe.vae_scale_factor_spatial,
                        tuple(self.transformer.config.patch_size))

    def _latent_settings(self, s: SamplerSettings) -> SamplerSettings:
        temporal, spatial = self.pipe.vae_scale_factor_temporal, self.pipe.vae_scale_factor_spatial
        return SamplerSettings((s.num_frames - 1) // temporal + 1, s.height // spatial, s.width // spatial,
                               s.steps, s.guidance_scale)

    def latent_shape(self, settings: SamplerSettings) -> tuple[int, ...]:
        ls = self._latent_settings(settings)
        return (1, self.transformer.config.in_channels, ls.num_frames, ls.height, ls.width)

    def encode_prompt(self, prompt: str, negative_prompt: str = "", guidance_scale: float = 1.0):
        cond, uncond = self.pipe.encode_prompt(
            prompt,
            negative_prompt or "",
            do_classifier_free_guidance=guidance_scale > 1.0,
            max_sequence_length=self.max_sequence_length,
            device=self.execution_device,
            dtype=self.transformer.dtype,
        )
        return cond, uncond

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        vae = self.pipe.vae
        latents = latents.to(next(vae.parameters()).device, vae.dtype)
        mean = torch.tensor(vae.config.latents_mean).view(1, vae.config.z_dim, 1, 1, 1).to(latents)
        std = torch.tensor(vae.config.latents_std).view(1, vae.config.z_dim, 1, 1, 1).to(latents)
        video = vae.decode(latents * std + mean, return_dict=False)[0]  # (1, 3, T, H, W) in [-1, 1]
        video = ((video[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return video.permute(1, 2, 3, 0).cpu().numpy()


def make_small_wan_folder(folder: str | Path, seed: int = 0, layers: int = 4) -> Path:
    """A complete diffusers Wan folder with random weights and small dimensions: transformer 2 heads x 16 wide,
    VAE base width 8 (same 4x temporal, 8x spatial compression as Wan2.1), a one-layer UMT5 and a word-level
    tokenizer.  Loads with WanPipeline.from_pretrained and load_pipeline like a real Wan2.1 folder."""
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    folder = Path(folder)
    torch.manual_seed(seed)
    words = ["<pad>", "</s>", "<unk>"] + sorted(set(
        "a the red green blue yellow white black circle square triangle cat dog car moving left right up down on "
        "and in with background gradient of sky sea city street forest".split()))
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>",
                                        unk_token="<unk>")
    text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=len(words), d_model=32, d_kv=16, d_ff=64, num_layers=1,
                                               num_heads=2, relative_attention_num_buckets=8))
    vae = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=16, out_channels=16,
        text_dim=32, freq_dim=32, ffn_dim=64, num_layers=layers, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=64,
    )
    pipe = WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0))
    pipe.save_pretrained(folder)
    card = {"kind": "wan", "defaults": {"num_frames": 9, "height": 64, "width": 64, "steps": 10,
                                        "guidance_scale": 5.0}, "max_sequence_length": 32}
    (folder / "ditfarm_model.json").write_text(json.dumps(card, indent=2) + "\n")
    return folder
