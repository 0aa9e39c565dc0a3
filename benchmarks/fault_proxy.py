"""A TCP proxy that can be cut: the chaos runs put it between the worker and PostgreSQL to make the
database unreachable for a while without stopping the machine's shared PostgreSQL server, and in
front of the broker for its restart (:meth:`FaultProxy.restore` can admit one Kafka client id first).

Written here rather than taken from a library because the one tool built for this (Shopify's
toxiproxy) is a Go server that is not installable on these machines; this needs ~60 lines.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable


class FaultProxy:
    """Forwards ``127.0.0.1:listen_port`` to ``target``. :meth:`cut` closes every connection and
    refuses new ones (as a database host that went away); :meth:`restore` accepts again."""

    def __init__(self, listen_port: int, target: tuple[str, int]) -> None:
        self.listen_port, self.target = listen_port, target
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._server: socket.socket | None = None
        self._admit: Callable[[bytes], bool] | None = None
        self.cuts = 0
        self.turned_away = 0

    def start(self) -> "FaultProxy":
        server = socket.create_server(("127.0.0.1", self.listen_port))
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()
        return self

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return  # cut or stopped
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with self._lock:
            self._conns.add(client)  # from now on a cut closes it
        first = b""
        admit = self._admit
        if admit is not None:
            first = _first_kafka_frame(client)
            if not admit(first):
                with self._lock:
                    self.turned_away += 1
                self._close(client)
                return
        upstream = None
        try:
            upstream = socket.create_connection(self.target, timeout=5.0)
            upstream.sendall(first)
        except OSError:
            for s in (client, upstream):
                if s is not None:
                    self._close(s)
            return
        upstream.settimeout(None)
        with self._lock:
            self._conns.add(upstream)
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                self._close(s)

    def _close(self, s: socket.socket) -> None:
        with self._lock:
            self._conns.discard(s)
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        s.close()

    def cut(self) -> None:
        self.cuts += 1
        if self._server is not None:
            try:
                self._server.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
            except OSError:
                pass
            self._server.close()
            self._server = None
        with self._lock:
            conns = list(self._conns)
        for s in conns:
            self._close(s)

    def restore(self, admit: Callable[[bytes], bool] | None = None) -> None:
        """Accept connections again: all of them, or only those whose first request ``admit`` passes
        (until :meth:`open`)."""
        self._admit = admit
        if self._server is None:
            self.start()

    def open(self) -> None:
        self._admit = None

    stop = cut


def _first_kafka_frame(client: socket.socket, timeout_s: float = 5.0) -> bytes:
    """The client's first Kafka request, whole (b"" if it sends none in time)."""
    client.settimeout(timeout_s)
    data = b""
    try:
        while len(data) < 4 or len(data) < 4 + struct.unpack(">i", data[:4])[0]:
            chunk = client.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    client.settimeout(None)
    return data


def kafka_client_id(frame: bytes) -> str | None:
    """The client id in a Kafka request header (size, api key, version, correlation id, client id)."""
    if len(frame) < 14:
        return None
    (length,) = struct.unpack(">h", frame[12:14])
    return None if length < 0 else frame[14 : 14 + length].decode("utf-8", "replace")
