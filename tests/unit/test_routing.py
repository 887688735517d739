import json
import math

import pytest

from pipeline.routing import (
    HISTORY_LIMIT,
    Canary,
    ControlError,
    DeploymentSpec,
    Route,
    RouteDecision,
    add_shadow,
    canary_draw,
    deploy,
    promote,
    remove_shadow,
    rollback,
    route,
    set_batching,
    set_fallback,
    start_canary,
    unchanged,
)

N = 100_000


def spec_1() -> DeploymentSpec:
    return deploy(None, "iris", "1")


def roundtrip(spec: DeploymentSpec) -> DeploymentSpec:
    return DeploymentSpec.from_json(json.loads(json.dumps(spec.to_json())))


# --- the spec ------------------------------------------------------------------------------


def test_first_deploy_makes_revision_one():
    spec = spec_1()
    assert spec == DeploymentSpec(model="iris", stable="1", revision=1)
    assert spec.versions() == spec.serving_versions() == {"1"}


def test_versions_and_serving_versions():
    spec = DeploymentSpec("iris", "2", canary=Canary("3", 0.1), shadows=("4", "5"), fallback="1")
    assert spec.versions() == {"1", "2", "3", "4", "5"}
    assert spec.serving_versions() == {"1", "2", "3"}


@pytest.mark.parametrize("kwargs, match", [
    ({"canary": Canary("1", 0.1)}, "both stable and canary"),
    ({"fallback": "1"}, "both stable and fallback"),
    ({"shadows": ("1",)}, "both stable and shadow"),
    ({"shadows": ("2", "2")}, "both shadow and shadow"),
    ({"canary": Canary("2", 0.1), "fallback": "2"}, "both canary and fallback"),
    ({"canary": Canary("2", 0.1), "shadows": ("2",)}, "both canary and shadow"),
    ({"fallback": "2", "shadows": ("2",)}, "both fallback and shadow"),
    ({"history": tuple(str(i) for i in range(2, 13))}, "at most 10"),
    ({"max_batch": 0}, "max_batch"),
    ({"max_batch": True}, "max_batch"),
    ({"max_batch": 64.0}, "max_batch"),
    ({"batch_timeout_ms": 0}, "batch_timeout_ms"),
    ({"revision": -1}, "revision"),
    ({"shadows": ["2"]}, "tuples"),
    ({"fallback": "a b"}, "fallback version"),
    ({"canary": {"version": "2", "weight": 0.1}}, "Canary or None"),
])
def test_invalid_specs_are_refused(kwargs, match):
    with pytest.raises(ControlError, match=match):
        DeploymentSpec("iris", "1", **kwargs)


@pytest.mark.parametrize("model, stable", [("", "1"), ("iris", ""), ("ir is", "1"), ("iris", None),
                                           ("iris", "1\0"), ("-iris", "1")])
def test_names_are_checked(model, stable):
    with pytest.raises(ControlError, match="must be a name"):
        DeploymentSpec(model, stable)


@pytest.mark.parametrize("weight", [0, 1, 0.0, 1.0, -0.1, 1.5, math.nan, math.inf, True, "0.1", None])
def test_canary_weight_must_lie_strictly_between_zero_and_one(weight):
    with pytest.raises(ControlError, match="strictly between 0 and 1"):
        Canary("2", weight)


def test_json_round_trip_of_a_full_spec():
    spec = DeploymentSpec("iris", "3", canary=Canary("4", 0.25), shadows=("5", "6"), fallback="2",
                          max_batch=64, batch_timeout_ms=5, history=("1", "2"), revision=7)
    assert roundtrip(spec) == spec
    assert roundtrip(spec_1()) == spec_1()
    assert spec.to_json()["canary"] == {"version": "4", "weight": 0.25}


def test_from_json_fills_defaults_for_optional_keys():
    assert DeploymentSpec.from_json({"model": "iris", "stable": "1"}) == DeploymentSpec("iris", "1")


@pytest.mark.parametrize("d, match", [
    ([], "JSON object"),
    ({"model": "iris"}, "lacks stable"),
    ({"model": "iris", "stable": "1", "stabel": "2"}, "unknown keys stabel"),
    ({"model": "iris", "stable": 1}, "must be a name"),
    ({"model": "iris", "stable": "1", "shadows": "2"}, "list of versions"),
    ({"model": "iris", "stable": "1", "history": None}, "list of versions"),
    ({"model": "iris", "stable": "1", "canary": "2"}, "must be an object"),
    ({"model": "iris", "stable": "1", "canary": {"version": "2"}}, "lacks weight"),
    ({"model": "iris", "stable": "1", "canary": {"version": "2", "weight": 0.1, "x": 1}}, "unknown keys x"),
    ({"model": "iris", "stable": "1", "canary": {"version": "2", "weight": 2}}, "strictly between"),
    ({"model": "iris", "stable": "1", "revision": "3"}, "revision"),
    ({"model": "iris", "stable": "1", "shadows": [2]}, "must be a name"),
])
def test_from_json_refuses_bad_shapes(d, match):
    with pytest.raises(ControlError, match=match):
        DeploymentSpec.from_json(d)


def test_describe():
    spec = DeploymentSpec("iris", "1", canary=Canary("2", 0.2), shadows=("3",), fallback="0", revision=4)
    assert spec.describe() == "iris  stable 1  canary 2 (20%)  shadow 3  fallback 0  rev 4"
    assert spec_1().describe() == "iris  stable 1  rev 1"
    batching = DeploymentSpec("iris", "1", canary=Canary("2", 0.025), shadows=("3", "4"),
                              max_batch=32, batch_timeout_ms=7)
    assert batching.describe() == ("iris  stable 1  canary 2 (2.5%)  shadow 3,4  max_batch 32  "
                                   "batch_timeout 7 ms  rev 0")


# --- transitions ---------------------------------------------------------------------------


def test_deploy_pushes_the_old_stable_to_history():
    spec = deploy(deploy(spec_1(), "iris", "2"), "iris", "3")
    assert (spec.stable, spec.history, spec.revision) == ("3", ("1", "2"), 3)


def test_deploy_bounds_history():
    spec = spec_1()
    for v in range(2, 2 + HISTORY_LIMIT + 5):
        spec = deploy(spec, "iris", str(v))
    assert len(spec.history) == HISTORY_LIMIT
    assert spec.history[-1] == str(HISTORY_LIMIT + 5)


def test_deploying_the_stable_version_again_changes_nothing():
    """Declarative, as `kubectl apply`: the state asked for holds, so the spec comes back
    as it was (same revision) and the shell writes nothing."""
    spec = spec_1()
    again = deploy(spec, "iris", "1")
    assert again is spec and again.revision == 1 and unchanged(spec, again)
    assert not unchanged(spec, deploy(spec, "iris", "2"))
    assert not unchanged(None, spec)


# Each transition asked for the state that holds already: the spec as it was.
HOLDING = [
    ("deploy the stable version", lambda: spec_1(), lambda s: deploy(s, "iris", "1")),
    ("canary at its weight", lambda: start_canary(spec_1(), "2", 0.1),
     lambda s: start_canary(s, "2", 0.1)),
    ("add a shadow", lambda: add_shadow(spec_1(), "2"), lambda s: add_shadow(s, "2")),
    ("remove what is no shadow", lambda: add_shadow(spec_1(), "2"), lambda s: remove_shadow(s, "3")),
    ("remove a shadow from none", spec_1, lambda s: remove_shadow(s, "2")),
    ("the fallback again", lambda: set_fallback(spec_1(), "0"), lambda s: set_fallback(s, "0")),
    ("clear no fallback", spec_1, lambda s: set_fallback(s, None)),
    ("batching as it is", lambda: set_batching(spec_1(), 32, 4), lambda s: set_batching(s, 32, 4)),
    ("batching unset", spec_1, lambda s: set_batching(s, None, None)),
    ("roll back to stable", lambda: deploy(spec_1(), "iris", "2"), lambda s: rollback(s, "2")),
]


@pytest.mark.parametrize("make, transition", [(m, t) for _, m, t in HOLDING],
                         ids=[name for name, _, _ in HOLDING])
def test_a_transition_whose_state_holds_returns_the_spec_unchanged(make, transition):
    spec = make()
    after = transition(spec)
    assert after is spec and unchanged(spec, after)


def test_deploy_with_another_models_spec_is_an_error():
    with pytest.raises(ControlError, match="is iris's; run `streamserve routes`"):
        deploy(spec_1(), "wine", "2")


def test_deploy_clears_a_canary_of_that_version_and_keeps_another():
    canaried = start_canary(spec_1(), "2", 0.1)
    assert deploy(canaried, "iris", "2").canary is None
    kept = deploy(canaried, "iris", "3")
    assert kept.canary == Canary("2", 0.1) and kept.stable == "3"


def test_deploy_takes_the_version_out_of_shadow_and_fallback_roles():
    spec = set_fallback(add_shadow(spec_1(), "2"), "0")
    assert deploy(spec, "iris", "2").shadows == ()
    fell_back = deploy(spec, "iris", "0")
    assert (fell_back.stable, fell_back.fallback, fell_back.shadows) == ("0", None, ("2",))


def test_deploy_keeps_the_other_settings():
    spec = set_batching(set_fallback(spec_1(), "0"), 16, 3)
    after = deploy(spec, "iris", "2")
    assert (after.fallback, after.max_batch, after.batch_timeout_ms) == ("0", 16, 3)


def test_start_canary_and_reweight():
    spec = start_canary(spec_1(), "2", 0.05)
    assert spec.canary == Canary("2", 0.05) and spec.revision == 2
    ramped = start_canary(spec, "2", 0.5)
    assert ramped.canary == Canary("2", 0.5) and ramped.revision == 3


def test_start_canary_moves_a_shadow_to_canary():
    spec = start_canary(add_shadow(spec_1(), "2"), "2", 0.1)
    assert spec.shadows == () and spec.canary == Canary("2", 0.1)


@pytest.mark.parametrize("make, version, weight, match", [
    (spec_1, "1", 0.1, "already stable"),
    (lambda: set_fallback(spec_1(), "0"), "0", 0.1,
     r"is the fallback; clear the fallback first \(streamserve fallback iris --clear\)"),
    (lambda: start_canary(spec_1(), "2", 0.1), "3", 0.1,
     r"already runs canary 2 .*streamserve promote iris.*streamserve rollback iris"),
    (spec_1, "2", 1.0, "strictly between"),
    (spec_1, "2", 0, "strictly between"),
])
def test_start_canary_errors(make, version, weight, match):
    with pytest.raises(ControlError, match=match):
        start_canary(make(), version, weight)


def test_transitions_need_a_deployment():
    for transition in (lambda: start_canary(None, "2", 0.1), lambda: add_shadow(None, "2"),
                       lambda: remove_shadow(None, "2"), lambda: promote(None),
                       lambda: rollback(None), lambda: set_fallback(None, "1"),
                       lambda: set_batching(None, 8, 2)):
        with pytest.raises(ControlError, match="not deployed yet"):
            transition()


def test_add_and_remove_shadows():
    spec = add_shadow(add_shadow(spec_1(), "2"), "3")
    assert spec.shadows == ("2", "3") and spec.revision == 3
    assert spec.versions() == {"1", "2", "3"} and spec.serving_versions() == {"1"}
    spec = remove_shadow(spec, "2")
    assert spec.shadows == ("3",) and spec.revision == 4


def test_shadow_errors():
    spec = set_fallback(start_canary(add_shadow(spec_1(), "2"), "3", 0.1), "0")
    for serving in ("1", "3", "0"):
        with pytest.raises(ControlError, match="already serves"):
            add_shadow(spec, serving)
    with pytest.raises(ControlError, match="must be a name"):
        remove_shadow(spec, "not valid")


def test_promote_makes_the_canary_stable():
    spec = promote(start_canary(spec_1(), "2", 0.2))
    assert (spec.stable, spec.canary, spec.history, spec.revision) == ("2", None, ("1",), 3)


def test_promote_without_a_canary_is_an_error():
    with pytest.raises(ControlError, match="no canary to promote"):
        promote(spec_1())


def test_rollback_drops_a_canary_first():
    spec = start_canary(deploy(spec_1(), "iris", "2"), "3", 0.1)
    rolled = rollback(spec)
    assert (rolled.stable, rolled.canary, rolled.history) == ("2", None, ("1",))
    assert rollback(spec, "3").canary is None
    with pytest.raises(ControlError, match="runs canary 3"):
        rollback(spec, "1")


def test_rollback_goes_back_through_history():
    spec = deploy(deploy(spec_1(), "iris", "2"), "iris", "3")
    once = rollback(spec)
    assert (once.stable, once.history, once.revision) == ("2", ("1",), 4)
    twice = rollback(once)
    assert (twice.stable, twice.history) == ("1", ())
    with pytest.raises(ControlError, match="no earlier stable version"):
        rollback(twice)


def test_rollback_to_a_named_version_drops_later_history():
    spec = spec_1()
    for v in ("2", "3", "4"):
        spec = deploy(spec, "iris", v)
    rolled = rollback(spec, "2")
    assert (rolled.stable, rolled.history) == ("2", ("1",))


def test_rollback_to_the_last_occurrence_of_a_version():
    spec = deploy(deploy(deploy(spec_1(), "iris", "2"), "iris", "1"), "iris", "3")
    assert spec.history == ("1", "2", "1")
    rolled = rollback(spec, "1")
    assert (rolled.stable, rolled.history) == ("1", ("1", "2"))


def test_rollback_errors_for_named_versions():
    spec = deploy(spec_1(), "iris", "2")
    with pytest.raises(ControlError, match=r"not an earlier stable version \(history: 1\); deploy it "
                                           r"instead \(streamserve deploy iris 7\)"):
        rollback(spec, "7")
    with pytest.raises(ControlError, match=r"drop it first \(streamserve rollback iris\)"):
        rollback(start_canary(spec, "3", 0.1), "1")


def test_rollback_to_the_fallback_clears_the_fallback():
    spec = set_fallback(deploy(spec_1(), "iris", "2"), "1")
    rolled = rollback(spec)
    assert (rolled.stable, rolled.fallback) == ("1", None)


def test_set_and_clear_fallback():
    spec = set_fallback(add_shadow(spec_1(), "0"), "0")
    assert (spec.fallback, spec.shadows, spec.revision) == ("0", (), 3)
    assert spec.serving_versions() == {"0", "1"}
    cleared = set_fallback(spec, None)
    assert cleared.fallback is None and cleared.revision == 4


@pytest.mark.parametrize("make, version, match", [
    (spec_1, "1", "is stable"),
    (lambda: start_canary(spec_1(), "2", 0.1), "2", "is the canary"),
    (spec_1, "not valid", "must be a name"),
])
def test_set_fallback_errors(make, version, match):
    with pytest.raises(ControlError, match=match):
        set_fallback(make(), version)


def test_set_batching():
    spec = set_batching(spec_1(), 32, 4)
    assert (spec.max_batch, spec.batch_timeout_ms, spec.revision) == (32, 4, 2)
    assert set_batching(spec, None, None) == DeploymentSpec("iris", "1", revision=3)
    with pytest.raises(ControlError, match="--max-batch"):
        set_batching(spec, 5000, 4)


def test_transitions_do_not_change_their_input():
    spec = start_canary(spec_1(), "2", 0.1)
    before = spec.to_json()
    promote(spec)
    rollback(spec)
    add_shadow(spec, "3")
    assert spec.to_json() == before


def test_every_transition_result_survives_json():
    spec = spec_1()
    steps = [lambda s: add_shadow(s, "2"), lambda s: start_canary(s, "2", 0.3),
             lambda s: set_fallback(s, "0"), promote, lambda s: deploy(s, "iris", "3"),
             rollback, lambda s: set_batching(s, 8, 2), lambda s: set_fallback(s, None)]
    for step in steps:
        spec = step(spec)
        assert roundtrip(spec) == spec


# --- routing ---------------------------------------------------------------------------------


def test_without_a_canary_everything_is_stable():
    spec = deploy(spec_1(), "iris", "2")
    assert all(route(spec, f"r-{i}") == RouteDecision("2", Route.STABLE) for i in range(1_000))


def test_routes_are_deterministic_by_id():
    spec = start_canary(spec_1(), "2", 0.3)
    first = [route(spec, f"r-{i}") for i in range(2_000)]
    assert first == [route(roundtrip(spec), f"r-{i}") for i in range(2_000)]
    assert {d.route for d in first} == {Route.STABLE, Route.CANARY}


@pytest.mark.parametrize("weight", [0.05, 0.2, 0.5])
def test_canary_share_is_within_binomial_tolerance(weight):
    spec = start_canary(spec_1(), "2", weight)
    hits = sum(route(spec, f"r-{i}").route is Route.CANARY for i in range(N))
    sd = math.sqrt(N * weight * (1 - weight))
    assert abs(hits - N * weight) < 4 * sd


def test_canary_decisions_follow_the_draw():
    spec = start_canary(spec_1(), "2", 0.2)
    for i in range(1_000):
        d = route(spec, f"r-{i}")
        assert (d.route is Route.CANARY) == (canary_draw("iris", "2", f"r-{i}") < 0.2)
        assert d.version == ("2" if d.route is Route.CANARY else "1")


def test_two_canary_versions_select_different_ids():
    weight = 0.2
    a = start_canary(spec_1(), "2", weight)
    b = start_canary(spec_1(), "3", weight)
    in_a = {i for i in range(N) if route(a, f"r-{i}").route is Route.CANARY}
    in_b = {i for i in range(N) if route(b, f"r-{i}").route is Route.CANARY}
    # Independent choices overlap on about weight**2 of all ids, not on weight.
    p = weight * weight
    assert abs(len(in_a & in_b) - N * p) < 4 * math.sqrt(N * p * (1 - p))


def test_other_models_canaries_select_different_ids():
    a = start_canary(deploy(None, "iris", "1"), "2", 0.5)
    b = start_canary(deploy(None, "wine", "1"), "2", 0.5)
    same = sum(route(a, f"r-{i}").route == route(b, f"r-{i}").route for i in range(10_000))
    assert abs(same - 5_000) < 4 * math.sqrt(10_000 * 0.25)


def test_raising_the_weight_keeps_every_canary_user():
    low = start_canary(spec_1(), "2", 0.05)
    high = start_canary(low, "2", 0.5)
    for i in range(10_000):
        if route(low, f"r-{i}").route is Route.CANARY:
            assert route(high, f"r-{i}").route is Route.CANARY


def test_draws_are_uniform_and_handle_odd_ids():
    draws = [canary_draw("iris", "2", i) for i in ("", "\ud800", "é" * 256, "r-1")]
    assert all(0 <= d < 1 for d in draws)


def test_pinned_serving_versions_are_pinned():
    spec = set_fallback(start_canary(deploy(spec_1(), "iris", "2"), "3", 0.5), "1")
    for v in ("1", "2", "3"):
        assert all(route(spec, f"r-{i}", v) == RouteDecision(v, Route.PINNED) for i in range(100))


def test_pinned_unknown_version_is_an_error_naming_the_deployed_versions():
    spec = start_canary(add_shadow(spec_1(), "4"), "2", 0.1)
    error = route(spec, "r-1", "9")
    assert isinstance(error, str)
    assert "version '9' is not deployed" in error and "1 (stable), 2 (canary)" in error
    shadow = route(spec, "r-1", "4")
    assert isinstance(shadow, str) and "is a shadow" in shadow



INTERNAL_NAMES = ("set_fallback", "start_canary", "add_shadow", "remove_shadow", "set_batching",
                  "None", "(current", "spec)")


@pytest.mark.parametrize("make", [
    lambda: start_canary(set_fallback(spec_1(), "0"), "0", 0.1),
    lambda: start_canary(start_canary(spec_1(), "2", 0.1), "3", 0.1),
    lambda: start_canary(spec_1(), "1", 0.1),
    lambda: promote(spec_1()),
    lambda: rollback(spec_1()),
    lambda: rollback(deploy(spec_1(), "iris", "2"), "7"),
    lambda: rollback(start_canary(spec_1(), "2", 0.1), "0"),
    lambda: set_fallback(spec_1(), "1"),
    lambda: set_batching(spec_1(), 0, None),
    lambda: set_batching(spec_1(), None, 0),
    lambda: deploy(spec_1(), "wine", "1"),
    lambda: add_shadow(None, "2"),
])
def test_refusals_name_commands_not_functions(make):
    with pytest.raises(ControlError) as refused:
        make()
    message = str(refused.value)
    assert "streamserve " in message or "--" in message, message
    assert not any(name in message for name in INTERNAL_NAMES), message


def test_only_a_later_revision_supersedes_what_a_reader_holds():
    first = deploy(None, "iris", "1")
    second = deploy(first, "iris", "2")
    rival = deploy(first, "iris", "3")  # the same revision, written by another
    assert first.supersedes(None) and second.supersedes(first)
    assert not rival.supersedes(second) and not second.supersedes(second)
