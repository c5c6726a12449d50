"""Sweep `adaptive`'s settings on a few held-out `tiny` videos: blocks computed and PSNR against the uncached video.

    python benchmarks/adaptive_sweep.py "[dict(threshold=t, order=o) for o in (0, 1) for t in (0.1, 0.3)]"

The argument is a Python list of AdaptiveConfig keyword sets (``prof=None`` drops the profile).  No timing: with
whole-step skipping, wall speedup follows the computed fraction (`ditfarm bench cache` measures it).  This is how
the defaults in cache/policies/adaptive.py were chosen (BENCHMARKS.md).
"""

import os
import sys

import harness
import numpy as np

import ditfarm
from ditfarm import cache
from ditfarm.cache.metrics import psnr
from ditfarm.cache.profile import CacheProfile
from ditfarm.tools.adherence import held_out_cases

harness.pin_threads(1)
pipe = ditfarm.load_pipeline("tiny")
prof = CacheProfile.load(pipe.default_cache_profile())

CASES_SEED = int(os.environ.get("CASES_SEED", 4242))  # 4242: the bench's videos; tune on others (e.g. 777)
cases = [(s.prompt, seed) for s, seed in held_out_cases(4, seed=CASES_SEED)]
refs = {c: pipe.generate(c[0], seed=c[1]) for c in cases}


def run(**kw):
    kw2 = dict(kw)
    p = kw2.pop("prof", prof)
    cfg = cache.AdaptiveConfig(profile=p, **kw2)
    cache.enable(pipe, cfg)
    ps, fr, computed_steps = [], [], []
    for c in cases:
        out = pipe.generate(c[0], seed=c[1])
        st = cache.last_video_stats(pipe)
        ps.append(psnr(refs[c], out))
        fr.append(1 - st.skipped_fraction)
        computed_steps.append([i for i, m in enumerate(st.masks["cond"]) if all(m)])
    cache.disable(pipe)
    print(kw, f"cases {CASES_SEED} computed {np.mean(fr):.3f} psnr {np.mean(ps):.2f}", flush=True)
    print("    computed steps of the first video:", computed_steps[0], flush=True)


for kw in eval(sys.argv[1]):
    run(**kw)
