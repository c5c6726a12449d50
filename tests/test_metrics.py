"""A job's Ray metrics reach the metrics export of the Ray node it runs on (where Prometheus and the Ray dashboard
read them), with the right counts: a `ray start --head` on loopback, `ditfarm render --gangs 1` joining it, and a
scrape of http://127.0.0.1:<metrics-export-port>/metrics during and after the run, and after a rerun."""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import free_port

from ditfarm.cluster.warm_gangs import WAITING_PER_GANG

pytestmark = [pytest.mark.ray, pytest.mark.process]

GOOD = ["red circle moving left on blue background", "white square moving up on green gradient background"]
SERIES = re.compile(r"^(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)(?:\{(?P<labels>.*)\})? (?P<value>\S+)$")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def scrape(port: int) -> dict:
    """{series name: [(labels, value)]} from a Prometheus text export."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    series = defaultdict(list)
    for line in body.splitlines():
        match = SERIES.match(line)
        if match and not line.startswith("#"):
            labels = dict(LABEL.findall(match.group("labels") or ""))
            series[match.group("name")].append((labels, float(match.group("value"))))
    return series


def total(series: dict, name: str, out: str, **labels) -> float:
    """Summed over the run's processes (each driver is its own series)."""
    return sum(
        v
        for got, v in series.get(name, [])
        if got.get("out") == out and all(got.get(k) == want for k, want in labels.items())
    )


@pytest.fixture(scope="module")
def ray_head_with_metrics():
    bin_dir = Path(sys.executable).parent
    temp_dir = Path(tempfile.mkdtemp(prefix="rm-", dir="/tmp"))
    gcs, metrics = free_port(), free_port()
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": uuid.uuid4().hex + uuid.uuid4().hex,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_metrics_report_interval_ms": "500",
    }  # Ray's default (10 s) would only slow the test down
    subprocess.run(
        [
            bin_dir / "ray",
            "start",
            "--head",
            "--node-ip-address=127.0.0.1",
            f"--port={gcs}",
            f"--metrics-export-port={metrics}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={free_port()}",
            "--num-cpus=2",
            f"--temp-dir={temp_dir}",
            "--include-dashboard=true",
            "--disable-usage-stats",
        ],
        check=True,
        env=env,
        capture_output=True,
        timeout=180,
    )
    yield {"env": {**env, "RAY_ADDRESS": f"127.0.0.1:{gcs}"}, "metrics_port": metrics}
    subprocess.run([bin_dir / "ray", "stop", "--force"], env=env, capture_output=True, timeout=120)
    shutil.rmtree(temp_dir, ignore_errors=True)


def test_a_jobs_metrics_appear_on_the_ray_nodes_export_with_the_right_counts(
    ray_head_with_metrics, random_model_folder, tmp_path
):
    port = ray_head_with_metrics["metrics_port"]
    manifest, out = tmp_path / "m.parquet", str(tmp_path / "out")
    ids = ["m0", "m1", "m2", "bad"]
    pq.write_table(
        pa.table({"id": ids, "prompt": GOOD + [GOOD[0], "purple circle moving left on blue background"]}), manifest
    )
    command = [
        sys.executable,
        "-m",
        "ditfarm.commands.cli",
        "render",
        str(manifest),
        "--out",
        out,
        "--model",
        str(random_model_folder),
        "--steps",
        "30",
        "--upscale",
        "2",
        "--gangs",
        "1",
        "--no-progress",
    ]
    run = subprocess.Popen(
        command, env=ray_head_with_metrics["env"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    most_in_flight = most_gangs = 0.0
    while run.poll() is None:  # while it renders: two videos in flight on one live gang
        series = scrape(port)
        most_in_flight = max(most_in_flight, total(series, "ray_ditfarm_videos_in_flight", out))
        most_gangs = max(most_gangs, total(series, "ray_ditfarm_gangs_alive", out))
        time.sleep(0.3)
    assert run.returncode == 1, run.communicate()  # the bad row
    # one denoising, one being stored, and those waiting for the gang (up to WAITING_PER_GANG): all four at most
    assert 2 <= most_in_flight <= min(len(ids), 2 + WAITING_PER_GANG) and most_gangs == 1, most_in_flight

    rerun = subprocess.run(command, env=ray_head_with_metrics["env"], capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 1, rerun.stderr  # skips the three ok ids, fails the bad row again

    want = {"ok": 3, "failed": 2, "skipped": 3}
    deadline = time.monotonic() + 30
    while True:  # the export lags the runs by a report interval
        series = scrape(port)
        got = {s: total(series, "ray_ditfarm_videos_total", out, status=s) for s in want}
        if got == want or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert got == want, sorted(series)
    assert total(series, "ray_ditfarm_render_seconds_count", out) == 3  # one observation per ok video
    seconds = total(series, "ray_ditfarm_render_seconds_sum", out)
    assert 0 < seconds < 600
    assert total(series, "ray_ditfarm_videos_in_flight", out) == 0  # both runs ended with nothing in flight
    assert total(series, "ray_ditfarm_gangs_alive", out) == 0
