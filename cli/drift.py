"""``icuwatch drift report``: input, feed, score and alert-volume drift per unit, a current window
of event time against the reference window before it (``storage/drift_report.py``)."""

from __future__ import annotations

import argparse
import json

from icuwatch.cli.options import parse_span, parse_time
from icuwatch.cli.shadow import require_current_schema
from icuwatch.core.settings import get_settings


def describe(report: dict) -> str:
    if report["windows"] is None:
        return "no drift counts yet (the workers write them every ICUWATCH_DRIFT_FLUSH_S while they score)"
    ref, cur = report["windows"]["reference"], report["windows"]["current"]
    lines = [f"reference {ref[0]} .. {ref[1]}; current {cur[0]} .. {cur[1]} (event time)"]
    for unit, entry in report["units"].items():
        alerts = entry["alerts_per_patient_day"]
        lines.append(
            f"unit {unit}: patient-hours {entry['patient_hours'][0]:g} / {entry['patient_hours'][1]:g}; alert episodes"
            f" per patient-day {alerts['reference_rate']} -> {alerts['current_rate']}"
            + (" OUT OF BAND" if alerts["out_of_band"] else "")
        )
    if not report["flags"]:
        lines.append("no drift flagged")
    for flag in report["flags"]:
        detail = report["units"][flag["unit"]]
        if flag["signal"] == "alert_volume":
            lines.append(
                f"  FLAG {flag['unit']}: alert volume {flag['name']} (operations alarm; clinical alerts unchanged)"
            )
            continue
        figures = json.dumps(detail[flag["signal"]][flag["name"]])
        lines.append(f"  FLAG {flag['unit']}: {flag['signal']} {flag['name']}: {figures}")
    return "\n".join(lines)


def _report(args: argparse.Namespace) -> int:
    from icuwatch.storage import db
    from icuwatch.storage.drift_report import report

    settings = get_settings()
    require_current_schema(settings.database_url)
    sessions = db.session_factory(db.make_engine(settings.database_url))
    with sessions() as session:
        result = report(
            session, parse_span(args.current, "--current"), parse_span(args.reference, "--reference"),
            parse_time(args.until, "--until"),
        )  # fmt: skip
    print(json.dumps(result) if args.json else describe(result))
    return 1 if args.fail_on_flag and result["flags"] else 0


def register(subparsers) -> None:
    p = subparsers.add_parser("drift", help="input, feed, score and alert-volume drift per unit (engineers)")
    sub = p.add_subparsers(dest="drift_action", required=True)
    q = sub.add_parser(
        "report",
        help="a current window against the reference before it, per unit; flags what moved",
        description="Per unit: PSI of each feature-row column and of the live risks, missing and absent-modality "
        "shares, messages per patient-hour per feed and alert episodes per patient-day against the reference "
        "rate (Poisson). Windows are event time, ending at the newest hour the workers counted.",
    )
    q.add_argument("--current", default="6h", help="current window length (default 6h)")
    q.add_argument(
        "--reference", default="7d", help="reference window length, just before the current one (default 7d)"
    )
    q.add_argument("--until", default=None, help="end of the current window (ISO 8601; default: newest hour counted)")
    q.add_argument("--fail-on-flag", action="store_true", help="exit 1 when anything is flagged (for a cron alarm)")
    q.add_argument("--json", action="store_true", help="one JSON object")
    q.set_defaults(func=_report)
