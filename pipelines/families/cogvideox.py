"""CogVideoX text-to-video (2B with its built-in positions, 5B with rotary positions, 1.5 with temporal patches;
diffusers' CogVideoXPipeline folders): its T5 text encoder, CogVideoX VAE and transformer driven by ditfarm's loop, rendering what diffusers
renders for the same folder, prompt, seed and sizes.

What exactness depends on, as diffusers' ``CogVideoXPipeline.__call__`` does it: the text padded to the folder's
``max_sequence_length`` and encoded without a mask; latents laid out frames before channels; the rotary positions
computed by the pipeline for the video's size (5B, 1.5); v-prediction DDIM (2B) or DPM (5B, 1.5) steps, the DPM
drawing noise from the video's own generator during its steps; decoding ``latents / scaling_factor``.  A 1.5
transformer patches ``patch_size_t`` latent frames per token: the pipeline pads the latent frames to a multiple of
it (extra noise frames at the front, their rotary positions included) and drops the padding before decoding.
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
from ..denoise import DenoiseSteps, SamplerSettings
from ..family import Family, LoadOptions, register_family
from ..folder_checks import DiffusersLayout, ModelFolderError, check_diffusers_folder
from ..memory import minimum_video_bytes
from ..precision import resolve_precision
from ..word_tokenizer import word_tokenizer

COGVIDEOX_DEFAULTS = SamplerSettings(num_frames=49, height=480, width=720, steps=50, guidance_scale=6.0)
COGVIDEOX_VIDEO = VideoDefaults(fps=8, upscale=1)  # CogVideoX 1.0 is trained on 8-fps clips
COGVIDEOX_LIMITS = {"height": 1360, "width": 1360}
MAX_SEQUENCE_LENGTH = 226  # diffusers' default; the 2B's built-in positions need exactly its max_text_seq_length

COGVIDEOX_LAYOUT = DiffusersLayout(
    what="a CogVideoX text-to-video folder",
    components=("transformer", "vae", "text_encoder", "tokenizer", "scheduler"),
    weights={
        "transformer": ("diffusion_pytorch_model", "diffusers", "CogVideoXTransformer3DModel"),
        "vae": ("diffusion_pytorch_model", "diffusers", "AutoencoderKLCogVideoX"),
        "text_encoder": ("model", "transformers", "T5EncoderModel"),
    },
)


def vae_factors(vae_config: dict) -> tuple[int, int]:
    """(temporal, spatial) compression of a CogVideoX VAE, as diffusers' CogVideoXPipeline derives them."""
    return int(vae_config.get("temporal_compression_ratio", 4)), 2 ** (len(vae_config["block_out_channels"]) - 1)


def check_sizes(
    settings: SamplerSettings, temporal: int, spatial: int, patch: int, limits: dict, patch_t: int | None = None
) -> None:
    """Frames 4k + 1 (the VAE's temporal factor; with CogVideoX 1.5's temporal patches, 4 x patch_t k + 1, the
    counts whose latent frames the VAE decodes back to the frames asked), height and width multiples of VAE x
    patch, within the limits."""
    frames_step = temporal * (patch_t or 1)
    if (settings.num_frames - 1) % frames_step:
        raise ValueError(f"num_frames must be {frames_step}k + 1 for this model, got {settings.num_frames}")
    multiple = spatial * patch
    if settings.height % multiple or settings.width % multiple:
        raise ValueError(
            f"height and width must be multiples of {multiple} (VAE {spatial}x times patch {patch}), "
            f"got {settings.height}x{settings.width}"
        )
    check_limits(settings, limits)


def padding_frames(latent_frames: int, patch_size_t: int | None) -> int:
    """How many latent frames diffusers' pipeline puts before the video's so that a CogVideoX 1.5 transformer's
    temporal patches divide them (0 without temporal patches)."""
    return (-latent_frames) % patch_size_t if patch_size_t else 0


class CogVideoXSteps(DenoiseSteps):
    """CogVideoX's sampling as diffusers' pipeline runs it: v-prediction DDIM or DPM steps on (B, F, C, H, W)
    latents, the transformer given the step's integer timestep and the video's rotary positions (None for a
    folder with built-in positions); DPM carries its previous x0 prediction and draws its noise from the video's
    generator."""

    def __init__(self, transformer, scheduler, rotary, generator: torch.Generator):
        self.transformer, self.scheduler, self.rotary, self.generator = transformer, scheduler, rotary, generator
        self.dtype = transformer.dtype
        self.multistep = type(scheduler).__name__ == "CogVideoXDPMScheduler"
        self.timesteps = None
        self.old_x0 = None  # DPM's previous prediction of the clean latents

    def schedule(self, steps: int, start_step: int, device: torch.device):
        self.scheduler.set_timesteps(steps, device=device)
        self.timesteps, self.old_x0 = self.scheduler.timesteps, None
        return self.timesteps

    def transformer_at(self, i: int) -> torch.nn.Module:
        return self.transformer

    def transformers(self) -> list[torch.nn.Module]:
        return [self.transformer]

    def inputs(self, i: int, t, latents: torch.Tensor, branch: dict[str, torch.Tensor]) -> dict:
        return {
            "hidden_states": self.scheduler.scale_model_input(latents, t).to(self.dtype),
            "timestep": t.expand(latents.shape[0]),
            "image_rotary_emb": self.rotary,
            **branch,
        }

    def step(self, i: int, t, prediction: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        prediction = prediction.float()
        if not self.multistep:
            return self.scheduler.step(prediction, t, latents, eta=0.0, generator=self.generator, return_dict=False)[0]
        back = self.timesteps[i - 1] if i > 0 else None
        latents, self.old_x0 = self.scheduler.step(
            prediction, self.old_x0, t, back, latents, eta=0.0, generator=self.generator, return_dict=False
        )
        return latents


class CogVideoXVideoPipeline(DiffusersPipelineMixin):
    """Renders free-text prompts with a CogVideoX model folder."""

    def __init__(self, pipe, folder: str, defaults: SamplerSettings, video: VideoDefaults, card: dict, factors):
        self.pipe = pipe
        self.folder = folder
        self.defaults = defaults
        self.video = video
        self.model_name = Path(folder).name
        self.max_sequence_length = card.get("max_sequence_length", MAX_SEQUENCE_LENGTH)
        self.vae_factors = factors  # (temporal, spatial), from the VAE's config even where no VAE is loaded
        self.limits = card_limits(card, COGVIDEOX_LIMITS, str(Path(folder) / "ditfarm_model.json"))

    @classmethod
    def from_folder(cls, folder: Path, card: dict, options: LoadOptions, defaults: SamplerSettings, video):
        from diffusers import AutoencoderKLCogVideoX, CogVideoXPipeline  # deferred: diffusers
        from transformers import T5EncoderModel  # deferred: transformers

        folder = Path(folder)
        precision = resolve_precision(options.dtype, options.device)
        if options.encode_and_decode:
            vae = AutoencoderKLCogVideoX.from_pretrained(folder / "vae", dtype=precision.vae)
            text_encoder = T5EncoderModel.from_pretrained(folder / "text_encoder", dtype=precision.text_encoder)
            components = dict(vae=vae, text_encoder=text_encoder)
        else:
            components = dict(vae=None, text_encoder=None, tokenizer=None)
        pipe = CogVideoXPipeline.from_pretrained(folder, dtype=precision.transformer, **components)
        pipe.transformer.to(options.device)
        if options.encode_and_decode:
            pipe.vae.to(options.device)
            pipe.text_encoder.to(options.device)
        factors = vae_factors(json.loads((folder / "vae" / "config.json").read_text()))
        made = cls(pipe, str(folder), defaults, video, card, factors)
        return made

    def check_prompt(self, prompt: str) -> None:
        check_nonempty_prompt(prompt)

    def check_sizes(self, settings: SamplerSettings) -> None:
        config = self.transformer.config
        check_sizes(settings, *self.vae_factors, config.patch_size, self.limits, config.patch_size_t)

    def latent_shape(self, settings: SamplerSettings) -> tuple[int, ...]:
        temporal, spatial = self.vae_factors
        frames = (settings.num_frames - 1) // temporal + 1
        frames += padding_frames(frames, self.transformer.config.patch_size_t)
        channels = self.transformer.config.in_channels
        return (1, frames, channels, settings.height // spatial, settings.width // spatial)

    def video_latents(self, latents: torch.Tensor, settings: SamplerSettings) -> torch.Tensor:
        """The sampled latents less the frames padded before the video's (CogVideoX 1.5)."""
        temporal = self.vae_factors[0]
        return latents[
            :, padding_frames((settings.num_frames - 1) // temporal + 1, self.transformer.config.patch_size_t) :
        ]

    def channels_first(self, latents: torch.Tensor) -> torch.Tensor:
        return latents.permute(0, 2, 1, 3, 4)

    def minimum_bytes(self, settings: SamplerSettings) -> int:
        config = self.transformer.config
        batch, frames, channels, height, width = self.latent_shape(settings)
        hidden = config.num_attention_heads * config.attention_head_dim
        return minimum_video_bytes(
            (batch, channels, frames, height, width),
            (config.patch_size_t or 1, config.patch_size, config.patch_size),
            hidden,
            4 * hidden,  # diffusers' FeedForward: four times the width
            next(self.transformer.parameters()).element_size(),
            settings.num_frames,
            settings.height,
            settings.width,
        )

    def encode_prompt(self, prompt: str, negative_prompt: str = "", guidance_scale: float = 1.0) -> Conditioning:
        """The T5 embeddings of the prompt padded to ``max_sequence_length`` (no mask, as diffusers encodes them);
        the negative prompt's too under CFG."""
        if not self.holds_text_encoder:
            raise RuntimeError("this pipeline was loaded without its text encoder (a gang rank other than 0)")
        cond, uncond = self.pipe.encode_prompt(
            prompt,
            negative_prompt or "",
            do_classifier_free_guidance=guidance_scale > 1.0,
            max_sequence_length=self.max_sequence_length,
            device=self.execution_device,
            dtype=self.transformer.dtype,
        )
        return Conditioning.of_text(cond, uncond)

    def denoise_steps(self, settings: SamplerSettings, generator: torch.Generator) -> CogVideoXSteps:
        rotary = None
        if self.transformer.config.use_rotary_positional_embeddings:
            frames = self.latent_shape(settings)[1]
            rotary = self.pipe._prepare_rotary_positional_embeddings(
                settings.height, settings.width, frames, self.execution_device
            )
        return CogVideoXSteps(self.transformer, self.scheduler, rotary, generator)

    def noised_start(self, init: torch.Tensor, noise: torch.Tensor, settings: SamplerSettings, start_step: int):
        self.scheduler.set_timesteps(settings.steps)
        t = self.scheduler.timesteps[start_step : start_step + 1]
        return self.scheduler.add_noise(init.to(noise), noise, t)

    def scheduler_sigmas(self, steps: int) -> np.ndarray:
        """The noise level of each step as a flow-matching sigma would say it, sqrt(1 - alpha_bar) (the
        profiler's timeline), with the final 0."""
        self.scheduler.set_timesteps(steps)
        alphas = self.scheduler.alphas_cumprod[self.scheduler.timesteps.cpu()].double()
        return np.append((1.0 - alphas).sqrt().numpy(), 0.0)

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        if not self.holds_vae:
            raise RuntimeError("this pipeline was loaded without its VAE (a gang rank other than 0)")
        vae = self.pipe.vae
        latents = latents.to(next(vae.parameters()).device, vae.dtype).permute(0, 2, 1, 3, 4)
        video = vae.decode(latents / vae.config.scaling_factor).sample  # (1, 3, T, H, W) in [-1, 1]
        video = ((video[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return video.permute(1, 2, 3, 0).cpu().numpy()


@register_family
class CogVideoXFamily(Family):
    name = "cogvideox"
    renders = "CogVideoX text-to-video (2B, 5B, 1.5)"
    pipeline_classes = ("CogVideoXPipeline",)
    transformer_classes = ("CogVideoXTransformer3DModel",)
    defaults = COGVIDEOX_DEFAULTS
    video = COGVIDEOX_VIDEO

    def check_folder(self, folder: Path) -> dict:
        card = check_diffusers_folder(folder, COGVIDEOX_LAYOUT)
        transformer = json.loads((Path(folder) / "transformer" / "config.json").read_text())
        if transformer.get("ofs_embed_dim") is not None:
            raise refused_config_field(folder, "ofs_embed_dim", "an image-to-video offset embedding")
        return card

    def load(self, folder: Path, card: dict, options: LoadOptions) -> CogVideoXVideoPipeline:
        return CogVideoXVideoPipeline.from_folder(
            folder, card, options, self.sampler_defaults(card), self.video_defaults(card)
        )

    def small_folders(self, root: Path) -> dict[str, Path]:
        root = Path(root)
        return {
            "2b": make_small_cogvideox_folder(root / "2b"),
            "5b": make_small_cogvideox_folder(root / "5b", rotary=True),
            "1.5": make_small_cogvideox_folder(root / "1.5", rotary=True, temporal_patch=2),
        }

    def bench_folder(self, root: Path, blocks: int) -> tuple[Path, int, int]:
        """CogVideoX-5B's released transformer config with ``blocks`` of its blocks (and a one-layer T5 of its text
        width), at its default video size: (folder, blocks built, blocks released), what ``ditfarm bench gpu``
        times a step of."""
        config = {**RELEASED_5B, "num_layers": blocks}
        text = {**SMALL_TEXT_ENCODER, "d_model": RELEASED_5B["text_embed_dim"]}
        defaults = {**COGVIDEOX_DEFAULTS.__dict__}
        folder = make_small_cogvideox_folder(
            Path(root) / "cogvideox-5b",
            rotary=True,
            sizes=dict(transformer=config, text_encoder=text, defaults=defaults),
        )
        return folder, blocks, RELEASED_5B["num_layers"]

    def checks(self, folder: Path, card: dict) -> ModelChecks:
        folder = Path(folder)
        transformer = json.loads((folder / "transformer" / "config.json").read_text())
        patch, patch_t = transformer.get("patch_size", 2), transformer.get("patch_size_t")
        factors = vae_factors(json.loads((folder / "vae" / "config.json").read_text()))
        limits = card_limits(card, COGVIDEOX_LIMITS, str(folder / "ditfarm_model.json"))
        return ModelChecks(
            self.sampler_defaults(card),
            lambda s: check_sizes(s, *factors, patch, limits, patch_t),
            check_nonempty_prompt,
            None,
            shipped_profile(folder),
            video=self.video_defaults(card),
        )


def refused_config_field(folder: Path, key: str, what: str) -> ModelFolderError:
    """A transformer config field this family does not render yet, named with what it is."""
    config = Path(folder) / "transformer" / "config.json"
    return ModelFolderError(
        f"{config}: {key} is set ({what}): not supported yet; ditfarm would render this folder unlike diffusers "
        "does, so it refuses it"
    )


SMALL_TRANSFORMER = dict(
    num_attention_heads=2,
    attention_head_dim=16,
    in_channels=4,
    out_channels=4,
    time_embed_dim=8,
    text_embed_dim=32,
    num_layers=2,
    sample_width=8,
    sample_height=8,
    sample_frames=9,
    patch_size=2,
    temporal_compression_ratio=4,
    max_text_seq_length=16,
)
SMALL_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("CogVideoXDownBlock3D",) * 4,
    up_block_types=("CogVideoXUpBlock3D",) * 4,
    block_out_channels=(8, 8, 8, 8),
    latent_channels=4,
    layers_per_block=1,
    norm_num_groups=2,
    temporal_compression_ratio=4,
)
# CogVideoX-5B's transformer/config.json as released (THUDM/CogVideoX-5b)
RELEASED_5B = dict(
    num_attention_heads=48,
    attention_head_dim=64,
    in_channels=16,
    out_channels=16,
    time_embed_dim=512,
    text_embed_dim=4096,
    num_layers=42,
    sample_width=90,
    sample_height=60,
    sample_frames=49,
    patch_size=2,
    temporal_compression_ratio=4,
    max_text_seq_length=226,
)
SMALL_TEXT_ENCODER = dict(d_model=32, d_kv=16, d_ff=64, num_layers=1, num_heads=2, relative_attention_num_buckets=8)


def make_small_cogvideox_folder(
    folder: str | Path,
    rotary: bool = False,
    seed: int = 0,
    temporal_patch: int | None = None,
    sizes: dict | None = None,
) -> Path:
    """A complete diffusers CogVideoX folder with random weights and small dimensions: as 2B (built-in sincos
    positions, DDIM) or, with ``rotary``, as 5B (rotary positions, DPM), and with ``temporal_patch`` as 1.5 (that
    many latent frames per token, no patch bias, as CogVideoX 1.5's transformer); a one-layer T5 and a word-level
    tokenizer.  Loads with CogVideoXPipeline.from_pretrained and load_pipeline like a released folder.  ``sizes``:
    other configs by component ("transformer", "text_encoder") and card "defaults" (``bench_folder``'s released
    shapes)."""
    from diffusers import (  # deferred: diffusers
        AutoencoderKLCogVideoX,
        CogVideoXDDIMScheduler,
        CogVideoXDPMScheduler,
        CogVideoXPipeline,
        CogVideoXTransformer3DModel,
    )
    from transformers import T5Config, T5EncoderModel  # deferred: transformers

    folder = Path(folder)
    torch.manual_seed(seed)
    tokenizer = word_tokenizer()
    sizes = sizes or {}
    text_config = sizes.get("text_encoder", SMALL_TEXT_ENCODER)
    text_encoder = T5EncoderModel(T5Config(vocab_size=len(tokenizer), **text_config))
    vae = AutoencoderKLCogVideoX(**SMALL_VAE)
    patches = {} if temporal_patch is None else {"patch_size_t": temporal_patch, "patch_bias": False}
    config = sizes.get("transformer", SMALL_TRANSFORMER)
    transformer = CogVideoXTransformer3DModel(**config, use_rotary_positional_embeddings=rotary, **patches)
    schedule = dict(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        prediction_type="v_prediction",
        rescale_betas_zero_snr=True,
        set_alpha_to_one=True,
        snr_shift_scale=1.0 if rotary else 3.0,
        timestep_spacing="trailing",
        clip_sample=False,
    )
    scheduler = (CogVideoXDPMScheduler if rotary else CogVideoXDDIMScheduler)(**schedule)
    pipe = CogVideoXPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler
    )
    pipe.save_pretrained(folder)
    card = {
        "kind": "cogvideox",
        "defaults": sizes.get(
            "defaults", {"num_frames": 9, "height": 64, "width": 64, "steps": 6, "guidance_scale": 6.0}
        ),
        "max_sequence_length": config["max_text_seq_length"],
        "video": {"fps": 8, "upscale": 1},
    }
    (folder / "ditfarm_model.json").write_text(json.dumps(card, indent=2) + "\n")
    return folder
