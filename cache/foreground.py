"""Foreground masks from the model's own predictions (no segmentation model).

ProfilingDiT needs to know which tokens are foreground; it runs PCA on the predicted noise and then SAM2.  We use a
signal the model already gives: its prediction of the clean video x0 = x_s - sigma_s * v_s, and the fact that in
a video with a mostly static background what moves is the foreground.

Two passes, each thresholded per video with Otsu's method on the per-pixel deviation (summed over channels):

1. deviation from the temporal median.  Where an object passes briefly this finds it, but along the middle of an
   object's track the object covers a pixel for most frames, the median *is* the object, and the mask there is
   inverted (the object is missed, the uncovered frames are flagged): on the data generator's own videos this
   pass alone scores a mean IoU of 0.54 against the true masks.
2. the pixels that pass 1 never flagged are static background we trust; the background behind everything else is
   filled in from them (inpainted ring by ring from the nearest static pixels), and the deviation from that
   background is the mask.  IoU 0.97 on the generator's videos.

It works the same on pixels (tiny) and on VAE latents (Wan), and needs nothing but tensors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

MIN_STATIC_SHARE = 0.25  # pass 2 needs at least this share of never-flagged pixels to fill the background from


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


def inpaint(image: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """``image`` (C, H, W) with its pixels outside ``known`` (H, W) replaced, ring by ring, by the mean of their
    already-filled 8-neighbours: the smooth fill a static background needs, and no more."""
    known = known.float()[None]
    filled = image * known
    for _ in range(max(image.shape[1:])):
        if bool(known.all()):
            break
        total = F.avg_pool2d(filled[None], 3, 1, 1, count_include_pad=False)[0]
        share = F.avg_pool2d(known[None], 3, 1, 1, count_include_pad=False)[0]
        ring = (share > 0) & (known == 0)
        filled = torch.where(ring, total / share.clamp(min=1e-12), filled)
        known = torch.where(ring, torch.ones_like(known), known)
    return filled


def deviation_mask(x0: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """(T, H, W) pixels whose channel-summed deviation from ``background`` exceeds the video's Otsu threshold."""
    deviation = (x0 - background).abs().sum(dim=0)
    return deviation > otsu_threshold(deviation)


def foreground_mask(x0: torch.Tensor) -> torch.Tensor:
    """Per-frame foreground (T, H, W) bool from a predicted clean video x0 of shape (C, T, H, W)."""
    x0 = x0.float()
    median = x0.median(dim=1).values  # (C, H, W)
    first_pass = deviation_mask(x0, median[:, None])
    static = ~first_pass.any(dim=0)
    if static.all() or static.float().mean() < MIN_STATIC_SHARE:
        return first_pass  # nothing moves, or no static background to fill from (camera motion, noise)
    return deviation_mask(x0, inpaint(median, static)[:, None])


def token_mask(mask: torch.Tensor, patch_size: tuple[int, int, int]) -> torch.Tensor:
    """Pool a (T, H, W) pixel/latent mask to the transformer's token grid, flattened like its sequence (T'H'W')."""
    pt, ph, pw = patch_size
    pooled = F.avg_pool3d(mask.float()[None, None], kernel_size=(pt, ph, pw), stride=(pt, ph, pw))[0, 0]
    return (pooled >= 0.5).flatten()


def mask_iou(predicted: torch.Tensor, truth: torch.Tensor) -> float:
    predicted, truth = predicted.bool(), truth.bool()
    union = (predicted | truth).sum().item()
    return (predicted & truth).sum().item() / union if union else 1.0
