"""``icuwatch dicom-listen``: the chest X-ray C-STORE SCP (see :mod:`icuwatch.interfaces.dicom_scp`)."""

from __future__ import annotations

import argparse
import logging


def _listen(args: argparse.Namespace) -> int:
    from icuwatch.cli.errors import require_free_port
    from icuwatch.core.settings import get_settings
    from icuwatch.interfaces.dicom_scp import serve

    settings = get_settings()
    host = args.host if args.host is not None else settings.dicom_host
    port = args.port if args.port is not None else settings.dicom_port
    require_free_port(host, port)  # before connecting to the broker
    logging.getLogger("icuwatch.interfaces").setLevel(logging.INFO)
    serve(settings, host=host, port=port, ae_title=args.ae_title)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "dicom-listen",
        help="DICOM C-STORE SCP: chest X-rays pushed by PACS into icu.cxr (others refused, dead-lettered)",
    )
    p.add_argument("--host", default=None, help="listen address (default ICUWATCH_DICOM_HOST, 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="listen port (default ICUWATCH_DICOM_PORT, 11112)")
    p.add_argument("--ae-title", default=None, help="called AE title (default ICUWATCH_DICOM_AE_TITLE, ICUWATCH)")
    p.set_defaults(func=_listen)
