"""``icuwatch chaos``: each fault injected into a running pipeline, alerts compared with a fault-free
run (``benchmarks/chaos/``). Prints JSON; exits 1 if any scenario lost or duplicated an alert."""

from __future__ import annotations

import argparse
import json

from icuwatch.cli.options import add_waveform_payload


def _chaos(args: argparse.Namespace) -> int:
    from icuwatch.benchmarks.chaos import SCENARIOS, Config, run_chaos

    if args.bad_input:
        from icuwatch.benchmarks.bad_input import run_bad_input

        result = run_bad_input(
            args.bad_input, patients=args.patients, minutes=args.bad_input_minutes, progress=not args.quiet
        )
        _print(result, args)
        return 0 if result["ok"] else 1

    cfg = Config(
        patients=args.patients,
        hours=args.hours,
        speed=args.speed,
        fault_at_s=args.fault_at_s,
        fault_s=args.fault_s,
        seed=args.seed,
        waveform_payload=args.waveform_payload,
    )
    summary = run_chaos(args.scenario or list(SCENARIOS), cfg, progress=not args.quiet)
    _print(summary, args)
    return 0 if summary["all_ok"] else 1


def _print(result: dict, args: argparse.Namespace) -> None:
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            f.write(json.dumps(result, indent=2) + "\n")


def register(subparsers) -> None:
    from icuwatch.benchmarks.chaos import SCENARIOS

    p = subparsers.add_parser(
        "chaos",
        help="fault injection (worker SIGKILL, rebalance, Triton/database/broker "
        "outages): alerts lost and duplicated vs a fault-free run, JSON out",
    )
    p.add_argument(
        "--scenario", action="append", choices=sorted(SCENARIOS), help="run only this fault (repeatable; default: all)"
    )
    p.add_argument("--patients", type=int, default=8)
    p.add_argument("--hours", type=float, default=3.0, help="simulated event time per run")
    p.add_argument("--speed", type=float, default=90.0, help="simulated seconds per wall second")
    p.add_argument("--fault-at-s", type=float, default=40.0, help="wall seconds into the stream")
    p.add_argument("--fault-s", type=float, default=30.0, help="outage length (Triton, database, rebalance)")
    p.add_argument("--seed", type=int, default=3)
    add_waveform_payload(p)
    p.add_argument(
        "--bad-input",
        type=int,
        default=0,
        metavar="N",
        help="instead of the faults: N malformed messages among --patients' good ones; every bad one "
        "must reach icu.deadletter with a reason, every good one be processed",
    )
    p.add_argument(
        "--bad-input-minutes",
        type=float,
        default=180.0,
        help="simulated minutes of good messages (labs and X-rays arrive over hours)",
    )
    p.add_argument("--json", action="store_true", help="one JSON line")
    p.add_argument("--out", default=None, help="also write the summary (indented JSON) to this file")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_chaos)
