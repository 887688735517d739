"""The least-privilege ACL layout of one streamserve deployment, as data.

``layout`` says what each principal may do, from the topic names, the app id and three
principals (``Principals``):

- clients write requests and labels and read predictions and dead letters; they read
  without a consumer group, so they need none;
- workers read requests, labels and the control topic; write predictions, dead letters,
  samples, drift reports, drift rows, shadow answers, quality reports and audit entries (a
  refused model version is audited); read and write the label join; use their two consumer groups (the app id, and ``<app id>.faust`` for Faust)
  and their transactional ids (``<app id>-<worker>``, exactly-once mode); and own Faust's
  internal topics, whose names start with ``<app id>.faust`` (they create them);
- admins may do anything with the deployment's topics (they alone write the control
  topic and read samples and audit) and look at the serving group's offsets.

``plan`` compares the layout with the bindings a cluster holds and says what to add and
what to remove: a binding is streamserve's to remove when it allows one of these
principals something on this deployment's resources (``Scope``). Deny bindings are never
removed: dropping one would widen access behind an operator's back.

The numbers are Kafka's wire codes (``org.apache.kafka.common.acl``/``resource``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import IntEnum

from pipeline.config import Topics


class ResourceType(IntEnum):
    TOPIC = 2
    GROUP = 3
    CLUSTER = 4
    TRANSACTIONAL_ID = 5
    DELEGATION_TOKEN = 6
    USER = 7

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", " ")


class PatternType(IntEnum):
    LITERAL = 3
    PREFIXED = 4


class Operation(IntEnum):
    ALL = 2
    READ = 3
    WRITE = 4
    CREATE = 5
    DELETE = 6
    ALTER = 7
    DESCRIBE = 8
    CLUSTER_ACTION = 9
    DESCRIBE_CONFIGS = 10
    ALTER_CONFIGS = 11
    IDEMPOTENT_WRITE = 12
    CREATE_TOKENS = 13
    DESCRIBE_TOKENS = 14


class Permission(IntEnum):
    DENY = 2
    ALLOW = 3


# What an operation lets a principal do besides itself (Kafka's implication rules).
_IMPLIES = {Operation.READ: {Operation.DESCRIBE}, Operation.WRITE: {Operation.DESCRIBE},
            Operation.DELETE: {Operation.DESCRIBE}, Operation.ALTER: {Operation.DESCRIBE},
            Operation.ALTER_CONFIGS: {Operation.DESCRIBE_CONFIGS}}


@dataclass(frozen=True, slots=True, order=True)
class AclBinding:
    """One Kafka ACL: ``principal`` may (or, denied, may not) do ``operation`` on a resource
    named ``name`` (or, PREFIXED, on every resource whose name starts with it), from ``host``."""

    principal: str
    resource_type: ResourceType
    name: str
    operation: Operation
    pattern: PatternType = PatternType.LITERAL
    permission: Permission = Permission.ALLOW
    host: str = "*"

    def covers(self, resource_type: ResourceType, name: str) -> bool:
        return resource_type == self.resource_type and (
            name == self.name if self.pattern == PatternType.LITERAL else name.startswith(self.name))

    def allows(self, operation: Operation) -> bool:
        return self.permission == Permission.ALLOW and (
            self.operation in (operation, Operation.ALL) or operation in _IMPLIES.get(self.operation, ()))

    def describe(self) -> str:
        """One line, e.g. ``User:client WRITE topic streamserve.requests`` (a prefix ends in *)."""
        name = f"{self.name}*" if self.pattern == PatternType.PREFIXED else self.name
        verb = self.operation.name if self.permission == Permission.ALLOW else f"DENY {self.operation.name}"
        host = "" if self.host == "*" else f" from {self.host}"
        return f"{self.principal} {verb} {self.resource_type.label} {name}{host}"


@dataclass(frozen=True, slots=True)
class Principals:
    """Who plays each role (Kafka principals, ``User:NAME`` for SASL users)."""

    client: str = "User:client"
    worker: str = "User:worker"
    admin: str = "User:admin"

    def __post_init__(self) -> None:
        for role in ("client", "worker", "admin"):
            value = getattr(self, role)
            if ":" not in value or not value.split(":", 1)[1]:
                raise ValueError(f"the {role} principal must look like User:NAME, got {value!r}")
        if len({self.client, self.worker, self.admin}) < 3:
            raise ValueError("client, worker and admin must be three different principals: "
                             "each role gets its own least-privilege bindings")

    def all(self) -> tuple[str, str, str]:
        return self.client, self.worker, self.admin


@dataclass(frozen=True, slots=True)
class Scope:
    """The resources of one deployment: its topics, Faust's, its groups and transactions."""

    topics: Topics
    app_id: str

    @property
    def faust_prefix(self) -> str:
        return f"{self.app_id}.faust"

    @property
    def transactional_prefix(self) -> str:
        return f"{self.app_id}-"

    def holds(self, binding: AclBinding) -> bool:
        name = binding.name
        if binding.resource_type == ResourceType.TOPIC:
            return name.startswith((f"{self.topics.prefix}.", self.faust_prefix))
        if binding.resource_type == ResourceType.GROUP:
            return name == self.app_id or name.startswith(f"{self.app_id}.")
        if binding.resource_type == ResourceType.TRANSACTIONAL_ID:
            return name.startswith(self.transactional_prefix)
        return False


def layout(scope: Scope, principals: Principals = Principals(), *,
           workers_decide_canaries: bool = False) -> frozenset[AclBinding]:
    """Every binding a deployment needs, and no more (see the module's docstring).

    ``workers_decide_canaries`` lets workers write the control topic too: the canary
    judge runs in them, and without it their automatic rollbacks and promotions are
    refused (logged and audited) and wait for an admin."""
    t, who = scope.topics, principals
    topic, group = ResourceType.TOPIC, ResourceType.GROUP
    read, write = Operation.READ, Operation.WRITE
    prefixed = PatternType.PREFIXED
    bindings = [
        *(AclBinding(who.client, topic, name, write) for name in (t.requests, t.labels)),
        *(AclBinding(who.client, topic, name, read) for name in (t.predictions, t.deadletter)),
        *(AclBinding(who.worker, topic, name, read)
          for name in (t.requests, t.control, t.drift_rows, t.labels, t.label_join)),
        *(AclBinding(who.worker, topic, name, write)
          for name in (t.predictions, t.deadletter, t.samples, t.drift, t.drift_rows, t.shadow,
                       t.audit, t.label_join, t.quality)),
        *(AclBinding(who.worker, group, name, read) for name in (scope.app_id, scope.faust_prefix)),
        AclBinding(who.worker, ResourceType.TRANSACTIONAL_ID, scope.transactional_prefix, write,
                   prefixed),
        *(AclBinding(who.worker, topic, scope.faust_prefix, op, prefixed)
          for op in (Operation.CREATE, read, write)),
        AclBinding(who.admin, topic, f"{t.prefix}.", Operation.ALL, prefixed),
        AclBinding(who.admin, group, scope.app_id, Operation.DESCRIBE),
    ]
    if workers_decide_canaries:
        bindings.append(AclBinding(who.worker, topic, t.control, write))
    return frozenset(bindings)


@dataclass(frozen=True, slots=True)
class AclPlan:
    """What converging a cluster's bindings on the layout takes."""

    add: tuple[AclBinding, ...]
    remove: tuple[AclBinding, ...]

    @property
    def empty(self) -> bool:
        return not self.add and not self.remove


def plan(current: Iterable[AclBinding], wanted: frozenset[AclBinding], scope: Scope,
         principals: Principals = Principals()) -> AclPlan:
    """The bindings to add (wanted, missing) and to remove (allow bindings of these
    principals on ``scope``'s resources that the layout does not want)."""
    have = set(current)
    stale = {b for b in have if b not in wanted and b.principal in principals.all()
             and b.permission == Permission.ALLOW and scope.holds(b)}
    return AclPlan(add=tuple(sorted(wanted - have)), remove=tuple(sorted(stale)))


def holders(bindings: Iterable[AclBinding], resource_type: ResourceType, name: str,
            operation: Operation) -> list[str]:
    """The principals whose bindings allow ``operation`` on the resource, sorted."""
    return sorted({b.principal for b in bindings
                   if b.covers(resource_type, name) and b.allows(operation)})


def refusal(principal: str, resource_type: ResourceType, name: str, operation: Operation | None,
            bindings: Iterable[AclBinding], *, fix: str | None = None, fixed_by: str | None = None,
            how_to_become: Mapping[str, str] | None = None) -> str:
    """Why ``principal`` was refused ``operation`` (None: unknown, read or write) on a
    resource, and what to do: ``fix`` (with ``fixed_by``'s credentials), or what the layout
    ``bindings`` say. ``how_to_become`` maps principals to how one acts as them (e.g. an
    env file to source)."""
    verb = "use" if operation is None else operation.name.lower().replace("_", " ")
    what = f"{principal} may not {verb} {resource_type.label} {name}"
    asked = (operation,) if operation is not None else (Operation.READ, Operation.WRITE)
    allowed = ([fixed_by] if fixed_by else
               sorted({p for op in asked for p in holders(bindings, resource_type, name, op)}))
    if fix is None and principal in allowed:
        return (f"{what}, though the streamserve ACL layout allows it: an admin applies the layout "
                "with `streamserve acl apply` (with this deployment's STREAMSERVE_TOPIC_PREFIX "
                "and STREAMSERVE_APP_ID)")
    if fix is None:
        fix = (f"the streamserve ACL layout lets {' and '.join(allowed)} do that; use their "
               "credentials" if allowed else
               "the streamserve ACL layout grants that to no role; ask the cluster's admin")
    hints = [how for who in allowed if who != principal and (how := (how_to_become or {}).get(who))]
    return f"{what}: {fix}" + (f" ({'; '.join(hints)})" if hints else "")
