"""What this process is waiting on right now, for the progress line.

A run whose storage stalls (an S3 endpoint that stopped answering, a lease renewal that hangs) would otherwise
print the same counts line after line, and a person could not tell a stall from slow videos.  Storage calls that
may block register themselves here for as long as they last (retries included); the progress line names the
oldest of them once it has lasted a few seconds.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Iterator

SHOWN_AFTER_S = 5.0  # a wait shorter than this is ordinary latency, not worth a word

_lock = threading.Lock()
_keys = itertools.count()
_waits: dict[int, tuple[str, float]] = {}


@contextlib.contextmanager
def waiting_on(what: str) -> Iterator[None]:
    """Register ``what`` (e.g. "uploading videos/v07.mp4 to s3://bucket/out") while the block runs."""
    key = next(_keys)
    with _lock:
        _waits[key] = (what, time.monotonic())
    try:
        yield
    finally:
        with _lock:
            _waits.pop(key, None)


def oldest_wait(shown_after_s: float = SHOWN_AFTER_S) -> str | None:
    """ "<seconds> s on <what>" for the oldest wait that has lasted ``shown_after_s``, plus how many others there
    are; None when nothing has waited that long."""
    now = time.monotonic()
    with _lock:
        long = sorted((start, what) for what, start in _waits.values() if now - start >= shown_after_s)
    if not long:
        return None
    start, what = long[0]
    more = f" (and {len(long) - 1} more)" if len(long) > 1 else ""
    return f"{now - start:.0f} s on {what}{more}"
