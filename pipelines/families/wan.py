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

from ..base import DiffusersPipelineMixin, VideoDefaults
from ..cache_card import shipped_profile
from ..checks import (
    DEFAULT_ROPE_POSITIONS,
    WAN_LIMITS,
    ModelChecks,
    card_limits,
    check_nonempty_prompt,
    check_wan_sizes,
    wan_vae_factors,
)
from ..conditioning import Conditioning
from ..denoise import SamplerSettings
from ..family import Family, LoadOptions, register_family
from ..folder_checks import DiffusersLayout, check_diffusers_folder
from ..precision import resolve_precision
from ..word_tokenizer import word_tokenizer

WAN_DEFAULTS = SamplerSettings(num_frames=81, height=480, width=832, steps=50, guidance_scale=5.0)
WAN_VIDEO = VideoDefaults(fps=16, upscale=1)  # Wan2.1 is trained on 16-fps clips and decodes at full size
MAX_SEQUENCE_LENGTH = 512


class WanVideoPipeline(DiffusersPipelineMixin):
    """Renders free-text prompts with a Wan2.1 model folder."""

    def __init__(
        self,
        pipe,
        folder: str | None = None,
        defaults: SamplerSettings = WAN_DEFAULTS,
        max_sequence_length: int = MAX_SEQUENCE_LENGTH,
        video: VideoDefaults = WAN_VIDEO,
        vae_factors: tuple[int, int] = (4, 8),
        offload_text_encoder: bool = False,
    ):
        self.pipe = pipe
        self.folder = folder
        self.defaults = defaults
        self.video = video
        self.model_name = Path(folder).name if folder else "wan"
        self.max_sequence_length = max_sequence_length
        self.vae_factors = vae_factors  # (temporal, spatial), from the VAE's config even where no VAE is loaded
        self.offload_text_encoder = offload_text_encoder

    @classmethod
    def from_folder(
        cls, folder: Path, card: dict, options: LoadOptions, defaults: SamplerSettings, video: VideoDefaults
    ):
        """A folder ``WanFamily.check_folder`` passed.  ``options.encode_and_decode=False`` loads the transformer
        and scheduler only (gang ranks other than 0, which receive the text embeddings and never decode).  The
        VAE decodes tiled (diffusers' AutoencoderKLWan tiling), so long 720p videos decode beside a large
        transformer.  ``options.offload_text_encoder``: the text encoder lives in host memory and visits the
        device only while it encodes."""
        from diffusers import AutoencoderKLWan, WanPipeline  # deferred: diffusers
        from transformers import UMT5EncoderModel  # deferred: transformers

        folder = Path(folder)
        device, encode_and_decode = options.device, options.encode_and_decode
        precision = resolve_precision(options.dtype, device)
        if encode_and_decode:
            vae = AutoencoderKLWan.from_pretrained(folder / "vae", dtype=precision.vae)
            vae.enable_tiling()
            text_encoder = UMT5EncoderModel.from_pretrained(folder / "text_encoder", dtype=precision.text_encoder)
            components = dict(vae=vae, text_encoder=text_encoder)
        else:
            components = dict(vae=None, text_encoder=None, tokenizer=None)
        pipe = WanPipeline.from_pretrained(folder, dtype=precision.transformer, **components)
        pipe.transformer.to(device)
        if encode_and_decode:
            pipe.vae.to(device)
            pipe.text_encoder.to("cpu" if options.offload_text_encoder else device)
        made = cls(
            pipe,
            str(folder),
            defaults,
            card.get("max_sequence_length", MAX_SEQUENCE_LENGTH),
            video,
            wan_vae_factors(json.loads((folder / "vae" / "config.json").read_text())),
            options.offload_text_encoder and encode_and_decode,
        )
        made.limits = card_limits(card, WAN_LIMITS, str(folder / "ditfarm_model.json"))
        return made

    def check_prompt(self, prompt: str) -> None:
        check_nonempty_prompt(prompt)

    def check_sizes(self, settings: SamplerSettings) -> None:
        config = self.transformer.config
        check_wan_sizes(settings, *self.vae_factors, tuple(config.patch_size), config.rope_max_seq_len, self.limits)

    def _latent_settings(self, s: SamplerSettings) -> SamplerSettings:
        temporal, spatial = self.vae_factors
        return SamplerSettings(
            (s.num_frames - 1) // temporal + 1, s.height // spatial, s.width // spatial, s.steps, s.guidance_scale
        )

    def latent_shape(self, settings: SamplerSettings) -> tuple[int, ...]:
        ls = self._latent_settings(settings)
        return (1, self.transformer.config.in_channels, ls.num_frames, ls.height, ls.width)

    def encode_prompt(self, prompt: str, negative_prompt: str = "", guidance_scale: float = 1.0):
        """The text's Conditioning; no unconditional branch without CFG (guidance 1: one transformer pass per
        step)."""
        if not self.holds_text_encoder:
            raise RuntimeError("this pipeline was loaded without its text encoder (a gang rank other than 0)")
        encoder = self.pipe.text_encoder
        if self.offload_text_encoder:
            encoder.to(self.execution_device)
        try:
            cond, uncond = self.pipe.encode_prompt(
                prompt,
                negative_prompt or "",
                do_classifier_free_guidance=guidance_scale > 1.0,
                max_sequence_length=self.max_sequence_length,
                device=self.execution_device,
                dtype=self.transformer.dtype,
            )
        finally:
            if self.offload_text_encoder:
                encoder.to("cpu")
        return Conditioning.of_text(cond, uncond)

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        if not self.holds_vae:
            raise RuntimeError("this pipeline was loaded without its VAE (a gang rank other than 0)")
        vae = self.pipe.vae
        latents = latents.to(next(vae.parameters()).device, vae.dtype)
        mean = torch.tensor(vae.config.latents_mean).view(1, vae.config.z_dim, 1, 1, 1).to(latents)
        std = torch.tensor(vae.config.latents_std).view(1, vae.config.z_dim, 1, 1, 1).to(latents)
        video = vae.decode(latents * std + mean, return_dict=False)[0]  # (1, 3, T, H, W) in [-1, 1]
        video = ((video[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return video.permute(1, 2, 3, 0).cpu().numpy()


WAN_LAYOUT = DiffusersLayout(
    what="a Wan text-to-video folder",
    components=("transformer", "vae", "text_encoder", "tokenizer", "scheduler"),
    weights={
        "transformer": ("diffusion_pytorch_model", "diffusers", "WanTransformer3DModel"),
        "vae": ("diffusion_pytorch_model", "diffusers", "AutoencoderKLWan"),
        "text_encoder": ("model", "transformers", "UMT5EncoderModel"),
    },
    unsupported={
        "transformer_2": "a second expert transformer (Wan2.2 A14B's low-noise expert)",
        "boundary_ratio": "the step where Wan2.2 A14B switches experts",
        "expand_timesteps": "per-token timesteps (Wan2.2 TI2V-5B)",
        "image_encoder": "an image encoder (image-to-video)",
        "image_processor": "an image processor (image-to-video)",
    },
)


@register_family
class WanFamily(Family):
    name = "wan"
    renders = "Wan2.1 text-to-video, one transformer"
    pipeline_classes = ("WanPipeline",)
    transformer_classes = ("WanTransformer3DModel",)
    defaults = WAN_DEFAULTS
    video = WAN_VIDEO
    # ERTACache's paper settles lambda 0.08 for Wan2.1-1.3B at 50 steps; the other policies' published settings are
    # not per model, and ditfarm's global table holds them
    cache_defaults = {"ertacache": 0.08}

    def check_folder(self, folder: Path) -> dict:
        return check_diffusers_folder(folder, WAN_LAYOUT)

    def load(self, folder: Path, card: dict, options: LoadOptions) -> WanVideoPipeline:
        return WanVideoPipeline.from_folder(
            folder, card, options, self.sampler_defaults(card), self.video_defaults(card)
        )

    def small_folders(self, root: Path) -> dict[str, Path]:
        return {"wan2.1-t2v": make_small_wan_folder(Path(root) / "wan2.1-t2v")}

    def checks(self, folder: Path, card: dict) -> ModelChecks:
        transformer = json.loads((folder / "transformer" / "config.json").read_text())
        patch = tuple(transformer.get("patch_size", (1, 2, 2)))
        rope = transformer.get("rope_max_seq_len", DEFAULT_ROPE_POSITIONS)
        temporal, spatial = wan_vae_factors(json.loads((folder / "vae" / "config.json").read_text()))
        limits = card_limits(card, WAN_LIMITS, str(folder / "ditfarm_model.json"))
        return ModelChecks(
            self.sampler_defaults(card),
            lambda s: check_wan_sizes(s, temporal, spatial, patch, rope, limits),
            check_nonempty_prompt,
            None,
            shipped_profile(folder),
            video=self.video_defaults(card),
        )


SMALL_TRANSFORMER = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=2,
    attention_head_dim=16,
    in_channels=16,
    out_channels=16,
    text_dim=32,
    freq_dim=32,
    ffn_dim=64,
    num_layers=4,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    rope_max_seq_len=64,
)
SMALL_TEXT_ENCODER = dict(d_model=32, d_kv=16, d_ff=64, num_layers=1, num_heads=2, relative_attention_num_buckets=8)
SMALL_VAE = dict(base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1)


def make_small_wan_folder(folder: str | Path, seed: int = 0, layers: int = 4) -> Path:
    """A complete diffusers Wan folder with random weights and small dimensions: transformer 2 heads x 16 wide,
    VAE base width 8 (same 4x temporal, 8x spatial compression as Wan2.1), a one-layer UMT5 and a word-level
    tokenizer (``word_tokenizer``).  Loads with WanPipeline.from_pretrained and load_pipeline like a real Wan2.1 folder."""
    card = {
        "kind": "wan",
        "defaults": {"num_frames": 9, "height": 64, "width": 64, "steps": 10, "guidance_scale": 5.0},
        "max_sequence_length": 32,
        "video": {"fps": 16, "upscale": 1},
    }
    return make_wan_folder(
        folder, {**SMALL_TRANSFORMER, "num_layers": layers}, SMALL_TEXT_ENCODER, SMALL_VAE, card, seed=seed
    )


def make_wan_folder(
    folder: str | Path,
    transformer_config: dict,
    text_encoder_config: dict,
    vae_config: dict,
    card: dict | None = None,
    seed: int = 0,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Path:
    """A diffusers Wan folder with random weights of the given component configs (the real Wan2.1 ones in
    ``wan_configs`` give the real shapes) and a word-level tokenizer of ``WORDS`` (the encoder's vocabulary
    is the config's; the tokenizer only uses its first ids).  ``device`` builds the weights there (fast for
    billions of parameters on a GPU); the transformer and text encoder are saved in ``dtype``, the VAE in
    float32."""
    from diffusers import (  # deferred: diffusers
        AutoencoderKLWan,
        FlowMatchEulerDiscreteScheduler,
        WanPipeline,
        WanTransformer3DModel,
    )
    from transformers import UMT5Config, UMT5EncoderModel  # deferred: transformers

    folder = Path(folder)
    torch.manual_seed(seed)
    tokenizer = word_tokenizer()
    text_config = {"vocab_size": len(tokenizer), **text_encoder_config}
    with torch.device(device):
        text_encoder = UMT5EncoderModel(UMT5Config(**text_config))
        vae = AutoencoderKLWan(**vae_config)
        transformer = WanTransformer3DModel(**transformer_config)
    if dtype != torch.float32:  # loading with dtype=float32 later upcasts what Wan keeps in float32
        text_encoder, transformer = text_encoder.to(dtype), transformer.to(dtype)
    pipe = WanPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
    )
    pipe.save_pretrained(folder)
    if card is not None:
        (folder / "ditfarm_model.json").write_text(json.dumps(card, indent=2) + "\n")
    return folder
