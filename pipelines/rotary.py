"""Wan's rotary position embedding applied to (B, S, heads, D) queries or keys, exactly as diffusers'
WanAttnProcessor does it; shared by the processors that recompute q and k (profiler, sequence parallelism)."""

import torch


def apply_wan_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[..., 0::2], sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)
