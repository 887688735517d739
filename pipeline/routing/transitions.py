"""How operators change a deployment: the transitions from one ``DeploymentSpec`` to the next.

Each is a pure function returning a new spec with ``revision + 1`` (so the shell can
compare-and-set); ``current`` itself when the state it asks for already holds
(``unchanged`` tells, and the shell then writes nothing); or raising ``ControlError``
with a sentence saying why it cannot apply and which ``streamserve`` command to run
instead. The table of transitions is in ``pipeline.routing``'s docstring.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from pipeline.routing.spec import (
    HISTORY_LIMIT,
    Canary,
    ControlError,
    DeploymentSpec,
    check_name,
    listing,
    percent,
)

def _existing(current: DeploymentSpec | None) -> DeploymentSpec:
    if current is None:
        raise ControlError("this model is not deployed yet: deploy a stable version first "
                           "(streamserve deploy MODEL VERSION)")
    return current


def unchanged(before: DeploymentSpec | None, after: DeploymentSpec) -> bool:
    """Whether a transition from ``before`` found its target state holding already and
    returned it as it was (no new revision): the shell then writes nothing."""
    return before is not None and after == before


def _next(current: DeploymentSpec, **changes: Any) -> DeploymentSpec:
    return replace(current, revision=current.revision + 1, **changes)


def _with_stable(current: DeploymentSpec, version: str, history: tuple[str, ...]) -> DeploymentSpec:
    """``version`` becomes stable: it leaves the canary, fallback and shadow roles."""
    canary = current.canary
    if canary is not None and canary.version == version:
        canary = None
    return _next(current, stable=version, canary=canary,
                 fallback=None if current.fallback == version else current.fallback,
                 shadows=tuple(v for v in current.shadows if v != version),
                 history=history[-HISTORY_LIMIT:])


def deploy(current: DeploymentSpec | None, model: str, version: str) -> DeploymentSpec:
    """Serve ``version`` as stable; the previous stable goes to history for rollback.

    A canary of ``version`` is cleared (this is then the same as ``promote``); a canary
    of another version keeps running against the new stable. Already stable: ``current``.
    """
    check_name(model, "the model name")
    check_name(version, "the version")
    if current is None:
        return DeploymentSpec(model=model, stable=version, revision=1)
    if current.model != model:
        raise ControlError(f"the deployment read for {model} is {current.model}'s; run "
                           f"`streamserve routes` to see each model's deployment")
    if current.stable == version:
        return current
    return _with_stable(current, version, (*current.history, current.stable))


def start_canary(current: DeploymentSpec | None, version: str, weight: float) -> DeploymentSpec:
    """Send the share ``weight`` of requests to ``version``; re-weights a running canary.

    Raising the weight of a running canary only adds users to it: each request id's
    draw depends on the model and the canary version, not on the weight. The canary
    running already at ``weight``: ``current``.
    """
    spec = _existing(current)
    check_name(version, "the canary version")
    canary = Canary(version, weight)
    if version == spec.stable:
        raise ControlError(f"{spec.model} version {version} is already stable; a canary tests a "
                           f"different version against it (streamserve canary {spec.model} "
                           f"VERSION --weight W)")
    if version == spec.fallback:
        raise ControlError(f"{spec.model} version {version} is the fallback; clear the fallback "
                           f"first (streamserve fallback {spec.model} --clear) to run it as a "
                           f"canary")
    if spec.canary is not None:
        if spec.canary.version != version:
            raise ControlError(f"{spec.model} already runs canary {spec.canary.version} "
                               f"({percent(spec.canary.weight)}); promote it (streamserve "
                               f"promote {spec.model}) or roll it back (streamserve rollback "
                               f"{spec.model}) before starting canary {version}")
        if spec.canary.weight == weight:
            return spec
    return _next(spec, canary=canary, shadows=tuple(v for v in spec.shadows if v != version))


def add_shadow(current: DeploymentSpec | None, version: str) -> DeploymentSpec:
    """Mirror every request to ``version``; its predictions go to the shadow topic only.
    Already a shadow: ``current``."""
    spec = _existing(current)
    check_name(version, "the shadow version")
    if version in spec.shadows:
        return spec
    if version in spec.serving_versions():
        raise ControlError(f"{spec.model} version {version} already serves ({listing(spec)}); "
                           f"a shadow is a version that does not")
    return _next(spec, shadows=(*spec.shadows, version))


def remove_shadow(current: DeploymentSpec | None, version: str) -> DeploymentSpec:
    """Stop mirroring requests to ``version``. Not a shadow: ``current``."""
    spec = _existing(current)
    check_name(version, "the shadow version")
    if version not in spec.shadows:
        return spec
    return _next(spec, shadows=tuple(v for v in spec.shadows if v != version))


def promote(current: DeploymentSpec | None) -> DeploymentSpec:
    """The canary's version becomes stable; the previous stable goes to history."""
    spec = _existing(current)
    if spec.canary is None:
        raise ControlError(f"{spec.model} has no canary to promote; start one with "
                           f"`streamserve canary {spec.model} VERSION --weight W`, or deploy a "
                           f"version directly (streamserve deploy {spec.model} VERSION)")
    return _with_stable(spec, spec.canary.version, (*spec.history, spec.stable))


def rollback(current: DeploymentSpec | None, version: str | None = None) -> DeploymentSpec:
    """Undo the last change of what serves.

    With a canary: drop it (``version``, when given, must be the canary's). Without one:
    stable := ``version`` or, when None, the newest version in history. The target must
    be in history (use ``deploy`` for any other version); the history from the target
    on is dropped, so rolling back twice goes two versions back, not forth and back.
    ``version`` stable already (and no canary): ``current``.
    """
    spec = _existing(current)
    if spec.canary is not None:
        if version is not None and version != spec.canary.version:
            raise ControlError(f"{spec.model} runs canary {spec.canary.version}: drop it first "
                               f"(streamserve rollback {spec.model}), then roll stable back "
                               f"(streamserve rollback {spec.model} {version})")
        return _next(spec, canary=None)
    if version is None:
        if not spec.history:
            raise ControlError(f"{spec.model} has no earlier stable version to roll back to; "
                               f"deploy the version you want instead (streamserve deploy "
                               f"{spec.model} VERSION)")
        index = len(spec.history) - 1
    else:
        if version == spec.stable:
            return spec
        if version not in spec.history:
            earlier = ", ".join(spec.history) or "none"
            raise ControlError(f"{spec.model} version {version!r} is not an earlier stable version "
                               f"(history: {earlier}); deploy it instead (streamserve deploy "
                               f"{spec.model} {version})")
        index = len(spec.history) - 1 - spec.history[::-1].index(version)
    return _with_stable(spec, spec.history[index], spec.history[:index])


def set_fallback(current: DeploymentSpec | None, version: str | None) -> DeploymentSpec:
    """Serve ``version`` while the stable or canary breaker is open; None clears the fallback.
    Already so (that fallback, or none to clear): ``current``."""
    spec = _existing(current)
    if version is None:
        return spec if spec.fallback is None else _next(spec, fallback=None)
    check_name(version, "the fallback version")
    if version == spec.fallback:
        return spec
    if version == spec.stable or (spec.canary is not None and version == spec.canary.version):
        role = "stable" if version == spec.stable else "the canary"
        raise ControlError(f"{spec.model} version {version} is {role}; a fallback must be another "
                           f"version, usually an earlier stable one (streamserve routes shows "
                           f"{spec.model}'s)")
    return _next(spec, fallback=version, shadows=tuple(v for v in spec.shadows if v != version))


def set_batching(current: DeploymentSpec | None, max_batch: int | None,
                 batch_timeout_ms: int | None) -> DeploymentSpec:
    """Override the worker's batching settings for this model; None restores the setting.
    Those settings already: ``current``."""
    spec = _existing(current)
    if (max_batch, batch_timeout_ms) == (spec.max_batch, spec.batch_timeout_ms):
        return spec
    return _next(spec, max_batch=max_batch, batch_timeout_ms=batch_timeout_ms)
