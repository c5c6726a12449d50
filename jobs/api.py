"""The Python API for large prompt lists: ``ditfarm.render`` and ``ditfarm.read_results``.

    import ditfarm
    for row in ditfarm.render(["red circle moving left on blue background", ...], out="s3://bucket/run1",
                              cache="adaptive", steps=30):
        print(row["id"], row["status"], row["uri"])
    table = ditfarm.read_results("s3://bucket/run1")   # latest row per id

Everything that would stop the run (settings, the prompts' schema, access to the output) raises when
``render`` is called, before anything renders; rows then come back as their videos finish.  A prompt given as
a plain string gets an id derived from the prompt and the run's settings, so the same request has the same id
and a rerun skips it.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

from ..storage.lease import DEFAULT_TTL_S
from ..types import RenderSettings
from .driver import RenderJob, manifest_job, request_id
from .manifest import IMAGE_COLUMNS, OPTIONAL_COLUMNS, ManifestError, TableManifest, local_or_uri
from .results import read_results, results_schema

__all__ = ["render", "read_results"]

SETTING_NAMES = {f.name for f in dataclasses.fields(RenderSettings)}


def _settings(model: str, cache: str, sp: int, gangs: int | str | None, options: dict) -> RenderSettings:
    unknown = sorted(set(options) - SETTING_NAMES)
    if unknown:
        raise TypeError(
            f"ditfarm.render() got unknown setting(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(SETTING_NAMES - {'model', 'cache', 'sp', 'gangs'}))}"
        )
    gangs = gangs if gangs is not None else (1 if sp > 1 else 0)
    for name in IMAGE_COLUMNS:
        if options.get(name) is not None:
            options[name] = image_source(options[name])
    if isinstance(options.get("lora"), (str, Path)):
        options["lora"] = local_or_uri(str(options["lora"]))
    return RenderSettings(model=model, cache=cache, sp=sp, gangs=gangs, **options)


def image_source(image) -> str:
    """A row's image as a manifest holds it: a path (made absolute) or an ``s3://`` URI as given; a PIL image is
    written to a PNG file of this process's temporary folder, which the results then name (it is read from there
    by the renderer on this machine)."""
    if isinstance(image, (str, Path)):
        return local_or_uri(str(image))
    if type(image).__module__.startswith("PIL."):
        handle, path = tempfile.mkstemp(prefix="ditfarm-image-", suffix=".png")
        os.close(handle)
        image.save(path, "PNG")
        return path
    raise TypeError(f"an image must be a path, an s3:// URI or a PIL image, got {type(image).__name__}")


def _as_table(prompts, settings: RenderSettings) -> pa.Table:
    if isinstance(prompts, pa.Table):
        return prompts
    if type(prompts).__name__ == "DataFrame" and hasattr(prompts, "to_dict"):  # pandas, without importing it
        return pa.Table.from_pandas(prompts, preserve_index=False)
    prompts = list(prompts)
    if not prompts:
        raise ManifestError("ditfarm.render(): no prompts given")
    if all(isinstance(p, str) for p in prompts):
        return pa.table({"id": [request_id(p, settings) for p in prompts], "prompt": prompts})
    if all(isinstance(p, dict) for p in prompts):
        prompts = [
            {k: image_source(v) if k in IMAGE_COLUMNS and v is not None else v for k, v in p.items()} for p in prompts
        ]
        if not any("id" in p for p in prompts):  # manifest columns without ids: derive them like strings
            keys = OPTIONAL_COLUMNS  # every input a row may set (unset ones leave the id as it was)
            prompts = [
                {"id": request_id(str(p.get("prompt")), settings, **{k: p.get(k) for k in keys}), **p} for p in prompts
            ]
        try:
            return pa.Table.from_pylist(prompts)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
            raise ManifestError(f"ditfarm.render(): the prompt dicts do not form a table: {err}") from None
    raise ManifestError(
        "ditfarm.render(): prompts must be strings, dicts of manifest columns, a pyarrow Table, "
        "a pandas DataFrame, or a manifest path or URI"
    )


def render(
    prompts,
    out,
    model: str = "tiny",
    cache: str = "none",
    sp: int = 1,
    gangs: int | str | None = None,
    overwrite: bool = False,
    progress: bool = False,
    renderer=None,
    force: bool = False,
    lease_ttl_s: float = DEFAULT_TTL_S,
    resume_by_id: bool = False,
    **options,
) -> Iterator[dict]:
    """Render prompts into ``out`` (a folder or ``s3://bucket/prefix``); returns an iterator of result rows.

    ``prompts``: a list of strings, a list of dicts (manifest columns), a pyarrow Table, a pandas DataFrame, or a
    manifest path or URI (a row's ``image`` / ``last_image``: a path, an ``s3://`` URI or a PIL image).
    ``options``: any RenderSettings field (steps, guidance_scale, guidance_scale_2, image, last_image, num_frames, height,
    width, cache_knob, profile, upscale, fps (None: the model's), device, dtype, offload_text_encoder, flush_every,
    flush_seconds, collective_timeout_s).

    The run holds ``out``'s lease while it renders: a second run on the same output refuses (LeaseHeld) unless
    ``force``.  The lease is given back when the iterator is exhausted or garbage-collected.  An id already ok
    whose row now asks for other content (prompt, seed, sizes, steps, guidance, model) is rendered again unless
    ``resume_by_id``."""
    settings = _settings(model, cache, sp, gangs, options)
    if isinstance(prompts, (str, Path)):
        job = manifest_job(
            str(prompts),
            out,
            settings,
            renderer,
            progress=progress,
            overwrite=overwrite,
            force=force,
            lease_ttl_s=lease_ttl_s,
            resume_by_id=resume_by_id,
        )
    else:
        manifest = TableManifest(_as_table(prompts, settings))
        job = RenderJob(
            manifest,
            out,
            settings,
            renderer,
            results_schema(manifest.schema, manifest.extra_columns),
            total=manifest.num_rows,
            progress=progress,
            overwrite=overwrite,
            force=force,
            lease_ttl_s=lease_ttl_s,
            resume_by_id=resume_by_id,
        )
    return RenderRows(job)


class RenderRows:
    """The rows of a ``render`` call as they finish.  Rendering happens while they are read: an iterator that is
    dropped unread rendered nothing, which is said (a UserWarning) rather than left silent."""

    def __init__(self, job: RenderJob):
        self.job, self._rows, self._started = job, iter(job), False

    def __iter__(self) -> RenderRows:
        return self

    def __next__(self) -> dict:
        self._started = True
        return next(self._rows)

    @property
    def summary(self):
        """The run's counts so far (ok, failed, skipped)."""
        return self.job.summary

    def __del__(self):
        if not getattr(self, "_started", True):
            warnings.warn(
                "ditfarm.render(...) returned rows that were never read, so nothing was rendered: "
                "iterate them (`for row in ditfarm.render(...)`) or `list(...)` them",
                UserWarning,
                stacklevel=2,
            )
