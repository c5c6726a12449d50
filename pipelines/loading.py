"""``ditfarm.load_pipeline``: a model name or folder in, a pipeline with ``generate`` out."""

from __future__ import annotations

from pathlib import Path

import torch

from .folder_checks import check_wan_index, read_json
from .model_files import fetch_model
from .precision import resolve_precision

BUILTIN_MODELS = ("tiny",)


def resolve_model_folder(name_or_path: str | Path) -> Path:
    """Map a built-in model name to its bundled folder and an ``s3://`` model to this node's copy (fetched once
    per node); anything else must be an existing folder."""
    if str(name_or_path) == "tiny":
        from .tiny.weights import BUNDLED_FOLDER  # deferred: diffusers

        return BUNDLED_FOLDER
    if str(name_or_path).startswith("s3://"):
        return fetch_model(str(name_or_path)).path
    folder = Path(name_or_path)
    if not folder.is_dir():
        raise ValueError(
            f"unknown model {str(name_or_path)!r}: not a built-in model ({', '.join(BUILTIN_MODELS)}), "
            "not a model folder and not an s3:// URI"
        )
    return folder


def load_pipeline(
    name_or_path: str | Path = "tiny",
    device: str = "cpu",
    dtype: str | torch.dtype = "auto",
    encode_and_decode: bool = True,
    offload_text_encoder: bool = False,
):
    """Load a model for rendering.  ``"tiny"`` is the built-in model; a path is a model folder: a ditfarm ``tiny``
    folder, or a diffusers Wan2.1 folder (model_index.json naming WanPipeline), checked before loading
    (``folder_checks``).  ``dtype``: ``pipelines.precision`` (``auto``: bf16 on CUDA, float32 on the CPU; a Wan
    VAE is float32 always).  ``encode_and_decode=False``: the transformer alone, for gang ranks other than 0 (a
    Wan folder's text encoder and VAE are not loaded).  ``offload_text_encoder``: it waits in host memory."""
    from .wan import WanVideoPipeline, is_wan_folder  # deferred: numpy

    folder = resolve_model_folder(name_or_path)
    if (folder / "model_index.json").exists():  # a diffusers folder: a Wan text-to-video one, or refused by name
        check_wan_index(
            read_json(folder / "model_index.json", "a diffusers model folder names its components there"),
            folder / "model_index.json",
        )
    if is_wan_folder(folder):
        return WanVideoPipeline.from_folder(
            folder,
            device=device,
            dtype=dtype,
            encode_and_decode=encode_and_decode,
            offload_text_encoder=offload_text_encoder,
        )
    card = folder / "ditfarm_model.json"
    if not card.exists():
        raise ValueError(
            f"{folder} is neither a ditfarm tiny folder (ditfarm_model.json) nor a diffusers Wan folder "
            "(model_index.json naming WanPipeline)"
        )
    from .tiny.pipeline import TinyVideoPipeline  # deferred: diffusers
    from .tiny.weights import read_model_card  # deferred: diffusers

    kind = read_model_card(folder).get("kind")
    if kind == "tiny":
        # tiny's word encoder is also its vocabulary: every rank keeps it to refuse a bad row alike (8 KB)
        return TinyVideoPipeline.from_folder(folder, device=device, dtype=resolve_precision(dtype, device).transformer)
    raise ValueError(f"model folder {folder} has kind {kind!r}; this ditfarm reads: tiny, and Wan folders")
