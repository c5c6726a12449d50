"""``ditfarm train-router``: train HarmoniCa's cache router on a model, resumably."""

from __future__ import annotations

from pathlib import Path

from ..tools.lora_options import add_lora_options
from ..tools.settings import RouterTraining


def register(sub) -> None:
    defaults = RouterTraining()
    p = sub.add_parser(
        "train-router",
        help="train HarmoniCa's cache router on a model (resumable)",
        description="Step-wise denoising training of HarmoniCa's router (SDT with IEPO's lambda), image-free; a "
        "rerun with the same --run-dir resumes.",
    )
    p.add_argument("--model", default="tiny")
    p.add_argument("--run-dir", type=Path, default=Path("runs/router"), help="checkpoints; a rerun resumes here")
    p.add_argument("--out", type=Path, help="router to write (default: beside the model's cache profile)")
    p.add_argument("--prompts", type=Path, help="training prompts, one per line (tiny: its training split)")
    p.add_argument("--iterations", type=int, default=defaults.iterations)
    p.add_argument("--beta", type=float, default=defaults.beta, help="cache-use weight: larger reuses more")
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--lambda-every", type=int, default=defaults.lambda_every)
    p.add_argument("--save-every", type=int, default=defaults.save_every)
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--steps", type=int)
    p.add_argument("--guidance-scale", type=float)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    add_lora_options(p)
    p.set_defaults(run=run)


def run(args) -> int:
    from ..tools.train_router import run_command  # deferred: torch

    return run_command(args)
