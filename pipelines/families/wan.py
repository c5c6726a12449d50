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
import threading
from dataclasses import dataclass, replace
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
from ..denoise import SIGMA_SCHEDULE_ATTR, FlowMatchSteps, SamplerSettings, apply_sigma_schedule, transformer_input
from ..family import Family, LoadOptions, register_family
from ..folder_checks import DiffusersLayout, ModelFolderError, check_diffusers_folder, read_json
from ..precision import resolve_precision
from ..wan_configs import CLIP_VIT_H_14, WAN21_14B, WAN21_I2V_14B, WAN22_TI2V_5B, WAN22_VAE
from ..word_tokenizer import word_tokenizer

WAN_DEFAULTS = SamplerSettings(num_frames=81, height=480, width=832, steps=50, guidance_scale=5.0)
WAN_VIDEO = VideoDefaults(fps=16, upscale=1)  # Wan2.1 is trained on 16-fps clips and decodes at full size
MAX_SEQUENCE_LENGTH = 512


@dataclass(frozen=True)
class WanVariant:
    """What kind of Wan folder it is, read from its model_index.json (and, for first-last-frame, its transformer's
    config) as diffusers' Wan pipelines read them, and the defaults its release samples with (Wan's own configs:
    Wan2.1 image-to-video 40 steps; Wan2.2 A14B at 720p, 40 steps, text-to-video guidance 4.0 for the
    high-noise expert and 3.0 for the low-noise one, image-to-video 3.5 for both; TI2V-5B at 704x1280, 121
    frames, 24 fps)."""

    name: str
    defaults: SamplerSettings
    video: VideoDefaults
    boundary_ratio: float | None = None  # set: two experts, switching at this share of the training timesteps
    expand_timesteps: bool = False  # a timestep per token (TI2V-5B)
    image: str = "none"  # the first frame: "none", "optional" (TI2V-5B) or "required" (image-to-video)
    last_image: str = "none"  # the last frame: "none", "optional" or "required" (first-last-frame)
    image_encoder: bool = False  # CLIP image embeddings beside the text (Wan2.1 image-to-video)
    pipeline_class: str = "WanPipeline"

    @property
    def experts(self) -> int:
        return 1 if self.boundary_ratio is None else 2


WAN_VIDEO_16 = VideoDefaults(fps=16, upscale=1)
WAN21_T2V = WanVariant("Wan2.1 text-to-video", WAN_DEFAULTS, WAN_VIDEO)
WAN22_A14B = WanVariant(
    "Wan2.2 A14B text-to-video (two experts)",
    SamplerSettings(num_frames=81, height=720, width=1280, steps=40, guidance_scale=4.0, guidance_scale_2=3.0),
    WAN_VIDEO_16,
)
WAN22_TI2V = WanVariant(
    "Wan2.2 TI2V-5B text-(image-)to-video",
    SamplerSettings(num_frames=121, height=704, width=1280, steps=50, guidance_scale=5.0),
    VideoDefaults(fps=24, upscale=1),
    expand_timesteps=True,
    image="optional",
)
I2V = "WanImageToVideoPipeline"
WAN21_I2V = WanVariant(
    "Wan2.1 image-to-video",
    SamplerSettings(num_frames=81, height=480, width=832, steps=40, guidance_scale=5.0),
    WAN_VIDEO_16,
    image="required",
    image_encoder=True,
    pipeline_class=I2V,
)
WAN21_FLF2V = replace(
    WAN21_I2V,
    name="Wan2.1 first-last-frame-to-video",
    defaults=SamplerSettings(num_frames=81, height=720, width=1280, steps=50, guidance_scale=5.0),
    last_image="required",
)
WAN22_I2V_A14B = WanVariant(
    "Wan2.2 A14B image-to-video (two experts)",
    SamplerSettings(num_frames=81, height=720, width=1280, steps=40, guidance_scale=3.5, guidance_scale_2=3.5),
    WAN_VIDEO_16,
    image="required",
    last_image="optional",
    pipeline_class=I2V,
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
    if boundary is not None and (not isinstance(boundary, (int, float)) or not 0.0 < boundary <= 1.0):
        raise ModelFolderError(f"{index_path}: boundary_ratio must be a number in (0, 1], got {boundary!r}")
    if expand:  # TI2V-5B, whichever Wan pipeline class its folder names: text, or a first frame
        variant = WAN22_TI2V
    elif index.get("_class_name") != I2V:
        variant = WAN21_T2V if boundary is None else WAN22_A14B
    elif two:
        variant = WAN22_I2V_A14B
    elif _named(index.get("image_encoder")):
        variant = WAN21_FLF2V if _first_last_frame(folder) else WAN21_I2V
    else:
        raise ModelFolderError(
            f"{index_path}: an image-to-video folder with one transformer needs its image_encoder (Wan2.1 "
            "image-to-video); ditfarm renders Wan2.1 image-to-video and first-last-frame, and Wan2.2 A14B "
            "image-to-video (two experts)"
        )
    if boundary is not None:
        variant = replace(variant, boundary_ratio=float(boundary), expand_timesteps=expand)
    return replace(variant, pipeline_class=index.get("_class_name", variant.pipeline_class))


def check_wan_images(variant: WanVariant, images: dict) -> None:
    """Refuse, by name, a row's images the folder's kind cannot take, or the ones it needs and the row lacks."""
    given = [name for name in ("image", "last_image") if images.get(name) is not None]
    if given and variant.image == "none":
        raise ValueError(
            f"a {variant.name} folder renders from text alone and takes no {' or '.join(given)} (an "
            "image-to-video folder, or Wan2.2 TI2V-5B, takes a first frame)"
        )
    if variant.image == "required" and "image" not in given:
        raise ValueError(f"a {variant.name} folder renders from a first frame: the row needs an image")
    if "last_image" in given:
        if variant.last_image == "none":
            raise ValueError(f"a {variant.name} folder takes no last_image (a first-last-frame folder does)")
        if "image" not in given:
            raise ValueError("a last_image needs an image (the first frame) beside it")
    elif variant.last_image == "required":
        raise ValueError(f"a {variant.name} folder renders between two frames: the row needs a last_image too")


def _first_last_frame(folder: Path) -> bool:
    """A Wan2.1 first-last-frame transformer: it embeds the two frames' image tokens with positions."""
    config = read_json(Path(folder) / "transformer" / "config.json", "the transformer's config")
    return config.get("pos_embed_seq_len") is not None


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
        self.expert_of: list[int] = []  # per step: which expert runs it
        self.segment_of: list[tuple[int, int]] = []  # per step: (first step, steps) of its expert's segment

    def schedule(self, steps: int, start_step: int, device: torch.device):
        """The scheduler's timesteps, each step's expert decided on them as diffusers decides it; then, where an
        expert's cache shortens the steps it reuses (``SIGMA_SCHEDULE_ATTR``), its factors over its own segment.
        The experts' segments stay those of the scheduled timesteps: a shortened step leaves more noise, which
        would otherwise move the switch away from the steps each expert's calibration was measured on."""
        self.set_timesteps(steps, device)
        timesteps = self.scheduler.timesteps
        if self.boundary_ratio is None:
            self.expert_of = [0] * len(timesteps)
        else:
            boundary = self.boundary_ratio * self.scheduler.config.num_train_timesteps
            self.expert_of = [0 if float(t) >= boundary else 1 for t in timesteps]
        segments = {e: (self.expert_of.index(e), self.expert_of.count(e)) for e in set(self.expert_of)}
        self.segment_of = [segments[e] for e in self.expert_of]
        adjusting = {e: getattr(self.experts[e], SIGMA_SCHEDULE_ATTR, None) for e in segments}
        if any(adjusting.values()):
            factors = np.ones(len(timesteps))
            for e, (start, length) in segments.items():
                if adjusting[e] is not None:
                    factors[start : start + length] = adjusting[e](length)
            apply_sigma_schedule(self.scheduler, factors)
        self.scheduler.set_begin_index(start_step)
        return self.scheduler.timesteps

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
        start, length = self.segment_of[i]
        return {**super().context(i), "step_index": i - start, "num_inference_steps": length}

    def inputs(self, i: int, t, latents: torch.Tensor, branch: dict[str, torch.Tensor]) -> dict:
        """As diffusers' Wan pipelines call the transformer.  An image's condition (``IMAGE_CONDITION``) is, per
        token-timestep folder, the first latent frame held at the image with timestep 0 there; otherwise the
        mask and image latents concatenated to the latents as channels."""
        branch = dict(branch)
        condition = branch.pop(IMAGE_CONDITION, None)
        if condition is not None and not self.expand_timesteps:
            return {
                "hidden_states": transformer_input(self.scheduler, latents, t, condition, self.dtype),
                "timestep": t.expand(latents.shape[0]),
                **branch,
            }
        inputs = super().inputs(i, t, latents, branch)
        if self.expand_timesteps:  # a timestep per patch: t, and 0 on a first frame held at its image
            mask = first_frame_mask(latents, held=condition is not None)
            if condition is not None:
                inputs["hidden_states"] = ((1 - mask) * condition + mask * latents).to(self.dtype)
            _, p_h, p_w = self.transformer.config.patch_size
            grid = mask[0][0][:, ::p_h, ::p_w]
            inputs["timestep"] = (grid * t).flatten().unsqueeze(0).expand(latents.shape[0], -1)
        return inputs

    def finish(self, latents: torch.Tensor, conditioning) -> torch.Tensor:
        condition = conditioning.cond.get(IMAGE_CONDITION)
        if condition is None or not self.expand_timesteps:
            return latents
        mask = first_frame_mask(latents, held=True)  # the held frame is the image's, not what was sampled there
        return (1 - mask) * condition.to(latents) + mask * latents


IMAGE_CONDITION = "image_condition"  # the Conditioning's name for what a first (and last) frame became


def first_frame_mask(latents: torch.Tensor, held: bool) -> torch.Tensor:
    """(1, 1, frames, height, width): 0 on a first latent frame held at its image, 1 where the model samples."""
    mask = torch.ones((1, 1, *latents.shape[2:]), dtype=torch.float32, device=latents.device)
    if held:
        mask[:, :, 0] = 0
    return mask


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
        # the Wan VAE keeps its causal convolutions' caches on itself: a row's image encoded beside another video's
        # decode (a run overlaps them) must wait for it, or each corrupts the other's caches
        self.vae_lock = threading.Lock()
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
        import diffusers  # deferred: diffusers
        from diffusers import AutoencoderKLWan  # deferred: diffusers
        from transformers import CLIPVisionModel, UMT5EncoderModel  # deferred: transformers

        from ..adapters import mark_identity  # deferred: diffusers

        folder = Path(folder)
        device, encode_and_decode = options.device, options.encode_and_decode
        precision = resolve_precision(options.dtype, device)
        variant = read_variant(folder)
        if encode_and_decode:
            vae = AutoencoderKLWan.from_pretrained(folder / "vae", dtype=precision.vae)
            vae.enable_tiling()
            text_encoder = UMT5EncoderModel.from_pretrained(folder / "text_encoder", dtype=precision.text_encoder)
            components = dict(vae=vae, text_encoder=text_encoder)
            if variant.image_encoder:  # in float32, as Wan's image-to-video examples load it
                image_encoder = CLIPVisionModel.from_pretrained(folder / "image_encoder", dtype=precision.vae)
                components["image_encoder"] = image_encoder.to(device)
        else:
            components = dict(vae=None, text_encoder=None, tokenizer=None)
            if variant.pipeline_class == I2V:
                components.update(image_encoder=None, image_processor=None)
        pipeline_class = getattr(diffusers, variant.pipeline_class)
        pipe = pipeline_class.from_pretrained(folder, dtype=precision.transformer, **components)
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

    def check_images(self, images: dict) -> None:
        check_wan_images(self.variant, images)

    def encode_images(self, images: dict, settings: SamplerSettings) -> dict[str, torch.Tensor]:
        """The first (and last) frame as diffusers' WanImageToVideoPipeline prepares them: resized by its video
        processor, VAE-encoded (with the frames between them zero and a mask of the frames given, or, where the
        folder expands timesteps, the first latent frame alone), and, where the folder has an image encoder, its
        CLIP embeddings (the second hidden state from the end) of both frames."""
        from diffusers import WanImageToVideoPipeline  # deferred: diffusers

        from ..images import load_image  # deferred: pyarrow

        if images.get("image") is None:
            return {}
        if not self.holds_vae:
            raise RuntimeError("this pipeline was loaded without its VAE (a gang rank other than 0)")
        first = load_image(images["image"], "image")
        last = load_image(images["last_image"], "last_image") if images.get("last_image") is not None else None
        device, s = self.execution_device, settings
        resize = self.pipe.video_processor.preprocess
        first_frame = resize(first, height=s.height, width=s.width).to(device, dtype=torch.float32)
        last_frame = None if last is None else resize(last, height=s.height, width=s.width).to(device, torch.float32)
        shape = self.latent_shape(s)
        with self.vae_lock:
            prepared = WanImageToVideoPipeline.prepare_latents(  # diffusers' own, on this pipeline's VAE and config
                self.pipe,
                first_frame,
                1,
                shape[1],
                s.height,
                s.width,
                s.num_frames,
                torch.float32,
                device,
                None,
                torch.zeros(shape, dtype=torch.float32, device=device),  # noise is drawn by the loop, from the seed
                last_frame,
            )
        encoded = {IMAGE_CONDITION: prepared[1]}
        if self.variant.image_encoder:
            frames = [first] if last is None else [first, last]
            embeds = self.pipe.encode_image(frames[0] if last is None else frames, device)
            encoded["encoder_hidden_states_image"] = embeds.to(self.transformer.dtype)
        return encoded

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
        with self.vae_lock:
            video = vae.decode(latents * std + mean, return_dict=False)[0]  # (1, 3, T, H, W) in [-1, 1]
        video = ((video[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return video.permute(1, 2, 3, 0).cpu().numpy()


def wan_layout(variant: WanVariant) -> DiffusersLayout:
    """What a folder of ``variant`` must hold: a two-expert folder's second transformer too, an image encoder and
    its processor where the kind embeds images."""
    experts = ("transformer", "transformer_2")[: variant.experts]
    images = ("image_encoder", "image_processor") if variant.image_encoder else ()
    weights = {name: ("diffusion_pytorch_model", "diffusers", "WanTransformer3DModel") for name in experts}
    if variant.image_encoder:
        weights["image_encoder"] = ("model", "transformers", "CLIPVisionModel")
    return DiffusersLayout(
        what=f"a {variant.name} folder",
        components=(*experts, "vae", "text_encoder", "tokenizer", "scheduler", *images),
        weights={
            **weights,
            "vae": ("diffusion_pytorch_model", "diffusers", "AutoencoderKLWan"),
            "text_encoder": ("model", "transformers", "UMT5EncoderModel"),
        },
        unsupported={
            "image_encoder": "an image encoder this kind of Wan folder has no use for (Wan2.1 image-to-video "
            "folders name WanImageToVideoPipeline and one transformer)",
            "image_processor": "an image processor this kind of Wan folder has no use for",
        },
        fields=("boundary_ratio", "expand_timesteps"),
    )


@register_family
class WanFamily(Family):
    name = "wan"
    renders = (
        "Wan2.1 text-to-video, image-to-video and first-last-frame; Wan2.2 A14B's two experts (text- and "
        "image-to-video) and TI2V-5B"
    )
    pipeline_classes = ("WanPipeline", I2V)
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

    def bench_variants(self, root: Path, blocks: int, small: bool) -> dict[str, tuple[Path, int, int]]:
        """``ditfarm bench gpu``'s Wan rows beside its Wan2.1 text-to-video sections: a step of one A14B expert at
        720p, a whole TI2V-5B video at 704x1280 with its VAE, and a Wan2.1 image-to-video step with its image
        encoder; the released configs with ``blocks`` transformer blocks, a one-layer UMT5 of the text width
        (``small``: the small folders)."""
        root = Path(root)
        if small:
            return {
                "wan2.2-a14b-expert": (make_small_wan22_a14b_folder(root / "a14b"), 1, 1),
                "wan2.2-ti2v-5b": (make_small_wan22_ti2v_folder(root / "ti2v"), 1, 1),
                "wan2.1-i2v": (make_small_wan_i2v_folder(root / "i2v"), 1, 1),
            }
        text = {**SMALL_TEXT_ENCODER, "d_model": 4096, "d_ff": 1024, "num_heads": 64, "d_kv": 64}
        a14b = {**WAN21_14B, "num_layers": blocks}

        def card(variant: WanVariant) -> dict:
            return {"kind": "wan", "defaults": {k: v for k, v in variant.defaults.__dict__.items() if v is not None}}

        return {
            "wan2.2-a14b-expert": (
                make_wan_folder(
                    root / "a14b",
                    a14b,
                    text,
                    {},
                    card(WAN22_A14B),
                    transformer_2_config=a14b,
                    boundary_ratio=0.875,
                    scheduler=unipc_flow_scheduler(12.0),
                ),
                blocks,
                WAN21_14B["num_layers"],
            ),
            "wan2.2-ti2v-5b": (
                make_wan_folder(
                    root / "ti2v",
                    {**WAN22_TI2V_5B, "num_layers": blocks},
                    text,
                    WAN22_VAE,
                    card(WAN22_TI2V),
                    expand_timesteps=True,
                    scheduler=unipc_flow_scheduler(5.0),
                ),
                blocks,
                WAN22_TI2V_5B["num_layers"],
            ),
            "wan2.1-i2v": (
                make_wan_folder(
                    root / "i2v",
                    {**WAN21_I2V_14B, "num_layers": blocks},
                    text,
                    {},
                    card(WAN21_I2V),
                    scheduler=unipc_flow_scheduler(5.0),
                    image_encoder_config=CLIP_VIT_H_14,
                ),
                blocks,
                WAN21_I2V_14B["num_layers"],
            ),
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
            check_images=lambda images: check_wan_images(variant, images),
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


def small_card(guidance_scale: float, fps: int = 16, **defaults) -> dict:
    """The card of a small Wan folder: 9 frames of 64x64 in 10 steps, short prompts."""
    sampler = {"num_frames": 9, "height": 64, "width": 64, "steps": 10, "guidance_scale": guidance_scale, **defaults}
    return {"kind": "wan", "defaults": sampler, "max_sequence_length": 32, "video": {"fps": fps, "upscale": 1}}


def make_small_wan_folder(folder: str | Path, seed: int = 0, layers: int = 4) -> Path:
    """A complete diffusers Wan folder with random weights and small dimensions: transformer 2 heads x 16 wide,
    VAE base width 8 (same 4x temporal, 8x spatial compression as Wan2.1), a one-layer UMT5 and a word-level
    tokenizer (``word_tokenizer``).  Loads with WanPipeline.from_pretrained and load_pipeline like a real Wan2.1 folder."""
    card = small_card(5.0)
    return make_wan_folder(
        folder, {**SMALL_TRANSFORMER, "num_layers": layers}, SMALL_TEXT_ENCODER, SMALL_VAE, card, seed=seed
    )


def make_small_wan22_a14b_folder(folder: str | Path, seed: int = 0, layers: int = 4) -> Path:
    """A small Wan2.2 A14B-style folder: two experts of the small transformer with different weights,
    ``boundary_ratio`` 0.875 and the released folders' UniPC flow scheduler (shift 12, as Wan2.2's A14B
    text-to-video samples)."""
    card = small_card(4.0, guidance_scale_2=3.0)
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
    card = small_card(5.0, fps=24)
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


SMALL_IMAGE_ENCODER = dict(  # CLIP ViT: 32x32 pixels in 8x8 patches, 16 + 1 tokens of width 16
    hidden_size=16,
    projection_dim=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    image_size=32,
    intermediate_size=32,
    patch_size=8,
)
SMALL_IMAGE_TOKENS = (32 // 8) ** 2 + 1


def make_small_wan_i2v_folder(folder: str | Path, seed: int = 0, first_last: bool = False, layers: int = 4) -> Path:
    """A small Wan2.1 image-to-video folder (``first_last``: first-last-frame): a transformer reading the 16 noise
    channels beside 4 mask and 16 image-latent channels and CLIP embeddings of the frames (with positions for two
    frames' tokens where ``first_last``), a small CLIP vision encoder and its processor, UniPC flow at shift 5."""
    card = small_card(5.0)
    transformer = {**SMALL_TRANSFORMER, "num_layers": layers, "in_channels": 36, "image_dim": 16}
    if first_last:
        transformer["pos_embed_seq_len"] = 2 * SMALL_IMAGE_TOKENS
    return make_wan_folder(
        folder,
        transformer,
        SMALL_TEXT_ENCODER,
        SMALL_VAE,
        card,
        seed=seed,
        scheduler=unipc_flow_scheduler(5.0),
        image_encoder_config=SMALL_IMAGE_ENCODER,
    )


def make_small_wan22_i2v_a14b_folder(folder: str | Path, seed: int = 0, layers: int = 4) -> Path:
    """A small Wan2.2 A14B image-to-video folder: two experts reading 36 channels (no image encoder, as released),
    ``boundary_ratio`` 0.9, UniPC flow at shift 5."""
    card = small_card(3.5, guidance_scale_2=3.5)
    transformer = {**SMALL_TRANSFORMER, "num_layers": layers, "in_channels": 36}
    return make_wan_folder(
        folder,
        transformer,
        SMALL_TEXT_ENCODER,
        SMALL_VAE,
        card,
        seed=seed,
        transformer_2_config=transformer,
        boundary_ratio=0.9,
        scheduler=unipc_flow_scheduler(5.0),
        image_to_video=True,
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
    image_encoder_config: dict | None = None,
    image_to_video: bool = False,
) -> Path:
    """A diffusers Wan folder with random weights of the given component configs (the real Wan2.1 ones in
    ``wan_configs`` give the real shapes) and a word-level tokenizer of ``WORDS`` (the encoder's vocabulary
    is the config's; the tokenizer only uses its first ids).  ``device`` builds the weights there (fast for
    billions of parameters on a GPU); the transformer and text encoder are saved in ``dtype``, the VAE in
    float32.  ``transformer_2_config`` and ``boundary_ratio``: a second expert (Wan2.2 A14B);
    ``expand_timesteps``: a timestep per token (TI2V-5B); ``scheduler``: Euler flow matching at shift 3 unless
    given; ``image_encoder_config`` (a CLIP vision config) or ``image_to_video``: a WanImageToVideoPipeline
    folder."""
    from diffusers import (  # deferred: diffusers
        AutoencoderKLWan,
        FlowMatchEulerDiscreteScheduler,
        WanImageToVideoPipeline,
        WanPipeline,
        WanTransformer3DModel,
    )
    from transformers import (  # deferred: transformers
        CLIPImageProcessor,
        CLIPVisionConfig,
        CLIPVisionModel,
        UMT5Config,
        UMT5EncoderModel,
    )

    folder = Path(folder)
    torch.manual_seed(seed)
    tokenizer = word_tokenizer()
    text_config = {"vocab_size": len(tokenizer), **text_encoder_config}
    with torch.device(device):
        text_encoder = UMT5EncoderModel(UMT5Config(**text_config))
        vae = AutoencoderKLWan(**vae_config)
        transformer = WanTransformer3DModel(**transformer_config)
        transformer_2 = WanTransformer3DModel(**transformer_2_config) if transformer_2_config else None
        image_encoder = CLIPVisionModel(CLIPVisionConfig(**image_encoder_config)) if image_encoder_config else None
    if dtype != torch.float32:  # loading with dtype=float32 later upcasts what Wan keeps in float32
        text_encoder, transformer = text_encoder.to(dtype), transformer.to(dtype)
        transformer_2 = transformer_2.to(dtype) if transformer_2 is not None else None
    components = dict(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        transformer=transformer,
        scheduler=scheduler if scheduler is not None else FlowMatchEulerDiscreteScheduler(shift=3.0),
        transformer_2=transformer_2,
        boundary_ratio=boundary_ratio,
        expand_timesteps=expand_timesteps,
    )
    if image_encoder is not None or image_to_video:
        size = image_encoder_config["image_size"] if image_encoder_config else None
        processor = CLIPImageProcessor(crop_size=size, size=size) if size else None
        pipe = WanImageToVideoPipeline(**components, image_encoder=image_encoder, image_processor=processor)
    else:
        pipe = WanPipeline(**components)
    pipe.save_pretrained(folder)
    if card is not None:
        (folder / "ditfarm_model.json").write_text(json.dumps(card, indent=2) + "\n")
    return folder
