"""pipeline.acl: the least-privilege layout, converging on it, and refusals in words."""

from __future__ import annotations

import pytest

from pipeline.acl import (
    AclBinding,
    Operation,
    PatternType,
    Permission,
    Principals,
    ResourceType,
    Scope,
    holders,
    layout,
    plan,
    refusal,
)
from pipeline.config import Topics

SCOPE = Scope(Topics("ss"), "app")
LAYOUT = layout(SCOPE)
TOPIC, GROUP = ResourceType.TOPIC, ResourceType.GROUP
READ, WRITE = Operation.READ, Operation.WRITE


def who(name: str, operation: Operation, kind: ResourceType = TOPIC) -> list[str]:
    return holders(LAYOUT, kind, name, operation)


def test_clients_write_requests_and_labels_and_read_predictions_and_dead_letters_only() -> None:
    mine = {b.describe() for b in LAYOUT if b.principal == "User:client"}
    assert mine == {"User:client WRITE topic ss.requests", "User:client WRITE topic ss.labels",
                    "User:client READ topic ss.predictions", "User:client READ topic ss.deadletter"}


@pytest.mark.parametrize(("topic", "operation", "allowed"), [
    ("ss.requests", READ, ["User:admin", "User:worker"]),
    ("ss.requests", WRITE, ["User:admin", "User:client"]),
    ("ss.predictions", WRITE, ["User:admin", "User:worker"]),
    ("ss.predictions", READ, ["User:admin", "User:client"]),
    ("ss.control", WRITE, ["User:admin"]),
    ("ss.control", READ, ["User:admin", "User:worker"]),
    ("ss.samples", READ, ["User:admin"]),
    ("ss.audit", READ, ["User:admin"]),
    ("ss.audit", WRITE, ["User:admin", "User:worker"]),  # a worker audits refused versions
    ("ss.drift-rows", READ, ["User:admin", "User:worker"]),
    ("ss.labels", READ, ["User:admin", "User:worker"]),
    ("ss.label-join", WRITE, ["User:admin", "User:worker"]),
    ("ss.quality", READ, ["User:admin"]),
    ("app.faust-drift-changelog", Operation.CREATE, ["User:worker"]),
    ("app.faust-drift-changelog", READ, ["User:worker"]),
    ("other.requests", READ, []),
])
def test_who_may_do_what_on_each_topic(topic: str, operation: Operation, allowed: list[str]) -> None:
    assert who(topic, operation) == allowed


def test_reading_or_writing_implies_describing() -> None:
    assert who("ss.deadletter", Operation.DESCRIBE) == ["User:admin", "User:client", "User:worker"]
    assert who("ss.samples", Operation.DESCRIBE) == ["User:admin", "User:worker"]


def test_workers_use_their_two_groups_and_their_transactional_ids() -> None:
    assert who("app", READ, GROUP) == who("app.faust", READ, GROUP) == ["User:worker"]
    assert who("app", Operation.DESCRIBE, GROUP) == ["User:admin", "User:worker"]
    assert who("app-host-42", WRITE, ResourceType.TRANSACTIONAL_ID) == ["User:worker"]
    assert who("other-host-42", WRITE, ResourceType.TRANSACTIONAL_ID) == []


def test_only_with_workers_deciding_canaries_may_workers_write_control() -> None:
    deciding = layout(SCOPE, workers_decide_canaries=True)
    assert holders(deciding, TOPIC, "ss.control", WRITE) == ["User:admin", "User:worker"]
    assert deciding - LAYOUT == {AclBinding("User:worker", TOPIC, "ss.control", WRITE)}


def test_the_layout_lies_within_its_scope_and_names_its_principals() -> None:
    principals = Principals("User:c", "User:w", "User:a")
    bindings = layout(SCOPE, principals)
    assert all(SCOPE.holds(b) for b in bindings)
    assert {b.principal for b in bindings} == {"User:c", "User:w", "User:a"}


@pytest.mark.parametrize(("kind", "name", "held"), [
    (TOPIC, "ss.requests", True), (TOPIC, "ss.", True), (TOPIC, "app.faust-x", True),
    (TOPIC, "ssx.requests", False), (TOPIC, "ss", False),
    (GROUP, "app", True), (GROUP, "app.faust", True), (GROUP, "app2", False),
    (ResourceType.TRANSACTIONAL_ID, "app-w1", True), (ResourceType.TRANSACTIONAL_ID, "app2-w1", False),
    (ResourceType.CLUSTER, "kafka-cluster", False),
])
def test_the_scope_holds_this_deployments_resources_only(kind: ResourceType, name: str, held: bool) -> None:
    assert SCOPE.holds(AclBinding("User:client", kind, name, READ)) is held


def test_plan_adds_what_is_missing_and_removes_only_stale_allows_of_these_principals() -> None:
    stale = AclBinding("User:client", TOPIC, "ss.samples", READ)
    deny = AclBinding("User:client", TOPIC, "ss.samples", READ, permission=Permission.DENY)
    foreign = AclBinding("User:bob", TOPIC, "ss.samples", READ)
    elsewhere = AclBinding("User:client", TOPIC, "other.samples", READ)
    missing = AclBinding("User:client", TOPIC, "ss.requests", WRITE)
    current = (LAYOUT - {missing}) | {stale, deny, foreign, elsewhere}
    changes = plan(current, LAYOUT, SCOPE)
    assert changes.add == (missing,)
    assert changes.remove == (stale,)


def test_a_converged_cluster_needs_nothing() -> None:
    assert plan(LAYOUT, LAYOUT, SCOPE).empty


def test_a_prefixed_binding_covers_names_that_start_with_it() -> None:
    binding = AclBinding("User:a", TOPIC, "ss.", Operation.ALL, PatternType.PREFIXED)
    assert binding.covers(TOPIC, "ss.anything") and not binding.covers(GROUP, "ss.anything")
    assert binding.describe() == "User:a ALL topic ss.*"
    assert AclBinding("User:a", TOPIC, "t", READ, permission=Permission.DENY,
                      host="10.0.0.1").describe() == "User:a DENY READ topic t from 10.0.0.1"


@pytest.mark.parametrize(("client", "worker", "admin", "message"), [
    ("client", "User:worker", "User:admin", "must look like User:NAME"),
    ("User:", "User:worker", "User:admin", "must look like User:NAME"),
    ("User:x", "User:x", "User:admin", "three different principals"),
])
def test_principals_are_checked(client: str, worker: str, admin: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Principals(client, worker, admin)


def test_a_refusal_names_the_principal_the_resource_and_who_may() -> None:
    text = refusal("User:client", TOPIC, "ss.samples", READ, LAYOUT,
                   how_to_become={"User:admin": "`set -a; . admin.env`"})
    assert text == ("User:client may not read topic ss.samples: the streamserve ACL layout lets "
                    "User:admin do that; use their credentials (`set -a; . admin.env`)")


def test_a_refusal_with_a_fix_points_at_who_can() -> None:
    text = refusal("User:worker", TOPIC, "ss.control", WRITE, LAYOUT,
                   fix="lifecycle commands need admin credentials", fixed_by="User:admin",
                   how_to_become={"User:admin": "`set -a; . admin.env`"})
    assert text == ("User:worker may not write topic ss.control: lifecycle commands need admin "
                    "credentials (`set -a; . admin.env`)")


def test_a_refusal_the_layout_would_allow_asks_for_acl_apply() -> None:
    text = refusal("User:worker", TOPIC, "ss.requests", READ, LAYOUT)
    assert text.startswith("User:worker may not read topic ss.requests, though the streamserve "
                           "ACL layout allows it: an admin applies the layout with `streamserve "
                           "acl apply`")


def test_a_refusal_no_role_could_avoid_says_so() -> None:
    text = refusal("User:client", ResourceType.CLUSTER, "kafka-cluster", None, LAYOUT)
    assert text == ("User:client may not use cluster kafka-cluster: the streamserve ACL layout "
                    "grants that to no role; ask the cluster's admin")
