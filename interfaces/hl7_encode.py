"""v1 messages -> HL7 v2.5 (the simulator's monitor gateway, LIS and ADT feed), and sending a
simulation over MLLP (``icuwatch simulate --via hl7``).

* :func:`to_hl7`: ``Vitals`` -> ORU^R01 (one OBX per value, OBX-14 = event time); ``Lab`` -> ORU^R01
  (OBR-7 = collection = event time, OBR-22 = result time); ``Adt`` -> ADT^A01/A02/A03 (EVN-2 and
  EVN-6 = event time, PV1-3 = unit^^bed, PV1-44 = hospital admission, PID-7 = a birth date giving the
  age in completed years).
  Codes and units are the first identity rows of the mapping table, so what is sent maps back.
* :func:`send_via_hl7`: paced like ``icuwatch simulate`` (``speed`` simulated seconds per wall second,
  0 = as fast as possible), over a few MLLP connections (each patient always on the same one, so its
  messages stay in order), each message waiting for its ACK; anything but AA raises
  :class:`Hl7DeliveryError` at the end. Waveforms and chest X-rays have no HL7 form here and are
  skipped (counted).
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
import zlib
from collections import Counter
from datetime import date, datetime, timezone
from typing import Any

from icuwatch.core import topics
from icuwatch.core.schemas import Adt, Lab, Message, Vitals

from .hl7_mapping import CODED_VITALS, NUMERIC_VITALS, ObservationMap, format_ts, load_mapping

_ESCAPES = (("\\", "\\E\\"), ("|", "\\F\\"), ("^", "\\S\\"), ("&", "\\T\\"), ("~", "\\R\\"))
_ADT_TRIGGER = {"admit": "A01", "transfer": "A02", "discharge": "A03"}
_mapping: ObservationMap | None = None


class Hl7DeliveryError(RuntimeError):
    """Some messages were not accepted (ACK other than AA, or no ACK)."""


def esc(text: str) -> str:
    for a, b in _ESCAPES:
        text = text.replace(a, b)
    return text


def _num(v: float) -> str:
    text = repr(float(v))
    if "e" in text or "E" in text:
        text = f"{v:.10f}".rstrip("0").rstrip(".")
    return text[:-2] if text.endswith(".0") else text


def _default_mapping() -> ObservationMap:
    global _mapping
    if _mapping is None:
        _mapping = load_mapping()
    return _mapping


def _msh(trigger: str, control_id: str, t: float, sender: str) -> str:
    kind, event = trigger.split("^")
    structure = "ORU_R01" if kind == "ORU" else "ADT_A01"
    return (
        f"MSH|^~\\&|{sender}|ICUWATCH-SIM|ICUWATCH|ICU|{format_ts(t)}||{kind}^{event}^{structure}|"
        f"{esc(control_id)}|P|2.5|||AL|NE||UNICODE UTF-8"
    )


def _pid(pid: str, extra: str = "") -> str:
    return f"PID|1||{esc(pid)}^^^ICUWATCH^MR||{esc(pid)}^SIMULATED{extra}"


def birth_date_for(age: float, on: float) -> date:
    """A birth date at which someone is ``age`` completed years old on the day of ``on``."""
    d = datetime.fromtimestamp(on, timezone.utc).date()
    years = int(math.floor(age))
    try:
        return d.replace(year=d.year - years)
    except ValueError:  # 29 February
        return d.replace(year=d.year - years, day=28)


def to_hl7(message: Message, control_id: str | None = None, mapping: ObservationMap | None = None) -> str:
    """One v1 ``Vitals``/``Lab``/``Adt`` -> an HL7 v2.5 message (segments joined by ``\\r``)."""
    mapping = mapping or _default_mapping()
    control_id = control_id or uuid.uuid4().hex[:20]
    pid = message.patient_id
    ts = format_ts(message.event_time)
    if isinstance(message, Vitals):
        segs = [
            _msh("ORU^R01", control_id, message.event_time, "MONITOR-GW"),
            _pid(pid),
            f"OBR|1||{esc(control_id)}|VITALS^Vital signs^L|||{ts}",
        ]
        for name in NUMERIC_VITALS + CODED_VITALS:
            value = getattr(message, name)
            if value is None:
                continue
            rule = mapping.preferred("vitals", name)
            if rule is None:
                raise ValueError(f"no HL7 code for vitals field {name!r} in the mapping")
            if name == "o2_supplement":
                obx = f"CWE|{rule.code}^{name}^L||{'Y' if value else 'N'}^{'Yes' if value else 'No'}^HL70136|"
            elif name == "consciousness":
                obx = f"ST|{rule.code}^{name}^LN||{value}|"
            else:
                obx = f"NM|{rule.code}^{name}^LN||{_num(value)}|{esc(rule.unit)}"
            segs.append(f"OBX|{len(segs) - 2}|{obx}|||||F|||{ts}")
    elif isinstance(message, Lab):
        rule = mapping.preferred("labs", message.analyte)
        if rule is None:
            raise ValueError(f"no HL7 code for analyte {message.analyte!r} in the mapping")
        rts = format_ts(message.result_time)
        segs = [
            _msh("ORU^R01", control_id, message.result_time, "LIS"),
            _pid(pid),
            f"OBR|1||{esc(control_id)}|{rule.code}^{message.analyte}^LN|||{ts}|||||||||||||||{rts}||||F",
            f"OBX|1|NM|{rule.code}^{message.analyte}^LN||{_num(message.value)}|{esc(rule.unit)}|||||F|||{ts}",
        ]
    elif isinstance(message, Adt):
        trigger = _ADT_TRIGGER[message.event]
        extra = ""
        if message.age is not None or message.sex is not None:
            born = birth_date_for(message.age, message.event_time).strftime("%Y%m%d") if message.age is not None else ""
            extra = f"||{born}|{message.sex or ''}"
        loc = f"{esc(message.unit or '')}^^{esc(message.bed or '')}" if (message.unit or message.bed) else ""
        pv1 = f"PV1|1|I|{loc}"
        if message.hospital_admit_time is not None:
            pv1 += "|" * 41 + format_ts(message.hospital_admit_time)  # PV1-44
        segs = [
            _msh(f"ADT^{trigger}", control_id, message.event_time, "ADT"),
            f"EVN|{trigger}|{ts}||||{ts}",
            _pid(pid, extra),
            pv1,
        ]
    else:
        raise TypeError(f"no HL7 form for {type(message).__name__}")
    return "\r".join(segs)


# ---------------------------------------------------------------------------------------------
# sending over MLLP


def ack_code(ack: Any) -> tuple[str, str]:
    """(MSA-1, MSA-3) of a parsed ACK."""
    msa = ack.segment("MSA")
    code = str(msa[1]) if len(msa) > 1 else ""
    text = ack.unescape(str(msa[3])) if len(msa) > 3 else ""
    return code, text


async def _connection_worker(
    host: str, port: int, queue: asyncio.Queue, results: Counter, failures: list, timeout_s: float
) -> None:
    import hl7.mllp

    reader, writer = await hl7.mllp.open_hl7_connection(host, port, encoding="utf-8")
    try:
        while True:
            item = await queue.get()
            if item is None:
                return
            topic, text = item
            writer.writeblock(text.encode("utf-8"))
            await writer.drain()
            ack = await asyncio.wait_for(reader.readmessage(), timeout_s)
            code, reason = ack_code(ack)
            if code == "AA":
                results[topic] += 1
            else:
                failures.append(f"{topic}: {code} {reason}")
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass


async def send_via_hl7_async(
    sim: Any, host: str, port: int, speed: float, *, connections: int = 4, ack_timeout_s: float = 60.0
) -> dict[str, Any]:
    if speed < 0:
        raise ValueError("speed must be >= 0")
    queues = [asyncio.Queue(maxsize=256) for _ in range(max(1, connections))]
    sent: Counter = Counter()
    skipped: Counter = Counter()
    failures: list[str] = []
    workers = [asyncio.create_task(_connection_worker(host, port, q, sent, failures, ack_timeout_s)) for q in queues]
    wall0 = time.monotonic()
    t0 = getattr(sim, "start_time", None)
    try:
        for t, topic, msg in sim.timed_messages():
            if topic not in (topics.VITALS, topics.LABS, topics.ADT):
                skipped[topic] += 1
                continue
            if callable(msg) and not isinstance(msg, Message):
                msg = msg()
            if t0 is None:
                t0 = t
            if speed > 0:
                delay = wall0 + (t - t0) / speed - time.monotonic()
                if delay > 0.002:
                    await asyncio.sleep(delay)
            q = queues[zlib.crc32(msg.key()) % len(queues)]
            put = asyncio.ensure_future(q.put((topic, to_hl7(msg))))
            done, _ = await asyncio.wait([put, *workers], return_when=asyncio.FIRST_COMPLETED)
            if put not in done:  # a connection died: stop and report
                put.cancel()
                break
            await asyncio.sleep(0)
    finally:
        for q, w in zip(queues, workers):
            if not w.done():
                await q.put(None)
        results = await asyncio.gather(*workers, return_exceptions=True)
    errors = [repr(r) for r in results if isinstance(r, BaseException)]
    if errors or failures:
        raise Hl7DeliveryError(
            f"{len(failures)} messages not accepted ({failures[:3]}), "
            f"connection errors: {errors[:3]}; accepted: {dict(sent)}"
        )
    return {"sent": dict(sent), "skipped": dict(skipped)}


def send_via_hl7(sim: Any, host: str, port: int, speed: float, *, connections: int = 4) -> dict[str, Any]:
    """Send ``sim``'s vitals, labs and ADT to an HL7 listener over MLLP; every ACK must be AA.

    Returns ``{"sent": {topic: n}, "skipped": {topic: n}}``; raises :class:`Hl7DeliveryError`.
    """
    return asyncio.run(send_via_hl7_async(sim, host, port, speed, connections=connections))
