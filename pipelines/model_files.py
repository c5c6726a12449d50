"""Model folders that live in object storage, fetched once per node.

Every rank of every gang loads the full weights, and a node runs several ranks (one per GPU).  Downloading a
14 GB Wan2.1 folder once per rank would multiply the transfer by the ranks per node, so ``s3://`` models are
copied into a node-local cache folder by whichever process gets there first, under an exclusive file lock; the
others wait on the lock and then find the copy complete.  A copy is published by renaming a finished temporary
folder, so a process killed mid-download never leaves a half folder that a later one would trust.

The copy goes through the storage layer (``storage.stores.download_prefix``): its bounded, retrying client, with
the endpoint and credentials boto3 finds (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ...), and its errors.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..storage.inputs import read_input_file
from ..storage.stores import download_prefix
from ..uris import split_s3_uri

CACHE_ENV = "DITFARM_MODEL_CACHE"


@dataclass(frozen=True)
class FetchedModel:
    path: Path
    downloaded: bool  # True for the one process on this node that copied the files


def model_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "ditfarm" / "models")


def fetch_model(uri: str, cache_dir: Path | None = None) -> FetchedModel:
    """The local folder holding the model at ``uri`` (an ``s3://bucket/prefix``), downloading it if this node has
    no complete copy yet.  Safe to call from many processes at once."""

    def download(staging: Path) -> None:
        if download_prefix(uri, staging) == 0:
            raise ValueError(f"model {uri!r} holds no files")

    return _fetch_once(uri, Path(cache_dir or model_cache_dir()), download)


def fetch_file(uri: str, cache_dir: Path, max_bytes: int) -> Path:
    """The local copy of the one object at ``uri`` (an ``s3://`` URI), downloaded once per node as ``fetch_model``
    downloads folders; refused past ``max_bytes`` (StorageError naming it)."""

    def download(staging: Path) -> None:
        (staging / Path(split_s3_uri(uri)[1]).name).write_bytes(read_input_file(uri, max_bytes))

    folder = _fetch_once(uri, Path(cache_dir), download).path
    return folder / Path(split_s3_uri(uri)[1]).name


def _fetch_once(uri: str, cache_dir: Path, download) -> FetchedModel:
    """A node-local folder for ``uri``: the one published copy, or one this process fills by ``download(staging)``
    under an exclusive file lock and publishes by renaming."""
    bucket, prefix = split_s3_uri(uri)
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:16]
    target = cache_dir / f"{Path(prefix).name or bucket}-{key}"
    with open(cache_dir / f".{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        if target.is_dir():
            return FetchedModel(target, downloaded=False)
        staging = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=cache_dir))
        try:
            download(staging)
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return FetchedModel(target, downloaded=True)
