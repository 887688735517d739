"""Client quotas on the broker (KIP-546), set, read and removed; every change audited.

aiokafka 0.14 has no requests for them, so DescribeClientQuotas (API key 48) and
AlterClientQuotas (49) are defined here in its protocol style, version 0 (brokers from
Kafka 2.6 on, KRaft ones included), and sent through an admin client of ``agents.kafka.topics``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import for_code
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import (
    Array,
    Boolean,
    Float64,
    Int8,
    Int16,
    Int32,
    Schema,
    String,
)

from agents.kafka.audit import record
from agents.kafka.connect import REFUSALS, refused
from agents.kafka.topics import admin_client, send_request
from pipeline.acl import Operation
from pipeline.config import Settings
from pipeline.broker_quotas import ClientQuota, Entity, QuotaError, describe_entity

_STRING = String("utf-8")  # nullable: None goes out as length -1 (a default entity's name)
_ENTITY = Array(("entity_type", _STRING), ("entity_name", _STRING))

# DescribeClientQuotas match types: one name, the kind's default entity (2, any, is unused).
MATCH_EXACT, MATCH_DEFAULT = 0, 1


class DescribeClientQuotasResponse_v0(Response):
    API_KEY = 48
    API_VERSION = 0
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("error_code", Int16),
        ("error_message", _STRING),
        ("entries", Array(("entity", _ENTITY),
                          ("values", Array(("key", _STRING), ("value", Float64))))),
    )


class DescribeClientQuotasRequest_v0(RequestStruct):
    API_KEY = 48
    API_VERSION = 0
    RESPONSE_TYPE = DescribeClientQuotasResponse_v0
    SCHEMA = Schema(
        ("components", Array(("entity_type", _STRING), ("match_type", Int8), ("match", _STRING))),
        ("strict", Boolean),
    )


class DescribeClientQuotasRequest(Request[DescribeClientQuotasRequest_v0]):
    """``components``: (entity type, match type, name) filters; ``strict``: only entities
    with no other kinds than those filtered."""

    API_KEY = 48

    def __init__(self, components: list[tuple[str, int, str | None]], strict: bool) -> None:
        self._components = components
        self._strict = strict

    def build(self, request_struct_class: type[DescribeClientQuotasRequest_v0]
              ) -> DescribeClientQuotasRequest_v0:
        return request_struct_class(self._components, self._strict)


class AlterClientQuotasResponse_v0(Response):
    API_KEY = 49
    API_VERSION = 0
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("entries", Array(("error_code", Int16), ("error_message", _STRING), ("entity", _ENTITY))),
    )


class AlterClientQuotasRequest_v0(RequestStruct):
    API_KEY = 49
    API_VERSION = 0
    RESPONSE_TYPE = AlterClientQuotasResponse_v0
    SCHEMA = Schema(
        ("entries", Array(("entity", _ENTITY), ("ops", Array(("key", _STRING), ("value", Float64),
                                                             ("remove", Boolean))))),
        ("validate_only", Boolean),
    )


_Op = tuple[str, float, bool]


class AlterClientQuotasRequest(Request[AlterClientQuotasRequest_v0]):
    """``entries``: (entity, ops) where an op is (key, value, remove)."""

    API_KEY = 49

    def __init__(self, entries: list[tuple[list[tuple[str, str | None]], list[_Op]]],
                 validate_only: bool = False) -> None:
        self._entries = entries
        self._validate_only = validate_only

    def build(self, request_struct_class: type[AlterClientQuotasRequest_v0]
              ) -> AlterClientQuotasRequest_v0:
        return request_struct_class(self._entries, self._validate_only)


async def describe_quotas(settings: Settings, who: Entity | None = None) -> list[ClientQuota]:
    """Every quota the broker holds; with ``who``, that entity's alone (none: empty)."""
    async with admin_client(settings) as admin:
        return await _describe(settings, admin, who)


async def set_quota(settings: Settings, who: Entity, values: Mapping[str, float]) -> ClientQuota:
    """Set ``values`` of ``who``'s quota (its other values stay); returns the quota once the
    broker applies it, audited."""
    async with admin_client(settings) as admin:
        before = await _quota(settings, admin, who)
        await _alter(settings, admin, who, values.items(), ())
        after = await _applied(settings, admin, who, lambda quota: quota is not None
                               and values.items() <= quota.values.items())
    await record(settings, action="quota_set", subject=f"quota:{describe_entity(who)}",
                 before=None if before is None else before.to_json(), after=after.to_json())
    return after


async def remove_quota(settings: Settings, who: Entity) -> ClientQuota:
    """Remove ``who``'s quota, every value of it; returns the quota it was once the broker
    applies it, audited."""
    async with admin_client(settings) as admin:
        before = await _quota(settings, admin, who)
        if before is None:
            raise QuotaError(f"{describe_entity(who)} has no quota; `streamserve quota list` "
                             "shows the quotas there are")
        await _alter(settings, admin, who, (), before.values)
        await _applied(settings, admin, who, lambda quota: quota is None)
    await record(settings, action="quota_remove", subject=f"quota:{describe_entity(who)}",
                 before=before.to_json(), after=None)
    return before


async def _describe(settings: Settings, admin: AIOKafkaAdminClient,
                    who: Entity | None) -> list[ClientQuota]:
    components = [] if who is None else [
        (kind, MATCH_DEFAULT if name is None else MATCH_EXACT, name) for kind, name in who]
    response = await send_request(admin, DescribeClientQuotasRequest(components,
                                                                     strict=who is not None))
    _check(settings, response.error_code, response.error_message, "read the quotas",
           Operation.DESCRIBE_CONFIGS)
    return [ClientQuota(tuple(sorted(entity)), dict(values)) for entity, values in response.entries]


async def _quota(settings: Settings, admin: AIOKafkaAdminClient, who: Entity) -> ClientQuota | None:
    return next(iter(await _describe(settings, admin, who)), None)


async def _alter(settings: Settings, admin: AIOKafkaAdminClient, who: Entity,
                 values: Iterable[tuple[str, float]], removed: Iterable[str]) -> None:
    ops = [(key, value, False) for key, value in values] + [(key, 0.0, True) for key in removed]
    response = await send_request(admin, AlterClientQuotasRequest([(list(who), ops)]))
    for error_code, error_message, _ in response.entries:
        _check(settings, error_code, error_message, f"change the quota of {describe_entity(who)}",
               Operation.ALTER_CONFIGS)


async def _applied(settings: Settings, admin: AIOKafkaAdminClient, who: Entity,
                   done: Callable[[ClientQuota | None], bool],
                   timeout: float = 10) -> ClientQuota | None:
    """``who``'s quota once ``done`` with it: a KRaft broker applies a change from its
    metadata log moments after acknowledging it."""
    deadline = time.monotonic() + timeout
    while not done(quota := await _quota(settings, admin, who)):
        if time.monotonic() > deadline:
            raise QuotaError(f"the broker at {settings.bootstrap} acknowledged the change of the "
                             f"quota of {describe_entity(who)} but does not show it after "
                             f"{timeout:.0f} s; `streamserve quota list` shows what it holds")
        await asyncio.sleep(0.1)
    return quota


def _check(settings: Settings, error_code: int, error_message: str | None, what: str,
           operation: Operation) -> None:
    if not error_code:
        return
    error = for_code(error_code)
    if error in REFUSALS:  # the principal may not: say who may, as every refusal does
        raise refused(settings, error(), operation)
    raise QuotaError(f"the broker at {settings.bootstrap} would not {what}: {error.__name__} "
                     f"({error_message or error.description})")
