"""`ray job submit -- ditfarm render s3://... --out s3://... --gangs 2` against a real Ray head and moto's S3 server,
both on loopback.  The job shares no files with the submitter: the manifest, the videos and the results live in the
bucket and the model is the bundled one.  The nodes hold the credentials (as a KubeRay pod's environment or an
instance role would); the job names only the endpoint.  The secret key is recognisable, and must appear nowhere a
person or a log could see it: not in Ray's session folder, its state API, the job's output or the bucket."""

import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import free_port

from ditfarm.jobs.results import read_all_results
from ditfarm.pipelines.video_io import read_mp4

pytestmark = [pytest.mark.ray, pytest.mark.s3, pytest.mark.process]

SECRET = "SECRETzq9x-recognisable-ditfarm-key"
GOOD = [
    "red circle moving left on blue background",
    "white square moving up on green gradient background",
    "yellow triangle moving right on black background",
    "blue circle moving down on white background",
]


@pytest.fixture(scope="module")
def ray_head(s3_endpoint):
    """A Ray head on loopback ports with token authentication, started as a user would (`ray start --head`)."""
    bin_dir = Path(sys.executable).parent
    temp_dir = Path(tempfile.mkdtemp(prefix="rj-", dir="/tmp"))
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": uuid.uuid4().hex + uuid.uuid4().hex,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_JOB_STOP_WAIT_TIME_S": "60",  # as infra/ sets it: a stopping run flushes before any SIGKILL
    }
    for name in [k for k in env if k.startswith("AWS_")]:  # the cluster knows nothing of the bucket by itself
        env.pop(name)
    env.update(NODE_CREDENTIALS)  # but its nodes hold credentials, as a pod's environment or an instance role would
    dashboard = free_port()
    subprocess.run(
        [
            bin_dir / "ray",
            "start",
            "--head",
            "--node-ip-address=127.0.0.1",
            f"--port={free_port()}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard}",
            "--num-cpus=3",
            f"--temp-dir={temp_dir}",
            "--include-dashboard=true",
            "--disable-usage-stats",
        ],
        check=True,
        env=env,
        capture_output=True,
        timeout=180,
    )
    submitter = {k: v for k, v in env.items() if k not in NODE_CREDENTIALS}
    yield {"address": f"http://127.0.0.1:{dashboard}", "env": submitter, "bin": bin_dir, "temp_dir": temp_dir}
    subprocess.run([bin_dir / "ray", "stop", "--force"], env=submitter, capture_output=True, timeout=120)
    shutil.rmtree(temp_dir, ignore_errors=True)


NODE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "AKIDTEST", "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1"}


def job_credentials(endpoint: str):
    """What a job is given (the endpoint: no key travels with a job), what the nodes hold besides (the
    credentials, in their environment), and a boto3 client of the test's own using them."""
    job = {"AWS_ENDPOINT_URL": endpoint}
    s3 = boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id="AKIDTEST", aws_secret_access_key=SECRET, region_name="us-east-1"
    )
    return job, s3


def results_as_the_job(aws: dict, out: str) -> list[dict]:
    """Every results row under ``out``, read with the job's settings (this process's own are restored after)."""
    env_before = dict(os.environ)
    os.environ.update({**NODE_CREDENTIALS, **aws})
    try:
        return read_all_results(out).to_pylist()
    finally:
        os.environ.clear()
        os.environ.update(env_before)


def submit(
    head, args: list[str], aws: dict, entrypoint: tuple[str, ...] = ("ditfarm", "render")
) -> subprocess.CompletedProcess:
    """`ray job submit`, waiting for the head's job agent: `ray start` returns before the agent has registered,
    and a submission in that window is refused with "No available agent" (nothing runs, so a retry is safe)."""
    import time

    runtime_env = json.dumps({"env_vars": aws})
    deadline = time.monotonic() + 300
    while True:
        proc = subprocess.run(
            [
                head["bin"] / "ray",
                "job",
                "submit",
                "--address",
                head["address"],
                "--runtime-env-json",
                runtime_env,
                "--",
                *entrypoint,
                *args,
            ],
            env=head["env"],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if "No available agent" not in proc.stderr + proc.stdout or time.monotonic() > deadline:
            return proc
        time.sleep(2)


def test_ray_job_submit_reads_and_writes_s3_exactly_once(ray_head, s3_endpoint, tmp_path):
    aws, s3 = job_credentials(s3_endpoint)
    bucket = "job-" + uuid.uuid4().hex[:10]
    s3.create_bucket(Bucket=bucket)
    ids = [f"v{i:02d}" for i in range(12)]
    prompts = [GOOD[i % 4] for i in range(12)]
    prompts[3] = "purple circle moving left on blue background"  # unknown word
    ids[7] = "bad id"  # a space: it would name a file badly
    buffer = io.BytesIO()
    pq.write_table(pa.table({"id": ids, "prompt": prompts, "seed": pa.array(range(12), pa.int64())}), buffer)
    s3.put_object(Bucket=bucket, Key="manifests/m.parquet", Body=buffer.getvalue())
    args = [
        f"s3://{bucket}/manifests/m.parquet",
        "--out",
        f"s3://{bucket}/out",
        "--gangs",
        "2",
        "--steps",
        "2",
        "--upscale",
        "2",
        "--no-progress",
    ]

    first = submit(ray_head, args, aws)
    logs = first.stdout + first.stderr
    assert "10 ok, 2 failed, 0 skipped" in logs, logs[-3000:]
    videos = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="out/videos/")["Contents"])
    good = [i for i in ids if i not in ("v03", "bad id")]
    assert videos == [f"out/videos/{i}.mp4" for i in good]
    for key in videos[:3]:
        path = tmp_path / Path(key).name
        s3.download_file(bucket, key, str(path))
        assert read_mp4(path).shape == (8, 64, 64, 3)
    rows = results_as_the_job(aws, f"s3://{bucket}/out")
    assert len(rows) == 12
    errors = {r["id"]: r["error"] for r in rows if r["status"] == "failed"}
    assert set(errors) == {"v03", "bad id"}
    assert "unknown word(s) 'purple'" in errors["v03"] and "id must match" in errors["bad id"]

    # A rerun skips the stored videos and renders again only the ones whose mp4 has gone.
    for vid in ("v01", "v10"):
        s3.delete_object(Bucket=bucket, Key=f"out/videos/{vid}.mp4")
    second = submit(ray_head, args, aws)
    assert "2 ok, 2 failed, 8 skipped" in second.stdout + second.stderr
    assert len(s3.list_objects_v2(Bucket=bucket, Prefix="out/videos/")["Contents"]) == 10

    # The secret is nowhere: not in what the submitter saw, the job logs, the results or any object.
    listing = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json, sys, ray.job_submission as j; "
            "print(json.dumps([x.submission_id for x in j.JobSubmissionClient(sys.argv[1]).list_jobs()]))",
            ray_head["address"],
        ],
        env=ray_head["env"],
        capture_output=True,
        text=True,
        check=True,
    )
    job_logs = [
        subprocess.run(
            [ray_head["bin"] / "ray", "job", "logs", "--address", ray_head["address"], job],
            env=ray_head["env"],
            capture_output=True,
            text=True,
        ).stdout
        for job in json.loads(listing.stdout.strip().splitlines()[-1])
    ]
    assert len(job_logs) >= 2 and any("10 ok" in log for log in job_logs)
    seen = "".join([first.stdout, first.stderr, second.stdout, second.stderr, *job_logs])
    assert SECRET not in seen
    for obj in s3.list_objects_v2(Bucket=bucket)["Contents"]:
        assert SECRET.encode() not in s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()

    # Nor in what Ray keeps and shows: every file of its session folder (logs included) and its state API.  A job
    # whose runtime env carries a canary shows that both places would reveal a secret that travelled that way.
    canary = "CANARYq7w-" + uuid.uuid4().hex
    control = submit(ray_head, ["-c", "print('control job')"], {"DITFARM_CANARY": canary}, entrypoint=("python",))
    assert control.returncode == 0, control.stdout[-2000:] + control.stderr[-2000:]
    canary_seen = places_showing(ray_head, canary)
    assert any(p.startswith("session:") for p in canary_seen) and any(p.startswith("ray list") for p in canary_seen), (
        canary_seen
    )
    assert places_showing(ray_head, SECRET) == []


def places_showing(head, text: str) -> list[str]:
    """Where Ray lets anyone see ``text``: files under the head's temp dir (sessions and their logs), and the
    state API's detailed listings."""
    found = []
    for path in sorted(Path(head["temp_dir"]).rglob("*")):
        try:
            if path.is_file() and not path.is_symlink() and text.encode() in path.read_bytes():
                found.append(f"session:{path.relative_to(head['temp_dir'])}")
        except OSError:  # a socket or a file removed while walking
            continue
    address = ["--address", head["address"]]
    for what in ("actors", "jobs", "tasks", "workers", "placement-groups"):
        listing = subprocess.run(
            [head["bin"] / "ray", "list", what, "--detail", "--format", "json", "--limit", "10000", *address],
            env=head["env"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert listing.returncode == 0, listing.stderr[-2000:]
        if text in listing.stdout:
            found.append(f"ray list {what}")
    jobs = subprocess.run(
        [head["bin"] / "ray", "job", "list", *address], env=head["env"], capture_output=True, text=True, timeout=120
    )
    if text in jobs.stdout + jobs.stderr:
        found.append("ray job list")
    return found


def test_ray_job_stop_ends_the_job_removes_its_gangs_and_a_rerun_resumes(ray_head, s3_endpoint):
    """`ray job stop` mid-job: the job stops within seconds, its placement groups are removed, its lease is given
    back (the rerun does not wait for it to go stale), and the rerun renders each remaining id exactly once."""
    import time

    aws, s3 = job_credentials(s3_endpoint)
    bucket = "stop-" + uuid.uuid4().hex[:10]
    s3.create_bucket(Bucket=bucket)
    ids = [f"s{i:02d}" for i in range(10)]
    buffer = io.BytesIO()
    pq.write_table(pa.table({"id": ids, "prompt": [GOOD[i % 4] for i in range(10)]}), buffer)
    s3.put_object(Bucket=bucket, Key="m.parquet", Body=buffer.getvalue())
    args = [
        f"s3://{bucket}/m.parquet",
        "--out",
        f"s3://{bucket}/out",
        "--gangs",
        "2",
        "--steps",
        "40",
        "--upscale",
        "2",
        "--no-progress",
        "--flush-every",
        "1",
    ]
    ray = [str(ray_head["bin"] / "ray")]
    address = ["--address", ray_head["address"]]
    submission = f"stop-{uuid.uuid4().hex[:8]}"
    deadline = time.monotonic() + 300
    while True:  # the head's job agent may not be registered yet (minutes on a loaded machine)
        proc = subprocess.run(
            [
                *ray,
                "job",
                "submit",
                *address,
                "--no-wait",
                "--submission-id",
                submission,
                "--runtime-env-json",
                json.dumps({"env_vars": aws}),
                "--",
                "ditfarm",
                "render",
                *args,
            ],
            env=ray_head["env"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if "No available agent" not in proc.stdout + proc.stderr or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert proc.returncode == 0, proc.stderr

    def stored() -> int:
        return s3.list_objects_v2(Bucket=bucket, Prefix="out/videos/").get("KeyCount", 0)

    deadline = time.monotonic() + 300
    while stored() < 2:
        assert time.monotonic() < deadline, "the job stored too few videos in time"
        time.sleep(0.2)
    assert stored() < len(ids), "the job finished before it could be stopped"
    sent = time.monotonic()
    subprocess.run(
        [*ray, "job", "stop", *address, submission],
        env=ray_head["env"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    status = subprocess.run(
        [*ray, "job", "status", *address, submission], env=ray_head["env"], capture_output=True, text=True, timeout=60
    )
    assert "was stopped" in status.stdout + status.stderr and time.monotonic() - sent < 30, status
    groups = json.loads(
        subprocess.run(
            [*ray, "list", "placement-groups", *address, "--format", "json"],
            env=ray_head["env"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    )
    assert [g for g in groups if g["state"] != "REMOVED"] == [], groups
    logs = subprocess.run(
        [*ray, "job", "logs", *address, submission], env=ray_head["env"], capture_output=True, text=True, timeout=60
    ).stdout
    assert "stopped by SIGTERM" in logs, logs[-2000:]

    # at once (the stopped run gave its lease back), and at 2 steps: what is left need not take 40 steps to show
    # that each id renders exactly once (ids alone count: the rows rendered at 40 steps are not rendered again)
    rerun = submit(ray_head, [*(a if a != "40" else "2" for a in args[:-2]), "--resume-by-id"], aws)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    rows = results_as_the_job(aws, f"s3://{bucket}/out")
    ok = sorted(r["id"] for r in rows if r["status"] == "ok")
    assert ok == ids  # each id ok exactly once
    videos = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="out/videos/")["Contents"])
    assert videos == [f"out/videos/{i}.mp4" for i in ids]
