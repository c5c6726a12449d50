"""``ditfarm train-tiny``: (re)train the built-in tiny model with rectified flow on synthetic videos, resumably."""

from __future__ import annotations

from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser(
        "train-tiny",
        help="train the built-in tiny model (resumable)",
        description="Train the built-in tiny model; RUN_DIR holds state.pt, loss.csv and the EMA weights as a "
        "model folder, and the same command resumes from the last checkpoint.",
    )
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--steps", type=int, default=16000, help="total optimiser steps of the run")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--device", default="cpu", help="torch device to train on (e.g. cuda)")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast for the forward pass (on a GPU)")
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help="data-loader processes rendering the synthetic batches (0: in the training process)",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the model (about 1.5x on CPU)")
    p.add_argument("--checkpoint-every", type=int, default=200)
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--frames", type=int, help="video frames (default: the built-in model's)")
    p.add_argument("--height", type=int, help="video height (default: the built-in model's)")
    p.add_argument("--width", type=int, help="video width (default: the built-in model's)")
    p.add_argument("--uncond-prob", type=float, default=0.1)
    p.add_argument(
        "--precondition",
        type=float,
        default=0.0,
        metavar="SIGMA_DATA",
        help="train F of v = skip x + out F(in x) (preconditioning.py) with this data std; 0: predict v",
    )
    p.add_argument("--t-mean", type=float, default=0.0, help="location of the logit-normal noise-level draw")
    p.add_argument(
        "--init-from",
        type=Path,
        help="start a new run from another run's state.pt (weights only; a model trained without the "
        "position grid gets zero weights for it, so it starts out computing what it did)",
    )
    p.add_argument(
        "--fg-weight",
        type=float,
        default=1.0,
        help="loss weight of foreground pixels relative to background (the shapes are ~8%% of pixels)",
    )
    p.set_defaults(run=run)


def run(args) -> int:
    from ..tools.train_tiny import run_command  # deferred: torch

    return run_command(args)
