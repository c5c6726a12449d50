"""Stopping a run: SIGTERM (``ray job stop``, Kubernetes) and SIGINT become ``Stopped`` in the main thread, so the
driver flushes what is stored, closes its gangs and gives its lease back before exiting 128 + signal.

``ray.init`` installs a SIGTERM handler of its own (``sys.exit(15)``: no message, exit code 15), so whoever starts
Ray during a run calls ``reclaim_signals()`` afterwards.
"""

from __future__ import annotations

import signal
import threading

_ours = False  # whether stop_on_signals() is in force


class Stopped(BaseException):
    """SIGTERM or SIGINT arrived: stop now, keep what is stored, exit 128 + signal."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _stop(signum, frame):
    raise Stopped(signum)


def stop_on_signals():
    """Turn SIGTERM and SIGINT into Stopped in the main thread; returns a function that restores the handlers."""
    global _ours
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    _ours = True

    def restore():
        global _ours
        _ours = False
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore


def reclaim_signals() -> None:
    """Put the Stopped handlers back after a library (Ray) replaced them, if a run had installed them."""
    if _ours and threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, _stop)
