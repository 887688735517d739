"""``streamserve verify``: check the ledger, one prediction or one dead letter per request
(``agents.ops.verify``); exit 1 when it does not hold."""

from __future__ import annotations

import argparse
import asyncio
import datetime

from agents.cli.parsing import Commands, command
from pipeline.config import Settings


def register(commands: Commands) -> None:
    verify = command(commands, "verify", _verify,
                     "check the ledger: one prediction or one dead letter per request")
    verify.add_argument("--id-prefix", help="only requests whose id starts with this")
    verify.add_argument("--from", dest="since", type=_timestamp, metavar="TIME",
                        help="only requests produced at or after TIME (ISO 8601, UTC if no zone)")
    verify.add_argument("--to", dest="until", type=_timestamp, metavar="TIME",
                        help="only requests produced before TIME")


def _timestamp(text: str) -> datetime.datetime:
    try:
        stamp = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 time such as 2026-11-30T05:00:00") from None
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=datetime.UTC)


def _verify(settings: Settings, args: argparse.Namespace) -> int:
    """The report on stdout; exit 1 when the ledger does not hold (a check that failed)."""
    from agents.ops.verify import render, verify

    report = asyncio.run(verify(settings, args.id_prefix, args.since, args.until))
    print(render(report))
    return 0 if report.holds else 1
