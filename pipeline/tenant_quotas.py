"""Per-tenant quotas: a token bucket (rate and burst) and an in-flight limit per tenant.

Configured as ``STREAMSERVE_TENANT_QUOTAS`` (``parse_quotas``)::

    acme:rate=200,burst=400,inflight=64; beta:rate=20; default:rate=50,inflight=16

* ``rate``: requests per second (``/s`` may follow the number), refilled continuously
  into a bucket of ``burst`` tokens (default: the rate rounded up, at least 1); each
  request admitted takes one.
* ``inflight``: requests admitted and not yet answered (the answer acknowledged by the
  broker; in exactly-once mode, its transaction committed).
* ``default``: one quota shared by every tenant not named and by requests without a
  tenant, so inventing tenant names buys no extra quota. Without it they are unlimited.

Quotas are each worker's own, as Envoy's local rate limit is: a fleet of N workers admits
up to N times a quota. The clock is passed in (use ``time.monotonic()``; tests advance it
by hand)::

    quotas = TenantQuotas(parse_quotas(text))
    refusal = quotas.admit(request.tenant, time.monotonic())   # None: admitted
    ...
    quotas.release(quotas.governing(request.tenant))             # once its answer is sent
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from pipeline.errors import StreamserveError
from pipeline.rejections import REDACTED_VALUE, Reason, Rejection

DEFAULT = "default"
_SOURCE = "STREAMSERVE_TENANT_QUOTAS"
_FORM = "TENANT:rate=R[,burst=B][,inflight=N]"
_NAME = re.compile(r"[A-Za-z0-9._@-]{1,64}")


class QuotaSpecError(StreamserveError, ValueError):
    """Quotas that cannot be read; the message names the part and how to write it."""


class Limit(StrEnum):
    RATE = "rate"
    INFLIGHT = "inflight"


@dataclass(frozen=True, slots=True)
class Quota:
    """One tenant's limits on one worker; None: not limited that way."""

    rate: float | None = None  # requests per second
    burst: int = 1  # tokens the bucket holds: requests at once after a quiet spell
    inflight: int | None = None  # requests admitted and not yet answered


@dataclass(frozen=True, slots=True)
class Refusal:
    """A request over its quota: which quota (a configured tenant or ``default``: a bounded
    metric label), which limit, and the dead letter's reason and sentence."""

    quota: str
    limit: Limit
    rejection: Rejection


def parse_quotas(text: str) -> dict[str, Quota]:
    """Read ``"TENANT:rate=R[,burst=B][,inflight=N];..."`` (whitespace tolerant; ``""``
    gives no quotas). Every error message starts with the variable's name."""
    quotas: dict[str, Quota] = {}
    for entry in text.split(";"):
        entry = entry.strip()
        if not entry:
            continue  # a trailing or doubled ';' hides nothing
        tenant, colon, limits = (s.strip() for s in entry.partition(":"))
        if not colon or not tenant:
            raise QuotaSpecError(f"{_SOURCE}: {entry!r} names no tenant; write {_FORM}, "
                                 "e.g. 'acme:rate=100,inflight=20'")
        if not _NAME.fullmatch(tenant):
            raise QuotaSpecError(f"{_SOURCE}: tenant {tenant!r} must be 1 to 64 letters, digits "
                                 "or . _ - @ (other tenants fall under 'default')")
        if tenant in quotas:
            raise QuotaSpecError(f"{_SOURCE}: tenant {tenant!r} is given twice; give each one entry")
        quotas[tenant] = _quota(tenant, limits)
    return quotas


def _quota(tenant: str, text: str) -> Quota:
    values: dict[str, str] = {}
    for part in text.split(","):
        key, equals, value = (s.strip() for s in part.partition("="))
        if not equals or key not in ("rate", "burst", "inflight"):
            raise QuotaSpecError(f"{_SOURCE}: {part.strip()!r} of tenant {tenant!r} is not a "
                                 "limit; use rate=R (requests/s), burst=B or inflight=N")
        if key in values:
            raise QuotaSpecError(f"{_SOURCE}: tenant {tenant!r} sets {key} twice")
        values[key] = value
    rate: float | None = None
    if "rate" in values:
        try:
            rate = float(values["rate"].removesuffix("/s"))
        except ValueError:
            rate = math.nan
        if not 0 < rate < math.inf:
            raise QuotaSpecError(f"{_SOURCE}: rate of tenant {tenant!r} must be a positive number "
                                 f"of requests per second, e.g. rate=100, got {values['rate']!r}")
    inflight = _count(values, "inflight", tenant)
    burst = _count(values, "burst", tenant)
    if burst is not None and rate is None:
        raise QuotaSpecError(f"{_SOURCE}: tenant {tenant!r} sets burst without rate; a burst is "
                             "the size of the rate's bucket: add rate=R")
    if rate is None and inflight is None:
        raise QuotaSpecError(f"{_SOURCE}: tenant {tenant!r} sets no limit; give rate=R and/or "
                             "inflight=N")
    return Quota(rate=rate, burst=burst or max(1, math.ceil(rate or 1)), inflight=inflight)


def _count(values: Mapping[str, str], key: str, tenant: str) -> int | None:
    if key not in values:
        return None
    text = values[key]
    if not (text.isascii() and text.isdigit() and int(text) >= 1):
        raise QuotaSpecError(f"{_SOURCE}: {key} of tenant {tenant!r} must be a whole number of "
                             f"at least 1, got {text!r}")
    return int(text)


@dataclass(slots=True)
class _State:
    tokens: float
    refilled: float | None = None  # None until the first request: the bucket starts full
    in_flight: int = 0


class TenantQuotas:
    """Admits a tenant's requests while it is within its quota; one per worker."""

    def __init__(self, quotas: Mapping[str, Quota]) -> None:
        self._quotas = dict(quotas)
        self._states = {name: _State(float(q.burst)) for name, q in self._quotas.items()}

    def governing(self, tenant: str | None) -> str | None:
        """The quota that applies to ``tenant``: its own, else ``default``, else None."""
        if tenant in self._quotas:
            return tenant
        return DEFAULT if DEFAULT in self._quotas else None

    def in_flight(self, quota: str) -> int:
        return self._states[quota].in_flight

    def admit(self, tenant: str | None, now: float) -> Refusal | None:
        """Admit one request of ``tenant`` at ``now`` (seconds, monotonic), or say why not.
        An admitted request holds an in-flight slot until ``release``; a refused one takes
        neither a slot nor a token."""
        name = self.governing(tenant)
        if name is None:
            return None
        quota, state = self._quotas[name], self._states[name]
        if quota.inflight is not None and state.in_flight >= quota.inflight:
            return _refusal(name, Limit.INFLIGHT, tenant, lambda who: (
                f"{who}: already {quota.inflight} requests in flight on this worker, the "
                f"in-flight quota; wait for their answers before sending more, or "
                f"{_ask(name, tenant, 'inflight')}"))
        if quota.rate is not None:
            if state.refilled is not None:
                # A clock that steps back refills nothing, and never moves the stamp back.
                elapsed = max(0.0, now - state.refilled)
                state.tokens = min(float(quota.burst), state.tokens + elapsed * quota.rate)
            state.refilled = now if state.refilled is None else max(state.refilled, now)
            if state.tokens < 1:
                wait_ms = math.ceil(1000 * (1 - state.tokens) / quota.rate)
                return _refusal(name, Limit.RATE, tenant, lambda who: (
                    f"{who}: over the rate quota on this worker ({quota.rate:g} requests/s, "
                    f"burst {quota.burst}); retry in {wait_ms} ms and send more slowly, or "
                    f"{_ask(name, tenant, 'rate')}"))
            state.tokens -= 1
        state.in_flight += 1
        return None

    def release(self, quota: str, count: int = 1) -> None:
        """``count`` requests under ``quota`` were answered: their in-flight slots are free."""
        self._states[quota].in_flight -= count

    def release_all(self) -> None:
        """Every answer not yet sent never will be (an aborted transaction): free every slot."""
        for state in self._states.values():
            state.in_flight = 0


def _refusal(quota: str, limit: Limit, tenant: str | None, say: Callable[[str], str]) -> Refusal:
    """The refusal, its sentence naming the tenant: worded without the tenant's value too
    (``Rejection.quotes``), for when redaction hides the field."""
    if tenant is None:
        error = say("no tenant (under the shared default quota)")
        return Refusal(quota, limit, Rejection(Reason.QUOTA_EXCEEDED, error))

    def who(shown: str) -> str:
        return f"tenant {shown}" if quota == tenant else \
            f"tenant {shown} (under the shared default quota)"
    shown = repr(tenant) if len(tenant) <= 40 else f"{tenant[:40]!r}… ({len(tenant)} characters)"
    return Refusal(quota, limit, Rejection(Reason.QUOTA_EXCEEDED, say(who(shown)),
                                           quotes=("tenant", say(who(REDACTED_VALUE)))))


def _ask(quota: str, tenant: str | None, limit: str) -> str:
    if quota == tenant:
        return f"ask the operator to raise the tenant's {limit}= in {_SOURCE}"
    return (f"ask the operator to raise {quota}:{limit}= in {_SOURCE}, or to give "
            + ("the tenant an entry of its own" if tenant is not None else
               "you a tenant with a quota of its own"))
