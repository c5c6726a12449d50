"""Train the built-in ``tiny`` model with rectified flow on synthetic videos, resumably.

    ditfarm train-tiny --run-dir runs/tiny --steps 16000

The run directory holds ``state.pt`` (model, EMA, optimiser, step; rewritten atomically every
``--checkpoint-every`` steps), ``loss.csv`` (one line per logged step) and ``ema/`` (the EMA weights as a model
folder that ``ditfarm.load_pipeline`` reads).  Running the same command again resumes from the last checkpoint:
training runs can be killed without warning, so a run is never more than one checkpoint interval from safety.
Data and noise for step k are drawn from generators seeded by (seed, k), so a resumed run sees the same batches
as an uninterrupted one.

Objective (rectified flow, as diffusers' FlowMatchEulerDiscreteScheduler samples it): x_s = (1 - s) x0 + s eps,
the model predicts v = eps - x0 at timestep 1000 s, with s ~ sigmoid(N(--t-mean, 1)) (logit-normal; a positive
mean trains more at the high noise levels where the layout and the direction of motion are decided; the model
also reads the (t, y, x) position grid of model_config).  10% of prompts are
blanked so classifier-free guidance has an unconditional branch.  ``--fg-weight`` weights the loss of
foreground pixels (the generator knows the masks) so the small moving shapes are not drowned by the background.
"""

from __future__ import annotations

import argparse
import copy
import csv
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import WanTransformer3DModel

from ..pipelines.tiny.model_config import (
    DEFAULT_FRAMES,
    DEFAULT_HEIGHT,
    DEFAULT_WIDTH,
    POSITION_CHANNELS,
    TEXT_MAX_TOKENS,
    TRANSFORMER_CONFIG,
    position_grid,
)
from ..pipelines.tiny.preconditioning import coefficients
from ..pipelines.tiny.scenes import training_batch
from ..pipelines.tiny.text_encoder import WordTextEncoder
from ..pipelines.tiny.weights import save_model_folder


def learning_rate(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up, flat, then cosine decay to 10% over the last 15% of the run."""
    if step < warmup:
        return peak * (step + 1) / warmup
    decay_start = int(total * 0.85)
    if step < decay_start:
        return peak
    frac = min(1.0, (step - decay_start) / max(1, total - decay_start))
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def widen_patch_embedding(state: dict, model: WanTransformer3DModel) -> dict:
    """A state dict whose patch embedding reads fewer input channels than ``model``'s, zero-padded to fit."""
    state = dict(state)
    old = state["patch_embedding.weight"]
    new = torch.zeros_like(model.patch_embedding.weight)
    if old.shape[1] > new.shape[1] or old.shape[1] not in (new.shape[1], new.shape[1] - POSITION_CHANNELS):
        raise ValueError(
            f"cannot initialise a {new.shape[1]}-channel patch embedding from a {old.shape[1]}-channel one"
        )
    new[:, : old.shape[1]] = old
    state["patch_embedding.weight"] = new
    return state


def step_batch(step: int, args: argparse.Namespace) -> dict:
    """Everything random about optimiser step ``step``: drawn from generators seeded by (seed, step) alone, so a
    resumed run, a run with data workers and a run on another device all see the same batches."""
    rng = np.random.default_rng([args.seed, step])
    gen = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
    videos, prompts, masks = training_batch(rng, args.batch, args.frames, args.height, args.width, with_masks=True)
    prompts = ["" if rng.random() < args.uncond_prob else p for p in prompts]
    x0 = torch.from_numpy(videos).float()
    sigma = torch.sigmoid(torch.randn(args.batch, generator=gen) + args.t_mean)
    noise = torch.randn(x0.shape, generator=gen)
    return {"x0": x0, "prompts": prompts, "masks": torch.from_numpy(masks), "sigma": sigma, "noise": noise}


class StepBatches(torch.utils.data.Dataset):
    """Step k's batch as item k - first, for a DataLoader whose workers render scenes while the model trains."""

    def __init__(self, first: int, last: int, args: argparse.Namespace):
        self.first, self.last, self.args = first, last, args

    def __len__(self) -> int:
        return self.last - self.first

    def __getitem__(self, i: int) -> dict:
        return step_batch(self.first + i, self.args)


def batches(first: int, args: argparse.Namespace):
    """Step batches from ``first`` to the end of the run, rendered by ``--workers`` processes (0: inline)."""
    if args.workers == 0:
        return (step_batch(k, args) for k in range(first, args.steps))
    return iter(
        torch.utils.data.DataLoader(
            StepBatches(first, args.steps, args),
            batch_size=None,
            shuffle=False,
            num_workers=args.workers,
            prefetch_factor=4,
            pin_memory=args.device.startswith("cuda"),
        )
    )


def truncate_log(log_path: Path, step: int) -> None:
    """Keep the loss log's lines up to ``step``: a run killed between checkpoints logged steps that its resume
    trains again, and their lines must not appear twice.  Rewritten whole (temp + rename)."""
    with open(log_path, newline="") as f:
        rows = list(csv.reader(f))
    kept = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= step] if rows else []
    if len(kept) == len(rows):
        return
    tmp = log_path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        csv.writer(f).writerows(kept)
    os.replace(tmp, log_path)


def run_command(args) -> int:
    for name, default in (("frames", DEFAULT_FRAMES), ("height", DEFAULT_HEIGHT), ("width", DEFAULT_WIDTH)):
        if getattr(args, name) is None:  # the command leaves the video size to the model's own
            setattr(args, name, default)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    args.run_dir.mkdir(parents=True, exist_ok=True)
    state_path = args.run_dir / "state.pt"

    state = torch.load(state_path, map_location="cpu", weights_only=True) if state_path.exists() else None
    config = dict(state.get("config", TRANSFORMER_CONFIG)) if state else dict(TRANSFORMER_CONFIG)
    torch.manual_seed(args.seed)
    model = WanTransformer3DModel(**config)
    ema = copy.deepcopy(model).requires_grad_(False)
    text_encoder = WordTextEncoder(dim=config["text_dim"], max_tokens=TEXT_MAX_TOKENS)
    step = 0
    if state:
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        step = int(state["step"])
    elif args.init_from:
        init = torch.load(args.init_from, map_location="cpu", weights_only=True)
        model.load_state_dict(widen_patch_embedding(init["model"], model))
        ema.load_state_dict(widen_patch_embedding(init["ema"], ema))
        step = int(init["step"])
        print(f"initialised from {args.init_from} (step {step}); new optimiser state", flush=True)
    model.to(device)
    ema.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=0.01)
    if state:
        opt.load_state_dict(state["opt"])
        print(f"resumed from {state_path} at step {step}", flush=True)
    forward = torch.compile(model) if args.compile else model
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)
    ema_params, model_params = list(ema.parameters()), list(model.parameters())

    log_path = args.run_dir / "loss.csv"
    if state and log_path.exists():
        truncate_log(log_path, step)
    new_log = not log_path.exists()
    log_file = open(log_path, "a", newline="")
    log = csv.writer(log_file)
    if new_log:
        log.writerow(["step", "loss", "lr", "seconds_per_step"])

    def checkpoint() -> None:
        tmp = state_path.with_suffix(".tmp")
        torch.save(
            {
                "model": model.state_dict(),
                "ema": ema.state_dict(),
                "opt": opt.state_dict(),
                "step": step,
                "config": config,
            },
            tmp,
        )
        os.replace(tmp, state_path)
        save_model_folder(args.run_dir / "ema", ema, text_encoder, sigma_data=args.precondition)
        log_file.flush()

    losses, tick = [], time.time()
    for data in batches(step, args):
        x0, noise = data["x0"].to(device, non_blocking=True), data["noise"].to(device, non_blocking=True)
        sigma, masks = data["sigma"].to(device), data["masks"].to(device, non_blocking=True)
        text = text_encoder(data["prompts"]).to(device)
        s = sigma.view(-1, 1, 1, 1, 1)
        x_s = (1 - s) * x0 + s * noise
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, args.steps, args.lr, args.warmup)
        grid = position_grid(args.batch, args.frames, args.height, args.width, device=device)
        target = noise - x0
        if args.precondition:
            skip, out, c_in = coefficients(s, args.precondition)
            target = (target - skip * x_s) / out
            x_s = c_in * x_s
        with autocast:
            pred = forward(torch.cat([x_s, grid], dim=1), sigma * 1000, text, return_dict=False)[0]
        weight = 1.0 + (args.fg_weight - 1.0) * masks.float()[:, None]  # (B, 1, T, H, W)
        loss = (weight * (pred.float() - target) ** 2).mean() / weight.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, model_params, 1 - decay)
        step += 1
        losses.append(loss.detach())
        if step % args.log_every == 0:
            sec = (time.time() - tick) / len(losses)
            mean_loss = torch.stack(losses).mean().item()
            log.writerow([step, f"{mean_loss:.5f}", f"{opt.param_groups[0]['lr']:.2e}", f"{sec:.3f}"])
            log_file.flush()  # a person tailing the log sees every line; a resume drops those past its checkpoint
            print(f"step {step} loss {mean_loss:.4f} {sec:.3f}s/step", flush=True)
            losses, tick = [], time.time()
        if step % args.checkpoint_every == 0 or step == args.steps:
            checkpoint()
    log_file.close()
    return 0
