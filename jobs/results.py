"""The results table: one Parquet row per manifest row and run, written in parts as rendering goes.

Parts are written whole (temp file + rename) every ``flush_every`` rows, so a run that is killed loses at most the
rows since its last part, and a rerun reads every part to learn which ids already have an ``ok`` row.  Nothing is
ever rewritten: a rerun adds parts whose rows say ``skipped`` for what was already done.
"""

from __future__ import annotations

import os
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

STATUS_OK, STATUS_FAILED, STATUS_SKIPPED = "ok", "failed", "skipped"

RESULT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("status", pa.string()),
        ("uri", pa.string()),
        ("error", pa.string()),
        ("seed", pa.int64()),
        ("frames", pa.int32()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("steps", pa.int32()),
        ("model", pa.string()),
        ("seconds", pa.float64()),
        ("cache", pa.string()),
        ("cache_knob", pa.float64()),
        ("skipped_fraction", pa.float64()),
    ]
)


def results_schema(manifest_schema: pa.Schema, extra_columns: list[str]) -> pa.Schema:
    """The fixed results columns followed by the manifest's extra columns, with their manifest types."""
    return pa.schema(list(RESULT_SCHEMA) + [manifest_schema.field(name) for name in extra_columns])


def completed_ids(results_dir: Path) -> dict[str, str]:
    """id -> uri of every id that has an ``ok`` row in any part under results_dir."""
    done: dict[str, str] = {}
    for part in sorted(Path(results_dir).glob("part-*.parquet")):
        table = pq.read_table(part, columns=["id", "status", "uri"])
        for video_id, status, uri in zip(*(table.column(c).to_pylist() for c in ("id", "status", "uri"))):
            if status == STATUS_OK and video_id is not None:
                done[video_id] = uri
    return done


def read_results(results_dir: Path) -> pa.Table:
    """All parts as one table (for inspection and tests)."""
    parts = sorted(Path(results_dir).glob("part-*.parquet"))
    if not parts:
        return RESULT_SCHEMA.empty_table()
    return pa.concat_tables([pq.read_table(p) for p in parts], promote_options="default")


class ResultsWriter:
    """Buffers result rows and writes them as new part files; use as a context manager so the tail is flushed."""

    def __init__(self, results_dir: Path, schema: pa.Schema = RESULT_SCHEMA, flush_every: int = 32):
        self.results_dir = Path(results_dir)
        self.results_dir.mkdir(parents=True, exist_ok=True)
        self.schema = schema
        self.flush_every = flush_every
        self.rows: list[dict] = []
        self.parts: list[Path] = []
        self.run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f") + "-" + uuid.uuid4().hex[:8]

    def add(self, row: dict) -> None:
        self.rows.append(row)
        if len(self.rows) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        table = pa.Table.from_pylist(self.rows, schema=self.schema)
        path = self.results_dir / f"part-{self.run_id}-{len(self.parts):05d}.parquet"
        tmp = path.with_name("." + path.name + ".tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, path)
        self.parts.append(path)
        self.rows = []

    def __enter__(self) -> "ResultsWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.flush()
