import pytest

from pipeline.catalog import Catalog
from pipeline.rejections import Reason
from pipeline.routing import Canary, DeploymentSpec, Route, RouteDecision, route
from pipeline.schema import Feature, InputSchema

SCHEMA = InputSchema((Feature("a"),))
SPEC = DeploymentSpec("m", "2", canary=Canary("3", 0.5), fallback="1")
CATALOG = Catalog({"m": {"1": SCHEMA, "2": SCHEMA, "3": SCHEMA}}, {"m": SPEC})


def test_requests_follow_the_spec_and_pins_name_a_deployed_version():
    for request_id in ("a", "b", "c", "d"):
        assert CATALOG.resolve("m", None, request_id) == (route(SPEC, request_id), SCHEMA)
    assert {CATALOG.resolve("m", None, f"r{i}")[0].route for i in range(50)} == {Route.STABLE,
                                                                                Route.CANARY}
    assert CATALOG.resolve("m", "1", "a") == (RouteDecision("1", Route.PINNED), SCHEMA)
    rejection = CATALOG.resolve("m", "9", "a")
    assert rejection.reason is Reason.UNKNOWN_VERSION and "9" in rejection.error
    assert CATALOG.resolve("x", None, "a").reason is Reason.UNKNOWN_MODEL


def test_without_a_canary_every_unpinned_request_goes_where_route_sends_it():
    spec = DeploymentSpec("m", "2", fallback="1")
    catalog = Catalog({"m": {"1": SCHEMA, "2": InputSchema((Feature("b"),))}}, {"m": spec})
    for request_id in ("a", "b", "r-17", "x" * 256):
        assert catalog.resolve("m", None, request_id) == (route(spec, request_id),
                                                          InputSchema((Feature("b"),)))
    assert catalog.resolve("m", "1", "a") == (RouteDecision("1", Route.PINNED), SCHEMA)
    assert catalog.resolve("m", "9", "a").reason is Reason.UNKNOWN_VERSION


def test_the_fallback_is_where_an_open_breaker_sends_traffic():
    assert CATALOG.fallback("m") == RouteDecision("1", Route.FALLBACK)
    assert Catalog({"m": {"2": SCHEMA}}, {"m": DeploymentSpec("m", "2")}).fallback("m") is None


def test_a_spec_must_name_loaded_versions():
    with pytest.raises(ValueError, match=r"names versions not loaded: \['9'\]"):
        Catalog({"m": {"1": SCHEMA}}, {"m": DeploymentSpec("m", "9")})
