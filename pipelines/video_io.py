"""Video files: H.264 mp4 through imageio-ffmpeg (the ffmpeg binary ships inside its wheel).

Frames are uint8 (T, H, W, 3).  ``upscale`` repeats pixels (nearest neighbour) so that a 32x32 render can be
watched; yuv420p keeps the files playable everywhere, and a low CRF keeps colours of small shapes intact.
"""

from __future__ import annotations

import os
from pathlib import Path

import imageio_ffmpeg
import numpy as np


def upscale_nearest(frames: np.ndarray, factor: int) -> np.ndarray:
    if factor < 1:
        raise ValueError(f"upscale must be a positive integer, got {factor}")
    return frames if factor == 1 else frames.repeat(factor, axis=1).repeat(factor, axis=2)


def write_mp4(frames: np.ndarray, path: str | os.PathLike, fps: int = 8, upscale: int = 1, crf: int = 12) -> Path:
    """Write uint8 frames (T, H, W, 3) as an H.264 mp4; the file appears whole or not at all (temp + rename)."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames of shape (T, H, W, 3), got {frames.dtype} {frames.shape}")
    frames = upscale_nearest(frames, int(upscale))
    t, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"H.264 (yuv420p) needs even frame sizes, got {h}x{w}; use an even size or upscale")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.mp4")
    writer = imageio_ffmpeg.write_frames(
        str(tmp),
        (w, h),
        fps=fps,
        codec="libx264",
        pix_fmt_out="yuv420p",
        macro_block_size=1,
        quality=None,
        output_params=["-crf", str(crf), "-preset", "veryfast"],
        ffmpeg_log_level="error",
    )
    writer.send(None)
    try:
        for frame in frames:
            writer.send(np.ascontiguousarray(frame))
    finally:
        writer.close()
    os.replace(tmp, path)
    return path


def read_mp4(path: str | os.PathLike) -> np.ndarray:
    """Read an mp4 back as uint8 frames (T, H, W, 3)."""
    reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    meta = next(reader)
    w, h = meta["size"]
    frames = [np.frombuffer(buf, dtype=np.uint8).reshape(h, w, 3) for buf in reader]
    return np.stack(frames) if frames else np.zeros((0, h, w, 3), np.uint8)
