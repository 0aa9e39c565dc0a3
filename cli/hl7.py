"""``icuwatch hl7-listen``: the HL7 v2 MLLP listener (ORU^R01, ADT^A01/A02/A03 -> Kafka)."""

from __future__ import annotations

import argparse
import asyncio
import logging


def _listen(args: argparse.Namespace) -> int:
    from icuwatch.cli.errors import require_free_port
    from icuwatch.core.settings import get_settings
    from icuwatch.interfaces.hl7_listener import serve

    settings = get_settings()
    host, port = args.host or settings.hl7_host, args.port or settings.hl7_port
    require_free_port(host, port)  # before connecting to the broker
    logging.getLogger("icuwatch.interfaces").setLevel(logging.INFO if args.verbose else logging.WARNING)
    try:
        asyncio.run(serve(settings, host, port))
    except KeyboardInterrupt:
        pass
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("hl7-listen", help="HL7 v2 MLLP listener: ORU^R01 vitals/labs and ADT into the topics")
    p.add_argument("--host", default=None, help="listen address (default ICUWATCH_HL7_HOST, 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="MLLP port (default ICUWATCH_HL7_PORT, 2575)")
    p.add_argument("--verbose", action="store_true", help="log every rejected message")
    p.set_defaults(func=_listen)
