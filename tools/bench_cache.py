"""``ditfarm bench cache``: speed and fidelity of every cache against the uncached video, on held-out prompts.

For each method and knob value, on the same transformer, prompts and seeds:

- speedup: wall time of the denoising loop without cache divided by with it, measured interleaved (an uncached
  run right before each cached run, so both see the same machine load) and taken as the median over videos;
- computed: the fraction of block computations that ran (counted at each block's self-attention query
  projection, so it counts diffusers' caches the same way as ours; for unit caches, BAC, HarmoniCa and PAB, it is
  the share of self-attention calls, the units that cost most);
- PSNR (whole-video MSE) and SSIM of the frames against the uncached video of the same prompt and seed.

Methods: ditfarm's bwcache, profiling, taylorseer, adaptive, ertacache (with the paper's ablation: uniform reuse,
the offline schedule, + timestep adjustment), bac (with its ablation: uniform, unified ACS, block-wise ACS), both
from the calibrations in the profile, and harmonica (the router beside the profile, at several thresholds tau); diffusers' FirstBlockCache,
TaylorSeerCache (on attn1/attn2/ffn, since its default patterns match nothing in Wan), MagCache (calibrated first,
as diffusers documents: a calibrate=True run whose printed ratios are then passed back) and Pyramid Attention
Broadcast (its hook with one state per CFG branch, ``tools/pab.py``; knob: attn1's range N, attn2's N + 4); and the
plainest rival, the same sampler with fewer steps.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from diffusers import FirstBlockCacheConfig, MagCacheConfig, TaylorSeerCacheConfig

from ..cache import disable, enable
from ..cache.metrics import psnr, ssim
from ..cache.policies.harmonica import router_beside
from ..cache.presets import build_config
from ..cache.profile import CacheProfile
from ..pipelines.adapters import adapter_for
from ..pipelines.loading import load_pipeline
from ..pipelines.tiny.scenes import sample_scene_spec
from .adherence import held_out_cases
from .pab import enable_pab
from .settings import BAC_VARIANTS, ERTACACHE_VARIANTS, GRID_FAMILIES


@dataclass
class Method:
    family: str
    knob: float
    apply: Callable | None = None  # enables the cache on the pipe
    steps: int | None = None  # fewer-steps baseline


@dataclass
class Row:
    family: str
    knob: float
    speedup: float
    computed: float
    psnr: float
    ssim: float
    videos: int


def clear_caches(pipe) -> None:
    disable(pipe)
    if getattr(pipe.transformer, "is_cache_enabled", False):
        pipe.transformer.disable_cache()


class BlockCounter:
    """Counts real block computations via forward hooks on each block's self-attention query projection (a
    forecast attention output, as in diffusers' TaylorSeer, never reaches it)."""

    def __init__(self, transformer):
        self.count = 0
        adapter = adapter_for(transformer)
        self.handles = [
            adapter.units(block)["self_attention"].to_q.register_forward_hook(self._hit) for block in adapter.blocks()
        ]

    def _hit(self, *args):
        self.count += 1

    def close(self):
        for h in self.handles:
            h.remove()


def calibrate_magcache(pipe, prompt: str, seed: int, steps: int, guidance_scale: float) -> list[float]:
    """diffusers' documented MagCache calibration: run with calibrate=True and read the printed ratios (cond)."""
    clear_caches(pipe)
    pipe.transformer.enable_cache(MagCacheConfig(calibrate=True, num_inference_steps=steps))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        pipe.generate(prompt, seed=seed, steps=steps, guidance_scale=guidance_scale)
    clear_caches(pipe)
    lists = [
        ast.literal_eval(line)
        for line in printed.getvalue().splitlines()
        if line.startswith("[") and line.endswith("]")
    ]
    if not lists:
        raise RuntimeError("MagCache calibration printed no ratios")
    return lists[0]


def parse_method_filter(text: str | None) -> dict[str, list[float] | None] | None:
    """ "adaptive:0.1/0.2,magcache" -> {"adaptive": [0.1, 0.2], "magcache": None} (None: the family's own grid)."""
    if not text:
        return None
    chosen = {}
    for item in text.split(","):
        family, _, knobs = item.strip().partition(":")
        if family not in GRID_FAMILIES:
            raise ValueError(f"unknown method family {family!r}; choose from {', '.join(GRID_FAMILIES)}")
        chosen[family] = [float(k) for k in knobs.split("/")] if knobs else None
    return chosen


def method_grid(
    pipe,
    steps: int,
    guidance_scale: float,
    profile,
    calibration_prompt: str,
    quick: bool = False,
    only: dict[str, list[float] | None] | None = None,
):
    def ours(policy, knob):
        if policy == "adaptive-block":  # the adaptive policy deciding per block instead of per step
            config = replace(build_config("adaptive", knob, profile, pipe.cache_settings), granularity="block")
        elif policy in BAC_VARIANTS:
            config = replace(build_config("bac", knob, profile, pipe.cache_settings), variant=BAC_VARIANTS[policy])
        elif policy in ERTACACHE_VARIANTS:
            config = replace(
                build_config("ertacache", knob, profile, pipe.cache_settings), variant=ERTACACHE_VARIANTS[policy]
            )
        else:
            config = build_config(policy, knob, profile, pipe.cache_settings)
        return Method(policy, knob, lambda p: enable(p, config))

    def diffusers_cache(family, knob, config):
        return Method(family, knob, lambda p: p.transformer.enable_cache(config))

    grid = {
        "bwcache": [0.1, 0.15, 0.2, 0.25, 0.3],
        "profiling": [2, 3, 4, 6, 8],
        "taylorseer": [2, 3, 4, 5, 6],
        "adaptive": [0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0],
        "adaptive-block": [0.0, 0.02, 0.04, 0.06, 0.08, 0.12, 0.16, 0.24, 0.32],
        "ertacache": [0.08, 0.1, 0.12, 0.15, 0.2, 0.25, 0.3, 0.4],  # as calibrated in tiny's profile
        "ertacache-offline-dt": [0.15, 0.2, 0.3],
        "ertacache-offline": [0.15, 0.2, 0.3],
        "ertacache-uniform": [0.15, 0.2, 0.3],
        "bac": [0.6, 0.5, 0.4, 0.33, 0.25, 0.2],
        "bac-blockwise": [0.5, 0.33],
        "bac-unified": [0.5, 0.33],
        "bac-uniform": [0.5, 0.33],
        "harmonica": [0.01, 0.03, 0.1, 0.3, 0.9],  # the router threshold tau: from most of tiny's units computed to few
        "pab": [2, 3, 4, 5, 6],
        "fbcache": [0.02, 0.05, 0.08, 0.12, 0.2],
        "diffusers-taylorseer": [2, 3, 4, 5],
        "magcache": [0.02, 0.04, 0.06, 0.08, 0.1, 0.12, 0.15, 0.25],
        "fewer-steps": [round(steps * f) for f in (0.8, 0.67, 0.5, 0.4, 0.33, 0.27, 0.2, 0.17)],
    }
    if quick:
        grid = {k: v[:: max(1, len(v) // 2)] for k, v in grid.items()}
    if only is not None:
        grid = {k: (only[k] if only[k] is not None else v) if k in only else [] for k, v in grid.items()}
    grid["fewer-steps"] = [int(k) for k in grid["fewer-steps"]]
    methods = []
    for policy in (
        "bwcache",
        "profiling",
        "taylorseer",
        "adaptive",
        "adaptive-block",
        *ERTACACHE_VARIANTS,
        *BAC_VARIANTS,
    ):
        needs = "ertacache" if policy in ERTACACHE_VARIANTS else "bac" if policy in BAC_VARIANTS else None
        if (policy == "profiling" and profile is None) or (needs and getattr(profile, needs, None) is None):
            continue
        methods += [ours(policy, k) for k in grid[policy]]
    if profile is not None and getattr(profile, "source", None) and router_beside(profile).exists():
        methods += [ours("harmonica", k) for k in grid["harmonica"]]
    methods += [Method("pab", k, lambda p, k=k: enable_pab(p, spatial=int(k))) for k in grid["pab"]]
    methods += [diffusers_cache("fbcache", k, FirstBlockCacheConfig(threshold=k)) for k in grid["fbcache"]]
    wan_modules = [r"blocks\.\d+\.attn1", r"blocks\.\d+\.attn2", r"blocks\.\d+\.ffn"]
    methods += [
        diffusers_cache(
            "diffusers-taylorseer",
            k,
            TaylorSeerCacheConfig(cache_interval=k, cache_identifiers=wan_modules, taylor_factors_dtype=torch.float32),
        )
        for k in grid["diffusers-taylorseer"]
    ]
    ratios = calibrate_magcache(pipe, calibration_prompt, 0, steps, guidance_scale) if grid["magcache"] else []
    methods += [
        diffusers_cache("magcache", k, MagCacheConfig(threshold=k, mag_ratios=ratios, num_inference_steps=steps))
        for k in grid["magcache"]
    ]
    methods += [Method("fewer-steps", k, None, steps=k) for k in grid["fewer-steps"]]
    return methods


def _timed(pipe, prompt, seed, steps, guidance_scale):
    start = time.perf_counter()
    frames = pipe.generate(prompt, seed=seed, steps=steps, guidance_scale=guidance_scale)
    return time.perf_counter() - start, frames


def run_benchmark(pipe, cases, methods, steps: int, guidance_scale: float, log=print) -> list[Row]:
    references = {}
    for prompt, seed in cases:
        references[(prompt, seed)] = _timed(pipe, prompt, seed, steps, guidance_scale)[1]
    n_blocks = len(adapter_for(pipe.transformer).blocks())
    branches = 2 if guidance_scale > 1 else 1
    rows = []
    for method in methods:
        ratios, psnrs, ssims, fractions = [], [], [], []
        for prompt, seed in cases:
            clear_caches(pipe)
            t_none, _ = _timed(pipe, prompt, seed, steps, guidance_scale)
            if method.apply is not None:
                method.apply(pipe)
            counter = BlockCounter(pipe.transformer)
            try:
                t_cached, frames = _timed(pipe, prompt, seed, method.steps or steps, guidance_scale)
            finally:
                counter.close()
                clear_caches(pipe)
            ratios.append(t_none / t_cached)
            fractions.append(counter.count / (n_blocks * steps * branches))
            psnrs.append(psnr(references[(prompt, seed)], frames))
            ssims.append(ssim(references[(prompt, seed)], frames))
        finite = [p for p in psnrs if np.isfinite(p)]
        row = Row(
            family=method.family,
            knob=method.knob,
            speedup=statistics.median(ratios),
            computed=float(np.mean(fractions)),
            psnr=float(np.mean(finite)) if len(finite) == len(psnrs) else float("inf"),
            ssim=float(np.mean(ssims)),
            videos=len(cases),
        )
        log(
            f"{row.family:>22} {row.knob:>6g}  {row.speedup:5.2f}x  computed {row.computed:5.1%}  "
            f"PSNR {row.psnr:6.2f}  SSIM {row.ssim:.4f}"
        )
        rows.append(row)
    return rows


def markdown_table(rows: list[Row]) -> str:
    lines = ["| method | knob | speedup | blocks computed | PSNR (dB) | SSIM |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.family} | {r.knob:g} | {r.speedup:.2f}x | {r.computed:.1%} | {r.psnr:.2f} | {r.ssim:.4f} |")
    return "\n".join(lines)


def target_check(rows: list[Row], ours: str = "adaptive", bar_speedup: float = 1.5) -> dict:
    """The cache issue's two targets, read off one run's rows.  The bar: the best PSNR any other method reaches at
    ``bar_speedup`` or faster; ``fastest_at_bar``: our fastest row at or above that PSNR.  ``dominated_by``: every
    other row that skipped something (computed < 100%) for which none of ours is both as fast and as faithful."""
    mine = [r for r in rows if r.family == ours]
    others = [r for r in rows if r.family != ours]
    bar = max((r.psnr for r in others if r.speedup >= bar_speedup), default=float("nan"))
    at_bar = [r.speedup for r in mine if r.psnr >= bar]
    beaten = [
        r for r in others if r.computed < 1.0 and not any(m.speedup >= r.speedup and m.psnr >= r.psnr for m in mine)
    ]
    return {
        "bar_psnr": bar,
        "fastest_at_bar": max(at_bar, default=float("nan")),
        "dominated_by": [f"{r.family} {r.knob:g}: {r.speedup:.2f}x {r.psnr:.2f} dB" for r in beaten],
    }


def frontier_plot(rows: list[Row], path) -> None:
    import matplotlib  # deferred: matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred: matplotlib

    fig, ax = plt.subplots(figsize=(9, 6))
    families = list(dict.fromkeys(r.family for r in rows))
    colours = plt.get_cmap("tab20").colors  # 20 distinct colours, then the line styles tell families apart
    styles = ("-", "--", ":", "-.")
    for i, family in enumerate(families):
        pts = sorted((r.speedup, r.psnr) for r in rows if r.family == family and np.isfinite(r.psnr))
        if pts:
            style = (
                dict(lw=3, marker="o", color="black", zorder=5)
                if family == "adaptive"
                else dict(lw=1.3, marker=".", color=colours[i % 20], ls=styles[(i // 20 + i) % 4])
            )
            ax.plot(*zip(*pts), label=family, **style)
    ax.set(
        xlabel="wall-clock speedup of the denoising loop (x)",
        ylabel="PSNR vs uncached (dB)",
        title="speed vs fidelity, held-out prompts",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_command(args) -> int:
    only = parse_method_filter(args.methods)

    torch.set_num_threads(args.threads)
    pipe = load_pipeline(args.model)
    settings = pipe.settings(steps=args.steps, guidance_scale=args.guidance_scale)
    profile_path = args.profile or pipe.default_cache_profile()
    profile = CacheProfile.load(profile_path) if profile_path else None
    cases = [(spec.prompt, seed) for spec, seed in held_out_cases(args.videos, seed=4242)]
    calibration = sample_scene_spec(np.random.default_rng(99)).prompt  # a training-split prompt
    methods = method_grid(pipe, settings.steps, settings.guidance_scale, profile, calibration, args.quick, only)
    rows = run_benchmark(pipe, cases, methods, settings.steps, settings.guidance_scale)
    run = {
        "model": str(args.model),
        "steps": settings.steps,
        "guidance_scale": settings.guidance_scale,
        "threads": args.threads,
        "cases": cases,
        "profile": str(profile_path) if profile_path else None,
    }
    report(run, rows, args.json, args.png)
    return 0


def report(run: dict, rows: list[Row], json_path: Path, png: Path | None = None) -> dict:
    """Print the table and the target reading, write the JSON and the frontier plot."""
    print(markdown_table(rows))
    families = {r.family for r in rows}
    check = target_check(rows) if "adaptive" in families and len(families) > 1 else None
    if check:
        print(
            f"\nbar (best other PSNR at >= 1.5x): {check['bar_psnr']:.2f} dB; adaptive's fastest at or above it: "
            f"{check['fastest_at_bar']:.2f}x; other rows no adaptive row matches in both speed and PSNR: "
            f"{', '.join(check['dominated_by']) or 'none'}"
        )
    json_path.parent.mkdir(parents=True, exist_ok=True)
    result = {**run, "rows": [asdict(r) for r in rows], "target_check": check}
    json_path.write_text(json.dumps(result, indent=2))
    frontier_plot(rows, png or json_path.with_suffix(".png"))
    return result


def merge_runs(paths: list[Path]) -> tuple[dict, list[Row]]:
    """Rows of several runs of the same setting (model, steps, guidance, prompts and seeds) as one: the grid split
    over processes, or a family added later."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    keys = ("model", "steps", "guidance_scale", "cases", "profile")
    for path, other in zip(paths[1:], runs[1:]):
        differ = [k for k in keys if json.loads(json.dumps(other.get(k))) != json.loads(json.dumps(runs[0].get(k)))]
        if differ:
            raise ValueError(f"{path} ran another setting than {paths[0]} ({', '.join(differ)} differ)")
    rows = [Row(**r) for run in runs for r in run["rows"]]
    seen = set()
    for r in rows:
        if (r.family, r.knob) in seen:
            raise ValueError(f"{r.family} {r.knob:g} is in more than one of the runs")
        seen.add((r.family, r.knob))
    order = {family: i for i, family in enumerate(GRID_FAMILIES)}
    rows.sort(key=lambda r: order.get(r.family, len(order)))
    run = {k: runs[0].get(k) for k in keys} | {
        "threads": runs[0].get("threads"),
        "merged_from": [str(p) for p in paths],
    }
    return run, rows


def run_merge_command(args) -> int:
    run, rows = merge_runs(args.runs)
    report(run, rows, args.json, args.png)
    return 0
