"""The write of a table key to its changelog, as a future that is done once the broker has it.

The worker acknowledges the input messages a checkpoint covers (so that their offsets may be
committed) only once the checkpoint's changelog record is delivered. Faust flushes its producer
before it commits, but its buffer's flush gives up after 0.1 s without a send and returns with
writes still queued (faust-streaming 0.15.3 ``ProducerBuffer.flush_atmost``): a commit could then
pass messages whose checkpoint a stopped worker never delivered, and the next owner of the
partition, recovering the older checkpoint, would not read them again.
"""

from __future__ import annotations

from typing import Any


class ChangelogWrites:
    """Wraps ``table.send_changelog`` so the last write of each key can be taken after a set."""

    def __init__(self, table: Any) -> None:
        self._sent: dict[Any, Any] = {}
        send = table.send_changelog

        def send_and_keep(partition, key, value, *args, **kwargs):
            future = send(partition, key, value, *args, **kwargs)
            self._sent[key] = future
            return future

        table.send_changelog = send_and_keep

    def take(self, key: Any) -> Any:
        """The future of the last changelog write of ``key`` since the last take (KeyError if none)."""
        return self._sent.pop(key)
