"""``ditfarm profile``: profile a model's blocks for caching, into a cache profile and its figure."""

from __future__ import annotations

import sys
from pathlib import Path

from ..tools.lora_options import add_lora_options, apply_lora


def register(sub) -> None:
    p = sub.add_parser("profile", help="profile a model's blocks for caching (writes PROFILE.json and a PNG)")
    p.add_argument("--model", default="tiny")
    p.add_argument("--prompts", type=Path, required=True, help="text file, one calibration prompt per line")
    p.add_argument("--out", type=Path, required=True, help="profile JSON to write")
    p.add_argument("--png", type=Path, help="figure to write (default: next to --out, .png)")
    p.add_argument("--steps", type=int)
    p.add_argument("--guidance-scale", type=float)
    p.add_argument("--probe-steps", type=int, default=4, help="steps on which attention is measured")
    p.add_argument("--max-queries", type=int, default=2048, help="queries sampled per attention measurement")
    p.add_argument(
        "--check-masks",
        type=int,
        default=12,
        help="tiny only: check the derived foreground mask against the generator's masks on N videos",
    )
    p.add_argument("--device", default="cpu")
    add_lora_options(p)
    p.set_defaults(run=run)


def run(args) -> int:
    from ..cache.profiler import check_masks_on_references, plot_profile, profile_pipeline  # deferred: torch
    from ..pipelines.loading import load_pipeline  # deferred: torch

    try:
        prompts = [line.strip() for line in args.prompts.read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        print(f"ditfarm profile: prompts file {args.prompts} does not exist", file=sys.stderr)
        return 2
    if not prompts:
        print(f"ditfarm profile: {args.prompts} holds no prompts", file=sys.stderr)
        return 2
    pipe = load_pipeline(args.model, device=args.device)
    problem = apply_lora(pipe, args)
    if problem:
        print(f"ditfarm profile: {problem}", file=sys.stderr)
        return 2
    for prompt in prompts:
        try:
            pipe.check_prompt(prompt)
        except ValueError as err:
            print(f"ditfarm profile: {err}", file=sys.stderr)
            return 2
    result = profile_pipeline(
        pipe,
        prompts,
        steps=args.steps,
        guidance_scale=args.guidance_scale,
        probe_steps=args.probe_steps,
        max_queries=args.max_queries,
    )
    profile = result.profile
    if args.check_masks and getattr(pipe, "model_name", "") == "tiny":
        import numpy as np  # deferred: numpy

        from ..pipelines.tiny.scenes import render_scene  # deferred: numpy
        from ..tools.adherence import held_out_cases  # deferred: numpy

        scenes = [
            render_scene(spec, np.random.default_rng(seed)) for spec, seed in held_out_cases(args.check_masks, 777)
        ]
        profile.mask_iou = check_masks_on_references(pipe, scenes, steps=args.steps)
    profile.save(args.out)
    png = args.png or args.out.with_suffix(".png")
    plot_profile(profile, png)
    pngs = [png]
    for name, expert in profile.experts.items():  # each further expert's figure beside the first's
        pngs.append(png.with_name(f"{png.stem}-{name}{png.suffix}"))
        plot_profile(expert, pngs[-1])
    for name, measured in (("", profile), *((f"{n}: ", e) for n, e in profile.experts.items())):
        print(  # one line per expert of a model whose experts take turns, each over the steps it ran
            f"{name}{len(measured.blocks)} blocks: foreground {measured.foreground_blocks}, background "
            f"{measured.background_blocks} (R_attn threshold {measured.r_attn_threshold:.3f})"
        )
    if profile.mask_iou is not None:
        print(f"foreground mask vs the generator's true masks: mean IoU {profile.mask_iou:.3f}")
    print(f"wrote {args.out} and {', '.join(str(p) for p in pngs)}")
    return 0
