"""Whether a video can fit: the least memory its loop and decode need, against what the device has free.

A row that cannot fit is refused by name before its loop starts.  Without this it fails deep inside the loop (a
torch allocation error, or Python's MemoryError that no row handler expects), or worse, on a machine without swap,
takes the whole node down with every other row of the job.

The estimate is a floor, not a forecast: it counts only what the loop must hold at once whatever the attention
kernel or cache (the hidden states, q, k, v and the FFN's inner activations of one block, the latents and the
scheduler's copies) and the decoded video (float and uint8).  A row refused by it could not have rendered; a row
it passes may still run out of memory, and then fails as its row (the driver's handlers).
"""

from __future__ import annotations

import math
import os
import resource

import torch

GIB = 1024**3


def minimum_video_bytes(
    latent_shape: tuple[int, ...],
    patch: tuple[int, int, int],
    width: int,
    ffn_dim: int,
    element_bytes: int,
    frames: int,
    height: int,
    width_px: int,
) -> int:
    """The floor described above for a transformer of hidden ``width`` and FFN ``ffn_dim`` over a patch grid of
    ``latent_shape`` (batch, channels, frames, height, width), decoded to ``frames`` x ``height`` x ``width_px``."""
    tokens = math.prod(n // p for n, p in zip(latent_shape[2:], patch))
    block = tokens * (4 * width + ffn_dim) * element_bytes  # hidden states, q, k, v; the FFN's inner layer
    latents = 4 * math.prod(latent_shape) * 4  # noise, latents, the prediction, the scheduler's step (float32)
    video = frames * height * width_px * 3 * (4 + 1)  # the decoded float video and its uint8 frames
    return block + latents + video


def available_bytes(device: torch.device) -> int:
    """Memory this process may still take on ``device``: a GPU's free memory (plus what torch's allocator holds
    unused); on the CPU the least of the host's available memory, the cgroup's headroom (a container's limit) and
    the address-space limit's (RLIMIT_AS, as `prlimit` and tests set it)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    limits = [_meminfo_kib("MemAvailable") * 1024 if os.path.exists("/proc/meminfo") else 2**62]
    cgroup = _cgroup_headroom()
    if cgroup is not None:
        limits.append(cgroup)
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY and os.path.exists("/proc/self/status"):
        limits.append(max(0, soft - _status_kib("VmSize") * 1024))
    return int(min(limits))


def check_fits(needed: int, available: int, device: torch.device | str, what: str) -> None:
    """A ValueError (the row's error) naming both figures when ``needed`` exceeds ``available``."""
    if needed > available:
        raise ValueError(
            f"{what} needs at least {needed / GIB:.2f} GiB of memory on {device}, more than the "
            f"{available / GIB:.2f} GiB available there: render it smaller (frames, height, width) "
            f"or on a device with more memory"
        )


def _proc_kib(path: str, field: str) -> int:
    """A "Field:  N kB" line's N from a /proc file (0 when absent)."""
    with open(path) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _meminfo_kib(field: str) -> int:
    return _proc_kib("/proc/meminfo", field)


def _status_kib(field: str) -> int:
    return _proc_kib("/proc/self/status", field)


def _cgroup_headroom() -> int | None:
    """cgroup v2's memory.max less memory.current for this process's cgroup; None where there is no limit."""
    try:
        with open("/proc/self/cgroup") as f:
            path = next((line.strip().split("::", 1)[1] for line in f if line.startswith("0::")), None)
        if path is None:
            return None
        base = os.path.join("/sys/fs/cgroup", path.lstrip("/"))
        with open(os.path.join(base, "memory.max")) as f:
            limit = f.read().strip()
        if limit == "max":
            return None
        with open(os.path.join(base, "memory.current")) as f:
            return max(0, int(limit) - int(f.read().strip()))
    except (OSError, ValueError):
        return None
