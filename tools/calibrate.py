"""``ditfarm calibrate ertacache|bac``: a method's offline calibration on the model itself, into a copy of its
cache profile (the profile's model identity ties both to this model: another model refuses them)."""

from __future__ import annotations

import sys

METHODS = ("ertacache", "bac")


def run_command(args) -> int:
    from ..cache.profile import CacheProfile  # deferred: torch
    from ..pipelines.loading import load_pipeline  # deferred: torch

    def fail(message: str) -> int:
        print(f"ditfarm calibrate {args.method}: {message}", file=sys.stderr)
        return 2

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
    source = args.profile or pipe.default_cache_profile()
    if source is None:
        return fail(f"model {args.model} ships no cache profile; pass --profile (see `ditfarm profile`)")
    try:
        profile = CacheProfile.load(source)
        profile.check_model(pipe.transformer)
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

            profile.ertacache = calibrate_ertacache(
                pipe, prompts, lambdas, seeds=seeds, steps=args.steps, guidance_scale=args.guidance_scale
            )
            what = f"ERTACache at lambda {', '.join(f'{x:g}' for x in lambdas)}"
            steps = profile.ertacache["steps"]
        else:
            from .calibrate_bac import calibrate_bac  # deferred: torch

            profile.bac = calibrate_bac(
                pipe,
                prompts,
                seeds=seeds,
                steps=args.steps,
                guidance_scale=args.guidance_scale,
                max_tokens=args.max_tokens,
            )
            what, steps = "BAC", profile.bac["steps"]
    except ValueError as err:
        return fail(str(err))
    profile.save(args.out)
    print(f"wrote {args.out}: {what} calibrated for {steps}-step videos")
    return 0
