"""``icuwatch`` command line: one entry point, one subcommand per job."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

from icuwatch.settings import get_settings


def _stack(args: argparse.Namespace) -> int:
    from icuwatch.deploy import stack

    action = {"up": stack.up, "down": stack.down, "status": stack.status}[args.action]
    print(json.dumps(action(get_settings()), indent=2))
    return 0


def _worker(args: argparse.Namespace) -> int:
    from icuwatch.streams.worker import run_worker

    run_worker(args.loglevel)
    return 0


def _simulate(args: argparse.Namespace) -> int:
    from icuwatch.streams.simulator import Simulation
    from icuwatch.streams.simulator.producer import publish, write_ground_truth
    from icuwatch.streams.producer import make_producer

    settings = get_settings()
    sim = Simulation(
        n_patients=args.patients,
        seed=args.seed,
        start_time=args.start if args.start is not None else time.time(),
        duration_s=args.hours * 3600.0,
        waveforms=not args.no_waveforms and args.via != "hl7",
        patient_prefix=args.prefix,
    )
    truth = args.truth or str(settings.state_dir / f"truth-seed{args.seed}.json")
    write_ground_truth(sim, truth)
    if args.via == "hl7":
        from icuwatch.interfaces.hl7_encode import send_via_hl7

        result = send_via_hl7(sim, settings.hl7_host, settings.hl7_port, args.speed)
        print(json.dumps({"via": "hl7", **result, "ground_truth": truth}))
        return 0
    producer = make_producer(settings)
    if args.via == "dicom":
        from icuwatch.interfaces.dicom_encode import DicomRoutingProducer

        producer = DicomRoutingProducer(producer, settings.dicom_host, settings.dicom_port, settings.dicom_ae_title)
    counts = publish(sim, producer, speed=args.speed, progress=not args.quiet)
    producer.close()
    print(json.dumps({"via": args.via, "produced": counts, "ground_truth": truth}))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from icuwatch.demo import run_demo

    from icuwatch.demo import describe

    summary = run_demo(get_settings(), minutes=args.minutes, patients=args.patients, speed=args.speed,
                       seed=args.seed, keep_stack=not args.stop_stack)
    print(describe(summary), file=sys.stderr)
    print(json.dumps(summary) if args.json else json.dumps(summary, indent=2))
    return 0 if summary.get("alerts") else 1


def _psv_predict(args: argparse.Namespace) -> int:
    from icuwatch.fusion.psv_predict import predict_dir

    n = predict_dir(args.input_dir, args.output_dir, model=args.model, patients=args.patients,
                    progress=not args.quiet, split=args.split)
    print(json.dumps({"model": args.model, "stays": n, "output_dir": str(args.output_dir)}))
    return 0


def _shadow(args: argparse.Namespace) -> int:
    from icuwatch.fusion.shadow import compare, write_report

    summary = compare(args.source, args.a, args.b, patients=args.patients, progress=not args.quiet)
    report = write_report(summary, args.out or f"reports/shadow-{time.strftime('%Y%m%d-%H%M%S')}")
    brief = {k: v for k, v in summary.items() if k != "differences"}
    print(json.dumps({**brief, "report": str(report)}))
    return 0


def _tune(args: argparse.Namespace) -> int:
    from pathlib import Path

    from icuwatch.fusion.physionet import default_data_dir
    from icuwatch.fusion.thresholds import tune

    models_dir = get_settings().state_dir / "models"
    data = Path(args.data) if args.data else default_data_dir()
    cards = [tune(m, data, models_dir, max_stays=args.max_stays, progress=not args.quiet) for m in args.models]
    print(json.dumps(cards))
    return 0


def _db(args: argparse.Namespace) -> int:
    from icuwatch.storage import db

    settings = get_settings()
    db.upgrade(settings.database_url)
    print(json.dumps({"revision": db.current_revision(settings.database_url)}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="icuwatch", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("stack", help="start, stop or inspect the local broker, tritonserver and database")
    p.add_argument("action", choices=["up", "down", "status"])
    p.set_defaults(func=_stack)

    p = sub.add_parser("worker", help="run the Faust stream worker")
    p.add_argument("--loglevel", default="info")
    p.set_defaults(func=_worker)

    p = sub.add_parser("simulate", help="simulated bedside monitors, labs, X-rays and ADT into the topics")
    p.add_argument("--patients", type=int, default=8)
    p.add_argument("--speed", type=float, default=60.0, help="simulated seconds per wall second; 0 = max")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--hours", type=float, default=3.0, help="simulated hours per patient")
    p.add_argument("--start", type=float, default=None, help="simulated start, epoch seconds (default: now)")
    p.add_argument("--prefix", default="sim", help="patient id prefix")
    p.add_argument("--truth", default=None, help="where to write the ground truth JSON")
    p.add_argument("--no-waveforms", action="store_true")
    p.add_argument("--via", choices=["kafka", "hl7", "dicom"], default="kafka",
                   help="kafka: straight to the topics; hl7: vitals, labs and ADT as HL7 v2 over MLLP to "
                        "`icuwatch hl7-listen` (no waveforms or X-rays: HL7 has no form for them here); "
                        "dicom: X-rays by C-STORE to `icuwatch dicom-listen`, the rest to the topics")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_simulate)

    p = sub.add_parser("demo", help="stack up, worker, simulator: end to end, then a summary")
    p.add_argument("--minutes", type=float, default=3.0, help="wall-clock minutes of simulation")
    p.add_argument("--patients", type=int, default=8)
    p.add_argument("--speed", type=float, default=60.0)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--json", action="store_true", help="print the summary as one JSON line")
    p.add_argument("--stop-stack", action="store_true", help="stop broker and tritonserver at the end")
    p.set_defaults(func=_demo)

    from icuwatch.fusion.psv_predict import MODELS

    p = sub.add_parser("psv-predict", help="PhysioNet 2019 challenge predictions for a folder of .psv stays")
    p.add_argument("input_dir")
    p.add_argument("output_dir")
    p.add_argument("--model", default="rules", choices=MODELS)
    p.add_argument("--patients", type=int, default=None, help="only the first N stays")
    p.add_argument("--split", choices=["train", "val", "test"], default=None,
                   help="only the stays of this split of the fixed hash split")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_psv_predict)

    p = sub.add_parser("shadow", help="score one source with two models and report where alerts differ")
    p.add_argument("--a", required=True, choices=MODELS, help="the live model")
    p.add_argument("--b", required=True, choices=MODELS, help="the shadow model")
    p.add_argument("source", help="folder of PhysioNet-format .psv stays")
    p.add_argument("--patients", type=int, default=None)
    p.add_argument("--out", default=None)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_shadow)

    p = sub.add_parser("tune-thresholds", help="tune rule models' alert thresholds for utility on the val split")
    p.add_argument("--models", nargs="+", default=["rules", "news2", "qsofa"], choices=["rules", "news2", "qsofa"])
    p.add_argument("--data", default=None, help="PhysioNet 2019 folder (default: ../shared/data/...)")
    p.add_argument("--max-stays", type=int, default=None)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_tune)

    p = sub.add_parser("db", help="database schema")
    p.add_argument("action", choices=["upgrade"])
    p.set_defaults(func=_db)

    for register in _plugins():
        register(sub)
    return parser


def _plugins():
    """Subcommands defined next to the code they run: each module has ``register(subparsers)``."""
    import importlib

    names = ("icuwatch.streams.replay.cli", "icuwatch.fusion.evaluation.cli", "icuwatch.fusion.baselines.cli",
             "icuwatch.api.cli", "icuwatch.interfaces.hl7_cli", "icuwatch.interfaces.dicom_cli",
             "icuwatch.fusion.train_cli", "icuwatch.fusion.cxr_cli", "icuwatch.fusion.distill_cli",
             "icuwatch.fusion.triton_export_cli", "icuwatch.deploy.bench_cli",
             "icuwatch.deploy.chaos_cli")
    return [importlib.import_module(name).register for name in names]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command != "worker":
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        logging.getLogger("kafka").setLevel(logging.ERROR)  # event-loop timing chatter from kafka-python
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
