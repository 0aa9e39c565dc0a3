"""``icuwatch bench models`` (teacher and student served by the real tritonserver: quality on the
PhysioNet test split, latency) and ``icuwatch bench pipeline`` (the simulator at N beds through
broker -> worker -> Triton -> database in real time). Both print JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from icuwatch.cli.options import add_waveform_payload, non_negative_int


def _bench(args: argparse.Namespace) -> int:
    if args.target == "models":
        try:
            if args.student == "live":
                from icuwatch.benchmarks import live_models

                summary = live_models.run(args.repository, latency_rows=args.latency_rows, progress=not args.quiet)
            else:
                from icuwatch.benchmarks.models import run

                summary = run(
                    args.cohort,
                    args.repository,
                    latency_rows=args.latency_rows,
                    teacher=args.teacher,
                    progress=not args.quiet,
                )
        except FileNotFoundError as exc:
            raise SystemExit(str(exc)) from None
    elif args.target == "hl7":
        from icuwatch.benchmarks.hl7_throughput import run as run_hl7

        summary = run_hl7(args.messages, args.clients, args.broker)
    elif args.target == "encoders":
        from icuwatch.benchmarks.timeseries_encoders import run as run_encoders

        summary = run_encoders(args.epochs, args.rows_per_epoch, args.cohort)
    else:
        from icuwatch.benchmarks.pipeline import run

        summary = run(
            args.beds,
            args.minutes,
            scoring_model=args.model,
            database_url=args.database_url,
            seed=args.seed,
            chunk_s=args.chunk_s,
            workers=args.workers,
            progress=not args.quiet,
            speed=args.speed,
            waveform_payload=args.waveform_payload,
            aligned_monitors=args.aligned_monitors,
            producer_linger_ms=args.producer_linger_ms,
            profile_dir=Path(args.profile) if args.profile else None,
        )
    text = json.dumps(summary) if args.json else json.dumps(summary, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(json.dumps(summary, indent=2) + "\n")
    return 0


def register(subparsers) -> None:
    from icuwatch.fusion.cohorts import COHORTS
    from icuwatch.fusion.strategies import STRATEGIES

    p = subparsers.add_parser(
        "bench",
        help="benchmarks, JSON out: `bench models` (the served student_live and its teacher through "
        "tritonserver), `bench pipeline` (N simulated beds end to end), `bench hl7` (HL7 listener "
        "throughput), `bench encoders` (series encoder kinds compared)",
    )
    p.add_argument("target", choices=["models", "pipeline", "hl7", "encoders"])
    p.add_argument("--json", action="store_true", help="one JSON line")
    p.add_argument("--out", default=None, help="also write the summary (indented JSON) to this file")
    p.add_argument("--quiet", action="store_true")
    g = p.add_argument_group("bench models")
    g.add_argument(
        "--student",
        default="live",
        choices=["live", "cohort"],
        help="live (default): the served student_live and its cross-fitted LightGBM teacher on the live cohort's "
        "TEST rows; cohort: `icuwatch distill`'s student and its --teacher on --cohort",
    )
    g.add_argument("--cohort", default="physionet", choices=COHORTS, help="with --student cohort")
    g.add_argument(
        "--repository",
        default=None,
        help="live: the repository holding student_live (default the committed serving/models); cohort: the "
        "repository to export to and serve (default var/triton/models)",
    )
    g.add_argument("--teacher", default="attention", choices=STRATEGIES, help="with --student cohort")
    g.add_argument("--latency-rows", type=int, default=20000, help="latency batches are drawn from this many test rows")
    g = p.add_argument_group("bench hl7")
    g.add_argument("--messages", type=int, default=400, help="messages per phase")
    g.add_argument("--clients", type=int, default=4, help="connections of the concurrent phase")
    g.add_argument("--broker", default=None, help="use this broker instead of starting one")
    g = p.add_argument_group("bench encoders (and models: --cohort)")
    g.add_argument("--epochs", type=int, default=4)
    g.add_argument("--rows-per-epoch", type=int, default=100_000)
    g = p.add_argument_group("bench pipeline")
    g.add_argument("--beds", type=int, default=1000)
    g.add_argument("--minutes", type=float, default=5.0)
    g.add_argument(
        "--model",
        default="",
        help="Triton model the worker scores with (default: the worker's own, ICUWATCH_SCORING_MODEL: "
        "student_live unless set); early_warning for the rule model",
    )
    g.add_argument("--database-url", default=None, help="default: a fresh SQLite file in var/bench/pipeline")
    g.add_argument("--seed", type=int, default=7)
    g.add_argument("--workers", type=int, default=1, help="worker processes in the consumer group (<= partitions)")
    g.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="event time per wall second (> 1: beds' windows fill sooner, for a soak; latencies "
        "are reported at 1 only)",
    )
    g.add_argument(
        "--chunk-s",
        type=int,
        default=1,
        help="seconds of ECG/PPG/respiration per waveform message (1: as a monitor streams; 2+: a batching gateway)",
    )
    add_waveform_payload(g)
    g.add_argument(
        "--aligned-monitors",
        action="store_true",
        help="every bed's monitor sends at the same phase in the second (a burst of all beds' messages each second: "
        "the worst case for the worker); default: each bed at its own phase within the second, as "
        "independent monitors do",
    )
    g.add_argument(
        "--producer-linger-ms",
        type=non_negative_int,
        default=50,
        help="how long the bench's producer, standing for the bedside gateways, lets a record wait for others to "
        "share its request (default 50; the product's own producer uses 10). With every monitor at its own "
        "phase, 10 ms made ~100 requests a second that cost the local broker 70 of the run's 240 CPU-s",
    )
    g.add_argument(
        "--profile",
        default=None,
        metavar="DIR",
        help="py-spy samples the first worker while publishing; raw samples in DIR and the per-part "
        "breakdown of a message's cost in the JSON (worker_profile)",
    )
    p.set_defaults(func=_bench)
