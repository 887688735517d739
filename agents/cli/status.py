"""``streamserve status [--metrics URL]... [--prometheus URL] [--watch [SECONDS]]``: the
fleet in one terminal view (``agents/ops/status.py`` reads, ``pipeline/status/`` computes,
``agents/ops/status_view.py`` draws).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from typing import TYPE_CHECKING, TextIO

from agents.cli.parsing import Commands, command
from pipeline.config import Settings

if TYPE_CHECKING:  # imported when the command runs, so `streamserve --help` stays quick
    from rich.console import Console

    from agents.ops.status import StatusOptions

WATCH_EVERY_S = 2.0  # --watch without SECONDS
PIPED_WIDTH = 120  # columns when stdout is not a terminal and COLUMNS is unset


def register(commands: Commands) -> None:
    status = command(commands, "status", _status,
                     "the fleet in one view: models and their routes, requests/s, predictions/s, "
                     "p99 latency, dead letters, breakers, consumer lag per partition, drift")
    status.add_argument("--metrics", action="append", default=[], metavar="URL",
                        help="a worker's metrics endpoint, e.g. http://127.0.0.1:9100/metrics "
                             "or just 127.0.0.1:9100 (repeatable: one per worker); scraped "
                             "twice, --interval apart, for rates and p99")
    status.add_argument("--prometheus", metavar="URL",
                        help="a Prometheus server scraping the workers, e.g. "
                             "http://127.0.0.1:9090; with --metrics too, its figures win for "
                             "the models it has")
    status.add_argument("--interval", type=float, default=2.0, metavar="SECONDS",
                        help="between the two scrapes of --metrics (default 2)")
    status.add_argument("--window", default="1m", metavar="DURATION",
                        help="PromQL rate window for --prometheus (default 1m; at least two of "
                             "its scrape intervals)")
    status.add_argument("--watch", nargs="?", type=float, const=WATCH_EVERY_S, default=None,
                        metavar="SECONDS",
                        help=f"refresh every SECONDS (default {WATCH_EVERY_S:g}) until Ctrl-C; "
                             "rates then cover the time since the previous refresh")


def options_from(args: argparse.Namespace) -> StatusOptions:
    from agents.ops.status import StatusOptions, endpoint

    return StatusOptions(metrics=tuple(endpoint(url, "/metrics") for url in args.metrics),
                         prometheus=None if args.prometheus is None else endpoint(args.prometheus),
                         interval_s=args.interval, window=args.window)


def console_for(stream: TextIO | None = None) -> Console:
    """A rich console on ``stream`` (stdout); piped, it is PIPED_WIDTH wide unless COLUMNS says."""
    from rich.console import Console

    stream = stream or sys.stdout
    piped = not stream.isatty() and "COLUMNS" not in os.environ
    return Console(file=stream, width=PIPED_WIDTH if piped else None)


def _status(settings: Settings, args: argparse.Namespace) -> int:
    from agents.ops.status import collect_once
    from agents.ops.status_view import render
    from pipeline.status import StatusError

    options = options_from(args)  # StatusError: main says it
    if args.watch is not None and not args.watch > 0:
        raise StatusError(f"--watch SECONDS must be positive, e.g. 5, got {args.watch:g}")
    console = console_for()
    objective = settings.slo.latency_ms / 1000
    if args.watch is None:
        console.print(render(asyncio.run(collect_once(settings, options)),
                             latency_objective_s=objective))
        return 0
    try:
        asyncio.run(_watch(settings, options, args.watch, console, objective))
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a watch ends
    return 0


async def _watch(settings: Settings, options: StatusOptions, every: float, console: Console,
                 objective: float) -> None:
    from rich.live import Live
    from rich.text import Text

    from agents.ops.status import StatusCollector
    from agents.ops.status_view import render

    async with StatusCollector(settings, options) as collector:
        with Live(Text(f"reading the fleet (Kafka at {settings.bootstrap}) ...", style="dim"),
                  console=console, auto_refresh=False) as live:
            while True:
                started = time.monotonic()
                status = await collector.collect()
                live.update(render(status, latency_objective_s=objective), refresh=True)
                await asyncio.sleep(max(0.0, started + every - time.monotonic()))
