"""CFG parallelism against Ulysses on the same two ranks: seconds per video, speedup, fidelity, masks.

    python benchmarks/cfg_parallel.py --videos 3 --json benchmarks/cfg-parallel.json

Both run on two local gloo ranks of one CPU thread each (the same RankRenderer a Ray gang runs): ``sp2`` splits
every transformer call's tokens over the two ranks (Ulysses, two all-to-alls per block), ``cfg2`` runs the
cond pass on rank 0 and the uncond pass on rank 1 (one all-gather of the prediction per step).  One process on one
thread (``sp1``) is the reference for PSNR.  Each configuration renders a warm-up video, then the held-out
prompts; medians.  With ``--policy adaptive`` the cache runs too (its masks must equal sp1's).
"""

from __future__ import annotations

import statistics
import time

import harness

PROMPTS = [
    "red circle moving left on blue background",
    "white square moving up on green gradient background",
    "yellow triangle moving right on black background",
    "blue square moving down on red gradient background",
]


def render_rank(rank, world, model, cfg_parallel, policy, prompts, steps):
    from ditfarm.cluster.gang_rank import RankRenderer
    from ditfarm.types import RenderSettings, RowInputs

    renderer = RankRenderer(
        rank, world, RenderSettings(model=model, cache=policy, cfg_parallel=cfg_parallel, collective_timeout_s=600)
    )
    renderer.render(RowInputs(prompts[0], 0, sampler=dict(steps=steps)))  # warm-up
    out = []
    for i, prompt in enumerate(prompts):
        start = time.perf_counter()
        result = renderer.render(RowInputs(prompt, 100 + i, sampler=dict(steps=steps)))
        out.append({"seconds": time.perf_counter() - start, "frames": result.frames, "masks": result.masks})
    return out


def main(argv=None) -> int:
    p = harness.parser(__doc__, threads=False)
    p.add_argument("--model", default="tiny")
    p.add_argument("--videos", type=int, default=3)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--policy", default="none")
    args = p.parse_args(argv)

    from ditfarm.cache.metrics import psnr
    from ditfarm.cluster.local import run_local_gang

    harness.pin_threads(1)
    prompts = PROMPTS[: args.videos]
    runs = {"sp1": render_rank(0, 1, args.model, False, args.policy, prompts, args.steps)}
    runs["sp2"] = run_local_gang(render_rank, 2, args.model, False, args.policy, prompts, args.steps, timeout_s=600)[0]
    cfg = run_local_gang(render_rank, 2, args.model, True, args.policy, prompts, args.steps, timeout_s=600)
    runs["cfg2"] = cfg[0]
    rows = []
    for name, videos in runs.items():
        seconds = statistics.median(v["seconds"] for v in videos)
        fidelity = [psnr(ref["frames"], v["frames"]) for ref, v in zip(runs["sp1"], videos)]
        rows.append(
            {
                "config": name,
                "seconds_per_video": seconds,
                "all_seconds": [v["seconds"] for v in videos],
                "psnr_vs_sp1": min(fidelity),
            }
        )
    by = {r["config"]: r for r in rows}
    for r in rows:
        r["speedup_vs_sp2"] = by["sp2"]["seconds_per_video"] / r["seconds_per_video"]
        r["speedup_vs_sp1"] = by["sp1"]["seconds_per_video"] / r["seconds_per_video"]
    masks_equal = (
        all(
            v["masks"]["cond"] == ref["masks"].get("cond")
            and cfg[1][i]["masks"].get("uncond") == ref["masks"].get("uncond")
            for i, (v, ref) in enumerate(zip(cfg[0], runs["sp1"]))
        )
        if args.policy != "none"
        else None
    )
    print(f"{args.model}, {args.steps} steps, CFG, policy {args.policy}, {len(prompts)} videos, 1 thread per rank")
    print("| config | s/video | vs sp2 | vs sp1 | min PSNR vs sp1 (dB) |\n|---|---|---|---|---|")
    for r in rows:
        db = "identical" if r["psnr_vs_sp1"] == float("inf") else f"{r['psnr_vs_sp1']:.1f}"
        print(
            f"| {r['config']} | {r['seconds_per_video']:.2f} | {r['speedup_vs_sp2']:.2f}x | "
            f"{r['speedup_vs_sp1']:.2f}x | {db} |"
        )
    if masks_equal is not None:
        print(f"cfg2 masks equal sp1's: {masks_equal}")
    harness.write_result(
        args.json,
        {
            "model": args.model,
            "steps": args.steps,
            "policy": args.policy,
            "videos": len(prompts),
            "rows": rows,
            "cfg_masks_equal_sp1": masks_equal,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
