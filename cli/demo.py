"""``icuwatch demo``: the local stack, a worker and a simulated ward end to end, then a summary."""

from __future__ import annotations

import argparse
import json
import sys

from icuwatch.core.settings import get_settings


def _demo(args: argparse.Namespace) -> int:
    from icuwatch.benchmarks.demo import describe, run_demo

    summary = run_demo(
        get_settings(),
        minutes=args.minutes,
        patients=args.patients,
        speed=args.speed,
        seed=args.seed,
        keep_stack=not args.stop_stack,
        population=args.population,
    )
    print(describe(summary), file=sys.stderr)
    print(json.dumps(summary) if args.json else json.dumps(summary, indent=2))
    return 0 if summary.get("alerts") else 1


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="stack up, worker, simulator: end to end, then a summary")
    p.add_argument("--minutes", type=float, default=3.0, help="wall-clock minutes of simulation")
    p.add_argument("--patients", type=int, default=8)
    p.add_argument("--speed", type=float, default=60.0)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument(
        "--population",
        default="icu",
        choices=["stylised", "icu"],
        help="who is simulated: icu (default) = baselines, charting, labs and courses fitted to real stays (false "
        "alarms from stable patients with real baselines are counted in the summary); stylised = the hand-set ward",
    )
    p.add_argument("--json", action="store_true", help="print the summary as one JSON line")
    p.add_argument("--stop-stack", action="store_true", help="stop broker and tritonserver at the end")
    p.set_defaults(func=_demo)
