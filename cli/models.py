"""``icuwatch models list|promote|rollback``: the model versions the running tritonserver serves,
switched without restarting workers (``deploy/triton_models.py``)."""

from __future__ import annotations

import argparse
import json

from icuwatch.core.settings import get_settings


def _list(args: argparse.Namespace) -> int:
    from icuwatch.deploy import triton_models

    listing = triton_models.list_models(get_settings())
    print(json.dumps(listing, indent=2) if args.json else triton_models.describe(listing))
    return 0


def _switched(result: dict, args: argparse.Namespace, verb: str) -> int:
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        previous = ", ".join(map(str, result["previous"])) or "none"
        print(
            f"{result['model']}: version {result['version']} {verb} (was {previous}); "
            f"check passed on {result['check']['rows']} rows; history {' > '.join(map(str, result['history']))}"
        )
    return 0


def _promote(args: argparse.Namespace) -> int:
    from icuwatch.deploy import triton_models

    return _switched(triton_models.promote(get_settings(), args.model, args.version), args, "serving")


def _rollback(args: argparse.Namespace) -> int:
    from icuwatch.deploy import triton_models

    return _switched(triton_models.rollback(get_settings(), args.model), args, "serving again")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "models",
        help="list, promote or roll back the model versions tritonserver serves (workers keep running)",
        description="Model versions on the tritonserver at ICUWATCH_TRITON_URL (explicit model control). "
        "A version that does not load or fails its check leaves the old one serving (exit 2, one line).",
    )
    sub = p.add_subparsers(dest="models_action", required=True)
    q = sub.add_parser("list", help="models, their versions and state, the version serving, policy and history")
    q.add_argument("--json", action="store_true", help="JSON instead of a table")
    q.set_defaults(func=_list)
    q = sub.add_parser("promote", help="serve VERSION of MODEL: load it beside the old one, check it, switch")
    q.add_argument("model")
    q.add_argument("version", help="a version directory of the model (a positive whole number)")
    q.add_argument("--json", action="store_true", help="the result as JSON")
    q.set_defaults(func=_promote)
    q = sub.add_parser("rollback", help="serve MODEL's previously promoted version again")
    q.add_argument("model")
    q.add_argument("--json", action="store_true", help="the result as JSON")
    q.set_defaults(func=_rollback)
