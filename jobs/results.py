"""The results table: one Parquet row per rendered or failed video and run, written in parts as rendering goes.

Parts (``OUT/results/part-<run>-<n>.parquet``) are written whole, after ``flush_every`` rows or ``flush_seconds``
after the oldest unwritten row, whichever comes first, so a crash loses at most a minute of rows even when each
video takes minutes.  Nothing is ever rewritten.  A rerun does not write rows for what it skips: a daily rerun of
a million-row manifest writes only what it rendered.  ``read_results`` gives each id's best row (its latest ``ok``
row, else its latest row; parts sort by their run's UTC start, rows within a part in the order they were written).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..storage.stores import OutputStore, open_output

STATUS_OK, STATUS_FAILED, STATUS_SKIPPED = "ok", "failed", "skipped"
STATUS_DUPLICATE = "duplicate"  # a manifest row whose id an earlier row already has; recorded once per id

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
        ("seconds", pa.float64()),  # the video's own cost: its phases (VideoPhases.own_seconds)
        ("cache", pa.string()),
        ("cache_knob", pa.float64()),
        ("cache_knob_source", pa.string()),  # where the knob came from: the run, the model's card, its family, ditfarm
        ("skipped_fraction", pa.float64()),
        ("attempts", pa.int32()),
        ("finished_at", pa.timestamp("ms", tz="UTC")),  # when the row was recorded: throughput over time
        ("text_seconds", pa.float64()),  # the video's phases on rank 0 (VideoPhases)
        ("denoise_seconds", pa.float64()),
        ("decode_seconds", pa.float64()),
        ("peak_gpu_bytes", pa.int64()),  # rank 0's peak accelerator memory during the loop; null on the CPU
        ("video_bytes", pa.int64()),  # the stored mp4's size: a rerun renders again a video that is not this size
        ("store_seconds", pa.float64()),  # encoding, verifying and publishing the mp4
        ("wall_seconds", pa.float64()),  # from the render's start to its stored video, waits for others included
        # what the video shows beyond the columns above (seed, frames, sizes, steps, model): a rerun renders again
        # an id whose manifest row asks for other content (row_identity.py)
        ("prompt", pa.string()),
        ("negative_prompt", pa.string()),
        ("guidance_scale", pa.float64()),
        ("guidance_scale_2", pa.float64()),  # the second expert's (a two-expert model); null: it has one
        ("image", pa.string()),  # the first frame it was rendered from (a path or URI, as the manifest named it)
        ("last_image", pa.string()),  # and the last, for a first-last-frame model
        ("lora", pa.string()),  # the LoRA it was rendered with ("" for none), as the manifest or --lora named it
        ("lora_scale", pa.float64()),  # and its scale (null without a LoRA)
        ("fps", pa.int32()),
        ("upscale", pa.int32()),
        # the stored bytes: S3's ETag as written (etag:...) or a local file's sha256 (and its modification time, so
        # a rerun hashes only files that changed since): a video replaced by other bytes of its size is rendered again
        ("video_digest", pa.string()),
        ("video_mtime_ns", pa.int64()),
    ]
)
RESERVED_PREFIX = "__"  # column names ditfarm uses internally while reading results


def results_schema(manifest_schema: pa.Schema, extra_columns: list[str]) -> pa.Schema:
    """The fixed results columns followed by the manifest's extra columns, with their manifest types."""
    return pa.schema(list(RESULT_SCHEMA) + [manifest_schema.field(name) for name in extra_columns])


def _store(out) -> OutputStore:
    return out if isinstance(out, OutputStore) else open_output(out)


def read_all_results(out, columns: list[str] | None = None, unreadable: list | None = None) -> pa.Table:
    """Every row of every part under ``out`` (a folder, an ``s3://`` prefix or a store), oldest first.  A part that
    cannot be read raises UnreadablePart naming it, unless ``unreadable`` is a list: then it is left out and
    added there as (name, reason), for readers that show what they can (status, the report).

    Parts of different runs may disagree on the manifest's extra columns (a column added, dropped, or of another
    type): missing columns read as nulls, and a column whose type changed is read as strings in every part, so
    the results stay readable whatever later manifests carry."""
    parts = _store(out).read_results(columns, unreadable=unreadable)
    if not parts:
        return (
            RESULT_SCHEMA.empty_table()
            if columns is None
            else pa.schema([RESULT_SCHEMA.field(c) for c in columns]).empty_table()
        )
    return pa.concat_tables(_agreeing(parts), promote_options="default")


def _agreeing(parts: list[pa.Table]) -> list[pa.Table]:
    """The parts with every column of one name at one type: conflicting extra columns become strings."""
    types: dict[str, set] = {}
    for part in parts:
        for f in part.schema:
            types.setdefault(f.name, set()).add(f.type)
    conflicting = {
        name for name, kinds in types.items() if len(kinds - {pa.null()}) > 1 and name not in RESULT_SCHEMA.names
    }
    if not conflicting:
        return parts
    return [_with_strings(part, conflicting & set(part.schema.names)) for part in parts]


def _with_strings(part: pa.Table, names: set[str]) -> pa.Table:
    for name in names:
        i = part.schema.get_field_index(name)
        column = part.column(i)
        try:
            text = pc.cast(column, pa.string())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # nested values: their Python form
            text = pa.array([None if v is None else str(v) for v in column.to_pylist()], pa.string())
        part = part.set_column(i, pa.field(name, pa.string()), text)
    return part


def best_per_id(table: pa.Table) -> pa.Table:
    """Each id's state: its latest ``ok`` row if it has one (a later failure, such as a duplicate manifest row or a
    failed rerun, never hides a stored video), else its latest row; in the order of those rows.  Rows of
    ``duplicate`` status describe manifest rows, not videos, and are left out."""
    if table.num_rows == 0:
        return table
    status = table.column("status")
    index = pa.array(range(table.num_rows), pa.int64())
    videos = pc.invert(pc.fill_null(pc.equal(status, STATUS_DUPLICATE), False))
    ok = pc.fill_null(pc.equal(status, STATUS_OK), False)
    # rank: ok rows after every other row, then by position; the max of (ok, row) per id is its best row
    rank = pc.add(pc.multiply(pc.cast(ok, pa.int64()), table.num_rows), index)
    keyed = pa.table({"id": table.column("id"), "rank": rank}).filter(videos)
    if keyed.num_rows == 0:
        return table.slice(0, 0)
    best = keyed.group_by("id").aggregate([("rank", "max")]).column("rank_max").to_numpy()
    return table.take(pa.array(np.sort(best % table.num_rows)))


def duplicate_rows(table: pa.Table) -> pa.Table:
    """The manifest rows recorded as duplicates of an earlier row's id (one row each)."""
    if table.num_rows == 0:
        return table
    return table.filter(pc.fill_null(pc.equal(table.column("status"), STATUS_DUPLICATE), False))


def read_results(out, unreadable: list | None = None) -> pa.Table:
    """Each id's state under ``out``: its best results row (``best_per_id``); ``unreadable`` as read_all_results."""
    return best_per_id(read_all_results(out, unreadable=unreadable))


SETTING_COLUMNS = ("model", "steps", "frames", "height", "width", "cache", "cache_knob")  # what status summarises
# What a video shows (row_identity.py): an ok row whose manifest row now asks for other values is rendered again.
CONTENT_COLUMNS = (
    "prompt",
    "negative_prompt",
    "seed",
    "frames",
    "height",
    "width",
    "steps",
    "guidance_scale",
    "guidance_scale_2",
    "image",
    "last_image",
    "lora",
    "lora_scale",
    "fps",
    "upscale",
    "model",
)
STORED_BYTES_COLUMNS = ("video_bytes", "video_digest", "video_mtime_ns")  # what the stored video must still be
HOW_COMPUTED_COLUMNS = ("cache", "cache_knob", "cache_knob_source")  # not content: a rerun keeps the video and says so


class StoredRows:
    """Each id's latest ``ok`` row, held as Arrow columns (a million prompts as Python strings would not fit a
    driver's memory budget) and read one row at a time when a rerun meets its id."""

    def __init__(self, table: pa.Table):
        self.table = table
        ids = table.column("id").to_pylist() if table.num_rows else []
        self.index = {video_id: i for i, video_id in enumerate(ids)}  # the latest row of an id wins

    def get(self, video_id: str) -> dict | None:
        i = self.index.get(video_id)
        return None if i is None else self.table.slice(i, 1).to_pylist()[0]


@dataclass(frozen=True)
class OutputState:
    """What a rerun needs from an output: the ids whose video is stored whole, the ids already recorded as
    duplicates (their manifest rows are not recorded again), and each id's latest ok row."""

    done: set[str]
    duplicates: set[str]
    rows: StoredRows = None  # the latest ok row per id: its content and how it was computed
    listed: set[str] = frozenset()  # ids with a video under videos/ at the listing


def output_state(store: OutputStore, unreadable: list | None = None, table: pa.Table | None = None) -> OutputState:
    """One listing of videos/ and one read of results/.  An id is done when its latest ``ok`` row's video is
    stored as that row recorded it: its size (rows without one: at least a whole mp4's smallest) and its digest
    (S3: the listing's ETag; a local disk: its time, and where that changed, its sha256), so a video that was
    truncated, replaced or deleted since is rendered again.  A results part that cannot be read raises
    UnreadablePart (the ids it recorded are unknown), unless ``unreadable`` collects it (read_all_results).
    ``table``: every results row, where the caller has read them already (``ditfarm status``)."""
    if table is None:
        columns = ["id", "status", *STORED_BYTES_COLUMNS, *dict.fromkeys(CONTENT_COLUMNS + HOW_COMPUTED_COLUMNS)]
        table = read_all_results(store, columns=columns, unreadable=unreadable)
    duplicates = set(duplicate_rows(table).column("id").to_pylist())
    ok = table.filter(pc.fill_null(pc.equal(table.column("status"), STATUS_OK), False))
    if ok.num_rows == 0:
        return OutputState(set(), duplicates, StoredRows(ok), set(store.video_ids()))

    def column(name: str) -> list:
        return ok.column(name).to_pylist() if name in ok.column_names else [None] * ok.num_rows

    recorded = {  # the latest ok row of each id wins
        video_id: rest for video_id, *rest in zip(column("id"), *(column(c) for c in STORED_BYTES_COLUMNS))
    }
    stats = store.video_stats()
    done = {
        video_id
        for video_id, (size, digest, mtime_ns) in recorded.items()
        if video_id in stats and store.holds_video(video_id, stats[video_id], size, digest, mtime_ns)
    }
    return OutputState(done, duplicates, StoredRows(ok), set(stats))


def completed_ids(store: OutputStore) -> set[str]:
    """Ids whose video is stored whole (``output_state``)."""
    return output_state(store).done


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
        self.fence = None  # called before each part is written; raises to stop the write (the run's lease check)

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
        if self.fence is not None:  # right before the write: a run that lost the output's lease writes nothing
            self.fence()
        table = pa.Table.from_pylist(self.rows, schema=self.schema)
        self.parts.append(self.store.write_part(f"part-{self.run_id}-{len(self.parts):05d}.parquet", table))
        self.rows = []
        self._oldest = None

    def __enter__(self) -> ResultsWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.flush()
