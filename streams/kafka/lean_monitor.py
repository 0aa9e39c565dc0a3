"""A Faust monitor that keeps only what the worker reads.

Faust's default monitor (faust-streaming 0.15.3, ``faust.sensors.monitor.Monitor``) updates a dozen
statistics on every record and every stream event (events by stream and by task, each event's
runtime, messages by topic), through a weak-key dictionary lookup per event; nothing in icuwatch
reads them (Faust's web views are off). py-spy on ``bench pipeline --beds 1000`` put them at 3-4 %
of the worker's busy samples. This one keeps the per-partition offsets the worker's stats report
(``worker.consumer_lag``: ``tp_read_offsets`` here, ``tp_end_offsets`` set by the consumer) and
leaves every other hook (commits, sends, tables, rebalances) as Faust has it.
"""

from __future__ import annotations

from typing import Any

from faust.sensors.monitor import Monitor


class LeanMonitor(Monitor):
    def on_message_in(self, tp: Any, offset: int, message: Any) -> None:
        self.tp_read_offsets[tp] = offset

    def on_stream_event_in(self, tp: Any, offset: int, stream: Any, event: Any) -> None:
        return None

    def on_stream_event_out(self, tp: Any, offset: int, stream: Any, event: Any, state: Any = None) -> None:
        return None

    def on_message_out(self, tp: Any, offset: int, message: Any) -> None:
        return None
