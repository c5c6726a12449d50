"""diffusers' own pipelines as the oracle: what they render for a folder, prompt, seed and sizes, as uint8 frames
ditfarm's can be compared with (``psnr``)."""

import numpy as np
import torch


def diffusers_frames(pipeline_class, folder, prompt: str, seed: int, **call) -> np.ndarray:
    """uint8 (T, H, W, 3) frames of ``pipeline_class.from_pretrained(folder)(prompt, ...)`` with caching off and
    the seed given as diffusers' examples give it: ``torch.Generator("cpu").manual_seed(seed)``."""
    pipe = pipeline_class.from_pretrained(folder, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipeline_frames(pipe, prompt, seed, **call)


def pipeline_frames(pipe, prompt: str, seed: int, **call) -> np.ndarray:
    """uint8 (T, H, W, 3) frames of a loaded diffusers pipeline (one with LoRAs loaded, say)."""
    out = pipe(prompt=prompt, generator=torch.Generator("cpu").manual_seed(seed), output_type="np", **call)
    frames = np.asarray(out.frames[0])  # float (T, H, W, 3) in [0, 1]
    return np.round(frames * 255.0).astype(np.uint8)
