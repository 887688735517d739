"""What this worker serves: each model's deployment spec and the input schema of each version."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from pipeline.rejections import Reason, Rejection
from pipeline.routing import DeploymentSpec, Route, RouteDecision, route
from pipeline.schema import InputSchema


@dataclass(frozen=True, slots=True)
class Catalog:
    """``schemas[model][version]`` for every loaded version; ``specs[model]`` routes requests.

    Immutable: a worker swaps in a new catalog when a spec changes, so a batch sees one
    consistent state.
    """

    schemas: Mapping[str, Mapping[str, InputSchema]]
    specs: Mapping[str, DeploymentSpec]
    # A model without a canary routes every request that pins no version alike: to stable.
    _unpinned: dict[str, tuple[RouteDecision, InputSchema]] = field(
        init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for model, spec in self.specs.items():
            missing = spec.versions() - set(self.schemas.get(model, {}))
            if missing:
                raise ValueError(f"{model}'s spec names versions not loaded: {sorted(missing)}")
        unpinned = {}
        for model, spec in self.specs.items():
            decision = route(spec, "")  # without a canary, the same for every id
            if spec.canary is None and isinstance(decision, RouteDecision):
                unpinned[model] = decision, self.schemas[model][decision.version]
        object.__setattr__(self, "_unpinned", unpinned)

    def resolve(self, model: str, pinned: str | None,
                request_id: str) -> tuple[RouteDecision, InputSchema] | Rejection:
        """The version and route serving ``request_id`` (sticky: a hash of the id), and its schema."""
        if pinned is None and model in self._unpinned:  # per request: skip the routing
            return self._unpinned[model]
        spec = self.specs.get(model)
        if spec is None:
            served = ", ".join(sorted(self.specs)) or "none"
            return Rejection(Reason.UNKNOWN_MODEL,
                             f"model {model!r} is not served here; served models: {served}",
                             model=model)
        decision = route(spec, request_id, pinned)
        if isinstance(decision, str):
            return Rejection(Reason.UNKNOWN_VERSION, decision, model=model)
        return decision, self.schemas[model][decision.version]

    def fallback(self, model: str) -> RouteDecision | None:
        """Where a model's traffic goes while its version's breaker is open."""
        spec = self.specs.get(model)
        if spec is None or spec.fallback is None:
            return None
        return RouteDecision(spec.fallback, Route.FALLBACK)
