"""Per-tenant quotas: the setting's grammar, the token bucket and the in-flight limit, with a
clock advanced by hand."""

import pytest

from pipeline.config import ConfigError, Settings
from pipeline.tenant_quotas import Limit, Quota, QuotaSpecError, TenantQuotas, parse_quotas
from pipeline.rejections import REDACTED_VALUE, Reason


def test_the_grammar_reads_rate_burst_and_inflight_per_tenant():
    assert parse_quotas(" acme: rate=200/s, burst=400, inflight=64 ;beta:rate=2.5;"
                        "default:inflight=16; ") == {
        "acme": Quota(rate=200.0, burst=400, inflight=64),
        "beta": Quota(rate=2.5, burst=3),  # burst: the rate rounded up
        "default": Quota(inflight=16)}
    assert parse_quotas("") == {} and Settings.from_env({}).admission.tenant_quota_plan == {}
    assert Settings.from_env({"STREAMSERVE_TENANT_QUOTAS": "t-1:rate=0.5"}).admission.tenant_quota_plan == {
        "t-1": Quota(rate=0.5, burst=1)}


@pytest.mark.parametrize("text,says", [
    ("rate=10", "'rate=10' names no tenant; write TENANT:rate=R[,burst=B][,inflight=N]"),
    (":rate=10", "':rate=10' names no tenant"),
    ("a b:rate=10", "tenant 'a b' must be 1 to 64 letters, digits or . _ - @"),
    ("acme:rate=10;acme:inflight=2", "tenant 'acme' is given twice"),
    ("acme:rate=10,speed=2", "'speed=2' of tenant 'acme' is not a limit; use rate=R"),
    ("acme:", "'' of tenant 'acme' is not a limit"),
    ("acme:rate=1,rate=2", "tenant 'acme' sets rate twice"),
    ("acme:rate=fast", ("rate of tenant 'acme' must be a positive number of requests per "
                        "second, e.g. rate=100, got 'fast'")),
    ("acme:rate=0", "rate of tenant 'acme' must be a positive number"),
    ("acme:rate=inf", "rate of tenant 'acme' must be a positive number"),
    ("acme:rate=nan", "rate of tenant 'acme' must be a positive number"),
    ("acme:rate=5,burst=0", "burst of tenant 'acme' must be a whole number of at least 1, got '0'"),
    ("acme:inflight=2.5", "inflight of tenant 'acme' must be a whole number of at least 1"),
    ("acme:inflight=²", "inflight of tenant 'acme' must be a whole number"),
    ("acme:burst=5", ("tenant 'acme' sets burst without rate; a burst is the size of the "
                      "rate's bucket: add rate=R")),
])
def test_a_bad_quota_names_the_variable_and_the_part(text, says):
    with pytest.raises(QuotaSpecError) as raised:
        parse_quotas(text)
    assert str(raised.value).startswith("STREAMSERVE_TENANT_QUOTAS: ") and says in str(raised.value)
    with pytest.raises(ConfigError, match="^STREAMSERVE_TENANT_QUOTAS: "):
        Settings.from_env({"STREAMSERVE_TENANT_QUOTAS": text})


def test_the_bucket_admits_a_burst_then_the_rate():
    quotas = TenantQuotas({"acme": Quota(rate=4, burst=3)})
    assert [quotas.admit("acme", 100.0) for _ in range(3)] == [None] * 3
    refusal = quotas.admit("acme", 100.0)
    assert (refusal.quota, refusal.limit) == ("acme", Limit.RATE)
    assert refusal.rejection.reason is Reason.QUOTA_EXCEEDED
    assert refusal.rejection.error == (
        "tenant 'acme': over the rate quota on this worker (4 requests/s, burst 3); retry in "
        "250 ms and send more slowly, or ask the operator to raise the tenant's rate= in "
        "STREAMSERVE_TENANT_QUOTAS")
    assert "retry in 125 ms" in quotas.admit("acme", 100.125).rejection.error
    assert quotas.admit("acme", 100.25) is None  # a token every 250 ms
    assert quotas.admit("acme", 100.25) is not None
    # A quiet spell fills the bucket to its burst, no further.
    assert [quotas.admit("acme", 200.0) for _ in range(4)].count(None) == 3


def test_a_clock_stepping_back_refills_nothing():
    quotas = TenantQuotas({"acme": Quota(rate=1, burst=1)})
    assert quotas.admit("acme", 50.0) is None
    assert quotas.admit("acme", 10.0) is not None
    assert quotas.admit("acme", 50.5) is not None  # not refilled from 10.0
    assert quotas.admit("acme", 51.0) is None


def test_in_flight_requests_are_limited_until_their_answers_are_released():
    quotas = TenantQuotas({"acme": Quota(inflight=2)})
    assert quotas.admit("acme", 0.0) is None and quotas.admit("acme", 0.0) is None
    refusal = quotas.admit("acme", 0.0)
    assert (refusal.quota, refusal.limit) == ("acme", Limit.INFLIGHT)
    assert refusal.rejection.error == (
        "tenant 'acme': already 2 requests in flight on this worker, the in-flight quota; "
        "wait for their answers before sending more, or ask the operator to raise the "
        "tenant's inflight= in STREAMSERVE_TENANT_QUOTAS")
    assert quotas.in_flight("acme") == 2  # a refusal holds no slot
    quotas.release("acme")
    assert quotas.admit("acme", 0.0) is None and quotas.admit("acme", 0.0) is not None
    quotas.release_all()
    assert quotas.in_flight("acme") == 0 and quotas.admit("acme", 0.0) is None


def test_a_request_refused_for_in_flight_takes_no_token_and_for_rate_no_slot():
    quotas = TenantQuotas({"acme": Quota(rate=1, burst=2, inflight=1)})
    assert quotas.admit("acme", 0.0) is None
    assert quotas.admit("acme", 0.0).limit is Limit.INFLIGHT
    quotas.release("acme")
    assert quotas.admit("acme", 0.0) is None  # the second token was still there
    quotas.release("acme")
    assert quotas.admit("acme", 0.0).limit is Limit.RATE
    assert quotas.in_flight("acme") == 0


def test_tenants_not_named_share_the_default_quota_and_are_unlimited_without_one():
    quotas = TenantQuotas({"acme": Quota(rate=1, burst=1), "default": Quota(rate=1, burst=2)})
    assert quotas.admit("x", 0.0) is None and quotas.admit(None, 0.0) is None
    refusal = quotas.admit("y", 0.0)  # an invented name buys nothing
    assert (refusal.quota, refusal.limit) == ("default", Limit.RATE)
    assert quotas.admit("acme", 0.0) is None  # a named tenant is unaffected
    assert (quotas.governing("acme"), quotas.governing("x"), quotas.governing(None)) == \
        ("acme", "default", "default")
    open_to_others = TenantQuotas({"acme": Quota(inflight=1)})
    assert open_to_others.governing("x") is None
    assert all(open_to_others.admit("x", 0.0) is None for _ in range(100))


def test_the_sentence_names_the_tenant_and_can_be_worded_without_it():
    quotas = TenantQuotas({"default": Quota(inflight=1)})
    assert quotas.admit("acme-corp", 0.0) is None
    rejection = quotas.admit("acme-corp", 0.0).rejection
    assert rejection.error.startswith("tenant 'acme-corp' (under the shared default quota): "
                                      "already 1 requests in flight")
    assert rejection.error.endswith("ask the operator to raise default:inflight= in "
                                    "STREAMSERVE_TENANT_QUOTAS, or to give the tenant an entry "
                                    "of its own")
    field, without = rejection.quotes
    assert field == "tenant" and "acme-corp" not in without
    assert without.startswith(f"tenant {REDACTED_VALUE} (under the shared default quota)")
    anonymous = quotas.admit(None, 0.0).rejection
    assert anonymous.error.startswith("no tenant (under the shared default quota): already 1")
    assert anonymous.error.endswith("or to give you a tenant with a quota of its own")
    assert anonymous.quotes is None
    long_name = quotas.admit("t" * 300, 0.0).rejection.error
    assert long_name.startswith(f"tenant {'t' * 40!r}… (300 characters) (under")
