"""``icuwatch shadow report|offline``: a new model beside the live one. ``report``: the live shadow
the workers run (``ICUWATCH_SHADOW_MODEL``), from the database; ``offline``: two models over recorded
PhysioNet stays (``fusion/shadow.py``)."""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime

from icuwatch.cli.options import parse_time
from icuwatch.core.errors import OperatorError
from icuwatch.core.settings import get_settings


def parse_since(text: str | None, now: datetime | None = None) -> datetime | None:
    """``--since``: an ISO 8601 time (UTC when it names no zone) or a span back from now (``90m``,
    ``12h``, ``7d``)."""
    return parse_time(text, "--since", now)


def describe(report: dict) -> str:
    lines = [f"since {report['since'] or 'the start'}; {report['paired_scores']} paired scores"]
    for role in ("live", "shadow"):
        side = report[role]
        lines.append(
            f"{role:>6}: {side['model'] or '-'}  scores {side['scores']}  patients {side['patients']}  "
            f"alert episodes {side['alert_episodes']} ({side['episodes_per_patient_day']} per patient-day)"
        )
    lead = report["lead_time_difference"]
    lines.append(
        f"agreement {report['agreement']} (by kind {report['agreement_by_kind']}); shadow minus live lead "
        f"time, median {report['lead_time_difference_min']} min over {lead['n']} patient-kinds "
        f"(live only {lead['alerted_by_live_only']}, shadow only {lead['alerted_by_shadow_only']})"
    )
    for unit, entry in report["per_unit"].items():
        lines.append(
            f"  unit {unit}: live {entry['live']['alert_episodes']} / shadow {entry['shadow']['alert_episodes']}"
            f" episodes, agreement {entry['agreement']}"
        )
    return "\n".join(lines)


def _report(args: argparse.Namespace) -> int:
    from icuwatch.storage import db
    from icuwatch.storage.shadow_report import report

    settings = get_settings()
    since = parse_since(args.since)
    require_current_schema(settings.database_url)
    sessions = db.session_factory(db.make_engine(settings.database_url))
    with sessions() as session:
        result = report(session, since)
    print(json.dumps(result) if args.json else describe(result))
    return 0


def require_current_schema(url: str) -> None:
    """A report reads tables a migration adds: one line, not a traceback, when they are not there."""
    from icuwatch.storage import db

    if db.current_revision(url) != db.head_revision():
        raise OperatorError(
            f"the database at {db.resolve_url(url).render_as_string()} is not at the current schema: "
            "run `icuwatch db upgrade` (or start the stack) first"
        )


def _offline(args: argparse.Namespace) -> int:
    from icuwatch.fusion.shadow import compare, write_report
    from icuwatch.sources.physionet import stay_folder

    stay_folder(args.source)
    summary = compare(args.source, args.a, args.b, patients=args.patients, progress=not args.quiet)
    report = write_report(summary, args.out or f"reports/shadow-{time.strftime('%Y%m%d-%H%M%S')}")
    brief = {k: v for k, v in summary.items() if k != "differences"}
    print(json.dumps({**brief, "report": str(report)}))
    return 0


def register(subparsers) -> None:
    from icuwatch.fusion.psv_predict import MODELS

    p = subparsers.add_parser("shadow", help="compare a shadow model with the live one (live report, or offline)")
    sub = p.add_subparsers(dest="shadow_action", required=True)
    q = sub.add_parser(
        "report",
        help="the live shadow (ICUWATCH_SHADOW_MODEL) against the live model, from the database",
        description="Scores, alert episodes per patient-day, paging agreement, lead-time difference and "
        "per-unit figures of the live model and the shadow the workers score beside it.",
    )
    q.add_argument("--since", default=None, help="ISO 8601 time, or a span back from now (90m, 12h, 7d)")
    q.add_argument("--json", action="store_true", help="one JSON object")
    q.set_defaults(func=_report)
    q = sub.add_parser("offline", help="score recorded PhysioNet stays with two models; where their alerts differ")
    q.add_argument("--a", required=True, choices=MODELS, help="the live model")
    q.add_argument("--b", required=True, choices=MODELS, help="the shadow model")
    q.add_argument("source", help="folder of PhysioNet-format .psv stays")
    q.add_argument("--patients", type=int, default=None)
    q.add_argument("--out", default=None)
    q.add_argument("--quiet", action="store_true")
    q.set_defaults(func=_offline)
