"""The cache engine's overhead on `tiny` with every block computed, measured directly.

    python benchmarks/engine_overhead.py --repeats 7 --json benchmarks/engine-overhead-tiny.json

`ditfarm bench cache` times each video once with and once without a cache, which is right for speedups of 1.3x
and more but too coarse for a 1-3% overhead on a 2-core machine.  This renders one prompt many times, alternating
no cache and each policy at the knob that computes every block, and reports the ratio of medians and the median
of each round's ratio to the uncached video rendered right before it (drift between rounds cancels); then it
profiles one cached video and reports the share of time spent in the engine's own functions (cache/engine.py),
the figure that a noisy machine moves least.
"""

import cProfile
import pstats
import statistics
import time

import harness

import ditfarm
from ditfarm import cache

PROMPT = "red circle moving left on blue background"
CONFIGS = {
    "adaptive (threshold 0)": cache.AdaptiveConfig(threshold=0.0),
    "adaptive-block (threshold 0)": cache.AdaptiveConfig(threshold=0.0, granularity="block"),
    "bwcache (threshold 0)": cache.BWCacheConfig(threshold=0.0),
}


def main() -> None:
    p = harness.parser(__doc__)
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    harness.pin_threads(args.threads)
    pipe = ditfarm.load_pipeline("tiny")

    def video_seconds() -> float:
        start = time.perf_counter()
        pipe.generate(PROMPT, seed=0)
        return time.perf_counter() - start

    video_seconds()  # warm-up
    times = {"none": [], **{name: [] for name in CONFIGS}}
    for _ in range(args.repeats):
        times["none"].append(video_seconds())
        for name, config in CONFIGS.items():
            cache.enable(pipe, config)
            times[name].append(video_seconds())
            cache.disable(pipe)
    base = statistics.median(times["none"])
    rows = [
        {
            "method": name,
            "median_seconds": statistics.median(t),
            "overhead": statistics.median(t) / base - 1,
            # each round's video against the uncached one rendered right before it: drift between rounds cancels
            "paired_overhead": statistics.median(x / b - 1 for x, b in zip(t, times["none"])),
        }
        for name, t in times.items()
    ]

    cache.enable(pipe, CONFIGS["adaptive (threshold 0)"])
    profiler = cProfile.Profile()
    profiler.enable()
    video_seconds()
    profiler.disable()
    cache.disable(pipe)
    stats = pstats.Stats(profiler).stats
    total = sum(tt for (_, _, tt, _, _) in stats.values())
    engine = sum(tt for (file, _, _), (_, _, tt, _, _) in stats.items() if file.endswith("cache/engine.py"))

    print(
        harness.markdown_table(
            ["method", "median s/video", "overhead vs none", "paired overhead (median of rounds)"],
            [
                [r["method"], f"{r['median_seconds']:.3f}", f"{r['overhead']:+.1%}", f"{r['paired_overhead']:+.1%}"]
                for r in rows
            ],
        )
    )
    print(f"engine functions' own time in a profiled adaptive video: {engine / total:.1%}")
    harness.write_result(
        args.json,
        {
            "repeats": args.repeats,
            "threads": args.threads,
            "rows": rows,
            "engine_self_time_share": engine / total,
            "all_seconds": times,
        },
    )


if __name__ == "__main__":
    main()
