"""Kafka ACLs: read a cluster's bindings and converge them on streamserve's layout.

The requests are aiokafka's own protocol classes (``aiokafka.protocol.admin``), sent
through its admin client's connections; the layout itself is pure data
(``pipeline.acl``).
"""

from __future__ import annotations

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import ClusterAuthorizationFailedError, SecurityDisabled, for_code
from aiokafka.protocol.admin import (
    CreateAclsRequest,
    DeleteAclsRequest,
    DescribeAclsRequest,
)

from agents.kafka.connect import KafkaAccessError, refused
from agents.kafka.topics import admin_client, ensure_topics, send_request
from pipeline.acl import (
    AclBinding,
    AclPlan,
    Operation,
    PatternType,
    Permission,
    Principals,
    ResourceType,
    Scope,
    layout,
    plan,
)
from pipeline.config import Settings

_ANY = 1  # Kafka's "any" in every enum of an ACL filter


async def list_acls(settings: Settings) -> list[AclBinding]:
    """Every binding the cluster holds, sorted."""
    async with admin_client(settings) as admin:
        return sorted(await _describe(settings, admin))


async def apply_layout(settings: Settings, principals: Principals, *,
                       workers_decide_canaries: bool = False) -> AclPlan:
    """Create the serving topics, then add the layout's missing bindings and remove the
    stale ones of ``principals`` on this deployment's resources; returns what changed."""
    scope = Scope(settings.topics, settings.kafka.app_id)
    wanted = layout(scope, principals, workers_decide_canaries=workers_decide_canaries)
    async with admin_client(settings) as admin:
        changes = plan(await _describe(settings, admin), wanted, scope, principals)
        await ensure_topics(settings)
        for binding in changes.add:
            response = await send_request(admin, CreateAclsRequest(*_fields(binding)))
            for code, message in response.creation_responses:
                _check(settings, code, message, f"adding {binding.describe()}")
        for binding in changes.remove:
            response = await send_request(admin, DeleteAclsRequest(*_fields(binding)))
            for code, message, _ in response.filter_responses:
                _check(settings, code, message, f"removing {binding.describe()}")
    return changes


async def _describe(settings: Settings, admin: AIOKafkaAdminClient) -> set[AclBinding]:
    request = DescribeAclsRequest(_ANY, None, _ANY, None, None, _ANY, _ANY)
    response = await send_request(admin, request)
    _check(settings, response.error_code, response.error_message, "reading the ACLs")
    return {AclBinding(principal, ResourceType(kind), name, Operation(operation),
                       PatternType(pattern), Permission(permission), host)
            for kind, name, pattern, acls in response.resources
            for principal, host, operation, permission in acls}


def _fields(binding: AclBinding) -> tuple[int | str, ...]:
    """The binding in the order of aiokafka's ACL request classes."""
    return (binding.resource_type, binding.name, binding.pattern, binding.principal,
            binding.host, binding.operation, binding.permission)


def _check(settings: Settings, code: int, message: str | None, doing: str) -> None:
    if code == 0:
        return
    error = for_code(code)
    if error is ClusterAuthorizationFailedError:
        raise refused(settings, error(), Operation.ALTER, fixed_by=Principals().admin,
                      fix="ACLs are read and changed with admin credentials")
    if error is SecurityDisabled:
        raise KafkaAccessError(f"{settings.bootstrap} has no authorizer, so it keeps no ACLs: use a "
                               "secured cluster (locally: `streamserve broker start --secure`)")
    raise KafkaAccessError(f"{doing} on {settings.bootstrap} failed: {error.__name__}"
                           + (f" ({message})" if message else ""))
