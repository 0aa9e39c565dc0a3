"""Table recovery reads each changelog partition up to the end offset the broker reports, and this
Tansu reports it wrong: ListOffsets "latest" answers the base offset of the partition's last record
batch + 1, not the end (ten records produced together at offsets 103..112 are reported as ending at
104). Faust's recovery stopped inside that last batch, so a worker taking over a partition at a
rebalance started from checkpoints older than the input offsets already committed, and the messages
in between were lost (the chaos drill's rebalance scenario; ``shared/DESIGN.md``).

A fetch response carries the partition's true high-water mark, so each reported end offset is
checked with one fetch at that offset from the partition's leader (through the consumer's own
client, so TLS and SASL are the worker's), and the larger of the two is used. On a broker that
answers ListOffsets correctly the two agree and nothing changes. The fetch waits up to
``FETCH_WAIT_MS``: this Tansu answers a fetch with no wait with no partitions at all.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)

FETCH_WAIT_MS = 10


async def true_end_offsets(consumer: Any, reported: Mapping[Any, int]) -> dict[Any, int]:
    """``reported`` end offsets (topic partition -> offset) of an ``AIOKafkaConsumer``, each raised to
    the high-water mark a fetch at it returns; kept as reported where that fetch fails."""
    from aiokafka.errors import KafkaError
    from aiokafka.protocol.fetch import FetchRequest

    client = consumer._client
    by_leader: dict[int, list[Any]] = defaultdict(list)
    for tp in reported:
        leader = client.cluster.leader_for_partition(tp)
        if leader is not None and leader >= 0:
            by_leader[leader].append(tp)
    ends = dict(reported)
    for leader, tps in by_leader.items():
        by_topic: dict[str, list[tuple[int, int, int]]] = defaultdict(list)
        for tp in tps:
            by_topic[tp.topic].append((tp.partition, max(reported[tp] or 0, 0), 1))
        request = FetchRequest(FETCH_WAIT_MS, 1, 1 << 20, 0, list(by_topic.items()))
        try:
            await client.ready(leader)
            response = await client.send(leader, request)
        except KafkaError as exc:
            log.warning("end offsets not checked with a fetch (%s): recovery may stop short", type(exc).__name__)
            continue
        for topic, partitions in response.topics:
            for partition, error_code, highwater, *_ in partitions:
                for tp in tps:
                    if tp.topic == topic and tp.partition == partition and error_code == 0:
                        ends[tp] = max(ends[tp] or 0, highwater)
    short = {tp: (reported[tp], end) for tp, end in ends.items() if end != reported[tp]}
    if short:
        log.info("end offsets reported short, corrected from fetches: %s", short)
    return ends


def install() -> None:
    from faust.transport.drivers import aiokafka as driver

    reported_ends = driver.AIOKafkaConsumerThread._highwaters
    if hasattr(reported_ends, "_icuwatch_original"):
        return

    async def checked_ends(self, partitions):
        ends = await reported_ends(self, partitions)
        if self.consumer.in_transaction:
            return ends
        return await true_end_offsets(self._ensure_consumer(), ends)

    checked_ends._icuwatch_original = reported_ends  # type: ignore[attr-defined]
    driver.AIOKafkaConsumerThread._highwaters = checked_ends  # type: ignore[method-assign]
