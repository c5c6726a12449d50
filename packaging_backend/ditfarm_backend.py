"""The build backend: setuptools' own, with an editable install that no folder named ``ditfarm`` can shadow.

setuptools installs an editable ``ditfarm`` (whose subpackages live in top-level folders: setup.py maps them) as
an import finder appended to ``sys.meta_path``.  Python asks that finder only after its own path search, and the
path search returns a *namespace* package for any plain folder named ``ditfarm`` on ``sys.path``: the working
directory of a script that sits beside an output folder called ``ditfarm``, an empty one, or a clone.  So that
folder would shadow the install (``module 'ditfarm' has no attribute 'load_pipeline'``).

A regular package anywhere on ``sys.path`` beats a namespace folder, so the editable wheel also carries a ``.pth``
line that puts a link tree on ``sys.path``: ``build/editable-link/ditfarm``, a symbolic link to the source folder
``ditfarm/``.  The path search then finds the real ``ditfarm/__init__.py``, edits stay live (it is a link), and
the subpackages come from setuptools' finder as before.  Wheels and sdists are setuptools' own, unchanged.
"""

from __future__ import annotations

import base64
import hashlib
import os
import zipfile
from pathlib import Path

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F403 - every hook not overridden below is setuptools'

LINK_TREE = Path("build") / "editable-link"  # relative to the project folder, where pip runs the hooks
PTH_NAME = "__editable__.ditfarm-link-tree.pth"


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    name = _setuptools.build_editable(wheel_directory, config_settings, metadata_directory)
    project = Path.cwd().resolve()
    tree = project / LINK_TREE
    tree.mkdir(parents=True, exist_ok=True)
    link = tree / "ditfarm"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(project / "ditfarm", target_is_directory=True)
    add_file(Path(wheel_directory) / name, PTH_NAME, f"{tree}\n".encode())
    return name


def add_file(wheel: Path, name: str, data: bytes) -> None:
    """Add ``name`` to the wheel's root and to its RECORD (a wheel is a zip whose RECORD lists every file)."""
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    rebuilt = wheel.with_suffix(".tmp")
    with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(rebuilt, "w", zipfile.ZIP_DEFLATED) as target:
        for item in source.infolist():
            content = source.read(item.filename)
            if item.filename.endswith(".dist-info/RECORD"):
                content += f"{name},sha256={digest},{len(data)}\n".encode()
            target.writestr(item, content)
        target.writestr(name, data)
    os.replace(rebuilt, wheel)
