"""Video files: H.264 mp4 through imageio-ffmpeg (the ffmpeg binary ships inside its wheel).

Frames are uint8 (T, H, W, 3).  ``upscale`` repeats pixels (nearest neighbour) so that a 32x32 render can be
watched; yuv420p keeps the files playable everywhere, and a low CRF keeps colours of small shapes intact.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from fractions import Fraction
from pathlib import Path

import imageio_ffmpeg
import numpy as np


def upscale_nearest(frames: np.ndarray, factor: int) -> np.ndarray:
    if factor < 1:
        raise ValueError(f"upscale must be a positive integer, got {factor}")
    return frames if factor == 1 else frames.repeat(factor, axis=1).repeat(factor, axis=2)


class EncodeError(OSError):
    """ffmpeg did not produce a whole video: it exited with an error (a full disk, a killed encoder), or the file it
    left does not read back with every frame.  Nothing is published from a failed encode."""


def write_mp4(frames: np.ndarray, path: str | os.PathLike, fps: int = 8, upscale: int = 1, crf: int = 12) -> Path:
    """Write uint8 frames (T, H, W, 3) as an H.264 mp4 and verify it; the file appears whole or not at all.

    The encode counts only when ffmpeg exits 0 and the file reads back with all T frames: a full disk can leave
    ffmpeg a truncated file that a rename would publish as if it were a video.  Raises EncodeError otherwise."""
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
    try:
        _encode(frames, tmp, fps, crf)
        verify_mp4(tmp, t)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _encode(frames: np.ndarray, path: Path, fps: int, crf: int) -> None:
    """Pipe raw RGB frames through ffmpeg (libx264, yuv420p); EncodeError unless it exits 0."""
    t, h, w, _ = frames.shape
    cmd = [
        imageio_ffmpeg.get_ffmpeg_exe(),
        "-nostdin",
        "-y",
        "-v",
        "error",
        "-f",
        "rawvideo",
        "-vcodec",
        "rawvideo",
        "-s",
        f"{w}x{h}",
        "-pix_fmt",
        "rgb24",
        "-r",
        str(Fraction(fps).limit_denominator()),
        "-i",
        "-",
        "-an",
        "-vcodec",
        "libx264",
        "-pix_fmt",
        "yuv420p",
        "-crf",
        str(crf),
        "-preset",
        "veryfast",
        str(path),
    ]
    with tempfile.TemporaryFile() as log:  # a file, not a pipe: a chatty ffmpeg cannot block on a full pipe
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=log)
        try:
            try:
                for frame in frames:
                    proc.stdin.write(np.ascontiguousarray(frame).tobytes())
                proc.stdin.close()
            except BrokenPipeError:
                pass  # ffmpeg gave up early; its exit status and log say why
            code = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        if code != 0:
            log.seek(0)
            raise EncodeError(f"ffmpeg exited with status {code} writing {path.name}: {_tail(log.read())}")


def verify_mp4(path: str | os.PathLike, num_frames: int) -> int:
    """The size of an mp4 that holds ``num_frames`` video frames (read back from its container, no decoding);
    EncodeError when it is empty, unreadable or short of frames."""
    path = Path(path)
    size = path.stat().st_size if path.exists() else 0
    if size == 0:
        raise EncodeError(f"{path.name} is empty after encoding")
    proc = subprocess.run(
        [
            imageio_ffmpeg.get_ffmpeg_exe(),
            "-nostdin",
            "-v",
            "error",
            "-stats",
            "-i",
            str(path),
            "-map",
            "0:v:0",
            "-c",
            "copy",
            "-f",
            "null",
            "-",
        ],
        capture_output=True,
    )
    counted = re.findall(rb"frame=\s*(\d+)", proc.stderr)
    found = int(counted[-1]) if counted else 0
    if proc.returncode != 0 or found != num_frames:
        reason = _tail(proc.stderr) if proc.returncode != 0 else f"{found} of {num_frames} frames"
        raise EncodeError(f"{path.name} ({size} bytes) does not read back as a whole video: {reason}")
    return size


def _tail(log: bytes, limit: int = 300) -> str:
    text = log.decode(errors="replace").strip().replace("\n", "; ")
    return (text[-limit:] if len(text) > limit else text) or "no message"


def read_mp4(path: str | os.PathLike) -> np.ndarray:
    """Read an mp4 back as uint8 frames (T, H, W, 3)."""
    reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    meta = next(reader)
    w, h = meta["size"]
    frames = [np.frombuffer(buf, dtype=np.uint8).reshape(h, w, 3) for buf in reader]
    return np.stack(frames) if frames else np.zeros((0, h, w, 3), np.uint8)
