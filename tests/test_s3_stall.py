"""An S3 endpoint that accepts connections and never answers (a paused or wedged endpoint) is refused at start-up
in seconds, naming the endpoint, for the output and for the manifest alike; nothing waits on it for minutes."""

import socket
import threading
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ditfarm.jobs.cli import main as cli
from ditfarm.jobs.storage import CALL_TIMEOUTS


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
            except socket.timeout:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.getsockname()[1]}"
    for name, value in {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "stall", "AWS_SECRET_ACCESS_KEY": "stall-secret",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
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
    manifest, out = (str(local), "s3://stalled/out") if side == "output" else ("s3://stalled/m.parquet",
                                                                              str(tmp_path / "out"))
    started = time.monotonic()
    assert cli(["render", manifest, "--out", out, "--no-progress"]) == 2
    elapsed = time.monotonic() - started
    err = capsys.readouterr().err
    assert f"cannot reach {silent_endpoint}" in err and "no answer within" in err, err
    assert "stall-secret" not in err
    connect, read, attempts = CALL_TIMEOUTS
    assert elapsed < 40 < attempts * read  # seconds, where one ordinary call could wait two minutes
