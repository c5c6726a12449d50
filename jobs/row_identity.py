"""A row's identity is what its video shows: a rerun renders again an id whose manifest row now asks for other
content than its stored video was rendered with.

Content is every input that changes the pixels of the stored mp4: the prompt and negative prompt, the seed, the
frames, sizes and steps, the guidance scales, the images, the LoRA and its scale, the mp4's frame rate and upscale,
and the model.  How the video was
computed (cache policy and knob, sequence parallelism, precision) is not content: a rerun with another cache keeps
the stored videos and says so.

The comparison is made per column, so a rerun can say which inputs changed.  A value the rerun cannot know (a
model default of a model this process cannot read, such as an ``s3://`` model rendered by gangs) is not compared;
a value a row did not record (a row written before the content columns existed, or by a renderer that leaves a
column empty) is not compared either, so an upgrade does not render a whole output again.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from ..uris import is_s3
from .manifest import RenderTask, row_images, row_lora, sampler_overrides
from .results import CONTENT_COLUMNS

SAMPLER_COLUMNS = {"frames": "num_frames", "height": "height", "width": "width", "steps": "steps"}


def wanted_content(task: RenderTask, settings, model_checks=None) -> dict:
    """What this run would render for ``task``: results column -> value, None where it cannot be known here
    (``model_checks``: the model's ModelChecks, for its defaults; None when this process cannot read the model)."""
    overrides = sampler_overrides(task, settings)
    defaults = getattr(model_checks, "defaults", None)
    video = getattr(model_checks, "video", None)
    wanted = {
        "prompt": task.prompt,
        "negative_prompt": task.negative_prompt or "",
        "seed": task.seed,
        "model": str(settings.model),
        **row_images(task, settings),
        **row_lora(task, settings),
    }
    for column, name in SAMPLER_COLUMNS.items():
        wanted[column] = overrides[name] if overrides[name] is not None else getattr(defaults, name, None)
    guidance = overrides["guidance_scale"]
    wanted["guidance_scale"] = float(guidance) if guidance is not None else getattr(defaults, "guidance_scale", None)
    wanted["guidance_scale_2"] = second_guidance(overrides, defaults, wanted["guidance_scale"], model_checks)
    wanted["fps"] = settings.fps or getattr(video, "fps", None)
    wanted["upscale"] = settings.upscale or getattr(video, "upscale", None)
    return wanted


def second_guidance(overrides: dict, defaults, first: float | None, model_checks) -> float | None:
    """The second expert's scale as the model resolves it (the row's, its card's, else the first scale); None
    where the model has one transformer or cannot be read here."""
    if getattr(model_checks, "experts", 1) < 2:
        return None
    chosen = overrides.get("guidance_scale_2")
    if chosen is None:
        chosen = getattr(defaults, "guidance_scale_2", None)
    return float(chosen) if chosen is not None else first


def changed_inputs(stored: dict, wanted: dict) -> list[str]:
    """The content columns whose stored value differs from what this run wants (empty: the same video)."""
    recorded_text = stored.get("prompt") is not None  # rows that record their prompt record its negative too ("")
    changed = []
    for column in CONTENT_COLUMNS:
        new, old = wanted.get(column), stored.get(column)
        if column == "negative_prompt" and recorded_text:
            old = old or ""
        if new is None or old is None:  # unknown here, or never recorded
            continue
        if not _same(column, old, new):
            changed.append(column)
    return changed


def _same(column: str, old, new) -> bool:
    if column == "model":
        return old == new or (old is not None and _model_key(old) == _model_key(new))
    if column in ("guidance_scale", "guidance_scale_2", "lora_scale") and old is not None:
        return math.isclose(float(old), float(new), rel_tol=0.0, abs_tol=1e-9)
    return old == new


def _model_key(model: str) -> str:
    """A model as a comparable name: a local folder by its absolute path (runs started from other folders name
    it differently), an ``s3://`` prefix without its trailing slash, a built-in model by its name."""
    if is_s3(model):
        return model.rstrip("/")
    if os.sep in model or os.path.exists(model):
        return os.path.abspath(model)
    return model


@dataclass
class ChangeTally:
    """Ids whose stored video shows other content than their manifest row now asks for, and which inputs."""

    ids: int = 0
    columns: dict = field(default_factory=dict)  # column -> [ids, (an example's stored value, this run's value)]

    def add(self, changed: list[str], stored: dict, wanted: dict) -> None:
        self.ids += 1
        for column in changed:
            entry = self.columns.setdefault(column, [0, (stored.get(column), wanted.get(column))])
            entry[0] += 1

    def describe(self) -> str:
        """Which inputs changed, how often, with one example each: ``prompt x3 (e.g. 'a' -> 'b'); seed x1 ...``."""
        return "; ".join(
            f"{column} x{count} (e.g. {_short(old)} -> {_short(new)})"
            for column, (count, (old, new)) in sorted(self.columns.items(), key=lambda kv: (-kv[1][0], kv[0]))
        )


def compare_row(task: RenderTask, stored_rows, settings, model_checks, tally: ChangeTally) -> bool:
    """Whether ``task``'s stored video shows what its row asks for; a change is counted in ``tally``."""
    stored = stored_rows.get(task.id) if stored_rows is not None else None
    if stored is None:
        return True
    wanted = wanted_content(task, settings, model_checks)
    changed = changed_inputs(stored, wanted)
    if changed:
        tally.add(changed, stored, wanted)
    return not changed


def _short(value, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
