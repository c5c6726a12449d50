"""The ``ditfarm`` command.

ditfarm render MANIFEST --out OUT              render every row of a manifest (rerun: skips ids already ok)
ditfarm render MANIFEST --out OUT --dry-run    validate every row, render nothing
ditfarm render --prompt "..." --out OUT        render one prompt
ditfarm status OUT                             counts per status, and the failed rows' errors
ditfarm profile --model tiny --prompts P.txt --out PROFILE.json   profile blocks for caching
ditfarm calibrate ertacache --model tiny --lambdas 0.1,0.2 --out P.json   ERTACache's calibration
ditfarm calibrate bac --model tiny --out P.json                           BAC's calibration
ditfarm calibrate defaults --model FOLDER --prompts P.txt                 every policy's default knob, into its card
ditfarm bench cache --model tiny --json OUT.json                  speed/fidelity of every cache
ditfarm bench cache-merge A.json B.json --json OUT.json           one table from split bench runs
ditfarm bench sp --policy adaptive --json OUT.json                the cache's speedup at sp=1 and sp=2
ditfarm bench steps --device cuda --json OUT.json                 per-step times on the Wan2.1-1.3B shapes
ditfarm bench gpu --json OUT.json                                 a step and a video of Wan2.1 on one GPU
ditfarm eval-adherence --model tiny --n 60     prompt adherence of the tiny model on held-out prompts
ditfarm train-tiny --run-dir runs/tiny         (re)train the built-in model, resumably
ditfarm train-router --model tiny              train HarmoniCa's router (beside the profile), resumably
"""

from __future__ import annotations

import argparse
import sys

from .. import __version__
from . import bench, calibrate, eval_adherence, profile, render, status, train_router, train_tiny

#: every command, each declared with argparse in its own module: ``register(sub)`` adds its parser and sets
#: ``run``, which is called with the parsed arguments and returns the exit code
COMMANDS = (render, status, profile, calibrate, bench, eval_adherence, train_tiny, train_router)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ditfarm", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--version", action="version", version=f"ditfarm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
