"""``icuwatch`` command line: one entry point, one subcommand per job. Each command module of this
package has ``register(subparsers)`` and does no work but parse, call a library, and print."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

COMMAND_MODULES = (
    "stack",
    "simulate",
    "demo",
    "replay",
    "predict",
    "evaluate",
    "train_baseline",
    "train",
    "distill",
    "export_triton",
    "cxr",
    "api",
    "hl7",
    "dicom",
    "bench",
    "chaos",
)
"""Modules of ``icuwatch.cli``, in the order their commands are listed."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="icuwatch", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"icuwatch.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command != "worker":
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        logging.getLogger("kafka").setLevel(logging.ERROR)  # event-loop timing chatter from kafka-python
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
