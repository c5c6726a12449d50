"""``ditfarm calibrate ertacache|bac``: a caching method's offline calibration on the model itself, into a copy of
its cache profile.  ``ditfarm calibrate defaults``: every policy's default knob for the model, into its card."""

from __future__ import annotations

from pathlib import Path

from ..tools import calibrate
from ..tools.lora_options import add_lora_options

METHODS = ("ertacache", "bac", "defaults")


def register(sub) -> None:
    p = sub.add_parser(
        "calibrate",
        help="`calibrate ertacache|bac`: a caching method's offline calibration, into a cache profile; "
        "`calibrate defaults`: every policy's default knob for the model, into its card",
        description="Calibrate ERTACache or BAC on the model itself and write the profile with the calibration "
        "(the profile's model identity ties both to this model: another model refuses them).  `defaults` renders "
        "the calibration prompts with each policy's knobs and writes, per policy, the fastest knob at >= half "
        "steps + 10 dB PSNR (else the most faithful that skips >= 30%) into the model's ditfarm_model.json "
        "cache.defaults, where a run that names no knob takes it.",
    )
    p.add_argument("method", choices=METHODS)
    p.add_argument("--model", default="tiny")
    p.add_argument("--profile", type=Path, help="profile to extend (default: the model's shipped one)")
    p.add_argument(
        "--out",
        type=Path,
        help="ertacache, bac: profile JSON to write (the input plus the calibration; required); defaults: the card "
        "to write (default: the model folder's ditfarm_model.json)",
    )
    p.add_argument(
        "--policies",
        help="defaults: policy[:k1/k2/...],... to calibrate (default: every policy with a knob, over its grid)",
    )
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
    add_lora_options(p)
    p.set_defaults(run=run)


def run(args) -> int:
    return calibrate.run_command(args)  # it loads the model and the calibration code when it runs
