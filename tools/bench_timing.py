"""What the GPU benchmarks share: a time budget, a transformer of a published config with random weights, and
seconds per denoising step of a loop (synchronized on the device, after a one-step warm-up)."""

from __future__ import annotations

import statistics
import time

import torch

from ..pipelines.denoise import denoise
from ..pipelines.wan_configs import VAE_STRIDE


class Budget:
    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds

    @property
    def left(self) -> float:
        return self.deadline - time.monotonic()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def latent_shape(frames: int, height: int, width: int) -> tuple[int, ...]:
    return (1, 16, (frames - 1) // VAE_STRIDE[0] + 1, height // VAE_STRIDE[1], width // VAE_STRIDE[2])


def random_transformer(config: dict, layers: int, device: torch.device, dtype: torch.dtype):
    """A Wan transformer of ``config`` with ``layers`` blocks, random weights, in ``dtype`` except the modules
    diffusers keeps in float32 for Wan (as ``from_pretrained(dtype=...)`` leaves them)."""
    from diffusers import WanTransformer3DModel  # deferred: diffusers

    torch.manual_seed(0)
    with torch.device(device):
        model = WanTransformer3DModel(**{**config, "num_layers": layers})
    model.to(dtype)
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or ())
    for name, module in model.named_modules():
        if keep & set(name.split(".")):
            module.float()
    return model.eval().requires_grad_(False)


def scheduler():
    from diffusers import UniPCMultistepScheduler  # WanPipeline's  # deferred: diffusers

    return UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0, num_train_timesteps=1000
    )


def ditfarm_loop(transformer, latents, cond, uncond, steps: int, guidance: float):
    sched = scheduler()
    return denoise(transformer, sched, latents, cond, uncond, steps, guidance)


def seconds_per_step(loop, transformer, inputs, steps: int, repeats: int, device, prepare=None) -> tuple[float, float]:
    """(median seconds per step over ``repeats`` loops of ``steps``, seconds of the one-step warm-up loop);
    ``prepare(steps)``, untimed, before each loop (a calibrated cache is calibrated for one step count)."""
    if prepare:
        prepare(1)
    synchronize(device)
    start = time.perf_counter()
    loop(transformer, *inputs, 1, 5.0)
    synchronize(device)
    warmup = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        if prepare:
            prepare(steps)
        synchronize(device)
        start = time.perf_counter()
        loop(transformer, *inputs, steps, 5.0)
        synchronize(device)
        times.append((time.perf_counter() - start) / steps)
    return statistics.median(times), warmup
