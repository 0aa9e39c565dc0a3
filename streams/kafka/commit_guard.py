"""Refuse an offset commit from a consumer that is not in a group generation, as the Java client does.

After the coordinator forgets a member (``UnknownMemberId``: a broker restart, a session timeout),
aiokafka resets its generation to -1 and, until it has rejoined, still sends OffsetCommit requests
with generation -1. A broker takes those as commits of a consumer outside any group and stores
them. The local broker keeps its log in memory, so after its restart such a commit writes offsets
of the old log into the new, empty topics: the rejoined worker seeks to them and skips every record
before them (one chaos run skipped ~17,700 vital-sign records this way). The Java consumer fails
such a commit ("not part of an active group", ``ConsumerCoordinator.sendOffsetCommitRequest``)
when its partitions come from the group (``subscribe``, not ``assign``); :func:`install` makes
aiokafka do the same. The refused offsets are not carried over: after the rejoin the worker reads
again from the group's committed offsets, so at-least-once delivery holds by redelivery (and the
re-read records are recognised, ``patient_state.redelivered``).
"""

from __future__ import annotations

from typing import Any

from aiokafka.consumer.group_coordinator import GroupCoordinator
from aiokafka.errors import UnknownMemberIdError
from aiokafka.protocol.commit import OffsetCommitRequest

_do_commit_offsets = GroupCoordinator._do_commit_offsets


async def _commit_within_a_generation(self: GroupCoordinator, assignment: Any, offsets: dict) -> None:
    if (
        offsets
        and self.generation == OffsetCommitRequest.DEFAULT_GENERATION_ID
        and self._subscription.partitions_auto_assigned()
    ):
        # commit_offsets() turns this into CommitFailedError("... already rebalanced ..."), which
        # Faust takes as a commit to retry after the rebalance.
        raise UnknownMemberIdError(self.group_id)
    await _do_commit_offsets(self, assignment, offsets)


def install() -> None:
    GroupCoordinator._do_commit_offsets = _commit_within_a_generation
