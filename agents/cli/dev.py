"""``streamserve demo|bench``: the whole path end to end, and its benchmark (``agents.dev``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from agents.cli.parsing import Commands, command
from pipeline.config import Settings


def register(commands: Commands) -> None:
    demo = command(commands, "demo", _demo, "the whole path end to end on the local broker")
    demo.add_argument("--requests", type=int, default=5000,
                      help="requests to send (default 5000)")
    demo.add_argument("--invalid-share", type=float, default=0.03,
                      help="share of deliberately invalid requests (default 0.03)")
    demo.add_argument("--rate", type=float, default=500,
                      help="requests per second, sent on schedule (default 500; 0: as fast as "
                           "possible, which measures capacity and queueing, not latency)")

    bench = command(commands, "bench", _bench,
                    "throughput and latency beside the Kafka and model ceilings and the "
                    "alternatives (the local broker unless STREAMSERVE_BROKER is set); a table "
                    "on stdout")
    bench.add_argument("--quick", action="store_true",
                       help="a short run (under a minute after setup) instead of a few minutes")
    bench.add_argument("--json", type=Path, default=None, metavar="FILE",
                       help="also write the results to FILE as JSON")
    bench.add_argument("--model", default="synthetic32",
                       help="registered model to serve (default synthetic32; a built-in one is "
                            "trained when the registry lacks it)")
    bench.add_argument("--profile", action="store_true",
                       help="also drain case 3's backlog once more under cProfile and show where "
                            "the worker's time goes, stage by stage (decode, admission, model, "
                            "outputs, Kafka client, commit)")


def _demo(settings: Settings, args: argparse.Namespace) -> int:
    from agents.dev.demo import run_demo

    return run_demo(settings, requests=args.requests, invalid_share=args.invalid_share,
                    rate=args.rate)


def _bench(settings: Settings, args: argparse.Namespace) -> int:
    """A case that cannot be measured raises BenchError: one line, exit 1 (its exit_code)."""
    from agents.dev.bench import run_bench

    return run_bench(settings, model=args.model, quick=args.quick, json_path=args.json,
                     profile=args.profile)
