"""``ditfarm calibrate ertacache|bac``: a method's offline calibration on the model itself, into a copy of its
cache profile (the profile's model identity ties both to this model: another model refuses them)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

METHODS = ("ertacache", "bac")


def main(argv=None) -> int:
    from ..cache.profile import CacheProfile
    from ..pipelines.loading import load_pipeline

    p = argparse.ArgumentParser(prog="ditfarm calibrate", description=__doc__)
    p.add_argument("method", choices=METHODS)
    p.add_argument("--model", default="tiny")
    p.add_argument("--profile", type=Path, help="profile to extend (default: the model's shipped one)")
    p.add_argument("--out", type=Path, required=True, help="profile JSON to write (the input plus the calibration)")
    p.add_argument(
        "--lambdas",
        default="0.08",
        help="ertacache: comma-separated reuse thresholds (default 0.08, the paper's for Wan2.1-1.3B)",
    )
    p.add_argument("--max-tokens", type=int, default=1024, help="bac: tokens kept per unit output and step")
    p.add_argument("--prompts", type=Path, help="text file, one prompt per line (default: the profile's own)")
    p.add_argument("--steps", type=int)
    p.add_argument("--guidance-scale", type=float)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)

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
            from .calibrate_ertacache import calibrate_ertacache

            profile.ertacache = calibrate_ertacache(
                pipe, prompts, lambdas, seeds=seeds, steps=args.steps, guidance_scale=args.guidance_scale
            )
            what = f"ERTACache at lambda {', '.join(f'{x:g}' for x in lambdas)}"
            steps = profile.ertacache["steps"]
        else:
            from .calibrate_bac import calibrate_bac

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
