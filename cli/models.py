"""``icuwatch models list|promote|rollback``: the model versions the running tritonserver serves,
switched without restarting workers (``deploy/triton_models.py``). ``models shadow NAME``, ``models
promote --shadow`` and ``models roles``: which served model is live and which is the shadow, set in
the database and followed by every worker within ten seconds (``storage/model_roles.py``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from icuwatch.core.errors import OperatorError
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
    if args.shadow:
        return _promote_shadow(args)
    if args.model is None or args.version is None:
        raise OperatorError("give MODEL VERSION (a version of a served model), or --shadow --by WHO")
    from icuwatch.deploy import triton_models

    return _switched(triton_models.promote(get_settings(), args.model, args.version), args, "serving")


def _roles_sessions():
    from icuwatch.cli.shadow import require_current_schema
    from icuwatch.storage import db

    settings = get_settings()
    require_current_schema(settings.database_url)
    return db.session_factory(db.make_engine(settings.database_url))


def _promote_shadow(args: argparse.Namespace) -> int:
    """The shadow becomes the live model on every worker within ``MODEL_ROLES_REFRESH_S``."""
    from icuwatch.storage import model_roles

    if args.by is None:
        raise OperatorError("--by WHO is required: a change of the live model is audited")
    with _roles_sessions().begin() as s:
        result = model_roles.promote_shadow(s, args.by, get_settings().shadow_model, args.reason)
    print(
        json.dumps(result)
        if args.json
        else f"{result['live']} is now the live model (was {result['was_live'] or 'the settings'}); no shadow"
    )
    return 0


def _shadow(args: argparse.Namespace) -> int:
    """Set (or with --off, end) the shadow every worker scores beside the live model."""
    from icuwatch.storage import model_roles
    from icuwatch.streams.shadow import shadow_info

    if args.by is None:
        raise OperatorError("--by WHO is required: a change of the shadow is audited")
    if (args.model is None) == (not args.off):
        raise OperatorError("give a served MODEL, or --off")
    settings = get_settings()
    name = "" if args.off else args.model
    if name:
        shadow_info(settings.model_copy(update={"shadow_model": name}))  # one line if no repository has it
    with _roles_sessions().begin() as s:
        result = model_roles.set_role(s, "shadow", name, args.by, args.reason)
    print(
        json.dumps(result)
        if args.json
        else f"shadow: {name or 'none'} (was {result['was'] if result['was'] is not None else 'the settings'})"
    )
    return 0


def _roles(args: argparse.Namespace) -> int:
    from icuwatch.storage import model_roles

    with _roles_sessions()() as s:
        current, history = model_roles.current(s), model_roles.history(s)
    settings = get_settings()
    result = {
        "live": current.get("live", settings.scoring_model or settings.triton_model),
        "shadow": current.get("shadow", settings.shadow_model),
        "from": {r: ("roles table" if r in current else "settings") for r in ("live", "shadow")},
        "history": history,
    }
    print(json.dumps(result, indent=None if args.json else 2))
    return 0


def _rollback(args: argparse.Namespace) -> int:
    from icuwatch.deploy import triton_models

    return _switched(triton_models.rollback(get_settings(), args.model), args, "serving again")


def _test_figures(args: argparse.Namespace) -> int:
    from icuwatch.fusion.cohorts import live
    from icuwatch.serving import MODEL_REPOSITORY
    from icuwatch.serving.version_figures import check_versions, version_figures

    model_dir = (args.repository or MODEL_REPOSITORY) / args.model
    if not model_dir.is_dir():
        raise OperatorError(f"no model {args.model!r} in {model_dir.parent}")
    if args.versions:
        check_versions(model_dir, args.versions)
    cohort = live.load_or_build(sim_patients=args.sim_patients, pn_limit=args.pn_limit, progress=not args.json)
    figures = version_figures(model_dir, cohort, args.versions)
    if args.json:
        print(json.dumps(figures))
        return 0
    print(f"{args.model}: live cohort TEST rows ({figures['rows']:,}); AUROC / utility, full and early exit")
    for version, f in figures["versions"].items():
        for source in ("physionet", "sim"):
            for risk, e in f[source].items():
                full, early = e["student_full"], e["student_early_exit"]
                print(
                    f"  v{version} {source:9s} {risk:13s} {e['stays']:5d} stays  full {full['auroc']:.4f} / "
                    f"{full['utility']}  early {early['auroc']:.4f} / {early['utility']}"
                )
        print(f"  v{version} exit shares {f['exit_shares']}")
    return 0


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
    q = sub.add_parser(
        "promote",
        help="serve VERSION of MODEL: load it beside the old one, check it, switch; --shadow: the shadow goes live",
    )
    q.add_argument("model", nargs="?")
    q.add_argument("version", nargs="?", help="a version directory of the model (a positive whole number)")
    q.add_argument("--shadow", action="store_true", help="make the shadow model the live one (audited, --by)")
    q.add_argument("--by", default=None, help="who (with --shadow)")
    q.add_argument("--reason", default=None)
    q.add_argument("--json", action="store_true", help="the result as JSON")
    q.set_defaults(func=_promote)
    q = sub.add_parser("shadow", help="score every patient with MODEL beside the live one (--off: no shadow)")
    q.add_argument("model", nargs="?")
    q.add_argument("--off", action="store_true")
    q.add_argument("--by", default=None, help="who (audited)")
    q.add_argument("--reason", default=None)
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=_shadow)
    q = sub.add_parser("roles", help="the live and shadow models the workers follow, and their history")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=_roles)
    q = sub.add_parser(
        "test-figures",
        help="every exported version of a live-layout MODEL on the live cohort's TEST rows as built now (offline)",
        description="Each version's TorchScript on the same held-out rows, at its own thresholds: AUROC and "
        "utility per source and risk, full and early exit, exit shares (serving/version_figures.py).",
    )
    q.add_argument("model", help="a model in the repository, e.g. student_live")
    q.add_argument("--versions", type=int, nargs="+", default=None, help="these versions only (default: all)")
    q.add_argument("--repository", type=Path, default=None, help="model repository (default: serving/models)")
    q.add_argument("--sim-patients", type=int, default=1000, help="as distill-live (default 1000)")
    q.add_argument("--pn-limit", type=int, default=None, help="PhysioNet stays (default: all shared stays)")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=_test_figures)
    q = sub.add_parser("rollback", help="serve MODEL's previously promoted version again")
    q.add_argument("model")
    q.add_argument("--json", action="store_true", help="the result as JSON")
    q.set_defaults(func=_rollback)
