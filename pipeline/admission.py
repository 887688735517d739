"""Admission: which of a batch's records go to a model, and why each of the others does not.

Each record passes, in this order: decode (``pipeline.fast_decode``), the dedupe window
(``pipeline.dedupe``), its tenant's quota (``pipeline.tenant_quotas``), its deadline. The
first check it fails is its ``Rejection``; an admitted request joins the group of its
(model, version, route), served together. The order matters: a repeat takes no quota
token; a request past its deadline costs its tenant a token like any other (sending
expired requests is no way around a quota) but holds no in-flight slot, being answered
at once; a refused request never reaches a model. Deadlines are told apart by where the
time went:

* already past when the worker took the request (``taken``): ``arrived_late``, a
  client-side reason (the sender, its clock, the broker or the partition's backlog,
  which the consumer-lag alert and the latency SLO watch); no server failure;
* past when admitted, not when taken: the worker's own queue, ``deadline_exceeded``;
* within it when admitted, but not by the time the version is expected to answer:
  ``deadline_exceeded`` and that version's failure (``slow``: breaker, canary).

So no client can open a breaker for others, or burn the availability budget, with short
deadlines.

The clocks are passed in (``now``: epoch seconds, for deadlines against Kafka's
timestamps; ``clock``: monotonic seconds, for the dedupe window and the quota buckets).
The dedupe memory and the quotas are the caller's: admitting records updates them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from pipeline.decode import Request
from pipeline.dedupe import RecentIds
from pipeline.fast_decode import FastDecoder
from pipeline.outputs import Incoming, Kind, Outgoing
from pipeline.rejections import Reason, Rejection
from pipeline.routing import Route
from pipeline.tenant_quotas import Refusal, TenantQuotas

# The requests one model call serves together: (model, version, route).
Group = tuple[str, str, Route]

# Refused for the server's sake or the tenant's quota, not for what the request holds:
# the sender may send it again with the same id.
RETRYABLE = frozenset({Reason.DEADLINE_EXCEEDED, Reason.ARRIVED_LATE, Reason.MODEL_ERROR,
                       Reason.CIRCUIT_OPEN, Reason.QUOTA_EXCEEDED})


@dataclass(frozen=True, slots=True)
class Admission:
    """A batch sorted: the admitted requests by group, the rest with their rejection."""

    # In the order each group's first request came; in batch order within a group.
    groups: dict[Group, list[tuple[Incoming, Request]]] = field(default_factory=dict)
    rejected: list[tuple[Incoming, Rejection]] = field(default_factory=list)  # batch order
    # Requests whose deadline only the model's expected time breaks (they had not waited
    # past it), per group: the version is too slow for them, a failure of it (breaker,
    # canary). One already past its deadline when admitted is its sender's or the queue's.
    slow: Counter[Group] = field(default_factory=Counter)
    # In-flight slots the admitted requests took, per quota: their answers free them.
    quota_slots: Counter[str] = field(default_factory=Counter)
    refusals: list[Refusal] = field(default_factory=list)  # quota refusals, for the metrics


def admit(batch: Sequence[Incoming], decoder: FastDecoder,
          recent: RecentIds | None, quotas: TenantQuotas | None, now: float, clock: float,
          expected_seconds: float = 0.0, tenants_from_records: bool = False,
          taken: float | None = None) -> Admission:
    """Sort ``batch``. A request whose deadline would pass before it is answered, at
    ``now + expected_seconds``, is rejected rather than computed. ``taken``: when the
    worker fetched the batch's oldest record (epoch seconds; default ``now``). ``recent``
    and ``quotas`` are None when the worker has no dedupe window or no tenant quotas. With
    ``tenants_from_records``, a request's tenant is its record's (a trusted gateway's
    header), never what its body claims."""
    admission = Admission()
    groups, rejected = admission.groups, admission.rejected
    for record in batch:
        decoded = decoder.decode(record.value)
        if isinstance(decoded, Rejection):
            rejected.append((record, decoded))
            continue
        if tenants_from_records:
            decoded = replace(decoded, tenant=record.tenant)
        if recent is not None and recent.seen_before(
                decoded.id, clock, (record.topic, record.partition, record.offset)):
            rejected.append((record, recent.rejection(decoded.id, decoded.model)))
            continue
        quota = None
        if quotas is not None:
            refusal = quotas.admit(decoded.tenant, clock)
            if refusal is not None:
                admission.refusals.append(refusal)
                rejected.append((record, replace(refusal.rejection, id=decoded.id,
                                                 model=decoded.model)))
                continue
            quota = quotas.governing(decoded.tenant)
        if decoded.deadline_ms is not None and _expired(decoded, record, now + expected_seconds):
            if quota:  # answered now: its slot is free again
                quotas.release(quota, 1)
            if not _expired(decoded, record, now):
                admission.slow[(decoded.model, decoded.version, decoded.route)] += 1
            rejected.append((record, _late(decoded, record, now, now if taken is None else taken)))
            continue
        if quota:
            admission.quota_slots[quota] += 1
        groups.setdefault((decoded.model, decoded.version, decoded.route), []).append((record, decoded))
    return admission


def forget_retryable(recent: RecentIds, outgoing: Iterable[Outgoing]) -> None:
    """Let the ids of requests refused for now (``RETRYABLE``) be sent again: a retry with
    the same id must not be refused as a duplicate_request."""
    for out in outgoing:
        if out.kind is Kind.DEAD_LETTER and out.reason in RETRYABLE:
            recent.forget(out.key.decode())


def _late(request: Request, record: Incoming, now: float, taken: float) -> Rejection:
    waited = f"the request had waited {1000 * (now - record.timestamp):.0f} ms"
    if _expired(request, record, taken):
        return Rejection(Reason.ARRIVED_LATE,
                         f"{waited}, and its deadline_ms of {request.deadline_ms} had passed "
                         f"before a worker took it; send it sooner, check the sender's clock "
                         f"(deadlines count from the record's timestamp), or see the consumer "
                         f"lag", id=request.id, model=request.model)
    return Rejection(Reason.DEADLINE_EXCEEDED,
                     f"{waited} and could not be answered within its deadline_ms of "
                     f"{request.deadline_ms}; raise the deadline or add workers",
                     id=request.id, model=request.model)


def _expired(request: Request, record: Incoming, answer_time: float) -> bool:
    return (request.deadline_ms is not None
            and (answer_time - record.timestamp) * 1000 > request.deadline_ms)
