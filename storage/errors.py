"""What goes wrong with storage, said once for every store: the errors a run handles (a location it cannot use, a
full disk) and messages that name the location and the service's reason, never a credential."""

from __future__ import annotations

import errno
import os
import re
import socket

SECRET_VARIABLES = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")


class StorageError(RuntimeError):
    """The output location (or a manifest's) cannot be read or written: missing bucket, refused access,
    unreachable endpoint.  The message names the location and the service's reason, never a credential."""


class LeaseLost(StorageError):
    """This run's lease was taken over by another run (it looked stale): stop writing to the output.  Also what a
    write says that finds its object changed by another run since this run's lease check (a stalled upload that
    would land after a take-over): it does not land."""


class OutputFull(StorageError):
    """The output's disk (or quota) is full: every later write would fail too, so the run stops (exit 5) once it
    has written the rows of the videos already stored, using the space it set aside at its start."""


class UnreadablePart(StorageError):
    """Results parts that are not readable Parquet (a garbage or truncated file): the rows they held are unknown, so
    a rerun refuses to guess which ids are done; the message names each part and the output, and what to do."""

    def __init__(self, parts: list[tuple[str, str]], where: str, damaged_folder: str):
        self.parts, self.where = parts, where
        named = "; ".join(f"results/{name} ({reason})" for name, reason in parts)
        super().__init__(
            redact(
                f"{len(parts)} results part(s) in {where} cannot be read: {named}.  The rows they held are "
                f"unknown: move them out of results/ (the ids they recorded are then rendered again), or rerun "
                f"with --repair, which moves them to {where.rstrip('/')}/{damaged_folder}/ and goes on"
            )
        )


FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
FULL_MESSAGES = (os.strerror(errno.ENOSPC), os.strerror(errno.EDQUOT))  # as ffmpeg's log and gangs' messages say


def is_full(err: BaseException | str) -> bool:
    """Whether a failed write failed because the disk or quota is full (by errno, or by message where the error
    came through ffmpeg or another process)."""
    if isinstance(err, OSError) and err.errno in FULL_ERRNOS:
        return True
    return any(m in str(err) for m in FULL_MESSAGES)


# scheme://user:password@host: the password of a URL's user information (an endpoint given with credentials)
URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^/?#@\s:\"']*:)(?P<password>[^/?#@\s\"']*)@")


def redact(text: str) -> str:
    """``text`` with the values of secret AWS variables and the passwords in URLs (an endpoint such as
    ``http://user:pass@host``, which botocore's own errors repeat) replaced, for anything printed or stored."""
    for name in SECRET_VARIABLES:
        value = os.environ.get(name)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return URL_PASSWORD.sub(r"\g<head>***@", text)


def shown_endpoint(url: str | None) -> str:
    """An endpoint URL as messages show it: without the password of its user information."""
    return redact(str(url))


def describe_s3_error(err: Exception, action: str, where: str) -> str:
    """A one-line reason for a failed S3 call: the error code and message, or the connection problem."""
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError  # deferred: botocore

    if isinstance(err, ClientError):
        info = err.response.get("Error", {})
        code, message = info.get("Code", "?"), info.get("Message", "")
        return redact(f"cannot {action} {where}: {code}" + (f" ({message})" if message else ""))
    if isinstance(err, EndpointConnectionError):
        return redact(f"cannot {action} {where}: the S3 endpoint cannot be reached ({err})")
    if isinstance(err, NoCredentialsError):
        return (
            f"cannot {action} {where}: no AWS credentials found on {socket.gethostname()} (each node needs its "
            f"own: its environment, an instance role, or AWS_SHARED_CREDENTIALS_FILE naming an owner-only file)"
        )
    return redact(f"cannot {action} {where}: {type(err).__name__}: {err}")
