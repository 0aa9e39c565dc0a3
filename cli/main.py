"""``icuwatch`` command line: one entry point, one subcommand per job. Each command module of this
package has ``register(subparsers)`` and does no work but parse, call a library, and print.

An operator's mistake (a missing or malformed input, a busy port, an unknown topic) ends a command
with one line on stderr and exit status 2; ``icuwatch --debug ...`` shows the traceback instead."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from icuwatch.core.errors import is_operator_error, one_line

COMMAND_MODULES = (
    "stack",
    "simulate",
    "demo",
    "replay",
    "predict",
    "shadow",
    "drift",
    "units",
    "evaluate",
    "train_baseline",
    "train",
    "distill",
    "distill_live",
    "export_triton",
    "models",
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
    parser.add_argument("--debug", action="store_true", help="a traceback instead of one line for operator errors")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"icuwatch.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command != "worker":
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        logging.getLogger("kafka").setLevel(logging.ERROR)  # event-loop timing chatter from kafka-python
    try:
        return args.func(args)
    except Exception as exc:
        if args.debug or not is_operator_error(exc):
            raise
        print(f"icuwatch {args.command}: {one_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
