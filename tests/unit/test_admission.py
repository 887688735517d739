from dataclasses import replace

import orjson

from pipeline.admission import admit, forget_retryable
from pipeline.catalog import Catalog
from pipeline.decode import Request
from pipeline.dedupe import RecentIds
from pipeline.fast_decode import FastDecoder
from pipeline.outputs import Incoming, Kind, Outgoing
from pipeline.rejections import Reason
from pipeline.routing import DeploymentSpec, Route
from pipeline.schema import Feature, InputSchema
from pipeline.tenant_quotas import Limit, TenantQuotas, parse_quotas

SCHEMA = InputSchema((Feature("a"), Feature("b")))
CATALOG = Catalog({"m": {"1": SCHEMA, "2": SCHEMA}}, {"m": DeploymentSpec("m", "2", fallback="1")})
SENT_AT = 1_700_000_000.0  # the requests' Kafka timestamp, epoch seconds


def record(offset: int, **body) -> Incoming:
    request = {"id": f"r-{offset}", "model": "m", "features": {"a": 1.0, "b": 2.0}} | body
    return Incoming("requests", 3, offset, SENT_AT, orjson.dumps(request))


def run(batch, recent=None, quotas=None, now=SENT_AT + 0.05, clock=100.0, expected_seconds=0.0,
        tenants_from_records=False, taken=None):
    return admit(batch, FastDecoder(CATALOG, 65536, None), recent, quotas, now=now, clock=clock,
                 expected_seconds=expected_seconds, tenants_from_records=tenants_from_records,
                 taken=taken)


def reasons(admission):
    return [(r.offset, rejection.reason) for r, rejection in admission.rejected]


def test_requests_are_grouped_by_model_version_and_route_in_arrival_order():
    batch = [record(0), record(1, version="1"), record(2), record(3, version="2")]
    admission = run(batch)
    assert list(admission.groups) == [("m", "2", Route.STABLE), ("m", "1", Route.PINNED),
                                      ("m", "2", Route.PINNED)]
    stable = admission.groups[("m", "2", Route.STABLE)]
    assert [r.offset for r, _ in stable] == [0, 2]
    assert stable[0][1] == Request("r-0", "m", "2", [1.0, 2.0])
    assert not admission.rejected and not admission.quota_slots


def test_undecodable_records_are_rejected_in_batch_order_beside_the_admitted():
    batch = [Incoming("requests", 0, 0, SENT_AT, b"not json"), record(1),
             Incoming("requests", 0, 2, SENT_AT, None), record(3, model="nope")]
    admission = run(batch)
    assert reasons(admission) == [(0, Reason.MALFORMED_JSON), (2, Reason.EMPTY_REQUEST),
                                  (3, Reason.UNKNOWN_MODEL)]
    assert [r.offset for r, _ in admission.groups[("m", "2", Route.STABLE)]] == [1]


def test_a_repeated_id_is_a_duplicate_request_and_a_redelivery_is_not():
    recent = RecentIds(max_ids=10)
    first = record(0, id="same")
    admission = run([first, record(1, id="same"), first], recent=recent)
    assert reasons(admission) == [(1, Reason.DUPLICATE_REQUEST)]
    _, rejection = admission.rejected[0]
    assert rejection.id == "same" and rejection.model == "m"
    assert "already served" in rejection.error
    assert [r.offset for r, _ in admission.groups[("m", "2", Route.STABLE)]] == [0, 0]


def test_an_expired_deadline_is_deadline_exceeded_and_counted_for_its_group():
    # Waited 50 ms, and the batch is expected to take 100 ms more: past a 120 ms deadline.
    admission = run([record(0, deadline_ms=120), record(1, deadline_ms=500)],
                    expected_seconds=0.1)
    assert reasons(admission) == [(0, Reason.DEADLINE_EXCEEDED)]
    _, rejection = admission.rejected[0]
    assert rejection.error == ("the request had waited 50 ms and could not be answered within "
                               "its deadline_ms of 120; raise the deadline or add workers")
    assert rejection.id == "r-0" and rejection.model == "m"
    assert [r.offset for r, _ in admission.groups[("m", "2", Route.STABLE)]] == [1]


def test_an_expired_request_costs_its_tenant_a_token_but_holds_no_slot():
    """Review section 2: expired requests were free, so they were a way around a quota."""
    recent, quotas = RecentIds(max_ids=10), TenantQuotas(parse_quotas("acme:rate=1,burst=2"))
    batch = [record(0, id="x", tenant="acme"), record(1, id="x", deadline_ms=1, tenant="acme"),
             record(2, deadline_ms=1, tenant="acme"), record(3, tenant="acme")]
    # The repeat is a duplicate and takes no token; the expired request takes the second.
    assert reasons(run(batch, recent=recent, quotas=quotas)) == [
        (1, Reason.DUPLICATE_REQUEST), (2, Reason.ARRIVED_LATE), (3, Reason.QUOTA_EXCEEDED)]
    quotas = TenantQuotas(parse_quotas("beta:inflight=1"))
    admission = run([record(4, deadline_ms=1, tenant="beta"), record(5, tenant="beta")],
                    quotas=quotas)
    assert reasons(admission) == [(4, Reason.ARRIVED_LATE)]  # answered at once: no slot
    assert admission.quota_slots == {"beta": 1} and quotas.in_flight("beta") == 1


def test_a_quota_refusal_is_a_rejection_with_the_request_id_and_a_refusal_for_the_metrics():
    quotas = TenantQuotas(parse_quotas("acme:inflight=2; default:rate=1"))
    batch = [record(0, tenant="acme"), record(1, tenant="acme"), record(2, tenant="acme"),
             record(3), record(4)]
    admission = run(batch, quotas=quotas)
    assert reasons(admission) == [(2, Reason.QUOTA_EXCEEDED), (4, Reason.QUOTA_EXCEEDED)]
    assert [(r.quota, r.limit) for r in admission.refusals] == [("acme", Limit.INFLIGHT),
                                                                ("default", Limit.RATE)]
    _, refused = admission.rejected[0]
    assert refused.id == "r-2" and refused.model == "m" and "in-flight quota" in refused.error
    assert admission.quota_slots == {"acme": 2, "default": 1}


def test_a_tenant_under_no_quota_takes_no_slot():
    admission = run([record(0, tenant="beta")], quotas=TenantQuotas(parse_quotas("acme:rate=5")))
    assert not admission.rejected and not admission.quota_slots


def test_no_clock_is_read_admission_follows_the_clocks_passed_in():
    recent = RecentIds(max_ids=10, window_s=60)
    assert not run([record(0, id="x")], recent=recent, clock=0.0).rejected
    assert reasons(run([record(1, id="x")], recent=recent, clock=59.0)) == \
        [(1, Reason.DUPLICATE_REQUEST)]
    assert not run([record(2, id="x")], recent=recent, clock=60.0).rejected  # window passed
    late = run([record(3, deadline_ms=1000)], now=SENT_AT + 2.0)
    assert reasons(late) == [(3, Reason.ARRIVED_LATE)]
    assert "waited 2000 ms" in late.rejected[0][1].error


def dead_letter(key: str, reason: Reason) -> Outgoing:
    return Outgoing(Kind.DEAD_LETTER, "deadletter", 0, key.encode(), b"{}", [], "m", "2", reason,
                    SENT_AT)


def test_only_ids_refused_for_now_are_forgotten_so_they_may_be_sent_again():
    recent = RecentIds(max_ids=10)
    for request_id in ("late", "later", "busy", "bad", "served"):
        recent.seen_before(request_id, 0.0)
    served = Outgoing(Kind.PREDICTION, "predictions", 0, b"served", b"{}", [], "m", "2", None,
                      SENT_AT)
    forget_retryable(recent, [dead_letter("late", Reason.DEADLINE_EXCEEDED),
                              dead_letter("later", Reason.ARRIVED_LATE),
                              dead_letter("busy", Reason.QUOTA_EXCEEDED),
                              dead_letter("bad", Reason.SCHEMA_MISMATCH), served])
    assert not any(recent.seen_before(i, 1.0) for i in ("late", "later", "busy"))
    assert recent.seen_before("bad", 1.0) and recent.seen_before("served", 1.0)


def test_with_tenants_from_records_the_body_cannot_claim_another_tenant():
    """Reliability review section 10: any client could write "tenant": "acme" and drain
    acme's quota (or escape its own); a trusted gateway's header decides instead."""
    quotas = TenantQuotas(parse_quotas("acme:rate=1000; default:rate=1,burst=1"))
    spoofed = [replace(record(i, tenant="acme"), tenant=None) for i in range(3)]
    admission = run(spoofed, quotas=quotas, tenants_from_records=True)
    # No gateway header: under the shared default quota, whatever the body claims.
    assert reasons(admission) == [(1, Reason.QUOTA_EXCEEDED), (2, Reason.QUOTA_EXCEEDED)]
    gateway = [replace(record(i, tenant="zed"), tenant="acme") for i in range(3, 6)]
    assert not run(gateway, quotas=quotas, tenants_from_records=True).rejected


def test_a_deadline_only_the_models_time_breaks_is_the_versions_failure():
    """Issue 16: server-side deadline misses count for the version (breaker, canary); one
    that passed in the worker's queue is the worker's, not the version's; one already
    past when the worker took the request is the client's own (``arrived_late``), so
    short deadlines open no breaker and burn no availability budget."""
    batch = [record(0, deadline_ms=100), record(1, deadline_ms=40), record(2, deadline_ms=10)]
    admission = run(batch, now=SENT_AT + 0.05, expected_seconds=0.2, taken=SENT_AT + 0.02)
    assert reasons(admission) == [(0, Reason.DEADLINE_EXCEEDED), (1, Reason.DEADLINE_EXCEEDED),
                                  (2, Reason.ARRIVED_LATE)]
    assert admission.slow == {("m", "2", Route.STABLE): 1}  # request 0 had 50 ms to go
    assert [r.reason.is_client_error for _, r in admission.rejected] == [False, False, True]
    _, late = admission.rejected[2]
    assert late.error.startswith("the request had waited 50 ms, and its deadline_ms of 10 had "
                                 "passed before a worker took it; send it sooner")
