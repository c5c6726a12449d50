"""What crosses an actor boundary between the driver's gang pool and a gang's ranks, as typed values.

A rank answers a request with a result, or with a failure that leaves the gang healthy (the row's own input
was refused, or storing its video failed): failures travel as values and become the driver's exceptions in
one place (``Failure.raise_error``).  A rank that dies is Ray's error, not a message: the pool replaces the gang.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from ..pipelines.conditioning import Conditioning
from ..storage.errors import OutputFull, StorageError, is_full
from ..storage.lease import LeaseLost
from ..storage.stores import OutputLocation
from ..types import RenderSettings, VideoPhases


class RowError(ValueError):
    """The video's own input is bad (prompt, sizes); every rank refused it and the gang is still usable."""


@dataclass(frozen=True)
class PublishTarget:
    """Where rank 0 stores the video it decodes: the run's output, the row's id and the run's settings."""

    location: OutputLocation
    video_id: str
    settings: RenderSettings
    absent: bool = False  # the run's listing had no video of this id


@dataclass(frozen=True)
class EncodedText:
    """A video's conditioning (its text, encoded) on the CPU, encoded on rank 0 ahead of its render."""

    embeddings: Conditioning
    seconds: float


@dataclass
class RankResult:
    """One rank's part of a video: rank 0 holds the frames (or, deferred, the latents) and its phases; every
    rank its cache's decisions (``masks``) and peak bytes."""

    settings: dict  # the resolved SamplerSettings' fields
    masks: dict = field(default_factory=dict)
    peak_bytes: int = 0
    skipped_fraction: float = 0.0
    knob: tuple = (None, None)  # the cache's (knob, where it came from), as this rank's loader chose it
    phases: VideoPhases | None = None
    frames: object = None  # uint8 (T, H, W, 3) on rank 0 when decoded here
    latents: object = None  # rank 0, when the decode is deferred
    compiled_graphs: int | None = None


@dataclass
class StoredVideoInfo:
    """Rank 0 stored the video: where, its size, and what decoding and storing it took."""

    uri: str
    video_bytes: int
    store_seconds: float
    decode_seconds: float | None = None
    video_format: tuple[int, int] | None = None  # the mp4's (fps, upscale)
    digest: str | None = None  # StoredVideo's digest and modification time
    mtime_ns: int | None = None


@dataclass
class VideoResult:
    """A gang's answer for one video: rank 0's result, what was stored (None: frames came back instead), a
    ticket while a deferred video is still being stored, and how many renders it took."""

    rank: RankResult
    stored: StoredVideoInfo | None = None
    ticket: str | None = None
    text_ahead: bool = False
    attempts: int = 1


@dataclass(frozen=True)
class Failure(ABC):
    """A failure a rank reports and the gang survives."""

    message: str

    @abstractmethod
    def raise_error(self): ...


class RowRefused(Failure):
    def raise_error(self):
        raise RowError(self.message)


class LeaseWasLost(Failure):
    def raise_error(self):
        raise LeaseLost(self.message)


class StoreFailed(Failure):
    def raise_error(self):  # a full disk stops the run, like the driver's own
        raise (OutputFull if is_full(self.message) else StorageError)(self.message)


def checked(answer):
    """``answer`` itself, or the exception its failure stands for."""
    if isinstance(answer, Failure):
        answer.raise_error()
    return answer
