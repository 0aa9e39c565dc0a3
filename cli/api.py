"""``icuwatch serve`` and ``icuwatch token create|list|revoke``."""

from __future__ import annotations

import argparse
import sys

from icuwatch.core.settings import get_settings
from icuwatch.storage.tokens import issue_token, list_issued, revoke_issued


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
    from icuwatch.core.errors import OperatorError

    if args.ttl_h is not None and args.ttl_h < 0:
        raise OperatorError("--ttl-h cannot be negative")
    ttl_s = None if args.ttl_h is None else args.ttl_h * 3600.0
    token = issue_token(get_settings(), args.user, args.role, ttl_s)
    print(f"token for {args.user} ({args.role}); it is not shown again:", file=sys.stderr)
    print(token)
    return 0


def _when(t) -> str:
    return t.strftime("%Y-%m-%d %H:%M UTC") if t is not None else "never"


def _token_list(args: argparse.Namespace) -> int:
    rows = [t for t in list_issued(get_settings()) if args.all or t.state == "active"]
    print(f"{'id':>5}  {'user':<20} {'role':<10} {'created':<20} {'expires':<20} state")
    for t in rows:
        print(f"{t.id:>5}  {t.user:<20} {t.role:<10} {_when(t.created_at):<20} {_when(t.expires_at):<20} {t.state}")
    return 0


def _token_revoke(args: argparse.Namespace) -> int:
    from icuwatch.core.errors import OperatorError

    if not args.ids and not args.user:
        raise OperatorError("name the tokens to revoke: their ids (icuwatch token list) or --user")
    revoked = revoke_issued(get_settings(), args.ids, args.user)
    if not revoked:
        print("icuwatch token revoke: no such token that was not already revoked", file=sys.stderr)
        return 1
    print(f"revoked {len(revoked)} token(s): {', '.join(map(str, revoked))}")
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
    c.add_argument(
        "--ttl-h",
        type=float,
        default=None,
        help="lifetime in hours, 0: until revoked (default: ICUWATCH_API_TOKEN_TTL_S, 12 h, for nurse and "
        "physician; ICUWATCH_API_OPERATOR_TOKEN_TTL_S, 30 days, for engineer and admin)",
    )
    c.set_defaults(func=_token)
    c = tsub.add_parser("list", help="the tokens: id, user, role, created, expires, state (never the token)")
    c.add_argument("--all", action="store_true", help="expired and revoked ones too")
    c.set_defaults(func=_token_list)
    c = tsub.add_parser("revoke", help="revoke tokens now (live alert streams using them close)")
    c.add_argument("ids", nargs="*", type=int, metavar="ID", help="token ids from `icuwatch token list`")
    c.add_argument("--user", default=None, help="revoke every token of this user")
    c.set_defaults(func=_token_revoke)
