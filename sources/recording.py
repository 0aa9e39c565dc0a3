"""Record live topics to a JSON-lines archive and play an archive back.

One line per message: ``topic``, ``partition``, ``offset``, ``key`` and ``value`` (base64, so any
bytes survive, malformed ones included), ``timestamp`` (the Kafka timestamp, ms) and ``event_time``
(from the v1 payload or a v2 waveform chunk; null when the value is neither).

"From now" and this Tansu: its ListOffsets "latest" answers the base offset of the last batch + 1,
not the true end (shared/DESIGN.md), so ``seek_to_end`` can land *before* messages that were already
there. The stale offset is never past the true end, so :func:`record` seeks to it and then drops every
message whose Kafka timestamp is older than the moment recording started (``skipped_before_start``).
That assumes the producers' clocks agree with ours (CreateTime timestamps); ``--from-beginning``
keeps everything.

File order: the messages of each partition in offset order, partitions interleaved by Kafka
timestamp (the order producers sent them across topics). :func:`replay_file` sends the lines in file
order, paced by event time (a line without one goes out right after its predecessor); messages are
keyed as recorded, so the default partitioner puts them on the same partitions when the partition
counts match.
"""

from __future__ import annotations

import base64
import heapq
import json
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import msgspec
from kafka import KafkaConsumer, TopicPartition
from tqdm import tqdm

from icuwatch.core import schemas, topics
from icuwatch.core.errors import BadFile, OperatorError
from icuwatch.core.settings import Settings
from icuwatch.sources.pacing import RawMessage, send_paced
from icuwatch.streams.kafka.security import kafka_python_config


def _event_time(value: bytes | None) -> float | None:
    if not value:
        return None
    try:
        body = msgspec.msgpack.decode(value) if schemas.is_v2_payload(value) else json.loads(value)
        t = body.get("event_time")
    except (ValueError, AttributeError, UnicodeDecodeError, msgspec.DecodeError):
        return None
    return float(t) if isinstance(t, (int, float)) and not isinstance(t, bool) else None


def _b64(b: bytes | None) -> str | None:
    return None if b is None else base64.b64encode(b).decode("ascii")


def check_topics(topic_names: Iterable[str], settings: Settings) -> list[str]:
    """The names, once each; :class:`OperatorError` listing the known topics if one is not icuwatch's
    (its topics and the worker's table changelogs)."""
    names = list(dict.fromkeys(topic_names))
    unknown = [n for n in names if n not in (*topics.ALL, *topics.changelogs(settings.app_id))]
    if unknown:
        raise OperatorError(
            f"unknown topic {', '.join(map(repr, unknown))}; known topics: {', '.join(topics.ALL)} "
            f"(and the changelogs {', '.join(topics.changelogs(settings.app_id))})"
        )
    return names


def record(
    topic_names: Iterable[str],
    out_path: str | Path,
    settings: Settings,
    seconds: float | None = None,
    max_messages: int | None = None,
    from_beginning: bool = False,
    progress: bool = True,
    stop: threading.Event | None = None,
    ready: threading.Event | None = None,
) -> dict[str, Any]:
    """Capture ``topic_names`` (every partition) into ``out_path`` until ``seconds`` pass,
    ``max_messages`` are kept, ``stop`` is set or Ctrl-C; the file is written at the end.

    ``ready`` (optional) is set once every partition's start position is known: messages produced
    after that are captured. Returns ``{"recorded": {topic: n}, "skipped_before_start": n, ...}``.
    An unknown topic or an output file that cannot be written fails before anything is consumed.
    """
    names = check_topics(topic_names, settings)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.open("a").close()  # writable? (it is written at the end)
    consumer = KafkaConsumer(
        bootstrap_servers=settings.broker,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        client_id="icuwatch-recorder",
        **kafka_python_config(settings),
    )
    per_part: dict[tuple[str, int], list[dict]] = {}
    counts: Counter = Counter()
    skipped = 0
    started = time.monotonic()
    try:
        parts = []
        for name in names:
            ids = consumer.partitions_for_topic(name)
            if not ids:
                raise ValueError(f"topic {name!r} not found on {settings.broker}")
            parts += [TopicPartition(name, p) for p in sorted(ids)]
        consumer.assign(parts)
        start_ms = int(time.time() * 1000)
        if from_beginning:
            consumer.seek_to_beginning(*parts)
        else:
            consumer.seek_to_end(*parts)  # stale on this Tansu: filtered by timestamp below
        for tp in parts:
            consumer.position(tp)  # resolve the offsets now
        if ready is not None:
            ready.set()
        deadline = None if seconds is None else time.monotonic() + seconds
        bar = tqdm(unit="msg", disable=not progress, dynamic_ncols=True)
        kept = 0
        try:
            while not (stop is not None and stop.is_set()):
                if max_messages is not None and kept >= max_messages:
                    break
                wait_ms = 500
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    wait_ms = max(1, min(wait_ms, int(left * 1000)))
                for tp, records in consumer.poll(timeout_ms=wait_ms).items():
                    for r in records:
                        if max_messages is not None and kept >= max_messages:
                            break
                        if not from_beginning and r.timestamp is not None and 0 <= r.timestamp < start_ms:
                            skipped += 1
                            continue
                        per_part.setdefault((tp.topic, tp.partition), []).append(
                            {
                                "topic": tp.topic,
                                "partition": tp.partition,
                                "offset": r.offset,
                                "key": _b64(r.key),
                                "value": _b64(r.value),
                                "timestamp": r.timestamp,
                                "event_time": _event_time(r.value),
                            }
                        )
                        counts[tp.topic] += 1
                        kept += 1
                        bar.update(1)
        except KeyboardInterrupt:
            pass
        finally:
            bar.close()
    finally:
        consumer.close()
    merged = heapq.merge(*per_part.values(), key=lambda d: d["timestamp"] if d["timestamp"] is not None else -1)
    with open(out_path, "w") as f:
        for d in merged:
            f.write(json.dumps(d, separators=(",", ":")) + "\n")
    return {
        "recorded": dict(counts),
        "messages": sum(counts.values()),
        "skipped_before_start": skipped,
        "from_beginning": from_beginning,
        "seconds": round(time.monotonic() - started, 3),
        "out": str(out_path),
    }


def read_archive(path: str | Path) -> Iterator[dict]:
    """The archive's lines as dicts, with ``key``/``value`` decoded to bytes; :class:`BadFile` (naming
    the line) for a line that is not one :func:`record` writes."""
    with open(path) as f:
        try:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    d = json.loads(line)
                    if not isinstance(d.get("topic"), str) or not isinstance(d.get("partition"), int):
                        raise ValueError("no topic or partition")
                    d["key"] = None if d.get("key") is None else base64.b64decode(d["key"], validate=True)
                    d["value"] = None if d.get("value") is None else base64.b64decode(d["value"], validate=True)
                    if d.get("event_time") is not None:
                        d["event_time"] = float(d["event_time"])
                except (ValueError, TypeError, AttributeError) as exc:
                    raise BadFile(path, f"not an archive line ({' '.join(str(exc).split())})", line=lineno) from None
                yield d
        except UnicodeDecodeError:
            raise BadFile(path, "not a text file") from None


def archive_messages(path: str | Path, keep_partitions: bool = False) -> Iterator[tuple[float, str, RawMessage]]:
    """``(pacing time, topic, RawMessage)`` in file order; pacing time = event time, or the previous
    line's when a line has none (it then goes out right after its predecessor)."""
    # lines before the first event time go out at once
    last = next((d["event_time"] for d in read_archive(path) if d.get("event_time") is not None), None)
    for d in read_archive(path):
        t = d.get("event_time")
        if t is None:
            t = last if last is not None else 0.0  # no event time anywhere: no pacing at all
        last = t
        yield t, d["topic"], RawMessage(d["key"], d["value"], d["partition"] if keep_partitions else None)


def replay_file(
    path: str | Path, producer: Any, speed: float = 0.0, progress: bool = True, keep_partitions: bool = False
) -> dict[str, Any]:
    """Send an archive back into its topics in file order, paced by event time (``speed`` as the
    simulator's). ``keep_partitions`` sends each message to its recorded partition instead of
    letting the partitioner choose by key. The archive is read through once first, so a malformed
    line fails the replay before anything is sent."""
    for _ in read_archive(path):
        pass
    items = archive_messages(path, keep_partitions)
    produced = send_paced(items, producer, speed, progress=progress, unit="stream s")
    return {"replayed": produced, "messages": sum(produced.values()), "file": str(path)}
