"""``icuwatch psv-predict``, ``icuwatch tune-thresholds``: models over PhysioNet 2019 ``.psv`` stays
(the challenge interface, rule thresholds). Two models side by side: ``cli/shadow.py``."""

from __future__ import annotations

import argparse
import json

from icuwatch.cli.errors import report_failed
from icuwatch.core.settings import get_settings


def _psv_predict(args: argparse.Namespace) -> int:
    from icuwatch.fusion.psv_predict import SERVED, predict_dir, served_model

    model = served_model(get_settings()) if args.model == SERVED else args.model
    failed: dict[str, str] = {}
    n = predict_dir(
        args.input_dir,
        args.output_dir,
        model=model,
        patients=args.patients,
        progress=not args.quiet,
        split=args.split,
        failed=failed,
    )
    failed_files = list(failed.values())
    summary = {"model": model, "stays": n, "output_dir": str(args.output_dir), "failed": len(failed)}
    print(json.dumps({**summary, "failed_files": failed_files}))
    return report_failed("psv-predict", failed_files)


def _tune(args: argparse.Namespace) -> int:
    if args.unit is not None:
        return _tune_unit(args)
    from pathlib import Path

    from icuwatch.fusion.thresholds import tune
    from icuwatch.sources.physionet import default_data_dir, stay_folder

    models_dir = get_settings().state_dir / "models"
    data = stay_folder(Path(args.data) if args.data else default_data_dir())
    cards = [tune(m, data, models_dir, max_stays=args.max_stays, progress=not args.quiet) for m in args.models]
    print(json.dumps(cards))
    return 0


def _tune_unit(args: argparse.Namespace) -> int:
    """``tune-thresholds --unit U``: tune (or ``--rollback``, ``--history``) a unit's own thresholds."""
    from collections import Counter

    from icuwatch.cli.options import parse_time
    from icuwatch.cli.shadow import require_current_schema
    from icuwatch.core.errors import OperatorError
    from icuwatch.storage import db, unit_thresholds

    settings = get_settings()
    require_current_schema(settings.database_url)
    sessions = db.session_factory(db.make_engine(settings.database_url))
    kinds = args.kind or ["deterioration", "sepsis"]
    if args.history:
        with sessions() as s:
            print(json.dumps(unit_thresholds.history(s, args.unit)))
        return 0
    if args.by is None:
        raise OperatorError("--by WHO is required: every unit threshold change is audited")
    if args.rollback:
        with sessions.begin() as s:
            models = {args.model} if args.model else unit_thresholds.models_in_force(s, args.unit)
            if not models:
                raise OperatorError(f"{args.unit}: no unit threshold is in force; nothing to roll back")
            if len(models) > 1:
                found = ", ".join(sorted(models))
                raise OperatorError(f"{args.unit}: unit thresholds in force for models {found}; name one with --model")
            (model,) = models
            rolled = []
            for kind in kinds:  # a kind with nothing in force is left as it is
                try:
                    rolled.append(unit_thresholds.rollback(s, args.unit, kind, model, args.by))
                except OperatorError:
                    continue
            if not rolled:
                raise OperatorError(f"{args.unit} ({model}): no unit threshold is in force; nothing to roll back")
        print(json.dumps(rolled))
        return 0
    if args.outcomes is None:
        raise OperatorError("--outcomes FILE is required to tune (which patients deteriorated, and when)")
    from icuwatch.fusion import unit_thresholds as tuning
    from icuwatch.streams import alerting
    from icuwatch.streams.scoring import served_model_info

    outcomes = tuning.read_outcomes(args.outcomes)
    since = parse_time(args.since, "--since")
    with sessions() as s:
        scores = tuning.unit_scores(s, args.unit, since, args.source)
    if not scores:
        raise OperatorError(f"no {args.source} scores of unit {args.unit} since {args.since or 'the start'}")
    model = args.model or Counter(r[3] for rows in scores.values() for r in rows).most_common(1)[0][0]
    scores = {pid: [r for r in rows if r[3] == model] for pid, rows in scores.items()}  # one model's scores
    scores = {pid: rows for pid, rows in scores.items() if rows}
    if not scores:
        raise OperatorError(f"no {args.source} scores of {model} in unit {args.unit}")
    try:
        card = served_model_info(settings.model_copy(update={"scoring_model": model, "scoring_model_dir": None}))
        base = alerting.thresholds_from(settings, card["thresholds"])
    except FileNotFoundError:  # a rule model: the settings' thresholds
        base = alerting.thresholds_from(settings)
    results = []
    for kind in kinds:
        result = tuning.tune(scores, outcomes, kind, base[kind], args.max_episodes_per_day, args.late_h)
        detail = {**result, "source": args.source, "since": since.isoformat() if since else None}
        detail["outcomes"] = str(args.outcomes)
        with sessions.begin() as s:
            version = unit_thresholds.record(s, args.unit, kind, model, result["chosen"]["threshold"], args.by, detail)
        results.append({"unit": args.unit, "model": model, "version": version, **result})
    print(json.dumps(results))
    return 0


def register(subparsers) -> None:
    from icuwatch.fusion.psv_predict import MODELS

    p = subparsers.add_parser("psv-predict", help="PhysioNet 2019 challenge predictions for a folder of .psv stays")
    p.add_argument("input_dir")
    p.add_argument("output_dir")
    p.add_argument(
        "--model",
        default="served",
        choices=MODELS,
        help="served (default): the model the worker scores sepsis with (the student when "
        "ICUWATCH_SCORING_MODEL names one, else rules); student: the distilled student in var/models",
    )
    p.add_argument("--patients", type=int, default=None, help="only the first N stays")
    p.add_argument(
        "--split",
        choices=["train", "val", "test"],
        default=None,
        help="only the stays of this split of the fixed hash split",
    )
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_psv_predict)

    p = subparsers.add_parser(
        "tune-thresholds",
        help="tune rule models' alert thresholds for utility on the val split; with --unit, a unit's own threshold",
        description="Without --unit: the rule models' thresholds for utility on the PhysioNet val split. "
        "With --unit U: the unit's own threshold per alert kind from its recorded live (silent included) "
        "or shadow scores and the outcomes, the one catching the most deteriorations within an alert budget; "
        "written as a new active version (the worker uses it within a minute); --rollback goes back one "
        "version; --history lists them.",
    )
    p.add_argument("--models", nargs="+", default=["rules", "news2", "qsofa"], choices=["rules", "news2", "qsofa"])
    p.add_argument("--data", default=None, help="PhysioNet 2019 folder (default: ../shared/data/...)")
    p.add_argument("--max-stays", type=int, default=None)
    p.add_argument("--quiet", action="store_true")
    g = p.add_argument_group("a unit's own threshold (from the database)")
    g.add_argument("--unit", default=None, help="tune this unit's thresholds (patients by their current unit)")
    g.add_argument("--since", default=None, help="scores from this time (ISO 8601, or 7d / 12h back from now)")
    g.add_argument("--outcomes", default=None, help="JSON list of {patient_id, onset_time, condition} (ground truth)")
    g.add_argument(
        "--source", choices=["live", "shadow"], default="live", help="the live model's scores or the shadow's"
    )
    g.add_argument("--kind", action="append", choices=["deterioration", "sepsis"], help="default: both")
    g.add_argument("--max-episodes-per-day", type=float, default=0.5, help="alert budget (default 0.5)")
    g.add_argument("--late-h", type=float, default=2.0, help="an alert up to this long after onset catches it")
    g.add_argument("--model", default=None, help="the model the threshold is for (default: the scores' model)")
    g.add_argument("--by", default=None, help="who (kept with the version)")
    g.add_argument("--rollback", action="store_true", help="go back to the unit's previous threshold")
    g.add_argument("--history", action="store_true", help="every version of the unit's thresholds")
    p.set_defaults(func=_tune)
