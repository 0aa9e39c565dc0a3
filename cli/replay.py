"""Subcommands ``replay psv|wfdb|file``, ``record`` and ``waveform-beats`` (registered by ``icuwatch``)."""

from __future__ import annotations

import argparse
import json
import sys

from icuwatch.cli.errors import report_failed
from icuwatch.cli.options import add_waveform_payload


def _producer():
    from icuwatch.core.settings import get_settings
    from icuwatch.streams.kafka.producer import make_producer

    return make_producer(get_settings())


def _replay_psv(args: argparse.Namespace) -> int:
    from icuwatch.sources.physionet import stay_folder
    from icuwatch.sources.psv import replay_psv

    stay_folder(args.dir)  # before connecting to the broker
    producer = _producer()
    try:
        counts = replay_psv(
            args.dir,
            producer,
            patients=args.patients,
            speed=args.speed,
            base_time=args.base_time,
            progress=not args.quiet,
            id_prefix=args.id_prefix,
        )
    finally:
        producer.close()
    print(json.dumps(counts))
    return report_failed("replay psv", counts["failed_files"])


def _replay_wfdb(args: argparse.Namespace) -> int:
    from icuwatch.sources.wfdb_records import read_header, record_patient_id, replay_wfdb

    read_header(args.record)  # before connecting to the broker
    record_patient_id(args.record, args.patient_id)  # a record name that is no patient id: say so now
    producer = _producer()
    try:
        counts = replay_wfdb(
            args.record,
            producer,
            speed=args.speed,
            base_time=args.base_time,
            progress=not args.quiet,
            patient_id=args.patient_id,
            nan_policy=args.nan,
            payload_version=args.waveform_payload,
        )
    finally:
        producer.close()
    print(json.dumps(counts))
    return 0


def _replay_file(args: argparse.Namespace) -> int:
    from icuwatch.sources.recording import replay_file

    open(args.file, "rb").close()  # there and readable, before connecting to the broker
    producer = _producer()
    try:
        counts = replay_file(
            args.file, producer, speed=args.speed, progress=not args.quiet, keep_partitions=args.keep_partitions
        )
    finally:
        producer.close()
    print(json.dumps(counts))
    return 0


def _record(args: argparse.Namespace) -> int:
    from icuwatch.core.settings import get_settings
    from icuwatch.sources.recording import record

    counts = record(
        args.topics,
        args.out,
        get_settings(),
        seconds=args.seconds,
        max_messages=args.max_messages,
        from_beginning=args.from_beginning,
        progress=not args.quiet,
    )
    print(json.dumps(counts))
    return 0


def _beats(args: argparse.Namespace) -> int:
    from icuwatch.fusion.evaluation.beats import waveform_beats

    print(json.dumps(waveform_beats(args.record, args.out_dir)))
    return 0


def register(subparsers) -> None:
    speed_help = "stream seconds per wall second: 1 real time, 0 as fast as possible"

    p = subparsers.add_parser("replay", help="replay PhysioNet 2019 stays, WFDB records or a recorded archive")
    sub = p.add_subparsers(dest="source", required=True)

    q = sub.add_parser("psv", help="PhysioNet/CinC 2019 .psv stays -> icu.vitals, icu.labs, icu.adt")
    q.add_argument("dir", help="folder of pNNNNNN.psv files")
    q.add_argument("--patients", type=int, default=None, help="the first N stays in name order (default: all)")
    q.add_argument("--speed", type=float, default=0.0, help=speed_help)
    q.add_argument(
        "--base-time",
        type=float,
        default=None,
        help="hospital admission of every stay, epoch s (default 2020-01-01T00:00Z)",
    )
    q.add_argument("--id-prefix", default="", help="prefix for the patient ids (default: the file stem)")
    q.add_argument("--quiet", action="store_true")
    q.set_defaults(func=_replay_psv)

    q = sub.add_parser("wfdb", help="a WFDB record (single or multi-segment) -> icu.waveforms (+ icu.vitals)")
    q.add_argument("record", help="record path without extension (or the .hea file)")
    q.add_argument("--speed", type=float, default=0.0, help=speed_help)
    q.add_argument(
        "--base-time",
        type=float,
        default=None,
        help="start, epoch s, when the record has no usable date (default 2020-01-01T00:00Z)",
    )
    q.add_argument(
        "--patient-id",
        default=None,
        help="the patient id, exactly (letters, digits, '_', '.', '-'; at most 64); default: the record name",
    )
    q.add_argument(
        "--nan",
        choices=["drop", "interpolate"],
        default="drop",
        help="chunks with NaN samples: drop them (default) or interpolate short gaps",
    )
    add_waveform_payload(q)
    q.add_argument("--quiet", action="store_true")
    q.set_defaults(func=_replay_wfdb)

    q = sub.add_parser("file", help="a JSON-lines archive written by 'icuwatch record' -> its topics")
    q.add_argument("file")
    q.add_argument("--speed", type=float, default=0.0, help=speed_help)
    q.add_argument("--keep-partitions", action="store_true", help="send to the recorded partitions")
    q.add_argument("--quiet", action="store_true")
    q.set_defaults(func=_replay_file)

    p = subparsers.add_parser("record", help="capture live topics into a JSON-lines archive")
    p.add_argument("topics", nargs="+")
    p.add_argument("--out", required=True)
    p.add_argument("--seconds", type=float, default=None, help="stop after S seconds (default: Ctrl-C)")
    p.add_argument("--max-messages", type=int, default=None)
    p.add_argument("--from-beginning", action="store_true", help="everything the topics hold, not just new messages")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_record)

    p = subparsers.add_parser("waveform-beats", help="R peaks of a WFDB record's ECG (worker's detector) -> .qrs")
    p.add_argument("record")
    p.add_argument("out_dir")
    p.set_defaults(func=_beats)


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use: icuwatch replay|record|waveform-beats ...")
