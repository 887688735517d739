"""The ``streamserve`` command line. User mistakes end in one line on stderr, never a traceback."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

import orjson

from agents.cli.acl import add_acl_commands
from agents.cli.lifecycle import add_control_commands
from agents.cli.ops import add_ops_commands
from agents.cli.quota import add_quota_commands
from agents.cli.replay import add_replay_commands
from agents.cli.status import add_status_commands
from pipeline.config import ConfigError, Settings


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    settings = None
    try:
        settings = Settings.from_env()
        return args.run(settings, args) or 0
    except KeyboardInterrupt:
        return 130
    except _user_errors() as e:
        print(f"streamserve: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        from agents.kafka.io import REFUSALS, refused

        if settings is None or not isinstance(e, REFUSALS):
            raise
        # A refusal no command put in its own words: who may do it instead.
        print(f"streamserve: error: {refused(settings, e)}", file=sys.stderr)
        return 2


def _user_errors() -> tuple[type[Exception], ...]:
    from agents.dev.broker import BrokerError
    from agents.kafka.io import KafkaAccessError
    from models.train import UnknownModelError
    from pipeline.broker_quotas import QuotaError
    from pipeline.registry import RegistryError
    from pipeline.routing import ControlError
    from pipeline.schema import SchemaError

    return (ConfigError, BrokerError, KafkaAccessError, RegistryError, UnknownModelError,
            ControlError, SchemaError, QuotaError, OSError)


def _parser() -> argparse.ArgumentParser:
    settings_help = "\n".join(f"  {env} (default {default}): {doc}"
                              for env, default, doc in Settings.documentation())
    parser = argparse.ArgumentParser(
        prog="streamserve", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Kafka-native model serving: Faust workers micro-batching JSON requests "
                    "into JIT-compiled JAX models.",
        epilog=f"settings (environment variables):\n{settings_help}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    def command(name: str, run: Callable, help: str, parent=commands) -> argparse.ArgumentParser:
        sub = parent.add_parser(name, help=help, description=help)
        sub.set_defaults(run=run)
        return sub

    broker = commands.add_parser("broker", help="the embedded single-node Kafka broker",
                                 description="The embedded single-node Kafka broker (KRaft).")
    broker_commands = broker.add_subparsers(title="actions", metavar="ACTION", required=True)
    for action, run, help in (("start", _broker_start, "start it (a no-op when it already runs)"),
                              ("stop", _broker_stop, "stop it and leave no process behind"),
                              ("status", _broker_status, "say whether it runs")):
        command(action, run, help, broker_commands).add_argument(
            "--secure", action="store_true",
            help="the secured broker instead (port STREAMSERVE_LOCAL_BROKER_PORT + 2): TLS, SCRAM "
                 "users admin, worker and client, ACLs enforced; settings files per user in "
                 "STREAMSERVE_HOME/broker-secure/credentials")

    models = commands.add_parser("models", help="train, list, sign, verify and move model versions",
                                 description="Train, list, sign, verify, export and import "
                                             "registered model versions.")
    model_commands = models.add_subparsers(title="actions", metavar="ACTION", required=True)
    train = command("train", _registry_command("models_train"),
                    "train a built-in model and register a new version, signed with "
                    "STREAMSERVE_SIGNING_KEY (created when missing)", model_commands)
    train.add_argument("name", help="built-in model: iris, breast_cancer or synthetic32")
    train.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    train.add_argument("--sensitive", action="append", default=[], metavar="FIELD[,FIELD]",
                       help="mark features sensitive: their values never leave a worker in "
                            "clear (hashed with STREAMSERVE_REDACTION_KEY, masked without one)")
    command("list", _registry_command("models_list"),
            "list registered models and versions, with each one's signature status", model_commands)
    show = command("show", _registry_command("models_show"),
                   "a version's schema, metrics, lineage, hashes and signature", model_commands)
    show.add_argument("model", help="model name, e.g. iris")
    show.add_argument("version", nargs="?", help="version (default the newest)")
    sign = command("sign", _registry_command("models_sign"),
                   "sign a registered version with STREAMSERVE_SIGNING_KEY", model_commands)
    sign.add_argument("model", help="model name, e.g. iris")
    sign.add_argument("version", help="version, e.g. 2")
    check = command("verify", _registry_command("models_verify"),
                    "check signatures against STREAMSERVE_TRUSTED_KEYS and parameters against "
                    "their manifest; exit 1 when one fails", model_commands)
    check.add_argument("model", help="model name, e.g. iris")
    check.add_argument("version", nargs="?", help="version (default every version)")
    export = command("export", _registry_command("models_export"),
                     "write a version (with its signature) to one .tar.gz file", model_commands)
    export.add_argument("model", help="model name, e.g. iris")
    export.add_argument("version", help="version, e.g. 2")
    export.add_argument("--out", type=Path, required=True, metavar="FILE",
                        help="archive to write, e.g. iris-2.tar.gz (never overwritten)")
    load = command("import", _registry_command("models_import"),
                   "register the version an export holds, after verifying its signature; "
                   "refused when that version exists", model_commands)
    load.add_argument("file", type=Path, help="a file from `streamserve models export`")

    keys = commands.add_parser("keys", help="model signing keys",
                               description="Ed25519 keys that sign model versions.")
    key_commands = keys.add_subparsers(title="actions", metavar="ACTION", required=True)
    generate = command("generate", _registry_command("keys_generate"),
                       "create a key pair: a private key (mode 0600) and its .pub", key_commands)
    generate.add_argument("--out", type=Path, default=None, metavar="PATH",
                          help="private key file (default STREAMSERVE_SIGNING_KEY); the public "
                               "key goes beside it, ending in .pub")

    add_control_commands(commands, command)

    worker = command("worker", _worker, "run one serving worker in the foreground")
    worker.add_argument("--metrics-port", type=int, default=None,
                        help="serve Prometheus metrics on this port")

    produce = command("produce", _produce, "send JSON lines (a file or stdin) to a topic")
    produce.add_argument("file", nargs="?", type=Path, help="JSON lines file (default stdin)")
    produce.add_argument("--topic", help="topic (default the requests topic)")

    consume = command("consume", _consume, "print a topic's messages as JSON lines")
    consume.add_argument("--topic", help="topic (default the predictions topic)")
    consume.add_argument("--from-beginning", action="store_true",
                         help="start at the oldest message, not the newest")
    consume.add_argument("--max", type=int, default=None, help="stop after N messages")
    consume.add_argument("--timeout", type=float, default=None,
                         help="stop after S seconds without a message")

    drift = commands.add_parser("drift", help="data drift of served models",
                                description="Data drift of served models.")
    drift_commands = drift.add_subparsers(title="actions", metavar="ACTION", required=True)
    drift_report = command("report", _drift_report,
                           "latest PSI/KL and verdict per feature, with a PSI trend", drift_commands)
    drift_report.add_argument("model", help="model name, e.g. iris")
    drift_report.add_argument("--version", help="model version (default: the newest reported)")
    drift_report.add_argument("--plot", type=Path, metavar="FILE.png",
                              help="also chart PSI per window, one subplot per feature")

    verify = command("verify", _verify,
                     "check the ledger: one prediction or one dead letter per request")
    verify.add_argument("--id-prefix", help="only requests whose id starts with this")
    verify.add_argument("--from", dest="since", type=_timestamp, metavar="TIME",
                        help="only requests produced at or after TIME (ISO 8601, UTC if no zone)")
    verify.add_argument("--to", dest="until", type=_timestamp, metavar="TIME",
                        help="only requests produced before TIME")

    demo = command("demo", _demo, "the whole path end to end on the local broker")
    demo.add_argument("--requests", type=int, default=5000, help="requests to send (default 5000)")
    demo.add_argument("--invalid-share", type=float, default=0.03,
                      help="share of deliberately invalid requests (default 0.03)")
    demo.add_argument("--rate", type=float, default=500,
                      help="requests per second, sent on schedule (default 500; 0: as fast as "
                           "possible, which measures capacity and queueing, not latency)")

    bench = command("bench", _bench, "throughput and latency beside the Kafka and model ceilings and "
                                     "the alternatives (the local broker unless STREAMSERVE_BROKER "
                                     "is set); a table on stdout")
    bench.add_argument("--quick", action="store_true",
                       help="a short run (under a minute after setup) instead of a few minutes")
    bench.add_argument("--json", type=Path, default=None, metavar="FILE",
                       help="also write the results to FILE as JSON")
    bench.add_argument("--model", default="synthetic32",
                       help="registered model to serve (default synthetic32; a built-in one is "
                            "trained when the registry lacks it)")
    add_replay_commands(commands, command)
    add_ops_commands(commands, command)
    add_acl_commands(commands, command)
    add_quota_commands(commands, command)
    add_status_commands(commands, command)
    return parser


def _local_broker(settings: Settings, args: argparse.Namespace):
    """The local broker (``--secure``: the secured one) of ``settings``; refused when
    STREAMSERVE_BROKER names another cluster."""
    from agents.dev.broker import SECURE_PORT_OFFSET, LocalBroker

    port = settings.local_broker_port + (SECURE_PORT_OFFSET if args.secure else 0)
    broker = LocalBroker(settings.home, port, secure=args.secure)
    # A sourced credentials file names the secured broker itself: that one is managed here.
    if not settings.uses_local_broker and settings.broker != broker.bootstrap:
        raise ConfigError(f"STREAMSERVE_BROKER={settings.broker} points at an existing cluster; "
                          "unset it to manage the local broker")
    return broker


def _broker_start(settings: Settings, args: argparse.Namespace) -> int:
    broker = _local_broker(settings, args)
    started = broker.start()
    print(f"broker {'started' if started else 'already running'} on {broker.bootstrap}")
    if broker.secure:
        print(f"TLS (CA {broker.cafile}), SCRAM logins, ACLs enforced; log in with `set -a; . "
              f"{broker.env_file('NAME')}`, NAME one of admin, worker, client; then, as admin, "
              "`streamserve acl apply`")
    if broker.secure and started:
        from agents.kafka.audit import record
        from agents.dev.broker import PRINCIPALS

        admin = Settings.from_env(broker.environment("admin"), topic_prefix=settings.topic_prefix)
        asyncio.run(record(admin, action="broker_start", subject=f"broker:{broker.bootstrap}",
                           details={"security": "SASL_SSL", "users": list(PRINCIPALS),
                                    "ca": str(broker.cafile)}))
    return 0


def _broker_stop(settings: Settings, args: argparse.Namespace) -> int:
    stopped = _local_broker(settings, args).stop()
    print("broker stopped" if stopped else "no broker was running")
    return 0


def _broker_status(settings: Settings, args: argparse.Namespace) -> int:
    status = _local_broker(settings, args).status()
    print(f"broker {'running (pid ' + str(status.pid) + ')' if status.running else 'stopped'} "
          f"on {status.bootstrap}, data in {status.home}")
    return 0 if status.running else 3


def _registry_command(name: str) -> Callable[[Settings, argparse.Namespace], int]:
    """The command ``name`` of ``agents.cli.models``, imported only when it runs."""
    def run(settings: Settings, args: argparse.Namespace) -> int:
        from agents.cli import models as registry_cli

        return getattr(registry_cli, name)(settings, args)

    return run


def _worker(settings: Settings, args: argparse.Namespace) -> int:
    from agents.worker.run import run_worker

    run_worker(settings, args.metrics_port)
    return 0


def _produce(settings: Settings, args: argparse.Namespace) -> int:
    topic = args.topic or settings.topics.requests
    if args.file is not None:
        with args.file.open("rb") as lines:
            sent = asyncio.run(_produce_lines(settings, topic, lines))
    else:
        sent = asyncio.run(_produce_lines(settings, topic, sys.stdin.buffer))
    print(f"sent {sent} messages to {topic}", file=sys.stderr)
    return 0


async def _produce_lines(settings: Settings, topic: str, lines) -> int:
    from agents.kafka.io import ensure_topics, refusals, start_producer
    from pipeline.acl import Operation

    await ensure_topics(settings)
    producer = await start_producer(settings)
    deliveries = []
    try:
        with refusals(settings, Operation.WRITE):
            for line in lines:
                value = line.rstrip(b"\r\n")
                if not value.strip():
                    continue
                deliveries.append(await producer.send(topic, value=value, key=_request_key(value)))
            # A refused or failed write shows only in its delivery: check every one.
            failed = [r for r in await asyncio.gather(*deliveries, return_exceptions=True)
                      if isinstance(r, BaseException)]
            if failed:
                raise failed[0]
    finally:
        await producer.stop()
    return len(deliveries)


def _request_key(value: bytes) -> bytes | None:
    """The request id as key when the line is a JSON object with a string id; else no key."""
    try:
        body = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    request_id = body.get("id") if isinstance(body, dict) else None
    return request_id.encode() if isinstance(request_id, str) else None


def _consume(settings: Settings, args: argparse.Namespace) -> int:
    asyncio.run(_consume_lines(settings, args.topic or settings.topics.predictions,
                               args.from_beginning, args.max, args.timeout, sys.stdout))
    return 0


async def _consume_lines(settings: Settings, topic: str, from_beginning: bool, limit: int | None,
                         timeout: float | None, out: TextIO) -> None:
    from agents.kafka.io import ensure_topics, read_topic, refusals
    from pipeline.acl import Operation

    await ensure_topics(settings)
    count = 0
    if limit is not None and limit <= 0:
        return
    with refusals(settings, Operation.READ):
        async for record in read_topic(settings, topic, from_beginning=from_beginning,
                                       idle_timeout=timeout):
            out.write((record.value or b"").decode("utf-8", errors="replace") + "\n")
            out.flush()
            count += 1
            if limit is not None and count >= limit:
                return


def _drift_report(settings: Settings, args: argparse.Namespace) -> int:
    from agents.ops.drift_report import format_report, plot_reports, read_reports

    # Checked before reading Kafka, so a typo costs no wait for the broker.
    if args.plot is not None and not args.plot.parent.is_dir():
        print(f"streamserve: error: cannot write {args.plot}: folder {args.plot.parent} does not "
              "exist; create it (mkdir -p) or choose another --plot path", file=sys.stderr)
        return 2
    version, by_feature = asyncio.run(read_reports(settings, args.model, args.version))
    print(format_report(args.model, version, by_feature))
    if args.plot is not None and by_feature:
        plot_reports(args.model, version, by_feature, args.plot)
        print(f"wrote {args.plot} ({len(by_feature)} features)")
    return 0


def _timestamp(text: str) -> datetime.datetime:
    try:
        stamp = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 time such as 2026-11-30T05:00:00") from None
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=datetime.UTC)


def _verify(settings: Settings, args: argparse.Namespace) -> int:
    from agents.ops.verify import render, verify

    report = asyncio.run(verify(settings, args.id_prefix, args.since, args.until))
    print(render(report))
    return 0 if report.holds else 1


def _demo(settings: Settings, args: argparse.Namespace) -> int:
    from agents.dev.demo import run_demo

    return run_demo(settings, requests=args.requests, invalid_share=args.invalid_share,
                    rate=args.rate)


def _bench(settings: Settings, args: argparse.Namespace) -> int:
    from agents.dev.bench import BenchError, run_bench

    try:
        return run_bench(settings, model=args.model, quick=args.quick, json_path=args.json)
    except BenchError as e:
        print(f"streamserve: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
