"""``ditfarm eval-adherence``: how often a tiny-grammar model renders what its prompt says, on held-out prompts."""

from __future__ import annotations

from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser(
        "eval-adherence",
        help="prompt adherence of a tiny-grammar model on held-out prompts",
        description="Render held-out prompt/seed pairs (prompts the training split never contains) and judge each "
        "video's foreground colour, direction of motion and background colour.",
    )
    p.add_argument("--model", default="tiny")
    p.add_argument("--n", type=int, default=60, help="held-out prompt/seed pairs (default 60)")
    p.add_argument("--seed", type=int, default=12345, help="seed of the case draw")
    p.add_argument("--two-object-prob", type=float, default=0.0)
    p.add_argument("--steps", type=int)
    p.add_argument("--guidance-scale", type=float)
    p.add_argument("--json", type=Path, help="write the summary and every verdict here")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..tools.adherence import run_command  # deferred: numpy

    return run_command(args)
