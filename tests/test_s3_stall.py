"""An S3 endpoint that accepts connections and never answers (a paused or wedged endpoint) is refused at start-up
in seconds, naming the endpoint, for the output and for the manifest alike; nothing waits on it for minutes."""

import socket
import threading
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ditfarm.commands.cli import main as cli
from ditfarm.storage.stores import CALL_TIMEOUTS

pytestmark = [pytest.mark.s3]


@pytest.fixture
def silent_endpoint(monkeypatch):
    """A local TCP server that accepts every connection and never sends a byte."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    server.settimeout(0.2)
    held, stop = [], threading.Event()

    def accept():
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.getsockname()[1]}"
    for name, value in {
        "AWS_ENDPOINT_URL": url,
        "AWS_ACCESS_KEY_ID": "stall",
        "AWS_SECRET_ACCESS_KEY": "stall-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    yield url
    stop.set()
    thread.join(timeout=5)
    for conn in held:
        conn.close()
    server.close()


@pytest.mark.parametrize("side", ["output", "manifest"])
def test_a_silent_endpoint_is_refused_in_seconds(side, silent_endpoint, tmp_path, capsys):
    local = tmp_path / "m.parquet"
    pq.write_table(pa.table({"id": ["a"], "prompt": ["red circle moving left on blue background"]}), local)
    manifest, out = (
        (str(local), "s3://stalled/out") if side == "output" else ("s3://stalled/m.parquet", str(tmp_path / "out"))
    )
    started = time.monotonic()
    assert cli(["render", manifest, "--out", out, "--no-progress"]) == 2
    elapsed = time.monotonic() - started
    err = capsys.readouterr().err
    assert f"cannot reach {silent_endpoint}" in err and "no answer within" in err, err
    assert "stall-secret" not in err
    connect, read, attempts = CALL_TIMEOUTS
    assert elapsed < 40 < attempts * read  # seconds, where one ordinary call could wait two minutes


class SwitchableProxy:
    """A TCP proxy to a real endpoint that can go silent: while ``silent``, new connections are accepted and
    never answered (a paused endpoint), and bytes on open ones are no longer passed on."""

    def __init__(self, target: str):
        host, port = target.removeprefix("http://").split(":")
        self.target = (host, int(port))
        self.silent = threading.Event()
        self.server = socket.socket()
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(64)
        self.server.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        self.stop, self.held = threading.Event(), []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stop.is_set():
            try:
                client = self.server.accept()[0]
            except TimeoutError:
                continue
            except OSError:  # closed
                return
            self.held.append(client)
            if self.silent.is_set():
                continue
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            self.held.append(upstream)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source, sink):
        try:
            while not self.stop.is_set():
                data = source.recv(65536)
                if not data:
                    break
                while self.silent.is_set() and not self.stop.is_set():  # paused: hold the bytes
                    time.sleep(0.05)
                sink.sendall(data)
        except OSError:
            pass

    def close(self):
        self.stop.set()
        for conn in self.held:
            conn.close()
        self.server.close()


def test_a_stall_mid_run_is_named_in_the_progress_line_and_the_run_goes_on(s3_endpoint, tmp_path, monkeypatch, capsys):
    """The endpoint pauses after the first video: every progress line meanwhile says which call has waited how
    long, on which endpoint; once it answers again the run finishes, each id stored once."""
    import boto3

    from ditfarm.jobs.driver import RenderSettings, render_manifest
    from ditfarm.jobs.results import read_all_results
    from ditfarm.storage import stores as storage

    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="paused")
    proxy = SwitchableProxy(s3_endpoint)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    monkeypatch.setattr(storage, "CALL_TIMEOUTS", (2, 2, 3))  # a stalled call gives up sooner than in life
    manifest = tmp_path / "m.parquet"
    ids = [f"p{i}" for i in range(5)]
    pq.write_table(pa.table({"id": ids, "prompt": ["red circle moving left on blue background"] * 5}), manifest)
    outcome = {}

    def run():
        outcome["summary"] = render_manifest(manifest, "s3://paused/out", RenderSettings(steps=2), progress_seconds=1.0)

    runner = threading.Thread(target=run)
    runner.start()
    try:
        deadline = time.monotonic() + 120
        while s3.list_objects_v2(Bucket="paused", Prefix="out/videos/").get("KeyCount", 0) < 1:
            assert time.monotonic() < deadline and runner.is_alive(), outcome
            time.sleep(0.1)
        proxy.silent.set()
        time.sleep(9)
        proxy.silent.clear()
        runner.join(timeout=300)
        assert not runner.is_alive()
    finally:
        proxy.silent.clear()
        runner.join(timeout=300)
        proxy.close()
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("progress: ")]
    waits = [line for line in lines if "; waiting " in line]
    assert waits, lines
    assert any(
        f"(endpoint {proxy.url})" in line and " s on " in line and "s3://paused/out" in line for line in waits
    ), waits
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)  # the proxy is gone
    rows = read_all_results("s3://paused/out").to_pylist()
    ok = [r["id"] for r in rows if r["status"] == "ok"]
    assert len(ok) == len(set(ok))  # never twice
    stored = {o["Key"] for o in s3.list_objects_v2(Bucket="paused", Prefix="out/videos/")["Contents"]}
    assert {f"out/videos/{i}.mp4" for i in ok} <= stored
