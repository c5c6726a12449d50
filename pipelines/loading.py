"""``ditfarm.load_pipeline``: a model name or folder in, a pipeline with ``generate`` out."""

from __future__ import annotations

from pathlib import Path

import torch

from .family import LoadOptions, family_of_folder
from .model_files import fetch_model

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
    offload_experts: bool = False,
):
    """Load a model for rendering.  ``"tiny"`` is the built-in model; a path is a model folder of a family ditfarm
    renders (``ditfarm.pipelines.family``: a diffusers folder by its pipeline class, a ditfarm folder by its
    card), checked before loading (``folder_checks``).  ``dtype``: ``pipelines.precision`` (``auto``: bf16 on
    CUDA, float32 on the CPU).  ``encode_and_decode=False``: the transformer alone, for gang ranks other than 0
    (the text encoder and VAE are not loaded where the family can leave them out).  ``offload_text_encoder``: it
    waits in host memory.  ``offload_experts``: a two-expert model (Wan2.2 A14B) keeps the expert not in use in
    host memory, so only one is on the device at a time; a one-transformer model ignores it."""
    folder = resolve_model_folder(name_or_path)
    family = family_of_folder(folder)
    card = family.check_folder(folder)
    options = LoadOptions(device, dtype, encode_and_decode, offload_text_encoder, offload_experts)
    pipe = family.load(folder, card, options)
    pipe.cache_settings = family.cache_settings(folder, card)
    return pipe
