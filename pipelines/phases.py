"""Where a video's time goes: text encoding, denoising, decoding, and the accelerator memory its loop needed.

Per video, on the process that runs rank 0, so a results row can say which phase to make cheaper and how close a
GPU came to running out.  On CUDA a phase ends with a synchronize, so its seconds are the GPU's, not the time to
queue its kernels.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

import torch

from ..types import VideoPhases


class PhaseClock:
    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.seconds: dict[str, float] = {}
        self.peak_bytes: int | None = None

    @contextmanager
    def phase(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.cuda:
                torch.cuda.synchronize(self.device)
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
            if self.cuda and name == "denoise":
                self.peak_bytes = torch.cuda.max_memory_allocated(self.device)

    def reset_peak(self) -> None:
        """Start measuring this video's peak (call where its loop begins)."""
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)

    def phases(self, **seconds: float) -> VideoPhases:
        """The phases measured here, with any measured elsewhere (``text=`` encoded ahead, ``decode=`` beside the
        next loop) filled in."""
        merged = {**self.seconds, **{k: v for k, v in seconds.items() if v is not None}}

        def get(name):
            return round(merged[name], 4) if name in merged else None

        return VideoPhases(get("text"), get("denoise"), get("decode"), self.peak_bytes)
