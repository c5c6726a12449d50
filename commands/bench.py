"""``ditfarm bench cache|cache-merge|sp|steps|gpu``: the benchmarks behind BENCHMARKS.md's figures, each a
subcommand with its own flags."""

from __future__ import annotations

from pathlib import Path

from ..choices import POLICIES
from ..pipelines.wan_configs import WAN21_1_3B
from ..tools.settings import BENCH_STEPS_METHODS, GRID_FAMILIES


def register(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="`bench cache`: speed and fidelity of every cache policy; `bench sp`: the cache under sequence "
        "parallelism; `bench steps`: per-step times on Wan2.1 shapes; `bench gpu`: a step and a whole video of "
        "Wan2.1 (1.3B, 14B) on one GPU",
        description=__doc__,
    )
    benches = p.add_subparsers(dest="bench", required=True, metavar="BENCH")
    for add in (_add_cache, _add_cache_merge, _add_sp, _add_steps, _add_gpu):
        add(benches)


def _add_cache(benches) -> None:
    p = benches.add_parser(
        "cache",
        help="speed and fidelity of every cache against the uncached video, on held-out prompts",
        description="For each method and knob, on the same transformer, prompts and seeds: the denoising loop's "
        "speedup (interleaved with an uncached run, median over videos), the fraction of block computations that "
        "ran, and PSNR/SSIM against the uncached video.  Writes a JSON, a table and a frontier plot.",
    )
    p.add_argument("--model", default="tiny")
    p.add_argument("--json", type=Path, required=True)
    p.add_argument("--png", type=Path, help="speedup-vs-PSNR frontier (default: next to --json)")
    p.add_argument("--videos", type=int, default=8, help="held-out prompt/seed pairs")
    p.add_argument("--steps", type=int)
    p.add_argument("--guidance-scale", type=float)
    p.add_argument("--profile", help="cache profile (default: the model's shipped one)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 keeps timings stable on shared CPUs)")
    p.add_argument("--quick", action="store_true", help="every other knob value only")
    p.add_argument(
        "--methods",
        help="only these families, optionally with knobs: e.g. adaptive:0.1/0.2,magcache "
        f"(families: {', '.join(GRID_FAMILIES)})",
    )
    p.set_defaults(run=run_cache)


def _add_cache_merge(benches) -> None:
    p = benches.add_parser(
        "cache-merge",
        help="one table, plot and target reading from several `bench cache` runs",
        description="Join `ditfarm bench cache` runs of the same setting (the grid split over processes).",
    )
    p.add_argument("runs", type=Path, nargs="+", help="JSON files written by `ditfarm bench cache`")
    p.add_argument("--json", type=Path, required=True)
    p.add_argument("--png", type=Path)
    p.set_defaults(run=run_cache_merge)


def _add_sp(benches) -> None:
    p = benches.add_parser(
        "sp",
        help="does the cache keep its speed under sequence parallelism (sp 1 against sp 2, gloo ranks)",
        description="For sp = 1 and sp = 2 (local gloo ranks, one CPU thread each), each prompt rendered without "
        "cache and with the policy back to back: seconds per video, speedup, blocks computed, the decision "
        "collective's calls and bytes, peak cache memory per rank and PSNR against sp = 1.",
    )
    p.add_argument("--model", default="tiny")
    p.add_argument("--policy", default="adaptive", choices=[c for c in POLICIES if c != "none"])
    p.add_argument("--knob", type=float, help="the policy's knob (default: its preset)")
    p.add_argument("--videos", type=int, default=3)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--num-frames", type=int, default=16)
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--json", type=Path)
    p.set_defaults(run=run_sp)


def _add_steps(benches) -> None:
    p = benches.add_parser(
        "steps",
        help="per-step time of the denoising loop on a Wan2.1-config transformer with random weights",
        description="Per-step time of the one denoising loop on Wan2.1-T2V-1.3B's shapes with random weights, "
        "per cache policy (knob 0: every block computed, so the time over none's is the engine's overhead); "
        "methods interleaved and repeated, medians reported.",
    )
    p.add_argument("--device", help="default: cuda when there is one, else cpu")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--layers", type=int, default=WAN21_1_3B["num_layers"])
    p.add_argument("--frames", type=int, default=81)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=832)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--guidance-scale", type=float, default=5.0)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument(
        "--methods", default=BENCH_STEPS_METHODS, help="comma-separated POLICY[:KNOB] (default: %(default)s)"
    )
    p.add_argument("--json", type=Path, help="write the result here")
    p.set_defaults(run=run_steps)


def _add_gpu(benches) -> None:
    p = benches.add_parser(
        "gpu",
        help="a denoising step and a whole video of Wan2.1 (1.3B, 14B) on one GPU, random weights",
        description="Seconds per denoising step of plain diffusers, ditfarm none, ditfarm --compile and every "
        "cache policy at a knob that computes every block, on Wan2.1-1.3B and part of Wan2.1-14B; then one whole "
        "1.3B video with UMT5-XXL and the Wan VAE: seconds and peak memory per phase.",
    )
    p.add_argument("--device", help="default: cuda when there is one, else cpu")
    p.add_argument("--steps", type=int, default=3, help="1.3B: timed steps per loop (default 3)")
    p.add_argument("--repeats", type=int, default=2, help="1.3B: timed loops per row; the median is reported")
    p.add_argument("--steps14", type=int, default=2, help="14B: timed steps of the one timed loop (default 2)")
    p.add_argument("--blocks14", type=int, default=4, help="blocks of Wan2.1-14B to build (default 4 of 40)")
    p.add_argument("--video-steps", type=int, default=4, help="denoising steps of the whole video (default 4)")
    p.add_argument(
        "--family-blocks",
        type=int,
        default=2,
        help="blocks of each other family's released transformer to build for its step row (default 2)",
    )
    p.add_argument("--compile-backend", default="inductor")
    p.add_argument(
        "--budget-seconds",
        type=float,
        default=450.0,
        help="stop starting new rows after this long (default 450: the whole run stays under 8 min)",
    )
    p.add_argument("--reserve-seconds", type=float, default=30.0, help="a row starts only with this much left")
    p.add_argument("--small", action="store_true", help="tiny shapes (the CPU test)")
    p.add_argument(
        "--sections",
        help="comma-separated sections to run, in the usual order (default all: wan2.1-1.3b, weights-1.3b, "
        "video-1.3b, wan2.1-14b, families)",
    )
    p.add_argument("--json", type=Path, help="write the result here")
    p.set_defaults(run=run_gpu)


# Each bench is imported when it runs: they load torch and the models.


def run_cache(args) -> int:
    from ..tools.bench_cache import run_command  # deferred: torch

    return run_command(args)


def run_cache_merge(args) -> int:
    from ..tools.bench_cache import run_merge_command  # deferred: torch

    return run_merge_command(args)


def run_sp(args) -> int:
    from ..tools.bench_sp import run_command  # deferred: numpy

    return run_command(args)


def run_steps(args) -> int:
    from ..tools.bench_steps import run_command  # deferred: torch

    return run_command(args)


def run_gpu(args) -> int:
    from ..tools.bench_gpu import run_command  # deferred: torch

    return run_command(args)
