"""The opt-in soak, load and drill runs (``make test-all``, i.e. ``ICUWATCH_SLOW=1``): each starts a
stack of its own and runs for minutes to half an hour; README "Tests" lists their durations."""

from __future__ import annotations

import pytest

from icuwatch.benchmarks.chaos import SCENARIOS, Config, run_chaos


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_chaos_drill_loses_and_duplicates_no_alert():
    summary = run_chaos(list(SCENARIOS), Config(), progress=False)
    assert summary["reference"]["alerts_stored"] > 0
    for name, result in summary["scenarios"].items():
        assert (result["lost"], result["duplicated"]) == (0, 0), (name, result)
    assert summary["all_ok"], summary


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_100k_malformed_messages_all_deadlettered_good_ones_processed():
    from icuwatch.benchmarks.bad_input import run_bad_input

    result = run_bad_input(100_000, progress=False)
    assert result["malformed_sent"] == 100_000
    assert result["ok"], result


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_soak_1000_beds_for_10_minutes():
    """Issue 8's load and soak run (opt-in): memory flat, lag bounded, nothing lost. Two workers
    share the partitions: one alone takes ~2,200 of the 2,550 messages/s on this 2-core machine
    and falls behind (README, "Measured")."""
    from icuwatch.benchmarks.pipeline import run

    out = run(beds=1000, minutes=10, chunk_s=2, workers=2, progress=False)
    assert out["messages"]["lost"] == 0 and out["scores"]["lost"] == 0 and out["alerts"]["lost"] == 0
    assert out["alerts"]["duplicated"] == 0
    assert out["consumer_lag"]["seconds_after_warmup"]["p99"] < 15.0


@pytest.mark.slow
@pytest.mark.timeout(2700)
def test_soak_memory_flattens_once_every_window_is_full():
    """Issue 8's "memory flat" (opt-in): a 10-minute run at 1,000 beds cannot tell the patients' hour
    windows filling from a leak, so 200 beds at 5x event time (the same messages/s) fill theirs
    within 12 of 18 minutes. RSS grew ~10 MB/min while they filled and ~2 MB/min after, falling to
    ~0.2 in the last 3 minutes (README, "Measured"); a leak would keep its pace."""
    from icuwatch.benchmarks.pipeline import run

    out = run(beds=200, minutes=18, speed=5, chunk_s=2, workers=2, progress=False)
    assert out["messages"]["lost"] == 0 and out["alerts"]["lost"] == 0 and out["alerts"]["duplicated"] == 0
    rss = out["worker_rss_mb_all_workers"]
    assert rss["growth_mb_per_min_windows_full"] < 3.0
    assert rss["growth_mb_per_min_windows_full"] < 0.5 * rss["growth_mb_per_min_after_warmup"]
