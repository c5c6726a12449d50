"""The batch driver's renderer made of Ray gangs: G gangs of N sequence-parallel ranks, G videos in flight.

``jobs.driver`` asks a renderer for one video at a time from up to ``capacity`` threads; each call borrows a free
gang, renders on it (``GangPool`` replaces the gang and starts the video again if it fails) and gives it back.
"""

from __future__ import annotations

import os
import queue

from ..jobs.driver import sampler_overrides
from ..jobs.manifest import RenderTask
from ..jobs.storage import OutputLocation, storage_env
from ..jobs.types import RenderedVideo, RenderSettings
from .gang import GangConfig, GangPool
from .gang_rank import RankConfig


def gang_config(settings: RenderSettings) -> GangConfig:
    """One rank per GPU on GPU devices, one CPU each otherwise."""
    on_gpu = settings.device.startswith("cuda")
    rank = RankConfig(model=settings.model, device=settings.device, cache=settings.cache,
                      cache_knob=settings.cache_knob, profile=settings.profile, timeout_s=settings.collective_timeout_s)
    return GangConfig(sp=settings.sp, rank=rank, gpus_per_rank=1.0 if on_gpu else 0.0, cpus_per_rank=1.0,
                      env_vars=tuple(sorted(worker_env().items())))


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


def worker_env() -> dict[str, str]:
    """What every rank must see as the driver does: storage settings (AWS_*) and ditfarm's own (DITFARM_*: the
    model cache folder, and the fault hook that only tests set)."""
    return {**storage_env(), **{k: v for k, v in os.environ.items() if k.startswith("DITFARM_")}}


class GangRenderer:
    """Starts (or joins) Ray, then ``settings.gangs`` gangs; ``close()`` stops them."""

    def __init__(self, settings: RenderSettings):
        import ray

        if not ray.is_initialized():  # RAY_ADDRESS or a `ray start` cluster on this node, else a local one
            ray.init(log_to_driver=False)
        config = gang_config(settings)
        gangs = settings.gangs if settings.gangs != "auto" else auto_gang_count(ray.nodes(), config,
                                                                                  ray.get_runtime_context().get_node_id())
        self.pool = GangPool(config, gangs=gangs, max_attempts=settings.retries + 1)
        self.capacity = gangs
        self.videos_per_gang = [0] * gangs
        self._free: queue.Queue[int] = queue.Queue()
        for i in range(gangs):
            self._free.put(i)

    def render(self, task: RenderTask, settings: RenderSettings, out: OutputLocation) -> RenderedVideo:
        gang = self._free.get()
        try:
            result = self.pool.render(task.prompt, task.seed, sampler_overrides(task, settings), task.negative_prompt,
                                      gang=gang, publish=(out, task.id, settings))
            self.videos_per_gang[gang] += 1
        finally:
            self._free.put(gang)
        s = result["settings"]
        return RenderedVideo(result["uri"], task.seed, s["num_frames"], s["height"], s["width"], s["steps"],
                             str(settings.model), result["skipped_fraction"], result["attempts"])

    def gang_health(self) -> tuple[int, int]:
        """(gangs alive, gangs replaced so far), for the progress line."""
        return sum(1 for g in self.pool.gangs if g.members), self.pool.replaced

    def close(self) -> None:
        self.pool.shutdown()
