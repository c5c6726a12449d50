"""Access problems on S3 stop a run before anything renders (exit 2) with an error naming the problem.

moto's server enforces IAM here (``INITIAL_NO_AUTH_ACTION_COUNT``: only the setup's own requests go through
unauthenticated), so bad credentials are refused and a read-only user cannot write its output."""

import io
import json
import os
import socket
import subprocess
import sys
import time

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytestmark = [pytest.mark.s3, pytest.mark.process]

SETUP_ACTIONS = 7  # create bucket, put manifest, create user, put its policy, create its key; a user, its key
SECRET_MARK = "ditfarm-never-print-me"


@pytest.fixture(scope="module")
def iam_s3(tmp_path_factory):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path_factory.mktemp("moto") / "server.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(SETUP_ACTIONS)},
        stdout=log,
        stderr=log,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        admin = dict(
            endpoint_url=endpoint, aws_access_key_id="setup", aws_secret_access_key="setup", region_name="us-east-1"
        )
        s3, iam = boto3.client("s3", **admin), boto3.client("iam", **admin)
        s3.create_bucket(Bucket="readonly")
        buffer = io.BytesIO()
        pq.write_table(pa.table({"id": ["a"], "prompt": ["red circle moving left on blue background"]}), buffer)
        s3.put_object(Bucket="readonly", Key="m.parquet", Body=buffer.getvalue())
        iam.create_user(UserName="reader")
        policy = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Resource": "*",
                    "Action": ["s3:GetObject", "s3:ListBucket", "s3:ListBucketMultipartUploads"],
                }
            ],
        }
        iam.put_user_policy(UserName="reader", PolicyName="read-only", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName="reader")["AccessKey"]
        iam.create_user(UserName="stranger")  # no policy: may do nothing
        stranger = iam.create_access_key(UserName="stranger")["AccessKey"]
        yield {
            "endpoint": endpoint,
            "reader": (key["AccessKeyId"], key["SecretAccessKey"]),
            "stranger": (stranger["AccessKeyId"], stranger["SecretAccessKey"]),
        }
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def render(iam_s3, key_id, secret, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_ENDPOINT_URL=iam_s3["endpoint"],
        AWS_ACCESS_KEY_ID=key_id,
        AWS_SECRET_ACCESS_KEY=secret,
        AWS_DEFAULT_REGION="us-east-1",
    )
    proc = subprocess.run(
        [sys.executable, "-m", "ditfarm.commands.cli", "render", *args, "--no-progress"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert secret not in proc.stdout + proc.stderr
    return proc


def test_bad_credentials_stop_the_run_with_a_clear_error(iam_s3, tmp_path):
    bad_secret = SECRET_MARK + "-bad"
    proc = render(iam_s3, "AKIANOSUCHKEY", bad_secret, "s3://readonly/m.parquet", "--out", str(tmp_path / "o"))
    assert proc.returncode == 2, proc.stderr
    assert "manifest s3://readonly/m.parquet cannot be read" in proc.stderr
    assert "InvalidAccessKeyId" in proc.stderr and "check the credentials" in proc.stderr, proc.stderr
    assert "not a readable Parquet file" not in proc.stderr
    assert not (tmp_path / "o").exists()
    local = tmp_path / "m.parquet"
    pq.write_table(pa.table({"id": ["a"], "prompt": ["red circle moving left on blue background"]}), local)
    proc = render(iam_s3, "AKIANOSUCHKEY", bad_secret, str(local), "--out", "s3://readonly/out")
    assert proc.returncode == 2 and "s3://readonly/out: InvalidAccessKeyId" in proc.stderr, proc.stderr


def test_a_manifest_the_credentials_may_not_read_says_access_denied(iam_s3, tmp_path):
    key_id, secret = iam_s3["stranger"]
    proc = render(iam_s3, key_id, secret, "s3://readonly/m.parquet", "--out", str(tmp_path / "o"))
    assert proc.returncode == 2, proc.stderr
    assert "manifest s3://readonly/m.parquet cannot be read: access denied" in proc.stderr, proc.stderr
    assert not (tmp_path / "o").exists()


def test_an_output_that_refuses_writes_stops_the_run_before_rendering(iam_s3):
    key_id, secret = iam_s3["reader"]
    proc = render(iam_s3, key_id, secret, "s3://readonly/m.parquet", "--out", "s3://readonly/out")
    assert proc.returncode == 2, proc.stderr
    assert "cannot write to s3://readonly/out: AccessDenied" in proc.stderr
    reader = boto3.client(
        "s3",
        endpoint_url=iam_s3["endpoint"],
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        region_name="us-east-1",
    )
    assert [o["Key"] for o in reader.list_objects_v2(Bucket="readonly")["Contents"]] == ["m.parquet"]


def test_credentials_from_a_named_profile_reach_both_boto3_and_pyarrow(iam_s3, tmp_path):
    """AWS_PROFILE + a shared credentials file, no key variables: the manifest (pyarrow) and the output listing
    (boto3) are both read with the profile's read-only key."""
    key_id, secret = iam_s3["reader"]
    credentials = tmp_path / "credentials"
    credentials.write_text(
        f"[reader]\naws_access_key_id = {key_id}\naws_secret_access_key = {secret}\n"
        f"[nobody]\naws_access_key_id = AKIANOBODY\naws_secret_access_key = {SECRET_MARK}\n"
    )
    credentials.chmod(0o600)  # ditfarm refuses a credentials file others may read
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_ENDPOINT_URL=iam_s3["endpoint"],
        AWS_SHARED_CREDENTIALS_FILE=str(credentials),
        AWS_CONFIG_FILE=str(tmp_path / "no-config"),
        AWS_DEFAULT_REGION="us-east-1",
    )
    args = [
        sys.executable,
        "-m",
        "ditfarm.commands.cli",
        "render",
        "s3://readonly/m.parquet",
        "--out",
        "s3://readonly/out",
        "--dry-run",
    ]
    ok = subprocess.run(args, env={**env, "AWS_PROFILE": "reader"}, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert "1 rows: would render 1, would skip 0 (already ok), would fail 0" in ok.stdout
    refused = subprocess.run(args, env={**env, "AWS_PROFILE": "nobody"}, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "cannot be read" in refused.stderr
    assert SECRET_MARK not in refused.stdout + refused.stderr


def test_an_endpoint_with_a_password_in_its_url_is_never_printed_with_it(iam_s3, tmp_path):
    """`http://user:password@host`: render, the dry run and status name the endpoint without its password, on
    an endpoint that does not answer (botocore's own error repeats the URL) and on one that refuses the writes."""
    password = SECRET_MARK + "-in-url"
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://user:{password}@127.0.0.1:{s.getsockname()[1]}"
    live = iam_s3["endpoint"].replace("http://", f"http://user:{password}@")
    local = tmp_path / "m.parquet"
    pq.write_table(pa.table({"id": ["a"], "prompt": ["red circle moving left on blue background"]}), local)
    key_id, secret = iam_s3["reader"]
    cases = [
        (dead, ["render", str(local), "--out", "s3://readonly/out", "--no-progress"]),
        (dead, ["render", "s3://readonly/m.parquet", "--out", str(tmp_path / "o"), "--dry-run"]),
        (dead, ["render", str(local), "--model", "s3://readonly/model", "--out", str(tmp_path / "o2")]),
        (dead, ["status", "s3://readonly/out"]),
        (live, ["render", str(local), "--out", "s3://readonly/out", "--no-progress"]),
    ]
    for endpoint, args in cases:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(
            AWS_ENDPOINT_URL=endpoint,
            AWS_ACCESS_KEY_ID=key_id,
            AWS_SECRET_ACCESS_KEY=secret,
            AWS_DEFAULT_REGION="us-east-1",
            AWS_MAX_ATTEMPTS="1",
        )
        proc = subprocess.run(
            [sys.executable, "-m", "ditfarm.commands.cli", *args], env=env, capture_output=True, text=True, timeout=300
        )
        printed = proc.stdout + proc.stderr
        assert proc.returncode == 2 and password not in printed, (args, printed)
        if endpoint == dead:  # the endpoint is named, as it is the problem
            assert "user:***@127.0.0.1" in printed, (args, printed)
