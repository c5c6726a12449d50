"""HunyuanVideo 1.0 text-to-video (diffusers' HunyuanVideoPipeline folders): its Llama and CLIP text encoders,
HunyuanVideo VAE and transformer driven by ditfarm's loop, rendering what diffusers renders for the same folder,
prompt, seed and sizes.

What exactness depends on, as diffusers' ``HunyuanVideoPipeline.__call__`` does it: the prompt set in the Llama
template, padded, encoded with its mask, the third hidden state from the end taken and the template cropped off;
CLIP's pooled output of the prompt; ``guidance_scale`` embedded (times 1000), with no negative pass; sigmas
``linspace(1, 0, steps + 1)[:-1]`` given to the flow-matching scheduler (which shifts them); decoding
``latents / scaling_factor``.

The text is kept at its valid tokens: diffusers' mask makes every padded text token invisible to every other token
(the transformer's joint attention masks them as keys; the token refiner also, and pools over valid tokens only),
so with one video per call dropping them computes the same video, on a shorter sequence, and lets a gang's
joint attention run without a mask.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..base import DiffusersPipelineMixin, VideoDefaults
from ..cache_card import shipped_profile
from ..checks import ModelChecks, card_limits, check_limits, check_nonempty_prompt
from ..conditioning import Conditioning
from ..denoise import FlowMatchSteps, SamplerSettings
from ..family import Family, LoadOptions, register_family
from ..folder_checks import DiffusersLayout, ModelFolderError, check_diffusers_folder
from ..memory import minimum_video_bytes
from ..precision import resolve_precision
from ..word_tokenizer import word_tokenizer

HUNYUAN_DEFAULTS = SamplerSettings(num_frames=129, height=720, width=1280, steps=50, guidance_scale=6.0)
HUNYUAN_VIDEO = VideoDefaults(fps=24, upscale=1)  # HunyuanVideo's own sampling script writes 24-fps videos
HUNYUAN_LIMITS = {"height": 1280, "width": 1280}
MAX_SEQUENCE_LENGTH = 256  # diffusers' default: Llama tokens after the template's crop

HUNYUAN_LAYOUT = DiffusersLayout(
    what="a HunyuanVideo text-to-video folder",
    components=("transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "scheduler"),
    weights={
        "transformer": ("diffusion_pytorch_model", "diffusers", "HunyuanVideoTransformer3DModel"),
        "vae": ("diffusion_pytorch_model", "diffusers", "AutoencoderKLHunyuanVideo"),
        "text_encoder": ("model", "transformers", "LlamaModel"),
        "text_encoder_2": ("model", "transformers", "CLIPTextModel"),
    },
)


def vae_factors(vae_config: dict) -> tuple[int, int]:
    """(temporal, spatial) compression of a HunyuanVideo VAE, from its config."""
    return int(vae_config.get("temporal_compression_ratio", 4)), int(vae_config.get("spatial_compression_ratio", 8))


def check_sizes(settings: SamplerSettings, temporal: int, spatial: int, patch: int, limits: dict) -> None:
    """Frames 4k + 1 (the VAE's temporal factor: other counts decode to fewer frames than asked), height and width
    multiples of VAE x patch (diffusers' check: 16), within the limits."""
    if (settings.num_frames - 1) % temporal:
        raise ValueError(f"num_frames must be {temporal}k + 1 for this VAE, got {settings.num_frames}")
    multiple = spatial * patch
    if settings.height % multiple or settings.width % multiple:
        raise ValueError(
            f"height and width must be multiples of {multiple} (VAE {spatial}x times patch {patch}), "
            f"got {settings.height}x{settings.width}"
        )
    check_limits(settings, limits)


def refuse_negative_prompt(text: str) -> None:
    """HunyuanVideo 1.0 is guidance-distilled: ``guidance_scale`` is embedded and no negative pass runs, so a
    negative prompt would change nothing; a row that gives one is told so rather than silently rendered without."""
    if text:
        raise ValueError(
            "HunyuanVideo renders with embedded guidance (guidance_scale) and no negative pass: a negative prompt "
            "would be ignored; remove it from the row"
        )


def valid_text(embeds: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The text's valid tokens (see the module docstring): the embeddings and mask cut at the mask's count, where
    the mask is right padding (ones, then zeros); any other mask is kept as it is.  A text with no valid token
    (HunyuanVideo 1.5's ByT5 text of a prompt that quotes nothing) keeps one, masked."""
    count = int(mask[0].sum())
    if mask.shape[0] != 1 or not bool(mask[0, :count].all()):
        return embeds, mask
    keep = max(count, 1)
    return embeds[:, :keep], mask[:, :keep]


class HunyuanVideoSteps(FlowMatchSteps):
    """HunyuanVideo's sampling as diffusers' pipeline runs it: sigmas ``linspace(1, 0, steps + 1)[:-1]`` for the
    flow-matching scheduler, the float timestep and the embedded guidance (scale x 1000, in the transformer's
    dtype) with every call."""

    def __init__(self, transformer, scheduler, guidance_scale: float):
        super().__init__(transformer, scheduler)
        self.guidance_scale = guidance_scale

    def set_timesteps(self, steps: int, device: torch.device) -> None:
        self.scheduler.set_timesteps(sigmas=hunyuan_sigmas(steps), device=device)

    def inputs(self, i: int, t, latents: torch.Tensor, branch: dict[str, torch.Tensor]) -> dict:
        batch = latents.shape[0]
        guidance = torch.tensor([self.guidance_scale] * batch, dtype=self.dtype, device=latents.device) * 1000.0
        return {
            "hidden_states": latents.to(self.dtype),
            "timestep": t.expand(batch).to(latents.dtype),
            "guidance": guidance,
            **branch,
        }


def hunyuan_sigmas(steps: int) -> np.ndarray:
    return np.linspace(1.0, 0.0, steps + 1)[:-1]


class HunyuanVideoPipelineWrapper(DiffusersPipelineMixin):
    """Renders free-text prompts with a HunyuanVideo 1.0 model folder."""

    classifier_free_guidance = False

    def __init__(self, pipe, folder: str, defaults, video: VideoDefaults, card: dict, factors, offload: bool):
        self.pipe = pipe
        self.folder = folder
        self.defaults = defaults
        self.video = video
        self.model_name = Path(folder).name
        self.max_sequence_length = card.get("max_sequence_length", MAX_SEQUENCE_LENGTH)
        self.vae_factors = factors  # (temporal, spatial), from the VAE's config even where no VAE is loaded
        self.limits = card_limits(card, HUNYUAN_LIMITS, str(Path(folder) / "ditfarm_model.json"))
        self.offload_text_encoder = offload

    @classmethod
    def from_folder(cls, folder: Path, card: dict, options: LoadOptions, defaults: SamplerSettings, video):
        """``options.encode_and_decode=False`` loads the transformer alone; ``options.offload_text_encoder`` keeps
        both text encoders in host memory, visiting the device only while they encode."""
        from diffusers import AutoencoderKLHunyuanVideo, HunyuanVideoPipeline  # deferred: diffusers
        from transformers import CLIPTextModel, LlamaModel  # deferred: transformers

        folder = Path(folder)
        precision = resolve_precision(options.dtype, options.device)
        if options.encode_and_decode:
            components = dict(
                vae=AutoencoderKLHunyuanVideo.from_pretrained(folder / "vae", dtype=precision.vae),
                text_encoder=LlamaModel.from_pretrained(folder / "text_encoder", dtype=precision.text_encoder),
                text_encoder_2=CLIPTextModel.from_pretrained(folder / "text_encoder_2", dtype=precision.text_encoder),
            )
        else:
            components = dict(vae=None, text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None)
        pipe = HunyuanVideoPipeline.from_pretrained(folder, dtype=precision.transformer, **components)
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

    def check_negative_prompt(self, text: str) -> None:
        refuse_negative_prompt(text)

    def check_sizes(self, settings: SamplerSettings) -> None:
        check_sizes(settings, *self.vae_factors, self.transformer.config.patch_size, self.limits)

    def latent_shape(self, settings: SamplerSettings) -> tuple[int, ...]:
        temporal, spatial = self.vae_factors
        frames = (settings.num_frames - 1) // temporal + 1
        channels = self.transformer.config.in_channels
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
        """The Llama embeddings of the templated prompt at its valid tokens, their mask and CLIP's pooled output:
        one branch (guidance is embedded)."""
        if not self.holds_text_encoder:
            raise RuntimeError("this pipeline was loaded without its text encoder (a gang rank other than 0)")
        refuse_negative_prompt(negative_prompt)
        encoders = (self.pipe.text_encoder, self.pipe.text_encoder_2)
        device, dtype = self.execution_device, self.transformer.dtype
        if self.offload_text_encoder:
            for encoder in encoders:
                encoder.to(device)
        try:
            embeds, pooled, mask = self.pipe.encode_prompt(
                prompt=prompt, device=device, max_sequence_length=self.max_sequence_length
            )
        finally:
            if self.offload_text_encoder:
                for encoder in encoders:
                    encoder.to("cpu")
        embeds, mask = valid_text(embeds, mask)
        return Conditioning(
            {
                "encoder_hidden_states": embeds.to(dtype),
                "encoder_attention_mask": mask.to(dtype),
                "pooled_projections": pooled.to(dtype),
            }
        )

    def denoise_steps(self, settings: SamplerSettings, generator: torch.Generator) -> HunyuanVideoSteps:
        return HunyuanVideoSteps(self.transformer, self.scheduler, settings.guidance_scale)

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
class HunyuanVideoFamily(Family):
    name = "hunyuan_video"
    renders = "HunyuanVideo 1.0 text-to-video"
    pipeline_classes = ("HunyuanVideoPipeline",)
    transformer_classes = ("HunyuanVideoTransformer3DModel",)
    defaults = HUNYUAN_DEFAULTS
    video = HUNYUAN_VIDEO

    def check_folder(self, folder: Path) -> dict:
        card = check_diffusers_folder(folder, HUNYUAN_LAYOUT)
        config = Path(folder) / "transformer" / "config.json"
        condition = json.loads(config.read_text()).get("image_condition_type")
        if condition is not None:
            raise ModelFolderError(
                f"{config}: image_condition_type is {condition!r} (an image-to-video transformer): not supported "
                "yet; ditfarm renders HunyuanVideo text-to-video"
            )
        return card

    def load(self, folder: Path, card: dict, options: LoadOptions) -> HunyuanVideoPipelineWrapper:
        return HunyuanVideoPipelineWrapper.from_folder(
            folder, card, options, self.sampler_defaults(card), self.video_defaults(card)
        )

    def small_folders(self, root: Path) -> dict[str, Path]:
        return {"1.0": make_small_hunyuan_video_folder(Path(root) / "1.0")}

    def bench_folder(self, root: Path, blocks: int) -> tuple[Path, int, int]:
        """HunyuanVideo's released transformer config (diffusers' class defaults: 20 dual- and 40 single-stream
        blocks) with ``blocks`` dual- and 2 x ``blocks`` single-stream blocks, text encoders of its text widths
        (two-layer Llama, one-layer CLIP), at its default video size: (folder, blocks built, blocks released)."""
        transformer = {"num_layers": blocks, "num_single_layers": 2 * blocks}
        llama = dict(hidden_size=4096, intermediate_size=1024, num_attention_heads=32, num_hidden_layers=2)
        clip = dict(hidden_size=768, intermediate_size=512, num_attention_heads=12, num_hidden_layers=1)
        sizes = dict(
            transformer=transformer,
            text_encoder=llama,
            text_encoder_2={**clip, "projection_dim": 768},
            defaults=dict(HUNYUAN_DEFAULTS.__dict__),
            max_sequence_length=MAX_SEQUENCE_LENGTH,
        )
        return make_small_hunyuan_video_folder(Path(root) / "hunyuan-video", sizes=sizes), 3 * blocks, 60

    def checks(self, folder: Path, card: dict) -> ModelChecks:
        folder = Path(folder)
        patch = json.loads((folder / "transformer" / "config.json").read_text()).get("patch_size", 2)
        factors = vae_factors(json.loads((folder / "vae" / "config.json").read_text()))
        limits = card_limits(card, HUNYUAN_LIMITS, str(folder / "ditfarm_model.json"))
        return ModelChecks(
            self.sampler_defaults(card),
            lambda s: check_sizes(s, *factors, patch, limits),
            check_nonempty_prompt,
            None,
            shipped_profile(folder),
            video=self.video_defaults(card),
            check_negative_prompt=refuse_negative_prompt,
            classifier_free_guidance=False,
        )


SMALL_TRANSFORMER = dict(
    in_channels=4,
    out_channels=4,
    num_attention_heads=2,
    attention_head_dim=16,
    num_layers=1,
    num_single_layers=2,
    num_refiner_layers=1,
    patch_size=2,
    patch_size_t=1,
    guidance_embeds=True,
    text_embed_dim=16,
    pooled_projection_dim=8,
    rope_axes_dim=(4, 6, 6),
)
SMALL_VAE = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    down_block_types=("HunyuanVideoDownBlock3D",) * 4,
    up_block_types=("HunyuanVideoUpBlock3D",) * 4,
    block_out_channels=(8, 8, 8, 8),
    layers_per_block=1,
    act_fn="silu",
    norm_num_groups=4,
    scaling_factor=0.476986,
    spatial_compression_ratio=8,
    temporal_compression_ratio=4,
    mid_block_add_attention=True,
)
SMALL_LLAMA = dict(hidden_size=16, intermediate_size=37, num_attention_heads=4, num_hidden_layers=3)
SMALL_CLIP = dict(hidden_size=8, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, projection_dim=8)


def make_small_hunyuan_video_folder(folder: str | Path, seed: int = 0, sizes: dict | None = None) -> Path:
    """A complete diffusers HunyuanVideo folder with random weights and small dimensions: a three-layer Llama, a
    two-layer CLIP, word-level tokenizers, the released flow shift (7).  Loads with
    HunyuanVideoPipeline.from_pretrained and load_pipeline like a released folder.  ``sizes``: other configs by
    component ("transformer", "text_encoder", "text_encoder_2"), card "defaults" and "max_sequence_length"
    (``bench_folder``'s released shapes)."""
    from diffusers import (  # deferred: diffusers
        AutoencoderKLHunyuanVideo,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideoPipeline,
        HunyuanVideoTransformer3DModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel  # deferred: transformers

    folder = Path(folder)
    torch.manual_seed(seed)
    tokenizer, tokenizer_2 = word_tokenizer(), word_tokenizer()
    special = dict(bos_token_id=1, eos_token_id=1, pad_token_id=0, vocab_size=len(tokenizer))
    sizes = sizes or {}
    text_encoder = LlamaModel(LlamaConfig(**sizes.get("text_encoder", SMALL_LLAMA), **special))
    text_encoder_2 = CLIPTextModel(CLIPTextConfig(**sizes.get("text_encoder_2", SMALL_CLIP), **special))
    pipe = HunyuanVideoPipeline(
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=HunyuanVideoTransformer3DModel(**sizes.get("transformer", SMALL_TRANSFORMER)),
        vae=AutoencoderKLHunyuanVideo(**SMALL_VAE),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
    )
    pipe.save_pretrained(folder)
    card = {
        "kind": "hunyuan_video",
        "defaults": sizes.get(
            "defaults", {"num_frames": 9, "height": 64, "width": 64, "steps": 6, "guidance_scale": 6.0}
        ),
        "max_sequence_length": sizes.get("max_sequence_length", 16),
        "video": {"fps": 24, "upscale": 1},
    }
    (folder / "ditfarm_model.json").write_text(json.dumps(card, indent=2) + "\n")
    return folder
