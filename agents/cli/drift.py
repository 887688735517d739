"""``streamserve drift report MODEL``: the latest drift verdicts of a served model
(``agents.ops.drift_report``)."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from agents.cli.parsing import Commands, check_writable, command, group
from pipeline.config import Settings


def register(commands: Commands) -> None:
    actions = group(commands, "drift", "data drift of served models", "Data drift of served models.")
    report = command(actions, "report", _report,
                     "latest PSI/KL and verdict per feature, with a PSI trend")
    report.add_argument("model", help="model name, e.g. iris")
    report.add_argument("--version", help="model version (default: the newest reported)")
    report.add_argument("--plot", type=Path, metavar="FILE.png",
                        help="also chart PSI per window, one subplot per feature")


def _report(settings: Settings, args: argparse.Namespace) -> int:
    from agents.ops.drift_report import format_report, plot_reports, read_reports

    check_writable(args.plot, "--plot")
    version, by_feature = asyncio.run(read_reports(settings, args.model, args.version))
    print(format_report(args.model, version, by_feature))
    if args.plot is not None and by_feature:
        plot_reports(args.model, version, by_feature, args.plot)
        print(f"wrote {args.plot} ({len(by_feature)} features)")
    return 0
