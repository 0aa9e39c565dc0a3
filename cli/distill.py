"""``icuwatch distill [--cohort physionet|sim] [--teacher attention]``: distil a trained teacher into the
early-exit student and save it (weights + card) in ``var/models/student-<cohort>/``."""

from __future__ import annotations

import argparse
import json


def _distill(args: argparse.Namespace) -> int:
    from icuwatch.fusion import cohorts, model_store
    from icuwatch.fusion.distill import DistillConfig, distill

    teacher_dir = model_store.model_dir(f"{args.teacher}-{args.cohort}")
    if not (teacher_dir / model_store.CARD).exists():
        raise SystemExit(
            f"no trained teacher in {teacher_dir}; run `icuwatch train --strategy {args.teacher} "
            f"--cohort {args.cohort}` first"
        )
    cohort = cohorts.load(args.cohort, progress=not args.quiet)
    cfg = DistillConfig(epochs=args.epochs)
    student, card = distill(teacher_dir, cohort, cfg, progress=not args.quiet)
    directory = model_store.save(student, card, model_store.model_dir(card["model"]))
    summary = {
        k: card[k]
        for k in (
            "model",
            "parameters",
            "best_epoch",
            "temperature",
            "threshold",
            "exit_thresholds",
            "exit_shares",
            "val",
            "fit_s",
        )
    }
    print(json.dumps({**summary, "teacher": card["teacher"], "dir": str(directory)}), flush=True)
    return 0


def register(subparsers) -> None:
    from icuwatch.fusion.cohorts import COHORTS
    from icuwatch.fusion.strategies import STRATEGIES

    p = subparsers.add_parser(
        "distill",
        help="distil a trained fusion model (the teacher) into the small early-exit "
        "student; saves var/models/student-<cohort>/",
    )
    p.add_argument("--cohort", default="physionet", choices=COHORTS)
    p.add_argument(
        "--teacher",
        default="attention",
        choices=STRATEGIES,
        help="strategy of the trained teacher, read from var/models/<teacher>-<cohort>/",
    )
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_distill)
