"""One small object that several runs may race to write, on any store: create it only if it is absent, replace it
only if it is still the version read (compare-and-swap), delete it only at that version.

S3 does this with conditional requests (``If-None-Match: *``, ``If-Match: <etag>``); a local folder with an
exclusive create and a lock file held for milliseconds around each read-compare-write.  The output's lease is one
such object; the store hands it out (``OutputStore.conditional``), so nothing above the storage layer knows which
store it has.  Ages are judged by the storage's own clock (S3's ``Last-Modified`` against the response's
``Date``; a file's mtime against this machine's clock), never by the writer's."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import time
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path

from .errors import OutputFull, StorageError, describe_s3_error, is_full, shown_endpoint
from .waits import waiting_on


@dataclass(frozen=True)
class Snapshot:
    """The object as read: its bytes, an opaque version for compare-and-swap, and its age in seconds."""

    data: bytes
    version: str
    age_s: float


class ConditionalObject(ABC):
    @abstractmethod
    def where(self) -> str:
        """The object's path or URI, for messages."""

    @abstractmethod
    def read(self) -> Snapshot | None:
        """The object now, or None when there is none."""

    @abstractmethod
    def create(self, data: bytes) -> str | None:
        """Write the object if none exists; its version, or None when one does.  A write that landed but whose
        answer was lost counts as this caller's (its retry meets the object it wrote: the same bytes)."""

    @abstractmethod
    def replace(self, data: bytes, version: str | None) -> str | None:
        """Write the object if it is still at ``version`` (None: whatever it is); its new version, or None.  As with
        ``create``, an answer lost after the write landed is recognised by the bytes read back."""

    @abstractmethod
    def delete(self, version: str) -> None:
        """Remove the object if it is still at ``version``; otherwise leave it."""


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _storage_errors(method):
    """A file's OSError (a full disk, a read-only folder) as the StorageError the callers handle."""

    @functools.wraps(method)
    def wrapped(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except OSError as err:
            reason = err.strerror or str(err)
            raise (OutputFull if is_full(err) else StorageError)(f"cannot write {self.path}: {reason}") from None

    return wrapped


class LocalConditionalFile(ConditionalObject):
    """A file: exclusive create, and compare-and-swap under a lock file held for milliseconds."""

    LOCK_STALE_S = 10.0  # a lock file this old was left by a process killed or paused inside the critical section

    def __init__(self, path: Path):
        self.path = Path(path)
        self.lock = self.path.with_name(self.path.name + ".lock")

    def where(self) -> str:
        return str(self.path)

    def read(self) -> Snapshot | None:
        try:
            data = self.path.read_bytes()
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return None
        return Snapshot(data, _digest(data), max(0.0, age))

    @contextlib.contextmanager
    def _locked(self):
        """Hold the lock file for one read-compare-write (milliseconds); yields a check that the lock is still
        this process's.  A lock older than LOCK_STALE_S is broken (its holder was killed, or paused: a VM pause, a
        SIGSTOP), so the wait is bounded; a holder that wakes after its lock was broken sees the check fail and
        writes nothing."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        token = uuid.uuid4().hex.encode()
        deadline = time.monotonic() + self.LOCK_STALE_S + 5
        while True:
            try:
                fd = os.open(self.lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                try:
                    os.write(fd, token)
                finally:
                    os.close(fd)
                break
            except FileExistsError:
                try:
                    if time.time() - self.lock.stat().st_mtime > self.LOCK_STALE_S:
                        self.lock.unlink(missing_ok=True)
                        continue
                except FileNotFoundError:
                    continue
                if time.monotonic() > deadline:
                    raise StorageError(f"cannot lock {self.lock}: another run keeps it locked") from None
                time.sleep(0.01)

        def still_mine() -> bool:
            try:
                return self.lock.read_bytes() == token
            except FileNotFoundError:
                return False

        try:
            yield still_mine
        finally:
            if still_mine():  # never the lock of a run that broke ours
                self.lock.unlink(missing_ok=True)

    def _write(self, data: bytes) -> str:
        tmp = self.path.with_name(f".tmp-{uuid.uuid4().hex}-{self.path.name}")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, self.path)
        finally:  # a full disk leaves no empty temporary file behind
            tmp.unlink(missing_ok=True)
        return _digest(data)

    @_storage_errors
    def create(self, data: bytes) -> str | None:
        with self._locked() as still_mine:
            if not still_mine():
                return None
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return None
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return _digest(data)

    @_storage_errors
    def replace(self, data: bytes, version: str | None) -> str | None:
        with self._locked() as still_mine:
            seen = self.read()
            if version is not None and (seen is None or seen.version != version):
                return None
            if not still_mine():  # paused inside past LOCK_STALE_S: another run may have taken over since
                return None
            return self._write(data)

    @_storage_errors
    def delete(self, version: str) -> None:
        with self._locked() as still_mine:
            seen = self.read()
            if seen is not None and seen.version == version and still_mine():
                self.path.unlink(missing_ok=True)


class S3ConditionalObject(ConditionalObject):
    """An S3 object: ``If-None-Match: *`` to create, ``If-Match: <etag>`` to replace or delete."""

    def __init__(self, client, bucket: str, key: str):
        self.client, self.bucket, self.key = client, bucket, key

    def _waiting(self, doing: str):
        """Register a call that may stall, for the progress line (waits.py)."""
        return waiting_on(f"{doing} {self.where()} (endpoint {shown_endpoint(self.client.meta.endpoint_url)})")

    def where(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    def read(self) -> Snapshot | None:
        from botocore.exceptions import ClientError  # deferred: botocore

        try:
            with self._waiting("reading"):
                response = self.client.get_object(Bucket=self.bucket, Key=self.key)
            data = response["Body"].read()
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise StorageError(describe_s3_error(err, "read", self.where())) from None
        except Exception as err:
            raise StorageError(describe_s3_error(err, "read", self.where())) from None
        server_now = response["ResponseMetadata"].get("HTTPHeaders", {}).get("date")
        now = parsedate_to_datetime(server_now) if server_now else datetime.now(timezone.utc)
        age = (now - response["LastModified"]).total_seconds()
        return Snapshot(data, response["ETag"], max(0.0, age))

    def _put(self, data: bytes, **condition) -> str | None:
        from botocore.exceptions import ClientError  # deferred: botocore

        try:
            with self._waiting("writing"):
                return self.client.put_object(Bucket=self.bucket, Key=self.key, Body=data, **condition)["ETag"]
        except ClientError as err:
            status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status in (409, 412) or err.response.get("Error", {}).get("Code") in (
                "PreconditionFailed",
                "ConditionalRequestConflict",
                "NoSuchKey",
            ):
                return self._own_write(data)  # someone else wrote (or removed) it first, or our retry did
            raise StorageError(describe_s3_error(err, "write", self.where())) from None
        except Exception as err:
            raise StorageError(describe_s3_error(err, "write", self.where())) from None

    def _own_write(self, data: bytes) -> str | None:
        """After a conditional write was refused: the object's version if it holds exactly ``data`` (this writer's
        own write landed, its answer was lost, and the client's retry met the changed object), else None.  Callers
        write bytes no other writer writes (a lease names its run and counts its renewals), so equal bytes are
        this write's."""
        seen = self.read()
        return seen.version if seen is not None and seen.data == data else None

    def create(self, data: bytes) -> str | None:
        return self._put(data, IfNoneMatch="*")

    def replace(self, data: bytes, version: str | None) -> str | None:
        return self._put(data, IfMatch=version) if version is not None else self._put(data)

    def delete(self, version: str) -> None:
        from botocore.exceptions import ClientError  # deferred: botocore

        try:
            with self._waiting("removing"):
                self.client.delete_object(Bucket=self.bucket, Key=self.key, IfMatch=version)
        except ClientError:
            pass  # already replaced or gone: nothing of ours to remove
