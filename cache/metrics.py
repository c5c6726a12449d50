"""Fidelity of a cached video against the uncached one of the same prompt and seed.

Frames are scaled to [0, 1].  PSNR uses the MSE of the whole video (not a mean of per-frame PSNRs, which
overweights easy frames); SSIM is the usual Gaussian-window SSIM (11 x 11, sigma 1.5, K1 0.01, K2 0.03) per frame
and channel, averaged.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def _as_unit(frames) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(frames))
    return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()


def psnr(reference, test) -> float:
    mse = float(((_as_unit(reference) - _as_unit(test)) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def ssim(reference, test, window: int = 11, sigma: float = 1.5) -> float:
    """Mean SSIM of (T, H, W, C) videos."""
    a = _as_unit(reference).permute(0, 3, 1, 2)  # (T, C, H, W)
    b = _as_unit(test).permute(0, 3, 1, 2)
    window = min(window, a.shape[-1], a.shape[-2])
    coords = torch.arange(window, dtype=torch.float32) - (window - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = (g / g.sum())[:, None] @ (g / g.sum())[None, :]
    c = a.shape[1]
    kernel = g.expand(c, 1, window, window)

    def blur(x):
        return F.conv2d(x, kernel, groups=c)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(s.mean())
