"""Reading and writing the ``tiny`` model folder (a diffusers-style layout, so it loads like any model folder).

<folder>/transformer/config.json + diffusion_pytorch_model.safetensors   (WanTransformer3DModel.save_pretrained)
<folder>/text_encoder.safetensors                                        (the word and position tables)
<folder>/scheduler/scheduler_config.json                                 (FlowMatchEulerDiscreteScheduler)
<folder>/ditfarm_model.json                                              (kind "tiny" and sampler defaults)
"""

from __future__ import annotations

import json
from pathlib import Path

import safetensors.torch
from diffusers import FlowMatchEulerDiscreteScheduler, WanTransformer3DModel

from .preconditioning import PreconditionedFlowMatchScheduler
from .text_encoder import WordTextEncoder

BUNDLED_FOLDER = Path(__file__).parent / "weights"
MODEL_CARD = "ditfarm_model.json"
SAMPLER_DEFAULTS = dict(num_frames=8, height=32, width=32, steps=30, guidance_scale=3.0)
SCHEDULER_SHIFT = 1.0
VIDEO_DEFAULTS = dict(fps=8, upscale=8)  # 32x32 frames are shown at 256x256; 8 frames last a second


def save_model_folder(
    folder: Path, transformer: WanTransformer3DModel, text_encoder: WordTextEncoder, sigma_data: float = 0.0
) -> None:
    """Write a loadable model folder; ``sigma_data`` > 0 marks a preconditioned model (preconditioning.py)."""
    folder = Path(folder)
    transformer.save_pretrained(folder / "transformer", safe_serialization=True)
    safetensors.torch.save_file(
        {
            "word_table": text_encoder.word_table.contiguous(),
            "position_table": text_encoder.position_table.contiguous(),
        },
        folder / "text_encoder.safetensors",
    )
    if sigma_data:
        scheduler = PreconditionedFlowMatchScheduler(shift=SCHEDULER_SHIFT, sigma_data=sigma_data)
    else:
        scheduler = FlowMatchEulerDiscreteScheduler(shift=SCHEDULER_SHIFT)
    scheduler.save_pretrained(folder / "scheduler")
    card = folder / MODEL_CARD
    if not card.exists():
        card.write_text(
            json.dumps(
                {"kind": "tiny", "name": "tiny", "defaults": SAMPLER_DEFAULTS, "video": VIDEO_DEFAULTS}, indent=2
            )
            + "\n"
        )


def read_model_card(folder: Path) -> dict:
    """The folder's ditfarm_model.json: which pipeline reads it and its sampler defaults."""
    path = Path(folder) / MODEL_CARD
    if not path.exists():
        raise FileNotFoundError(f"{folder} is not a ditfarm model folder: {MODEL_CARD} is missing")
    return json.loads(path.read_text())


def load_text_encoder(folder: Path) -> WordTextEncoder:
    tables = safetensors.torch.load_file(Path(folder) / "text_encoder.safetensors")
    encoder = WordTextEncoder(dim=tables["word_table"].shape[1], max_tokens=tables["position_table"].shape[0])
    encoder.load_state_dict(tables)
    return encoder


def load_scheduler(folder: Path):
    """The folder's scheduler: plain flow-matching Euler, or ours for a preconditioned model."""
    config = json.loads((Path(folder) / "scheduler" / "scheduler_config.json").read_text())
    if config.get("_class_name") == PreconditionedFlowMatchScheduler.__name__:
        keys = ("num_train_timesteps", "shift", "sigma_data")  # what it reads; the rest is its parent's defaults
        return PreconditionedFlowMatchScheduler(**{k: config[k] for k in keys if k in config})
    return FlowMatchEulerDiscreteScheduler.from_pretrained(Path(folder) / "scheduler")
