"""Which version of a model serves a request, and how operators change that.

A ``DeploymentSpec`` (``spec``) is one model's deployment: the stable version; at most one
canary taking a weighted, sticky share of requests; shadow versions that see every
request but whose predictions go to the shadow topic only; a fallback, served while
the stable or canary version's circuit breaker is open; and the earlier stable
versions, for rollback. The shell keeps the newest spec per model on the compacted
control topic (``to_json``) and every change on the audit topic (``pipeline.audit``).

A spec changes only through these transitions (``transitions``). Each is a pure function returning a
new spec with ``revision + 1`` (so the shell can compare-and-set); ``current`` itself
when the state it asks for already holds (deploying the stable version again, setting
the fallback it has: declarative, as ``kubectl apply``; ``unchanged`` tells, and the
shell then writes nothing); or raising ``ControlError`` with a sentence saying why it
cannot apply and which ``streamserve`` command to run instead:

    deploy(current, model, version)       stable := version; the old stable goes to history
    start_canary(current, version, w)     send a share w of requests to version (or re-weight it)
    add_shadow / remove_shadow            mirror every request to version, or stop
    promote(current)                      stable := the canary's version
    rollback(current, version=None)       drop the canary; without one, stable := version or history[-1]
    set_fallback(current, version|None)   the version served while the others' breakers are open (None: none)
    set_batching(current, max_batch, batch_timeout_ms)   per-model overrides of the settings

Roles are disjoint: stable, canary, fallback and the shadows are all different
versions. A shadow that takes a serving role (stable, canary, fallback) leaves the
shadows, which is the usual path of a new version: shadow, canary, promote. A
fallback or canary whose version becomes stable is cleared.

``route`` (``decision``) is the per-request rule: pinned version, else the canary's share, else
stable. It never answers FALLBACK or SHADOW: those routes are the shell's, for a
request served by the fallback after a breaker opened, and for shadow predictions.
"""

from pipeline.routing.decision import Route, RouteDecision, canary_draw, route
from pipeline.routing.spec import HISTORY_LIMIT, Canary, ControlError, DeploymentSpec, check_keys
from pipeline.routing.transitions import (
    add_shadow,
    deploy,
    promote,
    remove_shadow,
    rollback,
    set_batching,
    set_fallback,
    start_canary,
    unchanged,
)

__all__ = [
    "HISTORY_LIMIT",
    "Canary",
    "ControlError",
    "DeploymentSpec",
    "Route",
    "RouteDecision",
    "add_shadow",
    "canary_draw",
    "check_keys",
    "deploy",
    "promote",
    "remove_shadow",
    "rollback",
    "route",
    "set_batching",
    "set_fallback",
    "start_canary",
    "unchanged",
]
