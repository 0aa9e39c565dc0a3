"""``icuwatch cxr-index`` and ``icuwatch cxr-search``: a chest X-ray archive searchable by text.

``cxr-index [--sim N] [--add FOLDER ...] [--record FILE ...]`` trains the joint X-ray/report embedding on simulated
studies when none is saved in ``var/models/joint_embedding`` (or with ``--retrain``), adds
simulated studies, real PNG/JPEG files and/or the X-rays of a recorded ``icu.cxr`` stream to the
archive (default ``var/cxr_archive``) and
refreshes its embedding cache. With neither ``--sim`` nor ``--add`` on an empty archive it adds
200 simulated studies.

``cxr-search "bilateral infiltrates" [--top K] [--archive DIR] [--json]`` ranks the archive's
images by cosine similarity to the text's embedding.
"""

from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "cxr-index",
        help="train the joint X-ray/report embedding if needed, build or extend the searchable X-ray archive",
    )
    p.add_argument("--sim", type=int, default=None, metavar="N", help="add N simulated studies")
    p.add_argument("--sim-seed", type=int, default=1, help="seed of the simulated studies (default 1)")
    p.add_argument(
        "--add",
        action="append",
        default=[],
        metavar="FOLDER",
        help="index the PNG/JPEG files under FOLDER (copied into the archive); repeatable",
    )
    p.add_argument(
        "--record",
        action="append",
        default=[],
        metavar="FILE",
        help="index the X-rays of an `icuwatch record icu.cxr --out FILE` stream capture; repeatable",
    )
    p.add_argument("--archive", default=None, help="archive folder (default var/cxr_archive)")
    p.add_argument("--model", default=None, help="model folder (default var/models/joint_embedding)")
    p.add_argument("--retrain", action="store_true", help="train a new model even if one is saved")
    p.add_argument("--train-pairs", type=int, default=None, help="simulated training pairs (default 3200)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default 20)")
    p.add_argument("--seed", type=int, default=0, help="training seed")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_index)

    p = subparsers.add_parser("cxr-search", help="rank archived chest X-rays by similarity to a text")
    p.add_argument("text", help='report-like text, e.g. "bilateral infiltrates"')
    p.add_argument("--top", type=int, default=5, metavar="K")
    p.add_argument("--archive", default=None, help="archive folder (default var/cxr_archive)")
    p.add_argument("--model", default=None, help="model folder (default var/models/joint_embedding)")
    p.add_argument("--json", action="store_true", help="one JSON list of results")
    p.set_defaults(func=_search)


def _index(args: argparse.Namespace) -> int:
    from icuwatch.fusion import cxr_archive

    summary = cxr_archive.build_index(
        args.archive,
        model_dir=args.model,
        retrain=args.retrain,
        train_pairs=args.train_pairs,
        train_seed=args.seed,
        epochs=args.epochs,
        n_sim=args.sim,
        sim_seed=args.sim_seed,
        image_folders=args.add,
        record_files=args.record,
        progress=not args.quiet,
    )
    print(json.dumps(summary))
    return 0


def _search(args: argparse.Namespace) -> int:
    from icuwatch.fusion import cxr_archive

    try:
        model = cxr_archive.load_model(args.model)
    except FileNotFoundError as exc:
        print(f"error: {exc}")
        return 2
    archive = cxr_archive.CxrArchive(args.archive)
    if len(archive) == 0:
        print(f"error: the archive {archive.root} is empty: run `icuwatch cxr-index`")
        return 2
    hits = archive.search(args.text, args.top, model=model)
    if args.json:
        print(json.dumps(hits))
        return 0
    for h in hits:
        report = (h.get("report") or "").replace("Portable AP chest radiograph. Heart size is normal. ", "")
        label = h.get("finding") or ""
        print(f"{h['rank']:>3}  {h['score']:+.3f}  {h['study_id']:<24} {label:<20} {h['path']}")
        if report:
            print(f"     {report[:110]}")
    return 0
