"""Publishing one rendered video: encode its frames as an mp4 once, verify it, and store it under the run's lease.

The same code runs wherever a video is decoded: in the driver's process, and on rank 0 of a gang.
"""

from __future__ import annotations

import logging
import threading
import time

import numpy as np

from ..pipelines.video_io import write_mp4
from ..storage.errors import OutputFull, StorageError
from ..storage.lease import LeaseFence, LeaseLost
from ..storage.stores import OutputLocation, OutputStore, StoredVideo
from ..types import RenderSettings

log = logging.getLogger(__name__)

ENCODE_ATTEMPTS = 2  # encodes (and stores) of one video before its row fails


def publish_video(
    store: OutputStore, video_id: str, frames: np.ndarray, settings: RenderSettings, video, fence=None, absent=False
) -> StoredVideo:
    """Encode the frames as an mp4 once, verify it and store it as ``videos/<id>.mp4``.  ``video``: the model's
    VideoDefaults (fps and upscale where the run sets none); ``fence``: the run's lease check, run right before
    the video is published; ``absent``: the run's listing had no video of this id.  A failed encode is tried once more (a killed encoder may pass the second time; a
    read-only disk fails both, by name), then it is the row's StorageError; a full disk is OutputFull at once."""
    fps, upscale = video_format(settings, video)
    for attempt in range(ENCODE_ATTEMPTS):
        try:
            return store.store_video(
                video_id, lambda path: write_mp4(frames, path, fps=fps, upscale=upscale), fence=fence, absent=absent
            )
        except StorageError as err:
            if isinstance(err, (LeaseLost, OutputFull)) or attempt + 1 == ENCODE_ATTEMPTS:
                raise
            log.warning("storing video %s failed (%s); trying once more", video_id, err)
            time.sleep(1.0)
    raise AssertionError("unreachable")


def video_format(settings: RenderSettings, video) -> tuple[int, int]:
    """(fps, upscale) of a video's mp4: the run's where it sets them, else the model's (its VideoDefaults)."""
    return settings.fps or video.fps, settings.upscale or video.upscale


def lease_fence(out: OutputLocation, store: OutputStore):
    """The check to run right before publishing into ``out`` (None: a location no run holds a lease on)."""
    if out.writer_run is None:
        return None
    fence = LeaseFence(out.writer_run)
    return lambda: fence.check(store)


class PublishGate:
    """Lets a stopping run end with every stored video recorded: once ``close()`` is called no video passes its
    fence any more, and ``close`` waits (boundedly) for the videos already past it to land, so the driver records
    their rows before it gives the lease back.  A video that is refused stores nothing; the rerun renders it."""

    def __init__(self):
        self._cond = threading.Condition()
        self._closed = False
        self._publishing: set[str] = set()  # ids past their fence whose publish has not returned

    def fence(self, key: str, check=None):
        """A fence for publishing ``key``: refuses once the gate is closed, else runs ``check`` (the lease's) and
        counts the video as publishing until ``done(key)`` (call it whether or not the publish succeeded)."""

        def run() -> None:
            with self._cond:
                if self._closed:
                    raise LeaseLost("the run is stopping: this video is not published (a rerun renders it)")
                self._publishing.add(key)
            if check is not None:
                try:
                    check()
                except BaseException:
                    self.done(key)
                    raise

        return run

    def done(self, key: str) -> None:
        with self._cond:
            self._publishing.discard(key)
            self._cond.notify_all()

    def close(self, timeout_s: float) -> tuple[set[str], bool]:
        """Refuse every later publish and wait up to ``timeout_s`` for those under way: (their ids, whether they all
        returned)."""
        with self._cond:
            self._closed = True
            under_way = set(self._publishing)
            return under_way, self._cond.wait_for(lambda: not self._publishing, timeout=timeout_s)
