"""What every ditfarm model exposes, whatever diffusers pipeline sits underneath.

A subclass supplies: ``transformer``, ``scheduler``, ``defaults`` (SamplerSettings), ``folder``,
``check_prompt``, ``encode_prompt``, ``latent_shape`` and ``decode``.  Everything that must behave the same for
every model (settings resolution, seeding, the denoising loop, SDEdit starts, cache profiles) lives here once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .checks import check_patch_grid, refuse_images, resolve_settings
from .conditioning import Conditioning
from .denoise import (
    DenoiseSteps,
    FlowMatchSteps,
    SamplerSettings,
    check_finite_latents,
    initial_noise,
    run_loop,
    seeded_generator,
)
from .lora import LoraChoice, LoraError, LoraSlots
from .memory import available_bytes, check_fits, minimum_video_bytes

CACHE_PROFILE_FILE = "cache_profile.json"


@dataclass(frozen=True)
class VideoDefaults:
    """How a model's frames become an mp4 unless a run says otherwise: the frame rate it was trained at and an
    integer nearest-neighbour upscale (a 32x32 model is unwatchable at its own size; a 480p one is not)."""

    fps: int
    upscale: int


class VideoPipelineMixin:
    defaults: SamplerSettings
    video: VideoDefaults = VideoDefaults(fps=16, upscale=1)
    holds_text_encoder = True  # False where a gang rank loaded the transformer alone
    guidance_split = None  # a GuidanceSplit under CFG parallelism: this rank runs one CFG branch
    classifier_free_guidance = True  # False for a guidance-distilled family: one pass per step, nothing to split
    cache_settings = None  # the card's ModelCacheSettings (cache.presets): reference steps, a searched ladder
    cache_knob = None  # the enabled cache's KnobChoice (cache.presets): its knob and where it came from
    holds_vae = True
    folder: str | None = None
    model_name: str = "model"
    limits: dict[str, int] | None = None  # the largest size per axis (checks.py); None: the family's

    def lora_loader(self):
        """The diffusers LoRA loader class whose ``lora_state_dict`` reads this model's LoRAs (None: it takes
        none)."""
        return None

    def use_lora(self, lora: str | None = None, scale: float = 1.0) -> None:
        """Compute the next videos with the LoRA at ``lora`` (a path or an ``s3://`` URI) at ``scale``; None: the
        base model (``pipelines.lora``; LoraError names a LoRA that cannot be used)."""
        slots = getattr(self, "_lora_slots", None)
        if lora is None:
            if slots is not None:
                slots.use(None)
            return
        if slots is None:
            loader = self.lora_loader()
            if loader is None:
                raise LoraError(f"{self.model_name} takes no LoRAs (LoRA {lora})")
            slots = self._lora_slots = LoraSlots(loader, self.transformers())
        slots.use(LoraChoice(lora, scale))

    def check_images(self, images: dict) -> None:
        """Refuse a row's images (``IMAGE_INPUTS``: image, last_image) the model cannot take, by name, before
        anything is read: by default it renders from text alone."""
        refuse_images(images)

    def encode_images(self, images: dict, settings: SamplerSettings) -> dict[str, torch.Tensor]:
        """What a row's images become, as named tensors every CFG branch reads (``check_images`` passed them)."""
        return {}

    def encode_inputs(
        self, prompt: str, negative_prompt: str, settings: SamplerSettings, images: dict | None = None
    ) -> Conditioning:
        """The video's Conditioning: its text encoded (``encode_prompt``) and its images (``encode_images``) in
        every branch."""
        text = self.encode_prompt(prompt, negative_prompt, settings.guidance_scale)
        shared = self.encode_images(images, settings) if images else {}
        return text.with_shared(shared) if shared else text

    def check_negative_prompt(self, text: str) -> None:
        """Refuse a negative prompt the model cannot use; by default it is read as a prompt is."""
        self.check_prompt(text)

    def check_sizes(self, settings: SamplerSettings) -> None:
        """Refuse sizes the model cannot render; the default checks the transformer's patch grid."""
        config = self.transformer.config
        check_patch_grid(settings, tuple(config.patch_size), config.rope_max_seq_len, self.limits)

    def minimum_bytes(self, settings: SamplerSettings) -> int:
        """The least memory a video of ``settings`` needs on the execution device (memory.py)."""
        config = self.transformer.config
        # activations are in the compute dtype, whatever the weights are stored in (int8 weights would halve it)
        dtype = getattr(self.transformer, "dtype", None) or next(self.transformer.parameters()).dtype
        element = torch.empty((), dtype=dtype).element_size()
        return minimum_video_bytes(
            self.latent_shape(settings),
            tuple(config.patch_size),
            config.num_attention_heads * config.attention_head_dim,
            config.ffn_dim,
            element,
            settings.num_frames,
            settings.height,
            settings.width,
        )

    def check_memory(self, settings: SamplerSettings, available: int | None = None) -> None:
        """Refuse (ValueError) a video that cannot fit in ``available`` bytes (default: what the execution device
        has free now); a gang passes the least any of its ranks has, so every rank decides alike."""
        device = self.execution_device
        available = available_bytes(device) if available is None else available
        check_fits(
            self.minimum_bytes(settings),
            available,
            device,
            f"a video of {settings.num_frames} frames of {settings.height}x{settings.width}",
        )

    # -- shared ---------------------------------------------------------------------------------------------------
    @property
    def execution_device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    def settings(self, **overrides) -> SamplerSettings:
        return resolve_settings(self.defaults, self.check_sizes, overrides, len(self.transformers()))

    def transformers(self) -> dict[str, torch.nn.Module]:
        """Every transformer the loop may run, by component name (two for a model whose experts take turns over
        the steps): what attention kernels, sharding, compilation and caches apply to, each on its own."""
        return {"transformer": self.transformer}

    def default_cache_profile(self) -> Path | None:
        """The cache profile shipped in the model folder, if any (``ditfarm profile`` writes one)."""
        if not self.folder:
            return None
        path = Path(self.folder) / CACHE_PROFILE_FILE
        return path if path.exists() else None

    def scheduler_sigmas(self, steps: int) -> np.ndarray:
        self.scheduler.set_timesteps(steps)
        return self.scheduler.sigmas.cpu().numpy()

    def denoise_steps(self, settings: SamplerSettings, generator: torch.Generator) -> DenoiseSteps:
        """How this model samples one video (``pipelines.denoise``): flow matching with its one transformer unless
        the family says otherwise.  ``generator``: the video's random source after its initial noise (a sampler
        that draws noise during its steps goes on drawing from it, as diffusers' pipelines do)."""
        return FlowMatchSteps(self.transformer, self.scheduler, self.transformer_condition)

    def noised_start(self, init: torch.Tensor, noise: torch.Tensor, settings: SamplerSettings, start_step: int):
        """Clean latents ``init`` noised to step ``start_step``'s level (SDEdit; a flow-matching schedule's)."""
        sigma = float(self.scheduler_sigmas(settings.steps)[start_step])
        return (1 - sigma) * init.to(noise) + sigma * noise

    @torch.no_grad()
    def generate_latents(
        self,
        prompt: str,
        seed: int,
        settings: SamplerSettings,
        negative_prompt: str = "",
        on_step=None,
        start_step: int = 0,
        init: torch.Tensor | None = None,
        embeddings: Conditioning | None = None,
        images: dict | None = None,
    ) -> torch.Tensor:
        """The final latents.  With ``init`` (clean latents) and ``start_step`` the run starts from ``init``
        noised to that step (SDEdit) instead of from pure noise.  ``embeddings``: ``encode_inputs``'s
        Conditioning computed ahead (while another video's loop ran), else it is computed here (with
        ``images``)."""
        s = settings
        conditioning = embeddings if embeddings is not None else self.encode_inputs(prompt, negative_prompt, s, images)
        generator = seeded_generator(seed)
        latents = initial_noise(self.latent_shape(s), seed, self.execution_device, torch.float32, generator)
        if init is not None:
            latents = self.noised_start(init, latents, s, start_step)
        steps = self.denoise_steps(s, generator)
        latents = run_loop(
            steps, latents, conditioning, s.steps, s.guidance_scale, on_step, start_step, self.guidance_split
        )
        check_finite_latents(latents)
        return self.video_latents(latents, s)

    def video_latents(self, latents: torch.Tensor, settings: SamplerSettings) -> torch.Tensor:
        """The video's latents of what the loop sampled: all of it, unless the family samples more than the video
        (frames padded for its transformer's patches) and drops the rest before decoding."""
        return latents

    def channels_first(self, latents: torch.Tensor) -> torch.Tensor:
        """The latents as (batch, channels, frames, height, width), whatever layout the family samples in (the
        profiler reads them so)."""
        return latents

    def transformer_condition(self, latents: torch.Tensor) -> torch.Tensor | None:
        """Extra input channels the transformer reads beside the latents (none for text-to-video Wan)."""
        return None

    @torch.no_grad()
    def generate(
        self,
        prompt: str,
        seed: int = 0,
        num_frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
        steps: int | None = None,
        guidance_scale: float | None = None,
        negative_prompt: str = "",
        on_step=None,
        guidance_scale_2: float | None = None,
        image=None,
        last_image=None,
        lora: str | None = None,
        lora_scale: float = 1.0,
    ) -> np.ndarray:
        """Render one video; returns uint8 frames (T, H, W, 3).  Same prompt, seed and settings: same frames.
        ``guidance_scale_2``: the second expert's scale (a two-expert model; default ``guidance_scale``).
        ``image`` / ``last_image``: the first / last frame (a path, an ``s3://`` URI or a PIL image) of a model
        that renders from images.  ``lora`` / ``lora_scale``: a diffusers-format LoRA (a path or an ``s3://``
        URI) applied at that scale to this video (None: the base model, whatever earlier videos used)."""
        self.use_lora(lora, lora_scale)
        self.check_prompt(prompt)
        if negative_prompt:
            self.check_negative_prompt(negative_prompt)
        images = {"image": image, "last_image": last_image}
        self.check_images(images)
        s = self.settings(
            num_frames=num_frames,
            height=height,
            width=width,
            steps=steps,
            guidance_scale=guidance_scale,
            guidance_scale_2=guidance_scale_2,
        )
        return self.decode(self.generate_latents(prompt, seed, s, negative_prompt, on_step, images=images))


class DiffusersPipelineMixin(VideoPipelineMixin):
    """A ditfarm pipeline around a diffusers pipeline object (``self.pipe``): its components, and whether this
    process loaded the text encoder and the VAE (a gang rank other than 0 holds the transformer alone)."""

    pipe: object

    @property
    def transformer(self):
        return self.pipe.transformer

    @property
    def scheduler(self):
        return self.pipe.scheduler

    def lora_loader(self):
        return type(self.pipe) if hasattr(self.pipe, "lora_state_dict") else None

    def transformers(self) -> dict[str, torch.nn.Module]:
        found = {"transformer": self.pipe.transformer}
        second = getattr(self.pipe, "transformer_2", None)
        return found if second is None else {**found, "transformer_2": second}

    @property
    def holds_text_encoder(self) -> bool:
        return getattr(self.pipe, "text_encoder", None) is not None

    @property
    def holds_vae(self) -> bool:
        return getattr(self.pipe, "vae", None) is not None
