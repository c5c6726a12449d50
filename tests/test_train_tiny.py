"""The tiny trainer: resuming equals not stopping, and data workers draw the very batches the inline path draws."""

import csv

import torch
from safetensors.torch import load_file

from ditfarm.pipelines.tiny.train import main as train

SMALL = ["--batch", "2", "--frames", "4", "--height", "16", "--width", "16", "--log-every", "1", "--seed", "3",
         "--precondition", "0.6", "--fg-weight", "4", "--t-mean", "0.5"]


def losses(run_dir):
    with open(run_dir / "loss.csv") as f:
        return [float(row["loss"]) for row in csv.DictReader(f)]


def ema_weights(run_dir):
    return load_file(run_dir / "ema" / "transformer" / "diffusion_pytorch_model.safetensors")


def test_resume_equals_an_uninterrupted_run_and_workers_draw_the_same_batches(tmp_path):
    straight, resumed, workers = tmp_path / "straight", tmp_path / "resumed", tmp_path / "workers"
    train(["--run-dir", str(straight), "--steps", "4", *SMALL])
    train(["--run-dir", str(resumed), "--steps", "2", *SMALL])
    train(["--run-dir", str(resumed), "--steps", "4", *SMALL])  # picks up state.pt at step 2
    train(["--run-dir", str(workers), "--steps", "4", "--workers", "1", *SMALL])
    assert len(losses(straight)) == 4 and losses(straight) != [losses(straight)[0]] * 4
    for other in (resumed, workers):
        assert losses(other) == losses(straight)
        a, b = ema_weights(straight), ema_weights(other)
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.load(straight / "state.pt", weights_only=True)["step"] == 4
