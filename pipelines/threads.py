"""How many CPU threads torch may use for a render: what this process is given, not what the machine has.

torch sizes its pool from the machine's cores.  In a container limited to 4 CPUs on a 64-core node that is 16
times too many threads, and on a small machine whose other cores are busy (the video encoder, an upload, another
job) its threads wait on one another: on two cores, two threads render several times slower than one.  So a render
takes the CPUs this process may run on (its affinity, within a cgroup's CPU quota) and leaves one of them to the
work that runs beside the denoising loop (decoding, encoding and storing the previous video); a gang rank takes the
CPUs Ray gave it.  `--threads N` overrides both, and OMP_NUM_THREADS the default.
"""

from __future__ import annotations

import math
import os


def usable_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup v2 or v1 CPU quota (a container limit)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity on this platform
        cpus = os.cpu_count() or 1
    quota = _cgroup_quota()
    return max(1, min(cpus, math.ceil(quota)) if quota else cpus)


def default_threads() -> int:
    """OMP_NUM_THREADS where the environment sets it (the usual way to size a process's pools); else one thread
    per usable CPU, less one for the work beside the loop; at least one."""
    configured = os.environ.get("OMP_NUM_THREADS", "")
    if configured.isdigit() and int(configured) > 0:
        return int(configured)
    return max(1, usable_cpus() - 1)


def set_threads(threads: int | None) -> int:
    """Set torch's intra-op threads to ``threads`` (None: ``default_threads()``); returns the count."""
    import torch  # deferred: torch

    count = threads or default_threads()
    torch.set_num_threads(count)
    return count


def _cgroup_quota() -> float | None:
    """The CPU quota in CPUs (quota / period), or None where there is none."""
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:  # cgroup v2: "max 100000" or "400000 100000"
            quota, period = f.read().split()
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") as f:
            quota = int(f.read())
        with open("/sys/fs/cgroup/cpu/cpu.cfs_period_us") as f:
            period = int(f.read())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None
