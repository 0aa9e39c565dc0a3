"""``icuwatch export-triton``: the trained teacher and early-exit student as Triton models (the
benchmark that serves them is ``icuwatch bench models``, in :mod:`icuwatch.cli.bench`)."""

from __future__ import annotations

import argparse
import json


def _export(args: argparse.Namespace) -> int:
    from icuwatch.serving.export import export

    try:
        summary = export(
            args.cohort, args.repository, teacher=args.teacher, threads=args.threads, queue_delay_us=args.queue_delay_us
        )
    except FileNotFoundError as exc:
        raise SystemExit(str(exc)) from None
    print(json.dumps(summary, indent=None if args.json else 2))
    return 0


def register(subparsers) -> None:
    from icuwatch.fusion.cohorts import COHORTS
    from icuwatch.fusion.strategies import STRATEGIES

    p = subparsers.add_parser(
        "export-triton",
        help="write the trained teacher and early-exit student as Triton models "
        "(TorchScript + python backend) into a model repository",
    )
    p.add_argument("--cohort", default="physionet", choices=COHORTS)
    p.add_argument(
        "--repository",
        default=None,
        help="model repository (default: var/triton/models, generated; never the committed serving/models)",
    )
    p.add_argument("--teacher", default="attention", choices=STRATEGIES)
    p.add_argument("--threads", type=int, default=1, help="torch threads per model instance (config parameter)")
    p.add_argument(
        "--queue-delay-us",
        type=int,
        default=0,
        help="dynamic batching: how long a request may wait for others (0: batch what is queued)",
    )
    p.add_argument("--json", action="store_true", help="one JSON line")
    p.set_defaults(func=_export)
