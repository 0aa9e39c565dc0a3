"""Options shared by several commands."""

from __future__ import annotations

import argparse
import re
from datetime import datetime, timedelta, timezone

from icuwatch.core.errors import OperatorError

SPAN = re.compile(r"^(\d+(?:\.\d+)?)([mhd])$")
SPAN_UNIT_S = {"m": 60, "h": 3600, "d": 86400}


def add_waveform_payload(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--waveform-payload 1|2``: how a source sends waveform chunks (the worker reads both)."""
    p.add_argument(
        "--waveform-payload",
        type=int,
        choices=[1, 2],
        default=2,
        help="waveform chunks as 1: JSON numbers (schema v1) or 2: packed int16 samples with a scale "
        "(schema v2, msgpack; default): a third of the bytes and a fifth of the decode cost",
    )


def non_negative_int(text: str) -> int:
    """An argparse ``type``: a whole number >= 0 (argparse turns the ValueError into one clear line)."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, not {value}")
    return value


def parse_span(text: str, option: str) -> timedelta:
    """A length of time as ``90m``, ``12h`` or ``7d``."""
    span = SPAN.match(text.strip())
    if not span:
        raise OperatorError(f"{option} {text!r}: give a span such as 90m, 12h or 7d")
    return timedelta(seconds=float(span.group(1)) * SPAN_UNIT_S[span.group(2)])


def parse_time(text: str | None, option: str, now: datetime | None = None) -> datetime | None:
    """An ISO 8601 time (UTC when it names no zone) or a span back from ``now`` (``90m``, ``12h``, ``7d``)."""
    if text is None:
        return None
    if SPAN.match(text.strip()):
        return (now or datetime.now(timezone.utc)) - parse_span(text, option)
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise OperatorError(
            f"{option} {text!r}: give an ISO 8601 time (2026-12-06T08:00) or a span (90m, 12h, 7d)"
        ) from None
    return t if t.tzinfo is not None else t.replace(tzinfo=timezone.utc)
