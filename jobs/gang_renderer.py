"""The batch driver's renderer made of Ray gangs: G gangs of N sequence-parallel ranks, G videos in flight.

``jobs.driver`` asks a renderer for one video at a time from up to ``capacity`` threads; each call borrows a free
gang, renders on it and gives it back.  ``GangPool`` replaces a gang that fails (or retires it when the cluster has
no room) and renders the video again on the next free gang.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading

import ray
import torch
from ray.autoscaler.v2.utils import is_autoscaler_v2
from ray.experimental import internal_kv

from ..cluster.gang import GangConfig, GangPool
from ..cluster.messages import PublishTarget
from ..cluster.warm_gangs import WAITING_PER_GANG
from ..pipelines.threads import usable_cpus
from ..storage.stores import CREDENTIAL_VARIABLES, OutputLocation, shareable_storage_env
from ..types import RenderedVideo, RenderSettings
from .manifest import RenderTask, row_inputs
from .stopping import reclaim_signals

log = logging.getLogger(__name__)


def gang_config(settings: RenderSettings) -> GangConfig:
    """One rank per GPU on GPU devices, one CPU each otherwise."""
    on_gpu = settings.device.startswith("cuda")
    return GangConfig(
        sp=settings.sp,
        settings=settings,
        gpus_per_rank=1.0 if on_gpu else 0.0,
        cpus_per_rank=float(settings.threads or 1),  # a rank's torch threads are the CPUs Ray gives it
        start_timeout_s=settings.start_timeout_s,
        env_vars=tuple(sorted(worker_env().items())),
    )


def auto_gang_count(nodes: list[dict], config: GangConfig, driver_node_id: str | None = None) -> int:
    """How many gangs the cluster can hold now: a gang packs onto one node (STRICT_PACK), so each alive node holds
    floor(GPUs / sp) gangs on GPU runs, floor(CPUs / sp) on CPU runs, with one CPU of the driver's own node left
    to the driver.  At least one, so a job on a busy cluster waits for room instead of refusing to start."""
    total = 0
    for node in nodes:
        if not node.get("Alive", node.get("alive", False)):
            continue
        resources = node.get("Resources", {})
        if config.gpus_per_rank:
            per_node = int(resources.get("GPU", 0) // (config.gpus_per_rank * config.sp))
        else:
            cpus = resources.get("CPU", 0) - (1 if node.get("NodeID") == driver_node_id else 0)
            per_node = int(max(0, cpus) // (config.cpus_per_rank * config.sp))
        total += per_node
    return max(1, total)


def largest_node(nodes: list[dict], config: GangConfig) -> tuple[int, str]:
    """(ranks of this gang's shape the largest alive node could hold if it were idle, that node's description)."""
    best = (0, "no node is alive")
    for node in nodes:
        if not node.get("Alive", node.get("alive", False)):
            continue
        resources = node.get("Resources", {})
        cpus, gpus = resources.get("CPU", 0), resources.get("GPU", 0)
        holds = int(cpus // config.cpus_per_rank) if config.cpus_per_rank else config.sp
        if config.gpus_per_rank:
            holds = min(holds, int(gpus // config.gpus_per_rank))
        described = f"{node.get('NodeManagerAddress', '?')} with {cpus:g} CPU(s) and {gpus:g} GPU(s)"
        if holds > best[0] or best[1] == "no node is alive":
            best = (holds, described)
    return best


def cluster_can_grow() -> bool:
    """Whether an autoscaler that can add nodes watches this cluster.  Every head's monitor publishes a status in
    the GCS's key-value store.  Without an autoscaling config (``ray start``, ``ray.init``) it runs Ray's read-only
    provider, whose node types are the nodes themselves (``node_<id>``, ``format_readonly_node_type``); with one
    (``ray up``, KubeRay) the types are the config's.  Autoscaler v2 marks itself in the store."""
    try:
        status = internal_kv._internal_kv_get("__autoscaling_status")  # looked up at call time: tests replace it
        report = json.loads(status).get("autoscaler_report") if status is not None else None
        if report is not None:
            mapping = report.get("node_type_mapping") or {}
            return not mapping or any(kind != f"node_{node}" for node, kind in mapping.items())

        return bool(is_autoscaler_v2(fetch_from_server=True))
    except Exception:  # noqa: BLE001 - an older or newer Ray: assume it may grow, and wait as before
        return True


def check_room(config: GangConfig) -> None:
    """Say at once when no node could hold one gang even idle: a cluster without an autoscaler never will
    (ValueError: exit 2, naming the largest node); with one, the run waits for the node it adds, and says so."""
    holds, largest = largest_node(ray.nodes(), config)
    if holds >= config.sp:
        return
    shape = f"{config.sp} rank(s) of {config.cpus_per_rank:g} CPU" + (
        f" and {config.gpus_per_rank:g} GPU" if config.gpus_per_rank else ""
    )
    message = f"no node of this Ray cluster can hold a gang of {shape}: the largest, {largest}, holds {holds}"
    if not cluster_can_grow():
        remedy = f"render with --sp {holds} or fewer, or add larger nodes" if holds else "add nodes with room for it"
        raise ValueError(f"{message}; the cluster has no autoscaler, so none ever will: {remedy}")
    log.warning(
        "%s; waiting up to %.0f s (--start-timeout) for the node an autoscaler adds", message, config.start_timeout_s
    )


def check_room_ahead(settings: RenderSettings) -> None:
    """The dry run's ``check_room``: on the cluster the run would join (RAY_ADDRESS, or a `ray start` cluster on
    this node), or else on the local cluster it would start here (this machine's CPUs and GPUs)."""
    config = gang_config(settings)
    if ray.is_initialized():
        check_room(config)
        return
    try:
        ray.init(address=os.environ.get("RAY_ADDRESS", "auto"), log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError):  # no cluster to join: the run would start one here
        gpus = 0
        if config.gpus_per_rank:
            gpus = torch.cuda.device_count()
        node = {
            "Alive": True,
            "NodeManagerAddress": "this machine (a local Ray cluster)",
            "Resources": {"CPU": float(usable_cpus()), "GPU": float(gpus)},
        }
        holds, largest = largest_node([node], config)
        if holds < config.sp:
            raise ValueError(
                f"no node of the local Ray cluster this run would start can hold a gang of "
                f"{config.sp} rank(s): {largest} holds {holds}; render with --sp {max(1, holds)} or "
                "fewer, or join a larger cluster (RAY_ADDRESS)"
            ) from None
        return
    try:
        check_room(config)
    finally:
        ray.shutdown()


def worker_env() -> dict[str, str]:
    """What every rank must see as the driver does: which store (endpoint, region, profile, credentials file;
    never a key: Ray logs runtime envs) and ditfarm's own settings (DITFARM_*: the model cache folder, and the
    fault hook that only tests set).  Ranks find their credentials where their node keeps them."""
    return {**shareable_storage_env(), **{k: v for k, v in os.environ.items() if k.startswith("DITFARM_")}}


def warn_of_credentials_in_job_env() -> None:
    """A job submitted with keys in its runtime env (`--runtime-env-json '{"env_vars": {"AWS_SECRET_...`) has
    already shown them in `ray job list` and Ray's logs; say so, so the next submission leaves them out."""
    try:
        env_vars = (ray.get_runtime_context().runtime_env or {}).get("env_vars") or {}
    except Exception:  # noqa: BLE001 - only a warning depends on it
        return
    leaked = sorted(k for k in env_vars if k in CREDENTIAL_VARIABLES)
    if leaked:
        log.warning(
            "this job's Ray runtime environment carries %s: Ray shows its variables in `ray job list` and "
            "its logs. Give the nodes their credentials instead (their environment, an instance role, or "
            "AWS_SHARED_CREDENTIALS_FILE naming an owner-only file; README: Object storage and "
            "credentials), and rotate this key.",
            ", ".join(leaked),
        )


class GangRenderer:
    """Starts (or joins) Ray, then ``settings.gangs`` gangs; ``close()`` stops them.

    With ``gangs="auto"`` a watcher thread looks at the cluster every ``grow_interval_s`` and starts the gangs
    that nodes which joined since can hold (an autoscaling cluster), so the job uses what it is given."""

    def __init__(
        self,
        settings: RenderSettings,
        replace_timeout_s: float | None = None,
        grow_interval_s: float = 30.0,
        member=None,
    ):
        if not ray.is_initialized():  # RAY_ADDRESS or a `ray start` cluster on this node, else a local one
            ray.init(log_to_driver=False)
            reclaim_signals()  # ray.init replaced the run's SIGTERM handler with a bare exit
        warn_of_credentials_in_job_env()
        config = gang_config(settings)
        if replace_timeout_s is not None:
            config = dataclasses.replace(config, replace_timeout_s=replace_timeout_s)
        if member is not None:  # another actor class for the ranks (cluster.gang.RankActor's subclass)
            config = dataclasses.replace(config, member=member)
        check_room(config)
        self.config, self.auto, self.overlap = config, settings.gangs == "auto", settings.overlap
        self.driver_node = ray.get_runtime_context().get_node_id()
        gangs = self.cluster_holds() if self.auto else settings.gangs
        self.pool = GangPool(config, gangs=gangs, max_attempts=settings.retries + 1)
        self._stop = threading.Event()
        self._watcher = None
        if self.auto:
            self._watcher = threading.Thread(
                target=self._watch, args=(grow_interval_s,), name="ditfarm-grow", daemon=True
            )
            self._watcher.start()

    def cluster_holds(self) -> int:
        return auto_gang_count(ray.nodes(), self.config, self.driver_node)

    def _watch(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            try:
                missing = self.cluster_holds() - self.pool.capacity
                if missing > 0 and self.pool.grow(missing):
                    log.info("the cluster grew: %d gang(s) now", self.pool.alive)
            except Exception as err:  # noqa: BLE001 - growing is an optimisation; the job goes on as it is
                log.warning("could not start more gangs: %s", err)
            except SystemExit:  # Ray shutting down under a gang being started: the job has ended
                if self._stop.is_set():
                    return
                raise

    @property
    def capacity(self) -> int:
        """How many videos the driver should keep in flight now (the pool grows and shrinks): per gang, one
        denoising, one being stored with overlap, and ``WAITING_PER_GANG`` waiting, so that a gang coming free
        has a choice of shapes and LoRAs (``cluster.warm_gangs``)."""
        return self.pool.capacity * ((2 if self.overlap else 1) + WAITING_PER_GANG)

    @property
    def videos_per_gang(self) -> list[int]:
        return list(self.pool.videos_by_gang.values())

    def render(self, task: RenderTask, settings: RenderSettings, out: OutputLocation) -> RenderedVideo:
        result = self.pool.render(
            row_inputs(task, settings),
            publish=PublishTarget(out, task.id, settings, absent=not task.stored_before),
            overlap=settings.overlap,
            video_timeout_s=settings.video_timeout_s,
        )
        return RenderedVideo.of(
            result.stored.uri,
            result.stored.video_bytes,
            task.seed,
            result.rank.settings,
            str(settings.model),
            result.rank.skipped_fraction,
            result.rank.phases,
            result.attempts,
            video_format=result.stored.video_format,
            digest=result.stored.digest,
            mtime_ns=result.stored.mtime_ns,
            knob=tuple(result.rank.knob),
        )

    def stop_publishing(self, timeout_s: float) -> tuple[set[str], bool]:
        """Refuse every later publish on every gang; wait up to ``timeout_s`` for videos already publishing (their
        rows follow): (the ids that were publishing, whether they all landed)."""
        return self.pool.stop_publishing(timeout_s)

    def gang_health(self) -> tuple[int, int]:
        """(gangs alive, gangs replaced so far), for the progress line and the metrics."""
        return self.pool.alive, self.pool.replaced

    def close(self) -> None:
        self._stop.set()
        self.pool.shutdown()
