"""``icuwatch simulate``: simulated bedside monitors, labs, X-rays and ADT into the topics."""

from __future__ import annotations

import argparse
import json
import time

from icuwatch.core.settings import get_settings


def _default_start(args: argparse.Namespace) -> float:
    """Now; through the HL7 or DICOM listener, which refuse observation times ahead of their clock,
    the simulated hours end now instead, so a run faster than real time never gets ahead of the clock."""
    return time.time() - (args.hours * 3600.0 if args.via in ("hl7", "dicom") else 0.0)


def _simulate(args: argparse.Namespace) -> int:
    from icuwatch.sources.simulator import Simulation
    from icuwatch.sources.simulator.producer import publish, write_ground_truth
    from icuwatch.streams.kafka.producer import make_producer

    settings = get_settings()
    sim = Simulation(
        n_patients=args.patients,
        seed=args.seed,
        start_time=args.start if args.start is not None else _default_start(args),
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


def register(subparsers) -> None:
    p = subparsers.add_parser("simulate", help="simulated bedside monitors, labs, X-rays and ADT into the topics")
    p.add_argument("--patients", type=int, default=8)
    p.add_argument("--speed", type=float, default=60.0, help="simulated seconds per wall second; 0 = max")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--hours", type=float, default=3.0, help="simulated hours per patient")
    p.add_argument(
        "--start",
        type=float,
        default=None,
        help="simulated start, epoch seconds (default: now; with --via hl7 or dicom, now minus --hours)",
    )
    p.add_argument("--prefix", default="sim", help="patient id prefix")
    p.add_argument("--truth", default=None, help="where to write the ground truth JSON")
    p.add_argument("--no-waveforms", action="store_true")
    p.add_argument(
        "--via",
        choices=["kafka", "hl7", "dicom"],
        default="kafka",
        help="kafka: straight to the topics; hl7: vitals, labs and ADT as HL7 v2 over MLLP to "
        "`icuwatch hl7-listen` (no waveforms or X-rays: HL7 has no form for them here); "
        "dicom: X-rays by C-STORE to `icuwatch dicom-listen`, the rest to the topics",
    )
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_simulate)
