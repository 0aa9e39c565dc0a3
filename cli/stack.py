"""``icuwatch stack``, ``icuwatch worker``, ``icuwatch db``: the local stack, the stream worker, the schema."""

from __future__ import annotations

import argparse
import json

from icuwatch.core.settings import get_settings


def _stack(args: argparse.Namespace) -> int:
    from icuwatch.deploy import stack

    action = {"up": stack.up, "down": stack.down, "status": stack.status}[args.action]
    print(json.dumps(action(get_settings()), indent=2))
    return 0


def _worker(args: argparse.Namespace) -> int:
    from icuwatch.streams.worker import run_worker

    run_worker(args.loglevel)
    return 0


def _db(args: argparse.Namespace) -> int:
    from icuwatch.storage import db

    settings = get_settings()
    db.upgrade(settings.database_url)
    print(json.dumps({"revision": db.current_revision(settings.database_url)}))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("stack", help="start, stop or inspect the local broker, tritonserver and database")
    p.add_argument("action", choices=["up", "down", "status"])
    p.set_defaults(func=_stack)

    p = subparsers.add_parser("worker", help="run the Faust stream worker")
    p.add_argument("--loglevel", default="info")
    p.set_defaults(func=_worker)
    p = subparsers.add_parser("db", help="database schema")
    p.add_argument("action", choices=["upgrade"])
    p.set_defaults(func=_db)
