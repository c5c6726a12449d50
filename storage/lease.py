"""One run per output: a lease object that the running job holds and renews, so overlapping runs cannot render the
same ids twice.

Two scheduled runs on the same ``--out`` (a nightly trigger that fires while yesterday's run is still going, a
retry of a job that is not dead) would both list the output, both find the same ids missing, and both render them.
So a run takes ``OUT/lease.json`` before it touches anything:

* no lease, or a released one: the run takes it (a create that fails if the object exists: ``If-None-Match: *``
  on S3, an exclusive create on disk);
* a lease renewed within its holder's ``ttl_s``: the run refuses, naming the holder (run id, host, pid, Ray job);
* a stale lease (its holder died without releasing it: SIGKILL, a lost node): the run takes it over by a
  compare-and-swap on the version it read (``If-Match: <etag>`` on S3, a short exclusive lock file on disk), so of
  two runs that both saw it stale exactly one wins.

The holder renews every ``ttl_s / 4`` by the same compare-and-swap; a renewal that finds another run's lease has
lost it (it was stale long enough to be taken over), and the job stops rather than render beside the new holder.
Staleness is judged by the storage's own clock (S3's ``Last-Modified`` against the response's ``Date``; a file's
mtime against this machine's clock), never by the holder's clock.  ``force`` takes the lease whatever holds it:
the documented escape hatch for a lease whose holder is known to be gone.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from .errors import LeaseLost, StorageError
from .stores import OutputStore

log = logging.getLogger(__name__)

LEASE_NAME = "lease.json"
UNREADABLE_PID = -1  # the pid of the holder an unreadable lease names
DEFAULT_TTL_S = 120.0


class LeaseHeld(StorageError):
    """Another live run holds the output; the message names it."""


#: A write is allowed only while the lease was renewed within this fraction of its ttl: a take-over needs the whole
#: ttl, so the write has at least the rest (a quarter of the ttl) to land before anyone may take the output.
FENCE_FRACTION = 0.75


@dataclass(frozen=True)
class LeaseFence:
    """The check a run makes right before it publishes a video or writes a results part: the output's lease still
    names this run and was renewed recently enough that no other run can take it over before the write lands.

    It reads the lease object itself (no version needed), so it travels with a video to whichever process
    publishes it (rank 0 of a gang on another node).  A run that was paused past its lease (a VM pause, a stall
    longer than the ttl) wakes, fails this check, and writes nothing; the run that took over has fenced its
    results (``OutputStore.fence_run``), so a part it still wrote is not counted."""

    run_id: str

    def check(self, store: OutputStore) -> None:
        seen = lease_object(store).read()
        if seen is None or seen.holder.run_id != self.run_id or seen.holder.released:
            holder = seen.holder.describe() if seen is not None and not seen.holder.released else "no run"
            raise LeaseLost(
                f"this run ({self.run_id}) no longer holds {lease_object(store).where()}: it is held by "
                f"{holder} now; stopping without writing, so that two runs do not publish the same ids"
            )
        if seen.age_s > FENCE_FRACTION * seen.holder.ttl_s:
            raise LeaseLost(
                f"this run's lease on {lease_object(store).where()} was last renewed {seen.age_s:.0f} s ago "
                f"(ttl {seen.holder.ttl_s:.0f} s): another run may take it over at any moment, so this "
                "run stops without writing"
            )


@dataclass(frozen=True)
class Holder:
    """Who holds an output: enough for a person to find the run (and kill it, or wait)."""

    run_id: str
    host: str
    pid: int
    ray_job: str | None
    started_at: str
    ttl_s: float
    renewals: int = 0
    released: bool = False
    process: str | None = None  # this_process(): which process on which boot, to see at once that it is gone

    def gone(self) -> bool:
        """Whether the holder's process is known to be dead: it ran on this host, under this boot and pid
        namespace, and no process with its pid and start time exists now (a kill -9, a crash).  Anywhere else
        (another host, another container's namespace) nothing can be known, and the ttl decides."""
        if self.released or not self.process or self.host != socket.gethostname():
            return False
        mine = this_process()
        if mine is None or self.process.rsplit(":", 2)[0] != mine.rsplit(":", 2)[0]:
            return False
        return process_identity(self.pid) != self.process

    def describe(self) -> str:
        job = f", Ray job {self.ray_job}" if self.ray_job else ""
        return f"run {self.run_id} (host {self.host}, pid {self.pid}{job}, started {self.started_at})"

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Holder:
        try:
            fields = json.loads(data)
            return cls(**{k: fields[k] for k in cls.__dataclass_fields__ if k in fields})
        except (ValueError, TypeError, KeyError):
            # An unreadable lease is held by an unknown run for a few seconds (DEBRIS_AGE_S), then it is debris.
            return cls(
                run_id="unknown (unreadable lease)",
                host="?",
                pid=UNREADABLE_PID,
                ray_job=None,
                started_at="?",
                ttl_s=DEFAULT_TTL_S,
            )


def process_identity(pid: int) -> str | None:
    """ "<boot id>:<pid namespace>:<pid>:<start time>" of a live process on this host, or None when there is no
    such process (or no /proc to ask).  The start time (clock ticks after boot) tells a reused pid apart."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.readlink("/proc/self/ns/pid")
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    start = stat.rsplit(")", 1)[1].split()[19]  # field 22, counted after the command name in parentheses
    return f"{boot}:{namespace}:{pid}:{start}"


def this_process() -> str | None:
    return process_identity(os.getpid())


def ray_job_id() -> str | None:
    """The Ray job submission id when this process is a ``ray job submit`` entrypoint."""
    config = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not config:
        return None
    try:
        return json.loads(config).get("metadata", {}).get("job_submission_id")
    except ValueError:
        return None


#: An empty or unreadable lease older than this is debris (a run killed, or a disk that filled, between creating the
#: file and writing it), not a holder: a local create is written microseconds after it is made, and an S3 object
#: appears whole or not at all, so no live run leaves one this long.
DEBRIS_AGE_S = 5.0


@dataclass(frozen=True)
class Seen:
    """The lease object as read: its holder, an opaque version for compare-and-swap, and its age in seconds."""

    holder: Holder
    version: str
    age_s: float
    readable: bool = True  # False: empty or not a lease (its holder is unknown)

    @property
    def debris(self) -> bool:
        return not self.readable and self.age_s > DEBRIS_AGE_S

    @property
    def stale(self) -> bool:
        return self.holder.released or self.age_s > self.holder.ttl_s or self.holder.gone() or self.debris


class LeaseObject:
    """The lease as the store's conditional object (storage/conditional.py), read as a ``Seen``."""

    def __init__(self, store: OutputStore):
        self.obj = store.conditional(LEASE_NAME)

    def where(self) -> str:
        return self.obj.where()

    def read(self) -> Seen | None:
        snapshot = self.obj.read()
        if snapshot is None:
            return None
        holder = Holder.from_bytes(snapshot.data)
        return Seen(holder, snapshot.version, snapshot.age_s, readable=holder.pid != UNREADABLE_PID)

    def create(self, data: bytes) -> str | None:
        return self.obj.create(data)

    def replace(self, data: bytes, version: str | None) -> str | None:
        return self.obj.replace(data, version)

    def delete(self, version: str) -> None:
        self.obj.delete(version)


def lease_object(store: OutputStore) -> LeaseObject:
    return LeaseObject(store)


class Lease:
    """This run's hold on one output.  ``acquire()`` (raises LeaseHeld), then ``start_renewing()``; ``release()``
    at the end.  ``lost`` is set (and ``check()`` raises LeaseLost) once another run has taken it over."""

    def __init__(self, store: OutputStore, run_id: str, ttl_s: float = DEFAULT_TTL_S, force: bool = False):
        if not ttl_s > 0:
            raise ValueError(f"lease ttl must be > 0 seconds, got {ttl_s}")
        self.obj = lease_object(store)
        self.force = force
        self.holder = Holder(
            run_id=run_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            ray_job=ray_job_id(),
            started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            ttl_s=ttl_s,
            process=this_process(),
        )
        self.version: str | None = None
        self.took_over: Holder | None = None  # the stale (or forced-out) holder this run replaced
        self.lost: Holder | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def acquire(self) -> Lease:
        data = self.holder.to_bytes()
        for _ in range(5):  # each turn loses only to a run that changed the lease meanwhile
            seen = self.obj.read()
            if seen is None:
                self.version = self.obj.create(data)
            elif seen.stale or self.force:
                self.version = self.obj.replace(data, seen.version)
                if self.version is not None and not seen.holder.released and seen.readable:
                    self.took_over = seen.holder  # (debris names no run whose parts could be fenced)
            else:
                raise LeaseHeld(
                    f"{self.obj.where()} is held by {seen.holder.describe()}, renewed {seen.age_s:.0f} s ago: another "
                    f"run is rendering into this output.  It is taken as dead after {seen.holder.ttl_s:.0f} s without "
                    "a renewal; wait for it, stop it, or pass --force if it is known to be gone"
                )
            if self.version is not None:
                return self
        raise LeaseHeld(f"{self.obj.where()}: other runs keep changing the lease; try again")

    def renew(self) -> bool:
        """One renewal; False (and ``lost`` set) when another run holds the lease now."""
        with self._lock:
            if self.lost is not None or self.version is None:
                return False
            self.holder = Holder(**{**asdict(self.holder), "renewals": self.holder.renewals + 1})
            version = self.obj.replace(self.holder.to_bytes(), self.version)
            if version is None:
                seen = self.obj.read()
                if seen is not None and seen.holder.run_id == self.holder.run_id and not seen.holder.released:
                    # This run's own write whose new version it never recorded (a stop signal raised between
                    # the write and the assignment below): no other run writes this run's id.  Renew on it.
                    version = self.obj.replace(self.holder.to_bytes(), seen.version)
                if version is None:
                    seen = self.obj.read()
                    self.lost = seen.holder if seen is not None else self.holder
                    return False
            self.version = version
            return True

    def start_renewing(self) -> None:
        def loop() -> None:
            interval = self.holder.ttl_s / 4
            while not self._stop.wait(interval):
                try:
                    if not self.renew():
                        return
                except StorageError:
                    continue  # a transient storage error: the next renewal may succeed before the lease goes stale

        self._thread = threading.Thread(target=loop, name="ditfarm-lease", daemon=True)
        self._thread.start()

    def ensure_held(self) -> None:
        """Renew now, and raise LeaseLost unless this run still holds the lease: the check before each results
        part.  A successful renewal leaves the write a whole ttl before anyone may take the output over."""
        self.check()
        if not self.renew():
            self.check()
            raise LeaseLost(f"{self.obj.where()}: this run no longer holds the lease")

    def check(self) -> None:
        if self.lost is not None:
            raise LeaseLost(
                f"{self.obj.where()} was taken over by {self.lost.describe()} while this run held it "
                f"(no renewal reached the storage for {self.holder.ttl_s:.0f} s); stopping so that the "
                "two runs do not render the same ids"
            )

    def release(self) -> None:
        """Stop renewing and remove the lease if it is still ours (a released lease is free to take at once)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            if self.version is not None and self.lost is None:
                try:
                    released = Holder(**{**asdict(self.holder), "released": True})
                    version = self.obj.replace(released.to_bytes(), self.version)
                    if version is not None:
                        self.obj.delete(version)
                except StorageError as err:  # the run is ending anyway: the lease lapses after its ttl instead
                    log.warning(
                        "could not give the lease back (%s); another run may take it over after %.0f s",
                        err,
                        self.holder.ttl_s,
                    )
            self.version = None

    def __enter__(self) -> Lease:
        self.acquire()
        self.start_renewing()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def current_holder(store: OutputStore) -> Seen | None:
    """The lease on ``store`` as it is now (None: no run holds it), for ``ditfarm status``."""
    return lease_object(store).read()
