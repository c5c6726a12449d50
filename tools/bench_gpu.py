"""``ditfarm bench gpu``: what a denoising step and a whole video cost on one GPU, with random Wan2.1 weights.

    ditfarm bench gpu --json benchmarks/bench-gpu-h200.json          # at most 8 minutes on one H200

Time does not depend on trained weights, so the published Wan2.1 configs (``wan_configs``) are built with random
weights; nothing is downloaded.  Its sections, each skipped with a note when the time budget runs out:

1. **Wan2.1-1.3B at 480x832x81** (32,760 tokens): seconds per denoising step (two CFG calls and the scheduler
   step) of plain diffusers (the transformer called as WanPipeline calls it, no hooks); ditfarm with ``none``
   (its one loop, ``pipelines.denoise``); ditfarm with ``--compile`` and the best attention kernel
   (``pipelines.attention``); and each cache policy at a knob where every block is computed, so the time over
   its base is the policy's bookkeeping (``adaptive:1e-9`` measures its indicator at every step yet never
   skips).  The base is ``compiled`` for the policies that cache whole blocks; the unit caches (BAC,
   HarmoniCa) hook inside the blocks, which compiled blocks refuse, and are timed on the eager blocks against
   ``none``.  The calibrated policies get calibrations that compute everything (``policy_config``).
2. **Wan2.1-14B at 720x1280x81** (75,600 tokens) with ``--blocks14`` of its 40 blocks (what fits the budget):
   the same rows, measured, and scaled to 40 blocks by the per-block time (head and embeddings, a small share,
   are counted 40/K times over, so the scaled figure errs high).  It runs last: what the budget leaves.
3. **One whole video** of the 1.3B config with Wan2.1's real UMT5-XXL and VAE configs (random weights), written
   as a model folder and loaded through ``load_pipeline`` (folder checks, bf16, tiled VAE decode): seconds and
   peak GPU memory of text encoding, ``--video-steps`` denoising steps (scaled to 50 in the table), and decoding.
4. **LoRAs and quantized weights** on the 1.3B config (``tools/bench_weights.py``): a LoRA's load, switch and
   per-step cost, eager and in compiled blocks' hotswapped slot; int8 and fp8 weight-only blocks, eager and
   compiled, with the memory the model holds.
5. **Every other family** (CogVideoX-5B, HunyuanVideo, HunyuanVideo 1.5: each family's ``bench_folder``): its
   released transformer config with ``--family-blocks`` of its blocks, at its default video size, loaded through
   ``load_pipeline`` and run through ditfarm's loop with its own sampling (CFG passes where it runs them):
   seconds per step, scaled to all its blocks by the per-block time.

``--small`` runs the same code on tiny shapes (for the CPU test that keeps this script honest).
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..pipelines.attention import apply_attention, choose_attention
from ..pipelines.families.wan import make_wan_folder
from ..pipelines.family import families
from ..pipelines.loading import load_pipeline
from ..pipelines.wan_configs import TEXT_TOKENS, UMT5_XXL, WAN21_1_3B, WAN21_14B
from .bench_timing import (
    Budget,
    ditfarm_loop,
    latent_shape,
    random_transformer,
    scheduler,
    seconds_per_step,
    synchronize,
)
from .bench_weights import markdown_lines, weight_rows

POLICY_ROWS = (
    "bwcache:0",
    "adaptive:0",
    "adaptive:1e-9",
    "adaptive-block:0",
    "taylorseer:1",
    "profiling:1",
    "ertacache:0",
)
# Unit caches hook the attention and FFN inside each block, which compiled blocks do not allow: they are timed on
# the eager blocks, against "ditfarm none".
EAGER_POLICY_ROWS = ("bac:1", "harmonica:0")
PROMPT = "a red cat moving left on the street"


@dataclass(frozen=True)
class Shapes:
    transformer_14b: dict
    transformer_1_3b: dict
    text_encoder: dict
    vae: dict
    video_1_3b: tuple[int, int, int]
    video_14b: tuple[int, int, int]
    text_tokens: int


REAL = Shapes(WAN21_14B, WAN21_1_3B, UMT5_XXL, {}, (81, 480, 832), (81, 720, 1280), TEXT_TOKENS)
SMALL = Shapes(  # the same code on shapes a CPU runs in seconds
    {**WAN21_14B, "num_attention_heads": 2, "attention_head_dim": 16, "ffn_dim": 64, "text_dim": 32, "freq_dim": 32},
    {
        **WAN21_1_3B,
        "num_attention_heads": 2,
        "attention_head_dim": 16,
        "ffn_dim": 64,
        "text_dim": 32,
        "freq_dim": 32,
        "num_layers": 2,
    },
    dict(d_model=32, d_kv=16, d_ff=64, num_layers=1, num_heads=2, relative_attention_num_buckets=8),
    dict(base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1),
    (9, 64, 64),
    (9, 64, 96),
    16,
)


def plain_diffusers_loop(transformer, latents, cond, uncond, steps: int, guidance: float):
    """WanPipeline.__call__'s loop, as diffusers writes it (no hooks, no ditfarm)."""
    sched = scheduler()
    sched.set_timesteps(steps, device=latents.device)
    dtype = transformer.dtype
    for t in sched.timesteps:
        latent_model_input = latents.to(dtype)
        timestep = t.expand(latents.shape[0])
        with transformer.cache_context("cond"):
            noise_pred = transformer(
                hidden_states=latent_model_input,
                timestep=timestep,
                encoder_hidden_states=cond,
                attention_kwargs=None,
                return_dict=False,
            )[0]
        with transformer.cache_context("uncond"):
            noise_uncond = transformer(
                hidden_states=latent_model_input,
                timestep=timestep,
                encoder_hidden_states=uncond,
                attention_kwargs=None,
                return_dict=False,
            )[0]
        noise_pred = noise_uncond + guidance * (noise_pred - noise_uncond)
        latents = sched.step(noise_pred, t, latents, return_dict=False)[0]
    return latents


def policy_config(row: str, transformer, steps: int):
    """ "adaptive-block:0" and friends -> a cache config that computes every block of a ``steps``-step video.

    The calibrated policies get calibrations that compute everything and change nothing (ERTACache: nothing reused
    at lambda 0, phi 1; BAC: every unit updates on every step; HarmoniCa: a router sure of every unit), so the row
    times their bookkeeping alone on a model that has no calibration of its own."""
    from ..cache.policies import AdaptiveConfig, HarmoniCaConfig  # deferred: diffusers
    from ..cache.policies.harmonica import Router  # deferred: diffusers
    from ..cache.presets import build_config  # deferred: diffusers
    from ..cache.profile import BACKGROUND, BlockProfile, CacheProfile, model_identity  # deferred: diffusers
    from ..pipelines.adapters import UNIT_ROLES, adapter_for  # deferred: diffusers

    name, _, knob = row.partition(":")
    if name == "adaptive-block":
        return AdaptiveConfig(threshold=float(knob), granularity="block")
    n = len(adapter_for(transformer).blocks())
    units = n * len(UNIT_ROLES)
    # every block background, refreshed every step (profiling:1): computes all, pays the bookkeeping
    profile = CacheProfile(
        model=model_identity(transformer),
        r_attn_threshold=0.5,
        blocks=[BlockProfile(i, 0.0, BACKGROUND, [math.nan]) for i in range(n)],
    )
    if name == "ertacache":
        profile.ertacache = {
            "steps": steps,
            "entries": [{"lambda": float(knob), "reused": [], "phi": [1.0] * steps, "rectify": {}}],
        }
    if name == "bac":
        profile.bac = {
            "steps": steps,
            "similarity": np.ones((units, steps, steps)).tolist(),
            "volatility": [0.0] * units,
        }
    if name == "harmonica":
        router = Router(model=model_identity(transformer), logits=[[10.0] * units for _ in range(steps)])
        return HarmoniCaConfig(threshold=float(knob), router=router)
    return build_config(name, float(knob), profile if name in ("profiling", "ertacache", "bac") else None)


def step_rows(
    transformer,
    shape,
    text_dim: int,
    text_tokens: int,
    device,
    args,
    budget: Budget,
    log,
    scale: float = 1.0,
    steps: int = 3,
    repeats: int = 2,
) -> list[dict]:
    """The rows of one section: plain, none, the unit caches on the eager blocks, compiled, then each other policy
    on the compiled model."""
    from ..pipelines.compile import compile_blocks, compiled_graphs  # deferred: diffusers

    gen = torch.Generator().manual_seed(0)
    dtype = transformer.dtype
    latents = torch.randn(shape, generator=gen).to(device)
    cond, uncond = (torch.randn(1, text_tokens, text_dim, generator=gen).to(device, dtype) for _ in range(2))
    inputs = (latents, cond, uncond)
    rows = []

    def add(method: str, loop, note: str = "", extra: dict | None = None, prepare=None):
        if budget.left < args.reserve_seconds:
            rows.append({"method": method, "skipped": "time budget"})
            log(f"  {method}: skipped (time budget)")
            return
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        try:
            per_step, warmup = seconds_per_step(loop, transformer, inputs, steps, repeats, device, prepare)
        except Exception as err:  # noqa: BLE001 - one row's failure is a finding; the other rows still run
            rows.append({"method": method, "error": f"{type(err).__name__}: {err}"[:2000]})
            log(f"  {method}: FAILED {type(err).__name__}: {err}")
            return
        row = {
            "method": method,
            "seconds_per_step": per_step,
            "scaled_seconds_per_step": per_step * scale,
            "warmup_seconds": warmup,
            "note": note,
            **(extra or {}),
        }
        if device.type == "cuda":
            row["peak_gpu_bytes"] = torch.cuda.max_memory_allocated(device)
        rows.append(row)
        log(
            f"  {method}: {per_step:.3f} s/step"
            + (f" ({per_step * scale:.3f} scaled)" if scale != 1 else "")
            + f", warm-up {warmup:.1f} s"
        )

    add("diffusers", plain_diffusers_loop, "WanPipeline's loop, no hooks")
    add("ditfarm none", ditfarm_loop)
    policy_rows(transformer, EAGER_POLICY_ROWS, "eager", add, rows, "vs_none")
    choice = choose_attention(device, dtype)
    try:
        apply_attention(transformer, choice)
    except Exception as err:  # noqa: BLE001 - record it and go on with the model's own attention
        rows.append({"method": f"attention backend {choice.backend}", "error": f"{type(err).__name__}: {err}"})
        log(f"  attention backend {choice.backend}: FAILED {err}")
    compile_blocks(transformer, backend=args.compile_backend)
    add("ditfarm compiled", ditfarm_loop, f"{args.compile_backend}; {choice.describe()}")
    graphs_before = compiled_graphs()  # the compiled row's warm-up built them
    policy_rows(transformer, POLICY_ROWS, "compiled", add, rows, "vs_compiled")
    rows.append({"method": "graphs built while the policies ran", "graphs": compiled_graphs() - graphs_before})
    return rows


def policy_rows(transformer, policies, prefix: str, add, rows: list[dict], versus: str) -> None:
    """One row per policy at a knob that computes every block, each relative to the row before them."""
    from ..cache import disable, enable, last_video_stats  # deferred: diffusers

    base = rows[-1].get("seconds_per_step")
    for policy in policies:
        try:  # attached before each loop (by ``prepare``); one that will not attach becomes its row's error
            add(
                f"{prefix} + {policy}",
                ditfarm_loop,
                prepare=lambda n, policy=policy: enable(transformer, policy_config(policy, transformer, n)),
            )
            stats = last_video_stats(transformer)
        finally:
            disable(transformer)
        if "seconds_per_step" in rows[-1]:
            rows[-1]["computed_fraction"] = 1.0 - (stats.skipped_fraction if stats else 0.0)
            if base:
                rows[-1][versus] = rows[-1]["seconds_per_step"] / base


def whole_video(shapes: Shapes, device, dtype, args, budget: Budget, log) -> dict:
    """Write a 1.3B-config folder with the real text encoder and VAE configs, load it as a user would, render."""
    frames, height, width = shapes.video_1_3b
    card = {
        "kind": "wan",
        "defaults": {"num_frames": frames, "height": height, "width": width, "steps": 50, "guidance_scale": 5.0},
        "max_sequence_length": shapes.text_tokens,
    }
    result = {"steps": args.video_steps, "video": [frames, height, width]}
    with tempfile.TemporaryDirectory(prefix="ditfarm-bench-wan-") as tmp:
        start = time.perf_counter()
        folder = make_wan_folder(
            Path(tmp) / "wan",
            shapes.transformer_1_3b,
            shapes.text_encoder,
            shapes.vae,
            card,
            device=str(device),
            dtype=dtype,
        )
        result["write_seconds"] = time.perf_counter() - start
        if device.type == "cuda":
            torch.cuda.empty_cache()
        start = time.perf_counter()
        pipe = load_pipeline(folder, device=str(device), dtype="bf16" if dtype == torch.bfloat16 else "fp32")
        result["load_seconds"] = time.perf_counter() - start
        settings = pipe.settings(steps=args.video_steps)
        phases = {}

        def phase(name, fn):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
            t0 = time.perf_counter()
            value = fn()
            synchronize(device)
            phases[name] = {"seconds": time.perf_counter() - t0}
            if device.type == "cuda":
                phases[name]["peak_gpu_bytes"] = torch.cuda.max_memory_allocated(device)
            log(f"  {name}: {phases[name]['seconds']:.2f} s")
            return value

        with torch.no_grad():
            embeddings = phase("text", lambda: pipe.encode_prompt(PROMPT, "", settings.guidance_scale))
            latents = phase("denoise", lambda: pipe.generate_latents(PROMPT, 0, settings, embeddings=embeddings))
            if budget.left > args.reserve_seconds:
                video = phase("decode", lambda: pipe.decode(latents))
                result["decoded_shape"] = list(video.shape)
            else:
                phases["decode"] = {"skipped": "time budget"}
        phases["denoise"]["seconds_per_step"] = phases["denoise"]["seconds"] / args.video_steps
        result["phases"] = phases
        result["vae_tiling"] = bool(pipe.pipe.vae.use_tiling)
    return result


def family_steps(small: bool, device, dtype, args, budget: Budget, log) -> dict:
    """Seconds per denoising step of each family's bench rows (``Family.bench_variants``: Wan's other kinds, whose
    Wan2.1 text-to-video has the sections above, and every other family), through ``load_pipeline`` and the
    family's own sampling; a kind that renders from a first frame gets one (its encoding timed with the text);
    ``small``: the small folders (the CPU test)."""
    from ..pipelines.adapters import adapter_for  # deferred: diffusers

    rows = []
    with tempfile.TemporaryDirectory(prefix="ditfarm-bench-families-") as tmp:
        for family in families():
            if family.name == "tiny":
                continue
            try:
                variants = family.bench_variants(Path(tmp), args.family_blocks, small)
            except Exception as err:  # noqa: BLE001 - one family's failure is a finding; the next still runs
                rows.append({"family": family.name, "error": f"{type(err).__name__}: {err}"[:300]})
                log(traceback.format_exc())
                continue
            for name, (folder, built, full) in variants.items():
                if budget.left < args.reserve_seconds:
                    rows.append({"family": name, "skipped": "time budget"})
                    continue
                try:
                    row = time_family_row(name, folder, built, full, small, device, dtype, args, adapter_for)
                except Exception as err:  # noqa: BLE001 - one family's failure is a finding; the next still runs
                    row = {"family": name, "error": f"{type(err).__name__}: {err}"[:300]}
                    log(traceback.format_exc())
                log(f"  {name}: {row}")
                rows.append(row)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    return {"families": rows}


def time_family_row(name: str, folder, built: int, full: int, small: bool, device, dtype, args, adapter_for) -> dict:
    """One bench row: the text (and image) encoding, seconds per step (scaled from the blocks built to the
    released count) and, for a row timed as a whole video, its decode."""
    pipe = load_pipeline(folder, device=str(device), dtype="bf16" if dtype == torch.bfloat16 else "fp32")
    settings = pipe.settings(steps=args.video_steps)
    images = {}
    try:
        pipe.check_images({})
    except ValueError:  # it renders from a first frame (and, first-last-frame, a last one)
        images = {"image": bench_image(0, settings), "last_image": bench_image(1, settings)}
        try:
            pipe.check_images(images)
        except ValueError:
            images.pop("last_image")
    with torch.no_grad():
        synchronize(device)
        start = time.perf_counter()
        embeddings = pipe.encode_inputs(PROMPT, "", settings, images)
        synchronize(device)
        text_seconds = time.perf_counter() - start
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        latents = pipe.generate_latents(PROMPT, 0, settings, embeddings=embeddings)
        synchronize(device)
        per_step = (time.perf_counter() - start) / settings.steps
        row = {
            "family": name,
            "video": [settings.num_frames, settings.height, settings.width],
            "tokens": adapter_for(pipe.transformer).token_count(pipe.latent_shape(settings)),
            "experts": len(pipe.transformers()),
            "images": sorted(images),
            "passes_per_step": 1 if embeddings.uncond is None else 2,
            "blocks": built if not small else None,
            "of_blocks": full if not small else None,
            "text_and_image_seconds": text_seconds,
            "seconds_per_step": per_step,
            "scaled_seconds_per_step": per_step * full / built,
        }
        if device.type == "cuda":
            row["peak_gpu_bytes"] = torch.cuda.max_memory_allocated(device)
        if name in DECODED_ROWS:  # the whole video: its VAE decode too
            start = time.perf_counter()
            pipe.decode(latents)
            synchronize(device)
            row["decode_seconds"] = time.perf_counter() - start
            row["scaled_video_seconds"] = row["scaled_seconds_per_step"] * settings.steps + row["decode_seconds"]
    return row


SECTIONS = ("wan2.1-1.3b", "weights-1.3b", "video-1.3b", "wan2.1-14b", "families")
DECODED_ROWS = ("wan2.2-ti2v-5b",)  # rows timed as a whole video, decode included


def bench_image(seed: int, settings):
    """A random first (or last) frame at the video's size, as a user's image would be before resizing."""
    from PIL import Image  # deferred: PIL

    pixels = np.random.default_rng(seed).integers(0, 255, (settings.height, settings.width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def run(args: argparse.Namespace, log=print) -> dict:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    shapes = SMALL if args.small else REAL
    budget = Budget(args.budget_seconds)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    result = {
        "device": name,
        "torch": torch.__version__,
        "dtype": str(dtype).replace("torch.", ""),
        "steps": args.steps,
        "repeats": args.repeats,
        "budget_seconds": args.budget_seconds,
        "sections": {},
    }
    try:
        import diffusers  # deferred: diffusers

        result["diffusers"] = diffusers.__version__
    except ImportError:
        pass

    chosen = set(args.sections.split(",")) if getattr(args, "sections", None) else None
    unknown = (chosen or set()) - set(SECTIONS)
    if unknown:
        raise ValueError(f"unknown section(s) {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}")

    def section(key: str, title: str, fn):
        if chosen is not None and key not in chosen:
            return
        if budget.left < args.reserve_seconds:
            result["sections"][key] = {"title": title, "skipped": "time budget"}
            log(f"{title}: skipped (time budget)")
            return
        log(title)
        start = time.perf_counter()
        try:
            result["sections"][key] = {"title": title, **fn(), "seconds": time.perf_counter() - start}
        except Exception as err:  # noqa: BLE001 - a section's failure is a finding; the next section still runs
            result["sections"][key] = {
                "title": title,
                "skipped": f"failed: {type(err).__name__}: {err}"[:300],
                "traceback": traceback.format_exc()[-4000:],
            }
            log(f"{title}: FAILED\n{traceback.format_exc()}")
        torch._dynamo.reset()
        if device.type == "cuda":
            torch.cuda.empty_cache()

    def wan_1_3b():
        frames, height, width = shapes.video_1_3b
        t = random_transformer(shapes.transformer_1_3b, shapes.transformer_1_3b["num_layers"], device, dtype)
        shape = latent_shape(frames, height, width)
        rows = step_rows(
            t,
            shape,
            shapes.transformer_1_3b["text_dim"],
            shapes.text_tokens,
            device,
            args,
            budget,
            log,
            steps=args.steps,
            repeats=args.repeats,
        )
        del t
        return {
            "blocks": shapes.transformer_1_3b["num_layers"],
            "latents": list(shape),
            "tokens": tokens(shape),
            "rows": rows,
        }

    def wan_14b():
        frames, height, width = shapes.video_14b
        full = shapes.transformer_14b["num_layers"]
        t = random_transformer(shapes.transformer_14b, args.blocks14, device, dtype)
        shape = latent_shape(frames, height, width)
        rows = step_rows(
            t,
            shape,
            shapes.transformer_14b["text_dim"],
            shapes.text_tokens,
            device,
            args,
            budget,
            log,
            scale=full / args.blocks14,
            steps=args.steps14,
            repeats=1,
        )
        del t
        return {
            "blocks": args.blocks14,
            "of_blocks": full,
            "latents": list(shape),
            "tokens": tokens(shape),
            "scaled_to": full,
            "rows": rows,
        }

    section("wan2.1-1.3b", f"Wan2.1-1.3B, {'x'.join(map(str, shapes.video_1_3b))}", wan_1_3b)
    section(
        "weights-1.3b",
        f"LoRAs and quantized weights, Wan2.1-1.3B, {'x'.join(map(str, shapes.video_1_3b))}",
        lambda: weight_rows(shapes, device, dtype, args, budget, log),
    )
    section(
        "video-1.3b",
        "One video, Wan2.1-1.3B with UMT5-XXL and the Wan VAE (random weights)",
        lambda: whole_video(shapes, device, dtype, args, budget, log),
    )
    section(
        "wan2.1-14b",
        f"Wan2.1-14B ({args.blocks14} of {shapes.transformer_14b['num_layers']} blocks), "
        f"{'x'.join(map(str, shapes.video_14b))}",
        wan_14b,
    )
    section(
        "families",
        f"Every other family, {args.family_blocks} block(s) of its released transformer at its default video size"
        if not args.small
        else "Every other family, its small folder",
        lambda: family_steps(args.small, device, dtype, args, budget, log),
    )
    return result


def tokens(latents: tuple[int, ...]) -> int:
    p_t, p_h, p_w = WAN21_1_3B["patch_size"]
    return (latents[2] // p_t) * (latents[3] // p_h) * (latents[4] // p_w)


def markdown_table(result: dict) -> str:
    lines = []
    for _key, sec in result["sections"].items():
        lines.append(f"\n{sec['title']}" + (f": skipped ({sec['skipped']})" if "skipped" in sec else ""))
        if "rows" in sec:
            scaled = "scaled_to" in sec
            lines += [
                "| method | s/step | " + ("s/step at 40 blocks | " if scaled else "") + "vs base | peak GiB |",
                "|---|---|" + ("---|" if scaled else "") + "---|---|",
            ]
            for r in sec["rows"]:
                if "seconds_per_step" not in r:
                    if "error" in r:
                        lines.append(
                            f"| {r['method']} | FAILED: {r['error'][:80]} |" + (" |" if scaled else "") + " | |"
                        )
                    elif "graphs" in r:
                        lines.append(f"| {r['method']} | {r['graphs']} |" + (" |" if scaled else "") + " | |")
                    else:
                        lines.append(f"| {r['method']} | skipped |" + (" |" if scaled else "") + " | |")
                    continue
                peak = f"{r['peak_gpu_bytes'] / 2**30:.1f}" if "peak_gpu_bytes" in r else ""
                vs = next((f"{r[k]:.3f}" for k in ("vs_compiled", "vs_none") if k in r), "")
                lines.append(
                    f"| {r['method']} | {r['seconds_per_step']:.3f} | "
                    + (f"{r['scaled_seconds_per_step']:.3f} | " if scaled else "")
                    + f"{vs} | {peak} |"
                )
        if "families" in sec:
            lines += [
                "| family | video | tokens | passes/step | s/step | s/step at all blocks | peak GiB |",
                "|---|---|---|---|---|---|---|",
            ]
            for r in sec["families"]:
                if "seconds_per_step" not in r:
                    lines.append(f"| {r['family']} | {r.get('error') or r.get('skipped')} | | | | | |")
                    continue
                peak = f"{r['peak_gpu_bytes'] / 2**30:.1f}" if "peak_gpu_bytes" in r else ""
                lines.append(
                    f"| {r['family']} | {'x'.join(map(str, r['video']))} | {r['tokens']} | {r['passes_per_step']} | "
                    f"{r['seconds_per_step']:.3f} | {r['scaled_seconds_per_step']:.3f} | {peak} |"
                )
        if "weight_rows" in sec:
            lines += markdown_lines(sec)
        if "phases" in sec:
            lines += ["| phase | seconds | peak GiB |", "|---|---|---|"]
            for name, p in sec["phases"].items():
                if "skipped" in p:
                    lines.append(f"| {name} | skipped | |")
                    continue
                peak = f"{p['peak_gpu_bytes'] / 2**30:.1f}" if "peak_gpu_bytes" in p else ""
                label = (
                    f"{name} ({sec['steps']} steps; {p['seconds_per_step'] * 50:.1f} s at 50)"
                    if name == "denoise"
                    else name
                )
                lines.append(f"| {label} | {p['seconds']:.2f} | {peak} |")
    return "\n".join(lines)


def run_command(args) -> int:
    result = run(args)
    print(markdown_table(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0
