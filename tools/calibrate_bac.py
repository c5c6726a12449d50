"""BAC's calibration (``ditfarm calibrate bac``): per unit, how alike its outputs are across steps.

Each calibration prompt is sampled with every unit computed; forward hooks keep every unit's output at every step
(a fixed, evenly spaced subset of at most ``max_tokens`` tokens: the pairwise sums need all steps at once, 50 steps
x 90 units of a 480p Wan video would be 450 GB in full).  Per video and CFG branch it forms, per unit, the (T, T)
cosine similarities and the mean pairwise L1 distance relative to the mean L1 norm (the reuse volatility of BU);
the profile keeps their means over videos and branches.  Runs in one process.
"""

from __future__ import annotations

import numpy as np
import torch

from ..cache.units import unit_modules


def _unit_statistics(features: list[torch.Tensor]) -> tuple[np.ndarray, float]:
    x = torch.stack([f.reshape(-1) for f in features]).double()  # (T, n)
    norms = x.norm(dim=1).clamp_min(1e-30)
    cosine = (x @ x.T) / (norms[:, None] * norms[None, :])
    l1 = torch.cdist(x, x, p=1)
    volatility = float(l1.mean() / x.abs().sum(dim=1).mean().clamp_min(1e-30))
    return cosine.numpy(), volatility


def calibrate_bac(
    pipe,
    prompts: list[str],
    seeds: list[int] | None = None,
    steps: int | None = None,
    guidance_scale: float | None = None,
    max_tokens: int = 1024,
    log=print,
) -> dict:
    """The ``bac`` section of a cache profile."""
    if not prompts:
        raise ValueError("BAC calibration needs at least one prompt")
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}")
    settings = pipe.settings(steps=steps, guidance_scale=guidance_scale)
    seeds = list(seeds) if seeds is not None else list(range(len(prompts)))
    transformer = pipe.transformer
    units = unit_modules(transformer)
    calls = {"n": 0}
    records: dict[tuple[int, int], list[torch.Tensor]] = {}  # (call parity, unit) -> outputs by step
    branches = 2 if settings.guidance_scale > 1 else 1

    def count(module, args, kwargs):
        calls["n"] += 1

    def keep(u):
        def hook(module, args, kwargs, output):
            tokens = output.shape[1]
            index = torch.linspace(0, tokens - 1, min(tokens, max_tokens)).round().long().to(output.device)
            branch = (calls["n"] - 1) % branches
            records.setdefault((branch, u), []).append(output[:, index].detach().float().cpu())

        return hook

    handles = [transformer.register_forward_pre_hook(count, with_kwargs=True)]
    handles += [m.register_forward_hook(keep(u), with_kwargs=True) for u, m in enumerate(units)]
    similarity = np.zeros((len(units), settings.steps, settings.steps))
    volatility = np.zeros(len(units))
    count_videos = 0
    try:
        for prompt, seed in zip(prompts, seeds):
            records.clear()
            calls["n"] = 0
            pipe.generate_latents(prompt, seed=seed, settings=settings)
            for (_branch, u), features in records.items():
                cosine, vol = _unit_statistics(features)
                similarity[u] += cosine
                volatility[u] += vol
            count_videos += len({b for b, _ in records})
            log(f"bac: {prompt!r} recorded")
    finally:
        for h in handles:
            h.remove()
    similarity /= count_videos
    volatility /= count_videos
    return {
        "steps": settings.steps,
        "guidance_scale": settings.guidance_scale,
        "prompts": list(prompts),
        "seeds": seeds,
        "max_tokens": max_tokens,
        "similarity": [[[float(f"{v:.6g}") for v in row] for row in unit] for unit in similarity],
        "volatility": [float(f"{v:.6g}") for v in volatility],
    }
