"""Kafka client quotas, the pure part: which clients a broker-side quota holds for and
how much. (Per-tenant quotas, enforced by the workers, are ``pipeline.tenant_quotas``.)

The broker enforces these (``agents/ops/broker_quotas.py`` sends the requests). A quota's
**entity** names a user (the Kafka principal's name: ``alice`` for ``User:alice``), a
client id, or both; ``<default>`` stands for the default entity of its kind, which
holds for every user (or client id) without a quota of its own. Its **values**:

    producer_byte_rate   bytes per second a client may produce (per broker)
    consumer_byte_rate   bytes per second it may fetch (per broker)
    request_percentage   share of one request-handler and network thread, in percent

A client over its quota is throttled: the broker delays its responses, it is not refused.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pipeline.errors import StreamserveError

DEFAULT = "<default>"
BYTE_RATES = ("producer_byte_rate", "consumer_byte_rate")
KEYS = (*BYTE_RATES, "request_percentage")

# An entity: (kind, name) pairs sorted by kind; a name of None is the kind's default.
Entity = tuple[tuple[str, str | None], ...]


class QuotaError(StreamserveError, ValueError):
    """A quota cannot be set, read or removed as asked; the message says what to change."""


def entity(user: str | None = None, client_id: str | None = None) -> Entity:
    """The entity of ``--user`` and ``--client-id`` (``<default>`` for the default one)."""
    if user is None and client_id is None:
        raise QuotaError("name whom the quota holds for: --user NAME (a Kafka principal's "
                         "name, or <default>), --client-id ID, or both")
    if user is not None:
        user = user.removeprefix("User:")  # the principal as ACLs and the audit trail show it
    named = {"client-id": client_id, "user": user}
    for kind, name in named.items():
        if name is not None and not name.strip():
            raise QuotaError(f"the {kind} of a quota must not be empty; {DEFAULT} is the default")
    return tuple((kind, None if name == DEFAULT else name)
                 for kind, name in sorted(named.items()) if name is not None)


def describe_entity(who: Entity) -> str:
    """``user=alice,client-id=web`` (the user first, as Kafka writes it)."""
    return ",".join(f"{kind}={DEFAULT if name is None else name}"
                    for kind, name in sorted(who, key=lambda pair: pair[0] != "user"))


def quota_values(producer_byte_rate: float | None = None, consumer_byte_rate: float | None = None,
                 request_percentage: float | None = None) -> dict[str, float]:
    """The values given (at least one): byte rates whole and at least 1, percentages above 0."""
    given = {key: value for key, value in zip(KEYS, (producer_byte_rate, consumer_byte_rate,
                                                     request_percentage), strict=True)
             if value is not None}
    if not given:
        raise QuotaError("give at least one of --producer-byte-rate, --consumer-byte-rate, "
                         "--request-percentage")
    for key, value in given.items():
        option = "--" + key.replace("_", "-")
        if not math.isfinite(value) or value <= 0:
            raise QuotaError(f"{option} must be a positive number, got {value}")
        if key in BYTE_RATES and (value != int(value) or value < 1):
            raise QuotaError(f"{option} must be a whole number of bytes per second, at least 1; "
                             f"got {value}")
    return {key: float(value) for key, value in given.items()}


@dataclass(frozen=True, slots=True)
class ClientQuota:
    """One entity's quota as the broker holds it."""

    entity: Entity
    values: Mapping[str, float]

    def to_json(self) -> dict[str, float]:
        """The values, byte rates as whole numbers (the audit trail's before and after)."""
        return {key: int(v) if key in BYTE_RATES else v for key, v in self.values.items()}


def render(quotas: Sequence[ClientQuota]) -> str:
    """A table for ``streamserve quota list``."""
    header = ("ENTITY", "PRODUCER B/S", "CONSUMER B/S", "REQUEST %")
    rows = [(describe_entity(q.entity), *(_cell(q.to_json().get(key)) for key in KEYS))
            for q in sorted(quotas, key=lambda q: describe_entity(q.entity))]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
                     for row in [header, *rows])


def _cell(value: float | None) -> str:
    return "-" if value is None else str(value) if isinstance(value, int) else f"{value:g}"
