"""``icuwatch distill-live``: the live student (sepsis and deterioration from all five modalities)
distilled from a teacher on the live cohort (PhysioNet stays + simulated patients), saved in
``var/models/student-live/``, with TEST figures; ``--export-to DIR`` writes it as a Triton model
(``DIR/student_live``). How the committed ``serving/models/student_live`` was made: README."""

from __future__ import annotations

import argparse
import json


def _distill_live(args: argparse.Namespace) -> int:
    from icuwatch.fusion import model_store, teachers
    from icuwatch.fusion.cohorts import live
    from icuwatch.fusion.live_student import LiveDistillConfig, distill_live, held_out_report, labels_of

    if args.sim_repeat < 1:
        from icuwatch.core.errors import OperatorError

        raise OperatorError(f"distill-live: --sim-repeat must be at least 1, not {args.sim_repeat}")
    progress = not args.quiet
    cohort = live.load_or_build(sim_patients=args.sim_patients, pn_limit=args.pn_limit, progress=progress)
    members, infos = [], []
    for name in args.teacher:
        if name in ("lightgbm", "leaders"):
            crossfit = teachers.crossfit_lightgbm if name == "lightgbm" else teachers.crossfit_leaders
            logits, info = crossfit(
                cohort,
                labels_of(cohort),
                folds=args.teacher_folds,
                seed=args.seed,
                progress=progress,
                fit_rows=cohort.rows("train"),
            )
        else:
            directory = model_store.model_dir(name)
            if not (directory / model_store.CARD).exists():
                raise SystemExit(f"no trained model {name!r} in {directory}; train it on the live cohort first")
            logits, info = teachers.model_logits(directory, cohort, 2), {"kind": "fusion model", "model": name}
        members.append(logits)
        infos.append(info)
    if len(members) == 1:
        teacher, teacher_info = members[0], infos[0]
    elif args.combine == "first":
        teacher = teachers.first_answer(members)
        teacher_info = {"kind": "first teacher that answers, per row and risk", "members": infos}
    else:
        teacher, teacher_info = teachers.ensemble(members), {"kind": "ensemble (mean logit)", "members": infos}
    cfg = LiveDistillConfig(
        epochs=args.epochs,
        rows_per_epoch=args.rows_per_epoch,
        seed=args.seed,
        teacher_folds=args.teacher_folds,
        sim_repeat=args.sim_repeat,
        **({} if args.modality_dropout is None else {"modality_dropout": args.modality_dropout}),
    )
    student, card = distill_live(cohort, teacher, teacher_info, cfg, progress=progress)
    card["test"] = held_out_report(student, cohort, teacher, card)
    card["data"]["sources"] = cohort.meta["sources"]
    card["reproduce"] = " ".join(["icuwatch distill-live", *args.argv])
    directory = model_store.save(student, card, model_store.model_dir(card["model"]))
    summary = {k: card[k] for k in ("model", "parameters", "best_epoch", "thresholds", "exit_shares_val", "test")}
    summary |= {"val": {r: {k: v for k, v in f.items() if k != "early_exit_val"} for r, f in card["per_risk"].items()}}
    summary |= {"teacher_s": teacher_info.get("fit_s"), "fit_s": card["fit_s"], "dir": str(directory)}
    if args.export_to:
        import shutil
        from pathlib import Path

        from icuwatch.serving.export import export_model

        info = export_model(model_store.load(directory), args.export_to, directory)
        version_dir = Path(info["dir"]) / str(info["version"])
        shutil.copy2(directory / model_store.CARD, version_dir / model_store.CARD)  # ships beside it
        summary["exported"] = str(version_dir)
    print(json.dumps(summary, default=float), flush=True)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "distill-live",
        help="the live student: sepsis + deterioration from all five modalities, distilled from a teacher on "
        "PhysioNet stays + simulated patients; saves var/models/student-live/",
    )
    p.add_argument("--sim-patients", type=int, default=1000)
    p.add_argument("--pn-limit", type=int, default=None, help="PhysioNet stays (default: all shared stays)")
    p.add_argument(
        "--teacher",
        action="append",
        default=None,
        help="lightgbm (cross-fitted on the live row, default), leaders (cross-fitted on the 2019 leaders' "
        "features of PhysioNet rows: sepsis on real stays only) or a trained model name under var/models; repeat "
        "for several, combined by --combine",
    )
    p.add_argument(
        "--combine",
        choices=("mean", "first"),
        default="mean",
        help="several teachers: their mean logit (an ensemble), or per row and risk the first that answers",
    )
    p.add_argument("--teacher-folds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--rows-per-epoch", type=int, default=150_000)
    p.add_argument(
        "--sim-repeat", type=int, default=1, help="simulated TRAIN rows drawn this many times as often (default 1)"
    )
    p.add_argument(
        "--modality-dropout",
        type=float,
        default=None,
        help="probability that each present modality of a training row is dropped (default: the training default)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--export-to", default=None, help="also export as a Triton model into this repository")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import sys

    args.teacher = args.teacher or ["lightgbm"]
    args.argv = [a for a in sys.argv[2:] if a != "--quiet"]
    return _distill_live(args)
