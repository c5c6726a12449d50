"""Does the denoising loop wait on I/O?  A job's speedup from a cache against the loop's own speedup.

A cache only shortens the denoising loop; a video's fixed costs (text encoding, decoding, mp4 encoding, storing)
stay.  Run between loops, they cap what a job gains.  Run beside the next video's loop (``overlap``, the
default), the job should gain what the loop gains.  For each of ``--cache none`` and ``--cache adaptive``, with
overlap on and off, the same held-out prompts are rendered as one job (``render_tasks`` into a local folder, the
model loaded once and warmed up first).  Reported per configuration: videos per minute of the whole job, and the
seconds inside the loops alone.  The check: with overlap, the job's speedup of adaptive over none is at least 95%
of the loop-only speedup.

    python benchmarks/io_overlap.py --videos 16 --rounds 2 --json benchmarks/io-overlap.json
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import harness
import numpy as np


def held_out_prompts(n: int) -> list[tuple[str, int]]:
    from ditfarm.tools.adherence import held_out_cases

    return [(spec.prompt, seed) for spec, seed in held_out_cases(n, 777)]


def run_job(renderer, prompts, settings, out: Path) -> tuple[float, float, list[float]]:
    """(wall seconds of the job, seconds inside the loops, per-row seconds from the results)."""
    from ditfarm.jobs.driver import prompt_task, render_tasks
    from ditfarm.jobs.results import read_all_results

    tasks = [prompt_task(p, seed=seed, video_id=f"v{i:03d}") for i, (p, seed) in enumerate(prompts)]
    renderer.loop_seconds.clear()
    start = time.perf_counter()
    summary = render_tasks(tasks, str(out), settings, renderer=renderer, progress=False, report_seconds=None)
    wall = time.perf_counter() - start
    assert summary.ok == len(tasks), summary.errors[:3]
    seconds = read_all_results(str(out), columns=["seconds"]).column("seconds").to_pylist()
    return wall, sum(renderer.loop_seconds), seconds


def main(argv=None) -> int:
    parser = harness.parser(__doc__, threads=False, json_default=harness.HERE / "io-overlap.json")
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--videos", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2, help="repeat every configuration; the best round counts")
    parser.add_argument("--cache", default="adaptive")
    parser.add_argument("--knob", type=float, default=None)
    args = parser.parse_args(argv)

    from ditfarm.jobs.driver import LocalRenderer, RenderSettings

    prompts = held_out_prompts(args.videos)
    rows = []
    with tempfile.TemporaryDirectory(prefix="ditfarm-overlap-") as tmp:
        for cache in ("none", args.cache):
            for overlap in (False, True):
                settings = RenderSettings(
                    model=args.model, cache=cache, cache_knob=args.knob if cache != "none" else None, overlap=overlap
                )
                renderer = LocalRenderer(settings)
                run_job(renderer, prompts[:2], settings, Path(tmp) / f"warm-{cache}-{overlap}")
                best = None
                for r in range(args.rounds):
                    wall, loops, seconds = run_job(renderer, prompts, settings, Path(tmp) / f"{cache}-{overlap}-{r}")
                    if best is None or wall < best[0]:
                        best = (wall, loops, seconds)
                wall, loops, seconds = best
                rows.append(
                    {
                        "cache": cache,
                        "overlap": overlap,
                        "videos": len(prompts),
                        "wall_s": round(wall, 2),
                        "videos_per_min": round(60 * len(prompts) / wall, 2),
                        "loop_s": round(loops, 2),
                        "loop_share": round(loops / wall, 3),
                        "row_seconds_mean": round(float(np.mean(seconds)), 3),
                    }
                )
                print(
                    f"{cache:>9} overlap={overlap!s:<5} {rows[-1]['videos_per_min']:7.2f} videos/min  "
                    f"loops {loops:6.2f} s of {wall:6.2f} s",
                    flush=True,
                )

    def row(cache, overlap):
        return next(r for r in rows if r["cache"] == cache and r["overlap"] == overlap)

    loop_speedup = row("none", True)["loop_s"] / row(args.cache, True)["loop_s"]
    summary = {}
    for overlap in (False, True):
        job_speedup = row(args.cache, overlap)["videos_per_min"] / row("none", overlap)["videos_per_min"]
        summary["overlap" if overlap else "between_loops"] = {
            "job_speedup": round(job_speedup, 3),
            "loop_speedup": round(loop_speedup, 3),
            "fraction_of_loop_speedup": round(job_speedup / loop_speedup, 3),
        }
    print()
    print(f"| fixed costs | job speedup ({args.cache} vs none) | loop-only speedup | fraction |")
    print("|---|---|---|---|")
    for name, s in summary.items():
        print(
            f"| {name.replace('_', ' ')} | {s['job_speedup']:.2f}x | {s['loop_speedup']:.2f}x | "
            f"{100 * s['fraction_of_loop_speedup']:.1f}% |"
        )
    result = {
        "command": "python " + " ".join([sys.argv[0]] + (argv if argv is not None else sys.argv[1:])),
        "date": date.today().isoformat(),
        "machine": f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}",
        "model": args.model,
        "cache": args.cache,
        "knob": args.knob,
        "rows": rows,
        "summary": summary,
        "target": "with overlap, job speedup >= 95% of the loop-only speedup",
        "met": summary["overlap"]["fraction_of_loop_speedup"] >= 0.95,
    }
    harness.write_result(args.json, result)
    print(f"wrote {args.json}; target met: {result['met']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
