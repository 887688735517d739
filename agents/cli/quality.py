"""``streamserve quality report MODEL``: live quality on labels per version and route
(``agents.ops.quality_report``)."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

from agents.cli.parsing import Commands, check_writable, command, group
from pipeline.config import Settings


def register(commands: Commands) -> None:
    actions = group(commands, "quality", "live quality of served models on labels",
                    "Live quality of served models, on the labels sent to the labels topic "
                    "(workers run with STREAMSERVE_LABELS=on).")
    report = command(actions, "report", _report,
                     "accuracy, log loss, Brier, calibration (or MAE, RMSE, bias) per version "
                     "and route, with the label delay and the training metrics")
    report.add_argument("model", help="model name, e.g. iris")
    report.add_argument("--since", metavar="TIME",
                        help="only answers since TIME (whole windows of STREAMSERVE_QUALITY_WINDOW_S, "
                             "the latest 24): ISO 8601 (UTC if no zone) or an age such as 30m, 2h, 7d")
    report.add_argument("--json", action="store_true", help="one JSON object per model version")
    report.add_argument("--plot", type=Path, metavar="FILE.png",
                        help="also chart accuracy (or MAE) per window, a subplot per version")


def _report(settings: Settings, args: argparse.Namespace) -> int:
    import orjson

    from agents.ops.quality_report import format_report, plot_quality, read_quality, summarize
    from pipeline.audit import parse_since

    check_writable(args.plot, "--plot")
    since = None if args.since is None else parse_since(args.since, time.time())
    versions = summarize(settings, args.model, asyncio.run(read_quality(settings, args.model)), since)
    if args.json:
        for version in versions:
            print(orjson.dumps(version).decode())
    else:
        print(format_report(args.model, versions))
    if args.plot is not None and versions:
        plot_quality(args.model, versions, args.plot)
        print(f"wrote {args.plot} ({len(versions)} versions)", file=sys.stderr if args.json else sys.stdout)
    return 0
