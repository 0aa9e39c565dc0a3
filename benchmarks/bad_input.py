"""``icuwatch chaos --bad-input N``: N malformed messages interleaved with a simulated ward's good
ones, through the real pipeline (Tansu, a worker, Triton, SQLite), on the chaos stack's ports.

Checked afterwards:

* every malformed message is in ``icu.deadletter``, byte for byte (compared as a multiset of the
  original payloads), each with a non-empty reason;
* every good message was processed: the worker's per-topic counts equal what was sent, nothing was
  a duplicate, and each patient's checkpointed state equals the offline fold of the good messages;
* the worker never crashed (the same process from start to end, no traceback in its log).

Malformed kinds cover the transport (empty, not UTF-8, not JSON, truncated, no key, a key that is
not the payload's patient) and the schema (wrong version, missing or mistyped fields, values out of
range or NaN, unknown fields, unknown analytes and units, a waveform too slow to analyse), and
binary (v2) waveform chunks that are truncated, hold a partial sample, NaN, or too slow a rate.
"""

from __future__ import annotations

import base64
import json
import math
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import msgspec
import numpy as np

from icuwatch.core import schemas, topics
from icuwatch.core.settings import REPO_ROOT, Settings

Mutation = Callable[[int, dict, bytes], tuple[bytes | None, bytes]]
"""(index, the good message as a dict, its key) -> (key, payload) of a malformed one."""


def _json(d: dict) -> bytes:
    return json.dumps(d).encode()


def _with(**changes) -> Mutation:
    return lambda i, d, key: (key, _json({**d, **changes}))


def _without(field: str) -> Mutation:
    return lambda i, d, key: (key, _json({k: v for k, v in d.items() if k != field}))


def _v2(**changes) -> Mutation:
    """The good (v1) waveform chunk as binary v2, with ``changes`` to its fields (a callable value is
    applied to the field's good value)."""

    def mutate(i: int, d: dict, key: bytes) -> tuple[bytes | None, bytes]:
        good = schemas.WaveformV2.of(d["patient_id"], d["event_time"], d["signal"], d["fs"], d["samples"], d["units"])
        fields = msgspec.structs.asdict(good)
        fields.update({k: v(fields[k]) if callable(v) else v for k, v in changes.items()})
        return key, msgspec.msgpack.encode(fields)

    return mutate


def _v2_truncated(i: int, d: dict, key: bytes) -> tuple[bytes | None, bytes]:
    _, payload = _v2()(i, d, key)
    return key, payload[: len(payload) // 2]


MUTATIONS: dict[str, Mutation] = {
    "empty": lambda i, d, key: (key, b""),
    "not_utf8": lambda i, d, key: (key, b"\xff\xfe\x00" + str(i).encode()),
    "not_json": lambda i, d, key: (key, b"{not json " + str(i).encode()),
    "truncated": lambda i, d, key: (key, _json(d)[: max(1, len(_json(d)) // 2)]),
    "json_array": lambda i, d, key: (key, _json([d, i])),
    "no_key": lambda i, d, key: (None, _json(d)),
    "key_of_another_patient": lambda i, d, key: (key + b"-other", _json(d)),
    "schema_version_2": _with(schema_version=2),
    "no_event_time": _without("event_time"),
    "event_time_in_ms": lambda i, d, key: (key, _json({**d, "event_time": d["event_time"] * 1000})),
    "event_time_text": _with(event_time="yesterday"),
    "bad_patient_id": lambda i, d, key: (b"bad id", _json({**d, "patient_id": "bad id"})),
    "unknown_field": lambda i, d, key: (key, _json({**d, "comment": i})),
    "event_time_nan": _with(event_time=float("nan")),
}
TOPIC_MUTATIONS: dict[str, dict[str, Mutation]] = {
    topics.VITALS: {
        "hr_out_of_range": _with(hr=900),
        "no_value": lambda i, d, key: (
            key,
            _json({k: v for k, v in d.items() if k in ("schema_version", "patient_id", "event_time")}),
        ),
    },
    topics.WAVEFORMS: {
        "fs_too_low": _with(fs=2),
        "no_samples": _with(samples=[]),
        "sample_text": _with(samples=["x"]),
        "v2_truncated": _v2_truncated,
        "v2_partial_sample": _v2(samples=lambda b: b[:-1]),
        "v2_nan_float32": _v2(sample_format="float32", scale=1.0, samples=np.array([0.1, math.nan], "<f4").tobytes()),
        "v2_fs_too_low": _v2(fs=2.0),
    },
    topics.LABS: {
        "unknown_analyte": _with(analyte="unobtainium"),
        "wrong_unit": _with(unit="furlongs"),
        "result_before_collection": lambda i, d, key: (key, _json({**d, "result_time": d["event_time"] - 60})),
    },
    topics.CXR: {"short_image": _with(image_b64="abc"), "unknown_view": _with(view="oblique")},
    topics.ADT: {"unknown_event": _with(event="teleport"), "age_out_of_range": _with(age=400)},
}


def malformed(i: int, topic: str, good: schemas.Message) -> tuple[str, bytes | None, bytes]:
    """The i-th malformed message next to ``good`` (kinds taken in turn): (kind, key, payload)."""
    kinds = {**MUTATIONS, **TOPIC_MUTATIONS.get(topic, {})}
    kind = list(kinds)[i % len(kinds)]
    key, payload = kinds[kind](i, json.loads(good.to_bytes()), good.key())
    return kind, key, payload


@dataclass
class Sent:
    good: Counter
    """Per topic."""
    bad: Counter
    """Per (key, payload)."""
    kinds: Counter


def interleave(sim, n_bad: int) -> Iterator[tuple[str, bytes | None, bytes, str | None]]:
    """The simulation's messages in order with ``n_bad`` malformed ones spread evenly between them:
    (topic, key, payload, malformed kind or None)."""
    messages = [(topic, msg) for _, topic, msg in sim.timed_messages()]
    per_good = n_bad / max(1, len(messages))
    owed, i = 0.0, 0
    for topic, msg in messages:
        yield topic, msg.key(), msg.to_bytes(), None
        owed += per_good
        while owed >= 1.0 and i < n_bad:
            kind, key, payload = malformed(i, topic, msg)
            yield topic, key, payload, kind
            owed -= 1.0
            i += 1
    topic, msg = messages[-1]
    while i < n_bad:
        kind, key, payload = malformed(i, topic, msg)
        yield topic, key, payload, kind
        i += 1


def publish(items: Iterator[tuple[str, bytes | None, bytes, str | None]], producer, progress: bool) -> Sent:
    from tqdm import tqdm

    sent = Sent(Counter(), Counter(), Counter())
    for topic, key, payload, kind in tqdm(items, disable=not progress, unit="msg", desc="publish"):
        producer.send(topic, key=key, value=payload)
        if kind is None:
            sent.good[topic] += 1
        else:
            sent.bad[(key, payload)] += 1
            sent.kinds[kind] += 1
    producer.flush()
    return sent


def read_deadletters(settings: Settings, expected: int, timeout_s: float, key: bytes | None = None) -> list[dict]:
    """Dead letters from the start of ``icu.deadletter`` (only those keyed ``key``, when given) until
    ``expected`` are found or ``timeout_s`` passes."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=settings.broker,
        enable_auto_commit=False,
        consumer_timeout_ms=1000,
        max_partition_fetch_bytes=8 << 20,
    )
    parts = [TopicPartition(topics.DEADLETTER, p) for p in range(settings.partitions)]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    found: list[dict] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and len(found) < expected:
        for records in consumer.poll(timeout_ms=500, max_records=5000).values():
            found.extend(json.loads(r.value) for r in records if key is None or r.key == key)
    consumer.close()
    return found


def _wait_done(stats_file, total: int, timeout_s: float) -> dict:
    from icuwatch.benchmarks.pipeline import read_stats

    deadline, stats = time.monotonic() + timeout_s, {}
    while time.monotonic() < deadline:
        stats = read_stats([stats_file])
        if (
            stats.get("processed", 0) + stats.get("deadlettered", 0) >= total
            and stats.get("unacknowledged") == 0
            and stats.get("scores_pending") == 0
        ):
            break
        time.sleep(1.0)
    return stats


def run_bad_input(n_bad: int, patients: int = 8, minutes: float = 180.0, seed: int = 5, progress: bool = True) -> dict:
    from icuwatch.benchmarks.chaos import CHAOS_ENV, checkpointed_states, expected_states, triton_settings
    from icuwatch.deploy import broker, processes, triton
    from icuwatch.deploy.worker_process import start_worker, stats_path, stop_worker
    from icuwatch.sources.simulator import Simulation
    from icuwatch.storage import db
    from icuwatch.streams.kafka.producer import make_producer

    host, port = processes.split_host_port(CHAOS_ENV["ICUWATCH_BROKER"], 9092)
    if processes.port_open(host, port):
        raise SystemExit(f"bad input: {host}:{port} is in use (a chaos run?)")
    state_dir = REPO_ROOT / "var" / "chaos" / "bad-input"
    shutil.rmtree(state_dir, ignore_errors=True)
    state_dir.mkdir(parents=True)
    env = {
        **CHAOS_ENV,
        "ICUWATCH_STATE_DIR": str(state_dir),
        "ICUWATCH_DATABASE_URL": f"sqlite:///{state_dir / 'icuwatch.db'}",
    }
    settings = Settings(**{k.removeprefix("ICUWATCH_").lower(): v for k, v in env.items()})
    say = (lambda m: print(f"bad input: {m}", file=sys.stderr)) if progress else (lambda m: None)
    sim = Simulation(
        n_patients=patients,
        seed=seed,
        start_time=float(int(time.time()) - 6 * 3600),
        duration_s=minutes * 60.0,
        patient_prefix="bad-input-",
    )
    proc = None
    try:
        db.upgrade(settings.database_url)
        broker.start(settings)
        triton.start(triton_settings(), timeout_s=120)
        log_path = settings.log_dir / "worker-0.log"
        proc = start_worker(settings, log_path, env)
        say(f"{n_bad} malformed messages among {patients} patients' {minutes:g} min ...")
        producer = make_producer(settings)
        t0 = time.monotonic()
        sent = publish(interleave(sim, n_bad), producer, progress)
        producer.close()
        published_s = time.monotonic() - t0
        total = sum(sent.good.values()) + sum(sent.bad.values())
        say(f"{total} messages published in {published_s:.0f} s; waiting for the worker ...")
        stats = _wait_done(stats_path(settings), total, timeout_s=600)
        done_s = time.monotonic() - t0
        letters = read_deadletters(settings, sum(sent.bad.values()), timeout_s=120)
        crashed = proc.poll() is not None
        log_text = log_path.read_text(errors="replace")
        states, expected = checkpointed_states(settings), expected_states(sim)
    finally:
        if proc is not None:
            stop_worker(proc)
        broker.stop(settings)
        triton.stop(triton_settings())
    originals = Counter(base64.b64decode(d["original_b64"]) for d in letters)
    sent_payloads = Counter()
    for (_, payload), n in sent.bad.items():
        sent_payloads[payload] += n
    reasons = Counter(d["reason"].split(":")[0][:60] for d in letters)
    processed = stats.get("processed_by_topic", {})
    result = {
        "data": "simulated patients (icuwatch simulator) and generated malformed messages, not real data",
        "malformed_sent": sum(sent.bad.values()),
        "good_sent": dict(sent.good),
        "malformed_kinds": dict(sent.kinds),
        "deadletters": len(letters),
        "every_malformed_deadlettered": originals == sent_payloads,
        "deadletters_not_sent_as_malformed": sum((originals - sent_payloads).values()),
        "malformed_missing_from_deadletter": sum((sent_payloads - originals).values()),
        "every_deadletter_has_a_reason": all(d.get("reason", "").strip() for d in letters),
        "every_good_processed": all(processed.get(t, 0) == n for t, n in sent.good.items()),
        "good_processed": processed,
        "duplicates": stats.get("duplicates"),
        "patient_states_whole": f"{sum(states.get(p) == s for p, s in expected.items())}/{len(expected)}",
        "scores_stored": stats.get("scores_stored"),
        "worker_crashed": crashed or "Traceback" in log_text,
        "patient_ids_in_worker_log": "bad-input-" in log_text or "bad id" in log_text,
        "reasons_top": dict(reasons.most_common(12)),
        "wall_s": {"publish": round(published_s, 1), "until_processed": round(done_s, 1)},
        "messages_per_s": round(total / done_s, 1),
    }
    result["ok"] = (
        result["every_malformed_deadlettered"]
        and result["every_deadletter_has_a_reason"]
        and result["every_good_processed"]
        and not result["worker_crashed"]
        and not result["patient_ids_in_worker_log"]
        and result["duplicates"] == 0
        and result["patient_states_whole"] == f"{len(expected)}/{len(expected)}"
    )
    return result
