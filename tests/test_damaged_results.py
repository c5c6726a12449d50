"""A results part that cannot be read (garbage, or cut short) is named, never guessed around: the rerun and its dry
run stop (exit 2) naming the part, the output and what to do; `status` and the report skip it with a warning
naming it and keep every row of the other parts; `--repair` moves it aside and renders the ids it held again."""

import uuid

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ditfarm.commands.cli import main as cli
from ditfarm.jobs.report import write_report
from ditfarm.jobs.results import read_results
from ditfarm.storage.errors import redact  # the moto fixture's secret ("test") is redacted from paths too
from ditfarm.storage.stores import open_output

pytestmark = [pytest.mark.s3, pytest.mark.process]

RED = "red circle moving left on blue background"


class Output:
    """A local folder or an S3 prefix, with a way to spoil one of its parts."""

    def __init__(self, kind: str, tmp_path, request):
        if kind == "local":
            self.uri = str(tmp_path / "out")
        else:
            request.getfixturevalue("s3_endpoint")
            bucket = f"damaged-{uuid.uuid4().hex[:8]}"
            boto3.client("s3").create_bucket(Bucket=bucket)
            self.bucket, self.uri = bucket, f"s3://{bucket}/run"

    def spoil(self, name: str, how: str) -> None:
        store = open_output(self.uri)
        data = store.read_results_file(name)
        spoiled = b"this is not parquet " * 20 if how == "garbage" else data[: len(data) // 2]
        store.write_results_file(name, spoiled)

    def exists(self, relative: str) -> bool:
        if self.uri.startswith("s3://"):
            listed = boto3.client("s3").list_objects_v2(Bucket=self.bucket, Prefix=f"run/{relative}")
            return listed.get("KeyCount", 0) > 0
        from pathlib import Path

        return (Path(self.uri) / relative).exists()


@pytest.mark.parametrize("kind, how", [("local", "garbage"), ("s3", "truncated")])
def test_an_unreadable_part_is_named_skipped_by_readers_and_moved_aside_by_repair(kind, how, tmp_path, request, capsys):
    out = Output(kind, tmp_path, request)
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.table({"id": ["a", "b"], "prompt": [RED, RED]}), manifest)
    base = ["render", str(manifest), "--out", out.uri, "--steps", "2", "--no-progress"]
    assert cli([*base, "--flush-every", "1"]) == 0  # a part per row
    parts = open_output(out.uri).part_names()
    assert len(parts) == 2
    store = open_output(out.uri)
    b_part = next(p for p in parts if store.read_part(p).column("id").to_pylist() == ["b"])
    out.spoil(b_part, how)
    pq.write_table(pa.table({"id": ["a", "b", "c"], "prompt": [RED] * 3}), manifest)
    capsys.readouterr()

    assert cli(["status", out.uri]) == 0  # the table minus the part, and the part named
    printed = capsys.readouterr()
    assert f"results/{b_part} cannot be read" in printed.err and "--repair" in printed.err, printed.err
    assert "1 ids: 1 ok" in printed.out and "lease: free" in printed.out, printed.out
    unreadable = []
    assert read_results(out.uri, unreadable=unreadable).column("id").to_pylist() == ["a"]
    assert [name for name, _ in unreadable] == [b_part]
    write_report(out.uri)
    page = _read_text(out, "report.html")
    assert f"results/{b_part}" in page and "Results parts left out" in page

    for extra in ([], ["--dry-run"]):  # the rerun refuses to guess which ids the part recorded
        assert cli([*base, *extra]) == 2
        err = capsys.readouterr().err
        assert f"results/{b_part}" in err and redact(out.uri) in err and "--repair" in err, err
        assert f"ditfarm render: 1 results part(s) in {redact(out.uri)} cannot be read" in err, err
    assert [r["id"] for r in read_results(out.uri, unreadable=[]).to_pylist()] == ["a"]  # nothing written
    assert cli(["status", out.uri]) == 0 and "lease: free" in capsys.readouterr().out

    assert cli([*base, "--dry-run", "--repair"]) == 0
    assert f"--repair would move 1 unreadable results part(s) aside: {b_part}" in capsys.readouterr().out
    assert cli([*base, "--repair"]) == 0
    printed = capsys.readouterr()
    assert "2 ok, 0 failed, 1 skipped" in printed.out, printed.out
    assert out.exists(f"damaged-results/{b_part}") and not out.exists(f"results/{b_part}")
    assert sorted(r["id"] for r in read_results(out.uri).to_pylist() if r["status"] == "ok") == ["a", "b", "c"]


def _read_text(out: Output, name: str) -> str:
    if out.uri.startswith("s3://"):
        return boto3.client("s3").get_object(Bucket=out.bucket, Key=f"run/{name}")["Body"].read().decode()
    from pathlib import Path

    return (Path(out.uri) / name).read_text()
