"""``icuwatch serve`` and ``icuwatch token create``."""

from __future__ import annotations

import argparse
import sys

from icuwatch.core.settings import get_settings
from icuwatch.storage.tokens import issue_token


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from icuwatch.api.app import create_app
    from icuwatch.cli.errors import require_free_port
    from icuwatch.storage import db

    settings = get_settings()
    host = args.host or settings.api_host
    port = args.port or settings.api_port
    require_free_port(host, port)  # before migrating the database
    db.upgrade(settings.database_url)
    uvicorn.run(create_app(settings), host=host, port=port, log_level=args.log_level, timeout_graceful_shutdown=2)
    return 0


def _token(args: argparse.Namespace) -> int:
    token = issue_token(get_settings(), args.user, args.role)
    print(f"token for {args.user} ({args.role}); it is not shown again:", file=sys.stderr)
    print(token)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    from icuwatch.storage.models import TOKEN_ROLES as ROLES

    p = subparsers.add_parser("serve", help="the HTTP API, live alert board and /metrics (uvicorn)")
    p.add_argument("--host", default=None, help="default: ICUWATCH_API_HOST (127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="default: ICUWATCH_API_PORT (8080)")
    p.add_argument("--log-level", default="info")
    p.set_defaults(func=_serve)

    p = subparsers.add_parser("token", help="API tokens")
    tsub = p.add_subparsers(dest="token_action", required=True)
    c = tsub.add_parser("create", help="create a token and print it once")
    c.add_argument("--user", required=True)
    c.add_argument("--role", required=True, choices=ROLES)
    c.set_defaults(func=_token)
