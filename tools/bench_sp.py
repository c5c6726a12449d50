"""``ditfarm bench sp``: does the cache keep its speed under sequence parallelism?

For sp = 1 and sp = 2 (local gloo ranks, one CPU thread each; the same code a Ray gang runs), every rank loads
the model once, then for each prompt renders the video without cache and with the policy, back to back, so both
see the same machine load.  Reported per sp: seconds per video, the policy's speedup over ``none``, the fraction
of block computations that ran, the decision collective (calls per denoising step after the first, and bytes per
call, counted at the reduce), the per-rank peak cache memory, and PSNR of every video against sp = 1's uncached one.

The target: the speedup at sp = 2 is at least 95% of the speedup at sp = 1.
"""

from __future__ import annotations

import json
import statistics
import time

import numpy as np

from ..types import RenderSettings, RowInputs
from .adherence import held_out_cases


def _bench_rank(rank: int, world: int, model: str, policy: str, knob, cases, sampler: dict) -> dict:
    import torch.distributed as dist  # deferred: torch

    from ..cache import disable, enable, last_video_stats  # deferred: torch
    from ..cache.presets import config_for  # deferred: torch
    from ..cluster.collectives import make_cache_reduce  # deferred: torch
    from ..cluster.gang_rank import RankRenderer  # deferred: torch

    renderer = RankRenderer(rank, world, RenderSettings(model=model, cache="none", collective_timeout_s=600))
    pipe = renderer.pipe
    inner = make_cache_reduce() if world > 1 else (lambda v: v)
    wire = {"calls": 0, "bytes": 0}

    def counted(vector):
        wire["calls"] += 1
        wire["bytes"] += vector.numel() * 8  # sent as int64 fixed point
        return inner(vector)

    config = config_for(pipe, policy, knob)
    out = {"none": [], policy: []}
    renderer.render(
        RowInputs(cases[0][0], cases[0][1], sampler=sampler)
    )  # warm-up: allocator, thread pools, first-call paths
    for prompt, seed in cases:
        for name in ("none", policy):
            disable(pipe)
            if name != "none":
                enable(pipe, config, reduce=counted)
            wire.update(calls=0, bytes=0)
            if world > 1:
                dist.barrier()
            start = time.perf_counter()
            result = renderer.render(RowInputs(prompt, seed, sampler=sampler))
            seconds = time.perf_counter() - start
            stats = last_video_stats(pipe) if name != "none" else None
            out[name].append(
                {
                    "seconds": seconds,
                    "frames": result.frames,
                    "computed": 1.0 - (stats.skipped_fraction if stats else 0.0),
                    "reduce_calls": wire["calls"],
                    "reduce_bytes": wire["bytes"],
                    "peak_bytes": stats.peak_bytes if stats else 0,
                    "masks": stats.masks if stats else {},
                }
            )
    return out


def run(model: str, policy: str, knob, cases, sampler: dict, degrees=(1, 2)) -> dict:
    from ..cache.metrics import psnr  # deferred: torch
    from ..cluster.local import run_local_gang  # deferred: torch

    per_sp = {}
    for sp in degrees:
        ranks = run_local_gang(_bench_rank, sp, model, policy, knob, cases, sampler, timeout_s=1800, threads=1)
        per_sp[sp] = ranks
    reference = [v["frames"] for v in per_sp[degrees[0]][0]["none"]]
    rows = []
    for sp, ranks in per_sp.items():
        lead = ranks[0]
        steps = sampler["steps"]
        none_s = [v["seconds"] for v in lead["none"]]
        pol_s = [v["seconds"] for v in lead[policy]]
        rows.append(
            {
                "sp": sp,
                "none_s_per_video": statistics.median(none_s),
                "policy_s_per_video": statistics.median(pol_s),
                "speedup": statistics.median([a / b for a, b in zip(none_s, pol_s)]),
                "computed": float(np.mean([v["computed"] for v in lead[policy]])),
                # steps 1..N-1 each start with one reduce of the step before (both CFG branches); step 0 computes all
                "decision_collectives_per_step": lead[policy][0]["reduce_calls"] / (steps - 1),
                "decision_bytes_per_step": lead[policy][0]["reduce_bytes"] / max(1, lead[policy][0]["reduce_calls"]),
                "peak_cache_bytes_per_rank": max(v["peak_bytes"] for r in ranks for v in r[policy]),
                "masks_identical_on_all_ranks": all(
                    r[policy][i]["masks"] == lead[policy][i]["masks"] for r in ranks for i in range(len(cases))
                ),
                "psnr_none_vs_sp1": min(psnr(ref, v["frames"]) for ref, v in zip(reference, lead["none"])),
                "psnr_policy_vs_sp1_none": float(
                    np.mean([psnr(ref, v["frames"]) for ref, v in zip(reference, lead[policy])])
                ),
            }
        )
    masks_match_sp1 = all(
        per_sp[d][0][policy][i]["masks"] == per_sp[degrees[0]][0][policy][i]["masks"]
        for d in degrees
        for i in range(len(cases))
    )
    base = rows[0]["speedup"]
    for row in rows:
        row["speedup_vs_sp1"] = row["speedup"] / base
    return {
        "model": model,
        "policy": policy,
        "knob": knob,
        "sampler": sampler,
        "videos": len(cases),
        "masks_match_sp1": masks_match_sp1,
        "rows": rows,
    }


def run_command(args) -> int:
    from ..cache.presets import resolve_knob  # deferred: torch

    knob = resolve_knob(args.policy, args.knob)
    cases = [(spec.prompt, seed) for spec, seed in held_out_cases(args.videos, seed=4242)]
    sampler = {"steps": args.steps, "num_frames": args.num_frames, "height": args.height, "width": args.width}
    start = time.time()
    result = run(args.model, args.policy, knob, cases, sampler)
    result["seconds"] = round(time.time() - start, 1)
    print(
        f"{args.policy} (knob {knob}) on {args.model}, {args.num_frames}x{args.height}x{args.width}, "
        f"{args.steps} steps, {len(cases)} videos; one CPU thread per rank, gloo"
    )
    print(
        "| sp | none s/video | policy s/video | speedup | vs sp=1 | computed | decision collectives/step "
        "| bytes/step | peak cache bytes/rank | PSNR none vs sp1 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in result["rows"]:
        print(
            f"| {r['sp']} | {r['none_s_per_video']:.2f} | {r['policy_s_per_video']:.2f} | {r['speedup']:.2f}x "
            f"| {r['speedup_vs_sp1']:.1%} | {r['computed']:.1%} | {r['decision_collectives_per_step']:.1f} "
            f"| {r['decision_bytes_per_step']:.0f} | {r['peak_cache_bytes_per_rank']:,} | {r['psnr_none_vs_sp1']:.1f} |"
        )
    print(f"masks identical across ranks and equal to sp=1's: {result['masks_match_sp1']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=float) + "\n")
    return 0
