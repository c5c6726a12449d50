"""HunyuanVideo 1.5 text-to-video (diffusers' HunyuanVideo15Pipeline folders): its Qwen2.5-VL and ByT5 text
encoders, its 16x VAE and transformer driven by ditfarm's loop, rendering what diffusers renders for the same
folder, prompt, negative prompt, seed and sizes.

What exactness depends on, as diffusers' ``HunyuanVideo15Pipeline.__call__`` does it: the prompt in the Qwen chat
template (a system message, then the user's), padded, encoded with its mask, the third hidden state from the end
taken and the template cropped off; ByT5 embeddings of the prompt's quoted text (zeros and an empty mask where it
quotes none); the transformer reading the latents with zero condition channels and a zero mask channel beside
them, and zero image embeddings; the folder's guider deciding classifier-free guidance (its scale is
``guidance_scale``; its range, formulation and rescale as configured), the negative branch being the encoding of
the negative prompt or of an empty one; sigmas ``linspace(1, 0, steps + 1)[:-1]``; decoding
``latents / scaling_factor``.

Both texts are kept at their valid tokens, as for HunyuanVideo 1.0 (``hunyuan_video.valid_text``): the
transformer's mask hides padding from every token, so dropping it computes the same video on fewer tokens.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from ..base import DiffusersPipelineMixin, VideoDefaults
from ..cache_card import shipped_profile
from ..checks import ModelChecks, card_limits, check_nonempty_prompt
from ..conditioning import Conditioning
from ..denoise import SamplerSettings
from ..family import Family, LoadOptions, register_family
from ..folder_checks import DiffusersLayout, ModelFolderError, check_diffusers_folder
from ..memory import minimum_video_bytes
from ..precision import resolve_precision
from ..word_tokenizer import word_tokenizer
from .hunyuan_video import HunyuanVideoSteps, check_sizes, hunyuan_sigmas, vae_factors, valid_text

HUNYUAN15_DEFAULTS = SamplerSettings(num_frames=121, height=480, width=848, steps=50, guidance_scale=6.0)
HUNYUAN15_VIDEO = VideoDefaults(fps=24, upscale=1)  # HunyuanVideo 1.5's own sampling script writes 24-fps videos
HUNYUAN15_LIMITS = {"height": 1280, "width": 1280}
DEFAULT_ASPECT = (9, 16)  # (height, width): diffusers' default frame shape, sized to the transformer's target_size
IMAGE_TOKENS = 729  # the pipeline's zero image embeddings for text-to-video (vision_num_semantic_tokens)

HUNYUAN15_LAYOUT = DiffusersLayout(
    what="a HunyuanVideo 1.5 text-to-video folder",
    components=(
        "transformer",
        "vae",
        "text_encoder",
        "tokenizer",
        "text_encoder_2",
        "tokenizer_2",
        "scheduler",
        "guider",
    ),
    weights={
        "transformer": ("diffusion_pytorch_model", "diffusers", "HunyuanVideo15Transformer3DModel"),
        "vae": ("diffusion_pytorch_model", "diffusers", "AutoencoderKLHunyuanVideo15"),
        "text_encoder": ("model", "transformers", "Qwen2_5_VLTextModel"),
        "text_encoder_2": ("model", "transformers", "T5EncoderModel"),
    },
)


def folder_defaults(folder: Path) -> SamplerSettings:
    """The family's defaults as this folder's diffusers pipeline has them: its frame shape sized to the
    transformer's ``target_size`` (16:9, as diffusers picks it) and its guider's scale."""
    from diffusers.pipelines.hunyuan_video1_5.image_processor import (  # deferred: diffusers
        HunyuanVideo15ImageProcessor,
    )

    folder = Path(folder)
    transformer = json.loads((folder / "transformer" / "config.json").read_text())
    spatial = vae_factors(json.loads((folder / "vae" / "config.json").read_text()))[1]
    processor = HunyuanVideo15ImageProcessor(vae_scale_factor=spatial)
    height, width = processor.calculate_default_height_width(*DEFAULT_ASPECT, transformer.get("target_size", 640))
    guider = guider_config(folder)
    return replace(
        HUNYUAN15_DEFAULTS,
        height=int(height),
        width=int(width),
        guidance_scale=float(guider.get("guidance_scale", HUNYUAN15_DEFAULTS.guidance_scale)),
    )


def guider_config(folder: Path) -> dict:
    path = Path(folder) / "guider" / "guider_config.json"
    return json.loads(path.read_text()) if path.exists() else {}


class HunyuanVideo15Steps(HunyuanVideoSteps):
    """HunyuanVideo 1.5's sampling as diffusers' pipeline runs it: HunyuanVideo's sigmas; the transformer reading
    [latents, zero condition, zero mask] and zero image embeddings; guidance as the folder's guider applies it."""

    def __init__(self, transformer, scheduler, guider: dict, steps: int):
        super().__init__(transformer, scheduler, 1.0)
        self.guider, self.steps = guider, steps
        self.original_formulation = bool(guider.get("use_original_formulation", False))

    def inputs(self, i: int, t, latents: torch.Tensor, branch: dict[str, torch.Tensor]) -> dict:
        batch, channels = latents.shape[:2]
        latents = latents.to(self.dtype)
        zeros = torch.zeros((batch, channels + 1, *latents.shape[2:]), dtype=self.dtype, device=latents.device)
        config = self.transformer.config
        image = torch.zeros((batch, IMAGE_TOKENS, config.image_embed_dim), dtype=self.dtype, device=latents.device)
        return {
            "hidden_states": torch.cat([latents, zeros], dim=1),
            "timestep": t.expand(batch).to(self.dtype),
            "image_embeds": image,
            **branch,
        }

    def uses_guidance(self, i: int, scale: float) -> bool:
        """diffusers' ``ClassifierFreeGuidance``: enabled, within its [start, stop) share of the steps, and a scale
        that changes the prediction."""
        if not self.guider.get("enabled", True):
            return False
        start, stop = (int(self.guider.get(k, d) * self.steps) for k, d in (("start", 0.0), ("stop", 1.0)))
        neutral = 0.0 if self.original_formulation else 1.0
        return start <= i < stop and not math.isclose(scale, neutral)

    def guide(self, cond: torch.Tensor, uncond: torch.Tensor, scale: float, i: int, t) -> torch.Tensor:
        from diffusers.guiders.guider_utils import rescale_noise_cfg  # deferred: diffusers

        prediction = (cond if self.original_formulation else uncond) + scale * (cond - uncond)
        rescale = float(self.guider.get("guidance_rescale", 0.0))
        return rescale_noise_cfg(prediction, cond, rescale) if rescale > 0.0 else prediction


def transformer_only(folder: Path, dtype: torch.dtype) -> SimpleNamespace:
    """What a gang rank other than 0 needs of the folder: the transformer, the scheduler and the guider's config
    (read by ``guider_config``), in the pipeline's attribute names."""
    from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideo15Transformer3DModel  # deferred: diffusers

    transformer = HunyuanVideo15Transformer3DModel.from_pretrained(folder / "transformer", dtype=dtype)
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(folder / "scheduler")
    return SimpleNamespace(transformer=transformer, scheduler=scheduler, vae=None, text_encoder=None)


class HunyuanVideo15VideoPipeline(DiffusersPipelineMixin):
    """Renders free-text prompts with a HunyuanVideo 1.5 text-to-video folder."""

    def __init__(self, pipe, folder: str, defaults, video: VideoDefaults, card: dict, factors, offload: bool):
        self.pipe = pipe
        self.folder = folder
        self.defaults = defaults
        self.video = video
        self.model_name = Path(folder).name
        self.vae_factors = factors  # (temporal, spatial), from the VAE's config even where no VAE is loaded
        self.limits = card_limits(card, HUNYUAN15_LIMITS, str(Path(folder) / "ditfarm_model.json"))
        self.offload_text_encoder = offload
        self.guider = guider_config(Path(folder))

    @classmethod
    def from_folder(cls, folder: Path, card: dict, options: LoadOptions, defaults: SamplerSettings, video):
        """``options.encode_and_decode=False`` loads the transformer alone; ``options.offload_text_encoder`` keeps
        both text encoders in host memory, visiting the device only while they encode."""
        from diffusers import AutoencoderKLHunyuanVideo15, HunyuanVideo15Pipeline  # deferred: diffusers
        from transformers import Qwen2_5_VLTextModel, T5EncoderModel  # deferred: transformers

        folder = Path(folder)
        precision = resolve_precision(options.dtype, options.device)
        if options.encode_and_decode:
            components = dict(
                vae=AutoencoderKLHunyuanVideo15.from_pretrained(folder / "vae", dtype=precision.vae),
                text_encoder=Qwen2_5_VLTextModel.from_pretrained(folder / "text_encoder", dtype=precision.text_encoder),
                text_encoder_2=T5EncoderModel.from_pretrained(folder / "text_encoder_2", dtype=precision.text_encoder),
            )
            pipe = HunyuanVideo15Pipeline.from_pretrained(folder, dtype=precision.transformer, **components)
        else:  # diffusers' pipeline cannot be built without its VAE, which a rank other than 0 does not load
            pipe = transformer_only(folder, precision.transformer)
        pipe.transformer.to(options.device)
        offload = options.offload_text_encoder and options.encode_and_decode
        if options.encode_and_decode:
            pipe.vae.to(options.device)
            for encoder in (pipe.text_encoder, pipe.text_encoder_2):
                encoder.to("cpu" if offload else options.device)
        factors = vae_factors(json.loads((folder / "vae" / "config.json").read_text()))
        made = cls(pipe, str(folder), defaults, video, card, factors, offload)
        return made

    def check_prompt(self, prompt: str) -> None:
        check_nonempty_prompt(prompt)

    def check_sizes(self, settings: SamplerSettings) -> None:
        check_sizes(settings, *self.vae_factors, self.transformer.config.patch_size, self.limits)

    def latent_shape(self, settings: SamplerSettings) -> tuple[int, ...]:
        temporal, spatial = self.vae_factors
        frames = (settings.num_frames - 1) // temporal + 1
        channels = self.transformer.config.out_channels  # the noise's; the transformer reads 2 x + 1 more
        return (1, channels, frames, settings.height // spatial, settings.width // spatial)

    def minimum_bytes(self, settings: SamplerSettings) -> int:
        config = self.transformer.config
        hidden = config.num_attention_heads * config.attention_head_dim
        return minimum_video_bytes(
            self.latent_shape(settings),
            (config.patch_size_t, config.patch_size, config.patch_size),
            hidden,
            int(hidden * config.mlp_ratio),
            next(self.transformer.parameters()).element_size(),
            settings.num_frames,
            settings.height,
            settings.width,
        )

    def encode_prompt(self, prompt: str, negative_prompt: str = "", guidance_scale: float = 1.0) -> Conditioning:
        """Both texts of the prompt at their valid tokens, with their masks; the negative prompt's too where the
        guider runs classifier-free guidance at ``guidance_scale``."""
        if not self.holds_text_encoder:
            raise RuntimeError("this pipeline was loaded without its text encoder (a gang rank other than 0)")
        encoders = (self.pipe.text_encoder, self.pipe.text_encoder_2)
        if self.offload_text_encoder:
            for encoder in encoders:
                encoder.to(self.execution_device)
        try:
            cond = self._encode(prompt)
            guided = HunyuanVideo15Steps(self.transformer, self.scheduler, self.guider, 1).uses_guidance(
                0, guidance_scale
            )
            uncond = self._encode(negative_prompt or "") if guided else None
        finally:
            if self.offload_text_encoder:
                for encoder in encoders:
                    encoder.to("cpu")
        return Conditioning(cond, uncond)

    def _encode(self, text: str) -> dict[str, torch.Tensor]:
        embeds, mask, embeds_2, mask_2 = self.pipe.encode_prompt(
            prompt=text, device=self.execution_device, dtype=self.transformer.dtype
        )
        embeds, mask = valid_text(embeds, mask)
        embeds_2, mask_2 = valid_text(embeds_2, mask_2)
        return {
            "encoder_hidden_states": embeds,
            "encoder_attention_mask": mask,
            "encoder_hidden_states_2": embeds_2,
            "encoder_attention_mask_2": mask_2,
        }

    def denoise_steps(self, settings: SamplerSettings, generator: torch.Generator) -> HunyuanVideo15Steps:
        return HunyuanVideo15Steps(self.transformer, self.scheduler, self.guider, settings.steps)

    def scheduler_sigmas(self, steps: int) -> np.ndarray:
        self.scheduler.set_timesteps(sigmas=hunyuan_sigmas(steps))
        return self.scheduler.sigmas.cpu().numpy()

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        if not self.holds_vae:
            raise RuntimeError("this pipeline was loaded without its VAE (a gang rank other than 0)")
        vae = self.pipe.vae
        latents = latents.to(next(vae.parameters()).device, vae.dtype)
        video = vae.decode(latents / vae.config.scaling_factor).sample  # (1, 3, T, H, W) in [-1, 1]
        video = ((video[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return video.permute(1, 2, 3, 0).cpu().numpy()


@register_family
class HunyuanVideo15Family(Family):
    name = "hunyuan_video15"
    renders = "HunyuanVideo 1.5 text-to-video"
    pipeline_classes = ("HunyuanVideo15Pipeline",)
    transformer_classes = ("HunyuanVideo15Transformer3DModel",)
    defaults = HUNYUAN15_DEFAULTS
    video = HUNYUAN15_VIDEO

    def check_folder(self, folder: Path) -> dict:
        card = check_diffusers_folder(folder, HUNYUAN15_LAYOUT)
        guider = Path(folder) / "guider" / "guider_config.json"
        name = json.loads(guider.read_text()).get("_class_name") if guider.exists() else None
        if name != "ClassifierFreeGuidance":
            raise ModelFolderError(
                f"{guider}: the guider is {name!r}; ditfarm renders HunyuanVideo 1.5 with diffusers' "
                "ClassifierFreeGuidance only"
            )
        return card

    def folder_sampler_defaults(self, folder: Path, card: dict) -> SamplerSettings:
        """The folder's own defaults (``folder_defaults``) with the card's over them."""
        base = folder_defaults(folder)
        return SamplerSettings(**{**base.__dict__, **card.get("defaults", {})})

    def load(self, folder: Path, card: dict, options: LoadOptions) -> HunyuanVideo15VideoPipeline:
        return HunyuanVideo15VideoPipeline.from_folder(
            folder, card, options, self.folder_sampler_defaults(folder, card), self.video_defaults(card)
        )

    def small_folders(self, root: Path) -> dict[str, Path]:
        return {"1.5": make_small_hunyuan_video15_folder(Path(root) / "1.5")}

    def bench_folder(self, root: Path, blocks: int) -> tuple[Path, int, int]:
        """HunyuanVideo 1.5's released transformer config (diffusers' class defaults: 54 blocks, 480p text-to-video)
        with ``blocks`` of its blocks, text encoders of its text widths (two-layer Qwen, one-layer ByT5), at 121
        frames of 480x848: (folder, blocks built, blocks released)."""
        transformer = {"num_layers": blocks, "task_type": "t2v", "target_size": 480}
        qwen = dict(
            hidden_size=3584,
            intermediate_size=1024,
            num_hidden_layers=2,
            num_attention_heads=28,
            num_key_value_heads=4,
            rope_scaling={"mrope_section": [16, 24, 24], "rope_type": "default", "type": "default"},
            rope_theta=1000000.0,
        )
        byt5 = dict(d_model=1472, d_kv=64, d_ff=1024, num_layers=1, num_heads=6, relative_attention_num_buckets=32)
        sizes = dict(
            transformer=transformer,
            text_encoder=qwen,
            text_encoder_2=byt5,
            defaults=dict(num_frames=121, height=480, width=848, steps=50),
        )
        return make_small_hunyuan_video15_folder(Path(root) / "hunyuan-video15", sizes=sizes), blocks, 54

    def checks(self, folder: Path, card: dict) -> ModelChecks:
        folder = Path(folder)
        patch = json.loads((folder / "transformer" / "config.json").read_text()).get("patch_size", 1)
        factors = vae_factors(json.loads((folder / "vae" / "config.json").read_text()))
        limits = card_limits(card, HUNYUAN15_LIMITS, str(folder / "ditfarm_model.json"))
        return ModelChecks(
            self.folder_sampler_defaults(folder, card),
            lambda s: check_sizes(s, *factors, patch, limits),
            check_nonempty_prompt,
            None,
            shipped_profile(folder),
            video=self.video_defaults(card),
        )


SMALL_TRANSFORMER = dict(
    in_channels=9,
    out_channels=4,
    num_attention_heads=2,
    attention_head_dim=16,
    num_layers=3,
    num_refiner_layers=1,
    mlp_ratio=2.0,
    patch_size=1,
    patch_size_t=1,
    text_embed_dim=16,
    text_embed_2_dim=32,
    image_embed_dim=12,
    rope_axes_dim=(4, 6, 6),
    target_size=64,
    task_type="t2v",
)
SMALL_VAE = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    block_out_channels=(16, 16, 16, 16, 16),
    layers_per_block=1,
    spatial_compression_ratio=16,
    temporal_compression_ratio=4,
    downsample_match_channel=False,
    upsample_match_channel=False,
)
SMALL_QWEN = dict(
    hidden_size=16,
    intermediate_size=16,
    num_hidden_layers=3,
    num_attention_heads=2,
    num_key_value_heads=2,
    rope_scaling={"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
    rope_theta=1000000.0,
)
SMALL_BYT5 = dict(d_model=32, d_kv=16, d_ff=64, num_layers=1, num_heads=2, relative_attention_num_buckets=8)
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }} {{ message['content'] }}<|im_end|> "
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant {% endif %}"
)


def make_small_hunyuan_video15_folder(
    folder: str | Path, seed: int = 0, guidance_scale: float = 6.0, sizes: dict | None = None
) -> Path:
    """A complete diffusers HunyuanVideo 1.5 text-to-video folder with random weights and small dimensions: a
    three-layer Qwen2.5-VL text model with a word-level tokenizer in a chat template, a one-layer ByT5 (its byte
    tokenizer needs no files), a 16x VAE, the released flow shift (5) and a CFG guider.  Loads with
    HunyuanVideo15Pipeline.from_pretrained and load_pipeline like a released folder.  ``sizes``: other configs by
    component ("transformer", "text_encoder", "text_encoder_2") and card "defaults" (``bench_folder``'s released
    shapes)."""
    from diffusers import (  # deferred: diffusers
        AutoencoderKLHunyuanVideo15,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideo15Pipeline,
        HunyuanVideo15Transformer3DModel,
    )
    from diffusers.guiders import ClassifierFreeGuidance  # deferred: diffusers
    from transformers import (  # deferred: transformers
        ByT5Tokenizer,
        Qwen2_5_VLTextConfig,
        Qwen2_5_VLTextModel,
        T5Config,
        T5EncoderModel,
    )

    folder = Path(folder)
    torch.manual_seed(seed)
    tokenizer = word_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer_2 = ByT5Tokenizer()
    special = dict(vocab_size=len(tokenizer), bos_token_id=1, eos_token_id=1, pad_token_id=0)
    sizes = sizes or {}
    text_encoder = Qwen2_5_VLTextModel(Qwen2_5_VLTextConfig(**special, **sizes.get("text_encoder", SMALL_QWEN)))
    text_encoder_2 = T5EncoderModel(T5Config(vocab_size=len(tokenizer_2), **sizes.get("text_encoder_2", SMALL_BYT5)))
    pipe = HunyuanVideo15Pipeline(
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=HunyuanVideo15Transformer3DModel(**sizes.get("transformer", SMALL_TRANSFORMER)),
        vae=AutoencoderKLHunyuanVideo15(**SMALL_VAE),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0),
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        guider=ClassifierFreeGuidance(guidance_scale=guidance_scale),
    )
    pipe.save_pretrained(folder)
    card = {
        "kind": "hunyuan_video15",
        "defaults": sizes.get("defaults", {"num_frames": 9, "height": 64, "width": 64, "steps": 6}),
        "video": {"fps": 24, "upscale": 1},
    }
    (folder / "ditfarm_model.json").write_text(json.dumps(card, indent=2) + "\n")
    return folder
