r"""How many videos per second the batch driver sustains when its renderers answer at once, and what a resume costs.

1. Throughput.  A manifest of N rows on moto's S3 server (127.0.0.1, its own process), the whole job as
   ``ditfarm render`` runs it (``manifest_job``: lease, resume listing, results rows flushed to S3 as parts of
   ``flush_every=32``, progress lines, Ray metrics when Ray is up, report.html at the end), with a renderer that
   does no rendering.  Its ``render()`` either
     - ``ray``: calls one Ray actor per slot (``--capacity`` of them, as a GangRenderer calls rank 0 of a gang),
       which answers at once, or
     - ``inproc``: answers in the calling thread (no Ray; ``inproc+ray`` is the same with Ray initialised, so the
       driver's Ray metrics are on: what separates the metrics' cost from the actor calls' cost).
   Each either returns only the answer (``answer``: a URI, no object written) or first stores a small pre-made mp4
   through the output store, as rank 0 does (``put``: one PUT per video, from the actor in ``ray`` mode).
   Reported: videos/s for the whole job (construction to the end of the report) and in steady state (rows 10% to
   90%), where the fixed time goes (construction; the end: last flush + report.html), a rerun that skips every
   id, and the CPU time per video of the driver process, moto, the actors and the whole machine.  Then (unless
   ``--no-profile``) one more job (``--profile-mode``, ``ray/put``) in a child process under ``py-spy --gil``:
   the driver process's hottest functions.
   Beside it, what one small PUT costs the storing process: the store's path (temp file + boto3 upload_file)
   against a plain put_object.
2. Resume listing: ``completed_ids(store)`` on an output holding N ok ids as parts of 32 rows (and N video
   objects), on moto and in a local folder, split into its listing of results/, reading the parts and listing
   videos/; per-part and per-id costs extrapolated to 10M ids.  Each store is filled in two halves and listed
   after each, to show how the costs grow (moto scans and sorts a whole bucket for every 1000-key list page, so
   its videos/ listing grows faster than linearly; S3's does not).  Ray is shut down before this part.
3. Results parts per day at a given throughput (arithmetic from flush_every and flush_seconds).

    python benchmarks/driver_throughput.py --videos 5000 --capacity 8,16 --listing-ids 100000 \
        --json benchmarks/driver-throughput.json
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import harness
import numpy as np
import pyarrow as pa
from harness import HERE
from storage_overhead import PROMPTS, put_table, start_s3

MODES = ("inproc/answer", "inproc/put", "inproc+ray/answer", "inproc+ray/put", "ray/answer", "ray/put")


def small_mp4() -> bytes:
    """One `tiny`-sized video (8 frames, 32x32 upscaled 8x to 256x256), encoded once."""
    from ditfarm.pipelines.video_io import write_mp4

    t, y, x = np.mgrid[0:8, 0:32, 0:32]
    frames = np.stack([(x * 8 + t * 16) % 256, y * 8, (x + y) * 4], -1).astype(np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        return write_mp4(frames, Path(tmp) / "v.mp4", fps=8, upscale=8).read_bytes()


def store_bytes(store, video_id: str, data: bytes) -> str:
    """Publish ``data`` as videos/<id>.mp4 the way rank 0 publishes its encoded mp4 (temp file, then upload)."""
    return store.store_video(video_id, lambda path: Path(path).write_bytes(data)).uri


def object_key(uri: str) -> str:
    """The key of an ``s3://bucket/key`` URI (the bench writes some objects around the store, to time them)."""
    return uri.split("/", 3)[3]


def answered(task, uri: str):
    from ditfarm.types import RenderedVideo

    return RenderedVideo(uri, task.seed, 8, 32, 32, 30, "tiny", 0.0)


class InProcessRenderer:
    """Answers at once in the driver's render thread; with ``video`` stores it first (one PUT)."""

    def __init__(self, capacity: int, video: bytes | None):
        self.capacity, self.video = capacity, video
        self._stores = {}
        self._lock = threading.Lock()

    def render(self, task, settings, out):
        if self.video is None:
            return answered(task, out.join("videos", f"{task.id}.mp4"))
        with self._lock:
            store = self._stores.get(out) or self._stores.setdefault(out, out.open())
        return answered(task, store_bytes(store, task.id, self.video))


def ray_answerer():
    import ray

    @ray.remote(num_cpus=0, max_restarts=0)
    class Answerer:
        """Stands for rank 0 of a gang whose render is instantaneous."""

        def __init__(self, video: bytes | None):
            self.video, self.stores = video, {}

        def render(self, video_id: str, out) -> dict:
            if self.video is None:
                return {"uri": out.join("videos", f"{video_id}.mp4")}
            store = self.stores.get(out) or self.stores.setdefault(out, out.open())
            return {"uri": store_bytes(store, video_id, self.video)}

        def pid(self) -> int:
            return os.getpid()

    return Answerer


class RayRenderer:
    """``capacity`` actors; a render() call borrows a free one (as GangPool lends gangs) and waits on its answer."""

    def __init__(self, capacity: int, video: bytes | None):
        import ray

        from ditfarm.storage.stores import storage_env

        Answerer = ray_answerer()
        env = {"env_vars": storage_env()}
        self.actors = [Answerer.options(runtime_env=env).remote(video) for _ in range(capacity)]
        ray.get([a.__ray_ready__.remote() for a in self.actors])
        self.capacity = capacity
        self.free: queue.Queue = queue.Queue()
        for a in self.actors:
            self.free.put(a)

    def render(self, task, settings, out):
        import ray

        actor = self.free.get()
        try:
            result = ray.get(actor.render.remote(task.id, out))
        finally:
            self.free.put(actor)
        return answered(task, result["uri"])

    def pids(self) -> list[int]:
        import ray

        return ray.get([a.pid.remote() for a in self.actors])

    def gang_health(self):  # as GangRenderer: the progress line and the gauges show it
        return self.capacity, 0

    def close(self):
        import ray

        for a in self.actors:
            ray.kill(a)


def run_job(manifest: str, out: str, renderer, settings, progress: bool) -> dict:
    """One whole job: construction (lease, listing) to the end of iteration (last flush, report.html)."""
    from ditfarm.jobs.driver import manifest_job

    start = time.perf_counter()
    job = manifest_job(manifest, out, settings, renderer=renderer, progress=progress)
    built = time.perf_counter()
    stamps = []
    for _ in job:
        stamps.append(time.perf_counter())
    end = time.perf_counter()
    s = job.summary
    n = len(stamps)
    lo, hi = n // 10, (9 * n) // 10
    steady = (hi - lo) / (stamps[hi - 1] - stamps[lo - 1]) if n >= 20 else None
    return {
        "ok": s.ok,
        "failed": s.failed,
        "skipped": s.skipped,
        "parts": len(job.writer.parts),
        "construction_s": round(built - start, 3),
        "first_row_s": round(stamps[0] - built, 3) if n else None,
        "end_s": round(end - stamps[-1], 3) if n else None,  # last flush + report.html
        "whole_s": round(end - start, 3),
        "videos_per_s_whole": round(s.ok / (end - start), 1),
        "videos_per_s_steady": round(steady, 1) if steady else None,
    }


def capacities(args) -> list[int]:
    return [int(c) for c in str(args.capacity).split(",")]


def throughput(s3, args, video: bytes, server_pid: int | None) -> list[dict]:
    import ray

    from ditfarm.types import RenderSettings

    table = pa.table(
        {
            "id": [f"v{i:07d}" for i in range(args.videos)],
            "prompt": [PROMPTS[i % 4] for i in range(args.videos)],
            "seed": pa.array(range(args.videos), pa.int64()),
        }
    )
    manifest = put_table(s3, "throughput/manifest.parquet", table)
    settings = RenderSettings(model="tiny")  # default flush_every=32, flush_seconds=60
    rows = []
    modes = [m for m in MODES if m in args.modes.split(",")]
    warm = min(200, args.videos)  # first-job costs (lazy imports, first client, first part) are not measured
    if not args.child:  # (the profiled child leaves them in and the profile's summary leaves them out)
        warm_manifest = put_table(s3, "throughput/warm.parquet", table.slice(0, warm))
        run_job(warm_manifest, f"s3://bench/warm-{uuid.uuid4().hex[:6]}", InProcessRenderer(8, video), settings, False)
    order = sorted(modes, key=lambda m: not m.startswith("inproc/"))  # without Ray first, then ray.init
    for mode, capacity in [(m, c) for m in order for c in capacities(args)]:
        kind, answer = mode.split("/")
        if kind != "inproc" and not ray.is_initialized():
            ray.init(address="local", num_cpus=os.cpu_count(), log_to_driver=False, include_dashboard=False)
        data = video if answer == "put" else None
        renderer = RayRenderer(capacity, data) if kind == "ray" else InProcessRenderer(capacity, data)
        out = f"s3://bench/out-{mode.replace('/', '-').replace('+', '-')}-{uuid.uuid4().hex[:6]}"
        pids = {"moto server": [server_pid] if server_pid else []}
        if kind == "ray":
            pids["actors"] = renderer.pids()
        cpu = harness.CpuMeter({"driver process": [os.getpid()], **pids})
        row = {
            "mode": mode,
            "videos": args.videos,
            "capacity": capacity,
            **run_job(manifest, out, renderer, settings, args.progress),
        }
        row["cpu_ms_per_video"] = cpu.per_video_ms(args.videos)
        row["machine_busy_cores"] = round(
            row["cpu_ms_per_video"]["machine (all processes)"] * args.videos / 1000 / row["whole_s"], 2
        )
        if answer == "put":  # a rerun finds every id ok and renders nothing
            rerun = run_job(manifest, out, renderer, settings, False)
            row["rerun_s"], row["rerun_skipped"] = rerun["whole_s"], rerun["skipped"]
        if kind == "ray":
            renderer.close()
        rows.append(row)
        print(
            f"  {mode} x {capacity}: {row['videos_per_s_whole']} videos/s whole, {row['videos_per_s_steady']} steady",
            file=sys.stderr,
            flush=True,
        )
    return rows


def profile(args, video: bytes, s3_env: dict) -> dict | None:
    """One job (``--profile-mode``) in a child process under py-spy, sampling whichever thread holds the GIL (the
    driver process's Python time: what limits a process with one GIL); the functions with the most own samples and
    the driver code's inclusive shares."""
    import shutil

    pyspy = shutil.which("py-spy")
    if pyspy is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "profile.txt"
        child = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--videos",
            str(args.videos),
            "--capacity",
            str(capacities(args)[0]),
            "--modes",
            args.profile_mode,
            "--listing-ids",
            "0",
            "--no-profile",
            "--child",
            "--json",
            str(Path(tmp) / "child.json"),
        ]
        record = [pyspy, "record", "--gil", "--format", "raw", "--rate", "200", "-o", str(raw), "--"]
        proc = subprocess.run([*record, *child], capture_output=True, text=True, env={**os.environ, **s3_env})
        if proc.returncode != 0 or not raw.exists():
            print(proc.stderr[-2000:], file=sys.stderr)
            return None
        child_result = json.loads((Path(tmp) / "child.json").read_text())
        return {"job": child_result["throughput"][0], **summarise_profile(raw.read_text())}


def summarise_profile(text: str, top: int = 25) -> dict:
    """py-spy raw (collapsed stacks, root first): own and inclusive sample shares per function, by thread kind."""
    own, inclusive, by_thread = {}, {}, {}
    total = imports = setup = 0
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = [clean(f) for f in stack.split(";")]
        if any("_find_and_load" in f for f in frames):  # module imports: once per process, not per video
            imports += n
            continue
        if "main (benchmarks/driver_throughput.py)" in frames and not any("run_job" in f for f in frames):
            setup += n  # ray.init, the manifest, the mp4: the benchmark's, not the job's
            continue
        total += n
        kind = thread_kind(frames)
        by_thread[kind] = by_thread.get(kind, 0) + n
        own[frames[-1]] = own.get(frames[-1], 0) + n
        for f in set(frames[1:]):
            inclusive[f] = inclusive.get(f, 0) + n

    def pct(d):
        return [
            {"function": k, "pct": round(100 * v / total, 1)} for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:top]
        ]

    threads = {k: round(100 * v / total, 1) for k, v in sorted(by_thread.items(), key=lambda kv: -kv[1])}
    return {
        "samples": total,
        "import_samples_excluded": imports,
        "setup_samples_excluded": setup,
        "by_thread": threads,
        "own": pct(own),
        "inclusive": pct(
            {k: v for k, v in inclusive.items() if "jobs/" in k or "cluster/" in k or "Renderer.render" in k}
        ),
    }


def clean(frame: str) -> str:
    """'function (/path/to/dir/file.py:123)' -> 'function (dir/file.py)'; py-spy's raw frames carry the line."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = path.split("/")
    short = "/".join(parts[-2:]) if len(parts) > 1 else path
    return f"{name} ({short})"


def thread_kind(frames: list[str]) -> str:
    text = ";".join(frames)
    if "render_one" in text or "start_render" in text:
        return "render threads (render_one: the renderer's call)"
    if "lease.py" in text:
        return "lease renewal"
    if "__iter__ (jobs/driver.py)" in text or "run_job" in text or "finish_one" in text:
        return "driver thread (RenderJob.__iter__)"
    if "ray/" in text or "_raylet" in text:
        return "Ray's own threads"
    return "other"


def make_output(store, first: int, ids: int, per_part: int, local: bool) -> float:
    """Ok rows for ids ``first`` to ``first + ids`` in parts of ``per_part`` rows, and one (empty) video object per
    id; returns the seconds it took."""
    from datetime import datetime, timezone

    from ditfarm.jobs.results import RESULT_SCHEMA

    store.check_writable()
    now = datetime.now(timezone.utc)
    names = [f"r{i:08d}" for i in range(first, first + ids)]

    def part(p: int):
        chunk = names[p * per_part : (p + 1) * per_part]
        table = pa.Table.from_pylist(
            [
                {
                    "id": i,
                    "status": "ok",
                    "uri": store.video_uri(i),
                    "seed": 0,
                    "frames": 8,
                    "height": 32,
                    "width": 32,
                    "steps": 30,
                    "model": "tiny",
                    "seconds": 1.0,
                    "cache": "none",
                    "skipped_fraction": 0.0,
                    "attempts": 1,
                    "video_bytes": 0,  # as stored: the empty objects below (a rerun checks the size it recorded)
                    "finished_at": now,
                }
                for i in chunk
            ],
            schema=RESULT_SCHEMA,
        )
        store.write_part(f"part-20261201T000000000000-bench-{first:09d}-{p:07d}.parquet", table)

    def video(i: str):
        if local:
            (store.videos / f"{i}.mp4").write_bytes(b"")
        else:
            store.client.put_object(Bucket=store.bucket, Key=object_key(store.video_uri(i)), Body=b"")

    start = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(part, range((ids + per_part - 1) // per_part)))
        list(pool.map(video, names, chunksize=256))
    return time.perf_counter() - start


def listing(store, ids: int, per_part: int, target_ids: int) -> dict:
    """completed_ids and its three steps, timed separately; Python-heap peak (tracemalloc: not Arrow's buffers)
    measured on a second call."""
    from ditfarm.jobs.results import completed_ids

    timings = {"completed_ids_s": float("inf")}
    for _ in range(2):  # the better of two calls: the first one also pays for cold caches
        start = time.perf_counter()
        done = completed_ids(store)
        timings["completed_ids_s"] = min(timings["completed_ids_s"], time.perf_counter() - start)
    assert len(done) == ids, (len(done), ids)
    start = time.perf_counter()
    names = store.part_names()
    timings["list_results_s"] = time.perf_counter() - start
    start = time.perf_counter()
    store.read_results(["id", "status"])
    timings["read_parts_s"] = time.perf_counter() - start
    start = time.perf_counter()
    store.video_ids()
    timings["list_videos_s"] = time.perf_counter() - start
    parts = len(names)
    tracemalloc.start()
    completed_ids(store)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    per_part_s = (timings["list_results_s"] + timings["read_parts_s"]) / parts
    per_id_s = timings["list_videos_s"] / ids
    rest_s = timings["completed_ids_s"] - timings["list_results_s"] - timings["read_parts_s"] - timings["list_videos_s"]
    scale = target_ids / ids
    target_parts = (target_ids + per_part - 1) // per_part
    return {
        "ids": ids,
        "parts": parts,
        "rows_per_part": per_part,
        **{k: round(v, 3) for k, v in timings.items()},
        "per_part_ms": round(1000 * per_part_s, 3),
        "per_video_id_us": round(1e6 * per_id_s, 2),
        "python_heap_peak_mib": round(peak / 2**20, 1),
        "extrapolated": {
            "ids": target_ids,
            "parts": target_parts,
            "completed_ids_s": round(per_part_s * target_parts + per_id_s * target_ids + max(0.0, rest_s) * scale),
            "python_heap_peak_gib": round(peak * scale / 2**30, 2),
        },
    }


def resume_listing(s3, args) -> list[dict]:
    """Each store filled in two halves, listed after each: the second point shows how the costs grow with size."""
    from ditfarm.storage.stores import LocalStore, S3Store

    rows = []
    s3.create_bucket(Bucket="bench-listing")  # its own bucket: moto scans a whole bucket on every list page
    half = args.listing_ids // 2
    with tempfile.TemporaryDirectory() as tmp:
        for where in ("local folder", "moto S3"):
            local = where == "local folder"
            store = LocalStore(Path(tmp) / "out") if local else S3Store("bench-listing", "listing")
            setup_s = 0.0
            for first, ids in ((0, half), (half, args.listing_ids - half)):
                setup_s += make_output(store, first, ids, args.listing_rows_per_part, local)
                rows.append(
                    {
                        "store": where,
                        "setup_s": round(setup_s, 1),
                        **listing(store, first + ids, args.listing_rows_per_part, args.extrapolate_ids),
                    }
                )
                print(
                    f"  listing on {where}, {first + ids} ids: {rows[-1]['completed_ids_s']} s",
                    file=sys.stderr,
                    flush=True,
                )
    return rows


def parts_per_day(flush_every: int, flush_seconds: float, rates: list[float]) -> list[dict]:
    """A part is written at ``flush_every`` rows or ``flush_seconds`` after its oldest row.  At R videos/s the
    count is reached first when R * flush_seconds >= flush_every - 1 (the oldest row plus the ones that follow
    within the window); else a part holds 1 + floor(R * flush_seconds) rows, the next part starting with the
    next row.  Plus one part per run for its tail."""
    out = []
    for r in rates:
        rows = flush_every if r * flush_seconds >= flush_every - 1 else 1 + int(r * flush_seconds)
        per_day = 86400 * r / rows
        out.append(
            {
                "videos_per_s": r,
                "videos_per_day": round(86400 * r),
                "rows_per_part": rows,
                "parts_per_day": round(per_day),
                "parts_per_10M_ids": round(10_000_000 / rows),
            }
        )
    return out


def save(path: Path, result: dict) -> None:
    harness.write_result(path, result)


def put_cost(video: bytes, calls: int) -> list[dict]:
    """What one video's PUT costs the process that stores it: the store's path (a temporary file, then boto3's
    upload_file) against a plain put_object of the same bytes; moto's CPU beside it."""
    import psutil

    from ditfarm.storage.stores import S3Store

    store = S3Store("bench", f"put-cost-{uuid.uuid4().hex[:6]}")
    server = next((p for p in psutil.Process().children() if "moto" in " ".join(p.cmdline())), None)
    calls_by_name = {
        "store_video (temp file + upload_file), as rank 0 does": lambda i: store_bytes(store, f"s{i}", video),
        "put_object of the bytes": lambda i: store.client.put_object(
            Bucket="bench", Key=object_key(store.video_uri(f"p{i}")), Body=video
        ),
    }
    out = []
    for name, call in calls_by_name.items():
        call(-1)  # first call: the client and its imports
        moto = server.cpu_times() if server else None
        wall, cpu = time.perf_counter(), time.process_time()
        for i in range(calls):
            call(i)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        moto_s = sum(server.cpu_times()[:2]) - sum(moto[:2]) if server else float("nan")
        out.append(
            {
                "call": name,
                "calls": calls,
                "wall_ms": round(1000 * wall / calls, 2),
                "cpu_ms": round(1000 * cpu / calls, 2),
                "moto_cpu_ms": round(1000 * moto_s / calls, 2),
            }
        )
    return out


def main(argv=None) -> int:
    parser = harness.parser(__doc__, threads=False, json_default=HERE / "driver-throughput.json")
    parser.add_argument("--videos", type=int, default=5000)
    parser.add_argument(
        "--capacity",
        default="8",
        help="renders in flight (actors in ray mode); a comma-separated list runs every mode at each",
    )
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}")
    parser.add_argument("--listing-ids", type=int, default=100_000, help="ok ids for the resume listing (0: skip)")
    parser.add_argument("--listing-rows-per-part", type=int, default=32)
    parser.add_argument("--extrapolate-ids", type=int, default=10_000_000)
    parser.add_argument("--no-profile", dest="profile", action="store_false", help="skip the py-spy profile")
    parser.add_argument("--put-calls", type=int, default=500, help="calls in the one-PUT cost check")
    parser.add_argument("--profile-mode", default="ray/put", choices=MODES)
    parser.add_argument("--progress", action="store_true", help="the driver's plain progress lines on stderr")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if not (args.child and "AWS_ENDPOINT_URL" in os.environ):
        server, s3 = start_s3()
    else:  # the profiled child uses its parent's server
        import boto3

        server, s3 = None, boto3.client("s3")
    s3_env = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    try:
        video = small_mp4()
        result = {
            "mp4_bytes": len(video),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
            "settings": {"flush_every": 32, "flush_seconds": 60.0, "capacity": capacities(args)},
        }
        result["throughput"] = throughput(s3, args, video, server.pid if server is not None else None)
        import ray

        ray.shutdown()  # what follows needs no Ray (a `ray stop` elsewhere on the machine cannot end it)
        if args.child:
            save(args.json, result)
            return 0
        print(
            f"\nDriver throughput, {args.videos} videos, results to moto S3 "
            f"(flush_every=32); {len(video):,}-byte mp4 per PUT"
        )
        print(
            "| renderer | capacity | videos/s, whole job | videos/s, steady (rows 10-90%) | construction | end (flush + "
            "report) | rerun (all skipped) | CPU ms / video: driver process, moto, actors, whole machine | "
            "busy cores |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for r in result["throughput"]:
            rerun = f"{r['rerun_s']} s" if "rerun_s" in r else "-"
            c = r["cpu_ms_per_video"]
            print(
                f"| {r['mode']} | {r['capacity']} | {r['videos_per_s_whole']} | {r['videos_per_s_steady']} | "
                f"{r['construction_s']} s"
                f" | {r['end_s']} s | {rerun} | {c['driver process']}, {c['moto server']}, {c.get('actors', '-')}, "
                f"{c['machine (all processes)']} | {r['machine_busy_cores']} |"
            )
        save(args.json, result)  # each section as it finishes
        result["put_cost"] = put_cost(video, args.put_calls)
        print(f"\nOne small PUT from the storing process, {args.put_calls} calls in a row, {len(video):,} bytes")
        print("| call | wall ms / call | CPU ms / call, this process | CPU ms / call, moto |\n|---|---|---|---|")
        for r in result["put_cost"]:
            print(f"| {r['call']} | {r['wall_ms']} | {r['cpu_ms']} | {r['moto_cpu_ms']} |")
        save(args.json, result)
        if args.profile:
            p = result["profile"] = profile(args, video, s3_env)
            if p:
                print(
                    f"\npy-spy, one {args.profile_mode} job ({p['job']['videos_per_s_whole']} videos/s whole under "
                    f"the "
                    f"profiler), {p['samples']} samples of the thread holding the driver process's GIL "
                    f"(left out: {p['import_samples_excluded']} samples of module imports, "
                    f"{p['setup_samples_excluded']} of "
                    f"the benchmark's own setup)"
                )
                print("| thread | share |\n|---|---|")
                for k, v in p["by_thread"].items():
                    print(f"| {k} | {v}% |")
                print("| function (own samples) | share |\n|---|---|")
                for f in p["own"][:15]:
                    print(f"| {f['function']} | {f['pct']}% |")
                print("| driver function (inclusive) | share |\n|---|---|")
                for f in p["inclusive"][:15]:
                    print(f"| {f['function']} | {f['pct']}% |")
        save(args.json, result)
        if args.listing_ids:
            result["resume_listing"] = resume_listing(s3, args)
            print(
                f"\ncompleted_ids(store): ok ids in parts of {args.listing_rows_per_part} rows, one video object each"
            )
            print(
                "| store | ids | parts | completed_ids | list results/ | read parts | list videos/ | per part | "
                f"per video id | Python heap peak | {args.extrapolate_ids:,} ids (extrapolated) |"
            )
            print("|---|---|---|---|---|---|---|---|---|---|---|")
            for r in result["resume_listing"]:
                e = r["extrapolated"]
                print(
                    f"| {r['store']} | {r['ids']:,} | {r['parts']:,} | {r['completed_ids_s']} s | "
                    f"{r['list_results_s']} s | "
                    f"{r['read_parts_s']} s | {r['list_videos_s']} s | {r['per_part_ms']} ms | "
                    f"{r['per_video_id_us']} us | {r['python_heap_peak_mib']} MiB | {e['completed_ids_s']:.0f} s, "
                    f"{e['parts']:,} parts, {e['python_heap_peak_gib']} GiB |"
                )
        rates = [100, 10, 1, 0.5, 0.1, 1 / 60, 1 / 600]
        result["parts_per_day"] = parts_per_day(32, 60.0, rates)
        print("\nResults parts per day (flush_every=32, flush_seconds=60)")
        print("| videos/s | videos/day | rows per part | parts/day | parts per 10M ids |\n|---|---|---|---|---|")
        for r in result["parts_per_day"]:
            print(
                f"| {r['videos_per_s']:.4g} | {r['videos_per_day']:,} | {r['rows_per_part']} | "
                f"{r['parts_per_day']:,} | {r['parts_per_10M_ids']:,} |"
            )
        result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
        save(args.json, result)
    finally:
        if server is not None:
            server.terminate()
            server.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
