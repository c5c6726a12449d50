"""A job's Ray metrics: what Prometheus and the Ray dashboard show about a run while it renders.

Series (Ray prefixes each with ``ray_`` on a node's metrics export; every one carries the output as tag ``out``):

* ``ditfarm_videos_total{status}``: videos finished, by status (ok, failed, skipped);
* ``ditfarm_render_seconds``: a histogram of seconds from a video's start to its stored mp4 (ok videos);
* ``ditfarm_videos_in_flight``: videos rendering now;
* ``ditfarm_gangs_alive`` and ``ditfarm_gangs_replaced``: the gangs' health.

Metrics go through ``ray.util.metrics``, so they exist only where Ray does: a run with gangs starts (or joins)
Ray and from then on records; counts of rows finished before that (skipped ids at the start of a rerun) are
recorded as soon as Ray is up.  A run without Ray records nothing and costs nothing.
"""

from __future__ import annotations

from collections import Counter

RENDER_SECONDS_BOUNDARIES = [0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 3600]


def ray_is_up() -> bool:
    try:
        import ray  # deferred: ray
    except ImportError:
        return False
    return ray.is_initialized()


class JobMetrics:
    def __init__(self, out: str):
        self.tags = {"out": out}
        self.series = None
        self.pending: Counter[str] = Counter()  # finished before Ray was up
        self.pending_seconds: list[float] = []

    def _attach(self) -> bool:
        """Create the series once Ray is up (metrics need a Ray worker to report through)."""
        if self.series is not None:
            return True
        if not ray_is_up():
            return False
        from ray.util.metrics import Counter as RayCounter  # deferred: ray
        from ray.util.metrics import Gauge, Histogram  # deferred: ray

        self.series = {
            "videos": RayCounter(
                "ditfarm_videos",
                description="Videos finished, by status (ok, failed, skipped).",
                tag_keys=("out", "status"),
            ),
            "seconds": Histogram(
                "ditfarm_render_seconds",
                description="Seconds from a video's start to its stored mp4.",
                boundaries=RENDER_SECONDS_BOUNDARIES,
                tag_keys=("out",),
            ),
            "in_flight": Gauge("ditfarm_videos_in_flight", description="Videos rendering now.", tag_keys=("out",)),
            "gangs_alive": Gauge("ditfarm_gangs_alive", description="Gangs able to render.", tag_keys=("out",)),
            "gangs_replaced": Gauge(
                "ditfarm_gangs_replaced", description="Gangs replaced after a failure so far.", tag_keys=("out",)
            ),
        }
        for status, n in self.pending.items():
            self.series["videos"].inc(n, tags={**self.tags, "status": status})
        for seconds in self.pending_seconds:
            self.series["seconds"].observe(seconds, tags=self.tags)
        self.pending.clear()
        self.pending_seconds.clear()
        return True

    def finished(self, status: str, seconds: float | None = None) -> None:
        if not self._attach():
            self.pending[status] += 1
            if seconds is not None:
                self.pending_seconds.append(seconds)
            return
        self.series["videos"].inc(1, tags={**self.tags, "status": status})
        if seconds is not None:
            self.series["seconds"].observe(seconds, tags=self.tags)

    def state(self, in_flight: int, gangs: tuple[int, int] | None) -> None:
        """The gauges: videos in flight, and (alive, replaced) gangs when gangs render."""
        if not self._attach():
            return
        self.series["in_flight"].set(in_flight, tags=self.tags)
        if gangs is not None:
            self.series["gangs_alive"].set(gangs[0], tags=self.tags)
            self.series["gangs_replaced"].set(gangs[1], tags=self.tags)
