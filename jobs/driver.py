"""The batch driver: manifest rows in, stored mp4s and results rows out, resumable and idempotent.

The driver owns bookkeeping only: which rows to skip, what each results row says, when a part is flushed.
Rendering goes through a renderer (``render(task, settings, out) -> RenderedVideo``, called from up to
``capacity`` threads at once) that also *stores* the video: ``LocalRenderer`` renders, encodes and uploads in
this process; ``ditfarm.jobs.gang_renderer.GangRenderer`` has rank 0 of a Ray gang do it on its own node.  Only
the URI and the row's values come back, never frames.  A results row is written only after its video is stored,
and by this thread only.

Resume: at the start the output is listed once (``videos/``) and its results read once; ids with an ``ok`` row
whose video exists are skipped (counted, not written).  A run killed anywhere leaves at worst a stored video
without its row, which the rerun renders again into the same key: one ``ok`` row and one object per id.
"""

from __future__ import annotations

import atexit
import dataclasses
import hashlib
import json
import logging
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Protocol

import torch

from ..cache.presets import choose_knob, resolve_knob
from ..pipelines.deadline import default_timeout_s
from ..pipelines.phases import PhaseClock
from ..pipelines.threads import set_threads, usable_cpus
from ..storage.errors import OutputFull, StorageError, redact
from ..storage.lease import DEFAULT_TTL_S, Lease, LeaseLost
from ..storage.stores import OutputLocation, OutputStore, clear_local_temp, open_output
from ..text import cut
from ..types import EXIT_MANIFEST_FAILED, EXIT_OUTPUT_FAILED, RenderedVideo, RenderSettings, RunAborted
from ..worker.model import load_model
from ..worker.publish import PublishGate, lease_fence, publish_video, video_format
from ..worker.video import (
    cache_knob,
    cache_outcome,
    checked_settings,
    decode_video,
    denoise_video,
    encode_text,
    use_row_lora,
)
from .manifest import (
    Manifest,
    ManifestError,
    RenderTask,
    RowProblem,
    row_images,
    row_inputs,
    row_lora,
    sampler_overrides,
    seed_from_id,
)
from .metrics import JobMetrics
from .progress import Progress
from .report_refresher import ReportRefresher
from .results import (
    RESULT_SCHEMA,
    STATUS_DUPLICATE,
    STATUS_FAILED,
    STATUS_OK,
    STATUS_SKIPPED,
    ResultsWriter,
    output_state,
    results_schema,
)
from .row_identity import ChangeTally, compare_row
from .run_checks import check_run, visible_model_checks
from .stopping import Stopped

__all__ = [
    "RenderSettings",
    "RenderedVideo",
    "RunSummary",
    "RenderJob",
    "LocalRenderer",
    "render_manifest",
    "render_tasks",
    "prompt_task",
    "publish_video",
    "sampler_overrides",
]

log = logging.getLogger(__name__)

PUBLISH_GRACE_S = 30.0  # a stopping run waits this long for videos already past their fence to land
RETURN_GRACE_S = 1.0  # and this long for renders whose video landed just before the stop to return
MAX_KEPT_ERRORS = 1000  # the summary keeps this many messages; the results table keeps them all


@dataclass
class RunSummary:
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    duplicates: int = 0  # manifest rows whose id an earlier row has (recorded once per id)
    errors: list[str] = field(default_factory=list)
    out: str | None = None
    skipped_with_other_settings: int = 0  # skipped rows whose stored video another cache setting computed
    other_settings: dict = field(default_factory=dict)  # setting -> (rows, (stored value, this run's value))
    changed: ChangeTally = field(default_factory=ChangeTally)  # ok ids whose manifest row now asks for other content
    kept_changed: bool = False  # those were skipped all the same (resume_by_id), not rendered again

    @property
    def total(self) -> int:
        return self.ok + self.failed + self.skipped + self.duplicates


class Renderer(Protocol):
    capacity: int  # how many render() calls may run at once

    def render(self, task: RenderTask, settings: RenderSettings, out: OutputLocation) -> RenderedVideo: ...


def make_renderer(settings: RenderSettings) -> Renderer:
    if settings.gangs == 0:
        return LocalRenderer(settings)
    from .gang_renderer import GangRenderer  # deferred: ray

    return GangRenderer(settings)


class LocalRenderer:
    """Renders in this process with one pipeline loaded once, and stores each video itself.

    The denoising loop is the only part that needs the model exclusively, so with ``settings.overlap`` two videos
    are in flight: while one's loop runs, the other's fixed costs run beside it (its text is encoded before its
    loop; its frames are decoded, encoded as mp4 and stored after), and the loop never waits on I/O."""

    def __init__(self, settings: RenderSettings):
        threads = set_threads(settings.threads)
        log.info(
            "torch threads: %d (%s; this process may use %d CPU(s))",
            threads,
            "--threads" if settings.threads else "the default",
            usable_cpus(),
        )
        loaded = load_model(settings)
        self.pipe, self.cache = loaded.pipe, loaded.cache
        log.info("%s", loaded.describe(settings))
        self.capacity = 2 if settings.overlap else 1
        # an offloaded text encoder visits the accelerator only in the loop's turn, never beside another loop
        self.encode_in_turn = settings.offload_text_encoder
        self._loop = threading.Lock()  # one denoising loop at a time: the model and its cache state are shared
        self.loop_seconds: list[float] = []  # per video, for benchmarks: the loop alone
        self._stores: dict[OutputLocation, OutputStore] = {}
        self.gate = PublishGate()  # a stopping run lets no video publish after its rows are flushed

    def stop_publishing(self, timeout_s: float) -> tuple[set[str], bool]:
        """Refuse every later publish; wait up to ``timeout_s`` for videos already publishing (their rows follow):
        (the ids that were publishing, whether they all returned)."""
        return self.gate.close(timeout_s)

    def frames(self, task: RenderTask, settings: RenderSettings):
        """(frames, sampler settings, skipped fraction, VideoPhases) of one task."""
        pipe, row = self.pipe, row_inputs(task, settings)
        s = checked_settings(pipe, row)
        clock = PhaseClock(pipe.execution_device)
        with torch_no_grad():
            embeddings = None
            if not self.encode_in_turn:
                embeddings = encode_text(pipe, clock, row, s)
            with self._loop:
                clock.reset_peak()
                use_row_lora(pipe, row)  # the model's adapters are shared: switched only between loops
                if embeddings is None:
                    embeddings = encode_text(pipe, clock, row, s)
                timeout_s = settings.video_timeout_s or default_timeout_s(pipe.defaults, s.__dict__)
                latents = denoise_video(pipe, clock, row, s, embeddings, timeout_s)
                skipped = cache_outcome(pipe).skipped_fraction
                self.loop_seconds.append(clock.seconds["denoise"])
            frames = decode_video(pipe, clock, latents)
        return frames, s, skipped, clock.phases()

    def render(self, task: RenderTask, settings: RenderSettings, out: OutputLocation) -> RenderedVideo:
        frames, s, skipped, phases = self.frames(task, settings)
        store = self._stores.get(out) or self._stores.setdefault(out, out.open())
        started = time.perf_counter()
        try:
            fence = self.gate.fence(task.id, lease_fence(out, store))
            stored = publish_video(
                store, task.id, frames, settings, self.pipe.video, fence=fence, absent=not task.stored_before
            )
            phases = dataclasses.replace(phases, store_seconds=round(time.perf_counter() - started, 4))
            return RenderedVideo.of(
                stored.uri,
                stored.size,
                task.seed,
                s.__dict__,
                str(settings.model),
                skipped,
                phases,
                video_format=video_format(settings, self.pipe.video),
                digest=stored.digest,
                mtime_ns=stored.mtime_ns,
                knob=cache_knob(self.pipe),
            )
        finally:  # publishing until the render returns its video: a stop waits for it, then records its row
            self.gate.done(task.id)

    def close(self) -> None:
        pass


def _until_broken(tasks: Iterable) -> Iterator:
    """The tasks, then the ManifestError that stopped them (as the last item) instead of raising it."""
    try:
        yield from tasks
    except ManifestError as err:
        yield err


def end_run(store: OutputStore, lease) -> None:
    """Give back the space set aside, then the lease (which may need that space to be written)."""
    store.release_reserve()
    lease.release()


def torch_no_grad():
    return torch.no_grad()


def prompt_task(prompt: str, seed: int | None = None, video_id: str | None = None) -> RenderTask:
    """A one-video task for ``ditfarm render --prompt``; the id is derived from the prompt unless given."""
    video_id = video_id or "prompt-" + hashlib.sha256(prompt.encode()).hexdigest()[:12]
    return RenderTask(row=0, id=video_id, prompt=prompt, seed=seed_from_id(video_id) if seed is None else seed)


def request_id(prompt: str, settings: RenderSettings, **row) -> str:
    """A stable id for a prompt given without one: the same prompt with the same settings (model, sampler values,
    cache) gets the same id, so a rerun skips it, and any change of settings renders anew."""
    key = {
        "prompt": prompt,
        "model": settings.model,
        "cache": settings.cache,
        "knob": settings.cache_knob,
        **sampler_overrides(RenderTask(0, "", prompt, 0), settings),
        **{k: v for k, v in row.items() if v is not None},
    }
    if key.get("guidance_scale_2") is None:  # unset: the ids of runs from before the second expert's scale existed
        key.pop("guidance_scale_2", None)
    if settings.lora and not key.get("lora"):  # the run's LoRA is what the video shows (none: ids as before)
        key.update(lora=settings.lora, lora_scale=settings.lora_scale)
    return "p-" + hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _wait_for_renders(timeout_s: float = 900.0) -> None:
    """At interpreter exit, let abandoned renders finish (at most a video each): finalising the interpreter under a
    thread that is inside torch aborts the process.  A stopped CLI run does not get here (it exits at once)."""
    deadline = time.monotonic() + timeout_s
    for thread in threading.enumerate():
        if thread.name.startswith("render-") and thread.is_alive():
            thread.join(max(0.0, deadline - time.monotonic()))


atexit.register(_wait_for_renders)


def start_render(fn, task) -> Future:
    """Run ``fn(task)`` on a daemon thread: a job that is stopped (SIGTERM, Ctrl-C) abandons its videos in flight
    instead of waiting minutes for them, and the process can exit at once."""
    future: Future = Future()

    def run() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(fn(task))
        except BaseException as err:  # handed to the driver thread, which decides
            future.set_exception(err)

    threading.Thread(target=run, name=f"render-{task.id}", daemon=True).start()
    return future


MAX_ID_CHARS = 1024  # a valid id has at most 128; an invalid one is kept this long in its failed row


def _result_row(task: RenderTask | RowProblem, status: str, settings: RenderSettings | None = None, **values) -> dict:
    video_id = task.id if not isinstance(task.id, str) else cut(task.id, MAX_ID_CHARS)  # a bad id may be huge
    row = {
        "id": video_id,
        "status": status,
        "uri": None,
        "error": None,
        "seed": getattr(task, "seed", None),
        "finished_at": datetime.now(timezone.utc),
    }
    if isinstance(task, RenderTask):  # what the video shows: a rerun compares it with the manifest's row
        row["prompt"] = task.prompt if status == STATUS_OK else cut(task.prompt, MAX_ID_CHARS)
        row["negative_prompt"] = (
            task.negative_prompt if status == STATUS_OK else cut(task.negative_prompt, MAX_ID_CHARS)
        )
        row.update(row_images(task, settings))
        row.update(row_lora(task, settings))
    row.update(values)
    if isinstance(row["error"], str):
        row["error"] = cut(row["error"])
    row.update(task.extra)
    return row


class RenderJob:
    """One run over a stream of tasks into one output location.

    Construction does everything that can stop the run before anything renders (settings, access to the output,
    the resume listing) and raises; iterating yields one result row (a dict) per task as videos finish, skipped
    ones included (those are not written).  ``summary`` counts as it goes."""

    def __init__(
        self,
        tasks: Iterable[RenderTask | RowProblem],
        out,
        settings: RenderSettings = RenderSettings(),
        renderer: Renderer | None = None,
        schema=RESULT_SCHEMA,
        total: int | None = None,
        progress: bool = True,
        overwrite: bool = False,
        progress_seconds: float = 30.0,
        force: bool = False,
        lease_ttl_s: float = DEFAULT_TTL_S,
        report_seconds: float | None = 300.0,
        resume_by_id: bool = False,
        repair: bool = False,
    ):
        """``force``: take the output's lease even from a live run; ``lease_ttl_s``: how long this run's lease
        stays valid without a renewal (it renews every quarter of that); ``report_seconds``: how often
        ``OUT/report.html`` is rewritten while the run goes (None: only at the end of a run that finishes);
        ``resume_by_id``: skip every id already ok, even one whose manifest row now asks for other content
        (by default such an id is rendered again: row_identity.py); ``repair``: move results parts that cannot
        be read aside (``damaged-results/``) and go on, instead of stopping (exit 2) with a message naming them."""
        settings.validate()
        resolve_knob(settings.cache, settings.cache_knob)
        # what every row would fail stops the run here, as in the dry run (a given renderer was made, and checked,
        # by its caller)
        self.checks = check_run(settings) if renderer is None else None
        self.model_checks = self.checks.model if self.checks is not None else visible_model_checks(settings)
        # the knob as this process reads the model's card; a renderer reports the one its cache used
        self.knob = choose_knob(
            settings.cache, settings.cache_knob, self.model_checks.cache_settings if self.model_checks else None
        )
        self.resume_by_id = resume_by_id
        self.tasks, self.settings, self.renderer, self.total = tasks, settings, renderer, total
        self.progress, self.overwrite, self.progress_seconds = progress, overwrite, progress_seconds
        self.report_seconds = report_seconds
        self.store = open_output(out)
        self.store.check_writable()
        self.writer = ResultsWriter(
            self.store, schema=schema, flush_every=settings.flush_every, flush_seconds=settings.flush_seconds
        )
        # One run per output: nothing below may run beside another live run (it clears unfinished uploads).
        self.lease = Lease(self.store, self.writer.run_id, ttl_s=lease_ttl_s, force=force).acquire()
        self.lease.start_renewing()
        self._release = weakref.finalize(self, end_run, self.store, self.lease)  # also when never iterated
        try:
            if self.lease.took_over is not None:  # what the paused holder may still write is not counted
                self.store.fence_run(self.lease.took_over.run_id, by=self.writer.run_id)
            self.writer.fence = self.lease.ensure_held
            self.store.clear_unfinished()
            clear_local_temp()  # what killed S3 runs on this node left in the temp dir
            self.store.reserve_space()  # a disk that fills mid-run still takes the last rows and the lease's release
            state = output_state(self.store, unreadable=(unreadable := []) if repair else None)
            for name, reason in unreadable if repair else []:
                moved = self.store.set_aside_part(name)
                log.warning("results part %s could not be read (%s): moved to %s (--repair)", name, reason, moved)
            self.done = set() if overwrite else state.done
            self.reported_duplicates = state.duplicates
            self.stored_rows, self.listed = state.rows, state.listed
        except BaseException:
            self.close()
            raise
        self.summary = RunSummary(out=self.store.location.uri, kept_changed=resume_by_id)

    def close(self) -> None:
        """Give the output's lease back (iterating to the end, or stopping, does this too)."""
        self._release()

    def _keeps(self, task: RenderTask) -> bool:
        """Whether an id already ok is skipped: its stored video shows what its row asks for (or the run resumes by
        id alone).  A kept row whose video another cache setting computed is counted for the summary's note."""
        if not compare_row(task, self.stored_rows, self.settings, self.model_checks, self.summary.changed):
            if not self.resume_by_id:
                return False
        stored = self.stored_rows.get(task.id) if self.stored_rows is not None else None
        if not stored:
            return True
        s = self.settings
        wanted = {"cache": s.cache, "cache_knob": self.knob.value}
        differ = [
            k
            for k, v in wanted.items()
            if stored.get(k) is not None
            and stored[k] != v
            and not (k == "cache_knob" and stored.get("cache") != wanted["cache"])  # said by the cache
        ]
        for name in differ:
            count, example = self.summary.other_settings.get(name, (0, (stored[name], wanted[name])))
            self.summary.other_settings[name] = (count + 1, example)
        if differ:
            self.summary.skipped_with_other_settings += 1
        return True

    def _output_full(self, err: OutputFull) -> None:
        """The disk is full: give back the space set aside, so the rows of the stored videos and the lease's
        release can still be written while the run stops."""
        if not getattr(self, "_full", False):
            self._full = True
            log.warning("%s: the output's disk is full; stopping after writing the rows of the videos stored", err)
        self.store.release_reserve()

    def run(self) -> RunSummary:
        for _ in self:
            pass
        return self.summary

    def __iter__(self) -> Iterator[dict]:
        settings, summary, writer = self.settings, self.summary, self.writer

        def gangs():
            return getattr(renderer, "gang_health", lambda: None)()

        metrics = JobMetrics(self.store.location.uri)
        report = ReportRefresher(self.store, interval_s=self.report_seconds or 0.0)
        bar = Progress(self.total, enabled=self.progress, interval_s=self.progress_seconds, gangs=gangs)
        own_renderer = self.renderer is None
        renderer = self.renderer
        in_flight: dict[Future, RenderTask] = {}
        location = dataclasses.replace(
            self.store.location, writer_run=self.writer.run_id
        )  # publishing checks the lease

        def record(task, status: str, error: str | None = None, **values) -> dict:
            row = _result_row(task, status, settings, error=error, **values)
            if status == STATUS_SKIPPED:
                summary.skipped += 1
            elif status == STATUS_DUPLICATE:
                summary.duplicates += 1
                if task.id not in self.reported_duplicates:  # once per id, not once per rerun
                    self.reported_duplicates.add(task.id)
                    writer.add(row)
                if len(summary.errors) < MAX_KEPT_ERRORS:
                    summary.errors.append(error)
            else:
                writer.add(row)
                if status == STATUS_OK:
                    summary.ok += 1
                else:
                    summary.failed += 1
                    if len(summary.errors) < MAX_KEPT_ERRORS:
                        summary.errors.append(error)
            bar.add(status, values.get("skipped_fraction"))
            metrics.finished(status, values.get("seconds") if status == STATUS_OK else None)
            metrics.state(len(in_flight), gangs())
            return row

        def finish_one() -> dict:
            """Wait for any render in flight (flushing results when they are due) and record it."""
            self.lease.check()
            while True:
                due = [
                    t
                    for t in (writer.seconds_until_due(), report.seconds_until_due() if self.report_seconds else None)
                    if t is not None
                ]
                done, _ = wait(in_flight, timeout=min(due) if due else None, return_when=FIRST_COMPLETED)
                if done:
                    break
                writer.flush_if_due()
                metrics.state(len(in_flight), gangs())
                if self.report_seconds:
                    report.refresh_if_due()
            future = next(iter(done))
            return record_done(future, in_flight.pop(future))

        def record_done(future: Future, task: RenderTask) -> dict:
            try:
                video, seconds = future.result()
            except LeaseLost:  # another run owns the output now: stop, record nothing more
                raise
            except OutputFull as err:  # this row failed, and so would every next one: record it and stop
                self._output_full(err)
                record(task, STATUS_FAILED, error=redact(f"{task.where}: {err}"))
                raise
            except (ValueError, RuntimeError, MemoryError) as err:  # bad row, storage error, a gang that failed
                # for good, or a row that ran out of memory past the estimate (the next rows may be smaller)
                reason = err if not isinstance(err, MemoryError) else f"out of memory ({err or 'MemoryError'})"
                return record(
                    task, STATUS_FAILED, error=redact(f"{task.where}: {reason}"), attempts=getattr(err, "attempts", 1)
                )
            return record(
                task,
                STATUS_OK,
                uri=video.uri,
                frames=video.num_frames,
                height=video.height,
                width=video.width,
                steps=video.steps,
                model=video.model,
                guidance_scale=video.guidance_scale,
                guidance_scale_2=video.guidance_scale_2,
                fps=video.fps,
                upscale=video.upscale,
                seconds=(video.phases.own_seconds() if video.phases is not None else None) or seconds,
                wall_seconds=seconds,
                cache=settings.cache,
                cache_knob=video.cache_knob if video.cache_knob is not None else self.knob.value,
                cache_knob_source=video.cache_knob_source or self.knob.source or None,
                skipped_fraction=video.skipped_fraction,
                attempts=video.attempts,
                video_bytes=video.video_bytes,
                video_digest=video.video_digest,
                video_mtime_ns=video.video_mtime_ns,
                **(video.phases.as_row() if video.phases is not None else {}),
            )

        def render_one(task: RenderTask):
            start = time.perf_counter()
            video = renderer.render(task, settings, location)
            return video, round(time.perf_counter() - start, 3)

        try:
            with writer:
                try:
                    broken = None  # the manifest's error once it cannot be read further
                    for task in _until_broken(self.tasks):
                        if isinstance(task, ManifestError):  # the rows read before it still render and count
                            broken = task
                            break
                        if isinstance(task, RowProblem):
                            yield record(
                                task,
                                STATUS_DUPLICATE if task.duplicate else STATUS_FAILED,
                                error=task.error,
                                attempts=0,
                            )
                            continue
                        if task.id in self.done and self._keeps(task):
                            yield record(task, STATUS_SKIPPED, uri=self.store.video_uri(task.id))
                            continue
                        task.stored_before = task.id in self.listed  # a new key needs no read before its upload
                        if renderer is None:
                            renderer = self.renderer = make_renderer(settings)
                        while len(in_flight) >= max(1, renderer.capacity):  # gang pools grow and shrink
                            yield finish_one()
                        in_flight[start_render(render_one, task)] = task
                        metrics.state(len(in_flight), gangs())
                        writer.flush_if_due()
                    while in_flight:
                        yield finish_one()
                    if broken is not None:
                        raise broken
                except BaseException:  # a stop or an error: videos already stored keep their rows
                    stop_publishing = getattr(renderer, "stop_publishing", None)
                    if stop_publishing is not None and in_flight:  # no video lands after its rows are flushed
                        publishing, landed = stop_publishing(PUBLISH_GRACE_S)
                        if not landed:
                            log.warning(
                                "a video still publishing after %.0f s may be stored without its row", PUBLISH_GRACE_S
                            )
                        wait([f for f, t in in_flight.items() if t.id in publishing], timeout=PUBLISH_GRACE_S)
                        # a video that landed just before the stop may still be on its way back (its render
                        # returning, a gang's answer in transit): give the renders a moment to return
                        wait(list(in_flight), timeout=RETURN_GRACE_S)
                    for future, _task in list(in_flight.items()):
                        if future.done() and future.exception() is None:
                            record_done(future, in_flight.pop(future))
                    raise
                writer.flush()
                report.final()  # after the last rows are flushed: the page shows the whole run
        except LeaseLost:  # the output is another run's now: not even its report is this run's to write
            raise
        except Stopped:  # its rows were flushed above; the lease goes back before the page is written
            self.close()
            report.final()  # a stopped run leaves the page of what is stored
            raise
        except ManifestError as err:  # a row group past the first that cannot be read
            if summary.total == 0:
                raise
            report.final()
            raise RunAborted(
                EXIT_MANIFEST_FAILED,
                f"the manifest could not be read past its first {summary.total} "
                f"row(s): {err}; the videos stored so far keep their rows, and a rerun resumes once the "
                "manifest is mended",
            ) from None
        except OutputFull as err:  # a video, a results part or the lease hit a full disk
            self._output_full(err)
            try:
                writer.flush()  # in the room set aside (a no-op when the exit of `with writer` managed it)
                kept = "their rows are written"
            except StorageError:
                kept = "their rows could not be written, so a rerun renders them again"
            raise RunAborted(
                EXIT_OUTPUT_FAILED,
                f"the output's disk is full ({err}) after {summary.ok} video(s) were "
                f"stored; {kept}.  Free space and rerun: it resumes",
            ) from None
        except StorageError as err:  # results could not be written: a full disk, a dead endpoint
            raise RunAborted(
                EXIT_OUTPUT_FAILED,
                f"the output stopped taking writes after {summary.ok} video(s) were "
                f"stored: {err}; rows not written are rendered again by a rerun",
            ) from None
        finally:  # on a stop or an error, videos still in flight are abandoned (their gangs are closed below)
            if own_renderer and renderer is not None:
                renderer.close()
            metrics.state(0, gangs())
            bar.close()
            self.close()


def render_tasks(
    tasks,
    out,
    settings: RenderSettings = RenderSettings(),
    renderer: Renderer | None = None,
    schema=RESULT_SCHEMA,
    total: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
    **job_options,
) -> RunSummary:
    """Render tasks into ``out`` (a folder or ``s3://`` prefix); ids already ok there are skipped.
    ``job_options``: RenderJob's (force, lease_ttl_s, progress_seconds)."""
    return RenderJob(tasks, out, settings, renderer, schema, total, progress, overwrite, **job_options).run()


def manifest_job(
    manifest_source,
    out,
    settings: RenderSettings = RenderSettings(),
    renderer: Renderer | None = None,
    progress: bool = True,
    overwrite: bool = False,
    **job_options,
) -> RenderJob:
    """Validate the manifest's schema and the output's access (failing before any rendering); the job to run."""
    manifest = Manifest(manifest_source)
    schema = results_schema(manifest.schema, manifest.extra_columns)
    return RenderJob(
        manifest,
        out,
        settings,
        renderer,
        schema,
        total=manifest.num_rows,
        progress=progress,
        overwrite=overwrite,
        **job_options,
    )


def render_manifest(
    manifest_source,
    out,
    settings: RenderSettings = RenderSettings(),
    renderer: Renderer | None = None,
    progress: bool = True,
    overwrite: bool = False,
    **job_options,
) -> RunSummary:
    """Render every row of a manifest (file, folder or ``s3://``) into ``out``, resumably."""
    return manifest_job(manifest_source, out, settings, renderer, progress, overwrite, **job_options).run()
