"""The control plane's I/O: deployment specs on the compacted control topic, each change
written with its audit entry.

A change is a pure transition (``pipeline.routing``) of the model's current spec,
written as the new spec (key = model name) plus an audit entry. Workers follow the
topic (``agents.worker.deployer``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace

import orjson

from agents.kafka.audit import record
from agents.kafka.connect import start_producer
from agents.kafka.read import read_topic
from agents.kafka.topics import ensure_topics
from pipeline.config import Settings
from pipeline.registry import Registry, RegistryError
from pipeline.routing import ControlError, DeploymentSpec, unchanged
from pipeline.signing import SignatureError, TrustedKeys, verify_version

log = logging.getLogger(__name__)

Transition = Callable[[DeploymentSpec | None], DeploymentSpec]


async def read_specs(settings: Settings) -> dict[str, DeploymentSpec]:
    """The current spec of every model with one, as every worker follows them: each
    readable record that supersedes the one held (``DeploymentSpec.supersedes``)."""
    return (await _read(settings))[0]


async def _read(settings: Settings) -> tuple[dict[str, DeploymentSpec], dict[str, DeploymentSpec]]:
    """Per model: the spec the readers hold, and the last readable record (what
    compaction keeps)."""
    held: dict[str, DeploymentSpec] = {}
    last: dict[str, DeploymentSpec] = {}
    async for message in read_topic(settings, settings.topics.control, from_beginning=True,
                                    to_end=True):
        if (spec := spec_of(message.value, message.offset)) is not None:
            last[spec.model] = spec
            if spec.supersedes(held.get(spec.model)):
                held[spec.model] = spec
    return held, last


def spec_of(value: bytes | None, offset: int) -> DeploymentSpec | None:
    """The spec a control record holds; None for a tombstone or a record that cannot be
    read (a newer release's format, a stray write), which is logged and skipped, as
    workers skip it, so that one bad record stops no worker start and no command."""
    if value is None:
        return None
    try:
        return DeploymentSpec.from_json(orjson.loads(value))
    except (ControlError, orjson.JSONDecodeError, TypeError, AttributeError) as e:
        log.error("control record at offset %d cannot be read, skipped: %s", offset, e)
        return None


async def change(settings: Settings, model: str, transition: Transition, *, action: str,
                 source: str, reason: str = "",
                 expected_revision: int | None = None) -> DeploymentSpec | None:
    """Apply ``transition`` to ``model``'s current spec; write the new spec and its audit
    entry. With ``expected_revision``, nothing happens (None) unless the current spec is
    that revision: a change decided on a spec that has moved on since is dropped. A
    transition whose target state holds already returns the spec as it was
    (``routing.unchanged``): nothing is written then, and that spec is returned."""
    await ensure_topics(settings)
    current = (await read_specs(settings)).get(model)
    if expected_revision is not None and (current is None or current.revision != expected_revision):
        return None
    new = transition(current)
    if unchanged(current, new):
        return new
    producer = await start_producer(settings)
    try:
        await producer.send_and_wait(settings.topics.control, key=model.encode(),
                                     value=orjson.dumps(new.to_json()))
        # Audited at once, so the trail has a change before the workers' answers to it.
        await record(settings, action=action, subject=model, source=source, reason=reason,
                     before=None if current is None else current.to_json(), after=new.to_json(),
                     producer=producer)
        held, last = await _read(settings)
        winner = held.get(model)
        if winner is not None and winner.revision == new.revision and winner != new:
            # Another change of the same revision came first: every reader kept it and
            # skipped ours, but compaction would keep ours (the last record), and a worker
            # started later would serve it. Writing what readers hold on top settles both.
            if last.get(model) != winner:
                await producer.send_and_wait(settings.topics.control, key=model.encode(),
                                             value=orjson.dumps(replace(
                                                 winner, revision=winner.revision + 1).to_json()))
            now = " ".join(winner.describe().split())
            await record(settings, action=f"{action}_superseded", subject=model, source=source,
                         reason=f"another change of revision {new.revision} landed first; "
                                f"every reader kept it: {now}",
                         before=new.to_json(), after=winner.to_json(), producer=producer)
            raise ControlError(f"another change of {model} landed first (now: {now}); yours "
                               "did not take effect: check `streamserve routes` and run the "
                               "command again")
    finally:
        await producer.stop()
    return new


def check_servable(settings: Settings, model: str, version: str) -> None:
    """Raise ControlError unless ``model:version`` is registered and verifies: the CLI
    says so at once, rather than every worker refusing it later."""
    try:
        verify_version(Registry(settings.registry.root), model, version,
                       TrustedKeys.load(settings.registry.trusted_keys), settings.registry.allow_unsigned)
    except (RegistryError, SignatureError) as e:
        raise ControlError(str(e)) from None
