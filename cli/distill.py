"""``icuwatch distill [--cohort physionet|sim] [--teacher attention]``: distil a trained teacher into the
early-exit student and save it (weights + card) in ``var/models/student-<cohort>/``. ``--exits-only``
keeps a saved student's weights and chooses its exit rule again on VAL (``fusion.distill.recalibrate_exits``)."""

from __future__ import annotations

import argparse
import json


def _distill(args: argparse.Namespace) -> int:
    from icuwatch.fusion import cohorts, model_store
    from icuwatch.fusion.distill import DistillConfig, distill, recalibrate_exits

    if args.exits_only:
        student_dir = model_store.model_dir(f"student-{args.cohort}")
        if not (student_dir / model_store.CARD).exists():
            raise SystemExit(
                f"no distilled student in {student_dir}; run `icuwatch distill --cohort {args.cohort}` first"
            )
        trained = model_store.load(student_dir)
        saved = trained.card.get("train_config", {})
        cfg = DistillConfig(**{k: v for k, v in saved.items() if k in DistillConfig.__dataclass_fields__})
        cfg.exit_agreement, cfg.exit_tolerance = args.exit_agreement, args.exit_tolerance
        cohort = cohorts.load(args.cohort, progress=not args.quiet)
        student, card = recalibrate_exits(trained, cohort, cfg)
        directory = model_store.save(student, card, student_dir)
        keys = ("model", "threshold", "exit_center", "exit_margins", "exit_shares", "val")
        print(json.dumps({**{k: card[k] for k in keys}, "dir": str(directory)}), flush=True)
        return 0
    teacher_dir = model_store.model_dir(f"{args.teacher}-{args.cohort}")
    if not (teacher_dir / model_store.CARD).exists():
        raise SystemExit(
            f"no trained teacher in {teacher_dir}; run `icuwatch train --strategy {args.teacher} "
            f"--cohort {args.cohort}` first"
        )
    cohort = cohorts.load(args.cohort, progress=not args.quiet)
    cfg = DistillConfig(epochs=args.epochs, exit_agreement=args.exit_agreement, exit_tolerance=args.exit_tolerance)
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
            "exit_center",
            "exit_margins",
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
    p.add_argument(
        "--exit-agreement",
        type=float,
        default=0.998,
        help="share of VAL rows whose early-exit alert decision must equal the full student's "
        "(default 0.998: headroom above the 0.995 goal, see fusion/distill.py)",
    )
    p.add_argument("--exit-tolerance", type=float, default=0.002, help="relative VAL AUROC early exit may lose at most")
    p.add_argument(
        "--exits-only",
        action="store_true",
        help="keep the saved student's weights; choose its exit rule again on VAL (and save)",
    )
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_distill)
