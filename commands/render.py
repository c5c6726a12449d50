"""``ditfarm render``: render every row of a manifest, or one --prompt, into an output folder or bucket."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

from ..choices import DTYPE_NAMES, POLICIES
from ..jobs.stopping import Stopped, stop_on_signals
from ..storage.errors import StorageError, redact
from ..types import EXIT_LEASE_LOST, EXIT_TRY_LATER, NoRenderersLeft, RunAborted
from ..uris import is_s3


def gangs_value(text: str):
    """--gangs: a non-negative integer or 'auto'."""
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer or 'auto', got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer or 'auto', got {text!r}")
    return value


def register(sub) -> None:
    p = sub.add_parser("render", help="render a Parquet manifest or one --prompt into --out DIR")
    p.add_argument(
        "manifest",
        nargs="?",
        help="Parquet manifest: a file, a folder of files, s3://bucket/key.parquet or s3://bucket/prefix/",
    )
    p.add_argument("--prompt", help="render this one prompt instead of a manifest")
    p.add_argument("--id", dest="video_id", help="with --prompt: the video id (default: derived from the prompt)")
    p.add_argument("--seed", type=int, help="with --prompt: the seed (default: derived from the id)")
    p.add_argument("--out", required=True, help="output folder or s3://bucket/prefix: videos/ and results/ go here")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="validate the whole manifest against the model and the output; load no model, write nothing",
    )
    p.add_argument("--overwrite", action="store_true", help="render every row again, even ids already ok")
    p.add_argument(
        "--repair",
        action="store_true",
        help="move results parts that cannot be read (garbage, truncated) to OUT/damaged-results/ and go on; "
        "without it the run stops and names them",
    )
    p.add_argument(
        "--resume-by-id",
        action="store_true",
        help="skip every id already ok, even one whose manifest row now asks for other content (prompt, seed, "
        "sizes, steps, guidance, model); by default such an id is rendered again",
    )
    p.add_argument("--allow-failures", action="store_true", help="exit 0 even when some rows failed")
    p.add_argument("--flush-every", type=int, default=32, help="write a results part every N rows (default 32)")
    p.add_argument(
        "--flush-seconds",
        type=float,
        default=60.0,
        help="... or this many seconds after the oldest unwritten row (default 60)",
    )
    p.add_argument("--model", default="tiny", help="built-in model name or model folder (default: tiny)")
    p.add_argument("--steps", type=int, help="denoising steps (default: the model's)")
    p.add_argument(
        "--max-steps",
        type=int,
        default=1000,
        help="refuse a row (or run) that asks for more denoising steps than this (default 1000)",
    )
    p.add_argument("--guidance-scale", type=float, help="classifier-free guidance scale (default: the model's)")
    p.add_argument(
        "--guidance-scale-2",
        type=float,
        help="the second expert's guidance scale, for a two-expert folder (Wan2.2 A14B; default: its card's, else "
        "--guidance-scale, as diffusers defaults it)",
    )
    p.add_argument("--num-frames", type=int)
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument(
        "--upscale",
        type=int,
        help="integer nearest-neighbour upscale of the mp4 (default: the model's; tiny 8, Wan2.1 1)",
    )
    p.add_argument("--fps", type=int, help="frames per second of the mp4 (default: the model's; tiny 8, Wan2.1 16)")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads per render (a gang rank also takes this many Ray CPUs); default: the "
        "CPUs this process may use less one (in process), the rank's one CPU (gangs)",
    )
    p.add_argument(
        "--dtype",
        default="auto",
        choices=DTYPE_NAMES,
        help="transformer and text encoder precision; auto: bf16 on CUDA, fp32 on CPU (a Wan VAE is always fp32)",
    )
    p.add_argument(
        "--compile",
        nargs="?",
        const="inductor",
        metavar="BACKEND",
        help="compile the transformer's repeated blocks with torch.compile (default backend: inductor); "
        "caches and sequence parallelism keep working, and a video's steps add no recompilation",
    )
    p.add_argument(
        "--offload-text-encoder",
        action="store_true",
        help="keep the text encoder in host memory between prompts (it visits the GPU to encode)",
    )
    p.add_argument("--image", help="the first frame (a path or s3:// URI) of every row that names none")
    p.add_argument("--last-image", help="the last frame of every row that names none (first-last-frame models)")
    p.add_argument(
        "--lora",
        help="a diffusers-format LoRA (a .safetensors file, a folder holding one, or an s3:// URI) applied to every "
        "row that names none",
    )
    p.add_argument(
        "--quantize",
        choices=("int8", "fp8"),
        help="quantize the transformer blocks' weights through torchao: int8 (weight-only, any device) or fp8 "
        "(GPUs with FP8: compute capability 8.9+)",
    )
    p.add_argument(
        "--lora-scale", type=float, default=1.0, help="the scale of the LoRA of every row that names none (default 1)"
    )
    p.add_argument(
        "--offload-experts",
        action="store_true",
        help="a two-expert folder (Wan2.2 A14B) keeps the expert not in use in host memory: one expert on the GPU "
        "at a time, each moved in at its first step of a video",
    )
    p.add_argument("--cache", default="none", choices=POLICIES, help="block-cache policy (default: none)")
    p.add_argument(
        "--cache-threshold",
        type=float,
        help="the policy's speed/fidelity knob: bwcache delta, profiling T_max, taylorseer interval, adaptive budget",
    )
    p.add_argument("--profile", help="cache profile JSON from `ditfarm profile` (default: the model's shipped one)")
    p.add_argument(
        "--sp",
        type=int,
        default=1,
        help="sequence-parallel ranks per video (a gang of Ray actors; one GPU each, or one CPU)",
    )
    p.add_argument(
        "--cfg-parallel",
        action="store_true",
        help="run the cond and uncond passes on the two halves of each gang at once (--sp 2U: Ulysses "
        "of degree U in each half)",
    )
    p.add_argument(
        "--gangs",
        type=gangs_value,
        help="gangs rendering side by side on Ray, or 'auto': as many as the cluster holds (GPUs / sp on "
        "GPU nodes, CPUs / sp otherwise, the driver's CPU left out); default: 1 when --sp > 1, "
        "else 0 (in this process)",
    )
    p.add_argument(
        "--collective-timeout",
        type=float,
        default=300.0,
        help="seconds a gang's collective may wait before the gang is replaced (default 300)",
    )
    p.add_argument(
        "--start-timeout",
        type=float,
        default=600.0,
        help="seconds the first gangs may wait for a node with room, e.g. one an autoscaling cluster "
        "adds for them (logged while it lasts); then exit 75, and a rerun resumes (default 600)",
    )
    p.add_argument(
        "--video-timeout",
        type=float,
        metavar="SECONDS",
        help="a video whose denoising loop runs longer fails as its row (default: 2 hours for a video "
        "of the model's default size and steps, more in proportion for larger rows)",
    )
    p.add_argument(
        "--retries",
        type=int,
        default=2,
        help="render a video again on a fresh gang up to N more times when its gang fails (default 2)",
    )
    p.add_argument(
        "--no-overlap",
        action="store_true",
        help="run each video's fixed costs (text encoding, decoding, mp4 encoding, storing) between "
        "denoising loops instead of beside the next loop (for a GPU without memory for both)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="take the output's lease even if another run holds it (only when that run is known to be "
        "gone: two runs on one output render the same ids twice)",
    )
    p.add_argument(
        "--lease-seconds",
        type=float,
        default=120.0,
        help="this run's hold on --out lapses after this many seconds without a renewal, and another "
        "run may then take over (it renews every quarter of that; default 120)",
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=run)


def settings_from_args(args):
    """The run's RenderSettings from ``ditfarm render``'s flags, validated (ValueError names the bad one)."""
    from ..cache.presets import resolve_knob  # deferred: torch
    from ..jobs.driver import RenderSettings  # deferred: torch

    settings = RenderSettings(
        model=args.model,
        num_frames=args.num_frames,
        height=args.height,
        width=args.width,
        steps=args.steps,
        max_steps=args.max_steps,
        guidance_scale=args.guidance_scale,
        guidance_scale_2=args.guidance_scale_2,
        upscale=args.upscale,
        fps=args.fps,
        device=args.device,
        threads=args.threads,
        dtype=args.dtype,
        offload_text_encoder=args.offload_text_encoder,
        offload_experts=args.offload_experts,
        image=_image_source(args.image),
        last_image=_image_source(args.last_image),
        lora=_image_source(args.lora),
        lora_scale=args.lora_scale,
        quantize=args.quantize,
        compile=args.compile,
        cfg_parallel=args.cfg_parallel,
        flush_every=args.flush_every,
        flush_seconds=args.flush_seconds,
        cache=args.cache,
        cache_knob=args.cache_threshold,
        profile=args.profile,
        sp=args.sp,
        gangs=args.gangs if args.gangs is not None else (1 if args.sp > 1 else 0),  # sp > 1 needs a gang
        collective_timeout_s=args.collective_timeout,
        start_timeout_s=args.start_timeout,
        retries=args.retries,
        video_timeout_s=args.video_timeout,
        overlap=not args.no_overlap,
    )
    resolve_knob(args.cache, args.cache_threshold)
    settings.validate()
    return settings


def abandon_renders(code: int) -> None:
    """Exit now if a render thread is still at work: letting the interpreter finalise under a thread inside torch
    aborts the process, and its exit code would no longer say that it was stopped.  Results are already flushed."""
    if any(t.name.startswith("render-") and t.is_alive() for t in threading.enumerate()):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def show_logs() -> None:
    """ditfarm's own INFO lines (gangs started and what each runs, the cluster growing) on stderr, where `ray
    job logs` and Kubernetes show them; other libraries keep their levels."""

    class CurrentStderr(logging.StreamHandler):
        """Writes to whatever sys.stderr is at the time (a test's capture, a redirected stream)."""

        @property
        def stream(self):
            return sys.stderr

        @stream.setter
        def stream(self, _value):
            pass

    logger = logging.getLogger("ditfarm")
    if not logger.handlers:
        handler = CurrentStderr()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def run(args) -> int:
    from ..jobs.driver import prompt_task, render_manifest, render_tasks  # deferred: torch
    from ..jobs.manifest import ManifestError  # deferred: pyarrow
    from ..storage.lease import LeaseLost  # deferred: pyarrow

    def fail(message) -> int:
        print(f"ditfarm render: {redact(str(message))}", file=sys.stderr)
        return 2

    if (args.manifest is None) == (args.prompt is None):
        return fail("give either a MANIFEST or --prompt, not both and not neither")
    show_logs()
    try:
        settings = settings_from_args(args)
    except ValueError as err:
        return fail(err)
    restore = stop_on_signals()
    try:
        if args.dry_run:
            if args.prompt is not None:
                return fail("--dry-run checks a MANIFEST")
            from ..jobs.dry_run import dry_run  # deferred: pyarrow

            report = dry_run(
                args.manifest,
                args.out,
                settings,
                overwrite=args.overwrite,
                resume_by_id=args.resume_by_id,
                repair=args.repair,
            )
            for line in report.lines():
                print(line)
            return 1 if report.would_fail else 0
        if args.prompt is not None:
            task = prompt_task(args.prompt, seed=args.seed, video_id=args.video_id)
            summary = render_tasks(
                [task],
                args.out,
                settings,
                total=1,
                progress=not args.no_progress,
                overwrite=args.overwrite,
                force=args.force,
                lease_ttl_s=args.lease_seconds,
                resume_by_id=args.resume_by_id,
                repair=args.repair,
            )
        else:
            summary = render_manifest(
                args.manifest,
                args.out,
                settings,
                progress=not args.no_progress,
                overwrite=args.overwrite,
                force=args.force,
                lease_ttl_s=args.lease_seconds,
                resume_by_id=args.resume_by_id,
                repair=args.repair,
            )
    except LeaseLost as err:  # a StorageError: before the clause below
        print(
            f"ditfarm render: lost the output's lease: {redact(str(err))}; what this run stored before it lost "
            "the lease keeps its rows",
            file=sys.stderr,
        )
        return EXIT_LEASE_LOST
    except (ManifestError, StorageError, ValueError, FileNotFoundError) as err:  # manifest, output, model, profile
        return fail(err)
    except NoRenderersLeft as err:
        print(f"ditfarm render: {redact(str(err))}", file=sys.stderr)
        return EXIT_TRY_LATER
    except RunAborted as err:
        print(f"ditfarm render: stopped partway: {redact(str(err))}", file=sys.stderr)
        return err.exit_code
    except Stopped as stop:
        name = signal.Signals(stop.signum).name
        print(
            f"ditfarm render: stopped by {name}; videos stored so far keep their results rows (report: "
            f"{args.out.rstrip('/')}/report.html), and the same command resumes",
            file=sys.stderr,
        )
        abandon_renders(128 + stop.signum)
        return 128 + stop.signum
    finally:
        restore()
    out = summary.out.rstrip("/")
    duplicates = f", {summary.duplicates} duplicate" if summary.duplicates else ""
    print(
        f"{summary.ok} ok, {summary.failed} failed, {summary.skipped} skipped{duplicates}; "
        f"videos in {out}/videos, results in {out}/results, report {out}/report.html"
    )
    if summary.changed.ids:
        if summary.kept_changed:
            said = (
                f"  {summary.changed.ids} skipped id(s) were stored with other content than their manifest rows now "
                f"ask for: {summary.changed.describe()}.  They were kept (--resume-by-id); without it a rerun "
                "renders them again"
            )
        else:
            said = (
                f"  {summary.changed.ids} id(s) were rendered again: their manifest rows changed since their "
                f"videos were stored: {summary.changed.describe()}.  --resume-by-id skips ids already ok whatever "
                "their rows say"
            )
        print(said, file=sys.stderr)
    if summary.skipped_with_other_settings:
        differ = "; ".join(
            f"{name} {stored!r} where this run has {wanted!r} ({count} row(s))"
            for name, (count, (stored, wanted)) in sorted(summary.other_settings.items())
        )
        print(
            f"  {summary.skipped_with_other_settings} skipped row(s) were rendered with other settings: {differ}.  "
            "They were kept; --overwrite renders every row again with this run's settings",
            file=sys.stderr,
        )
    for error in summary.errors[:20]:
        print(f"  failed: {error}", file=sys.stderr)
    if summary.failed > 20:
        print(f"  ... and {summary.failed - 20} more (see the results table)", file=sys.stderr)
    return 1 if (summary.failed or summary.duplicates) and not args.allow_failures else 0


def _image_source(source: str | None) -> str | None:
    """A run-wide image as rows name theirs: an s3:// URI as given, a local path made absolute."""
    if not source:
        return None
    return source if is_s3(source) else os.path.abspath(os.path.expanduser(source))
