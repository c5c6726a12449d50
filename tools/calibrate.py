"""``ditfarm calibrate ertacache|bac``: a method's offline calibration on the model itself, into a copy of its
cache profile (the profile's model identity ties both to this model: another model refuses them).
``ditfarm calibrate defaults``: every policy's default knob for the model, into its card (``calibrate_defaults``)."""

from __future__ import annotations

import sys
from pathlib import Path

from .lora_options import apply_lora

METHODS = ("ertacache", "bac", "defaults")


def parse_grid(text: str | None) -> dict:
    """``policy[:k1/k2/...],...`` (no knobs: the policy's whole grid) -> the knobs to try per policy."""
    from .calibrate_defaults import GRID  # deferred: numpy

    if not text:
        return dict(GRID)
    grid = {}
    for part in text.split(","):
        policy, _, knobs = part.strip().partition(":")
        if policy not in GRID:
            raise ValueError(f"--policies: {policy!r} is not a cache policy with a knob ({', '.join(GRID)})")
        grid[policy] = [float(k) for k in knobs.split("/")] if knobs else GRID[policy]
    return grid


def run_defaults(args, fail) -> int:
    """Choose every policy's default knob on the model and write them into its card."""
    from ..cache.profile import CacheProfile  # deferred: torch
    from ..pipelines.loading import load_pipeline, resolve_model_folder  # deferred: torch
    from .calibrate_defaults import RULE, calibrate_defaults, write_card  # deferred: numpy

    try:
        grid = parse_grid(args.policies)
    except ValueError as err:
        return fail(str(err))
    folder = resolve_model_folder(args.model)
    card_path = args.out or Path(folder) / "ditfarm_model.json"
    if str(args.model).startswith("s3://") and args.out is None:
        return fail("an s3:// model's card is written where --out says (a local copy of its ditfarm_model.json)")
    pipe = load_pipeline(args.model, device=args.device)
    source = args.profile or pipe.default_cache_profile()
    profile = CacheProfile.load(source) if source is not None else None
    if args.prompts:
        prompts = [line.strip() for line in args.prompts.read_text().splitlines() if line.strip()]
        seeds = list(range(len(prompts)))
    elif profile is not None and profile.calibration.get("prompts"):
        prompts = profile.calibration["prompts"]
        seeds = profile.calibration.get("seeds") or list(range(len(prompts)))
    else:
        return fail("no calibration prompts: pass --prompts P.txt (one per line), or a --profile that has them")
    for prompt in prompts:
        try:
            pipe.check_prompt(prompt)
        except ValueError as err:
            return fail(str(err))
    steps = args.steps or pipe.defaults.steps
    chosen, evidence = calibrate_defaults(pipe, prompts, seeds, steps, profile, grid)
    if not chosen:
        return fail("no policy could run on this model as it is (see the log above); nothing written")
    write_card(card_path, chosen, evidence)
    own = "".join(f"; cache.experts.{name}.defaults {json_text(k)}" for name, k in evidence.get("experts", {}).items())
    print(f"wrote {card_path}: cache.defaults {json_text(chosen)}{own} ({RULE})")
    return 0


def json_text(values: dict) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in values.items())


def run_command(args) -> int:
    from ..cache.profile import CacheProfile  # deferred: torch
    from ..pipelines.loading import load_pipeline  # deferred: torch

    def fail(message: str) -> int:
        print(f"ditfarm calibrate {args.method}: {message}", file=sys.stderr)
        return 2

    if args.method == "defaults":
        return run_defaults(args, fail)
    if args.out is None:
        return fail("--out PROFILE.json is required: the profile to write with the calibration")

    try:
        lambdas = [float(x) for x in args.lambdas.split(",") if x.strip()]
    except ValueError:
        return fail(f"--lambdas takes comma-separated numbers, got {args.lambdas!r}")
    if args.method == "ertacache" and (not lambdas or any(not lam > 0 for lam in lambdas)):
        return fail(f"ERTACache thresholds (lambda) must be positive, got {args.lambdas!r}")
    if args.max_tokens < 1:
        return fail(f"--max-tokens must be positive, got {args.max_tokens}")
    if args.prompts and not args.prompts.exists():
        return fail(f"prompts file {args.prompts} does not exist")
    pipe = load_pipeline(args.model, device=args.device)
    problem = apply_lora(pipe, args)
    if problem:
        return fail(problem)
    source = args.profile or pipe.default_cache_profile()
    if source is None:
        return fail(f"model {args.model} ships no cache profile; pass --profile (see `ditfarm profile`)")
    try:
        profile = CacheProfile.load(source)
        profiles = profile.for_transformers(pipe.transformers())  # one per expert, where experts take turns
    except (FileNotFoundError, ValueError) as err:
        return fail(str(err))
    if args.prompts:
        prompts = [line.strip() for line in args.prompts.read_text().splitlines() if line.strip()]
        seeds = None
    else:
        prompts, seeds = profile.calibration.get("prompts", []), profile.calibration.get("seeds")
    if not prompts:
        return fail("no calibration prompts: pass --prompts P.txt")
    for prompt in prompts:
        try:
            pipe.check_prompt(prompt)
        except ValueError as err:
            return fail(str(err))
    try:
        if args.method == "ertacache":
            from .calibrate_ertacache import calibrate_ertacache  # deferred: torch

            sections = calibrate_ertacache(
                pipe, prompts, lambdas, seeds=seeds, steps=args.steps, guidance_scale=args.guidance_scale
            )
            what = f"ERTACache at lambda {', '.join(f'{x:g}' for x in lambdas)}"
        else:
            from .calibrate_bac import calibrate_bac  # deferred: torch

            sections = calibrate_bac(
                pipe,
                prompts,
                seeds=seeds,
                steps=args.steps,
                guidance_scale=args.guidance_scale,
                max_tokens=args.max_tokens,
            )
            what = "BAC"
    except ValueError as err:
        return fail(str(err))
    for name, section in sections.items():
        setattr(profiles[name], args.method, section)
    profile.save(args.out)
    steps = next(iter(sections.values()))["video_steps"]
    segments = [f"{name}: {section['steps']} steps" for name, section in sections.items()]
    per_expert = f" ({', '.join(segments)})" if len(sections) > 1 else ""
    print(f"wrote {args.out}: {what} calibrated for {steps}-step videos{per_expert}")
    return 0
