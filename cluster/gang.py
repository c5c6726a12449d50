"""Gangs of Ray actors that render one video together with sequence parallelism, and a renderer made of gangs.

A gang is N ``GangMember`` actors in one placement group (STRICT_PACK: one node, where NVLink lives; one GPU per
bundle on GPU nodes, one CPU otherwise).  The gang arranges its own rendezvous: rank 0 opens a TCPStore on a free
port of its node and reports its address; the others join it over TCP.  No environment variable set by the driver
is involved, so the same code runs under ``ray job submit`` on a multi-node cluster.  Every collective carries the
gang's timeout.

A gang that fails (an actor dies, a collective times out, a call exceeds its deadline) is killed whole: a rank
cannot rejoin a process group, and a survivor left waiting in a collective would hang.  ``GangPool`` then starts a
new gang in its place and renders the video again from the start.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta

import ray
import torch
import torch.distributed as dist
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from ..pipelines.conditioning import Conditioning
from ..pipelines.deadline import default_timeout_s
from ..pipelines.phases import PhaseClock
from ..storage.errors import StorageError
from ..storage.lease import LeaseLost
from ..storage.stores import clear_local_temp
from ..types import NoRenderersLeft, RenderSettings, RowInputs
from ..worker.publish import PublishGate, lease_fence, publish_video, video_format
from .messages import (
    EncodedText,
    Failure,
    LeaseWasLost,
    PublishTarget,
    RowRefused,
    StoredVideoInfo,
    StoreFailed,
    VideoResult,
    checked,
)
from .warm_gangs import Waiter, assign, warm_key

log = logging.getLogger(__name__)


class GangFailure(RuntimeError):
    """A gang could not finish a call; it has been killed.  ``attempts``: renders of the video so far."""

    def __init__(self, message: str, attempts: int = 1):
        super().__init__(message)
        self.attempts = attempts


ROOM_LOG_INTERVAL_S = 30.0  # a gang waiting for a node with room says so this often
STOP_ANSWER_S = 10.0  # beyond its grace, how long a stopping pool waits for a rank 0 to answer at all
# "publish": rank 0's decoding and storing beside the next loop; "control": the stop, which must not queue behind
# either of them
MEMBER_OPTIONS = dict(max_restarts=0, max_task_retries=0, concurrency_groups={"publish": 1, "control": 1})


class RankActor:
    """One rank of a gang, as a Ray actor (``GangMember``): joins the gang's process group, holds its model copy
    and renders its shard of every video; rank 0 also encodes the text ahead and publishes the videos."""

    def __init__(self, rank: int, world: int, settings: RenderSettings, threads: int = 1):
        torch.set_num_threads(threads)
        self.rank, self.world, self.settings = rank, world, settings
        self.store = None
        self.renderer = None
        self.outputs = {}  # OutputLocation -> its store, opened once per gang member
        self.pending = {}  # rank 0, deferred publishing: ticket -> (latents, publish)
        self.gate = PublishGate()  # rank 0: a stopping run lets no video publish after its rows are flushed
        if rank == 0:  # rank 0 publishes: clear what ranks killed on this node left in its temp dir
            clear_local_temp()

    def open_store(self) -> tuple[str, int]:
        """Rank 0: listen on a free port of this node; returns (node address, port)."""
        host = ray.util.get_node_ip_address()
        self.store = dist.TCPStore(
            host,
            0,
            self.world,
            is_master=True,
            timeout=timedelta(seconds=self.settings.collective_timeout_s),
            wait_for_workers=False,
        )
        return host, self.store.port

    def join(self, host: str, port: int) -> str:
        """Join the gang's process group and load the model (once; it then renders many videos); returns what
        the rank runs (dtype, layout, attention kernels, compilation)."""
        from .gang_rank import RankRenderer  # deferred: diffusers (the model stack loads in the rank's process)

        timeout = timedelta(seconds=self.settings.collective_timeout_s)
        if self.world > 1:
            if self.store is None:
                self.store = dist.TCPStore(host, port, self.world, is_master=False, timeout=timeout)
            backend = "nccl" if self.settings.device.startswith("cuda") else "gloo"
            dist.init_process_group(backend, store=self.store, rank=self.rank, world_size=self.world, timeout=timeout)
        self.renderer = RankRenderer(self.rank, self.world, self.settings)
        return self.renderer.description

    @ray.method(concurrency_group="publish")
    def encode_text(self, row: RowInputs) -> EncodedText | None:
        """Rank 0: the conditioning of a video's row, encoded beside the loop now running (see ``Gang.encode``);
        None for a bad row or when encoding failed: the render then encodes (and reports) it itself."""
        try:
            return self.renderer.encode_text(row)
        except Exception as err:  # noqa: BLE001 - the render encodes again and raises where it belongs
            log.warning("encoding the text ahead failed (%s); the render encodes it", err)
            return None

    def render(
        self,
        row: RowInputs,
        publish: PublishTarget | None = None,
        defer: bool = False,
        embeddings: Conditioning | None = None,
        timeout_s: float | None = None,
    ) -> VideoResult | Failure:
        """Every rank renders its shard; rank 0 returns the frames, or with ``publish`` encodes and stores the mp4
        itself and returns only where: raw frames never travel to the driver.  With ``defer`` rank 0 keeps the
        latents and returns a ticket at once; ``publish_video`` then decodes, encodes and stores them on another
        thread while the gang denoises the next video.  A ValueError (bad prompt or settings, raised alike on
        every rank before any collective) comes back as RowRefused and a storage failure as StoreFailed or
        LeaseWasLost: the row fails, the gang stays healthy."""
        defer = defer and publish is not None
        try:
            result = self.renderer.render(
                row,
                decode=not defer,
                embeddings=embeddings if self.rank == 0 else None,
                timeout_s=timeout_s,
            )
        except ValueError as err:
            return RowRefused(str(err))
        if publish is None or self.rank != 0:
            return VideoResult(result)
        if defer:
            ticket = uuid.uuid4().hex
            self.pending[ticket] = (result.latents, publish)
            result.latents = None
            return VideoResult(result, ticket=ticket, text_ahead=embeddings is not None)
        frames, result.frames = result.frames, None
        stored = self._store(frames, publish)
        if isinstance(stored, Failure):
            return stored
        return VideoResult(result, stored=stored, text_ahead=embeddings is not None)

    def model_defaults(self):
        """The model's default SamplerSettings (what a row's missing sizes and steps become)."""
        return self.renderer.pipe.defaults

    @ray.method(concurrency_group="publish")
    def publish_video(self, ticket: str) -> StoredVideoInfo | Failure:
        """Rank 0: decode, encode and store a deferred video (beside the next render)."""
        latents, publish = self.pending.pop(ticket)
        clock = PhaseClock(self.renderer.pipe.execution_device)
        with torch.no_grad(), clock.phase("decode"):
            frames = self.renderer.pipe.decode(latents)
        stored = self._store(frames, publish)
        if isinstance(stored, StoredVideoInfo):
            stored.decode_seconds = clock.seconds["decode"]
        return stored

    @ray.method(concurrency_group="control")
    def stop_publishing(self, timeout_s: float) -> tuple[set[str], bool]:
        """Rank 0: refuse every later publish and wait up to ``timeout_s`` for the videos already past their fence:
        (their ids, whether they all landed).  Runs on its own thread, beside a render or a publish under way."""
        return self.gate.close(timeout_s)

    def _store(self, frames, publish: PublishTarget) -> StoredVideoInfo | Failure:
        location = publish.location
        store = self.outputs.get(location) or self.outputs.setdefault(location, location.open())
        started = time.perf_counter()
        try:
            stored = publish_video(
                store,
                publish.video_id,
                frames,
                publish.settings,
                self.renderer.pipe.video,
                fence=self.gate.fence(publish.video_id, lease_fence(location, store)),
                absent=publish.absent,
            )
            return StoredVideoInfo(
                stored.uri,
                stored.size,
                time.perf_counter() - started,
                video_format=video_format(publish.settings, self.renderer.pipe.video),
                digest=stored.digest,
                mtime_ns=stored.mtime_ns,
            )
        except LeaseLost as err:
            return LeaseWasLost(str(err))
        except (StorageError, ValueError) as err:
            return StoreFailed(str(err))
        finally:
            self.gate.done(publish.video_id)

    def holds(self) -> dict:
        """Which components this rank loaded: only rank 0 needs the text encoder and the VAE."""
        pipe = self.renderer.pipe
        return {"text_encoder": bool(pipe.holds_text_encoder), "vae": bool(pipe.holds_vae)}

    def pid(self) -> int:
        return os.getpid()

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()


GangMember = ray.remote(**MEMBER_OPTIONS)(RankActor)


@dataclass(frozen=True)
class GangConfig:
    sp: int = 1
    settings: RenderSettings = RenderSettings()  # what every rank loads and renders with
    gpus_per_rank: float = 0.0
    cpus_per_rank: float = 1.0
    start_timeout_s: float = 300.0
    replace_timeout_s: float = 60.0  # how long a replacement (or grown) gang may wait for room: then it is retired
    call_timeout_s: float = 600.0
    env_vars: tuple[tuple[str, str], ...] = ()  # the driver's storage settings (AWS_*), for every rank's runtime env
    member: object = (
        None  # the actor class each rank runs (a subclass of RankActor under MEMBER_OPTIONS); None: GangMember
    )


class Gang:
    """N actors, one placement group, one process group, one model copy per rank."""

    def __init__(self, config: GangConfig, name: str = "gang", room_timeout_s: float | None = None):
        """``room_timeout_s``: how long to wait for a node with room (default ``config.start_timeout_s``); once
        placed, the ranks get ``config.start_timeout_s`` to start and load their model, whatever the room wait
        was: a replacement or a grown gang loads as much as a first one."""
        self.config, self.name = config, name
        self.started_at = time.monotonic()
        start_timeout_s = config.start_timeout_s
        room_timeout_s = start_timeout_s if room_timeout_s is None else room_timeout_s
        bundle = {"CPU": config.cpus_per_rank}
        if config.gpus_per_rank:
            bundle["GPU"] = config.gpus_per_rank
        self.members = []
        self.placement_group = placement_group([bundle] * config.sp, strategy="STRICT_PACK", name=name)
        if not self._wait_for_room(bundle, room_timeout_s):
            self.kill()
            raise GangFailure(
                f"{name}: no node could hold {config.sp} bundle(s) of {bundle} together within {room_timeout_s:.0f} s"
            )
        self.members = [
            (config.member or GangMember)
            .options(
                num_cpus=config.cpus_per_rank,
                num_gpus=config.gpus_per_rank,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    self.placement_group, placement_group_bundle_index=i
                ),
                runtime_env={"env_vars": dict(config.env_vars)} if config.env_vars else None,
            )
            .remote(i, config.sp, config.settings, max(1, int(config.cpus_per_rank)))
            for i in range(config.sp)
        ]
        host, port = self._call([self.members[0].open_store.remote()], start_timeout_s)[0]
        self.description = self._call([m.join.remote(host, port) for m in self.members], start_timeout_s)[0]
        self.model_defaults = self._call([self.members[0].model_defaults.remote()], start_timeout_s)[0]
        self.ready_at = time.monotonic()
        log.info("%s ready in %.1f s: %s", name, self.ready_at - self.started_at, self.description)

    def _wait_for_room(self, bundle: dict, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for the placement group, saying so every ``ROOM_LOG_INTERVAL_S``: on an
        autoscaling cluster the pending group is what makes the autoscaler add a node, which takes minutes."""
        ready = self.placement_group.ready()
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            done, _ = ray.wait([ready], timeout=max(0.0, min(ROOM_LOG_INTERVAL_S, left)))
            if done:
                ray.get(done[0])
                return True
            if left <= ROOM_LOG_INTERVAL_S:
                return False
            log.info(
                "%s: waiting for a node with room for %d bundle(s) of %s (%.0f s of %.0f s)",
                self.name,
                self.config.sp,
                bundle,
                time.monotonic() - self.started_at,
                timeout_s,
            )

    def _call(self, refs, timeout_s: float) -> list:
        ready, pending = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        if pending:
            self.kill()
            raise GangFailure(
                f"{self.name}: {len(pending)} of {len(refs)} ranks did not answer within {timeout_s:.0f} s"
            )
        try:
            return ray.get(refs)
        except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as err:
            self.kill()
            raise GangFailure(f"{self.name}: a rank failed: {err}") from err

    def render(
        self,
        row: RowInputs,
        publish: PublishTarget | None = None,
        defer: bool = False,
        embeddings: Conditioning | None = None,
        timeout_s: float | None = None,
    ) -> VideoResult:
        """Every rank renders its shard; returns rank 0's result (frames or the stored URI, or with ``defer`` a
        ticket for ``finish``; settings, cache stats).  ``embeddings``: the text encoded ahead (``encode``).
        ``timeout_s``: the video's loop limit, the same number on every rank (pipelines.deadline); the call
        itself waits that long plus a collective's timeout and the call limit, so the ranks' clean row error
        comes first and a hung rank is still found."""
        if not self.members:
            raise GangFailure(f"{self.name} was killed")
        refs = [
            m.render.remote(row, publish, defer, embeddings if i == 0 else None, timeout_s)
            for i, m in enumerate(self.members)
        ]
        wait_s = self.config.call_timeout_s + (
            timeout_s + self.config.settings.collective_timeout_s if timeout_s else 0.0
        )
        return checked(self._call(refs, wait_s)[0])

    def encode(self, row: RowInputs):
        """Start encoding a video's row on rank 0, beside whatever the gang is denoising; an ObjectRef of the
        conditioning (or None), or None when the gang is gone.  Whichever gang renders the video may use it."""
        members = self.members
        return members[0].encode_text.remote(row) if members else None

    def finish(self, ticket: str) -> StoredVideoInfo:
        """Wait for rank 0 to store a deferred video.  Other calls may run on the gang meanwhile."""
        members = self.members
        if not members:
            raise GangFailure(f"{self.name} was killed before it stored the video")
        ref = members[0].publish_video.remote(ticket)
        ready, _ = ray.wait([ref], timeout=self.config.call_timeout_s)
        if not ready:
            raise GangFailure(f"{self.name}: rank 0 did not store the video within {self.config.call_timeout_s:.0f} s")
        try:
            return checked(ray.get(ref))
        except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as err:
            raise GangFailure(f"{self.name}: rank 0 failed while storing the video: {err}") from err

    def stop_publishing(self, timeout_s: float):
        """Close rank 0's publish gate (``RankActor.stop_publishing``): an ObjectRef of (ids publishing, whether
        they all landed within ``timeout_s``), or None when the gang is gone (it stores nothing more)."""
        members = self.members
        return members[0].stop_publishing.remote(timeout_s) if members else None

    def pids(self) -> list[int]:
        return self._call([m.pid.remote() for m in self.members], 30)

    def kill(self) -> None:
        """Kill every rank and remove the placement group (also one still pending: none outlives the job)."""
        for m in self.members:
            ray.kill(m, no_restart=True)
        self.members = []
        try:
            remove_placement_group(self.placement_group)
        except Exception as err:  # noqa: BLE001 - Ray itself is going away; nothing is left to remove
            log.debug("%s: placement group not removed: %s", self.name, err)


class NoGangsLeft(NoRenderersLeft):
    """Every gang failed and none could be started in its place (the cluster lost its nodes): the job stops; its
    remaining rows are left for a rerun rather than failed."""


class GangPool:
    """Gangs side by side (data parallel across gangs).  A video borrows whichever gang is free.  A gang that
    fails is killed whole and replaced where the cluster has room (waiting up to ``replace_timeout_s``), else
    retired, and its video is rendered again from the start on the next free gang: a lost node's videos go back
    to the queue, and the job finishes on the gangs it still has.  ``grow()`` adds gangs (nodes that joined)."""

    def __init__(self, config: GangConfig, gangs: int = 1, max_attempts: int = 3):
        """``max_attempts``: renders of one video before it fails for good (1 + the run's retries)."""
        self.config, self.max_attempts = config, max_attempts
        self.replaced = self.retired = 0
        self.videos_by_gang: dict[str, int] = {}
        self._cond = threading.Condition()
        self._starting = 0  # gangs being started (replacements, growth)
        self._closed = False
        self._stopping = False  # the run is stopping: no render starts and no gang joins
        self._names = itertools.count()
        self._encoders = itertools.count()  # round robin of the gangs that encode text ahead
        self.gangs: list[Gang] = []
        self._free: list[Gang] = []
        self._waiters: list[Waiter] = []  # videos waiting for a gang, oldest first
        self._last_key: dict[int, tuple] = {}  # id(gang) -> the warm key of its last video (warm_gangs.py)
        self.warm_hits = 0  # videos given a gang whose last video had their shape and LoRA
        try:
            self._start_together(gangs)
        except BaseException:
            self.shutdown()
            raise
        if not self.gangs:
            raise NoGangsLeft(
                f"no gang could start: no node had room for {config.sp} rank(s) within "
                f"{config.start_timeout_s:.0f} s; nothing was rendered, and a rerun starts afresh"
            )

    def _start_together(self, gangs: int) -> None:
        """Start the first gangs at once (each loads its model copy in parallel); go on with those that started
        when the cluster holds fewer than asked for.  A gang that finishes starting after an interrupt is killed
        (``_add`` on a closed pool)."""
        pool = ThreadPoolExecutor(max_workers=max(1, gangs), thread_name_prefix="ditfarm-gang-start")
        futures = [pool.submit(Gang, self.config, self._name()) for _ in range(gangs)]
        failures = []
        try:
            for future in futures:
                try:
                    self._add(future.result())
                except GangFailure as err:  # the cluster holds fewer than asked for (now): go on with those
                    failures.append(err)
        except BaseException:
            with self._cond:
                self._closed = True
            for future in futures:
                future.add_done_callback(lambda f: not f.cancelled() and f.exception() is None and f.result().kill())
            raise
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
        if failures and self.gangs:
            log.warning("%s; starting with %d gang(s)", failures[0], len(self.gangs))

    def _name(self) -> str:
        return f"ditfarm-gang-{next(self._names)}-{uuid.uuid4().hex[:6]}"

    def _add(self, gang: Gang, was_starting: bool = False, replacement: bool = False) -> None:
        """Put a started gang to work (in one step with ending its 'starting' count, so that a borrower never
        sees neither)."""
        with self._cond:
            self._starting -= was_starting
            self.replaced += replacement
            if self._closed or self._stopping:
                gang.kill()
            else:
                self.gangs.append(gang)
                self._free.append(gang)
            self._cond.notify_all()

    def _start_failed(self, retire: bool) -> None:
        with self._cond:
            self._starting -= 1
            self.retired += retire
            self._cond.notify_all()

    @property
    def alive(self) -> int:
        return len(self.gangs)

    @property
    def capacity(self) -> int:
        """Videos that can render at once: the live gangs and those being started."""
        with self._cond:
            return len(self.gangs) + self._starting

    def borrow(self, key: tuple | None = None) -> Gang:
        """A free gang for a video whose warm key is ``key`` (``warm_gangs.warm_key``): preferably one whose last
        video had the same, never one left idle while this video waits."""
        with self._cond:
            waiter = Waiter(key)
            self._waiters.append(waiter)
            try:
                while waiter.gang is None:
                    if self._stopping:
                        raise LeaseLost("the run is stopping: this video is not rendered (a rerun renders it)")
                    if self._closed:
                        raise GangFailure("the gang pool was shut down")
                    if not self.gangs and not self._starting:
                        raise NoGangsLeft(
                            f"no gang is left ({self.retired} retired: the cluster has no room for one of "
                            f"{self.config.sp} rank(s)); the rows not rendered yet are left for a rerun"
                        )
                    self._assign()
                    if waiter.gang is None:
                        self._cond.wait(timeout=5)
            finally:
                self._waiters.remove(waiter)
            return waiter.gang

    def _assign(self) -> None:
        """Hand the free gangs to waiting videos (warm_gangs.assign), under the lock.  Only a gang handed out
        wakes the waiters: a wake-up that handed out nothing, passed on from waiter to waiter, would keep them
        all spinning (a core of the driver's) while every gang is busy."""
        warm = {id(g): self._last_key.get(id(g)) for g in self._free}
        pairs = assign(self._free, self._waiters, self._last_key)
        for waiter, gang in pairs:
            self.warm_hits += waiter.key is not None and warm.get(id(gang)) == waiter.key
        if pairs:
            self._cond.notify_all()

    def give_back(self, gang: Gang) -> None:
        with self._cond:
            if gang in self.gangs:
                self._free.append(gang)
                self._assign()

    def render(
        self,
        row: RowInputs,
        publish: PublishTarget | None = None,
        overlap: bool = False,
        video_timeout_s: float | None = None,
    ) -> VideoResult:
        """Render one video on whichever gang is free.  With ``overlap`` (and ``publish``) the gang is given back
        as soon as its loop ends, and this call waits for rank 0 to store the video while the gang already
        denoises another one; the video's text is encoded ahead, on some gang's rank 0 beside its loop, while
        this call waits for a free gang."""
        last = None
        failed = lost = 0  # renders whose gang failed under them; finished loops lost with their gang
        # "where memory allows": an offloaded text encoder would visit the accelerator beside another loop
        encode_ahead = overlap and publish is not None and not self.config.settings.offload_text_encoder
        ahead = self._encode_ahead(row) if encode_ahead else None
        while failed < self.max_attempts and lost < self.max_attempts:
            gang = self.borrow(warm_key(row))
            encoded, ahead = self._embeddings(ahead), None
            timeout_s = video_timeout_s or default_timeout_s(gang.model_defaults, row.sampler)
            try:
                result = gang.render(
                    row,
                    publish,
                    defer=overlap,
                    embeddings=encoded.embeddings if encoded else None,
                    timeout_s=timeout_s,
                )
            except GangFailure as err:
                last, failed = err, failed + 1
                more = failed < self.max_attempts
                log.warning("%s; replacing the gang%s", err, " and rendering the video again" if more else "")
                self.replace(gang)
                continue
            except BaseException:
                self.give_back(gang)  # a bad row or a storage error: the gang is fine
                raise
            self.give_back(gang)
            if result.ticket is not None:
                try:
                    result.stored, result.ticket = gang.finish(result.ticket), None
                except GangFailure as err:  # whoever holds the gang next finds it dead and replaces it
                    # The loop had finished: the gang died under the next video (a poison row, an OOM there),
                    # so this video's attempts do not count it, or a bad neighbour could fail a good row.
                    last, lost = err, lost + 1
                    log.warning("%s; its loop had finished: rendering the video again", err)
                    continue
            stored = result.stored
            if result.rank.phases is not None:
                measured = {
                    "text_seconds": encoded.seconds if encoded else None,
                    "decode_seconds": stored.decode_seconds if stored else None,
                    "store_seconds": stored.store_seconds if stored else None,
                }
                result.rank.phases = dataclasses.replace(
                    result.rank.phases, **{k: round(v, 4) for k, v in measured.items() if v is not None}
                )
            with self._cond:
                self.videos_by_gang[gang.name] = self.videos_by_gang.get(gang.name, 0) + 1
            result.attempts = failed + 1
            return result
        raise GangFailure(f"video failed on {failed + lost} gang(s) in a row: {last}", attempts=failed + lost)

    def _encode_ahead(self, row: RowInputs):
        """Ask the next gang in turn to encode the text now (its rank 0's publishing thread, beside its loop)."""
        with self._cond:
            if not self.gangs:
                return None
            gang = self.gangs[next(self._encoders) % len(self.gangs)]
        return gang.encode(row)

    def _embeddings(self, ahead):
        """The embeddings encoded ahead, or None (none asked for, bad row, or their gang died): the render then
        encodes the text itself."""
        if ahead is None:
            return None
        try:
            return ray.get(ahead, timeout=self.config.call_timeout_s)
        except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError) as err:
            log.info("the text encoded ahead is lost (%s); the render encodes it", err)
            return None

    def replace(self, dead: Gang) -> None:
        """Take a failed gang out and start one in its place, or retire the slot when there is no room."""
        dead.kill()
        with self._cond:
            if dead in self.gangs:
                self.gangs.remove(dead)
            if dead in self._free:
                self._free.remove(dead)
            self._starting += 1
        try:
            gang = Gang(self.config, self._name(), room_timeout_s=self.config.replace_timeout_s)
        except GangFailure as err:
            log.warning("%s: no room for a replacement gang (%s); going on with %d gang(s)", dead.name, err, self.alive)
            self._start_failed(retire=True)
            return
        self._add(gang, was_starting=True, replacement=True)

    def grow(self, gangs: int) -> int:
        """Start up to ``gangs`` more gangs (one at a time, each waiting for room up to ``replace_timeout_s``);
        returns how many started."""
        started = 0
        for _ in range(gangs):
            with self._cond:
                if self._closed:
                    break
                self._starting += 1
            try:
                gang = Gang(self.config, self._name(), room_timeout_s=self.config.replace_timeout_s)
            except GangFailure as err:
                log.info("no room for another gang yet: %s", err)
                self._start_failed(retire=False)
                break
            self._add(gang, was_starting=True)
            started += 1
        return started

    def stop_publishing(self, timeout_s: float) -> tuple[set[str], bool]:
        """A stopping run's last word to its gangs: no render starts and no replacement gang joins any more, every
        rank 0 refuses to publish, and the videos already past their fence get ``timeout_s`` to land, so the
        driver records their rows before it gives the lease back: (the ids that were publishing, whether they
        all landed).  A gang that does not answer counts as not landed."""
        with self._cond:
            self._stopping = True
            gangs = list(self.gangs)
            self._cond.notify_all()
        refs = [ref for ref in (g.stop_publishing(timeout_s) for g in gangs) if ref is not None]
        if not refs:
            return set(), True
        ready, pending = ray.wait(refs, num_returns=len(refs), timeout=timeout_s + STOP_ANSWER_S)
        publishing, landed = set(), not pending
        for ref in ready:
            try:
                ids, all_landed = ray.get(ref)
            except ray.exceptions.RayError:  # a gang that died stores nothing more
                continue
            publishing |= ids
            landed = landed and all_landed
        return publishing, landed

    def shutdown(self) -> None:
        with self._cond:
            self._closed = True
            gangs, self.gangs, self._free = self.gangs, [], []
            self._cond.notify_all()
        for g in gangs:
            g.kill()


def wait_until(predicate, timeout_s: float, interval_s: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return False
