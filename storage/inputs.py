"""Where a job reads its inputs from: the files of a source (a local file or folder, an ``s3://`` object or
prefix) with the pyarrow filesystem that reads them, through the same storage layer as the outputs: a silent
endpoint is refused in seconds (``probe_s3``), access problems are worded by the storage's errors, and no
credential appears in a message."""

from __future__ import annotations

from pathlib import Path

import pyarrow.fs as pafs

from ..uris import is_s3, split_s3_uri
from .errors import StorageError, redact
from .stores import arrow_s3_filesystem, probe_s3


class InputMissing(StorageError):
    """The source does not exist, or holds no file of the kind asked for."""


def input_files(source: str, suffix: str) -> tuple[list[str], pafs.FileSystem]:
    """(the files of ``source`` ending in ``suffix``, in name order; their filesystem).  A file is itself; a folder
    or prefix gives every such file under it.  Raises InputMissing, or StorageError for a source that cannot be
    read; the messages start with the source."""
    if is_s3(source):
        bucket, key = split_s3_uri(source)
        try:
            probe_s3(bucket, key, source)  # a silent endpoint is refused in seconds, before pyarrow waits on it
        except StorageError as err:
            raise StorageError(f"{source} cannot be read: {err}") from None
        filesystem = arrow_s3_filesystem()
        path = f"{bucket}/{key}" if key else bucket
        try:
            info = filesystem.get_file_info(path)
            if info.type == pafs.FileType.File and not source.endswith("/"):
                return [path], filesystem
            if info.type == pafs.FileType.NotFound:
                raise InputMissing(f"{source} does not exist (no such object or prefix)")
            found = filesystem.get_file_info(pafs.FileSelector(path, recursive=True))
        except OSError as err:
            denied = "ACCESS_DENIED" in str(err) or "AccessDenied" in str(err)
            reason = "access denied (the credentials may not read or list it)" if denied else redact(str(err))
            raise StorageError(f"{source} cannot be read: {reason}") from None
        files = sorted(f.path for f in found if f.type == pafs.FileType.File and f.path.endswith(suffix))
        if not files:
            raise InputMissing(f"{source}: no {suffix} objects under this prefix")
        return files, filesystem
    local = Path(source)
    if local.is_dir():
        files = sorted(str(p) for p in local.rglob(f"*{suffix}") if not p.name.startswith("."))
        if not files:
            raise InputMissing(f"folder {source} holds no {suffix} files")
        return files, pafs.LocalFileSystem()
    if not local.exists():
        raise InputMissing(f"{source} does not exist")
    return [str(local.resolve())], pafs.LocalFileSystem()


def input_file_size(source: str) -> int:
    """The size of one input file (a local path or an ``s3://`` object), read from its metadata alone (one HEAD,
    no download): what a dry run checks a row's image with.  Raises InputMissing or StorageError naming it."""
    filesystem, path = _one_file(source)
    return _file_info(filesystem, path, source).size


def read_input_file(source: str, max_bytes: int) -> bytes:
    """The bytes of one input file (a local path or an ``s3://`` object), refused past ``max_bytes`` before they
    are read.  Raises InputMissing, or StorageError naming the source and the problem."""
    filesystem, path = _one_file(source)
    size = _file_info(filesystem, path, source).size
    if size > max_bytes:
        raise StorageError(f"{source} is {size} bytes, more than the {max_bytes} an input of this kind may have")
    try:
        with filesystem.open_input_stream(path) as stream:
            return stream.read()
    except OSError as err:
        raise StorageError(f"{source} cannot be read: {redact(str(err))}") from None


def _one_file(source: str) -> tuple[pafs.FileSystem, str]:
    if is_s3(source):
        bucket, key = split_s3_uri(source)
        try:
            probe_s3(bucket, key, source)
        except StorageError as err:
            raise StorageError(f"{source} cannot be read: {err}") from None
        return arrow_s3_filesystem(), f"{bucket}/{key}"
    return pafs.LocalFileSystem(), str(Path(source).expanduser().resolve())


def _file_info(filesystem: pafs.FileSystem, path: str, source: str) -> pafs.FileInfo:
    try:
        info = filesystem.get_file_info(path)
    except OSError as err:
        denied = "ACCESS_DENIED" in str(err) or "AccessDenied" in str(err)
        reason = "access denied (the credentials may not read it)" if denied else redact(str(err))
        raise StorageError(f"{source} cannot be read: {reason}") from None
    if info.type == pafs.FileType.NotFound:
        raise InputMissing(f"{source} does not exist")
    if info.type != pafs.FileType.File:
        raise InputMissing(f"{source} is not a file")
    return info
