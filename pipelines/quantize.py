"""Quantized transformer weights through torchao: ``int8`` (weight-only int8, on any device) and ``fp8`` (weight-only
float8, on GPUs that compute in it: compute capability 8.9 and up).

Only the transformer blocks are quantized (where nearly all of the weights and the time are); embeddings, the
head and the norms keep their precision, as torchao's and diffusers' examples do.  A LoRA loads on top of
quantized blocks (peft's torchao support), so rows may switch LoRAs on a quantized model.  The kind is marked in
the transformer's identity: a cache profile measured on other weights is not this model's.
"""

from __future__ import annotations

import torch

QUANTIZATIONS = ("int8", "fp8")


def check_quantization(kind: str, device) -> None:
    """ValueError naming why ``kind`` cannot run on ``device``."""
    if kind not in QUANTIZATIONS:
        raise ValueError(f"unknown quantization {kind!r}; choose one of {', '.join(QUANTIZATIONS)}")
    if kind == "fp8":
        device = torch.device(device)
        if device.type != "cuda" or not torch.cuda.is_available():
            raise ValueError(f"--quantize fp8 needs a CUDA GPU with FP8 (compute capability 8.9+); this is {device}")
        capability = torch.cuda.get_device_capability(device)
        if capability < (8, 9):
            raise ValueError(
                f"--quantize fp8 needs compute capability 8.9+ (Ada, Hopper); {torch.cuda.get_device_name(device)} "
                f"has {capability[0]}.{capability[1]}: use --quantize int8"
            )


def quantize_blocks(transformer: torch.nn.Module, kind: str) -> None:
    """Quantize the weights of ``transformer``'s blocks in place, and mark its identity."""
    from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig, quantize_  # deferred: torchao

    from .adapters import adapter_for, mark_identity  # deferred: diffusers

    check_quantization(kind, next(transformer.parameters()).device)
    config = Int8WeightOnlyConfig() if kind == "int8" else Float8WeightOnlyConfig()
    for block in adapter_for(transformer).blocks():
        quantize_(block, config)
    mark_identity(transformer, quantization=kind)
