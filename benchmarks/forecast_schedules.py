"""Fixed compute schedules x forecast damping on held-out `tiny` videos: which steps to compute, and how to
forecast the skipped ones, separated from any policy's decisions.

    python benchmarks/forecast_schedules.py --cases-seed 777 --json benchmarks/forecast-schedules-777.json
    python benchmarks/forecast_schedules.py --single-skips --json benchmarks/single-skips-777.json
    python benchmarks/forecast_schedules.py --fast --dampings 0.4,1 --json benchmarks/forecast-schedules-fast-777.json

With ``--single-skips`` it instead computes every step but one, for each step in turn, with plain reuse: what
skipping that one step costs the video (where in the schedule errors hurt most).  With ``--fast`` it runs
schedules of 5-7 computed steps (the > 4x end, where TaylorSeer competes).

Every schedule computes whole steps (both CFG branches) at the listed steps and skips the others; a skipped step
adds the forecast stack residual r(s0) + a k (r(s0) - r(s_prev)) / gap (a = damping; 0 is plain reuse, 1 is
TaylorSeer's first-order series).  PSNR is against the uncached video.  This is where adaptive's damping 0.4 comes
from (cache/policies/adaptive.py; tuned on cases seed 777, which the bench (seed 4242) does not use).
"""

import harness
import numpy as np

import ditfarm
from ditfarm import cache
from ditfarm.cache.metrics import psnr
from ditfarm.cache.policies.base import CachePolicy
from ditfarm.tools.adherence import held_out_cases

SCHEDULES = {  # computed steps of 30
    "uniform runs of 2 (s4)": list(range(6)) + [8, 11, 14, 17, 20, 23, 26, 28],
    "alternate, then runs of 2 (T2)": list(range(6)) + [7, 9, 12, 15, 18, 21, 24, 27],
    "alternate, then growing runs (T3)": list(range(7)) + [8, 10, 13, 17, 21, 25, 28],
    "MagCache-like, 17 steps (M17)": list(range(9)) + [10, 12, 14, 16, 18, 20, 22, 26],
}

FAST_SCHEDULES = {
    "TaylorSeer N=5 (6)": [0, 5, 10, 15, 20, 25],
    "TaylorSeer N=6 (5)": [0, 6, 12, 18, 24],
    "3 warm-up, then every 7th (6)": [0, 1, 2, 9, 16, 23],
    "3 warm-up, then every 5th (7)": [0, 1, 2, 7, 12, 17, 22],
    "2 warm-up, then every 8th (5)": [0, 1, 9, 17, 25],
}


class FixedSchedule(CachePolicy):
    """Whole steps at fixed positions; no indicator."""

    name = "fixed-schedule"
    indicator = None
    whole_steps = True

    def __init__(self, computed_steps, damping):
        self.computed = set(computed_steps)
        self.forecast_order = 1
        self.forecast_damping = damping

    def decide(self, state, step, computed, sums):
        return (np.ones if step + 1 in self.computed else np.zeros)(state.num_blocks, dtype=np.int8)


def main():
    p = harness.parser(__doc__, threads=False)
    p.add_argument("--cases-seed", type=int, default=777)
    p.add_argument("--videos", type=int, default=4)
    p.add_argument("--dampings", default="0,0.4,1")
    p.add_argument("--single-skips", action="store_true", help="skip one step at a time instead")
    p.add_argument("--fast", action="store_true", help="schedules of 5-7 computed steps instead")
    args = p.parse_args()
    harness.pin_threads(1)
    pipe = ditfarm.load_pipeline("tiny")
    cases = [(s.prompt, seed) for s, seed in held_out_cases(args.videos, seed=args.cases_seed)]
    refs = {c: pipe.generate(c[0], seed=c[1]) for c in cases}
    rows = []
    schedules = FAST_SCHEDULES if args.fast else SCHEDULES
    dampings = [float(d) for d in args.dampings.split(",")]
    if args.single_skips:
        schedules = {f"all but step {s}": [i for i in range(30) if i != s] for s in range(1, 30)}
        dampings = [0.0]
    for name, steps in schedules.items():
        for damping in dampings:
            engine = cache.CacheEngine(pipe.transformer, FixedSchedule(steps, damping))
            engine.attach()
            try:
                scores = [psnr(refs[c], pipe.generate(c[0], seed=c[1])) for c in cases]
            finally:
                engine.detach()
            rows.append(
                {
                    "schedule": name,
                    "computed_steps": len(steps),
                    "damping": damping,
                    "psnr": float(np.mean(scores)),
                    "per_video": scores,
                }
            )
            print(f"| {name} | {len(steps)} | {damping:g} | {np.mean(scores):.2f} |", flush=True)
    harness.write_result(args.json, {"cases_seed": args.cases_seed, "steps": 30, "rows": rows})


if __name__ == "__main__":
    main()
