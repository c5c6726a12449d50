"""The tiny trainer: resuming equals not stopping (also after a kill between checkpoints), and data workers draw
the very batches the inline path draws."""

import csv
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from ditfarm.commands.cli import main


def train(argv: list[str]) -> None:
    """`ditfarm train-tiny ARGV` in this process."""
    assert main(["train-tiny", *argv]) == 0


pytestmark = [pytest.mark.process]

SMALL = [
    "--batch",
    "2",
    "--frames",
    "4",
    "--height",
    "16",
    "--width",
    "16",
    "--log-every",
    "1",
    "--seed",
    "3",
    "--precondition",
    "0.6",
    "--fg-weight",
    "4",
    "--t-mean",
    "0.5",
]


def losses(run_dir):
    with open(run_dir / "loss.csv") as f:
        return [float(row["loss"]) for row in csv.DictReader(f)]


def log_rows(run_dir):
    """(step, loss, lr) of every logged line: the whole log but its timings."""
    with open(run_dir / "loss.csv") as f:
        return [(int(r["step"]), r["loss"], r["lr"]) for r in csv.DictReader(f)]


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


def test_a_run_killed_between_checkpoints_resumes_to_the_uninterrupted_run(tmp_path):
    """SIGKILL after the first checkpoint, past the warm-up, with the same --steps as the uninterrupted run; the
    resumed run's weights and its whole loss log (steps, losses, learning rates) equal the uninterrupted one's."""
    args = ["--steps", "40", "--checkpoint-every", "10", "--warmup", "2", *SMALL]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    train(["--run-dir", str(straight), *args])
    proc = subprocess.Popen(
        [sys.executable, "-m", "ditfarm.commands.cli", "train-tiny", "--run-dir", str(killed), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 300
    while not (killed / "state.pt").exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.002)
    logged = 0
    while logged <= 10 and proc.poll() is None:  # kill once a step past the checkpoint has been logged
        logged = len(log_rows(killed)) if (killed / "loss.csv").exists() else 0
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    at_kill = torch.load(killed / "state.pt", weights_only=True)["step"]
    assert 10 <= at_kill < 40, at_kill  # killed mid-run, past the warm-up
    assert max(step for step, _, _ in log_rows(killed)) > at_kill  # lines the resume must not repeat
    train(["--run-dir", str(killed), *args])
    assert log_rows(killed) == log_rows(straight)
    a, b = ema_weights(straight), ema_weights(killed)
    assert all(torch.equal(a[k], b[k]) for k in a)
