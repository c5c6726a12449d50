"""Prompt manifests: Parquet tables of videos to render, read in batches and validated row by row.

Schema (``id`` and ``prompt`` required, the rest optional; any other column is carried into the results):

    id               string, unique, [A-Za-z0-9._-]{1,128}, no leading '.' or '..': names the video file
    prompt           string, non-empty
    seed             integer (missing or null: derived from the id, so a rerun draws the same noise)
    negative_prompt  string
    num_frames, height, width, steps   integer >= 1
    guidance_scale   number >= 0
    guidance_scale_2 number >= 0: the second expert's scale (a two-expert folder, Wan2.2 A14B; missing: as
                     guidance_scale); a row that sets it for a one-transformer model fails naming it
    image            string: the first frame (a local path or an s3:// URI) of an image-to-video model
    last_image       string: the last frame, for a first-last-frame model
    lora             string: a diffusers-format LoRA (a .safetensors file, a folder holding one, or an s3:// URI)
    lora_scale       number: the scale the LoRA is applied at (missing: the run's --lora-scale, else 1)

A schema problem (a required column missing, a column of the wrong type, an extra column that would overwrite a
results column) fails the whole run before anything renders.  A bad row (bad or duplicate id, empty prompt,
out-of-range number) becomes a ``failed`` result naming the row and the problem, and the rest still renders.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from ..storage.errors import StorageError, redact
from ..storage.inputs import input_files
from ..storage.stores import check_video_id
from ..storage.waits import waiting_on
from ..text import shown
from ..types import RenderSettings, RowInputs, check_step_cap
from ..uris import is_s3
from .results import RESERVED_PREFIX, RESULT_SCHEMA

REQUIRED_COLUMNS = ("id", "prompt")
INTEGER_COLUMNS = ("seed", "num_frames", "height", "width", "steps")
OPTIONAL_COLUMNS = (
    "seed",
    "negative_prompt",
    "num_frames",
    "height",
    "width",
    "steps",
    "guidance_scale",
    "guidance_scale_2",
    "image",
    "last_image",
    "lora",
    "lora_scale",
)
IMAGE_COLUMNS = ("image", "last_image")  # read by the rank that encodes the row, never by the driver
MAX_LORA_SCALE = 100.0
GUIDANCE_COLUMNS = ("guidance_scale", "guidance_scale_2")
RESULT_COLUMNS = tuple(RESULT_SCHEMA.names)
MAX_SEED = 2**63 - 1
MAX_GUIDANCE = 100.0  # classifier-free guidance past this saturates every model into noise


class ManifestError(ValueError):
    """The manifest as a whole cannot be rendered (missing file, missing column, wrong column type)."""


@dataclass
class RenderTask:
    """One valid manifest row: what to render and under which name."""

    row: int
    id: str
    prompt: str
    seed: int
    negative_prompt: str = ""
    num_frames: int | None = None
    height: int | None = None
    width: int | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    guidance_scale_2: float | None = None
    image: str | None = None
    last_image: str | None = None
    lora: str | None = None
    lora_scale: float | None = None
    extra: dict = field(default_factory=dict)
    origin: str | None = None  # "<file> row <n>" in a manifest of several files
    stored_before: bool = True  # the output held a video of this id when the run listed it (the driver says)

    @property
    def where(self) -> str:
        """The row as messages name it (``describe_row``)."""
        return describe_row(self.row, self.id, self.origin)


@dataclass
class RowProblem:
    """A manifest row that cannot be rendered, and why; it becomes a ``failed`` result."""

    row: int
    id: str | None
    error: str
    extra: dict = field(default_factory=dict)
    duplicate: bool = False  # the id is an earlier row's: recorded once per id, as a duplicate
    origin: str | None = None  # "<file> row <n>" in a manifest of several files


def seed_from_id(video_id: str) -> int:
    """A stable 31-bit seed for rows without one: reruns and other machines derive the same."""
    return int.from_bytes(hashlib.sha256(video_id.encode()).digest()[:4], "big") & 0x7FFFFFFF


def _is_string(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def check_schema(schema: pa.Schema, source: str) -> list[str]:
    """Validate column names and types; returns the extra columns to carry through.  Raises ManifestError."""
    names = schema.names
    problems = []
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing:
        problems.append(f"missing required column(s) {', '.join(missing)} (found: {', '.join(names) or 'none'})")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        problems.append(f"duplicate column name(s) {', '.join(dupes)}")
    for name in names:
        t = schema.field(name).type
        if name in ("id", "prompt", "negative_prompt", "lora", *IMAGE_COLUMNS) and not (
            _is_string(t) or pa.types.is_null(t)
        ):
            problems.append(f"column {name!r} has type {t}; expected string")
        elif name in INTEGER_COLUMNS and not (pa.types.is_integer(t) or pa.types.is_null(t)):
            problems.append(f"column {name!r} has type {t}; expected an integer type")
        elif name in (*GUIDANCE_COLUMNS, "lora_scale") and not (
            pa.types.is_floating(t) or pa.types.is_integer(t) or pa.types.is_null(t)
        ):
            problems.append(f"column {name!r} has type {t}; expected a number")
    extra = [n for n in names if n not in REQUIRED_COLUMNS and n not in OPTIONAL_COLUMNS]
    clashes = [n for n in extra if n in RESULT_COLUMNS]
    if clashes:
        problems.append(f"column(s) {', '.join(clashes)} would overwrite results columns of the same name")
    reserved = [n for n in names if n.startswith(RESERVED_PREFIX)]
    if reserved:
        problems.append(
            f"column name(s) {', '.join(reserved)}: names starting with {RESERVED_PREFIX!r} are reserved "
            "for ditfarm's own use; rename them"
        )
    if problems:
        raise ManifestError(f"manifest {source}: " + "; ".join(problems))
    return extra


class Manifest:
    """A validated Parquet manifest: one file, a folder of files, an ``s3://`` object or every Parquet object under
    an ``s3://`` prefix.  Rows are streamed in record batches through a pyarrow dataset, so a million rows never sit
    in memory at once; only the ids seen so far are kept, to fail duplicates (the first occurrence wins)."""

    def __init__(self, source: str | Path, batch_size: int = 4096, readahead: bool = False):
        """``readahead``: let pyarrow read batches and files ahead (a dry run, which only reads).  A render reads
        one batch at a time: rendering dominates anyway, and a corrupt file or row group past the first then
        surfaces only where it is reached, after the rows before it were rendered and recorded (exit 4), not
        before the first row."""
        self.source = str(source)
        self.batch_size, self.readahead = batch_size, readahead
        self.files, self.filesystem = manifest_files(self.source)
        schemas = []
        for path in self.files:
            try:
                schema = pq.read_schema(path, filesystem=self.filesystem)
            except (pa.ArrowInvalid, OSError) as err:
                raise ManifestError(
                    f"manifest {self._name(path)} is not a readable Parquet file: {redact(str(err))}"
                ) from None
            check_schema(schema, self._name(path))
            schemas.append(schema)
        try:
            self.schema = pa.unify_schemas(schemas)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
            raise ManifestError(f"manifest {self.source}: its files disagree on column types: {err}") from None
        self.extra_columns = check_schema(self.schema, self.source)
        self._dataset = ds.dataset(self.files, schema=self.schema, format="parquet", filesystem=self.filesystem)

    def _name(self, path: str) -> str:
        return f"s3://{path}" if is_s3(self.source) else path

    @property
    def num_rows(self) -> int:
        return self._dataset.count_rows()

    def batches(self) -> Iterator[tuple[str | None, pa.RecordBatch]]:
        """(file, record batch) in the unified schema; the file is None for a one-file manifest.  Files are read
        one after another, each once the rows before it were consumed, so a broken file surfaces where it is;
        ``readahead`` lets pyarrow read ahead within a file."""
        ahead = {} if self.readahead else {"batch_readahead": 0, "fragment_readahead": 0}
        for path in self.files:
            single = ds.dataset([path], schema=self.schema, format="parquet", filesystem=self.filesystem)
            name = self._name(path)
            label = Path(path).name if len(self.files) > 1 else None
            for batch in self._read(single.to_batches(batch_size=self.batch_size, use_threads=False, **ahead), name):
                yield label, batch

    def _read(self, batches, where: str) -> Iterator[pa.RecordBatch]:
        batches = iter(batches)
        try:
            while True:
                with waiting_on(f"reading the manifest {where}"):
                    batch = next(batches, None)
                if batch is None:
                    return
                yield batch
        except OSError as err:
            raise ManifestError(f"manifest {where} could not be read: {redact(str(err))}") from None

    def __iter__(self) -> Iterator[RenderTask | RowProblem]:
        seen: dict[str, int] = {}
        row, current, file_row = 0, None, 0
        for label, batch in self.batches():
            if label != current:
                current, file_row = label, 0
            for record in batch.to_pylist():
                origin = f"{label} row {file_row}" if label is not None else None
                yield validate_row(row, record, self.extra_columns, seen, origin)
                row += 1
                file_row += 1


class TableManifest(Manifest):
    """A manifest that is already in memory (a pyarrow Table), checked and validated exactly like a file."""

    def __init__(self, table: pa.Table, source: str = "<table>", batch_size: int = 4096):
        self.source, self.batch_size, self.table = source, batch_size, table
        self.schema = table.schema
        self.extra_columns = check_schema(self.schema, self.source)

    @property
    def num_rows(self) -> int:
        return self.table.num_rows

    def batches(self) -> Iterator[tuple[str | None, pa.RecordBatch]]:
        for batch in self.table.to_batches(max_chunksize=self.batch_size):
            yield None, batch


def manifest_files(source: str) -> tuple[list[str], object]:
    """(Parquet files in read order, their pyarrow filesystem) for a manifest source; raises ManifestError for a
    source that does not exist, holds no Parquet files or cannot be read."""
    try:
        return input_files(source, ".parquet")
    except StorageError as err:  # InputMissing too: the message starts with the source
        raise ManifestError(f"manifest {err}") from None


def describe_row(row: int, video_id, origin: str | None = None) -> str:
    """How messages name a row: its number in the manifest, its file and number there (a folder or prefix of
    files), and its id."""
    details = [origin] if origin else []
    if isinstance(video_id, str):
        details.append(f"id {shown(video_id)}")
    return f"row {row}" + (f" ({'; '.join(details)})" if details else "")


def validate_row(
    row: int, record: dict, extra_columns: list[str], seen: dict[str, int], origin: str | None = None
) -> RenderTask | RowProblem:
    """Turn one manifest record into a RenderTask, or a RowProblem naming the row and what is wrong."""
    extra = {name: record.get(name) for name in extra_columns}
    video_id = record.get("id")
    where = describe_row(row, video_id, origin)

    def problem(message: str, duplicate: bool = False) -> RowProblem:
        return RowProblem(row, video_id, f"{where}: {message}", extra, duplicate, origin)

    id_problem = check_video_id(video_id)
    if id_problem:
        return problem(id_problem)
    if video_id in seen:
        return problem(f"id duplicates row {seen[video_id]}", duplicate=True)
    seen[video_id] = row
    prompt = record.get("prompt")
    if prompt is None or not prompt.strip():
        return problem("prompt is empty")
    numbers = {}
    for name in ("num_frames", "height", "width", "steps"):
        value = record.get(name)
        if value is not None and value < 1:
            return problem(f"{name} must be >= 1, got {value}")
        numbers[name] = value
    seed = record.get("seed")
    if seed is not None and not 0 <= seed <= MAX_SEED:
        return problem(f"seed must be in [0, 2**63), got {seed}")
    guidance = {}
    for name in GUIDANCE_COLUMNS:
        value = record.get(name)
        if value is not None and not 0 <= value <= MAX_GUIDANCE:  # also catches NaN and infinities
            return problem(f"{name} must be a finite number in [0, {MAX_GUIDANCE:g}], got {value}")
        guidance[name] = None if value is None else float(value)
    images = {}
    for name in IMAGE_COLUMNS:
        value = record.get(name)
        if value is not None and not value.strip():
            return problem(f"{name} is empty (leave it null for no {name})")
        images[name] = None if value is None else local_or_uri(value.strip())
    lora, scale = record.get("lora"), record.get("lora_scale")
    if lora is not None and not lora.strip():
        return problem("lora is empty (leave it null for no LoRA)")
    if scale is not None and not -MAX_LORA_SCALE <= scale <= MAX_LORA_SCALE:
        return problem(f"lora_scale must be a finite number in [-{MAX_LORA_SCALE:g}, {MAX_LORA_SCALE:g}], got {scale}")
    return RenderTask(
        row=row,
        id=video_id,
        prompt=prompt,
        seed=seed_from_id(video_id) if seed is None else int(seed),
        negative_prompt=record.get("negative_prompt") or "",
        extra=extra,
        origin=origin,
        **numbers,
        **guidance,
        **images,
        lora=None if lora is None else local_or_uri(lora.strip()),
        lora_scale=None if scale is None else float(scale),
    )


def local_or_uri(source: str) -> str:
    """An ``s3://`` URI as written; a local path made absolute, so a rank started elsewhere on this machine reads
    the same file."""
    return source if is_s3(source) else os.path.abspath(os.path.expanduser(source))


def row_images(task: RenderTask, settings: RenderSettings | None = None) -> dict[str, str | None]:
    """The row's images, else the run's (``--image``, ``ditfarm.render(image=...)``), by name."""
    return {
        name: getattr(task, name) if getattr(task, name) is not None else getattr(settings, name, None)
        for name in IMAGE_COLUMNS
    }


def row_lora(task: RenderTask, settings: RenderSettings | None = None) -> dict:
    """The row's LoRA, else the run's (``--lora``), and its scale (the row's, else the run's, else 1), as results
    record them: ``lora`` is "" for none (so a rerun sees a LoRA removed), ``lora_scale`` None then."""
    lora = task.lora if task.lora is not None else getattr(settings, "lora", None)
    scale = task.lora_scale if task.lora_scale is not None else getattr(settings, "lora_scale", None)
    return {"lora": lora or "", "lora_scale": (1.0 if scale is None else float(scale)) if lora else None}


def row_inputs(task: RenderTask, settings: RenderSettings) -> RowInputs:
    """What the task renders from, as the renderers take it: its text and seed, and its sampler values (the
    row's, else the run's)."""
    return RowInputs(
        task.prompt,
        task.seed,
        task.negative_prompt,
        sampler_overrides(task, settings),
        extra={**row_images(task, settings), **row_lora(task, settings)},
    )


def sampler_overrides(task: RenderTask, settings: RenderSettings) -> dict:
    """The row's own sampler values where it has them, else the run's (None: the model's default)."""
    names = ("num_frames", "height", "width", "steps", *GUIDANCE_COLUMNS)
    overrides = {n: getattr(task, n) if getattr(task, n) is not None else getattr(settings, n) for n in names}
    check_step_cap(overrides["steps"], settings.max_steps)
    return overrides
