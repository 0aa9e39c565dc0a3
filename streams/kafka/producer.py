"""Kafka producers for icuwatch's topics (kafka-python)."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Mapping
from typing import Any

from kafka import KafkaProducer
from kafka.producer.future import FutureRecordMetadata

from icuwatch.core.settings import Settings
from icuwatch.streams.kafka.security import kafka_python_config

log = logging.getLogger(__name__)
RECREATE_TIMEOUT_S = 600.0
LIVE_HEADER = ("icuwatch-clock", b"live")
"""Kafka header of the records a live source (the HL7 listener) sends as it receives them: the worker
checks their event times against the record's timestamp, the sender's clock (``streams/ingest.py``)."""


def is_live(headers: Any) -> bool:
    """Whether a consumed record's headers (``(key, value)`` pairs or a mapping) carry ``LIVE_HEADER``."""
    pairs = headers.items() if isinstance(headers, Mapping) else (headers or ())
    return any((k, v) == LIVE_HEADER for k, v in pairs)


def _kafka_producer(settings: Settings, linger_ms: int = 10) -> KafkaProducer:
    """Durable: waits for the broker's acknowledgement, retries for up to 10 minutes (a stalled
    broker delays messages rather than dropping them), keeps per-key order; idempotent (kafka-python's
    default), so its own retries write no duplicate."""
    return KafkaProducer(
        bootstrap_servers=settings.broker,
        acks="all",
        linger_ms=linger_ms,
        batch_size=512 * 1024,
        delivery_timeout_ms=600_000,
        request_timeout_ms=60_000,
        retries=1_000_000,
        max_in_flight_requests_per_connection=1,
        max_request_size=8 * 1024 * 1024,
        client_id="icuwatch-producer",
        **kafka_python_config(settings),
    )


class ResilientProducer:
    """A ``KafkaProducer`` that replaces itself once it can no longer send.

    An idempotent producer that meets a fatal error (a broker that lost its producer-id state, as
    the local Tansu does on restart: ``InitProducerId`` answers UnknownError) fails every record it
    holds and every later one, for ever. A bedside feed must resume on its own, so the next ``send``
    after such an error builds a new producer (waiting for the broker if need be); the records the
    old one failed are the caller's to send again (:func:`icuwatch.sources.pacing.send_paced` does).
    Everything else is the wrapped ``KafkaProducer``'s.
    """

    def __init__(self, settings: Settings, linger_ms: int = 10) -> None:
        self.settings = settings
        self.linger_ms = linger_ms
        self.replaced = 0
        self._producer = _kafka_producer(settings, linger_ms)

    def broken(self) -> bool:
        # kafka-python (pinned 3.0.12) exposes the fatal state only on its transaction manager.
        manager = getattr(self._producer, "_transaction_manager", None)
        return bool(manager is not None and manager.has_fatal_error())

    def send(
        self,
        topic: str,
        key: bytes | None = None,
        value: bytes | None = None,
        partition: int | None = None,
        **kwargs: Any,
    ) -> FutureRecordMetadata:
        if self.broken():
            self._replace()
        return self._producer.send(topic, key=key, value=value, partition=partition, **kwargs)

    def _replace(self) -> None:
        log.warning("Kafka producer hit a fatal error; replacing it")
        try:
            self._producer.close(timeout=0)
        except Exception:  # the old one is beyond use either way
            pass
        deadline, delay = time.monotonic() + RECREATE_TIMEOUT_S, 0.5
        while True:
            try:
                self._producer = _kafka_producer(self.settings, self.linger_ms)
                break
            except Exception as exc:
                if time.monotonic() > deadline:
                    raise
                log.warning("Kafka producer not recreated yet (%s); retrying", type(exc).__name__)
                time.sleep(delay)
                delay = min(5.0, delay * 2)
        self.replaced += 1

    def flush(self, timeout: float | None = None) -> None:
        self._producer.flush(timeout)

    def close(self, timeout: float | None = None) -> None:
        self._producer.close(timeout)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._producer, name)


def make_producer(settings: Settings, linger_ms: int = 10) -> ResilientProducer:
    """``linger_ms``: how long a record may wait for others to share its request (a gateway for many
    beds sends fewer, larger requests with more)."""
    return ResilientProducer(settings, linger_ms)


class BrokerUnavailable(ConnectionError):
    """Raised by :class:`WaitingProducer` while it has not reached the broker yet."""


def broker_reachable(settings: Settings, timeout_s: float = 2.0) -> bool:
    """Whether one of the bootstrap servers accepts a TCP connection (cheap, and silent, unlike a
    Kafka client's own bootstrap loop)."""
    for server in settings.broker.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            socket.create_connection((host or "127.0.0.1", int(port or 9092)), timeout=timeout_s).close()
            return True
        except (OSError, ValueError):
            continue
    return False


def wait_for_broker(settings: Settings, what: str, stop: threading.Event | None = None) -> bool:
    """Block until the broker accepts connections, retrying with backoff (at most
    ``settings.broker_retry_max_s`` apart); one log line when it is not up and one when it is.
    False if ``stop`` was set first."""
    stop = stop or threading.Event()
    delay, waited = 0.25, False
    while not stop.is_set():
        if broker_reachable(settings):
            if waited:
                log.warning("%s: broker %s is up", what, settings.broker)
            return True
        if not waited:
            log.warning("%s: broker %s is not reachable; waiting for it", what, settings.broker)
            waited = True
        stop.wait(delay)
        delay = min(settings.broker_retry_max_s, delay * 2)
    return False


class WaitingProducer:
    """A :class:`ResilientProducer` that a service can hold before the broker is up.

    Built at once when the broker answers; otherwise a background thread waits for it
    (:func:`wait_for_broker`) and then builds the producer. Until then ``send`` raises
    :class:`BrokerUnavailable` at once, so a listener answers "retry later" (HL7 AE, DICOM out of
    resources) instead of exiting or blocking its port.
    """

    def __init__(self, settings: Settings, what: str) -> None:
        self.settings, self.what = settings, what
        self._producer: ResilientProducer | None = None
        if broker_reachable(settings):  # the usual case: connected before the service answers anything
            try:
                self._producer = make_producer(settings)
            except Exception:  # noqa: BLE001 - starting up: the thread below retries
                pass
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._connect, name=f"{what}-broker", daemon=True)
        if self._producer is None:
            self._thread.start()

    def _connect(self) -> None:
        while wait_for_broker(self.settings, self.what, self._stop):
            try:
                producer = make_producer(self.settings)
                if self._stop.is_set():  # closed meanwhile
                    producer.close(0)
                else:
                    self._producer = producer
                return
            except Exception as exc:  # up but not answering yet (starting): try again shortly
                log.warning("%s: broker %s not ready (%s)", self.what, self.settings.broker, type(exc).__name__)
                self._stop.wait(self.settings.broker_retry_max_s)

    @property
    def connected(self) -> bool:
        return self._producer is not None

    def _ready(self) -> ResilientProducer:
        if self._producer is None:
            raise BrokerUnavailable(f"broker {self.settings.broker} unavailable")
        return self._producer

    def send(self, topic: str, key: bytes | None = None, value: bytes | None = None, **kwargs: Any) -> Any:
        return self._ready().send(topic, key=key, value=value, **kwargs)

    def flush(self, timeout: float | None = None) -> None:
        if self._producer is not None:
            self._producer.flush(timeout)

    def close(self, timeout: float | None = None) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)
        if self._producer is not None:
            self._producer.close(timeout)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ready(), name)
