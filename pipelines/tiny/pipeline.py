"""``tiny`` as a diffusers pipeline: word text encoder, WanTransformer3DModel in pixel space, flow-matching Euler."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler, WanTransformer3DModel

from ..denoise import SamplerSettings, denoise, initial_noise
from .text_encoder import WordTextEncoder
from .weights import load_text_encoder, read_model_card


class TinyVideoPipeline(DiffusionPipeline):
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
        self.defaults = SamplerSettings(num_frames=8, height=32, width=32, steps=30, guidance_scale=3.0)
        self.model_name = "tiny"
        self.model_id = "tiny"

    @classmethod
    def from_folder(cls, folder: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32):
        folder = Path(folder)
        card = read_model_card(folder)
        pipe = cls(
            transformer=WanTransformer3DModel.from_pretrained(folder / "transformer", torch_dtype=dtype).eval(),
            scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(folder / "scheduler"),
            text_encoder=load_text_encoder(folder),
        )
        d = card["defaults"]
        pipe.defaults = SamplerSettings(d["num_frames"], d["height"], d["width"], d["steps"], d["guidance_scale"])
        pipe.model_name = card.get("name", folder.name)
        pipe.folder = str(folder)
        return pipe.to(device)

    def default_cache_profile(self):
        """The cache profile shipped with the model folder, if any (``ditfarm profile`` writes one)."""
        path = Path(self.folder) / "cache_profile.json" if getattr(self, "folder", None) else None
        return path if path is not None and path.exists() else None

    def check_prompt(self, prompt: str) -> None:
        """Raise PromptError (naming the word and the vocabulary) for a prompt this model cannot read."""
        self.text_encoder.token_ids(prompt)

    def encode_prompt(self, prompt: str, negative_prompt: str = "") -> tuple[torch.Tensor, torch.Tensor]:
        embeds = self.text_encoder([prompt, negative_prompt or ""]).to(self.device, self.transformer.dtype)
        return embeds[:1], embeds[1:]

    def settings(self, **overrides) -> SamplerSettings:
        values = {k: v for k, v in overrides.items() if v is not None}
        merged = SamplerSettings(**{**self.defaults.__dict__, **values})
        merged.validate()
        patch = self.transformer.config.patch_size
        if merged.height % patch[1] or merged.width % patch[2] or merged.num_frames % patch[0]:
            raise ValueError(f"height and width must be multiples of the patch size {tuple(patch)}")
        return merged

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
    ) -> np.ndarray:
        """Render one video; returns uint8 frames (T, H, W, 3).  Same prompt, seed and settings: same frames."""
        s = self.settings(
            num_frames=num_frames, height=height, width=width, steps=steps, guidance_scale=guidance_scale
        )
        return self.decode(self.generate_latents(prompt, seed, s, negative_prompt, on_step))

    @torch.no_grad()
    def generate_latents(self, prompt: str, seed: int, settings: SamplerSettings, negative_prompt: str = "",
                         on_step=None, start_step: int = 0, init: torch.Tensor | None = None) -> torch.Tensor:
        """The final latents (here: pixels in [-1, 1], (1, 3, T, H, W)).  With ``init`` and ``start_step`` the
        run starts from ``init`` noised to that step's sigma (SDEdit) instead of from pure noise."""
        s = settings
        cond, uncond = self.encode_prompt(prompt, negative_prompt)
        latents = initial_noise((1, 3, s.num_frames, s.height, s.width), seed, self.device, torch.float32)
        if init is not None:
            sigma = float(self.scheduler_sigmas(s.steps)[start_step])
            latents = (1 - sigma) * init.to(latents) + sigma * latents
        return denoise(self.transformer, self.scheduler, latents, cond, uncond, s.steps, s.guidance_scale, on_step,
                       start_step)

    def scheduler_sigmas(self, steps: int) -> np.ndarray:
        self.scheduler.set_timesteps(steps)
        return self.scheduler.sigmas.cpu().numpy()

    __call__ = generate

    @staticmethod
    def decode(latents: torch.Tensor) -> np.ndarray:
        video = ((latents[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # (3, T, H, W)
        return video.permute(1, 2, 3, 0).cpu().numpy()
