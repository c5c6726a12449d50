"""Which dtype each component of a model runs in (``--dtype``).

Wan2.1-14B in float32 is 56 GB of transformer and 22 GB of UMT5-XXL: it does not fit beside its activations on an
80 GB GPU, so on CUDA the default (``auto``) is bfloat16 for the transformer and the text encoder.  The VAE stays
in float32 whatever is asked, as diffusers recommends for Wan (its decoder loses detail in half precision and is a
small share of the memory).  On the CPU, ``auto`` is float32 throughout: CPUs without bf16 units run it slower,
not faster.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..choices import DTYPE_NAMES  # noqa: F401 - the names live apart from torch

_TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass(frozen=True)
class Precision:
    transformer: torch.dtype
    text_encoder: torch.dtype
    vae: torch.dtype = torch.float32


def resolve_precision(dtype: str | torch.dtype = "auto", device: str = "cpu") -> Precision:
    """The component dtypes for ``dtype`` (a name of ``DTYPE_NAMES`` or a torch dtype) on ``device``."""
    if isinstance(dtype, torch.dtype):
        if dtype not in _TORCH_DTYPES.values():
            raise ValueError(f"dtype {dtype} is not one of bfloat16, float16, float32")
        chosen = dtype
    elif dtype == "auto":
        chosen = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    elif dtype in _TORCH_DTYPES:
        chosen = _TORCH_DTYPES[dtype]
    else:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPE_NAMES)}")
    return Precision(transformer=chosen, text_encoder=chosen)
