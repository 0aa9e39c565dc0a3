"""``icuwatch bench pipeline``: the lag arithmetic against acknowledged offsets (pure), and one short
real run (broker, tritonserver, worker, SQLite) whose books must balance."""

from __future__ import annotations

import json

import pytest

from icuwatch.benchmarks.pipeline import Acks, lag_now, read_stats


def test_lag_counts_records_past_the_last_taken_offset_and_the_oldest_ones_age():
    acks = Acks()
    for offset, t in enumerate([100.0, 101.0, 102.0, 103.0]):
        acks.acked("icu.vitals", 0, 50 + offset, t)  # the partition already held 50 records
    acks.acked("icu.vitals", 1, 0, 100.5)
    # partition 0: took up to offset 51 -> 52, 53 waiting (sent at 102); partition 1: nothing taken
    records, seconds = lag_now(acks, {"icu.vitals": {"0": 51}}, now=110.0)
    assert records == 3
    assert seconds == pytest.approx(110.0 - 100.5)
    records, seconds = lag_now(acks, {"icu.vitals": {"0": 53, "1": 0}}, now=110.0)
    assert (records, seconds) == (0, 0.0)
    assert acks.end(("icu.vitals", 0)) == 54 and acks.total("icu.vitals") == 5


def test_out_of_order_acks_keep_offsets_aligned():
    acks = Acks()
    acks.acked("icu.labs", 2, 10, 1.0)
    acks.acked("icu.labs", 2, 12, 3.0)  # 11 acknowledged later (a retry)
    assert acks.end(("icu.labs", 2)) == 13
    assert lag_now(acks, {"icu.labs": {"2": 10}}, now=5.0) == (2, 5.0 - 3.0)


def test_stats_of_several_workers_merge(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(
        json.dumps(
            {
                "at": 10.0,
                "processed": 5,
                "processed_by_topic": {"icu.vitals": 5},
                "done_offsets": {"icu.vitals": {"0": 4}},
                "scorer": {"triton_rows": 2},
            }
        )
    )
    assert read_stats([a, b]) == {}  # not every worker has written yet
    b.write_text(
        json.dumps(
            {
                "at": 9.0,
                "processed": 7,
                "processed_by_topic": {"icu.vitals": 7},
                "done_offsets": {"icu.vitals": {"1": 6}},
                "scorer": {"triton_rows": 3},
            }
        )
    )
    merged = read_stats([a, b])
    assert merged["at"] == 9.0 and merged["processed"] == 12
    assert merged["processed_by_topic"] == {"icu.vitals": 12} and merged["scorer"] == {"triton_rows": 5}
    assert merged["done_offsets"] == {"icu.vitals": {"0": 4, "1": 6}}


def test_kafka_producer_uses_the_c_crc32c():
    """Without the crc32c package kafka-python checksums every batch in Python (5x the CPU per send)."""
    from kafka.record import util

    assert util.crc32c_c is not None


@pytest.mark.stack
def test_a_short_bench_balances_its_books():
    from icuwatch.benchmarks.pipeline import run

    out = run(beds=20, minutes=0.4, workers=1, progress=False)
    msgs = out["messages"]
    assert msgs["produced_acked"] > 20 * 24 * 4 * 0.9
    assert msgs["lost"] == 0 and msgs["taken_by_worker"] == msgs["produced_acked"]
    assert out["waveform_payload"] == 2 and msgs["deadlettered"] == 0  # binary chunks, every one accepted
    assert msgs["by_topic"]["icu.waveforms"] > 0
    assert out["worker_gc"]["collections"] is not None  # the worker reports its collector (may be 0 here)
    assert set(out["worker_gc"]["pause_max_s_by_generation"]) == {"0", "1", "2"}
    stages = out["alerts"]["stages_after_warmup"]
    assert set(stages) == {"how", "event_to_scored_s", "scored_to_stored_s"}
    pauses = [p for p in out["timeline"]["gc_pause_total_s"] if p is not None]
    assert len(out["timeline"]["gc_pause_total_s"]) == len(out["timeline"]["t_s"]) and pauses == sorted(pauses)
    assert out["scores"]["lost"] == 0 and out["scores"]["published"] >= 20
    assert out["scores"]["scorer"]["triton_rows"] == out["scores"]["published"]
    assert out["alerts"]["lost"] == 0 and out["alerts"]["stored"] == out["alerts"]["published_to_topic"]
    assert out["consumer_lag"]["seconds"]["n"] >= 15
    assert out["scores"]["event_to_scored_s"]["p50"] is not None
    inside = out["scores"]["worker_stages"]  # each score's hand-offs inside the worker (every bed's first, ...)
    assert inside["taken_to_submitted_s"]["n"] >= 20 and inside["taken_to_submitted_s"]["p50"] >= 0
    assert 0 <= inside["submitted_to_scored_s"]["p50"] <= inside["appended_to_published_s"]["p50"]
    assert set(out["scores"]["worker_stages_after_warmup"]) == set(inside)
    assert out["data"].startswith("simulated")
    json.dumps(out)


def test_rss_growth_is_the_slope_in_mb_per_minute():
    from icuwatch.benchmarks.pipeline import rss_growth_per_min

    flat = [{"at": 1000.0 + i, "rss_mb": 400.0 + (i % 2)} for i in range(120)]
    assert abs(rss_growth_per_min(flat)) < 0.1
    leak = [{"at": 1000.0 + i, "rss_mb": 400.0 + i / 30.0} for i in range(120)]  # 2 MB a minute
    assert rss_growth_per_min(leak) == pytest.approx(2.0, abs=0.01)
    assert rss_growth_per_min(flat[:5]) is None


def test_a_profile_splits_busy_samples_into_the_parts_of_a_message_s_cost(tmp_path):
    from icuwatch.benchmarks import worker_profile

    raw = tmp_path / "worker-0.raw"
    stacks = {
        "main (x.py:1);ingest (streams/worker.py:170);decode (core/schemas.py:500);validate (p.py:1)": 30,
        "main (x.py:1);ingest (streams/worker.py:180);apply_message (streams/ingest.py:117);add (w.py:2)": 50,
        "main (x.py:1);Consumer._drain_messages (faust/transport/consumer.py:1220);wait (t.py:1)": 15,
        "t (threading.py:1);StorageSink._run (streams/sink.py:50);do_execute (d.py:1)": 5,
        "main (x.py:1);run_forever (b.py:1);EpollSelector.select (selectors.py:468)": 100,
    }
    raw.write_text("".join(f"{stack} {n}\n" for stack, n in stacks.items()))
    out = worker_profile.breakdown(raw, cpu_us_per_message=200.0)
    assert out["samples_busy"] == 100 and out["samples_idle"] == 100
    parts = out["parts"]
    assert parts["state update (vitals, labs, waveform buffers)"] == {"share": 0.5, "us_per_message": 100.0}
    assert parts["decode and validation (pydantic v1, msgspec v2)"]["share"] == 0.3
    assert parts["database thread (SQLAlchemy, SQLite/PostgreSQL)"]["share"] == 0.05
    assert sum(p["share"] for p in parts.values()) == pytest.approx(1.0)


def test_the_worker_times_each_collection_as_cpu_time():
    from icuwatch.streams import worker

    before = dict(worker.gc_stats)
    worker._time_collection("start", {"generation": 2})
    sum(i * i for i in range(200_000))  # some CPU inside the "collection"
    worker._time_collection("stop", {"generation": 2, "collected": 0})
    assert worker.gc_stats["gc_collections"] == before["gc_collections"] + 1
    assert worker.gc_stats["gc_full_collections"] == before["gc_full_collections"] + 1
    assert worker.gc_stats["gc_pause_total_s"] > before["gc_pause_total_s"]
    assert worker.gc_stats["gc_pause_max_s"] > 0
    assert worker.gc_stats["gc_pause_max_s_gen2"] > 0  # the longest pause per generation too
