"""A mixed manifest on two gangs of `tiny`: does shape- and LoRA-aware scheduling make a shuffled manifest cost what
the same rows sorted by hand cost?

The manifest: 3 shapes (frames x height x width) x 3 LoRAs x 2 step counts, 48 rows, each combination two or
three times.  Three runs of the same rows on the same two gangs (sp 1, one Ray CPU each, a local Ray of
``--num-cpus``), each into a fresh folder:

- ``sorted``: the rows sorted by shape, LoRA and steps (what a user would do by hand), warm scheduling;
- ``shuffled``: the rows in a seeded random order, warm scheduling (``cluster/warm_gangs.py``: a free gang takes
  the waiting video of the shape and LoRA it rendered last);
- ``shuffled, shape-blind``: the same shuffled rows, each video taking the first free gang.

With ``--repeats N`` the three runs are made N times, each round in another order of the three and with its own
shuffle; each run is compared with the sorted run of its own round, and the median and range of that ratio are
reported.  Reported per run: videos per minute (job start to the last row); the ranks' busy seconds (the rows'
own ``seconds`` summed: what the order costs the ranks in graphs, switches and loads, which the drain does not
blur: on 48 rows the drain, where one gang may wait for the other's last video, weighs as much as the order, and
a sorted manifest ends on its largest shape); the driver's CPU seconds; the share of videos given a gang warm for
them; and per rank what the run cost it: LoRA loads (files read and loaded; a switch between loaded ones reads
nothing) and, with ``--compile``, compiled graphs.  Gangs are started afresh for each run (nothing is warm from
the run before), and one warm-up video per gang (the base model, the first shape) is rendered first, outside
the count, so process start-up is not counted either.

    python benchmarks/mixed_manifest.py --repeats 3 --json benchmarks/mixed-manifest.json
    python benchmarks/mixed_manifest.py --repeats 3 --compile eager --json benchmarks/mixed-manifest-compile.json
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch or Ray: every worker inherits it
os.environ.setdefault("MKL_NUM_THREADS", "1")

import random  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import harness  # noqa: E402

SHAPES = [(8, 32, 32), (4, 32, 32), (8, 48, 48)]  # frames, height, width
STEPS = [8, 12]
ROWS = 48
PROMPTS = [
    "red circle moving left on blue background",
    "white square moving up on green gradient background",
    "yellow triangle moving right on black background",
]


def make_loras(root: Path) -> list[str]:
    from ditfarm.pipelines.lora import make_random_lora
    from ditfarm.types import RenderSettings
    from ditfarm.worker.model import load_model

    transformer = load_model(RenderSettings(model="tiny")).pipe.transformer
    return [str(make_random_lora(transformer, root / f"lora-{i}.safetensors", seed=i, std=0.05)) for i in range(3)]


def manifest_rows(loras: list[str]) -> list[dict]:
    combos = [(shape, lora, steps) for shape in SHAPES for lora in loras for steps in STEPS]
    rows = []
    for i in range(ROWS):
        (frames, height, width), lora, steps = combos[i % len(combos)]
        rows.append(
            {
                "id": f"m{i:03d}",
                "prompt": PROMPTS[i % len(PROMPTS)],
                "seed": 100 + i,
                "num_frames": frames,
                "height": height,
                "width": width,
                "steps": steps,
                "lora": lora,
            }
        )
    return rows


def tasks(rows: list[dict]):
    from ditfarm.jobs.manifest import RenderTask

    return [RenderTask(row=i, **row) for i, row in enumerate(rows)]


def rank_counts(renderer) -> list[dict]:
    """Per rank: LoRAs loaded and compiled graphs so far (read inside each actor)."""
    import ray

    def probe(self):
        from ditfarm.pipelines.compile import compiled_graphs

        slots = getattr(self.renderer.pipe, "_lora_slots", None)
        return {"lora_loads": slots.loads if slots is not None else 0, "compiled_graphs": compiled_graphs()}

    return [ray.get(m.__ray_call__.remote(probe)) for g in renderer.pool.gangs for m in g.members]


def timed_run(name: str, rows: list[dict], args, root: Path, shape_blind: bool) -> dict:
    import ditfarm.cluster.gang as gang_module
    from ditfarm.jobs.driver import RenderJob, RenderSettings
    from ditfarm.jobs.gang_renderer import GangRenderer

    settings = RenderSettings(model="tiny", gangs=2, sp=1, compile=args.compile)
    renderer = GangRenderer(settings)
    real_key = gang_module.warm_key
    try:
        warm_up = [{"id": f"w{i}", "prompt": PROMPTS[0], "seed": i} for i in range(2)]
        for _ in RenderJob(tasks(warm_up), root / f"{name}-warm", settings, renderer=renderer, progress=False):
            pass
        before = rank_counts(renderer)
        hits_before = renderer.pool.warm_hits
        if shape_blind:
            gang_module.warm_key = lambda row: None
        start, cpu_start = time.perf_counter(), time.process_time()
        job = RenderJob(tasks(rows), root / name, settings, renderer=renderer, progress=False, total=len(rows))
        finished, results = [], []
        for row in job:
            finished.append(time.perf_counter() - start)
            results.append(row)
        assert job.summary.ok == len(rows), job.summary
        driver_cpu_s = time.process_time() - cpu_start
        after = rank_counts(renderer)
    finally:
        gang_module.warm_key = real_key
        renderer.close()
    seconds = finished[-1]
    return {
        "run": name,
        "videos": len(rows),
        "render_s": round(seconds, 2),
        "videos_per_min": round(60 * len(rows) / seconds, 2),
        "busy_s": round(sum(row["seconds"] for row in results), 2),
        "driver_cpu_s": round(driver_cpu_s, 2),
        "warm_share": round((renderer.pool.warm_hits - hits_before) / len(rows), 3),
        "lora_loads_per_rank": [a["lora_loads"] - b["lora_loads"] for a, b in zip(after, before)],
        "compiled_graphs_per_rank": [a["compiled_graphs"] - b["compiled_graphs"] for a, b in zip(after, before)],
    }


def main() -> None:
    p = harness.parser(__doc__, threads=False)
    p.add_argument(
        "--compile",
        nargs="?",
        const="inductor",
        default=None,
        help="compile the blocks with this torch.compile backend (default inductor; eager traces the same graphs "
        "without building kernels); graphs are counted per rank",
    )
    p.add_argument("--num-cpus", type=int, default=2)
    p.add_argument("--seed", type=int, default=7, help="the first round's shuffle seed (round r: seed + r)")
    p.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="rounds of the three runs (each round in another order, so a drifting machine favours none)",
    )
    args = p.parse_args()
    import ray

    names = ["sorted", "shuffled", "shuffled, shape-blind"]
    rounds = []
    ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory() as folder:
            root = Path(folder)
            rows = manifest_rows(make_loras(root))
            ordered = sorted(rows, key=lambda r: (r["num_frames"], r["height"], r["width"], r["lora"], r["steps"]))
            for r in range(args.repeats):
                shuffled = list(rows)
                random.Random(args.seed + r).shuffle(shuffled)  # each round its own order: its own tail
                orders = {names[0]: ordered, names[1]: shuffled, names[2]: shuffled}
                turn = names[r % 3 :] + names[: r % 3]
                done = {
                    name: timed_run(f"{name} #{r}", orders[name], args, root, shape_blind=name == names[2])
                    for name in turn
                }
                rounds.append([done[name] | {"run": name, "round": r} for name in names])
    finally:
        ray.shutdown()
    runs = []
    for round_runs in rounds:
        sorted_rate, sorted_busy = round_runs[0]["videos_per_min"], round_runs[0]["busy_s"]
        for run in round_runs:
            run["of_sorted"] = round(run["videos_per_min"] / sorted_rate, 3)
            run["busy_of_sorted"] = round(run["busy_s"] / sorted_busy, 3)
            runs.append(run)
    header = [
        "run",
        "round",
        "videos",
        "render_s",
        "videos_per_min",
        "of_sorted",
        "busy_s",
        "busy_of_sorted",
        "driver_cpu_s",
        "warm_share",
    ]
    header += ["lora_loads_per_rank", "compiled_graphs_per_rank"]
    print(harness.markdown_table(header, [[run[h] for h in header] for run in runs]))
    summary = []
    for name in names:
        ratios = sorted(run["of_sorted"] for run in runs if run["run"] == name)
        busy = sorted(run["busy_of_sorted"] for run in runs if run["run"] == name)
        rates = sorted(run["videos_per_min"] for run in runs if run["run"] == name)
        summary.append(
            {
                "run": name,
                "rounds": len(ratios),
                "median_videos_per_min": statistics.median(rates),
                "median_of_sorted": round(statistics.median(ratios), 3),
                "of_sorted_min": ratios[0],
                "of_sorted_max": ratios[-1],
                "median_busy_of_sorted": round(statistics.median(busy), 3),
                "busy_of_sorted_min": busy[0],
                "busy_of_sorted_max": busy[-1],
            }
        )
    if args.repeats > 1:
        keys = list(summary[0])
        print(harness.markdown_table(keys, [[s[k] for k in keys] for s in summary]))
    result = {"compile": args.compile, "gangs": 2, "shapes": SHAPES, "waiting_per_gang": waiting_per_gang()}
    harness.write_result(args.json, result | {"runs": runs, "summary": summary})


def waiting_per_gang() -> int:
    from ditfarm.cluster.warm_gangs import WAITING_PER_GANG

    return WAITING_PER_GANG


if __name__ == "__main__":
    main()
