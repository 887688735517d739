"""The per-request route decision: which version of a deployment serves one request.

``route`` answers PINNED, CANARY or STABLE (never FALLBACK or SHADOW: those routes are
the shell's, for a request served by the fallback after a breaker opened, and for
shadow predictions). It runs per request, so it is kept cheap and cached.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pipeline.routing.spec import DeploymentSpec, listing

_SPAN = 2**64


class Route(StrEnum):
    STABLE = "stable"
    CANARY = "canary"
    PINNED = "pinned"
    FALLBACK = "fallback"
    SHADOW = "shadow"


@dataclass(frozen=True, slots=True)
class RouteDecision:
    version: str
    route: Route


# Decisions are immutable and few per spec: reuse them (a frozen dataclass's __init__
# costs more than the rest of route() when there is no canary).
_decision = functools.lru_cache(maxsize=1024)(RouteDecision)


def canary_draw(model: str, canary_version: str, request_id: str) -> float:
    """The request's uniform draw in [0, 1): blake2b-64 of model, canary version and id.

    Salting with the model and the canary version makes each canary pick its own
    users (so one unlucky set of users does not test every canary), while a given id
    keeps its draw for as long as that canary runs, whatever its weight.
    """
    return _draw_int(model, canary_version, request_id) / _SPAN


@functools.lru_cache(maxsize=256)
def _salted(model: str, canary_version: str) -> Any:
    """blake2b-64 fed with "model NUL version NUL"; names hold no NUL, so fields cannot run together."""
    return hashlib.blake2b(f"{model}\0{canary_version}\0".encode(), digest_size=8)


def _draw_int(model: str, canary_version: str, request_id: str) -> int:
    h = _salted(model, canary_version).copy()  # copying the salted state beats rehashing the salt
    # surrogatepass: json (decode's fallback parser) admits lone surrogates in ids.
    h.update(request_id.encode("utf-8", "surrogatepass"))
    return int.from_bytes(h.digest(), "big")


def route(spec: DeploymentSpec, request_id: str, pinned: str | None = None) -> RouteDecision | str:
    """The version that serves ``request_id``, or an error sentence (the caller dead-letters it).

    - ``pinned`` (the request's ``"version"``) among ``spec.serving_versions()``: PINNED to it;
      any other pinned version: an error sentence naming the deployed versions.
    - else CANARY when ``canary_draw(model, canary version, id) < weight``, else STABLE.

    Sticky: the same id gets the same route from the same spec, on every worker and
    after a redelivery. Costs about 0.4 µs per call without a canary, 1.4 µs with one
    and 0.6 µs pinned (timeit, CPython 3.11, an id of 8 characters; 2.4 µs with a
    canary at the 256-character id limit), so it runs per request.
    """
    if pinned is not None:
        if pinned in spec.serving_versions():
            return _decision(pinned, Route.PINNED)
        shadow = " is a shadow (its predictions are not served)" if pinned in spec.shadows else \
            " is not deployed"
        return (f"{spec.model} version {pinned!r}{shadow}; deployed versions: {listing(spec)}; "
                f"pin one of them, or omit \"version\" to be routed")
    canary = spec.canary
    # Compared as integer < float, which Python does exactly (as in pipeline.sampling).
    if canary is not None and _draw_int(spec.model, canary.version, request_id) < canary.weight * _SPAN:
        return _decision(canary.version, Route.CANARY)
    return _decision(spec.stable, Route.STABLE)
