"""A model's checks read from its folder alone (``checks``' rules, no weights loaded): what ``--dry-run`` validates
rows with, the same rules the loaded pipelines apply.  The folder's family (``family``) says what they are; the
folder is checked as its load would check it first, so the dry run refuses what the load would."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from .checks import ModelChecks
from .family import family_of_folder
from .loading import resolve_model_folder


def model_checks(name_or_path: str | Path) -> ModelChecks:
    """The checks of a built-in model or model folder, read from its configs (and, for tiny, its 8 KB word table);
    an ``s3://`` model is fetched to this node's model cache first."""
    folder = resolve_model_folder(name_or_path)
    family = family_of_folder(folder)
    card = family.check_folder(folder)
    return replace(family.checks(folder, card), cache_settings=family.cache_settings(folder, card))
