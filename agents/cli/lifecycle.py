"""``streamserve deploy|canary|shadow|promote|rollback|fallback|batching|routes|audit``.

Each change reads the model's current spec from the control topic, applies one pure
transition (``pipeline.routing``), and writes the new spec and an audit entry; every
worker applies it within seconds, once the versions it names are loaded and warm.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable

import orjson

from pipeline import routing
from pipeline.config import Settings
from pipeline.routing import DeploymentSpec


def add_control_commands(commands: argparse._SubParsersAction, command: Callable) -> None:
    _model_version(command("deploy", _deploy, "serve VERSION of MODEL as its stable version"))
    canary = command("canary", _canary, "send a share of MODEL's traffic to VERSION")
    _model_version(canary)
    canary.add_argument("--weight", type=float, required=True,
                        help="share of requests, e.g. 0.2 (chosen by a hash of the request id)")
    shadow = command("shadow", _shadow, "copy MODEL's traffic to VERSION; its answers go to the "
                                        "shadow topic, never to clients")
    _model_version(shadow)
    shadow.add_argument("--off", action="store_true", help="stop shadowing VERSION")
    promote = command("promote", _promote, "make MODEL's canary its stable version")
    promote.add_argument("model")
    rollback = command("rollback", _rollback, "drop MODEL's canary, or go back to the previous "
                                              "(or the given) stable version")
    rollback.add_argument("model")
    rollback.add_argument("version", nargs="?", help="stable version to go back to")
    fallback = command("fallback", _fallback, "serve VERSION while MODEL's version is failing "
                                              "(its circuit breaker open)")
    _model_version(fallback)
    batching = command("batching", _batching, "MODEL's batching settings, over the worker's")
    batching.add_argument("model")
    batching.add_argument("--max-batch", type=int, default=None,
                          help="most of its requests in one model call (default: STREAMSERVE_MAX_BATCH)")
    batching.add_argument("--batch-timeout-ms", type=int, default=None,
                          help="its queueing budget; a worker's queue holds every model's requests, "
                               "so the smallest budget among its models applies (default: "
                               "STREAMSERVE_BATCH_TIMEOUT_MS)")
    command("routes", _routes, "every model's deployment: stable, canary, shadows, fallback")
    audit = command("audit", _audit, "the audit trail, oldest first: deployment changes, "
                                     "versions loaded and refused, ACL, quota and broker changes")
    audit.add_argument("--model", help="only this model's entries")
    audit.add_argument("--subject", help="only this subject's entries, and those under it "
                                         "(quota: every quota's; broker, acl, or a model)")
    audit.add_argument("--action", action="append", default=[], metavar="ACTION",
                       help="only entries of this action (repeat for several), e.g. load_refused")
    audit.add_argument("--since", metavar="TIME", help="only entries since TIME: ISO 8601 (UTC "
                                                       "if no zone) or an age such as 30m, 2h, 7d")
    audit.add_argument("--json", action="store_true", help="one JSON object per line")


def _model_version(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model name, e.g. iris")
    parser.add_argument("version", help="registered version, e.g. 2")


def _change(settings: Settings, model: str, action: str,
            transition: Callable[[DeploymentSpec | None], DeploymentSpec],
            *check: str) -> int:
    from agents.kafka.control import change, check_servable
    from agents.kafka.io import refusals
    from pipeline.acl import Operation, Principals

    for version in check:
        check_servable(settings, model, version)
    with refusals(settings, Operation.WRITE, fix="lifecycle commands need admin credentials",
                  fixed_by=Principals().admin):
        new = asyncio.run(change(settings, model, transition, action=action, source="cli"))
    assert new is not None
    print(new.describe())
    return 0


def _deploy(settings: Settings, args: argparse.Namespace) -> int:
    return _change(settings, args.model, "deploy",
                   lambda spec: routing.deploy(spec, args.model, args.version), args.version)


def _batching(settings: Settings, args: argparse.Namespace) -> int:
    return _change(settings, args.model, "batching",
                   lambda spec: routing.set_batching(spec, args.max_batch, args.batch_timeout_ms))


def _canary(settings: Settings, args: argparse.Namespace) -> int:
    return _change(settings, args.model, "canary",
                   lambda spec: routing.start_canary(spec, args.version,
                                                     args.weight), args.version)


def _shadow(settings: Settings, args: argparse.Namespace) -> int:
    if args.off:
        return _change(settings, args.model, "shadow_off",
                       lambda spec: routing.remove_shadow(spec, args.version))
    return _change(settings, args.model, "shadow",
                   lambda spec: routing.add_shadow(spec, args.version),
                   args.version)


def _promote(settings: Settings, args: argparse.Namespace) -> int:
    return _change(settings, args.model, "promote",
                   lambda spec: routing.promote(spec))


def _rollback(settings: Settings, args: argparse.Namespace) -> int:
    check = () if args.version is None else (args.version,)
    return _change(settings, args.model, "rollback",
                   lambda spec: routing.rollback(spec, args.version), *check)


def _fallback(settings: Settings, args: argparse.Namespace) -> int:
    return _change(settings, args.model, "fallback",
                   lambda spec: routing.set_fallback(spec, args.version),
                   args.version)


def _routes(settings: Settings, args: argparse.Namespace) -> int:
    from agents.kafka.control import read_specs
    from pipeline.registry import Registry
    from pipeline.signing import TrustedKeys, newest_verified

    specs = asyncio.run(read_specs(settings))
    registry = Registry(settings.registry)
    trusted = TrustedKeys.load(settings.trusted_keys)
    for model in sorted(set(specs) | set(registry.models())):
        if model in specs:
            print(specs[model].describe())
            continue
        servable = newest_verified(registry, model, trusted, settings.allow_unsigned)
        served = "nothing verifies" if servable is None else f"stable {servable}"
        print(f"{model}  {served}  (no spec: the newest version that verifies; "
              f"`streamserve deploy {model} VERSION` to pin one)")
    return 0


def _audit(settings: Settings, args: argparse.Namespace) -> int:
    from agents.kafka.audit import read_entries
    from pipeline.audit import parse_since, render, select

    since = None if args.since is None else parse_since(args.since, time.time())
    entries = select(asyncio.run(read_entries(settings)), model=args.model, subject=args.subject,
                     actions=args.action, since=since)
    if args.json:
        for entry in entries:
            print(orjson.dumps(entry.to_json()).decode())
    elif entries:
        print(render(entries))
    return 0
