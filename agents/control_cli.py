"""``streamserve deploy|canary|shadow|promote|rollback|fallback|routes|audit``.

Each change reads the model's current spec from the control topic, applies one pure
transition (``pipeline.routing``), and writes the new spec and an audit entry; every
worker applies it within seconds, once the versions it names are loaded and warm.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
from collections.abc import Callable

from pipeline import routing
from pipeline.config import Settings
from pipeline.routing import DeploymentSpec


def add_control_commands(commands: argparse._SubParsersAction, command: Callable) -> None:
    deploy = command("deploy", _deploy, "serve VERSION of MODEL as its stable version")
    _model_version(deploy)
    deploy.add_argument("--max-batch", type=int, default=None,
                        help="most requests of this model in one model call (default: the worker's)")
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
    command("routes", _routes, "every model's deployment: stable, canary, shadows, fallback")
    audit = command("audit", _audit, "the control plane's audit trail, oldest first")
    audit.add_argument("--model", help="only this model's entries")


def _model_version(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model name, e.g. iris")
    parser.add_argument("version", help="registered version, e.g. 2")


def _change(settings: Settings, model: str, action: str,
            transition: Callable[[DeploymentSpec | None], DeploymentSpec],
            *check: str) -> int:
    from agents.control import change, check_servable, operator

    for version in check:
        check_servable(settings, model, version)
    new = asyncio.run(change(settings, model, transition, action=action, who=operator(),
                             source="cli"))
    assert new is not None
    print(new.describe())
    return 0


def _deploy(settings: Settings, args: argparse.Namespace) -> int:
    def deploy(spec: DeploymentSpec | None) -> DeploymentSpec:
        new = routing.deploy(spec, args.model, args.version)
        return new if args.max_batch is None else dataclasses.replace(new, max_batch=args.max_batch)
    return _change(settings, args.model, "deploy", deploy, args.version)


def _canary(settings: Settings, args: argparse.Namespace) -> int:
    return _change(settings, args.model, "canary",
                   lambda spec: routing.start_canary(_existing(spec, args.model), args.version,
                                                     args.weight), args.version)


def _shadow(settings: Settings, args: argparse.Namespace) -> int:
    if args.off:
        return _change(settings, args.model, "shadow_off",
                       lambda spec: routing.remove_shadow(_existing(spec, args.model), args.version))
    return _change(settings, args.model, "shadow",
                   lambda spec: routing.add_shadow(_existing(spec, args.model), args.version),
                   args.version)


def _promote(settings: Settings, args: argparse.Namespace) -> int:
    return _change(settings, args.model, "promote",
                   lambda spec: routing.promote(_existing(spec, args.model)))


def _rollback(settings: Settings, args: argparse.Namespace) -> int:
    check = () if args.version is None else (args.version,)
    return _change(settings, args.model, "rollback",
                   lambda spec: routing.rollback(_existing(spec, args.model), args.version), *check)


def _fallback(settings: Settings, args: argparse.Namespace) -> int:
    return _change(settings, args.model, "fallback",
                   lambda spec: routing.set_fallback(_existing(spec, args.model), args.version),
                   args.version)


def _existing(spec: DeploymentSpec | None, model: str) -> DeploymentSpec:
    if spec is None:
        raise routing.ControlError(f"{model} has no deployment yet; start with "
                                   f"`streamserve deploy {model} VERSION`")
    return spec


def _routes(settings: Settings, args: argparse.Namespace) -> int:
    from agents.control import read_specs
    from pipeline.registry import Registry

    specs = asyncio.run(read_specs(settings))
    registry = Registry(settings.registry)
    for model in sorted(set(specs) | set(registry.models())):
        if model in specs:
            print(specs[model].describe())
        else:
            print(f"{model}  stable {registry.latest(model)}  (no spec: the latest registered "
                  f"version; `streamserve deploy {model} VERSION` to pin one)")
    return 0


def _audit(settings: Settings, args: argparse.Namespace) -> int:
    from agents.control import read_audit

    for entry in asyncio.run(read_audit(settings)):
        if args.model is not None and entry.model != args.model:
            continue
        when = datetime.datetime.fromtimestamp(entry.when, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
        after = "-" if entry.after is None else DeploymentSpec.from_json(entry.after).describe()
        print(f"{when}Z  {entry.action:<14} {entry.model:<14} by {entry.who} ({entry.source})")
        print(f"    now: {after}")
        if entry.reason:
            print(f"    why: {entry.reason}")
    return 0
