"""Foreground masks from the model's own predictions (no segmentation model).

ProfilingDiT needs to know which tokens are foreground; it runs PCA on the predicted noise and then SAM2.  We use a
signal the model already gives: its prediction of the clean video x0 = x_s - sigma_s * v_s.  In a video with a
mostly static background, the background of x0 is close to its temporal median, and the foreground (what moves)
is not.  The per-pixel deviation from the temporal median, summed over channels, is thresholded per video with
Otsu's method.  It works the same on pixels (tiny) and on VAE latents (Wan), and needs nothing but tensors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def otsu_threshold(values: torch.Tensor, bins: int = 128) -> float:
    """The threshold that maximises the between-class variance of a 1-D sample."""
    v = values.flatten().float()
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        return hi
    hist = torch.histc(v, bins=bins, min=lo, max=hi)
    centres = torch.linspace(lo, hi, bins + 1)[:-1] + (hi - lo) / bins / 2
    weight0 = torch.cumsum(hist, 0)
    weight1 = weight0[-1] - weight0
    mean0 = torch.cumsum(hist * centres, 0) / weight0.clamp(min=1)
    mean1 = ((hist * centres).sum() - torch.cumsum(hist * centres, 0)) / weight1.clamp(min=1)
    between = weight0 * weight1 * (mean0 - mean1) ** 2
    return float(centres[int(torch.argmax(between))])


def foreground_mask(x0: torch.Tensor) -> torch.Tensor:
    """Per-frame foreground (T, H, W) bool from a predicted clean video x0 of shape (C, T, H, W)."""
    x0 = x0.float()
    deviation = (x0 - x0.median(dim=1, keepdim=True).values).abs().sum(dim=0)  # (T, H, W)
    return deviation > otsu_threshold(deviation)


def token_mask(mask: torch.Tensor, patch_size: tuple[int, int, int]) -> torch.Tensor:
    """Pool a (T, H, W) pixel/latent mask to the transformer's token grid, flattened like its sequence (T'H'W')."""
    pt, ph, pw = patch_size
    pooled = F.avg_pool3d(mask.float()[None, None], kernel_size=(pt, ph, pw), stride=(pt, ph, pw))[0, 0]
    return (pooled >= 0.5).flatten()


def mask_iou(predicted: torch.Tensor, truth: torch.Tensor) -> float:
    predicted, truth = predicted.bool(), truth.bool()
    union = (predicted | truth).sum().item()
    return (predicted & truth).sum().item() / union if union else 1.0
