"""``ditfarm profile``: learn from a model itself which blocks can be cached, and when.

For each calibration prompt it samples with every block computed and records, per block:

- the relative L1 change of the block's residual between adjacent steps (through the cache engine with a policy
  that computes everything, so the numbers are exactly what the runtime policies will see), whose mean over
  prompts is the block's change curve;
- on a few probe steps, the attention each token receives in the block's self-attention (chunked, sampled
  queries: no N x N matrix), scored against the foreground mask derived from the model's own output
  (``cache.foreground``): R_attn = |high ∩ fg| / |fg|, with "high" the |fg| most-attended tokens.  1 means the
  block's attention sits on the foreground; |fg| / N is what a block blind to it would score.

Blocks are then split into foreground and background at the R_attn threshold that best separates the two groups
(Otsu's criterion over the sorted values, keeping 20-50% of blocks foreground).  The result is a CacheProfile
(JSON) and a PNG that shows both measurements at a glance.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from ..pipelines.adapters import adapter_for
from .attention_probe import attach_probes, detach_probes
from .engine import CacheEngine
from .foreground import foreground_mask, mask_iou, token_mask
from .policies.base import CachePolicy, DecisionState, all_blocks
from .profile import BACKGROUND, FOREGROUND, BlockProfile, CacheProfile, model_identity


class RecordingPolicy(CachePolicy):
    """Computes every block and keeps each branch's decision state, whose history holds the measured changes."""

    name = "record"
    indicator = "residual"
    observes_last_step = True  # the change curve needs the final step too

    def __init__(self):
        self.states: list[DecisionState] = []

    def new_state(self, num_blocks: int, num_steps: int) -> DecisionState:
        state = super().new_state(num_blocks, num_steps)
        self.states.append(state)
        return state

    def decide(self, state, step, computed, sums) -> np.ndarray:
        return all_blocks(state.num_blocks)


@dataclass
class VideoRecord:
    change: np.ndarray  # (steps, blocks) relative residual change, cond branch
    r_attn: np.ndarray  # (blocks,) this video's foreground attention ratio (NaN if the mask failed)
    foreground_share: float


@dataclass
class ProfileResult:
    profile: CacheProfile
    videos: list[VideoRecord] = field(default_factory=list)


def r_attn_of(scores: torch.Tensor, fg_tokens: torch.Tensor) -> float:
    """|high ∩ fg| / |fg| with high = the |fg| tokens that receive the most attention."""
    k = int(fg_tokens.sum())
    if k == 0:
        return math.nan
    high = torch.topk(scores, k).indices
    return float(fg_tokens[high].sum()) / k


def split_threshold(values: np.ndarray, min_share: float = 0.2, max_share: float = 0.5) -> float:
    """R_attn threshold tau: blocks >= tau are foreground; the split maximises between-group variance."""
    order = np.sort(values)[::-1]
    n = len(order)
    best, best_score = order[max(0, math.ceil(min_share * n) - 1)], -1.0
    for k in range(max(1, math.ceil(min_share * n)), max(1, math.floor(max_share * n)) + 1):
        top, rest = order[:k], order[k:]
        if len(rest) == 0:
            continue
        score = k * (n - k) * (top.mean() - rest.mean()) ** 2
        if score > best_score:
            best, best_score = (order[k - 1] + order[k]) / 2, score
    return float(best)


class _Watch:
    """What the profiler attaches to one transformer: an engine that computes everything and records each
    branch's changes, and attention probes."""

    def __init__(self, transformer: torch.nn.Module, max_queries: int):
        self.transformer = transformer
        self.adapter = adapter_for(transformer)
        self.recorder = RecordingPolicy()
        self.engine = CacheEngine(transformer, self.recorder)
        self.engine.attach()
        self.probes = attach_probes(transformer, max_queries)
        self.records: list[VideoRecord] = []

    def detach(self) -> None:
        detach_probes(self.transformer, self.probes)
        self.engine.detach()

    def begin_video(self, probing: bool) -> None:
        self.recorder.states.clear()
        self.probe(probing)
        for p in self.probes:
            p.records.clear()

    def probe(self, enabled: bool) -> None:
        for p in self.probes:
            p.enabled = enabled

    def end_video(self, fg: torch.Tensor | None, share: float) -> None:
        """File this video's record, where this transformer ran in it (an expert may sit a short video out)."""
        cond = next((s for s in self.recorder.states if getattr(s, "branch", "cond") == "cond"), None)
        if cond is None or not cond.history:
            return
        usable = fg is not None and 0 < share < 0.6
        r_attn = np.array(
            [
                np.nanmean([r_attn_of(rec, fg) for rec in p.records]) if usable and p.records else math.nan
                for p in self.probes
            ]
        )
        self.records.append(VideoRecord(np.stack(cond.history), r_attn, share))


def profile_pipeline(
    pipe,
    prompts: list[str],
    seeds: list[int] | None = None,
    steps: int | None = None,
    guidance_scale: float | None = None,
    probe_steps: int = 4,
    max_queries: int = 2048,
) -> ProfileResult:
    """Sample each prompt with full compute and measure every block (see the module docstring).  A model whose
    experts take turns over the steps gets one profile per expert, each measured on the steps that expert runs,
    in one file (``CacheProfile.experts``)."""
    transformers = pipe.transformers()
    settings = pipe.settings(steps=steps, guidance_scale=guidance_scale)
    seeds = seeds or list(range(len(prompts)))
    probe_at = set(np.linspace(settings.steps * 0.3, settings.steps * 0.9, probe_steps).round().astype(int).tolist())
    patch = adapter_for(pipe.transformer).patch_size()
    watches: dict[str, _Watch] = {}
    sampled: dict[str, object] = {}  # each video's final latents, as the loop left them
    try:
        for name, transformer in transformers.items():
            watches[name] = _Watch(transformer, max_queries)
        for prompt, seed in zip(prompts, seeds):
            for watch in watches.values():
                watch.begin_video(0 in probe_at)
            sampled.clear()

            def on_step(i, latents):
                sampled["latents"] = latents  # as the loop sampled them: the tokens the probes saw
                for watch in watches.values():
                    watch.probe((i + 1) in probe_at)

            pipe.generate_latents(prompt, seed=seed, settings=settings, on_step=on_step)
            fg = token_mask(foreground_mask(pipe.channels_first(sampled["latents"])[0]), patch)
            share = float(fg.float().mean())
            for watch in watches.values():
                watch.end_video(fg, share)
    finally:
        for watch in watches.values():
            watch.detach()

    calibration = {
        "prompts": list(prompts),
        "seeds": list(seeds),
        "steps": settings.steps,
        "guidance_scale": settings.guidance_scale,
        "probe_steps": sorted(probe_at),
    }
    profiles = {name: _profile_of(name, watch, calibration) for name, watch in watches.items()}
    first, *others = profiles
    profile = profiles[first]
    profile.experts = {name: profiles[name] for name in others}
    return ProfileResult(profile, watches[first].records)


def _profile_of(name: str, watch: _Watch, calibration: dict) -> CacheProfile:
    records = watch.records
    if not records:
        raise RuntimeError(f"{name} ran in none of the calibration videos; profile with more steps")
    with warnings.catch_warnings():  # a step no block has a change for yet (the first) averages to NaN, as meant
        warnings.simplefilter("ignore", RuntimeWarning)
        change = np.nanmean(np.stack([r.change for r in records]), axis=0)  # (its steps, blocks)
        r_attn = np.nanmean(np.stack([r.r_attn for r in records]), axis=0)
    if np.isnan(r_attn).any():
        raise RuntimeError(
            f"no calibration video gave {name} a usable foreground mask on a probed step it ran; try other "
            "prompts, more of them, or more probe steps"
        )
    tau = split_threshold(r_attn)
    blocks = [
        BlockProfile(b, float(r_attn[b]), FOREGROUND if r_attn[b] >= tau else BACKGROUND, change[:, b].tolist())
        for b in range(len(watch.adapter.blocks()))
    ]
    share = float(np.mean([r.foreground_share for r in records]))
    return CacheProfile(
        model=model_identity(watch.transformer),
        blocks=blocks,
        r_attn_threshold=tau,
        calibration={**calibration, "mean_foreground_share": share},
    )


def check_masks_on_references(pipe, scenes, start_sigma: float = 0.8, steps: int | None = None) -> float:
    """Mean IoU of the model-derived foreground mask against true masks, on videos whose truth is known.

    Each reference video is noised to ``start_sigma`` and denoised by the model (SDEdit), so the output stays
    aligned with the reference; the mask is then derived from the model's output alone, as in profiling.
    """
    settings = pipe.settings(steps=steps)
    sigmas = pipe.scheduler_sigmas(settings.steps)
    start = int(np.argmin(np.abs(sigmas[:-1] - start_sigma)))
    ious = []
    for i, scene in enumerate(scenes):
        clean = torch.from_numpy(scene.frames).permute(3, 0, 1, 2)[None] * 2 - 1
        latents = pipe.generate_latents(scene.spec.prompt, seed=i, settings=settings, start_step=start, init=clean)
        ious.append(mask_iou(foreground_mask(latents[0]), torch.from_numpy(scene.masks)))
    return float(np.mean(ious))


def plot_profile(profile: CacheProfile, path) -> None:
    """Per-block change curves (left) and R_attn with the threshold (right), coloured by class."""
    import matplotlib  # deferred: matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred: matplotlib

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    colours = {FOREGROUND: "tab:red", BACKGROUND: "tab:blue"}
    for b in profile.blocks:
        curve = np.array(b.change, dtype=float)
        left.plot(
            np.arange(len(curve)),
            curve,
            color=colours[b.block_class],
            alpha=0.35 + 0.6 * b.index / len(profile.blocks),
            label=f"block {b.index} ({b.block_class[:2]})",
        )
    left.set(xlabel="denoising step", ylabel="relative L1 change of block residual", title="change per step (U-shape)")
    left.legend(fontsize=7, ncol=2)
    idx = [b.index for b in profile.blocks]
    right.bar(idx, [b.r_attn for b in profile.blocks], color=[colours[b.block_class] for b in profile.blocks])
    right.axhline(profile.r_attn_threshold, color="k", ls="--", label=f"tau = {profile.r_attn_threshold:.3f}")
    share = profile.calibration.get("mean_foreground_share")
    if share:
        right.axhline(share, color="grey", ls=":", label=f"blind to foreground ({share:.3f})")
    right.set(xlabel="block", ylabel="R_attn", title="foreground attention ratio (red: foreground blocks)")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
