"""``icuwatch train --strategy S --cohort physionet|sim``: fit a fusion model and save it with its card."""

from __future__ import annotations

import argparse
import json


def _train(args: argparse.Namespace) -> int:
    from icuwatch.fusion import cohorts, model_store
    from icuwatch.fusion.strategies import STRATEGIES
    from icuwatch.fusion.training import TrainConfig, train

    cohort = cohorts.load(args.cohort, limit=args.limit)
    strategies = list(STRATEGIES) if args.strategy == "all" else [args.strategy]
    if "joint_embedding" in strategies and "cxr" not in cohort.modalities:
        if args.strategy != "all":
            raise SystemExit(f"joint_embedding needs X-rays and reports; the {args.cohort} cohort has none")
        strategies.remove("joint_embedding")
    cfg = TrainConfig(
        epochs=args.epochs,
        rows_per_epoch=args.rows_per_epoch,
        batch_size=args.batch_size,
        modality_dropout=args.modality_dropout,
        seed=args.seed,
        series_kind=args.series_encoder,
    )
    out = []
    for strategy in strategies:
        model, card = train(strategy, cohort, cfg, progress=not args.quiet)
        directory = model_store.save(model, card, model_store.model_dir(card["model"]))
        summary = {
            k: card[k] for k in ("model", "parameters", "best_epoch", "temperature", "threshold", "val", "fit_s")
        }
        out.append({**summary, "dir": str(directory)})
        print(json.dumps(out[-1]), flush=True)
    return 0


def register(subparsers) -> None:
    from icuwatch.encoders.timeseries import DEFAULT_KIND, KINDS
    from icuwatch.fusion.cohorts import COHORTS
    from icuwatch.fusion.strategies import STRATEGIES

    p = subparsers.add_parser(
        "train",
        help="train a fusion model (or all) on a cohort; saves weights + model card in var/models/<strategy>-<cohort>/",
    )
    p.add_argument("--strategy", required=True, choices=[*STRATEGIES, "all"])
    p.add_argument(
        "--cohort",
        default="physionet",
        choices=COHORTS,
        help="physionet: real PhysioNet 2019 stays (vitals, labs); sim: simulated multimodal patients",
    )
    p.add_argument("--limit", type=int, default=None, help="PhysioNet stays / simulated patients (quick runs)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument(
        "--rows-per-epoch",
        type=int,
        default=200_000,
        help="training rows drawn per epoch (capped at the TRAIN split size)",
    )
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--modality-dropout", type=float, default=0.4, help="per-modality drop probability (0.3-0.5)")
    p.add_argument("--series-encoder", default=DEFAULT_KIND, choices=KINDS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_train)
