"""Where a job's output lives: a local folder or an ``s3://bucket/prefix``, behind one small interface.

An output location holds ``videos/<id>.mp4`` and ``results/part-<run>-<n>.parquet``.  Everything a job writes
goes through an ``OutputStore``:

* a video is encoded into a temporary file and then *published* whole (a rename on disk; one PUT or a multipart
  upload that is aborted on failure in S3), so a reader never sees half a video;
* a results part is written whole the same way;
* a rerun learns what exists with one listing of ``videos/`` and one read of every part under ``results/``,
  never one request per id.

Keys are built only from the prefix and ids that passed ``check_video_id``, and are checked again to lie under
the prefix, so nothing can be written outside the output location.

S3 access is boto3's (endpoint, credentials, region and profile from the standard ``AWS_*`` variables and
files).  Error messages name the bucket, key and the service's error code, never a credential; ``redact``
scrubs any secret that a library might have put into a message anyway.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import mimetypes
import os
import re
import shutil
import tempfile
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ..uris import is_s3, split_s3_uri
from .conditional import ConditionalObject, LocalConditionalFile, S3ConditionalObject
from .errors import (
    SECRET_VARIABLES,
    OutputFull,
    StorageError,
    UnreadablePart,
    describe_s3_error,
    is_full,
    shown_endpoint,
)
from .waits import waiting_on

ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,128}")
VIDEOS, RESULTS = "videos", "results"
TEMP_MARK = ".tmp-"  # local temporary files carry this; a run clears stale ones at its start
DAMAGED_RESULTS = "damaged-results"  # where --repair moves results parts that cannot be read
PART_PREFIX, FENCE_PREFIX = "part-", "fence-"  # results/ holds parts and the fences of runs that lost the lease
LOCAL_TEMP_PREFIX = "ditfarm-video-"  # + "<pid>-": a process's temporary folders for S3 uploads, under the temp dir
MULTIPART_THRESHOLD = 16 * 1024 * 1024
CONDITIONAL_ATTEMPTS = 3  # conditional uploads of one video before it fails (the key changing under it each time)
MIN_MP4_BYTES = 256  # smaller than any whole H.264 mp4: judged for ok rows that recorded no size


RESERVE_BYTES = 1024 * 1024  # set aside on a local output at the start: room for the last rows and the lease


def check_video_id(video_id: object) -> str | None:
    """The problem with an id as a file name, or None: ids name objects, so they must be path-safe."""
    if not isinstance(video_id, str):
        return "id is missing (null)"
    if not ID_PATTERN.fullmatch(video_id):
        return "id must match [A-Za-z0-9._-]{1,128} (it names the output file; no '/', no spaces)"
    if video_id.startswith(".") or ".." in video_id:
        return "id must not start with '.' or contain '..' (it names the output file)"
    return None


# What may travel to remote workers: which store and where the credentials are, never the credentials.  Ray
# writes a runtime environment's variables in plain text to its logs (runtime_env_agent.log) and shows them in
# its state API (`ray list actors --detail`), so keys and tokens reach workers another way: the nodes' own
# environment, an instance role, or a credentials file on every node (AWS_SHARED_CREDENTIALS_FILE, owner-only).
# An allow-list rather than a deny-list: a credential variable added to boto3 later stays at home by default.
SHAREABLE_SETTINGS = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_PROFILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CONFIG_FILE",
    "AWS_CA_BUNDLE",
    "AWS_MAX_ATTEMPTS",
    "AWS_RETRY_MODE",
)
CREDENTIAL_VARIABLES = ("AWS_ACCESS_KEY_ID", *SECRET_VARIABLES)


def storage_env() -> dict[str, str]:
    """Every storage setting of this process (AWS_* variables), credentials included: what its clients use."""
    return {k: v for k, v in os.environ.items() if k.startswith("AWS_")}


def shareable_storage_env() -> dict[str, str]:
    """The storage settings remote workers get from this process: which endpoint, region and profile, and the
    path of a credentials file, but no key or token (see SHAREABLE_SETTINGS)."""
    return {k: v for k, v in os.environ.items() if k in SHAREABLE_SETTINGS}


def check_credentials_file() -> None:
    """Refuse a credentials file named by AWS_SHARED_CREDENTIALS_FILE that others may read: it holds the secret
    every node uses, so it must be its owner's alone (mode 0600), as ssh insists for its keys."""
    path = os.environ.get("AWS_SHARED_CREDENTIALS_FILE")
    if not path or not os.path.exists(path):
        return
    mode = os.stat(path).st_mode & 0o777
    if mode & 0o077:
        raise StorageError(
            f"the credentials file {path} (AWS_SHARED_CREDENTIALS_FILE) may be read by others "
            f"(mode {mode:04o}): make it its owner's alone with `chmod 600 {path}`"
        )


# (connect timeout s, read timeout s, attempts): every call is bounded.  A stalled endpoint (one that accepts
# connections and never answers) costs a call at most attempts x (connect + read) plus backoff.
CALL_TIMEOUTS = (5, 30, 4)
PROBE_TIMEOUTS = (3, 5, 2)  # the start-up probe: an endpoint that does not answer is refused in seconds


def s3_client(probe: bool = False):
    """A boto3 S3 client with connect and read timeouts and standard retries (transient errors are retried with
    backoff); ``probe``: the start-up check's, whose short timeouts refuse a silent endpoint in seconds.  One per
    process, kind and set of AWS_* settings: clients are thread-safe and slow to build."""
    return _cached_client(tuple(sorted(storage_env().items())), PROBE_TIMEOUTS if probe else CALL_TIMEOUTS)


@functools.lru_cache(maxsize=8)
def _cached_client(settings: tuple, timeouts: tuple[int, int, int]):
    import boto3  # deferred: boto3
    from botocore.config import Config  # deferred: botocore

    connect, read, attempts = timeouts
    config = Config(retries={"max_attempts": attempts, "mode": "standard"}, connect_timeout=connect, read_timeout=read)
    return boto3.session.Session().client("s3", config=config)


def download_prefix(uri: str, dest: Path) -> int:
    """Copy every object under the ``s3://bucket/prefix`` folder into ``dest`` (keys relative to the prefix) with
    the bounded, retrying client; the number of files.  A key that would land outside ``dest`` is refused."""
    bucket, prefix = split_s3_uri(uri)
    client, count = s3_client(), 0
    try:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/" if prefix else "")
        for page in pages:
            for obj in page.get("Contents", []):
                relative = obj["Key"][len(prefix) :].lstrip("/")
                if not relative or relative.endswith("/"):
                    continue
                path = dest / relative
                if dest.resolve() not in path.resolve().parents:
                    raise ValueError(f"refusing object key {obj['Key']!r}: it leaves the folder {uri}")
                path.parent.mkdir(parents=True, exist_ok=True)
                with waiting_on(
                    f"downloading s3://{bucket}/{obj['Key']} (endpoint {shown_endpoint(client.meta.endpoint_url)})"
                ):
                    client.download_file(bucket, obj["Key"], str(path))
                count += 1
    except (ValueError, OSError):
        raise
    except Exception as err:
        raise StorageError(describe_s3_error(err, "download", uri)) from None
    return count


# Answers that no retry or other call can get past, named for what a person must fix.
FATAL_S3_CODES = {
    "NoSuchBucket": "",  # the service's own message says it
    "InvalidAccessKeyId": "the access key is not known to this endpoint: check the credentials",
    "SignatureDoesNotMatch": "the secret key does not match the access key: check the credentials",
    "ExpiredToken": "the session token has expired: renew the credentials",
    "InvalidToken": "the session token is not valid: renew the credentials",
}


def probe_s3(bucket: str, prefix: str, where: str) -> None:
    """One listing with the probe's short timeouts: StorageError in seconds when the endpoint does not answer
    (before any slower call would wait on it), naming the endpoint but no credential."""
    check_credentials_file()
    client = s3_client(probe=True)
    try:
        client.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1)
    except Exception as err:
        from botocore.exceptions import ClientError, NoCredentialsError  # deferred: botocore

        if isinstance(err, NoCredentialsError):
            raise StorageError(describe_s3_error(err, "access", where)) from None
        if isinstance(err, ClientError):  # it answered: what is certain to stop every call is said here
            code = err.response.get("Error", {}).get("Code", "")
            if code in FATAL_S3_CODES:
                hint = f" ({FATAL_S3_CODES[code]})" if FATAL_S3_CODES[code] else ""
                raise StorageError(describe_s3_error(err, "access", where) + hint) from None
            return  # access denied to a listing, say: the callers' own calls say what they cannot do
        connect, read, attempts = PROBE_TIMEOUTS
        raise StorageError(
            describe_s3_error(err, f"reach {shown_endpoint(client.meta.endpoint_url)} for", where)
            + f" (no answer within {connect + read} s, {attempts} tries)"
        ) from None


@dataclass(frozen=True)
class StoredVideo:
    """A published video: where it is, its size as the storage reports it, and a digest of its bytes (S3's ETag as
    written, ``etag:<etag>``; a local file's ``sha256:<hex>``) with, on a local disk, its modification time: a
    rerun compares them with what the storage holds then."""

    uri: str
    size: int
    digest: str | None = None
    mtime_ns: int | None = None


@dataclass(frozen=True)
class VideoStat:
    """What one listing of videos/ says of a stored video, without reading it: its size, and its ETag (S3) or its
    modification time (a local disk)."""

    size: int
    etag: str | None = None
    mtime_ns: int | None = None


def etag_digest(etag: str | None) -> str | None:
    """An S3 ETag as a digest (the quotes S3 puts around it dropped)."""
    return None if not etag else "etag:" + etag.strip('"')


def upload_etag(path, part_bytes: int | None = None) -> str:
    """The ETag S3 gives ``path`` uploaded as ``_upload`` uploads it: the MD5 of the bytes for one PUT, the MD5 of
    the parts' MD5s and their count for a multipart upload (parts of MULTIPART_THRESHOLD bytes)."""
    part_bytes = part_bytes or MULTIPART_THRESHOLD
    digests = []
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(part_bytes), b""):
            digests.append(hashlib.md5(chunk).digest())
    if len(digests) <= 1:
        return (digests[0] if digests else hashlib.md5(b"").digest()).hex()
    return hashlib.md5(b"".join(digests)).hexdigest() + f"-{len(digests)}"


def file_digest(path) -> str:
    """A local file's digest: ``sha256:<hex>`` of its bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def _write_failure(err: BaseException, what: str) -> StorageError:
    """An OSError from writing (a full disk, a read-only folder, a failed encode) as the row's StorageError."""
    reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
    return (OutputFull if is_full(err) else StorageError)(f"cannot write {what}: {reason}")


@dataclass(frozen=True)
class OutputLocation:
    """A picklable description of an output location; ``open()`` gives the store in whatever process needs it
    (the driver, or rank 0 of a gang on another node)."""

    uri: str
    writer_run: str | None = None  # the run publishing here: each video is published only while it holds the lease

    def __post_init__(self):
        if is_s3(self.uri):
            split_s3_uri(self.uri)  # raises on a URI without a bucket

    @property
    def is_s3(self) -> bool:
        return is_s3(self.uri)

    def open(self) -> OutputStore:
        if self.is_s3:
            bucket, prefix = split_s3_uri(self.uri)
            return S3Store(bucket, prefix)
        return LocalStore(Path(self.uri))

    def join(self, *parts: str) -> str:
        return "/".join([self.uri.rstrip("/"), *parts])


class OutputStore(ABC):
    """What the driver and the renderers need from an output location."""

    location: OutputLocation

    @abstractmethod
    def check_writable(self) -> None:
        """Raise StorageError (before anything renders) if this location cannot be written."""

    @abstractmethod
    def exists(self) -> bool:
        """Whether anything was ever written here (a folder, or any object under the prefix)."""

    def reserve_space(self) -> None:
        """Set space aside for the end of the run (its last results part, the lease's release), so that a disk
        that fills mid-run still takes them (``release_reserve``).  Object stores do not fill: nothing to do."""

    def release_reserve(self) -> None:
        """Give the space set aside back (when the disk is full, or the run ends)."""

    @abstractmethod
    def store_video(self, video_id: str, write, fence=None, absent: bool = False) -> StoredVideo:
        """Publish the file that ``write(path)`` creates as ``videos/<id>.mp4`` and read its size back.  ``absent``:
        the run's listing had no video of this id (an object store then need not read the key first).

        ``fence()`` (when given) runs right before the file is published and raises to stop it (a run that lost
        the output's lease publishes nothing).  A failure to write, publish or read back is a StorageError that
        names the key; nothing is left at the key by a failed call that was not there before."""

    @abstractmethod
    def video_stats(self) -> dict[str, VideoStat]:
        """Stored videos with their sizes and ETags or modification times: one listing of videos/."""

    def video_ids(self) -> set[str]:
        """Ids with a stored video."""
        return set(self.video_stats())

    @abstractmethod
    def holds_video(self, video_id: str, stat: VideoStat, size: int | None, digest: str | None, mtime_ns=None) -> bool:
        """Whether the listed video (``stat``) is the one a row recorded (its ``size``, ``digest`` and, on a local
        disk, ``mtime_ns``), reading it only where the listing cannot tell: a local file whose time changed is
        hashed.  A row without a digest (written before rows had one) is judged by its size alone."""

    @abstractmethod
    def write_part(self, name: str, table: pa.Table) -> str:
        """Write one results part whole; returns where it went."""

    @abstractmethod
    def results_names(self) -> list[str]:
        """The names of the files under results/ (parts and fences; temporary files excluded): one listing."""

    @abstractmethod
    def write_results_file(self, name: str, data: bytes) -> str:
        """Publish ``data`` whole as results/<name>; returns where it went."""

    @abstractmethod
    def read_results_file(self, name: str) -> bytes:
        """The bytes of results/<name>."""

    def part_names(self) -> list[str]:
        """The results parts present, in name (= time) order."""
        return sorted(n for n in self.results_names() if n.startswith(PART_PREFIX) and n.endswith(".parquet"))

    def counted_part_names(self) -> list[str]:
        """The parts a reader counts: every part, less those a fenced-out run wrote after it lost the lease.

        When a run takes over a lease whose holder stopped renewing (a paused VM, a stalled S3), it writes
        ``results/fence-<old run>.json`` listing the old run's parts as they were at the take-over.  The old run
        checks its lease before every write and so normally writes nothing more; a part that it still managed
        to write (it paused between its check and its write) is absent from that list and is not counted."""
        names = self.results_names()
        parts = sorted(n for n in names if n.startswith(PART_PREFIX) and n.endswith(".parquet"))
        fences = [n for n in names if n.startswith(FENCE_PREFIX) and n.endswith(".json")]
        if not fences:
            return parts
        allowed = {}
        for name in fences:
            try:
                allowed[name[len(FENCE_PREFIX) : -len(".json")]] = set(
                    json.loads(self.read_results_file(name))["parts"]
                )
            except (ValueError, KeyError, TypeError):  # a damaged fence fences the run's parts out entirely
                allowed[name[len(FENCE_PREFIX) : -len(".json")]] = set()
        return [n for n in parts if part_run(n) not in allowed or n in allowed[part_run(n)]]

    def fence_run(self, run_id: str, by: str) -> str:
        """Record ``run_id``'s parts as they are now: any it writes later is not counted (``counted_part_names``)."""
        parts = [n for n in self.part_names() if part_run(n) == run_id]
        data = json.dumps({"run": run_id, "fenced_by": by, "parts": parts}, indent=1).encode()
        return self.write_results_file(f"{FENCE_PREFIX}{run_id}.json", data)

    @abstractmethod
    def read_part(self, name: str, columns: list[str] | None = None) -> pa.Table:
        """One results part (only ``columns``, when given)."""

    @abstractmethod
    def clear_unfinished(self) -> int:
        """Remove what killed runs left behind (temporary files, unfinished multipart uploads)."""

    @abstractmethod
    def write_text(self, name: str, text: str) -> str:
        """Publish ``text`` (UTF-8) whole as the file ``name`` at the top of the location (a report, say), replacing
        any older one, so a reader sees the old or the new file, never half of one; returns its URI."""

    def video_uri(self, video_id: str) -> str:
        return self.location.join(VIDEOS, f"{video_id}.mp4")

    @abstractmethod
    def conditional(self, name: str) -> ConditionalObject:
        """The file ``name`` at the top of the location as an object that racing runs write by compare-and-swap
        (the output's lease)."""

    @abstractmethod
    def local_video(self, video_id: str):
        """A context manager giving a local path of ``videos/<id>.mp4`` to read (the file itself, or a temporary
        copy of an object store's, removed after)."""

    def read_results(
        self, columns: list[str] | None = None, threads: int = 16, unreadable: list | None = None
    ) -> list[pa.Table]:
        """Every part, in name order; read concurrently, since a long-lived output holds many small parts and
        each is one request.  A part that is not readable Parquet raises UnreadablePart naming it, or, where the
        caller passes an ``unreadable`` list, is left out and added to it as (name, reason)."""
        names = self.counted_part_names()

        def read(name: str):
            try:
                return self.read_part(name, columns)
            except (pa.ArrowException, OSError) as err:  # garbage, truncated, or gone since the listing
                return (name, str(err).splitlines()[0][:300] if str(err) else type(err).__name__)

        if len(names) <= 1:
            read_parts = [read(name) for name in names]
        else:
            with ThreadPoolExecutor(max_workers=min(threads, len(names)), thread_name_prefix="results") as pool:
                read_parts = list(pool.map(read, names))
        bad = [part for part in read_parts if isinstance(part, tuple)]
        if bad and unreadable is None:
            raise UnreadablePart(bad, self.location.uri, DAMAGED_RESULTS)
        if unreadable is not None:
            unreadable.extend(bad)
        return [part for part in read_parts if not isinstance(part, tuple)]

    @abstractmethod
    def set_aside_part(self, name: str) -> str:
        """Move results/<name> to DAMAGED_RESULTS/<name> (``--repair``), out of what readers count; returns where."""


def part_run(name: str) -> str:
    """The run id in a part's name, ``part-<run>-<n>.parquet``."""
    return name[len(PART_PREFIX) :].rsplit("-", 1)[0]


def read_parquet_columns(source, columns: list[str] | None) -> pa.Table:
    """A Parquet file's ``columns`` that it has (all of them for None): parts written before a column was added
    lack it, and the reader fills it with nulls."""
    file = pq.ParquetFile(source)
    if columns is None:
        return file.read()
    return file.read(columns=[c for c in columns if c in file.schema_arrow.names])


def probe_folder(folder: Path, what: str) -> None:
    """Create ``folder`` if need be, then write a byte to a file in it and remove it: StorageError naming
    ``what`` when that fails (read-only, full, not a folder).  Root ignores permission bits, not a read-only
    mount or a full disk, so a write is the only honest check."""
    probe = Path(folder) / f"{TEMP_MARK}probe-{uuid.uuid4().hex}"
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"\0")
        probe.unlink()
    except OSError as err:
        with contextlib.suppress(OSError):
            probe.unlink(missing_ok=True)
        reason = err.strerror or str(err)
        raise (OutputFull if is_full(err) else StorageError)(f"cannot write to {what}: {reason}") from None


def clear_local_temp(root: str | os.PathLike | None = None) -> int:
    """Remove the temporary folders that dead processes left under the temp dir (a killed S3 run's encodes, each
    named by the pid that made it); a live process's folders are left alone.  Returns how many were removed."""
    removed = 0
    for path in Path(root or tempfile.gettempdir()).glob(f"{LOCAL_TEMP_PREFIX}*"):
        pid = path.name[len(LOCAL_TEMP_PREFIX) :].split("-", 1)[0]
        if path.is_dir() and pid.isdigit() and not _process_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _checked_name(video_id: str) -> str:
    problem = check_video_id(video_id)
    if problem:
        raise ValueError(f"refusing to store video {video_id!r}: {problem}")
    return f"{video_id}.mp4"


def _checked_file_name(name: str) -> str:
    """A top-level file name (``report.html``): path-safe like an id, and not one of the store's folders."""
    problem = check_video_id(name)
    if problem or name in (VIDEOS, RESULTS):
        raise ValueError(
            f"refusing to write {name!r} at the top of the output: {problem or 'it names a folder of the output'}"
        )
    return name


class LocalStore(OutputStore):
    def __init__(self, root: Path):
        self.root = Path(root)
        self.location = OutputLocation(str(self.root.resolve()))
        self.videos = self.root / VIDEOS
        self.results = self.root / RESULTS

    def check_writable(self) -> None:
        """Write and remove a small file in every folder a run writes (the top for the lease and the report,
        videos/, results/), so a read-only or full folder stops the run before anything renders."""
        for folder in (self.root, self.videos, self.results):
            probe_folder(folder, f"output folder {folder}")

    def exists(self) -> bool:
        return self.root.is_dir()

    def reserve_space(self) -> None:
        self._reserve = self.root / f"{TEMP_MARK}reserve-{uuid.uuid4().hex}"
        try:
            fd = os.open(self._reserve, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            try:
                if hasattr(os, "posix_fallocate"):
                    os.posix_fallocate(fd, 0, RESERVE_BYTES)  # blocks taken now, not at the first write
                else:
                    os.write(fd, os.urandom(RESERVE_BYTES))
            finally:
                os.close(fd)
        except OSError as err:
            self.release_reserve()
            raise _write_failure(
                err, f"{RESERVE_BYTES // 1024} KiB of room for the end of the run in {self.root}"
            ) from None

    def release_reserve(self) -> None:
        reserve = getattr(self, "_reserve", None)
        if reserve is not None:
            reserve.unlink(missing_ok=True)
            self._reserve = None

    def store_video(self, video_id: str, write, fence=None, absent: bool = False) -> StoredVideo:
        target = self.videos / _checked_name(video_id)
        tmp = self.videos / f"{TEMP_MARK}{uuid.uuid4().hex}-{target.name}"
        try:
            write(tmp)
            stat = tmp.stat()
            digest = file_digest(tmp)
            if fence is not None:
                fence()
            os.replace(tmp, target)  # a rename keeps the file's modification time: the row records this one
        except OSError as err:
            raise _write_failure(err, f"{VIDEOS}/{target.name} in {self.root}") from None
        finally:
            tmp.unlink(missing_ok=True)
        return StoredVideo(str(target.resolve()), stat.st_size, digest, stat.st_mtime_ns)

    def video_uri(self, video_id: str) -> str:
        return str((self.videos / f"{video_id}.mp4").resolve())

    @contextlib.contextmanager
    def local_video(self, video_id: str):
        yield Path(self.video_uri(video_id))

    def conditional(self, name: str) -> ConditionalObject:
        return LocalConditionalFile(self.root / _checked_file_name(name))

    def video_stats(self) -> dict[str, VideoStat]:
        if not self.videos.is_dir():
            return {}
        stats = {}
        for entry in os.scandir(self.videos):
            if entry.name.endswith(".mp4") and not entry.name.startswith("."):
                stat = entry.stat()
                stats[entry.name[:-4]] = VideoStat(stat.st_size, mtime_ns=stat.st_mtime_ns)
        return stats

    def holds_video(self, video_id: str, stat: VideoStat, size: int | None, digest: str | None, mtime_ns=None) -> bool:
        if not _same_size(stat, size):
            return False
        if digest is None or not digest.startswith("sha256:"):  # an older row, or one another kind of store wrote
            return True
        if mtime_ns is not None and stat.mtime_ns == mtime_ns:
            return True
        try:  # rewritten, copied or touched since: its bytes decide
            return file_digest(self.videos / _checked_name(video_id)) == digest
        except OSError:
            return False

    def write_part(self, name: str, table: pa.Table) -> str:
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        return self.write_results_file(name, buffer.getvalue())

    def write_results_file(self, name: str, data: bytes) -> str:
        path = self.results / name
        tmp = self.results / f"{TEMP_MARK}{uuid.uuid4().hex}-{name}"
        try:
            tmp.write_bytes(data)
            os.replace(tmp, path)
        except OSError as err:
            raise _write_failure(err, f"{RESULTS}/{name} in {self.root}") from None
        finally:
            tmp.unlink(missing_ok=True)
        return str(path)

    def read_results_file(self, name: str) -> bytes:
        return (self.results / name).read_bytes()

    def results_names(self) -> list[str]:
        if not self.results.is_dir():
            return []
        return [p.name for p in os.scandir(self.results) if not p.name.startswith(".") and p.is_file()]

    def read_part(self, name: str, columns: list[str] | None = None) -> pa.Table:
        return read_parquet_columns(self.results / name, columns)

    def set_aside_part(self, name: str) -> str:
        target = self.root / DAMAGED_RESULTS / _checked_file_name(name)
        try:
            target.parent.mkdir(exist_ok=True)
            os.replace(self.results / _checked_file_name(name), target)
        except OSError as err:
            raise _write_failure(err, f"{DAMAGED_RESULTS}/{name} in {self.root}") from None
        return str(target)

    def write_text(self, name: str, text: str) -> str:
        target = self.root / _checked_file_name(name)
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f"{TEMP_MARK}{uuid.uuid4().hex}-{name}"
        try:
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return str(target.resolve())

    def clear_unfinished(self) -> int:
        removed = 0
        for folder in (self.videos, self.results, self.root):  # the root: write_text's temporary files
            if folder.is_dir():
                for path in folder.iterdir():  # ours (.tmp-*) and write_mp4's own (.<name>.<pid>.tmp.mp4)
                    if path.name.startswith(".") and ".tmp" in path.name and path.is_file():
                        path.unlink(missing_ok=True)
                        removed += 1
        return removed


class S3Store(OutputStore):
    def __init__(self, bucket: str, prefix: str, client=None):
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.location = OutputLocation(f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}")
        self._client = client
        self._head_allowed = True  # until a HEAD is refused (credentials that may write but not read)

    @property
    def client(self):
        if self._client is None:
            self._client = s3_client()
        return self._client

    def _key(self, *parts: str) -> str:
        key = "/".join(([self.prefix] if self.prefix else []) + list(parts))
        if any(p in ("", ".", "..") for p in key.split("/")) or not key.startswith(self.prefix):
            raise ValueError(f"refusing key {key!r}: it would leave s3://{self.bucket}/{self.prefix}")
        return key

    def conditional(self, name: str) -> ConditionalObject:
        return S3ConditionalObject(self.client, self.bucket, self._key(_checked_file_name(name)))

    @contextlib.contextmanager
    def local_video(self, video_id: str):
        name = _checked_name(video_id)
        with tempfile.TemporaryDirectory(prefix="ditfarm-video-") as tmp:
            path = Path(tmp) / name
            self.client.download_file(self.bucket, self._key(VIDEOS, name), str(path))
            yield path

    def _where(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def _waiting(self, doing: str, key: str):
        """Register a call that may stall, for the progress line (waits.py)."""
        return waiting_on(f"{doing} {self._where(key)} (endpoint {shown_endpoint(self.client.meta.endpoint_url)})")

    def check_writable(self) -> None:
        probe_folder(
            Path(tempfile.gettempdir()),
            f"the temporary folder {tempfile.gettempdir()} (where videos are encoded before their upload)",
        )
        probe_s3(self.bucket, self.prefix, self.location.uri)
        key = self._key(RESULTS, f"{TEMP_MARK}probe-{uuid.uuid4().hex}")
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=b"")
        except Exception as err:
            raise StorageError(describe_s3_error(err, "write to", self.location.uri)) from None
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except Exception as err:
            raise StorageError(describe_s3_error(err, "delete from", self.location.uri)) from None

    def store_video(self, video_id: str, write, fence=None, absent: bool = False) -> StoredVideo:
        """Encode, read what the key holds now, check the lease (``fence``), then upload on the condition that the
        key still holds what was read: ``If-None-Match: *`` where it held nothing, ``If-Match: <etag>`` where it
        held a video.  An upload that stalls past a take-over (botocore's retries can outlast a lease) then lands
        nowhere: the run that took over wrote the key since, so the condition fails; this run's next lease check
        fails too, and the video is refused (LeaseLost), never stored over the newer video its row describes.
        Where the condition fails while the lease is still this run's, the key holds this very upload (its answer
        was lost and the retry met it) or a late write of a run that lost the lease: the first is kept, the second
        overwritten, on the condition of what the key holds now."""
        key = self._key(VIDEOS, _checked_name(video_id))
        try:
            with tempfile.TemporaryDirectory(prefix=f"{LOCAL_TEMP_PREFIX}{os.getpid()}-") as tmp:
                path = Path(tmp) / f"{video_id}.mp4"
                write(path)
                size = path.stat().st_size
                expected = upload_etag(path)
                for attempt in range(CONDITIONAL_ATTEMPTS):
                    # what the key holds, read before the lease check: the upload's condition (an id the run's
                    # listing did not have needs no read: "nothing", and a wrong guess only costs a retry)
                    seen = None if absent and not attempt else self._stored_stat(key)
                    if attempt and seen is not None and (seen.etag or "").strip('"') == expected:
                        etag = seen.etag  # this upload landed and its answer was lost
                        break
                    if fence is not None:
                        fence()
                    etag = self._upload(path, key, seen.etag if seen is not None else None)
                    if etag is not None:
                        break
                else:
                    raise StorageError(f"{self._where(key)} kept changing while this run uploaded it; not stored")
        except OSError as err:  # the local temporary folder: full, read-only, or the encoder failed
            raise _write_failure(err, f"{self._where(key)} (its local temporary file)") from None
        if etag and etag.strip('"') == expected:  # S3 computed this file's MD5(s): stored whole, no read-back needed
            return StoredVideo(self._where(key), size, etag_digest(etag))
        stored = self._stored_stat(key)  # an ETag that is no MD5 (SSE-KMS, some servers): read the size back
        if stored is None or stored.size != size:
            held = "nothing" if stored is None else f"{stored.size} bytes"
            raise StorageError(f"{self._where(key)} holds {held} after its upload of {size} bytes")
        return StoredVideo(self._where(key), size, etag_digest(stored.etag))

    def exists(self) -> bool:
        prefix = f"{self.prefix}/" if self.prefix else ""
        try:
            with self._waiting("listing", prefix):
                listed = self.client.list_objects_v2(Bucket=self.bucket, Prefix=prefix, MaxKeys=1)
        except Exception as err:
            raise StorageError(describe_s3_error(err, "list", self.location.uri)) from None
        return listed.get("KeyCount", 0) > 0

    def _stored_stat(self, key: str) -> VideoStat | None:
        """The size and ETag of the object at ``key`` as the storage reports them, None when it is absent: a HEAD
        (one keyed lookup), or, where the credentials may write the videos but not read them, a listing of the key
        (the permission a rerun needs anyway; on some S3 servers a listing costs in proportion to the bucket)."""
        from botocore.exceptions import ClientError  # deferred: botocore

        if self._head_allowed:
            try:
                with self._waiting("reading back", key):
                    head = self.client.head_object(Bucket=self.bucket, Key=key)
                return VideoStat(int(head["ContentLength"]), etag=head.get("ETag"))
            except ClientError as err:
                status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                if status == 404:
                    return None
                if status != 403:
                    raise StorageError(describe_s3_error(err, "read back", self._where(key))) from None
                self._head_allowed = False  # reading is not allowed: list from now on
            except Exception as err:
                raise StorageError(describe_s3_error(err, "read back", self._where(key))) from None
        try:
            with self._waiting("reading back", key):
                listed = self.client.list_objects_v2(Bucket=self.bucket, Prefix=key, MaxKeys=10)
        except Exception as err:
            raise StorageError(describe_s3_error(err, "read back", self._where(key))) from None
        return next(
            (VideoStat(int(o["Size"]), etag=o.get("ETag")) for o in listed.get("Contents", []) if o["Key"] == key),
            None,
        )

    def _upload(self, path: Path, key: str, expected_etag: str | None) -> str | None:
        """Upload ``path`` to ``key`` if the key still holds ``expected_etag`` (None: nothing): one conditional PUT,
        or a multipart upload whose completion carries the condition.  The stored object's ETag ("" where the answer
        had none), or None when the condition failed (the key changed since it was read); other failures are
        StorageErrors naming the key."""
        from botocore.exceptions import ClientError  # deferred: botocore

        condition = {"IfMatch": expected_etag} if expected_etag else {"IfNoneMatch": "*"}
        try:
            with self._waiting("uploading", key):
                if path.stat().st_size <= MULTIPART_THRESHOLD:
                    with open(path, "rb") as body:
                        answer = self.client.put_object(Bucket=self.bucket, Key=key, Body=body, **condition)
                else:
                    answer = self._multipart_upload(path, key, condition)
            return answer.get("ETag") or ""
        except ClientError as err:
            status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            self._abort_uploads(key)
            if status in (409, 412) or err.response.get("Error", {}).get("Code") in (
                "PreconditionFailed",
                "ConditionalRequestConflict",
            ):
                return None
            raise StorageError(describe_s3_error(err, "upload", self._where(key))) from None
        except Exception as err:
            self._abort_uploads(key)
            raise StorageError(describe_s3_error(err, "upload", self._where(key))) from None

    def _multipart_upload(self, path: Path, key: str, condition: dict) -> dict:
        upload = self.client.create_multipart_upload(Bucket=self.bucket, Key=key)["UploadId"]
        parts = []
        with open(path, "rb") as f:
            for number, chunk in enumerate(iter(lambda: f.read(MULTIPART_THRESHOLD), b""), start=1):
                answer = self.client.upload_part(
                    Bucket=self.bucket, Key=key, UploadId=upload, PartNumber=number, Body=chunk
                )
                parts.append({"ETag": answer["ETag"], "PartNumber": number})
        return self.client.complete_multipart_upload(
            Bucket=self.bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": parts}, **condition
        )

    def _abort_uploads(self, key_prefix: str) -> int:
        """Abort unfinished multipart uploads under key_prefix (boto3 aborts its own; this also catches a
        process killed between parts)."""
        aborted = 0
        try:
            for page in self.client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=key_prefix
            ):
                for upload in page.get("Uploads", []):
                    self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                    aborted += 1
        except Exception:  # best effort: the upload's own error is the one to report
            pass
        return aborted

    def _list(self, folder: str) -> Iterable[dict]:
        prefix = self._key(folder) + "/"
        try:
            with self._waiting("listing", prefix):
                pages = list(self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix))
            for page in pages:
                yield from page.get("Contents", [])
        except Exception as err:
            raise StorageError(describe_s3_error(err, "list", self._where(prefix))) from None

    def video_stats(self) -> dict[str, VideoStat]:
        start = len(self._key(VIDEOS)) + 1
        stats = {}
        for obj in self._list(VIDEOS):
            name = obj["Key"][start:]
            if name.endswith(".mp4") and "/" not in name:
                stats[name[:-4]] = VideoStat(int(obj.get("Size", 0)), etag=obj.get("ETag"))
        return stats

    def holds_video(self, video_id: str, stat: VideoStat, size: int | None, digest: str | None, mtime_ns=None) -> bool:
        if not _same_size(stat, size):
            return False
        if digest is None or not digest.startswith("etag:") or stat.etag is None:  # an older row, another store
            return True
        return etag_digest(stat.etag) == digest  # the listing's ETag: nothing is downloaded

    def write_part(self, name: str, table: pa.Table) -> str:
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        return self.write_results_file(name, buffer.getvalue())

    def write_results_file(self, name: str, data: bytes) -> str:
        key = self._key(RESULTS, name)
        try:  # one PUT: the file appears whole or not at all
            with self._waiting("writing", key):
                self.client.put_object(Bucket=self.bucket, Key=key, Body=data)
        except Exception as err:
            raise StorageError(describe_s3_error(err, "write results file", self._where(key))) from None
        return self._where(key)

    def read_results_file(self, name: str) -> bytes:
        key = self._key(RESULTS, name)
        try:
            with self._waiting("reading", key):
                return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except Exception as err:
            raise StorageError(describe_s3_error(err, "read", self._where(key))) from None

    def results_names(self) -> list[str]:
        start = len(self._key(RESULTS)) + 1
        return [
            obj["Key"][start:]
            for obj in self._list(RESULTS)
            if "/" not in obj["Key"][start:] and not obj["Key"][start:].startswith(".")
        ]

    def read_part(self, name: str, columns: list[str] | None = None) -> pa.Table:
        return read_parquet_columns(pa.BufferReader(self.read_results_file(name)), columns)

    def set_aside_part(self, name: str) -> str:
        source, target = self._key(RESULTS, _checked_file_name(name)), self._key(DAMAGED_RESULTS, name)
        try:
            with self._waiting("setting aside", source):
                self.client.copy_object(
                    Bucket=self.bucket, Key=target, CopySource={"Bucket": self.bucket, "Key": source}
                )
                self.client.delete_object(Bucket=self.bucket, Key=source)
        except Exception as err:
            raise StorageError(describe_s3_error(err, "move aside", self._where(source))) from None
        return self._where(target)

    def write_text(self, name: str, text: str) -> str:
        """One PUT, on the condition that the object is still what was read just before (``If-Match`` /
        ``If-None-Match``): a write that stalls while another run writes the same page lands nowhere, so an older
        run's page never replaces a newer one's.  A refused condition leaves the newer page (or this write's own,
        whose answer was lost) in place."""
        from botocore.exceptions import ClientError  # deferred: botocore

        key = self._key(_checked_file_name(name))
        kind = mimetypes.guess_type(name)[0] or "text/plain"
        seen = self._stored_stat(key)
        condition = {"IfMatch": seen.etag} if seen is not None and seen.etag else {"IfNoneMatch": "*"}
        try:  # one PUT: the object is replaced whole
            with self._waiting("writing", key):
                self.client.put_object(
                    Bucket=self.bucket,
                    Key=key,
                    Body=text.encode("utf-8"),
                    ContentType=f"{kind}; charset=utf-8",
                    **condition,
                )
        except ClientError as err:
            if err.response.get("ResponseMetadata", {}).get("HTTPStatusCode") not in (409, 412):
                raise StorageError(describe_s3_error(err, "write", self._where(key))) from None
        except Exception as err:
            raise StorageError(describe_s3_error(err, "write", self._where(key))) from None
        return self._where(key)

    def clear_unfinished(self) -> int:
        return self._abort_uploads(self._key(VIDEOS) + "/") + self._abort_uploads(self._key(RESULTS) + "/")


def _same_size(stat: VideoStat, size: int | None) -> bool:
    """The listed size is the recorded one (a row without a size: at least a whole mp4's smallest)."""
    return stat.size == size if size is not None else stat.size >= MIN_MP4_BYTES


def open_output(out: str | os.PathLike) -> OutputStore:
    return OutputLocation(str(out)).open()


def arrow_s3_filesystem():
    """pyarrow's S3 filesystem configured as boto3 would be: the same endpoint (``AWS_ENDPOINT_URL``, ...),
    region and credentials (environment, profile, instance role), resolved once through a boto3 session, with
    short connect timeouts so an unreachable endpoint fails in seconds instead of retrying for minutes."""
    import boto3  # deferred: boto3

    session = boto3.session.Session()
    client = s3_client()
    kwargs = {
        "region": client.meta.region_name or "us-east-1",
        "connect_timeout": 5,
        "request_timeout": 30,
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=3),
    }
    endpoint = client.meta.endpoint_url
    if endpoint and not endpoint.endswith("amazonaws.com"):
        kwargs["endpoint_override"] = endpoint
    credentials = session.get_credentials()
    if credentials is not None:
        frozen = credentials.get_frozen_credentials()
        kwargs.update(access_key=frozen.access_key, secret_key=frozen.secret_key)
        if frozen.token:
            kwargs["session_token"] = frozen.token
    else:
        kwargs["anonymous"] = True
    return pafs.S3FileSystem(**kwargs)
