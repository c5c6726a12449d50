"""Cutting user-given text down to size before it goes into a message: a megabyte id, prompt or word quoted in
an error must not become a megabyte log line, results cell or report row."""

from __future__ import annotations

MAX_SHOWN_CHARS = 120  # an id, prompt or word quoted in an error message
MAX_ERROR_CHARS = 2000  # a whole error message as stored in a results row and printed


def shown(value, limit: int = MAX_SHOWN_CHARS) -> str:
    """``repr(value)`` cut to ``limit`` characters, saying how long it was."""
    return cut(repr(value), limit)


def cut(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """``text`` itself when short enough, else its first ``limit`` characters and how long it was."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def printable(text, limit: int = MAX_ERROR_CHARS) -> str:
    """``text`` for one terminal line: control characters (a NUL, a newline, an escape sequence) written as their
    Python escapes, so an id or error read from a results table cannot break or rewrite the output it is shown in."""
    text = str(text)
    return cut("".join(c if c.isprintable() else repr(c)[1:-1] for c in text), limit)
