"""Does `tiny` use the direction word?  Two numbers behind BENCHMARKS.md's adherence notes.

1. From the data generator alone: the error on foreground pixels of the best direction-aware prediction at pure
   noise (the mean video of one prompt) against the best direction-blind one (the mean over the four directions).
2. From the model: its velocity error on foreground pixels of 64 training videos at several noise levels, with
   the true prompts and with the direction words swapped (left<->right, up<->down).

    python benchmarks/tiny_direction_probe.py [--model tiny|FOLDER]
"""

import harness
import numpy as np
import torch

import ditfarm
from ditfarm.pipelines.denoise import transformer_input
from ditfarm.pipelines.tiny.scenes import render_scene, training_batch
from ditfarm.pipelines.tiny.vocab import parse_prompt

SWAP = {"left": "right", "right": "left", "up": "down", "down": "up"}


def prior_gain(n: int = 1500) -> None:
    rng = np.random.default_rng(0)
    videos = {}
    for d in SWAP:
        spec = parse_prompt(f"red circle moving {d} on blue background")
        scenes = [render_scene(spec, rng) for _ in range(n)]
        videos[d] = (np.stack([s.frames * 2 - 1 for s in scenes]), np.stack([s.masks for s in scenes]))
    blind = np.mean([v.mean(0) for v, _ in videos.values()], axis=0)
    for d, (v, m) in videos.items():
        w = m[..., None].astype(float)
        aware = (((v - v.mean(0)) ** 2) * w).sum() / w.sum() / 3
        without = (((v - blind) ** 2) * w).sum() / w.sum() / 3
        print(
            f"prior, {d:5s}: fg-pixel MSE knowing the direction {aware:.3f}, not knowing {without:.3f} "
            f"({100 * (without - aware) / without:.1f}% lower)"
        )


def model_gap(model: str) -> None:
    pipe = ditfarm.load_pipeline(model)
    rng = np.random.default_rng(7)
    v, prompts, masks = training_batch(rng, 64, 8, 32, 32, with_masks=True)
    x0 = torch.from_numpy(v).float()
    m = torch.from_numpy(masks).float()[:, None]
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    swapped = [" ".join(SWAP.get(w, w) for w in p.split()) for p in prompts]
    sched = pipe.scheduler
    for s in (0.8, 0.9, 0.95, 0.98):
        x = (1 - s) * x0 + s * noise
        t = torch.full((64,), s * 1000)
        errors = []
        for texts in (prompts, swapped):
            inp = transformer_input(sched, x, t, pipe.transformer_condition(x), x.dtype)
            with torch.no_grad():
                out = pipe.transformer(inp, t, pipe.text_encoder(texts), return_dict=False)[0]
            if hasattr(sched, "velocity"):  # a preconditioned model: its output stands for a velocity
                out = sched.velocity(out, t, x)
            errors.append(float((((out - (noise - x0)) ** 2) * m).sum() / m.sum()))
        print(
            f"model, noise {s}: fg velocity error true prompt {errors[0]:.4f}, direction swapped {errors[1]:.4f} "
            f"({100 * (errors[1] - errors[0]) / errors[0]:+.2f}%)"
        )


if __name__ == "__main__":
    parser = harness.parser(__doc__)
    parser.add_argument("--model", default="tiny")
    args = parser.parse_args()
    harness.pin_threads(args.threads)
    prior_gain()
    model_gap(args.model)
