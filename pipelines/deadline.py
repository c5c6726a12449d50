"""A video's time limit: a loop that runs past it stops at the next step and fails as its row.

A row whose loop would take days (a size the model allows but the device crawls through, a stalled device) must
not hold a job's slot forever.  The limit is checked between steps, so a step is never cut in half and the
caches are reset as after any failed loop (``denoise``'s ``finally``).  Under sequence parallelism every rank
votes on each step (``vote``: an all-reduce of "late" flags), so all ranks stop at the same step and none is
left waiting in a collective.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from .denoise import SamplerSettings

# A video of the model's default size and steps may take this long; larger rows get proportionally more (frames x
# height x width x steps), since a batch on a slow device legitimately takes hours per video.
DEFAULT_VIDEO_TIMEOUT_S = 7200.0


class VideoTimedOut(ValueError):
    """The video's loop ran past its time limit: the row fails (rendering it again would take as long)."""


def default_timeout_s(defaults: SamplerSettings, overrides: dict) -> float:
    """DEFAULT_VIDEO_TIMEOUT_S scaled by how much more work a row (the model's ``defaults`` with its non-None
    ``overrides``) is than the model's default video."""
    row = {**defaults.__dict__, **{k: v for k, v in overrides.items() if v is not None}}

    def work(s: dict) -> float:
        return float(s["num_frames"]) * s["height"] * s["width"] * s["steps"]

    return DEFAULT_VIDEO_TIMEOUT_S * max(1.0, work(row) / work(defaults.__dict__))


class VideoDeadline:
    """An ``on_step`` callback that raises VideoTimedOut once ``timeout_s`` has passed since it was made.
    ``vote(late) -> bool``: the gang's verdict (any rank late), so that every rank raises at the same step."""

    def __init__(self, timeout_s: float, steps: int, vote: Callable[[bool], bool] | None = None):
        self.timeout_s, self.steps, self.vote = timeout_s, steps, vote
        self.deadline = time.monotonic() + timeout_s

    def __call__(self, step: int, latents=None) -> None:
        late = time.monotonic() > self.deadline
        if self.vote is not None:
            late = self.vote(late)
        if late:
            raise VideoTimedOut(
                f"the video ran past its time limit of {self.timeout_s:.0f} s after step {step + 1} "
                f"of {self.steps} (--video-timeout; by default it grows with the row's frames, "
                f"size and steps)"
            )
