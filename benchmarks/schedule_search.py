"""Which steps to compute, searched: every schedule of a family of warm-up + run-length rules, on held-out `tiny`
videos, grouped by how many steps it computes.  The best schedule per count is what `adaptive`'s ladder should
produce at that budget.

    python benchmarks/schedule_search.py --device cuda --json benchmarks/schedule-search-777.jsonl

A schedule computes the first ``warm`` steps, then after each computed step skips a run of
min(max_run, first + floor(growth * runs so far)) steps, to the end (the last run may be shorter).  Skipped steps
use adaptive's forecast (first order, damping 0.4; ``--damping``).  Only fidelity is measured (PSNR of the decoded
video against the uncached one); time follows the computed count (BENCHMARKS.md), so the search can run on a
GPU.  Results stream to the JSON-lines file, one schedule per line, so a cut-off run keeps what it did.
"""

import itertools
import random
import time

import harness
import numpy as np
from forecast_schedules import FixedSchedule

import ditfarm
from ditfarm import cache
from ditfarm.cache.metrics import psnr
from ditfarm.tools.adherence import held_out_cases

WARM = range(2, 9)
FIRST = range(1, 10)
GROWTH = (0.0, 1 / 3, 0.5, 1.0, 2.0)
MAX_RUN = range(1, 11)


def run_rule(num_steps: int, warm: int, first: int, growth: float, max_run: int) -> tuple[int, ...]:
    steps, last, runs = list(range(warm)), warm - 1, 0
    while True:
        nxt = last + min(max_run, first + int(growth * runs)) + 1
        if nxt >= num_steps:
            return tuple(steps)
        steps.append(nxt)
        last, runs = nxt, runs + 1


def family(num_steps: int, max_count: int) -> dict[tuple[int, ...], tuple]:
    """Unique schedules -> the first rule (warm, first, growth, max_run) that makes each."""
    found = {}
    for rule in itertools.product(WARM, FIRST, GROWTH, MAX_RUN):
        if rule[1] > rule[3]:
            continue
        steps = run_rule(num_steps, *rule)
        if len(steps) <= max_count:
            found.setdefault(steps, rule)
    return found


def main():
    p = harness.parser(__doc__, threads=False)
    p.add_argument("--cases-seed", type=int, default=777)
    p.add_argument("--videos", type=int, default=4)
    p.add_argument("--device", default="cpu")
    p.add_argument("--damping", type=float, default=0.4)
    p.add_argument("--max-count", type=int, default=16, help="only schedules computing at most this many steps")
    p.add_argument("--offset", type=int, default=0, help="skip this many schedules (to resume a cut-off run)")
    p.add_argument("--limit", type=int, default=0, help="evaluate at most this many schedules (0: all)")
    args = p.parse_args()
    if args.json is None:
        p.error("--json (the JSON-lines output) is required")
    if args.device == "cpu":
        harness.pin_threads(1)
    pipe = ditfarm.load_pipeline("tiny", device=args.device)
    cases = [(s.prompt, seed) for s, seed in held_out_cases(args.videos, seed=args.cases_seed)]
    refs = {c: pipe.generate(c[0], seed=c[1]) for c in cases}
    schedules = list(family(30, args.max_count).items())
    random.Random(0).shuffle(schedules)  # a cut-off run still covers every count
    schedules = schedules[args.offset : args.offset + args.limit if args.limit else None]
    print(f"{len(schedules)} schedules x {len(cases)} videos", flush=True)
    start = time.time()
    args.json.unlink(missing_ok=True)  # JSON lines, one per schedule as it finishes
    for steps, rule in schedules:
        engine = cache.CacheEngine(pipe.transformer, FixedSchedule(steps, args.damping))
        engine.attach()
        try:
            scores = [psnr(refs[c], pipe.generate(c[0], seed=c[1])) for c in cases]
        finally:
            engine.detach()
        row = {
            "count": len(steps),
            "steps": list(steps),
            "rule": dict(zip(("warm", "first", "growth", "max_run"), rule)),
            "damping": args.damping,
            "cases_seed": args.cases_seed,
            "psnr": float(np.mean(scores)),
            "per_video": [float(s) for s in scores],
        }
        harness.append_line(args.json, row)
    print(f"done in {time.time() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
