"""HL7 v2 MLLP listener: ORU^R01 and ADT^A01/A02/A03 in, ``icu.vitals``/``icu.labs``/``icu.adt`` out.

MLLP framing is python-hl7's asyncio server (``hl7.mllp.start_hl7_server``); each message is read as
its raw block so a rejected one can be dead-lettered byte for byte. Per message:

* mapped by :func:`icuwatch.interfaces.hl7_mapping.map_message` (all or nothing);
* every derived v1 message is sent with the durable producer and the broker's acknowledgement
  awaited (``future.get``) -> **AA**;
* broker unreachable / not acknowledged in ``settings.hl7_ack_timeout_s`` -> **AE** (the sender keeps
  the message and retries; a retried message may be stored twice, which the worker ignores);
* malformed, unknown code or unit, bad time, out-of-range value -> **AR** with the reason in MSA-3 and
  ERR, once the original bytes are durably on ``icu.deadletter`` (topic ``hl7``); if even that
  fails, AE. A bad message never closes the connection; later messages on it are handled normally.
* an event time more than ``settings.live_max_future_s`` ahead of this listener's clock, or more than
  ``settings.live_max_age_s`` behind it, is refused the same way (AR, ERR naming OBX-14/OBR-7/EVN-6...):
  one observation dated next month would otherwise stop the patient's scoring for a month. What
  is accepted goes out with ``LIVE_HEADER``, so the worker checks it against the record's timestamp.
* the patient is PID-3 exactly as sent (:func:`~icuwatch.interfaces.hl7_mapping._patient_id`): an
  identifier the v1 id cannot hold (a space, '/', over 64 characters) is refused (AR) saying what is
  wrong, never rewritten; with ``settings.patient_id_authority`` set, one another assigning
  authority gave (PID-3.4) is refused too.
* a patient ADT never admitted (``settings.unadmitted_data``, one policy with the DICOM listener,
  see :mod:`icuwatch.interfaces.patient_directory`): ``accept`` (default) forwards the data;
  ``refuse`` answers **AE** (ERR PID-3, code 204; dead-lettered; the sender retries, the ADT may be
  late) for a patient not known or not admitted and **AR** for one discharged before the
  observation. An A01 this listener forwarded counts as an admission at once (the worker writes
  the ``patients`` table a moment later). ADT messages themselves are never refused for this.

Messages of one connection are handled in order (the next is read after the ACK is written); many
connections run concurrently, their broker waits in worker threads.

The port opens at once, broker or not: until the broker is first reached (``WaitingProducer``,
retried with backoff) and while it is away, every message gets AE, so senders keep and resend them;
one log line per outage. Bytes outside an MLLP frame are skipped up to the next start-of-block byte
(:func:`read_frame`), so noise before a frame does not cost that frame its ACK.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any

from icuwatch.core import topics
from icuwatch.core.schemas import Adt, DeadLetter
from icuwatch.core.settings import Settings
from icuwatch.streams.kafka.producer import BrokerUnavailable, WaitingProducer

from .hl7_encode import esc
from .hl7_mapping import (
    ERROR_TEXT,
    Hl7Reject,
    ObservationMap,
    TimeWindow,
    load_mapping,
    map_message,
    pid_segment_index,
    zone,
)
from .patient_directory import DISCHARGED, DirectoryUnavailable, PatientDirectory

log = logging.getLogger(__name__)

DEADLETTER_SOURCE = "hl7"
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
START_BLOCK, END_BLOCK = b"\x0b", b"\x1c\r"


class FrameTooLarge(ValueError):
    """An MLLP frame over the reader's limit (skipped whole)."""


async def _skip_through(reader: asyncio.StreamReader, sep: bytes) -> tuple[bytes, int]:
    """Read through the next ``sep``: (the bytes before it if within the reader's limit else b"",
    how many bytes were discarded because they were not). EOF raises ``IncompleteReadError``."""
    dropped = 0
    while True:
        try:
            return (await reader.readuntil(sep))[: -len(sep)], dropped
        except asyncio.LimitOverrunError as exc:
            dropped += len(await reader.readexactly(exc.consumed))


async def read_frame(reader: asyncio.StreamReader) -> tuple[bytes, int]:
    """The content of the next MLLP frame, and how many bytes before it were not part of a frame.

    Resynchronises on the start-of-block byte: whatever precedes it (noise, a half frame cut off
    by a new one) is skipped, and the frame after it is read whole. Raises :class:`FrameTooLarge`
    (after skipping the frame) for a frame over the reader's limit.
    """
    before, dropped = await _skip_through(reader, START_BLOCK)
    block, over = await _skip_through(reader, END_BLOCK)
    if over:
        raise FrameTooLarge(f"frame over {MAX_MESSAGE_BYTES} bytes")
    restart = block.rfind(START_BLOCK)  # a frame that never ended, then a new one
    skipped = len(before) + dropped + restart + 1
    return block[restart + 1 :], skipped


def _msh_fields(raw: bytes) -> list[str] | None:
    """The source MSH split on '|' when it uses the standard delimiters (for the ACK header)."""
    text = raw.decode("utf-8", "replace").lstrip()
    if not text.startswith("MSH|^~\\&"):
        return None
    first = text.replace("\n", "\r").split("\r", 1)[0]
    return ["MSH", "|"] + first.split("|")[1:]


def build_ack(raw: bytes, code: str, text: str = "", reject: Hl7Reject | None = None) -> str:
    """ACK for ``raw``: MSH, MSA (code, control id, text) and, unless AA, an ERR segment."""
    src = _msh_fields(raw) or []

    def f(n: int) -> str:
        return src[n] if n < len(src) else ""

    trigger = f(9).split("^")[1] if "^" in f(9) else ""
    now = datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S+0000")
    msh = (
        f"MSH|^~\\&|ICUWATCH|ICU|{f(3)}|{f(4)}|{now}||ACK^{trigger}^ACK|{uuid.uuid4().hex[:20]}|"
        f"{f(11) or 'P'}|{f(12) or '2.5'}"
    )
    segs = [msh, f"MSA|{code}|{f(10)}|{esc(text[:400])}"]
    if code != "AA":
        err_code = reject.code if reject else "207"
        loc = ""
        if reject and reject.segment:
            loc = f"{reject.segment}^{reject.index or ''}^{reject.field or ''}".rstrip("^")
        segs.append(f"ERR||{loc}|{err_code}^{ERROR_TEXT.get(err_code, 'Error')}^HL70357|E||||{esc(text[:400])}")
    return "\r".join(segs)


class Hl7Listener:
    """The MLLP server. ``await start()``, then ``server`` serves until :meth:`close`.

    ``patients``: the :class:`PatientDirectory` asked under ``unadmitted_data=refuse`` (default: one
    on ``settings.database_url``, made only then)."""

    def __init__(
        self,
        settings: Settings,
        producer: Any | None = None,
        mapping: ObservationMap | None = None,
        max_workers: int = 16,
        patients: PatientDirectory | None = None,
    ) -> None:
        self.settings = settings
        self.mapping = mapping or load_mapping(settings.hl7_mapping)
        self.naive_tz = zone(settings.hl7_timezone)
        self.authority = settings.patient_id_authority.strip()
        self.refuse_unadmitted = settings.unadmitted_data == "refuse"
        self._own_patients = patients is None and self.refuse_unadmitted
        self.patients = PatientDirectory(settings.database_url) if self._own_patients else patients
        self._own_producer = producer is None
        if producer is None:
            producer = WaitingProducer(settings, "hl7")
        self.producer = producer
        self._broker_down = False
        self.timeout_s = settings.hl7_ack_timeout_s
        self.executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="hl7-ack")
        self.server: asyncio.AbstractServer | None = None
        self.stats: Counter = Counter()

    # -- network side -------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 2575) -> asyncio.AbstractServer:
        import hl7.mllp

        self.server = await hl7.mllp.start_hl7_server(self._client, host, port, limit=MAX_MESSAGE_BYTES)
        return self.server

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[1]

    async def _client(self, reader, writer) -> None:
        peer = writer.get_extra_info("peername")
        self.stats["connections"] += 1
        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    raw, skipped = await read_frame(reader)
                except asyncio.IncompleteReadError:
                    return  # peer closed (possibly mid-block: nothing was acknowledged for it)
                except FrameTooLarge as exc:
                    self.stats["bad_frames"] += 1
                    log.warning("hl7 %s: bad MLLP frame: %s", peer, exc)
                    continue
                if skipped:
                    self.stats["bad_frames"] += 1
                    log.warning("hl7 %s: skipped %d bytes outside an MLLP frame", peer, skipped)
                try:  # producer.send itself may block (broker metadata): bound the wait here too
                    ack = await asyncio.wait_for(
                        loop.run_in_executor(self.executor, self.handle, raw), self.timeout_s + 5.0
                    )
                except asyncio.TimeoutError:
                    self.stats["AE"] += 1
                    ack = build_ack(raw, "AE", "not stored, retry: broker did not acknowledge in time")
                writer.writeblock(ack.encode("utf-8"))
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    # -- per message (blocking, in a worker thread) --------------------------------------------

    def handle(self, raw: bytes) -> str:
        """Map, publish durably, and return the ACK text for one raw HL7 message."""
        window = TimeWindow(time.time(), self.settings.live_max_future_s, self.settings.live_max_age_s)
        try:
            derived = map_message(raw, self.mapping, self.naive_tz, window, self.authority)
        except Hl7Reject as rej:
            return self._reject(raw, rej)
        except Exception as exc:  # never let one message take the listener down
            log.exception("hl7: unexpected error mapping a message")
            return self._reject(raw, Hl7Reject(f"cannot map message: {type(exc).__name__}: {exc}"))
        if self.refuse_unadmitted:
            try:
                refused = self._unadmitted(raw, derived)
            except DirectoryUnavailable as exc:
                self.stats["AE"] += 1
                log.warning("hl7: %s", exc)
                return build_ack(raw, "AE", f"not stored, retry: {exc}")
            if refused is not None:
                return refused
        try:
            self._publish([(topic, m.key(), m.to_bytes()) for topic, m in derived], live=True)
        except Exception as exc:
            self.stats["AE"] += 1
            self._broker_failed(exc)
            if isinstance(exc, BrokerUnavailable):
                return build_ack(raw, "AE", "not stored, retry: broker unavailable")
            return build_ack(raw, "AE", f"not stored, retry: broker did not acknowledge ({type(exc).__name__}: {exc})")
        self._broker_ok()
        self.stats["AA"] += 1
        for topic, m in derived:
            self.stats[topic] += 1
            if topic == topics.ADT and self.patients is not None and isinstance(m, Adt):
                self.patients.note_adt(m)  # admitted from now on, before the worker writes it down
        return build_ack(raw, "AA")

    def _unadmitted(self, raw: bytes, derived: list) -> str | None:
        """Under ``unadmitted_data=refuse``: the ACK refusing observations about a patient ADT has
        not admitted at their event time (AE: not known / not admitted; AR: discharged before),
        or None when every observation may go."""
        assert self.patients is not None
        for topic, m in derived:
            if topic == topics.ADT:
                continue
            why = self.patients.check(m.patient_id, m.event_time)
            if why:
                rej = Hl7Reject(
                    f"PID-3: {why}",
                    segment="PID",
                    index=pid_segment_index(raw),
                    field=3,
                    code="204",
                    patient_id=m.patient_id,
                )
                return self._reject(raw, rej, "AR" if why == DISCHARGED else "AE")
        return None

    def _broker_failed(self, exc: Exception) -> None:
        """One warning per outage, not one per message (``WaitingProducer`` logs its own wait)."""
        if not self._broker_down and not isinstance(exc, BrokerUnavailable):
            log.warning("hl7: broker did not acknowledge (%s); answering AE until it does", type(exc).__name__)
            self._broker_down = True

    def _broker_ok(self) -> None:
        if self._broker_down:
            self._broker_down = False
            log.warning("hl7: broker acknowledging again")

    def _publish(self, records: list[tuple[str, bytes, bytes]], live: bool = False) -> None:
        from icuwatch.streams.kafka.producer import LIVE_HEADER

        deadline = time.monotonic() + self.timeout_s
        extra = {"headers": [LIVE_HEADER]} if live else {}
        futures = [self.producer.send(topic, key=key, value=value, **extra) for topic, key, value in records]
        self.producer.flush(timeout=max(0.1, deadline - time.monotonic()))  # do not wait out linger_ms
        for fut in futures:
            fut.get(timeout=max(0.1, deadline - time.monotonic()))

    def _reject(self, raw: bytes, rej: Hl7Reject, code: str = "AR") -> str:
        """Dead-letter ``raw`` and answer ``code`` (AR; AE for a refusal the sender should retry)."""
        letter = DeadLetter.of(DEADLETTER_SOURCE, raw, rej.reason[:1000], rej.patient_id)  # 'unknown' if invalid
        try:
            self._publish([(topics.DEADLETTER, letter.key(), letter.to_bytes())])
        except Exception as exc:
            self.stats["AE"] += 1
            self._broker_failed(exc)
            return build_ack(raw, "AE", f"rejected ({rej.reason}) but not dead-lettered, retry: {type(exc).__name__}")
        self._broker_ok()
        self.stats[code] += 1
        log.info("hl7: rejected (%s): %s", code, rej.reason)
        return build_ack(raw, code, rej.reason if code == "AR" else f"not stored, retry: {rej.reason}", rej)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        self.executor.shutdown(wait=True)
        if self._own_producer:
            self.producer.close()
        if self._own_patients and self.patients is not None:
            self.patients.close()


async def serve(settings: Settings, host: str, port: int) -> None:
    """Run a listener until cancelled (Ctrl-C)."""
    listener = Hl7Listener(settings)
    await listener.start(host, port)
    log.warning(
        "hl7: listening for MLLP on %s:%d (broker %s; unadmitted data: %s; patient id authority: %s)",
        host,
        listener.port,
        settings.broker,
        settings.unadmitted_data,
        listener.authority or "not checked",
    )
    try:
        await asyncio.Event().wait()
    finally:
        await listener.close()
        log.warning("hl7: stopped; %s", dict(listener.stats))
