"""What a person watching a run sees: a tqdm bar on a terminal, one plain line every 30 s anywhere else.

``ray job logs`` and Kubernetes logs are not terminals: a bar redrawn with carriage returns becomes thousands of
fragments there.  Off a terminal the run prints one self-contained line per interval instead: counts of total,
throughput, ETA, the gangs' health and the mean cache skip fraction.
"""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int | None, enabled: bool = True, interval_s: float = 30.0, stream=None,
                 gangs=None):
        """``gangs``: a callable giving (alive, replaced), or None while no gangs render (in-process)."""
        self.stream = stream or sys.stderr
        self.total, self.interval_s, self.gangs = total, interval_s, gangs
        self.ok = self.failed = self.skipped = 0
        self.skip_sum = 0.0
        self.start = self.last_line = time.monotonic()
        self.bar = None
        self.enabled = enabled
        if enabled and getattr(self.stream, "isatty", lambda: False)():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="video", dynamic_ncols=True, file=self.stream)

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
        else:
            self.tick()

    def seconds_until_due(self) -> float | None:
        """When the next plain line is due (None: no plain lines)."""
        if not self.enabled or self.bar is not None:
            return None
        return max(0.0, self.interval_s - (time.monotonic() - self.last_line))

    def tick(self) -> None:
        if self.seconds_until_due() == 0.0:
            self.print_line()

    def line(self) -> str:
        elapsed = time.monotonic() - self.start
        done = self.ok + self.failed + self.skipped
        rendered = self.ok + self.failed
        per_minute = 60 * rendered / elapsed if elapsed > 0 else 0.0
        of = f"/{self.total}" if self.total is not None else ""
        parts = [f"{done}{of} rows: {self.ok} ok, {self.failed} failed, {self.skipped} skipped",
                 f"{per_minute:.1f} videos/min"]
        if self.total is not None and per_minute > 0:
            parts.append(f"ETA {max(0, self.total - done) / per_minute:.1f} min")
        health = self.gangs() if self.gangs is not None else None
        if health is not None:
            parts.append(f"gangs {health[0]} alive, {health[1]} replaced")
        if self.ok:
            parts.append(f"cache skipped {self.skip_sum / self.ok:.1%}")
        return "progress: " + "; ".join(parts)

    def print_line(self) -> None:
        print(self.line(), file=self.stream, flush=True)
        self.last_line = time.monotonic()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            self.print_line()
