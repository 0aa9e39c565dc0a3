"""``streams/kafka/lean_monitor.py``: the worker's Faust monitor keeps the offsets its stats read
and none of the per-event statistics; the hooks it overrides are still Faust's."""

from __future__ import annotations

import inspect
from types import SimpleNamespace

from faust.sensors.monitor import Monitor

from icuwatch.streams.kafka.lean_monitor import LeanMonitor

HOOKS = ("on_message_in", "on_stream_event_in", "on_stream_event_out", "on_message_out")


def test_the_overridden_hooks_are_faust_s_with_the_same_parameters():
    for hook in HOOKS:
        faust_params = list(inspect.signature(getattr(Monitor, hook)).parameters)
        assert list(inspect.signature(getattr(LeanMonitor, hook)).parameters) == faust_params, hook


def test_read_offsets_are_kept_and_event_statistics_are_not():
    monitor = LeanMonitor()
    tp = ("icu.vitals", 3)
    message = SimpleNamespace(topic="icu.vitals", tp=tp, time_in=None)
    monitor.on_message_in(tp, 41, message)
    monitor.on_message_in(tp, 42, message)
    assert monitor.tp_read_offsets[tp] == 42
    assert monitor.on_stream_event_in(tp, 42, object(), object()) is None
    monitor.on_stream_event_out(tp, 42, object(), object(), None)
    monitor.on_message_out(tp, 42, message)
    assert monitor.events_total == 0 and monitor.messages_received_total == 0
    assert not monitor.events_by_stream and message.time_in is None


def test_the_worker_app_uses_it():
    from icuwatch.streams.app import app

    assert isinstance(app.monitor, LeanMonitor)
