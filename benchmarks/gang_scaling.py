"""Videos per minute of `tiny` on 1 gang against 2 gangs (data parallel), on a local Ray of this machine's CPUs.

Each gang is one GangMember actor (sp=1) holding one Ray CPU; GangMember pins torch to int(cpus_per_rank) = 1
intra-op thread, and OMP_NUM_THREADS=1 is set before Ray starts, so every worker inherits it.  The script reads
both back from inside each actor (``__ray_call__``) and measures each actor's CPU use (its own process and its
ffmpeg children) during the run.

Ray gets ``--num-cpus`` (2: this machine's cores) and two gangs take both: the driver process (RenderJob, its
results parts and report), Ray's own processes and the ffmpeg encoders run on the same two cores without a Ray
CPU of their own.  (``--gangs auto`` leaves one CPU of the driver's node to the driver, so it would start one
gang here; ``--gangs 2`` is explicit.)

Per gang count: the gangs are started (timed apart), one warm-up video per gang is rendered into a throwaway
output (not counted), then the same N videos into a fresh local folder, as ``ditfarm render --gangs G`` would
(overlap as the settings default: two videos in flight per gang).  Reported: videos per minute over the render
(job start to the last row) and over the whole job (to the end of its report.html), per-video seconds, and the
ratio.  ``--local`` adds the same N videos on LocalRenderer in this process (no Ray) for reference.

    python benchmarks/gang_scaling.py --videos 16 --gangs 1,2 --json benchmarks/gang-scaling.json
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch or Ray: every worker inherits it
os.environ.setdefault("MKL_NUM_THREADS", "1")

import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import harness  # noqa: E402
from harness import HERE  # noqa: E402

PROMPTS = [
    "red circle moving left on blue background",
    "white square moving up on green gradient background",
    "yellow triangle moving right on black background",
    "blue circle moving down on white background",
]


def tasks(prefix: str, n: int):
    from ditfarm.jobs.manifest import RenderTask

    return [RenderTask(row=i, id=f"{prefix}{i:04d}", prompt=PROMPTS[i % len(PROMPTS)], seed=1000 + i) for i in range(n)]


def probe_actor(member) -> dict:
    """What the actor's own process says about its threads (runs inside the actor)."""
    import ray

    def probe(self):
        import os

        import torch

        return {
            "pid": os.getpid(),
            "torch_threads": torch.get_num_threads(),
            "torch_interop_threads": torch.get_num_interop_threads(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "affinity_cpus": len(os.sched_getaffinity(0)),
        }

    return ray.get(member.__ray_call__.remote(probe))


def timed_job(job_tasks, out: Path, settings, renderer) -> dict:
    from ditfarm.jobs.driver import RenderJob

    start = time.perf_counter()
    job = RenderJob(job_tasks, out, settings, renderer=renderer, progress=False, total=len(job_tasks))
    rows = []
    for row in job:
        rows.append(row)
        last = time.perf_counter()
    end = time.perf_counter()
    assert job.summary.ok == len(job_tasks), job.summary
    seconds = [r["seconds"] for r in rows]
    render_s, whole_s = last - start, end - start
    n = len(job_tasks)
    return {
        "videos": n,
        "render_s": round(render_s, 2),
        "whole_s": round(whole_s, 2),
        "videos_per_min": round(60 * n / render_s, 2),
        "videos_per_min_whole": round(60 * n / whole_s, 2),
        "wall_s_per_video": round(render_s / n, 3),
        "row_seconds_median": round(statistics.median(seconds), 3),  # a render() call: waiting for a gang too
        "row_seconds_min": round(min(seconds), 3),
    }


def gangs_run(gangs: int, args, root: Path) -> dict:
    from ditfarm.jobs.driver import RenderSettings
    from ditfarm.jobs.gang_renderer import GangRenderer

    settings = RenderSettings(model=args.model, steps=args.steps, gangs=gangs, sp=1, overlap=args.overlap)
    start = time.perf_counter()
    renderer = GangRenderer(settings)
    started_s = time.perf_counter() - start
    try:
        probes = [probe_actor(m) for g in renderer.pool.gangs for m in g.members]
        timed_job(tasks(f"warm{gangs}-", gangs), root / f"warm-{gangs}", settings, renderer)  # one per gang
        warm = dict(zip(renderer.pool.videos_by_gang, renderer.videos_per_gang))
        pids = {f"actor {i}": p["pid"] for i, p in enumerate(probes)}
        cpu = harness.CpuMeter({**{k: [v] for k, v in pids.items()}, "driver process": [os.getpid()]}, children=True)
        result = timed_job(tasks("v", args.videos), root / f"out-{gangs}", settings, renderer)
        used = cpu.cores(result["whole_s"])
        by_gang = [n - warm.get(name, 0) for name, n in renderer.pool.videos_by_gang.items()]
    finally:
        renderer.close()
    return {
        "gangs": gangs,
        "start_s": round(started_s, 1),
        "warm_up_videos_per_gang": list(warm.values()),
        **result,
        "gang_s_per_video": round(result["render_s"] * gangs / args.videos, 3),
        "videos_per_gang": by_gang,
        "actors": probes,
        "busy_cores": used,
    }


def local_run(args, root: Path) -> dict:
    import torch

    from ditfarm.jobs.driver import LocalRenderer, RenderSettings

    torch.set_num_threads(1)
    settings = RenderSettings(model=args.model, steps=args.steps, gangs=0, overlap=args.overlap)
    renderer = LocalRenderer(settings)
    timed_job(tasks("warm0-", 1), root / "warm-local", settings, renderer)
    cpu = harness.CpuMeter({"driver process": [os.getpid()]}, children=True)
    result = timed_job(tasks("v", args.videos), root / "out-local", settings, renderer)
    return {
        "gangs": 0,
        "renderer": "LocalRenderer (no Ray), 1 torch thread",
        **result,
        "busy_cores": cpu.cores(result["whole_s"]),
    }


def main(argv=None) -> int:
    parser = harness.parser(__doc__, threads=False, json_default=HERE / "gang-scaling.json")
    parser.add_argument("--videos", type=int, default=16)
    parser.add_argument("--gangs", default="1,2", help="comma-separated gang counts")
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--steps", type=int, help="denoising steps (default: the model's, 30)")
    parser.add_argument("--num-cpus", type=int, default=2, help="CPUs given to the local Ray")
    parser.add_argument(
        "--no-overlap",
        dest="overlap",
        action="store_false",
        help="one video per gang at a time (the default keeps two in flight)",
    )
    parser.add_argument("--local", action="store_true", help="also the same videos on LocalRenderer, no Ray")
    args = parser.parse_args(argv)
    import ray

    ray.init(
        address="local",
        num_cpus=args.num_cpus,
        log_to_driver=False,  # never a `ray start` cluster
        include_dashboard=False,
    )
    counts = [int(g) for g in args.gangs.split(",")]
    result = {
        "ray_num_cpus": args.num_cpus,
        "model": args.model,
        "steps": args.steps,
        "overlap": args.overlap,
        "OMP_NUM_THREADS": os.environ["OMP_NUM_THREADS"],
        "load_average_at_start": list(os.getloadavg()),
        "runs": [],
    }
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for g in counts:
                result["runs"].append(gangs_run(g, args, Path(tmp)))
                r = result["runs"][-1]
                print(f"  {g} gang(s): {r['videos_per_min']} videos/min", file=sys.stderr, flush=True)
            if args.local:
                result["runs"].append(local_run(args, Path(tmp)))
    finally:
        ray.shutdown()
    result["load_average_at_end"] = list(os.getloadavg())
    by = {r["gangs"]: r for r in result["runs"]}
    if 1 in by and 2 in by:
        result["ratio_2_over_1"] = round(by[2]["videos_per_min"] / by[1]["videos_per_min"], 2)
        result["ratio_2_over_1_whole"] = round(by[2]["videos_per_min_whole"] / by[1]["videos_per_min_whole"], 2)
    print(
        f"\n{args.model}, {args.videos} videos per run (+1 warm-up per gang, not counted), sp=1, Ray num_cpus="
        f"{args.num_cpus}, overlap={args.overlap}, OMP_NUM_THREADS={result['OMP_NUM_THREADS']}"
    )
    print(
        "| gangs | videos/min (render) | videos/min (whole job) | wall s / video | gang-s / video | row seconds, "
        "median | videos per gang | busy cores: actors, driver, machine | gang start |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in result["runs"]:
        c = r["busy_cores"]
        actors = " + ".join(str(v) for k, v in c.items() if k.startswith("actor")) or "-"
        print(
            f"| {r['gangs'] or 'local'} | {r['videos_per_min']} | {r['videos_per_min_whole']} | "
            f"{r['wall_s_per_video']} | {r.get('gang_s_per_video', '-')} | {r['row_seconds_median']} | "
            f"{r.get('videos_per_gang', '-')} | {actors}, {c['driver process']}, {c[harness.CpuMeter.MACHINE]} | "
            f"{r.get('start_s', '-')} s |"
        )
    if "ratio_2_over_1" in result:
        print(
            f"\n2 gangs / 1 gang: {result['ratio_2_over_1']}x (render), {result['ratio_2_over_1_whole']}x (whole job)"
        )
    for r in result["runs"]:
        for a in r.get("actors", []):
            print(
                f"  gangs={r['gangs']} actor pid {a['pid']}: torch threads {a['torch_threads']}, interop "
                f"{a['torch_interop_threads']}, OMP_NUM_THREADS={a['OMP_NUM_THREADS']}, "
                f"affinity {a['affinity_cpus']} CPUs"
            )
    harness.write_result(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
