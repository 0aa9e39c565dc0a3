"""``icuwatch units list|silence|live|history``: silent mode per unit (``storage/units.py``). A
silent unit's model alerts are recorded but not shown to its nurses; going live shows the open ones."""

from __future__ import annotations

import argparse
import json

from icuwatch.cli.shadow import require_current_schema
from icuwatch.core.settings import get_settings


def _sessions():
    from icuwatch.storage import db

    settings = get_settings()
    require_current_schema(settings.database_url)
    return db.session_factory(db.make_engine(settings.database_url))


def _list(args: argparse.Namespace) -> int:
    from icuwatch.storage import units

    with _sessions()() as s:
        rows = units.list_modes(s)
    if args.json:
        print(json.dumps(rows))
    else:
        for r in rows:
            since = f" since {r['changed_at']} by {r['changed_by']}" if r["changed_by"] else ""
            print(f"{r['unit']:<16} {r['mode']}{since}")
    return 0


def _set(mode: str):
    def run(args: argparse.Namespace) -> int:
        from icuwatch.storage import units

        with _sessions().begin() as s:
            result = units.set_mode(s, args.unit, mode, args.by, args.reason)
        if args.json:
            print(json.dumps(result))
        else:
            shown = f"; {len(result['shown'])} open alert(s) shown to the nurses" if mode == "live" else ""
            print(f"{args.unit}: {result['was']} -> {mode} by {args.by}{shown}")
        return 0

    return run


def _history(args: argparse.Namespace) -> int:
    from icuwatch.storage import units

    with _sessions()() as s:
        print(json.dumps(units.history(s, args.unit), indent=None if args.json else 2))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("units", help="silent mode per unit: list, silence, live, history (audited)")
    sub = p.add_subparsers(dest="units_action", required=True)
    q = sub.add_parser("list", help="each unit and its mode")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=_list)
    for mode, verb, text in (
        ("silent", "silence", "record the unit's model scores and alerts without showing them to its nurses"),
        ("live", "live", "show the unit's model alerts again (its open silent alerts at once)"),
    ):
        q = sub.add_parser(verb, help=text)
        q.add_argument("unit")
        q.add_argument("--by", required=True, help="who (kept in the audit log)")
        q.add_argument("--reason", default=None)
        q.add_argument("--json", action="store_true")
        q.set_defaults(func=_set(mode))
    q = sub.add_parser("history", help="the audit log of mode changes")
    q.add_argument("unit", nargs="?", default=None)
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=_history)
