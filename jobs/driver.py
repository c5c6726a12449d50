"""The batch driver: manifest rows in, mp4s and results rows out, resumable.

The driver owns bookkeeping only: which rows to skip, where files go, what each results row says.  Rendering goes
through a renderer object (``render(task, settings) -> RenderedVideo``, called from up to ``capacity`` threads
at once): ``LocalRenderer`` renders in this process; ``ditfarm.cluster.gang_renderer.GangRenderer`` renders on
Ray gangs of sequence-parallel ranks, one video per gang at a time.  Results are written by this thread only.
"""

from __future__ import annotations

import hashlib
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Protocol

import numpy as np

from ..cache import last_video_stats
from ..cache.presets import resolve_knob
from .manifest import Manifest, RenderTask, RowProblem, seed_from_id
from .results import STATUS_FAILED, STATUS_OK, STATUS_SKIPPED, ResultsWriter, completed_ids, results_schema


@dataclass(frozen=True)
class RenderSettings:
    """Run-wide choices; a manifest row's own values win over these, and these over the model's defaults."""

    model: str = "tiny"
    num_frames: int | None = None
    height: int | None = None
    width: int | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    upscale: int = 8
    fps: int = 8
    device: str = "cpu"
    flush_every: int = 32
    cache: str = "none"  # block-cache policy (ditfarm.cache.presets.POLICIES)
    cache_knob: float | None = None  # the policy's speed/fidelity knob (None: its default)
    profile: str | None = None  # cache profile JSON (None: the model's shipped profile, if any)
    sp: int = 1  # sequence-parallel ranks per video (a gang)
    gangs: int = 0  # Ray gangs rendering side by side; 0 renders in this process without Ray (sp must be 1)
    collective_timeout_s: float = 300.0  # every collective of a gang gives up after this long

    def validate(self) -> None:
        if not isinstance(self.sp, int) or self.sp < 1:
            raise ValueError(f"sp must be a positive integer, got {self.sp!r}")
        if not isinstance(self.gangs, int) or self.gangs < 0:
            raise ValueError(f"gangs must be a non-negative integer, got {self.gangs!r}")
        if self.sp > 1 and self.gangs == 0:
            raise ValueError("sequence parallelism (sp > 1) runs on Ray gangs: give gangs >= 1")


@dataclass
class RenderedVideo:
    frames: np.ndarray
    seed: int
    num_frames: int
    height: int
    width: int
    steps: int
    model: str
    skipped_fraction: float | None = None


@dataclass
class RunSummary:
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)
    out_dir: Path | None = None

    @property
    def total(self) -> int:
        return self.ok + self.failed + self.skipped


class Renderer(Protocol):
    capacity: int  # how many render() calls may run at once

    def render(self, task: RenderTask, settings: RenderSettings) -> RenderedVideo: ...


def sampler_overrides(task: RenderTask, settings: RenderSettings) -> dict:
    """The row's own sampler values where it has them, else the run's (None: the model's default)."""
    names = ("num_frames", "height", "width", "steps", "guidance_scale")
    return {n: getattr(task, n) if getattr(task, n) is not None else getattr(settings, n) for n in names}


def make_renderer(settings: RenderSettings) -> Renderer:
    if settings.gangs == 0:
        return LocalRenderer(settings)
    from ..cluster.gang_renderer import GangRenderer

    return GangRenderer(settings)


class LocalRenderer:
    """Renders in this process with one pipeline loaded once."""

    capacity = 1

    def __init__(self, settings: RenderSettings):
        from ..cache import enable
        from ..cache.presets import build_config
        from ..pipelines.loading import load_pipeline

        self.pipe = load_pipeline(settings.model, device=settings.device)
        profile = settings.profile or self.pipe.default_cache_profile()
        self.cache = enable(self.pipe, build_config(settings.cache, settings.cache_knob, profile))

    def render(self, task: RenderTask, settings: RenderSettings) -> RenderedVideo:
        self.pipe.check_prompt(task.prompt)
        if task.negative_prompt:
            self.pipe.check_prompt(task.negative_prompt)
        s = self.pipe.settings(**sampler_overrides(task, settings))
        frames = self.pipe.generate(
            task.prompt,
            seed=task.seed,
            negative_prompt=task.negative_prompt,
            num_frames=s.num_frames,
            height=s.height,
            width=s.width,
            steps=s.steps,
            guidance_scale=s.guidance_scale,
        )
        skipped = last_video_stats(self.pipe).skipped_fraction if self.cache is not None else 0.0
        return RenderedVideo(frames, task.seed, s.num_frames, s.height, s.width, s.steps, str(settings.model), skipped)

    def close(self) -> None:
        pass


def prompt_task(prompt: str, seed: int | None = None, video_id: str | None = None) -> RenderTask:
    """A one-video task for ``ditfarm render --prompt``; the id is derived from the prompt unless given."""
    video_id = video_id or "prompt-" + hashlib.sha256(prompt.encode()).hexdigest()[:12]
    return RenderTask(row=0, id=video_id, prompt=prompt, seed=seed_from_id(video_id) if seed is None else seed)


def _result_row(task: RenderTask | RowProblem, status: str, **values) -> dict:
    row = {"id": task.id, "status": status, "uri": None, "error": None, "seed": getattr(task, "seed", None)}
    row.update(values)
    row.update(task.extra)
    return row


def render_tasks(
    tasks: Iterable[RenderTask | RowProblem],
    out_dir: str | Path,
    settings: RenderSettings = RenderSettings(),
    renderer: Renderer | None = None,
    writer: ResultsWriter | None = None,
    total: int | None = None,
    progress: bool = True,
) -> RunSummary:
    """Render tasks into out_dir/videos, recording every row in out_dir/results; ids already ok are skipped.

    The renderer is created on the first row that needs rendering (a finished run's rerun loads no model) and
    closed at the end if this call created it."""
    from tqdm import tqdm

    settings.validate()
    out_dir = Path(out_dir)
    videos_dir = out_dir / "videos"
    videos_dir.mkdir(parents=True, exist_ok=True)
    done = completed_ids(out_dir / "results")
    writer = writer or ResultsWriter(out_dir / "results", flush_every=settings.flush_every)
    summary = RunSummary(out_dir=out_dir)
    bar = tqdm(total=total, disable=not progress, unit="video", dynamic_ncols=True)
    own_renderer = renderer is None
    in_flight: dict[Future, RenderTask] = {}

    def record(task, status: str, error: str | None = None, **values) -> None:
        writer.add(_result_row(task, status, error=error, **values))
        if status == STATUS_OK:
            summary.ok += 1
        elif status == STATUS_SKIPPED:
            summary.skipped += 1
        else:
            summary.failed += 1
            summary.errors.append(error)
        bar.set_postfix(ok=summary.ok, failed=summary.failed, skipped=summary.skipped, refresh=False)
        bar.update(1)

    def finish_one() -> None:
        """Wait for any render in flight and record it."""
        future = next(iter(wait(in_flight, return_when=FIRST_COMPLETED).done))
        task = in_flight.pop(future)
        try:
            video, path, seconds = future.result()
        except (ValueError, RuntimeError) as err:  # bad prompt or settings, or a gang that failed for good
            record(task, STATUS_FAILED, error=f"row {task.row} (id {task.id!r}): {err}")
            return
        record(task, STATUS_OK, uri=str(path.resolve()), frames=video.num_frames, height=video.height,
               width=video.width, steps=video.steps, model=video.model, seconds=seconds, cache=settings.cache,
               cache_knob=resolve_knob(settings.cache, settings.cache_knob), skipped_fraction=video.skipped_fraction)

    def render_one(task: RenderTask):
        start = time.perf_counter()
        video = renderer.render(task, settings)
        path = write_video(video.frames, videos_dir / f"{task.id}.mp4", settings)
        return video, path, round(time.perf_counter() - start, 3)

    pool = None
    try:
        with writer:
            for task in tasks:
                if isinstance(task, RowProblem):
                    record(task, STATUS_FAILED, error=task.error)
                    continue
                if task.id in done and Path(done[task.id]).exists():
                    record(task, STATUS_SKIPPED, uri=done[task.id])
                    continue
                if renderer is None:
                    renderer = make_renderer(settings)
                if pool is None:
                    capacity = max(1, renderer.capacity)
                    pool = ThreadPoolExecutor(max_workers=capacity, thread_name_prefix="render")
                while len(in_flight) >= capacity:
                    finish_one()
                in_flight[pool.submit(render_one, task)] = task
            while in_flight:
                finish_one()
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        if own_renderer and renderer is not None:
            renderer.close()
        bar.close()
    return summary


def write_video(frames: np.ndarray, path: Path, settings: RenderSettings) -> Path:
    from ..pipelines.video_io import write_mp4

    return write_mp4(frames, path, fps=settings.fps, upscale=settings.upscale)


def render_manifest(
    manifest_path: str | Path,
    out_dir: str | Path,
    settings: RenderSettings = RenderSettings(),
    renderer: Renderer | None = None,
    progress: bool = True,
) -> RunSummary:
    """Validate the manifest's schema (failing before any rendering), then render its rows resumably."""
    manifest = Manifest(manifest_path)
    writer = ResultsWriter(
        Path(out_dir) / "results",
        schema=results_schema(manifest.schema, manifest.extra_columns),
        flush_every=settings.flush_every,
    )
    return render_tasks(manifest, out_dir, settings, renderer, writer, total=manifest.num_rows, progress=progress)
