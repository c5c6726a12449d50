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


class _Recorder:
    """Forward hooks on one transformer's units: each unit's output at every step it runs, per CFG branch (the
    transformer's calls alternate cond, uncond at a guided scale)."""

    def __init__(self, transformer, guidance_scale: float, max_tokens: int):
        self.units = unit_modules(transformer)
        self.guidance_scale = guidance_scale
        self.branches = 2 if guidance_scale > 1 else 1
        self.max_tokens = max_tokens
        self.calls = 0
        self.records: dict[tuple[int, int], list[torch.Tensor]] = {}  # (branch, unit) -> outputs by step
        self.handles = [transformer.register_forward_pre_hook(self._count, with_kwargs=True)]
        self.handles += [m.register_forward_hook(self._keep(u), with_kwargs=True) for u, m in enumerate(self.units)]

    def _count(self, module, args, kwargs):
        self.calls += 1

    def _keep(self, u):
        def hook(module, args, kwargs, output):
            tokens = output.shape[1]
            index = torch.linspace(0, tokens - 1, min(tokens, self.max_tokens)).round().long().to(output.device)
            branch = (self.calls - 1) % self.branches
            self.records.setdefault((branch, u), []).append(output[:, index].detach().float().cpu())

        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def calibrate_bac(
    pipe,
    prompts: list[str],
    seeds: list[int] | None = None,
    steps: int | None = None,
    guidance_scale: float | None = None,
    max_tokens: int = 1024,
    log=print,
) -> dict[str, dict]:
    """Per transformer (by component; a model whose experts take turns has several), the ``bac`` section of its
    cache profile, over the steps it runs (its segment's steps, counted from its first, as its cache counts them)."""
    if not prompts:
        raise ValueError("BAC calibration needs at least one prompt")
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}")
    settings = pipe.settings(steps=steps, guidance_scale=guidance_scale)
    seeds = list(seeds) if seeds is not None else list(range(len(prompts)))
    scales = [settings.guidance_scale] + [settings.second_guidance_scale] * (len(pipe.transformers()) - 1)
    recorders = {name: _Recorder(t, scale, max_tokens) for (name, t), scale in zip(pipe.transformers().items(), scales)}
    sums = {name: [0.0, np.zeros(len(r.units)), 0] for name, r in recorders.items()}  # similarity, volatility, n
    try:
        for prompt, seed in zip(prompts, seeds):
            for recorder in recorders.values():
                recorder.records.clear()
                recorder.calls = 0
            pipe.generate_latents(prompt, seed=seed, settings=settings)
            for name, recorder in recorders.items():
                for (_branch, u), features in recorder.records.items():
                    cosine, vol = _unit_statistics(features)
                    if np.ndim(sums[name][0]) == 0:
                        sums[name][0] = np.zeros((len(recorder.units), *cosine.shape))
                    sums[name][0][u] += cosine
                    sums[name][1][u] += vol
                sums[name][2] += len({b for b, _ in recorder.records})
            log(f"bac: {prompt!r} recorded")
    finally:
        for recorder in recorders.values():
            recorder.remove()
    idle = [name for name, (_, _, n) in sums.items() if n == 0]
    if idle:
        raise ValueError(
            f"{', '.join(idle)} ran no step of a {settings.steps}-step video: calibrate at more steps, so that every "
            "expert runs"
        )
    sections = {}
    for name, (similarity, volatility, count) in sums.items():
        similarity, volatility = similarity / count, volatility / count
        sections[name] = {
            "steps": similarity.shape[1],  # the steps this transformer runs (its segment, where experts take turns)
            "video_steps": settings.steps,
            "guidance_scale": recorders[name].guidance_scale,
            "prompts": list(prompts),
            "seeds": seeds,
            "max_tokens": max_tokens,
            "similarity": [[[float(f"{v:.6g}") for v in row] for row in unit] for unit in similarity],
            "volatility": [float(f"{v:.6g}") for v in volatility],
        }
    return sections
