"""``icuwatch simulate``: simulated bedside monitors, labs, X-rays and ADT into the topics."""

from __future__ import annotations

import argparse
import json
import time

from icuwatch.cli.options import add_waveform_payload
from icuwatch.core.settings import get_settings


def _default_start(args: argparse.Namespace) -> float:
    """Now; through the HL7 or DICOM listener, which refuse observation times ahead of their clock,
    the simulated hours end now instead, so a run faster than real time never gets ahead of the clock."""
    return time.time() - (args.hours * 3600.0 if args.via in ("hl7", "dicom") else 0.0)


def _realism(args: argparse.Namespace) -> int:
    from pathlib import Path

    from icuwatch.fusion.evaluation import realism
    from icuwatch.sources.physionet import default_data_dir

    data_dir = Path(args.data_dir) if args.data_dir else default_data_dir()
    if not data_dir.is_dir():
        raise SystemExit(f"--realism-report needs the PhysioNet stays: {data_dir} is not a folder (--data-dir)")
    out_dir = Path(args.out_dir) if args.out_dir else get_settings().state_dir / "realism"
    summary = realism.report(
        n_patients=args.patients,
        hours=max(1, round(args.hours)),
        real_stays=args.real_stays,
        seed=args.seed,
        data_dir=data_dir,
        plots_dir=out_dir,
        progress=not args.quiet,
        population=args.population,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "realism.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))
    return 0


def _fit_population(args: argparse.Namespace) -> int:
    from pathlib import Path

    from icuwatch.sources.physionet import default_data_dir
    from icuwatch.sources.simulator import population

    data_dir = Path(args.data_dir) if args.data_dir else default_data_dir()
    if not data_dir.is_dir():
        raise SystemExit(f"--fit-population needs the PhysioNet stays: {data_dir} is not a folder (--data-dir)")
    fitted = population.fit(data_dir, progress=not args.quiet)
    population.POPULATION_FILE.write_text(json.dumps(fitted, indent=1) + "\n")
    print(json.dumps({"written": str(population.POPULATION_FILE), "fitted_on": fitted["fitted_on"]}))
    return 0


REALISM_DEFAULTS = {"patients": 120, "hours": 24.0, "seed": 0, "population": "icu"}
STREAM_DEFAULTS = {"patients": 8, "hours": 3.0, "seed": 7, "population": "stylised"}


def _simulate(args: argparse.Namespace) -> int:
    defaults = REALISM_DEFAULTS if args.realism_report else STREAM_DEFAULTS
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.realism_report:
        return _realism(args)
    if args.fit_population:
        return _fit_population(args)
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
        population=args.population,
        waveform_payload=args.waveform_payload,
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
    p.add_argument("--patients", type=int, default=None, help="default 8 (--realism-report: 120)")
    p.add_argument("--speed", type=float, default=60.0, help="simulated seconds per wall second; 0 = max")
    p.add_argument("--seed", type=int, default=None, help="default 7 (--realism-report: 0)")
    p.add_argument(
        "--hours", type=float, default=None, help="simulated hours per patient, default 3 (--realism-report: 24)"
    )
    p.add_argument(
        "--start",
        type=float,
        default=None,
        help="simulated start, epoch seconds (default: now; with --via hl7 or dicom, now minus --hours)",
    )
    p.add_argument("--prefix", default="sim", help="patient id prefix")
    p.add_argument("--truth", default=None, help="where to write the ground truth JSON")
    p.add_argument("--no-waveforms", action="store_true")
    add_waveform_payload(p)
    p.add_argument(
        "--via",
        choices=["kafka", "hl7", "dicom"],
        default="kafka",
        help="kafka: straight to the topics; hl7: vitals, labs and ADT as HL7 v2 over MLLP to "
        "`icuwatch hl7-listen` (no waveforms or X-rays: HL7 has no form for them here); "
        "dicom: X-rays by C-STORE to `icuwatch dicom-listen`, the rest to the topics",
    )
    p.add_argument("--quiet", action="store_true")
    g = p.add_argument_group(
        "realism (no broker needed)",
        "--realism-report: a classifier told to separate simulated from real PhysioNet 2019 patient-hours "
        "(two-sample test, cross-validated by patient), per-column distances, plots; JSON on stdout and in "
        "--out-dir. Uses --patients (default there 120), --hours (24), --seed (0), --population (icu).",
    )
    mode = g.add_mutually_exclusive_group()
    mode.add_argument("--realism-report", action="store_true")
    mode.add_argument(
        "--fit-population",
        action="store_true",
        help="refit sources/simulator/population.json (a developer's step: writes into the source tree)",
    )
    g.add_argument(
        "--population",
        default=None,
        choices=["stylised", "icu"],
        help="who is simulated (also when streaming): stylised hand-set baselines, or icu: baselines and drift "
        "fitted to real stays (sources/simulator/population.py); default stylised when streaming, icu for "
        "--realism-report",
    )
    g.add_argument("--real-stays", type=int, default=1500)
    g.add_argument("--data-dir", default=None, help="PhysioNet stays (default ../shared/data/physionet2019/...)")
    g.add_argument("--out-dir", default=None, help="report and plots (default var/realism)")
    p.set_defaults(func=_simulate)
