"""The results table: one Parquet row per rendered or failed video and run, written in parts as rendering goes.

Parts (``OUT/results/part-<run>-<n>.parquet``) are written whole, after ``flush_every`` rows or ``flush_seconds``
after the oldest unwritten row, whichever comes first, so a crash loses at most a minute of rows even when each
video takes minutes.  Nothing is ever rewritten.  A rerun does not write rows for what it skips: a daily rerun of
a million-row manifest writes only what it rendered.  ``read_results`` gives the latest row per id (parts sort by
their run's UTC start, rows within a part in the order they were written).
"""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .storage import OutputStore, open_output

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
        ("attempts", pa.int32()),
        ("finished_at", pa.timestamp("ms", tz="UTC")),  # when the row was recorded: throughput over time
        ("text_seconds", pa.float64()),  # the video's phases on rank 0 (VideoPhases)
        ("denoise_seconds", pa.float64()),
        ("decode_seconds", pa.float64()),
        ("peak_gpu_bytes", pa.int64()),  # rank 0's peak accelerator memory during the loop; null on the CPU
    ]
)


def results_schema(manifest_schema: pa.Schema, extra_columns: list[str]) -> pa.Schema:
    """The fixed results columns followed by the manifest's extra columns, with their manifest types."""
    return pa.schema(list(RESULT_SCHEMA) + [manifest_schema.field(name) for name in extra_columns])


def _store(out) -> OutputStore:
    return out if isinstance(out, OutputStore) else open_output(out)


def read_all_results(out, columns: list[str] | None = None) -> pa.Table:
    """Every row of every part under ``out`` (a folder, an ``s3://`` prefix or a store), oldest first."""
    parts = _store(out).read_results(columns)
    if not parts:
        return RESULT_SCHEMA.empty_table() if columns is None else pa.schema([RESULT_SCHEMA.field(c) for c in columns]).empty_table()
    return pa.concat_tables(parts, promote_options="default")


def latest_per_id(table: pa.Table) -> pa.Table:
    """The last row of each id, in the order of those rows."""
    if table.num_rows == 0:
        return table
    indexed = table.append_column("__row", pa.array(range(table.num_rows), pa.int64()))
    last = indexed.group_by("id").aggregate([("__row", "max")]).column("__row_max")
    return table.take(pa.array(np.sort(last.to_numpy())))


def read_results(out) -> pa.Table:
    """The latest results row of every id under ``out``."""
    return latest_per_id(read_all_results(out))


def completed_ids(store: OutputStore) -> set[str]:
    """Ids with an ``ok`` row whose video is still present: one listing of videos/ and one read of results/."""
    table = read_all_results(store, columns=["id", "status"])
    ok = table.filter(pc.equal(table.column("status"), STATUS_OK)).column("id").to_pylist()
    return set(ok) & store.video_ids() if ok else set()


def new_run_id() -> str:
    """Sortable by start time (UTC), unique across concurrent runs."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f") + "-" + uuid.uuid4().hex[:8]


class ResultsWriter:
    """Buffers result rows and writes them as new parts; use as a context manager so the tail is flushed."""

    def __init__(self, out, schema: pa.Schema = RESULT_SCHEMA, flush_every: int = 32, flush_seconds: float = 60.0):
        self.store = _store(out)
        self.schema = schema
        self.flush_every, self.flush_seconds = flush_every, flush_seconds
        self.rows: list[dict] = []
        self.parts: list[str] = []
        self.run_id = new_run_id()
        self._oldest: float | None = None  # monotonic time of the oldest unwritten row

    def add(self, row: dict) -> None:
        if not self.rows:
            self._oldest = time.monotonic()
        self.rows.append(row)
        if len(self.rows) >= self.flush_every:
            self.flush()

    def seconds_until_due(self) -> float | None:
        """How long the buffered rows may still wait (None: nothing buffered)."""
        if not self.rows:
            return None
        return max(0.0, self.flush_seconds - (time.monotonic() - self._oldest))

    def flush_if_due(self) -> None:
        if self.rows and self.seconds_until_due() == 0.0:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        table = pa.Table.from_pylist(self.rows, schema=self.schema)
        self.parts.append(self.store.write_part(f"part-{self.run_id}-{len(self.parts):05d}.parquet", table))
        self.rows = []
        self._oldest = None

    def __enter__(self) -> "ResultsWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.flush()
