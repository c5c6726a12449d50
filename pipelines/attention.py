"""Which attention kernels a render uses: the fastest one installed that is exact for its dtype.

Two places call attention.  Unsharded attention (every call at sp=1, cross-attention under sequence parallelism)
goes through diffusers' attention dispatcher, set per model with ``set_attention_backend``.  Sharded
self-attention goes through a long-context attention (yunchang's ``LongContextAttention``, or xfuser's
``xFuserLongContextAttention`` where xfuser is installed) with a yunchang kernel.  In order of preference on
CUDA in half precision: flash-attn 3 (``flash_attn_interface``, Hopper), flash-attn 2 (``flash_attn``), then
torch SDPA's own flash kernel.  Flash kernels refuse float32, which gets SDPA's memory-efficient kernel.  On the
CPU everything is torch's math SDPA.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@dataclass(frozen=True)
class AttentionChoice:
    backend: str  # diffusers AttentionBackendName for unsharded attention ("native": leave the model as it is)
    sp_kernel: str  # yunchang AttnType for sharded self-attention
    long_context: str  # "yunchang" or "xfuser"

    def describe(self) -> str:
        return (
            f"attention: {self.backend} (diffusers) for unsharded calls; {self.long_context} long-context "
            f"attention with the {self.sp_kernel} kernel for sharded self-attention"
        )


def choose_attention(
    device: str | torch.device, dtype: torch.dtype, available: Callable[[str], bool] = installed
) -> AttentionChoice:
    """The kernels for a model on ``device`` whose transformer computes in ``dtype``."""
    if torch.device(device).type != "cuda":
        return AttentionChoice("native", "torch_math", "yunchang")
    long_context = "xfuser" if available("xfuser") else "yunchang"
    if dtype not in (torch.float16, torch.bfloat16):
        return AttentionChoice("_native_efficient", "torch_efficient", long_context)
    if available("flash_attn_interface"):
        return AttentionChoice("_flash_3", "fa3", long_context)
    if available("flash_attn"):
        return AttentionChoice("flash", "fa", long_context)
    return AttentionChoice("_native_flash", "torch_flash", long_context)


def apply_attention(transformer: torch.nn.Module, choice: AttentionChoice) -> None:
    """Route the model's unsharded attention through the chosen diffusers backend."""
    if choice.backend != "native":
        transformer.set_attention_backend(choice.backend)
