"""Keeps ``OUT/report.html`` current while a job runs, without ever making the driver wait for it.

A refresh reads every results part and decodes a dozen videos: seconds on a large output.  The driver calls
``refresh_if_due()`` from its wait loop; a due refresh runs on a daemon thread (one at a time), so rows keep
being recorded meanwhile.  ``final()`` writes the last one at the end of a run, after the results are flushed.
A report that cannot be written is logged and never fails the run: it is a view of the results, not a result.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timezone

from ..storage.errors import redact
from ..storage.stores import OutputStore

log = logging.getLogger(__name__)


class ReportRefresher:
    def __init__(self, store: OutputStore, interval_s: float = 300.0, enabled: bool = True):
        self.store, self.interval_s, self.enabled = store, interval_s, enabled
        self.started_at = datetime.now(timezone.utc)
        self._last = time.monotonic()
        self._thread: threading.Thread | None = None

    def seconds_until_due(self) -> float | None:
        if not self.enabled:
            return None
        return max(0.0, self.interval_s - (time.monotonic() - self._last))

    def _write(self) -> None:
        from .report import write_report  # deferred: numpy

        try:
            write_report(self.store, started_at=self.started_at)
        except Exception as err:  # noqa: BLE001 - a view of the results must not end the run
            log.warning("could not write %s/report.html: %s", self.store.location.uri, redact(str(err)))

    def refresh_if_due(self) -> None:
        if self.seconds_until_due() != 0.0 or (self._thread is not None and self._thread.is_alive()):
            return
        self._last = time.monotonic()
        self._thread = threading.Thread(target=self._write, name="ditfarm-report", daemon=True)
        self._thread.start()

    def final(self) -> None:
        if not self.enabled:
            return
        if self._thread is not None:
            self._thread.join()
        self._write()
