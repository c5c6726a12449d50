"""Wan text-to-video: diffusers' WanPipeline folders (UMT5 text encoder, Wan VAE, WanTransformer3DModel, a
flow-matching scheduler) driven by ditfarm's own denoising loop, so caches and sequence parallelism attach to the
transformers exactly as for ``tiny``.

One pipeline class covers three kinds of folder, told apart by model_index.json as diffusers tells them
(``WanVariant``): Wan2.1 (one transformer); Wan2.2 A14B (``transformer``, the high-noise expert, runs while the
timestep is at least ``boundary_ratio`` x the scheduler's training timesteps, then ``transformer_2``, the
low-noise expert, at ``guidance_scale_2``); Wan2.2 TI2V-5B (``expand_timesteps``: a timestep per token, and a
48-channel VAE compressing 16x in space).  ``WanSteps`` declares that to the loop; caches count each expert's
steps within its own segment (the cache context's step index), so a policy warms up on each expert and never
reuses a feature across the switch.

``make_small_wan_folder`` and its Wan2.2 siblings write such folders with random weights and tiny dimensions, so
the real code path is tested here without any download.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..adapters import mark_identity
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
from ..denoise import FlowMatchSteps, SamplerSettings
from ..family import Family, LoadOptions, register_family
from ..folder_checks import DiffusersLayout, ModelFolderError, check_diffusers_folder, read_json
from ..precision import resolve_precision
from ..word_tokenizer import word_tokenizer

WAN_DEFAULTS = SamplerSettings(num_frames=81, height=480, width=832, steps=50, guidance_scale=5.0)
WAN_VIDEO = VideoDefaults(fps=16, upscale=1)  # Wan2.1 is trained on 16-fps clips and decodes at full size
MAX_SEQUENCE_LENGTH = 512


@dataclass(frozen=True)
class WanVariant:
    """What kind of Wan folder it is, read from its model_index.json as diffusers' WanPipeline reads it, and the
    defaults its release samples with (Wan2.2's own configs: A14B at 720p, 40 steps, guidance 4.0 for the
    high-noise expert and 3.0 for the low-noise one; TI2V-5B at 704x1280, 121 frames, 24 fps)."""

    name: str
    defaults: SamplerSettings
    video: VideoDefaults
    boundary_ratio: float | None = None  # set: two experts, switching at this share of the training timesteps
    expand_timesteps: bool = False  # a timestep per token (TI2V-5B)

    @property
    def experts(self) -> int:
        return 1 if self.boundary_ratio is None else 2


WAN21_T2V = WanVariant("Wan2.1 text-to-video", WAN_DEFAULTS, WAN_VIDEO)
WAN22_A14B = WanVariant(
    "Wan2.2 A14B text-to-video (two experts)",
    SamplerSettings(num_frames=81, height=720, width=1280, steps=40, guidance_scale=4.0, guidance_scale_2=3.0),
    VideoDefaults(fps=16, upscale=1),
)
WAN22_TI2V = WanVariant(
    "Wan2.2 TI2V-5B text-to-video",
    SamplerSettings(num_frames=121, height=704, width=1280, steps=50, guidance_scale=5.0),
    VideoDefaults(fps=24, upscale=1),
)


def _named(entry) -> bool:
    return isinstance(entry, list) and bool(entry) and entry[0] is not None


def read_variant(folder: Path) -> WanVariant:
    """The folder's kind; a two-expert folder without its switch (or a switch without a second expert) is refused
    by name: diffusers would never run the second expert, or fail at the switch."""
    index_path = Path(folder) / "model_index.json"
    index = read_json(index_path, "a diffusers model folder names its components there")
    two, boundary = _named(index.get("transformer_2")), index.get("boundary_ratio")
    expand = bool(index.get("expand_timesteps"))
    if two and boundary is None:
        raise ModelFolderError(
            f"{index_path}: names a second expert (transformer_2) but no boundary_ratio, the share of the noise "
            "levels the first expert denoises; diffusers would never run the second expert"
        )
    if boundary is not None and not two:
        raise ModelFolderError(
            f"{index_path}: boundary_ratio={boundary!r} switches to a second expert, but the folder names no "
            "transformer_2"
        )
    if boundary is None:
        return WAN22_TI2V if expand else WAN21_T2V
    if not isinstance(boundary, (int, float)) or not 0.0 < boundary <= 1.0:
        raise ModelFolderError(f"{index_path}: boundary_ratio must be a number in (0, 1], got {boundary!r}")
    return replace(WAN22_A14B, boundary_ratio=float(boundary), expand_timesteps=expand)


class WanSteps(FlowMatchSteps):
    """Wan's sampling as diffusers' WanPipeline runs it: at step i the high-noise expert (``transformers[0]``) while
    t >= boundary x num_train_timesteps, else the low-noise one at ``guidance_scale_2``; a timestep per latent
    token where the folder expands them.  Each expert's caches see the steps of its own segment (step 0 is the
    first step it runs, the segment's length its step count), so warm-ups and schedules restart at the switch and
    nothing cached by one expert is offered to the other."""

    def __init__(
        self,
        transformers: list[torch.nn.Module],
        scheduler,
        boundary_ratio: float | None,
        guidance_scale_2: float,
        expand_timesteps: bool,
        condition=None,
        offload_to: torch.device | None = None,
    ):
        super().__init__(transformers[0], scheduler, condition)
        self.experts, self.boundary_ratio = transformers, boundary_ratio
        self.guidance_scale_2, self.expand_timesteps = guidance_scale_2, expand_timesteps
        self.offload_to = offload_to  # set: one expert at a time on this device, the other in host memory
        self.on_device = transformers[0]  # between videos the high-noise expert waits on the device
        self.expert_of: list[int] = []

    def schedule(self, steps: int, start_step: int, device: torch.device):
        timesteps = super().schedule(steps, start_step, device)
        if self.boundary_ratio is None:
            self.expert_of = [0] * len(timesteps)
        else:
            boundary = self.boundary_ratio * self.scheduler.config.num_train_timesteps
            self.expert_of = [0 if float(t) >= boundary else 1 for t in timesteps]
        return timesteps

    def transformer_at(self, i: int) -> torch.nn.Module:
        expert = self.experts[self.expert_of[i]]
        if self.offload_to is not None:
            self._on_device(expert)
        return expert

    def _on_device(self, expert: torch.nn.Module) -> None:
        """Offloaded experts: the idle one goes to host memory before the one in use comes in (never both on the
        device)."""
        if expert is self.on_device:
            return
        for other in self.experts:
            if other is not expert:
                other.to("cpu")
        expert.to(self.offload_to)
        self.on_device = expert

    def release(self) -> None:
        if self.offload_to is not None:  # ready for the next video, which starts at high noise
            self._on_device(self.experts[0])
        super().release()

    def transformers(self) -> list[torch.nn.Module]:
        return list(self.experts)

    def guidance_at(self, i: int, guidance_scale: float) -> float:
        return guidance_scale if self.expert_of[i] == 0 else self.guidance_scale_2

    def context(self, i: int) -> dict:
        expert = self.expert_of[i]
        start = self.expert_of.index(expert)
        return {
            **super().context(i),
            "step_index": i - start,
            "num_inference_steps": self.expert_of.count(expert),
        }

    def inputs(self, i: int, t, latents: torch.Tensor, branch: dict[str, torch.Tensor]) -> dict:
        inputs = super().inputs(i, t, latents, branch)
        if self.expand_timesteps:  # every token at t (diffusers' mask of ones, one entry per patch)
            _, p_h, p_w = self.transformer.config.patch_size
            grid = torch.ones(latents.shape[2:], dtype=torch.float32, device=latents.device)[:, ::p_h, ::p_w]
            inputs["timestep"] = (grid * t).flatten().unsqueeze(0).expand(latents.shape[0], -1)
        return inputs


class WanVideoPipeline(DiffusersPipelineMixin):
    """Renders free-text prompts with a Wan2.1 or Wan2.2 text-to-video folder (``variant``)."""

    def __init__(
        self,
        pipe,
        folder: str | None = None,
        defaults: SamplerSettings = WAN_DEFAULTS,
        max_sequence_length: int = MAX_SEQUENCE_LENGTH,
        video: VideoDefaults = WAN_VIDEO,
        vae_factors: tuple[int, int] = (4, 8),
        offload_text_encoder: bool = False,
        variant: WanVariant = WAN21_T2V,
    ):
        self.pipe = pipe
        self.variant = variant
        self.expert_device = None  # set: experts are offloaded, the one in use moves here
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
        variant = read_variant(folder)
        pipe = WanPipeline.from_pretrained(folder, dtype=precision.transformer, **components)
        pipe.transformer.to(device)
        if variant.experts == 2:  # the low-noise expert: its own identity, so no profile of the first fits it
            pipe.transformer_2.to("cpu" if options.offload_experts else device)
            mark_identity(pipe.transformer_2, component="transformer_2")
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
            variant,
        )
        made.expert_device = torch.device(device) if options.offload_experts and variant.experts == 2 else None
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
        return (1, self.transformer.config.out_channels, ls.num_frames, ls.height, ls.width)

    def denoise_steps(self, settings: SamplerSettings, generator: torch.Generator) -> WanSteps:
        return WanSteps(
            list(self.transformers().values()),
            self.scheduler,
            self.variant.boundary_ratio,
            settings.second_guidance_scale,
            self.variant.expand_timesteps,
            self.transformer_condition,
            self.expert_device,
        )

    @property
    def execution_device(self) -> torch.device:
        return self.expert_device if self.expert_device is not None else super().execution_device

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


def wan_layout(variant: WanVariant) -> DiffusersLayout:
    """What a folder of ``variant`` must hold: a two-expert folder's second transformer too."""
    experts = ("transformer", "transformer_2")[: variant.experts]
    return DiffusersLayout(
        what=f"a {variant.name} folder",
        components=(*experts, "vae", "text_encoder", "tokenizer", "scheduler"),
        weights={
            **{name: ("diffusion_pytorch_model", "diffusers", "WanTransformer3DModel") for name in experts},
            "vae": ("diffusion_pytorch_model", "diffusers", "AutoencoderKLWan"),
            "text_encoder": ("model", "transformers", "UMT5EncoderModel"),
        },
        unsupported={
            "image_encoder": "an image encoder (image-to-video)",
            "image_processor": "an image processor (image-to-video)",
        },
        fields=("boundary_ratio", "expand_timesteps"),
    )


@register_family
class WanFamily(Family):
    name = "wan"
    renders = "Wan2.1 and Wan2.2 text-to-video: one transformer, Wan2.2 A14B's two experts, TI2V-5B"
    pipeline_classes = ("WanPipeline",)
    transformer_classes = ("WanTransformer3DModel",)
    defaults = WAN_DEFAULTS
    video = WAN_VIDEO
    # ERTACache's paper settles lambda 0.08 for Wan2.1-1.3B at 50 steps; the other policies' published settings are
    # not per model, and ditfarm's global table holds them
    cache_defaults = {"ertacache": 0.08}

    def check_folder(self, folder: Path) -> dict:
        return check_diffusers_folder(folder, wan_layout(read_variant(folder)))

    def load(self, folder: Path, card: dict, options: LoadOptions) -> WanVideoPipeline:
        variant = read_variant(folder)
        return WanVideoPipeline.from_folder(
            folder,
            card,
            options,
            self.sampler_defaults(card, variant.defaults),
            self.video_defaults(card, variant.video),
        )

    def small_folders(self, root: Path) -> dict[str, Path]:
        root = Path(root)
        return {
            "wan2.1-t2v": make_small_wan_folder(root / "wan2.1-t2v"),
            "wan2.2-t2v-a14b": make_small_wan22_a14b_folder(root / "wan2.2-t2v-a14b"),
            "wan2.2-ti2v-5b": make_small_wan22_ti2v_folder(root / "wan2.2-ti2v-5b"),
        }

    def checks(self, folder: Path, card: dict) -> ModelChecks:
        variant = read_variant(folder)
        transformer = json.loads((folder / "transformer" / "config.json").read_text())
        patch = tuple(transformer.get("patch_size", (1, 2, 2)))
        rope = transformer.get("rope_max_seq_len", DEFAULT_ROPE_POSITIONS)
        temporal, spatial = wan_vae_factors(json.loads((folder / "vae" / "config.json").read_text()))
        limits = card_limits(card, WAN_LIMITS, str(folder / "ditfarm_model.json"))
        return ModelChecks(
            self.sampler_defaults(card, variant.defaults),
            lambda s: check_wan_sizes(s, temporal, spatial, patch, rope, limits),
            check_nonempty_prompt,
            None,
            shipped_profile(folder),
            video=self.video_defaults(card, variant.video),
            experts=variant.experts,
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


def make_small_wan22_a14b_folder(folder: str | Path, seed: int = 0, layers: int = 4) -> Path:
    """A small Wan2.2 A14B-style folder: two experts of the small transformer with different weights,
    ``boundary_ratio`` 0.875 and the released folders' UniPC flow scheduler (shift 12, as Wan2.2's A14B
    text-to-video samples)."""
    card = {
        "kind": "wan",
        "defaults": {
            "num_frames": 9,
            "height": 64,
            "width": 64,
            "steps": 10,
            "guidance_scale": 4.0,
            "guidance_scale_2": 3.0,
        },
        "max_sequence_length": 32,
        "video": {"fps": 16, "upscale": 1},
    }
    transformer = {**SMALL_TRANSFORMER, "num_layers": layers}
    return make_wan_folder(
        folder,
        transformer,
        SMALL_TEXT_ENCODER,
        SMALL_VAE,
        card,
        seed=seed,
        transformer_2_config=transformer,
        boundary_ratio=0.875,
        scheduler=unipc_flow_scheduler(12.0),
    )


SMALL_VAE_48 = dict(  # Wan2.2's 48-channel VAE: patchified input (2x) on three downsampling stages, 16x in space
    base_dim=8,
    z_dim=48,
    in_channels=12,
    out_channels=12,
    is_residual=True,
    patch_size=2,
    latents_mean=[0.0] * 48,
    latents_std=[1.0] * 48,
    dim_mult=[1, 2, 2, 2],
    num_res_blocks=1,
    scale_factor_spatial=16,
    scale_factor_temporal=4,
    temperal_downsample=[False, True, True],
)


def make_small_wan22_ti2v_folder(folder: str | Path, seed: int = 0, layers: int = 4) -> Path:
    """A small Wan2.2 TI2V-5B-style folder: the 48-channel, 16x VAE, a transformer reading 48 channels with a
    timestep per token (``expand_timesteps``), UniPC flow at shift 5 as TI2V-5B samples."""
    card = {
        "kind": "wan",
        "defaults": {"num_frames": 9, "height": 64, "width": 64, "steps": 10, "guidance_scale": 5.0},
        "max_sequence_length": 32,
        "video": {"fps": 24, "upscale": 1},
    }
    transformer = {**SMALL_TRANSFORMER, "num_layers": layers, "in_channels": 48, "out_channels": 48}
    return make_wan_folder(
        folder,
        transformer,
        SMALL_TEXT_ENCODER,
        SMALL_VAE_48,
        card,
        seed=seed,
        expand_timesteps=True,
        scheduler=unipc_flow_scheduler(5.0),
    )


def unipc_flow_scheduler(shift: float):
    """The scheduler Wan's released diffusers folders ship: UniPC on flow sigmas at the given shift."""
    from diffusers import UniPCMultistepScheduler  # deferred: diffusers

    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift)


def make_wan_folder(
    folder: str | Path,
    transformer_config: dict,
    text_encoder_config: dict,
    vae_config: dict,
    card: dict | None = None,
    seed: int = 0,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    transformer_2_config: dict | None = None,
    boundary_ratio: float | None = None,
    expand_timesteps: bool = False,
    scheduler=None,
) -> Path:
    """A diffusers Wan folder with random weights of the given component configs (the real Wan2.1 ones in
    ``wan_configs`` give the real shapes) and a word-level tokenizer of ``WORDS`` (the encoder's vocabulary
    is the config's; the tokenizer only uses its first ids).  ``device`` builds the weights there (fast for
    billions of parameters on a GPU); the transformer and text encoder are saved in ``dtype``, the VAE in
    float32.  ``transformer_2_config`` and ``boundary_ratio``: a second expert (Wan2.2 A14B);
    ``expand_timesteps``: a timestep per token (TI2V-5B); ``scheduler``: Euler flow matching at shift 3 unless
    given."""
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
        transformer_2 = WanTransformer3DModel(**transformer_2_config) if transformer_2_config else None
    if dtype != torch.float32:  # loading with dtype=float32 later upcasts what Wan keeps in float32
        text_encoder, transformer = text_encoder.to(dtype), transformer.to(dtype)
        transformer_2 = transformer_2.to(dtype) if transformer_2 is not None else None
    pipe = WanPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        transformer=transformer,
        scheduler=scheduler if scheduler is not None else FlowMatchEulerDiscreteScheduler(shift=3.0),
        transformer_2=transformer_2,
        boundary_ratio=boundary_ratio,
        expand_timesteps=expand_timesteps,
    )
    pipe.save_pretrained(folder)
    if card is not None:
        (folder / "ditfarm_model.json").write_text(json.dumps(card, indent=2) + "\n")
    return folder
