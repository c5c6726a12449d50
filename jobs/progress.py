"""What a person watching a run sees: a tqdm bar on a terminal, one plain line every 30 s anywhere else.

``ray job logs`` and Kubernetes logs are not terminals: a bar redrawn with carriage returns becomes thousands of
fragments there.  Off a terminal the run prints one self-contained line per interval instead: counts of total,
throughput, ETA, the gangs' health, the mean cache skip fraction, and what the run has been waiting on for more
than a few seconds (waits.py).  The lines come from a thread of their own, so a run whose main thread is stuck
in a stalled storage call still says so.
"""

from __future__ import annotations

import sys
import threading
import time

from ..storage.waits import oldest_wait


class Progress:
    def __init__(self, total: int | None, enabled: bool = True, interval_s: float = 30.0, stream=None, gangs=None):
        """``gangs``: a callable giving (alive, replaced), or None while no gangs render (in-process)."""
        self.stream = stream or sys.stderr
        self.total, self.interval_s, self.gangs = total, interval_s, gangs
        self.ok = self.failed = self.skipped = 0
        self.skip_sum = 0.0
        self.start = self.last_line = time.monotonic()
        self.bar = None
        self.enabled = enabled
        if enabled and getattr(self.stream, "isatty", lambda: False)():
            from tqdm import tqdm  # deferred: tqdm

            self.bar = tqdm(total=total, unit="video", dynamic_ncols=True, file=self.stream)
        self._stop = threading.Event()
        self._thread = None
        if enabled:
            self._thread = threading.Thread(target=self._every_interval, name="ditfarm-progress", daemon=True)
            self._thread.start()

    def _every_interval(self) -> None:
        """A plain line per interval; on a terminal, the bar's note of what the run waits on."""
        interval = self.interval_s if self.bar is None else min(self.interval_s, 5.0)
        while not self._stop.wait(interval):
            if self.bar is None:
                self.print_line()
            else:
                wait = oldest_wait()
                self.bar.set_postfix_str(f"waiting {wait}" if wait else "", refresh=True)

    def add(self, status: str, skipped_fraction: float | None = None) -> None:
        if status == "ok":
            self.ok += 1
            self.skip_sum += skipped_fraction or 0.0
        elif status == "skipped":
            self.skipped += 1
        else:
            self.failed += 1
        if self.bar is not None:
            self.bar.set_postfix(ok=self.ok, failed=self.failed, skipped=self.skipped, refresh=False)
            self.bar.update(1)

    def line(self) -> str:
        elapsed = time.monotonic() - self.start
        done = self.ok + self.failed + self.skipped
        rendered = self.ok + self.failed
        per_minute = 60 * rendered / elapsed if elapsed > 0 else 0.0
        of = f"/{self.total}" if self.total is not None else ""
        parts = [
            f"{done}{of} rows: {self.ok} ok, {self.failed} failed, {self.skipped} skipped",
            f"{per_minute:.1f} videos/min",
        ]
        if self.total is not None and per_minute > 0:
            parts.append(f"ETA {max(0, self.total - done) / per_minute:.1f} min")
        health = self.gangs() if self.gangs is not None else None
        if health is not None:
            parts.append(f"gangs {health[0]} alive, {health[1]} replaced")
        if self.ok:
            parts.append(f"cache skipped {self.skip_sum / self.ok:.1%}")
        wait = oldest_wait()
        if wait:
            parts.append(f"waiting {wait}")
        return "progress: " + "; ".join(parts)

    def print_line(self) -> None:
        print(self.line(), file=self.stream, flush=True)
        self.last_line = time.monotonic()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            self.print_line()
