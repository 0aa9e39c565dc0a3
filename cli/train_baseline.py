"""``icuwatch train-baseline gbt``: train the gradient-boosted trees baseline on the PhysioNet stays."""

from __future__ import annotations

import argparse
import json


def _train_baseline(args: argparse.Namespace) -> int:
    from icuwatch.fusion.baselines import gbt

    if args.negative_fraction is None:
        args.negative_fraction = gbt.NEGATIVE_STAY_FRACTION

    card = gbt.train(
        data_dir=args.data,
        out_dir=args.out,
        max_train_stays=args.max_train_stays,
        seed=args.seed,
        progress=not args.quiet,
        max_eval_stays=args.max_eval_stays,
        negative_stay_fraction=args.negative_fraction,
    )
    print(json.dumps(card, indent=2))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train-baseline",
        help="train a baseline on the PhysioNet 2019 stays (train split), tune on val, measure on test",
    )
    p.add_argument("model", choices=["gbt"], help="gbt: gradient-boosted trees on causal hand-made features")
    p.add_argument(
        "--data",
        default=None,
        help="folder of pNNNNNN.psv stays (default: ../shared/data/physionet2019/training_setB_dev)",
    )
    p.add_argument("--out", default=None, help="model folder (default: var/models/gbt)")
    p.add_argument("--max-train-stays", type=int, default=None, help="seeded random subset of the train split")
    p.add_argument(
        "--max-eval-stays",
        type=int,
        default=None,
        help="seeded random subset of the val and test splits each (quick runs)",
    )
    p.add_argument(
        "--negative-fraction",
        type=float,
        default=None,
        help="share of non-septic train stays fitted on (all septic ones are); default 0.4",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_train_baseline)
