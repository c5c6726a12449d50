"""The 3- and 4-step candidates for adaptive's fastest rung (output reuse) against sampling 4-6 steps, on held-out
`tiny` videos (tuning seeds, not the bench's):

    python benchmarks/fast_rung_check.py 777
    python benchmarks/fast_rung_check.py 999
"""

import sys

import harness
import numpy as np

import ditfarm
from ditfarm import cache
from ditfarm.cache.metrics import psnr
from ditfarm.cache.policies import AdaptiveConfig
from ditfarm.tools.adherence import held_out_cases

harness.pin_threads(1)
pipe = ditfarm.load_pipeline("tiny")
seed = int(sys.argv[1])
cases = [(s.prompt, sd) for s, sd in held_out_cases(4, seed=seed)]
refs = {c: pipe.generate(c[0], seed=c[1]) for c in cases}
for n in (4, 5, 6):
    print(
        "fewer-steps", n, np.mean([psnr(refs[c], pipe.generate(c[0], seed=c[1], steps=n)) for c in cases]), flush=True
    )
CANDIDATES = (
    [dict(warmup_fraction=3 / 30, first_run=8, growth=0.5, max_run=9)]  # rung 3 (5 steps)
    + [dict(warmup_fraction=3 / 30, first_run=f, growth=0, max_run=f) for f in (11, 13, 15, 27)]
    + [
        dict(warmup_fraction=2 / 30, first_run=f, growth=g, max_run=m)
        for f, g, m in ((8, 2, 20), (10, 0, 10), (13, 0, 13))
    ]
)
for kw in CANDIDATES:
    cache.enable(pipe, AdaptiveConfig(threshold=3.0, reuse_output=True, **kw))
    ps, steps = [], None
    for c in cases:
        ps.append(psnr(refs[c], pipe.generate(c[0], seed=c[1])))
        st = cache.last_video_stats(pipe)
        steps = [i for i, m in enumerate(st.masks["cond"]) if all(m)]
    cache.disable(pipe)
    print(kw, steps, f"{np.mean(ps):.2f}", flush=True)
