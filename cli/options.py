"""Options shared by several commands."""

from __future__ import annotations

import argparse


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
