"""``streamserve deploy|canary|shadow|promote|rollback|fallback|batching|routes|audit``.

Each change reads the model's current spec from the control topic, applies one pure
transition (``pipeline.routing``), and writes the new spec and an audit entry; every
worker applies it within seconds, once the versions it names are loaded and warm.
Declarative, as ``kubectl apply``: a command whose target state holds already (``deploy
iris 1`` with 1 stable) writes nothing, prints the spec with ``(unchanged)`` and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable

import orjson

from agents.cli.parsing import Commands, command
from pipeline import routing
from pipeline.config import Settings
from pipeline.errors import UsageError
from pipeline.routing import DeploymentSpec


def register(commands: Commands) -> None:
    _model_version(command(commands, "deploy", _deploy, "serve VERSION of MODEL as its stable version"))
    canary = command(commands, "canary", _canary, "send a share of MODEL's traffic to VERSION")
    _model_version(canary)
    canary.add_argument("--weight", type=float, required=True,
                        help="share of requests, e.g. 0.2 (chosen by a hash of the request id)")
    shadow = command(commands, "shadow", _shadow, "copy MODEL's traffic to VERSION; its answers go to the "
                                        "shadow topic, never to clients")
    _model_version(shadow)
    shadow.add_argument("--off", action="store_true", help="stop shadowing VERSION")
    promote = command(commands, "promote", _promote, "make MODEL's canary its stable version")
    promote.add_argument("model")
    rollback = command(commands, "rollback", _rollback, "drop MODEL's canary, or go back to the previous "
                                              "(or the given) stable version")
    rollback.add_argument("model")
    rollback.add_argument("version", nargs="?", help="stable version to go back to")
    fallback = command(commands, "fallback", _fallback,
                       "serve VERSION while MODEL's version is failing (its circuit breaker "
                       "open); --clear: no fallback")
    fallback.add_argument("model", help="model name, e.g. iris")
    fallback.add_argument("version", nargs="?", help="registered version, e.g. 1")
    fallback.add_argument("--clear", action="store_true",
                          help="remove MODEL's fallback (instead of VERSION): a failing version's "
                               "requests then become circuit_open dead letters")
    batching = command(commands, "batching", _batching, "MODEL's batching settings, over the worker's")
    batching.add_argument("model")
    batching.add_argument("--max-batch", type=int, default=None,
                          help="most of its requests in one model call (default: STREAMSERVE_MAX_BATCH)")
    batching.add_argument("--batch-timeout-ms", type=int, default=None,
                          help="its queueing budget; a worker's queue holds every model's requests, "
                               "so the smallest budget among its models applies (default: "
                               "STREAMSERVE_BATCH_TIMEOUT_MS)")
    command(commands, "routes", _routes, "every model's deployment: stable, canary, shadows, fallback")
    audit = command(commands, "audit", _audit, "the audit trail, oldest first: deployment changes, "
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
    from agents.kafka.connect import refusals
    from pipeline.acl import Operation, Principals

    before: list[DeploymentSpec | None] = [None]

    def record_before(current: DeploymentSpec | None) -> DeploymentSpec:
        before[0] = current
        return transition(current)

    for version in check:
        check_servable(settings, model, version)
    with refusals(settings, Operation.WRITE, fix="lifecycle commands need admin credentials",
                  fixed_by=Principals().admin):
        new = asyncio.run(change(settings, model, record_before, action=action, source="cli"))
    assert new is not None
    print(f"{new.describe()}  (unchanged)" if routing.unchanged(before[0], new) else new.describe())
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
    if args.clear == (args.version is not None):
        raise UsageError(f"give either VERSION or --clear: `streamserve fallback {args.model} "
                         f"VERSION` serves VERSION while the others fail, `streamserve fallback "
                         f"{args.model} --clear` removes the fallback")
    if args.clear:
        return _change(settings, args.model, "fallback_clear",
                       lambda spec: routing.set_fallback(spec, None))
    return _change(settings, args.model, "fallback",
                   lambda spec: routing.set_fallback(spec, args.version),
                   args.version)


def _routes(settings: Settings, args: argparse.Namespace) -> int:
    from agents.kafka.control import read_specs
    from pipeline.registry import Registry
    from pipeline.signing import TrustedKeys, newest_verified

    specs = asyncio.run(read_specs(settings))
    registry = Registry(settings.registry.root)
    trusted = TrustedKeys.load(settings.registry.trusted_keys)
    for model in sorted(set(specs) | set(registry.models())):
        if model in specs:
            print(specs[model].describe())
            continue
        servable = newest_verified(registry, model, trusted, settings.registry.allow_unsigned)
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
