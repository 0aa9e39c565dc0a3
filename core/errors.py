"""Operator errors: the mistakes of whoever runs a command (a missing or malformed input, a busy port,
an unknown name), as opposed to bugs. ``icuwatch`` prints them as one line on stderr and exits 2; a
traceback only with ``icuwatch --debug``. Every layer may raise them, so they live here."""

from __future__ import annotations

import errno
from pathlib import Path

UNREADABLE = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)
"""The OS errors of a wrong or unreadable path."""


class OperatorError(Exception):
    """A mistake of the operator's, told in one line (the message)."""


class BadFile(OperatorError, ValueError):
    """An input file that is not what it should be; the message names it and, where known, the line.
    A ``ValueError`` too, as the readers raised before."""

    def __init__(self, path: str | Path, reason: str, line: int | None = None) -> None:
        self.path, self.reason, self.line = str(path), reason, line
        super().__init__(f"{path}:{line}: {reason}" if line is not None else f"{path}: {reason}")


def is_operator_error(exc: BaseException) -> bool:
    """An :class:`OperatorError`, a wrong or unreadable path, or an address already in use."""
    if isinstance(exc, (OperatorError, *UNREADABLE)):
        return True
    return isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE


def one_line(exc: BaseException) -> str:
    """The error as one line: an OS error with a file as ``PATH: reason``, anything else its text."""
    if isinstance(exc, OSError) and exc.filename is not None:
        text = f"{exc.filename}: {exc.strerror or exc}"
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())
