"""What object storage costs a job, and what a million-row dry run costs, on moto's S3 server (127.0.0.1).

1. Overhead: the same rows rendered twice with one loaded `tiny` pipeline: render only (the pipeline's frames,
   nothing stored), then the whole job (S3 manifest in, mp4 encode + upload, results parts to S3).  The difference
   per video is the driver's and the storage's time; the target is at most 5% of the render time.  Wall time
   on a shared 2-core machine moves by several percent between rounds, so the CPU time of this process and its
   ffmpeg children (paired per round) and the time spent inside the storage calls are reported beside it.
2. Dry run: a 1,000,000-row manifest (local file, then the same object on S3) validated by `ditfarm render
   --dry-run` in a child process; peak RSS (the child's ru_maxrss) and wall time.

    python benchmarks/storage_overhead.py --videos 12 --rounds 3 --rows 1000000 --json benchmarks/storage-overhead.json
"""

from __future__ import annotations

import io
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import harness
import pyarrow as pa
import pyarrow.parquet as pq

PROMPTS = [
    "red circle moving left on blue background",
    "white square moving up on green gradient background",
    "yellow triangle moving right on black background",
    "blue circle moving down on white background",
]


def start_s3():
    """moto's server in its own process, as a real store would be: its CPU time is not the driver's."""
    import socket

    import boto3

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.environ.update(
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
    )
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="bench")
    return server, s3


def put_table(s3, key: str, table: pa.Table) -> str:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    s3.put_object(Bucket="bench", Key=key, Body=buffer.getvalue())
    return f"s3://bench/{key}"


class Timed:
    """Wraps a method and adds up the seconds spent in it."""

    def __init__(self, owner, name):
        self.owner, self.name, self.seconds, self.calls = owner, name, 0.0, 0
        self.inner = getattr(owner, name)
        timed = self

        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return timed.inner(*args, **kwargs)
            finally:
                timed.seconds += time.perf_counter() - start
                timed.calls += 1

        setattr(owner, name, wrapper)


def cpu_seconds() -> float:
    """This process's CPU time and that of its finished children (the ffmpeg encoders), user + system."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def overhead(s3, videos: int, steps: int | None, rounds: int) -> dict:
    """Alternating rounds of render-only and the whole job (fresh output each round); medians, plus the time
    measured inside the job's own storage calls."""
    import statistics

    from ditfarm.jobs import driver
    from ditfarm.jobs.driver import LocalRenderer, RenderSettings, render_manifest
    from ditfarm.jobs.manifest import Manifest
    from ditfarm.storage.stores import S3Store

    table = pa.table({"id": [f"o{i}" for i in range(videos)], "prompt": [PROMPTS[i % 4] for i in range(videos)]})
    manifest = put_table(s3, "overhead/m.parquet", table)
    settings = RenderSettings(model="tiny", steps=steps)
    renderer = LocalRenderer(settings)
    tasks = list(Manifest(manifest))
    renderer.frames(tasks[0], settings)  # warm-up, not counted
    publish = Timed(driver, "publish_video")  # encode the mp4 + upload it
    parts = Timed(S3Store, "write_part")
    render_only, whole_job, per_job, cpu_render, cpu_job = [], [], [], [], []
    for r in range(rounds):
        start, cpu = time.perf_counter(), cpu_seconds()
        for task in tasks:
            renderer.frames(task, settings)
        render_only.append(time.perf_counter() - start)
        cpu_render.append(cpu_seconds() - cpu)
        out = f"s3://bench/overhead/out-{r}"
        start, cpu = time.perf_counter(), cpu_seconds()
        summary = render_manifest(manifest, out, settings, renderer=renderer, progress=False)
        whole_job.append(time.perf_counter() - start)
        cpu_job.append(cpu_seconds() - cpu)
        assert summary.ok == videos, summary
        start = time.perf_counter()  # a rerun renders nothing: what every job pays once (checks, listing, results)
        assert render_manifest(manifest, out, settings, renderer=renderer, progress=False).skipped == videos
        per_job.append(time.perf_counter() - start)
    render_s, job_s, fixed_s = (statistics.median(x) for x in (render_only, whole_job, per_job))
    per_video_render = render_s / videos
    per_video_overhead = (job_s - render_s) / videos
    measured = (publish.seconds + parts.seconds) / (rounds * videos)
    cpu_extra = statistics.median(j - r for r, j in zip(cpu_render, cpu_job)) / videos
    cpu_per_video = statistics.median(cpu_render) / videos
    return {
        "videos": videos,
        "steps": steps,
        "rounds": rounds,
        "render_only_s": [round(x, 3) for x in render_only],
        "whole_job_s": [round(x, 3) for x in whole_job],
        "per_job_fixed_s": round(fixed_s, 3),
        "render_s_per_video": round(per_video_render, 4),
        "overhead_s_per_video": round(per_video_overhead, 4),
        "overhead_pct": round(100 * per_video_overhead / per_video_render, 2),
        "cpu_render_s": [round(x, 3) for x in cpu_render],
        "cpu_job_s": [round(x, 3) for x in cpu_job],
        "cpu_overhead_s_per_video": round(cpu_extra, 4),
        "cpu_overhead_pct": round(100 * cpu_extra / cpu_per_video, 2),
        "storage_calls_s_per_video": round(measured, 4),
        "storage_calls_pct": round(100 * measured / per_video_render, 2),
    }


def encode_cost(frames: int, height: int, width: int, repeats: int = 3) -> dict:
    """One Wan2.1-sized video (81 x 480 x 832 by default): raw bytes, mp4 bytes and the encode time on this CPU.
    The frames are a moving colour gradient with noise, closer to a rendered video than flat colour or pure noise."""
    import numpy as np

    from ditfarm.pipelines.video_io import write_mp4

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    video = np.empty((frames, height, width, 3), np.uint8)
    for t in range(frames):
        base = np.stack([(x + 4 * t) / width, y / height, (x + y - 3 * t) / (width + height)], -1) % 1.0
        video[t] = np.clip(base * 255 + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(repeats):
            start = time.perf_counter()
            path = write_mp4(video, Path(tmp) / "v.mp4", fps=16, upscale=1)
            times.append(time.perf_counter() - start)
        size = path.stat().st_size
    return {
        "frames": frames,
        "height": height,
        "width": width,
        "raw_mib": round(video.nbytes / 2**20, 1),
        "mp4_mib": round(size / 2**20, 2),
        "encode_s": round(min(times), 2),
    }


def million_rows(rows: int) -> pa.Table:
    ids = pa.array([f"row-{i:07d}" for i in range(rows)])
    prompts = pa.array(
        [PROMPTS[i % 4] if i % 1000 else "purple circle moving left on blue background" for i in range(rows)]
    )
    return pa.table({"id": ids, "prompt": prompts, "seed": pa.array(range(rows), pa.int64())})


CHILD = """
import resource, sys
from ditfarm.commands.cli import main
code = main(sys.argv[1:])
print("PEAK_RSS_KIB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
sys.exit(code)
"""


def dry_run_child(manifest: str, out: str) -> dict:
    """`ditfarm render --dry-run` in a fresh process that reports its own peak RSS."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, "render", manifest, "--out", out, "--dry-run"],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
    )
    seconds = time.perf_counter() - start
    if proc.returncode not in (0, 1):
        raise RuntimeError(proc.stderr)
    peak_kib = int(proc.stderr.rsplit("PEAK_RSS_KIB", 1)[1].split()[0])
    return {
        "manifest": "S3 object" if manifest.startswith("s3://") else "local file",
        "seconds": round(seconds, 1),
        "peak_rss_mib": round(peak_kib / 1024, 1),
        "summary": proc.stdout.splitlines()[0].split(": ", 1)[1],
    }


def main(argv=None) -> int:
    parser = harness.parser(__doc__, threads=False)
    parser.add_argument("--videos", type=int, default=16)
    parser.add_argument("--steps", type=int, help="denoising steps (default: the model's, 30)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating render-only / whole-job rounds")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--encode", default="81x480x832", help="FRAMESxHEIGHTxWIDTH of the full-size encode check")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    server, s3 = start_s3()
    try:
        result = {
            "overhead": overhead(s3, args.videos, args.steps, args.rounds),
            "dry_run": [],
        }
        o = result["overhead"]
        print(
            "| videos x rounds | render / video | job - render only, wall, per video | job - render only, CPU "
            "(with ffmpeg), per video | encode + upload + parts, timed inside the job | per job (a rerun) |"
        )
        print("|---|---|---|---|---|---|")
        print(
            f"| {o['videos']} x {o['rounds']} | {o['render_s_per_video']} s | {o['overhead_s_per_video']} s "
            f"({o['overhead_pct']}%) | {o['cpu_overhead_s_per_video']} s ({o['cpu_overhead_pct']}%) | "
            f"{o['storage_calls_s_per_video']} s ({o['storage_calls_pct']}%) | {o['per_job_fixed_s']} s |"
        )
        with tempfile.TemporaryDirectory() as tmp:
            table = million_rows(args.rows)
            local = Path(tmp) / "million.parquet"
            pq.write_table(table, local)
            remote = put_table(s3, "million/m.parquet", table)
            del table
            for manifest in (str(local), remote):
                result["dry_run"].append({"rows": args.rows, **dry_run_child(manifest, str(Path(tmp) / "out"))})
        print()
        print("| dry run | rows | seconds | peak RSS | summary |")
        print("|---|---|---|---|---|")
        for d in result["dry_run"]:
            print(f"| {d['manifest']} | {d['rows']:,} | {d['seconds']} | {d['peak_rss_mib']} MiB | {d['summary']} |")
        f, h, w = (int(v) for v in args.encode.split("x"))
        e = result["encode"] = encode_cost(f, h, w)
        print()
        print("| one video | raw frames | mp4 | encode (best of 3) |")
        print("|---|---|---|---|")
        print(
            f"| {e['frames']} x {e['height']} x {e['width']} | {e['raw_mib']} MiB | {e['mp4_mib']} MiB | {e['encode_s']} s |"
        )
        harness.write_result(args.json, result)
    finally:
        server.terminate()
        server.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
