"""Per-step time of the denoising loop on a Wan2.1-config transformer with random weights, per cache policy.

    ditfarm bench steps --device cuda --dtype bfloat16 --json benchmarks/wan-1.3b-steps-h100.json

Fidelity needs trained weights, but time does not: this measures what the cache engine costs and saves on the
real model's shapes (Wan2.1-T2V-1.3B: 30 blocks of width 1536; 480x832x81 is 21x60x104 latents, 32,760 tokens)
with the one loop every ditfarm model runs (``pipelines.denoise``, CFG as two calls per step, Wan's UniPC flow
scheduler).  Policies at knob 0 compute every block, so their time over ``none``'s is the engine's overhead;
a policy at its default knob shows the saving (on random weights the skip pattern is not the trained model's).
Methods are interleaved and repeated; the table reports medians.  Small dimensions (``--layers 2 --frames 5
--height 64 --width 64``) run on a CPU, which is how the tests keep this script honest.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from diffusers import UniPCMultistepScheduler

from ..cache import disable, enable, last_video_stats
from ..cache.presets import build_config
from ..pipelines.denoise import denoise, reset_caches
from ..pipelines.wan_configs import TEXT_TOKENS, VAE_STRIDE, WAN21_1_3B
from .bench_timing import latent_shape, random_transformer, synchronize


def checked_latent_shape(frames: int, height: int, width: int) -> tuple[int, ...]:
    """The latents of a video the command line asked for, refused by name where Wan cannot render it."""
    if (frames - 1) % VAE_STRIDE[0] or height % 16 or width % 16:
        raise ValueError(f"Wan needs frames = 4k + 1 and height, width multiples of 16; got {frames}x{height}x{width}")
    return latent_shape(frames, height, width)


def parse_method(text: str) -> tuple[str, float | None]:
    """ "bwcache:0.15" -> ("bwcache", 0.15); "none" -> ("none", None)."""
    policy, _, knob = text.partition(":")
    return policy, (float(knob) if knob else None)


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def build_transformer(layers: int, device: torch.device, dtype: torch.dtype):
    return random_transformer(WAN21_1_3B, layers, device, dtype)


def timed_video(transformer, latents, cond, uncond, steps: int, guidance_scale: float, device) -> float:
    """Seconds for one video's denoising loop (``steps`` scheduler steps, two transformer calls each)."""
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0, num_train_timesteps=1000
    )
    scheduler.set_timesteps(steps, device=device)
    reset_caches(transformer)
    synchronize(device)
    start = time.perf_counter()
    denoise(transformer, scheduler, latents.clone(), cond, uncond, steps, guidance_scale)
    synchronize(device)
    return time.perf_counter() - start


def run(args: argparse.Namespace, log=print) -> dict:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, args.dtype)
    methods = [parse_method(m) for m in args.methods.split(",")]
    for policy, knob in methods:
        if policy == "profiling":
            raise ValueError("profiling needs a profile of trained weights; it has no meaning on random ones")
        build_config(policy, knob)  # refuses unknown policies and bad knobs before the model is built
    shape = checked_latent_shape(args.frames, args.height, args.width)
    transformer = build_transformer(args.layers, device, dtype)
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(shape, generator=gen).to(device, dtype)
    cond = torch.randn(1, TEXT_TOKENS, WAN21_1_3B["text_dim"], generator=gen).to(device, dtype)
    uncond = torch.randn(1, TEXT_TOKENS, WAN21_1_3B["text_dim"], generator=gen).to(device, dtype)
    pt, ph, pw = WAN21_1_3B["patch_size"]
    tokens = (shape[2] // pt) * (shape[3] // ph) * (shape[4] // pw)
    log(f"{args.layers} blocks, {tokens} tokens, {args.steps} steps x 2 CFG calls, {dtype}, {device_name(device)}")

    timed_video(transformer, latents, cond, uncond, 2, args.guidance_scale, device)  # warm-up: kernels, allocator
    seconds: dict[str, list[float]] = {m: [] for m in args.methods.split(",")}
    fractions: dict[str, float] = {}
    for _ in range(args.repeats):
        for name, (policy, knob) in zip(seconds, methods):
            enable(transformer, build_config(policy, knob))
            seconds[name].append(
                timed_video(transformer, latents, cond, uncond, args.steps, args.guidance_scale, device)
            )
            stats = last_video_stats(transformer)
            fractions[name] = 1.0 if stats is None else 1.0 - stats.skipped_fraction
            disable(transformer)
    base = statistics.median(seconds["none"]) if "none" in seconds else None
    rows = []
    for name, times in seconds.items():
        median = statistics.median(times)
        rows.append(
            {
                "method": name,
                "seconds_per_step": median / args.steps,
                "video_seconds": median,
                "all_seconds": times,
                "computed_fraction": fractions[name],
                "time_vs_none": (median / base) if base else None,
            }
        )
    return {
        "device": device_name(device),
        "torch": torch.__version__,
        "dtype": args.dtype,
        "layers": args.layers,
        "video": [args.frames, args.height, args.width],
        "latents": list(shape),
        "tokens": tokens,
        "steps": args.steps,
        "guidance_scale": args.guidance_scale,
        "repeats": args.repeats,
        "rows": rows,
    }


def markdown_table(result: dict) -> str:
    lines = ["| method | s/step (2 calls) | video s | vs none | blocks computed |", "|---|---|---|---|---|"]
    for r in result["rows"]:
        vs = "" if r["time_vs_none"] is None else f"{r['time_vs_none']:.3f}"
        lines.append(
            f"| {r['method']} | {r['seconds_per_step']:.3f} | {r['video_seconds']:.2f} | {vs} | "
            f"{r['computed_fraction']:.0%} |"
        )
    return "\n".join(lines)


def run_command(args) -> int:
    result = run(args)
    print(markdown_table(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0
