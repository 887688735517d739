"""A model's deployment as a value: ``DeploymentSpec`` and its ``Canary``, validated on
construction and read back from the control topic's JSON (``to_json`` / ``from_json``).

What a spec holds (see ``pipeline.routing``): the stable version; at most one canary
taking a weighted, sticky share of requests; shadow versions that see every request but
whose predictions go to the shadow topic only; a fallback, served while the stable or
canary version's circuit breaker is open; and the earlier stable versions, for rollback.
Roles are disjoint: stable, canary, fallback and the shadows are all different versions.
How a spec changes is ``pipeline.routing.transitions``; how it routes a request is
``pipeline.routing.decision``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.errors import StreamserveError

HISTORY_LIMIT = 10
"""Earlier stable versions kept for rollback; older ones need ``streamserve deploy``."""

# The registry's model-name alphabet; registry versions ("1", "2", ...) fit it too.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class ControlError(StreamserveError, ValueError):
    """A control command that cannot apply; the message says why and what to do instead."""


def check_name(value: Any, what: str) -> None:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise ControlError(f"{what} must be a name of letters, digits, '.', '_' or '-' "
                           f"(starting with a letter or digit), like '3', got {value!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True, slots=True)
class Canary:
    """A version taking the share ``weight`` (0 < weight < 1) of a model's requests."""

    version: str
    weight: float

    def __post_init__(self) -> None:
        check_name(self.version, "the canary version")
        w = self.weight
        if isinstance(w, bool) or not isinstance(w, int | float) or not 0 < w < 1:  # NaN fails too
            raise ControlError(f"the canary weight must be a share strictly between 0 and 1, e.g. 0.1 "
                               f"for 10% of requests, got {w!r}; to send all traffic to "
                               f"{self.version}, promote it (streamserve promote MODEL) or "
                               f"deploy it (streamserve deploy MODEL {self.version})")


@dataclass(frozen=True, slots=True)
class DeploymentSpec:
    """One model's deployment (see the module docstring); validated on construction.

    ``history``: earlier stable versions, newest last, at most ``HISTORY_LIMIT``.
    ``max_batch`` and ``batch_timeout_ms`` override the worker's settings for this
    model when not None. ``revision`` counts the transitions that made this spec.
    """

    model: str
    stable: str
    canary: Canary | None = None
    shadows: tuple[str, ...] = ()
    fallback: str | None = None
    max_batch: int | None = None
    batch_timeout_ms: int | None = None
    history: tuple[str, ...] = ()
    revision: int = 0

    def __post_init__(self) -> None:
        check_name(self.model, "the model name")
        check_name(self.stable, "the stable version")
        if self.canary is not None and not isinstance(self.canary, Canary):
            raise ControlError(f"canary must be a Canary or None, got {self.canary!r}")
        if not isinstance(self.shadows, tuple) or not isinstance(self.history, tuple):
            raise ControlError("shadows and history must be tuples of versions")
        for v in self.shadows:
            check_name(v, "a shadow version")
        for v in self.history:
            check_name(v, "a history version")
        if self.fallback is not None:
            check_name(self.fallback, "the fallback version")
        roles = [("stable", self.stable)]
        if self.canary is not None:
            roles.append(("canary", self.canary.version))
        if self.fallback is not None:
            roles.append(("fallback", self.fallback))
        roles += [("shadow", v) for v in self.shadows]
        seen: dict[str, str] = {}
        for role, version in roles:
            if version in seen:
                raise ControlError(f"{self.model} version {version} cannot be both {seen[version]} "
                                   f"and {role}: each version has one role")
            seen[version] = role
        if len(self.history) > HISTORY_LIMIT:
            raise ControlError(f"history holds at most {HISTORY_LIMIT} versions, got {len(self.history)}")
        if self.max_batch is not None and not (_is_int(self.max_batch) and 1 <= self.max_batch <= 4096):
            raise ControlError(f"max_batch (--max-batch) must be a whole number from 1 to 4096, or "
                               f"unset for the worker's STREAMSERVE_MAX_BATCH, got {self.max_batch!r}")
        if self.batch_timeout_ms is not None and not (
                _is_int(self.batch_timeout_ms) and 1 <= self.batch_timeout_ms <= 10_000):
            raise ControlError(f"batch_timeout_ms (--batch-timeout-ms) must be a whole number from 1 "
                               f"to 10000, or unset for the worker's STREAMSERVE_BATCH_TIMEOUT_MS, "
                               f"got {self.batch_timeout_ms!r}")
        if not _is_int(self.revision) or self.revision < 0:
            raise ControlError(f"revision must be a whole number >= 0, got {self.revision!r}")

    def supersedes(self, other: DeploymentSpec | None) -> bool:
        """Whether a reader holding ``other`` takes this spec: only a later revision does.
        Kafka has no compare-and-set, so two writers may write the same revision; every
        reader keeps the first, in the control topic's order."""
        return other is None or self.revision > other.revision

    def versions(self) -> frozenset[str]:
        """Every version a worker must load: stable, canary, shadows and fallback."""
        return self.serving_versions() | frozenset(self.shadows)

    def serving_versions(self) -> frozenset[str]:
        """The versions whose predictions reach clients (and so may be pinned): stable, canary, fallback."""
        serving = {self.stable}
        if self.canary is not None:
            serving.add(self.canary.version)
        if self.fallback is not None:
            serving.add(self.fallback)
        return frozenset(serving)

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "stable": self.stable,
            "canary": None if self.canary is None else {"version": self.canary.version,
                                                        "weight": float(self.canary.weight)},
            "shadows": list(self.shadows),
            "fallback": self.fallback,
            "max_batch": self.max_batch,
            "batch_timeout_ms": self.batch_timeout_ms,
            "history": list(self.history),
            "revision": self.revision,
        }

    @classmethod
    def from_json(cls, d: Any) -> DeploymentSpec:
        """The spec ``to_json`` wrote. Only ``model`` and ``stable`` are required; unknown
        keys and wrong types raise ControlError (a typo must not silently change routing)."""
        if not isinstance(d, Mapping):
            raise ControlError(f"a deployment spec is a JSON object, got {type(d).__name__}")
        check_keys(d, required={"model", "stable"}, allowed=_SPEC_KEYS, what="deployment spec")
        canary = d.get("canary")
        if canary is not None:
            if not isinstance(canary, Mapping):
                raise ControlError(f'"canary" must be an object like {{"version": "2", "weight": 0.1}} '
                                   f"or null, got {canary!r}")
            check_keys(canary, required={"version", "weight"}, allowed={"version", "weight"},
                        what="canary")
            canary = Canary(canary["version"], canary["weight"])
        return cls(model=d["model"], stable=d["stable"], canary=canary,
                   shadows=_versions(d.get("shadows", []), "shadows"),
                   fallback=d.get("fallback"), max_batch=d.get("max_batch"),
                   batch_timeout_ms=d.get("batch_timeout_ms"),
                   history=_versions(d.get("history", []), "history"),
                   revision=d.get("revision", 0))

    def describe(self) -> str:
        """One line for ``streamserve routes``, e.g.
        ``iris  stable 1  canary 2 (20%)  shadow 3  fallback 1  rev 4``."""
        parts = [self.model, f"stable {self.stable}"]
        if self.canary is not None:
            parts.append(f"canary {self.canary.version} ({percent(self.canary.weight)})")
        if self.shadows:
            parts.append(f"shadow {','.join(self.shadows)}")
        if self.fallback is not None:
            parts.append(f"fallback {self.fallback}")
        if self.max_batch is not None:
            parts.append(f"max_batch {self.max_batch}")
        if self.batch_timeout_ms is not None:
            parts.append(f"batch_timeout {self.batch_timeout_ms} ms")
        parts.append(f"rev {self.revision}")
        return "  ".join(parts)


_SPEC_KEYS = frozenset(DeploymentSpec.__dataclass_fields__)


def check_keys(d: Mapping[str, Any], required: set[str], allowed: frozenset[str] | set[str],
               what: str) -> None:
    """ControlError naming the keys ``d`` (a JSON object read back) lacks or should not have."""
    missing = required - d.keys()
    if missing:
        raise ControlError(f"the {what} lacks {', '.join(sorted(missing))}")
    unknown = d.keys() - allowed
    if unknown:
        raise ControlError(f"the {what} has unknown keys {', '.join(sorted(map(str, unknown)))}; "
                           f"allowed: {', '.join(sorted(allowed))}")


def _versions(value: Any, what: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ControlError(f'"{what}" must be a list of versions like ["3"], got {value!r}')
    return tuple(value)


def percent(weight: float) -> str:
    return f"{weight * 100:.4g}%"


def listing(spec: DeploymentSpec) -> str:
    """The serving versions and their roles, for error messages: '1 (stable), 2 (canary)'."""
    roles = [f"{spec.stable} (stable)"]
    if spec.canary is not None:
        roles.append(f"{spec.canary.version} (canary)")
    if spec.fallback is not None:
        roles.append(f"{spec.fallback} (fallback)")
    return ", ".join(roles)


# --- transitions -----------------------------------------------------------------------
