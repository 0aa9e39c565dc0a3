"""Whether Faust's streams are taking records again after the last rebalance: the window in which
records delivered to them are thrown away is over.

Faust (faust-streaming 0.15.3) resumes the stream partitions of a new assignment, seeks them to their
committed offsets, and only then resumes ``app.flow_control``, which empties every stream's buffer
(``Recovery.on_recovery_completed``, or ``Recovery._resume_streams`` without tables). Whatever was
delivered before that was counted as read and never processed (``refetch_dropped`` holds input
records back until then). ``app.rebalancing`` alone does not say when that is: it is set when a
rebalance revokes the partitions and cleared by the recovery at its end, and a recovery still
finishing an older generation clears it while the next rebalance is already under way. So the
generation whose recovery ran to its end (flow control resumed and the group still in that
generation) is kept here, and the streams are ready only when it is the current one.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

from faust.tables.recovery import Recovery

_ATTR = "_icuwatch_streams_ready_generation"
_MARK = "_icuwatch_streams_ready"


def ready(app: Any) -> bool:
    """No rebalance under way, and the current generation's recovery has resumed the streams."""
    return not app.rebalancing and getattr(app, _ATTR, None) == app.consumer_generation_id


def _recording(resume: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    @functools.wraps(resume)
    async def resume_and_record(self: Recovery, generation_id: int = 0) -> None:
        await resume(self, generation_id=generation_id)
        if self.app.consumer_generation_id == generation_id:  # not returned early for a newer one
            setattr(self.app, _ATTR, generation_id)

    setattr(resume_and_record, _MARK, True)
    return resume_and_record


def install() -> None:
    for name in ("on_recovery_completed", "_resume_streams"):
        method = getattr(Recovery, name)
        if not getattr(method, _MARK, False):
            setattr(Recovery, name, _recording(method))
