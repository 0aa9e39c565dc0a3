"""Operator errors on the command line. ``main`` turns an :class:`~icuwatch.core.errors.OperatorError`
or a wrong path raised anywhere into one line on stderr and exit status 2; the helpers here check
inputs before a command starts anything slow (a broker connection, a model, a database), and report
the files a many-file command could not read (exit status 1: the others were done)."""

from __future__ import annotations

import socket
import sys

from icuwatch.core.errors import OperatorError


def report_failed(command: str, failed: list[str]) -> int:
    """One stderr line for the files that failed (each message names its file); the exit status."""
    if not failed:
        return 0
    shown = "; ".join(failed[:3]) + ("; ..." if len(failed) > 3 else "")
    files = f"{len(failed)} file{'s' if len(failed) > 1 else ''}"
    print(f"icuwatch {command}: {files} failed, the others were done: {shown}", file=sys.stderr)
    return 1


def require_free_port(host: str, port: int) -> None:
    """:class:`OperatorError` naming the port when a listener could not bind it (in use, not allowed,
    not an address of this machine). Binds the way the servers do (``SO_REUSEADDR``), then lets go."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, _, _, _, address = infos[0]
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(address)
    except OSError as exc:
        raise OperatorError(f"cannot listen on port {port} of {host}: {exc.strerror or exc}") from None
