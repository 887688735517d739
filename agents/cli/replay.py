"""``streamserve replay capture|run|diff|gate``: record traffic, replay it against model
versions, compare their answers (``agents.ops.replay``; the pure parts in ``pipeline.replay``)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from agents.cli.parsing import Commands, command, group
from pipeline.config import Settings
from pipeline.errors import UsageError


def register(commands: Commands) -> None:
    actions = group(commands, "replay",
                    "record traffic, replay it against model versions, compare the answers",
                    "Record traffic, replay it against model versions and compare the answers "
                    "(a pre-deploy check: `replay gate`).")
    capture = command(actions, "capture", _replay_capture,
                      "record a topic's records (keys, values, headers, timestamps) between two "
                      "times or offsets into a file: JSON lines, zstd-compressed when FILE ends "
                      "in .zst")
    capture.add_argument("--topic", action="append", metavar="T",
                         help="topic to record; repeat it for several (default the requests topic)")
    capture.add_argument("--from", dest="since", type=_replay_bound, metavar="TIME|OFFSET",
                         help="start: an ISO 8601 time (UTC if no zone), an offset for every "
                              "partition, or per partition 0:1200,1:1187 (default the beginning)")
    capture.add_argument("--to", dest="until", type=_replay_bound, metavar="TIME|OFFSET",
                         help="stop before this time or offset (default the end as of now)")
    capture.add_argument("--out", type=Path, required=True, metavar="FILE",
                         help="file to write, e.g. traffic.jsonl.zst")
    capture.add_argument("--run-id", metavar="RUN",
                         help="keep only replay run RUN's requests and the replies to them "
                              "(default: everything but replayed requests)")

    run = command(actions, "run", _replay_run,
                  "produce a recording again, at its pace times --speed or as fast as possible; "
                  "every record carries the header streamserve-replay: RUN")
    run.add_argument("file", type=Path, help="a file from `streamserve replay capture`")
    run.add_argument("--to-topic", metavar="T", help="topic to produce to (default the requests topic)")
    _pace_arguments(run)
    run.add_argument("--model", metavar="M", help="send every request to model M")
    run.add_argument("--version", metavar="V", help="pin every request to version V")
    run.add_argument("--run-id", metavar="PREFIX",
                     help="run id; request ids (and keys equal to them) become PREFIX/ID "
                          "(default: a generated run id, ids as recorded)")

    diff = command(actions, "diff", _replay_diff,
                   "compare two runs' answers by request id: agreement, score differences, dead "
                   "letters, latency, the requests that differ most")
    for name in ("baseline", "candidate"):
        diff.add_argument(name, metavar=name.upper(),
                          help="a run id (its replies are read from the topics) or a capture of "
                               "the predictions and deadletter topics")
    diff.add_argument("--recording", type=Path, metavar="FILE",
                      help="the replayed recording: shows the features of the requests that "
                           "differ (run ids find them on the requests topic by themselves)")
    _report_arguments(diff)

    gate = command(actions, "gate", _replay_gate,
                   "replay a recording through a baseline and a candidate version, diff their "
                   "answers, exit 1 when a limit is crossed (for CI)")
    gate.add_argument("--file", type=Path, required=True, metavar="F",
                      help="a file from `streamserve replay capture`")
    gate.add_argument("--baseline", required=True, metavar="V1", help="the version serving now")
    gate.add_argument("--candidate", required=True, metavar="V2", help="the version to check")
    gate.add_argument("--max-disagreement", type=float, required=True, metavar="X",
                      help="the share of requests (0 to 1) the candidate may answer otherwise")
    gate.add_argument("--max-p99-ms", type=float, required=True, metavar="Y",
                      help="the candidate's p99 latency limit (parameters.latency_ms)")
    gate.add_argument("--model", metavar="M",
                      help="model to gate: only its requests are replayed (default the one the "
                           "recording's requests name)")
    gate.add_argument("--retarget", action="store_true",
                      help="with --model: replay every request, each sent to M whatever model it "
                           "names (a recording of another model's traffic)")
    gate.add_argument("--labels", type=Path, metavar="FILE",
                      help="the true classes of the recorded requests, one JSON object per line "
                           '({"id": "r-1", "label": "setosa"}): report each version\'s accuracy')
    gate.add_argument("--min-accuracy", type=float, metavar="A",
                      help="with --labels: the candidate's least accuracy (0 to 1)")
    gate.add_argument("--max-accuracy-drop", type=float, metavar="D",
                      help="with --labels: how far (0 to 1) the candidate's accuracy may fall "
                           "below the baseline's")
    _pace_arguments(gate)
    gate.add_argument("--timeout", type=float, default=60.0, metavar="S",
                      help="seconds to wait for a run's replies after its last request "
                           "(default 60); a request left unanswered fails the gate")
    _report_arguments(gate)


def _pace_arguments(parser: argparse.ArgumentParser) -> None:
    pace = parser.add_mutually_exclusive_group()
    pace.add_argument("--speed", type=float, default=1.0, metavar="X",
                      help="replay at the recorded pace times X: inter-arrival times divided by X "
                           "(default 1)")
    pace.add_argument("--max", action="store_true", help="replay as fast as possible")


def _report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--html", type=Path, metavar="FILE",
                        help="also write a self-contained HTML report with charts")
    parser.add_argument("--top", type=int, default=10, metavar="N",
                        help="requests shown among those that differ most (default 10)")


def _replay_bound(text: str):
    from pipeline.replay import ReplayError, parse_bound

    try:
        return parse_bound(text)
    except ReplayError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _writable(path: Path | None, option: str) -> None:
    from pipeline.replay import ReplayError

    if path is not None and not path.parent.is_dir():
        raise ReplayError(f"cannot write {path}: folder {path.parent} does not exist; create it "
                          f"(mkdir -p) or choose another {option} path")


def _replay_capture(settings: Settings, args: argparse.Namespace) -> int:
    from agents.ops.replay import capture

    topics = args.topic or [settings.topics.requests]
    result = asyncio.run(capture(settings, topics, args.since, args.until, args.out, args.run_id))
    counts = ", ".join(f"{n} from {topic}" for topic, n in result.per_topic.items())
    print(f"recorded {result.records} records to {result.path} ({counts})")
    return 0


def _replay_run(settings: Settings, args: argparse.Namespace) -> int:
    from agents.ops.replay import read_recording, replay
    from pipeline.replay import Rewrite, recorded_pace

    _, records = read_recording(args.file)
    rewrite = Rewrite(prefix=args.run_id, model=args.model, version=args.version)
    speed = None if args.max else args.speed
    result = asyncio.run(replay(settings, records, topic=args.to_topic, speed=speed,
                                rewrite=rewrite, run_id=args.run_id))
    pace = recorded_pace(records)
    target = ("as fast as possible" if speed is None else
              f"target {pace * speed:,.1f}/s: the recorded {pace:,.1f}/s x {speed:g}"
              if pace is not None else f"speed x {speed:g}")
    print(f"run {result.run_id}: {result.sent} records to {result.topic} in {result.seconds:.2f} s, "
          f"{result.rate:,.1f} records/s ({target})")
    if args.run_id is None:
        print("request ids kept as recorded; pass --run-id to tell this run's replies apart "
              "(and keep the workers' duplicate-id check from refusing them)", file=sys.stderr)
    return 0


def _replay_diff(settings: Settings, args: argparse.Namespace) -> int:
    from agents.ops.replay import diff_sides
    from agents.ops.replay_report import render_text, write_html

    _writable(args.html, "--html")
    report = asyncio.run(diff_sides(settings, args.baseline, args.candidate, args.recording,
                                    args.top))
    print(render_text(report))
    if args.html is not None:
        write_html(report, args.html)
        print(f"wrote {args.html}")
    return 0


def _replay_gate(settings: Settings, args: argparse.Namespace) -> int:
    from agents.ops.replay import read_recording, run_gate
    from agents.ops.replay_report import render_text, render_verdict, write_html
    from pipeline.replay import GateLimits

    _writable(args.html, "--html")
    if args.labels is None and (args.min_accuracy is not None or args.max_accuracy_drop is not None):
        raise UsageError("--min-accuracy and --max-accuracy-drop judge accuracy on labels: give "
                         "the recorded requests' labels with --labels FILE")
    limits = GateLimits(args.max_disagreement, args.max_p99_ms, args.min_accuracy,
                        args.max_accuracy_drop)
    truth = None
    if args.labels is not None:
        from pipeline.replay import read_labels
        with args.labels.open("rb") as lines:
            truth = read_labels(lines)
    _, records = read_recording(args.file)
    result = asyncio.run(run_gate(settings, records, baseline=args.baseline,
                                  candidate=args.candidate, limits=limits, model=args.model,
                                  retarget=args.retarget,
                                  speed=None if args.max else args.speed, timeout=args.timeout,
                                  top=args.top, truth=truth))
    for run in result.runs:
        print(f"run {run.run_id}: {run.sent} requests in {run.seconds:.2f} s ({run.rate:,.1f}/s)")
    print(render_text(result.report))
    print(render_verdict(result.verdict))
    if args.html is not None:
        write_html(result.report, args.html, result.verdict,
                   title=f"streamserve replay gate: {args.baseline} -> {args.candidate}")
        print(f"wrote {args.html}")
    return 0 if result.verdict.passed else 1


