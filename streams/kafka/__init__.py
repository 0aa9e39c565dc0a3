"""Kafka plumbing of the worker and the producers: client security settings, the producer, the
acknowledgement bookkeeping, and every patch to the pinned Kafka client libraries (faust-streaming
0.15.3, aiokafka 0.14.0), applied by :func:`install_patches` before the Faust app is built. Each
patch has its own module and test; rerun them before upgrading either library (OPERATIONS.md)."""

from __future__ import annotations

from icuwatch.core.settings import Settings


def install_patches(settings: Settings) -> None:
    """``fetch_wait``: the consumer's fetch wait; ``commit_guard``: no offset commit outside a group
    generation; ``commit_floor``: never commit past an unacknowledged message; ``inline_delivery``:
    no tasks per record when a stream's buffer has room; ``rewind_uncommitted``: a seek to the
    committed offsets also rewinds the stream partitions that have none yet; ``true_end_offsets``:
    table recovery reads each changelog partition to its true end; ``streams_ready``: which group
    generation's streams are taking records again; ``refetch_dropped``: records fetched and not
    delivered are fetched again."""
    from icuwatch.core import topics
    from icuwatch.streams.kafka import (
        commit_floor,
        commit_guard,
        fetch_wait,
        inline_delivery,
        refetch_dropped,
        rewind_uncommitted,
        streams_ready,
        true_end_offsets,
    )

    fetch_wait.install(settings.consumer_fetch_max_wait_ms)
    commit_guard.install()
    commit_floor.install()
    inline_delivery.install()
    rewind_uncommitted.install(lambda topic: topic in topics.ALL)
    true_end_offsets.install()
    streams_ready.install()
    refetch_dropped.install()
