"""Candidate 12-14-step schedules (from benchmarks/schedule-search-*.jsonl) on more held-out `tiny` videos.

python benchmarks/schedule_check.py --cases-seeds 31337,2024 --json benchmarks/schedule-check-31337-2024.jsonl
"""

import sys

import numpy as np

sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.abspath(__file__)))
import harness
from forecast_schedules import FixedSchedule
from schedule_search import run_rule

import ditfarm
from ditfarm import cache
from ditfarm.cache.metrics import psnr
from ditfarm.tools.adherence import held_out_cases

harness.pin_threads(1)
pipe = ditfarm.load_pipeline("tiny")

ap = harness.parser(
    "Candidate 12-14-step schedules on more held-out tiny videos (4 per cases seed), damped forecast 0.4.",
    threads=False,
)
ap.add_argument("--cases-seeds", default="31337,2024")
args = ap.parse_args()
if args.json is None:
    ap.error("--json is required")
seeds = [int(x) for x in args.cases_seeds.split(",")]
cases = [(s.prompt, seed) for S in seeds for s, seed in held_out_cases(4, seed=S)]
refs = {c: pipe.generate(c[0], seed=c[1]) for c in cases}
cands = {
    "14 (8,1,1,3)": run_rule(30, 8, 1, 1, 3),
    "14 (8,2,1/3,3)": run_rule(30, 8, 2, 1 / 3, 3),
    "14 (6,1,0.5,2)": run_rule(30, 6, 1, 0.5, 2),
    "14 (7,1,0.5,3)": run_rule(30, 7, 1, 0.5, 3),
    "14 T3": tuple(list(range(7)) + [8, 10, 13, 17, 21, 25, 28]),
    "13 (7,1,1,3)": run_rule(30, 7, 1, 1, 3),
    "13 (7,1,2,3)": run_rule(30, 7, 1, 2, 3),
    "13 (8,3,0,3)": run_rule(30, 8, 3, 0, 3),
    "13 (4,1,0.5,2)": run_rule(30, 4, 1, 0.5, 2),
    "13 T3-1": tuple(list(range(7)) + [8, 10, 13, 17, 21, 25]),
    "12 (6,2,0.5,3)": run_rule(30, 6, 2, 0.5, 3),
    "12 (6,1,2,3)": run_rule(30, 6, 1, 2, 3),
    "12 (5,1,0.5,4)": run_rule(30, 5, 1, 0.5, 4),
}
args.json.unlink(missing_ok=True)  # JSON lines, one per schedule as it finishes
for name, steps in cands.items():
    engine = cache.CacheEngine(pipe.transformer, FixedSchedule(steps, 0.4))
    engine.attach()
    try:
        scores = [psnr(refs[c], pipe.generate(c[0], seed=c[1])) for c in cases]
    finally:
        engine.detach()
    print(f"{name:18s} {len(steps)} {np.mean(scores):6.2f}  {' '.join(f'{x:.1f}' for x in scores)}", flush=True)
    harness.append_line(
        args.json, {"name": name, "steps": list(steps), "psnr": float(np.mean(scores)), "per_video": scores}
    )
