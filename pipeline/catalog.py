"""Which models and versions this worker serves, and the input schema of each."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pipeline.rejections import Reason, Rejection
from pipeline.schema import InputSchema


@dataclass(frozen=True, slots=True)
class Catalog:
    """``schemas[model][version]``; ``default[model]`` is the version that serves unpinned requests."""

    schemas: Mapping[str, Mapping[str, InputSchema]]
    default: Mapping[str, str]

    def __post_init__(self) -> None:
        for model, version in self.default.items():
            if version not in self.schemas.get(model, {}):
                raise ValueError(f"default version {model}:{version} is not in the catalog")

    def resolve(self, model: str, version: str | None) -> tuple[str, InputSchema] | Rejection:
        versions = self.schemas.get(model)
        if not versions or model not in self.default:
            served = ", ".join(sorted(self.default)) or "none"
            return Rejection(Reason.UNKNOWN_MODEL,
                             f"model {model!r} is not served here; served models: {served}",
                             model=model)
        chosen = self.default[model] if version is None else version
        schema = versions.get(chosen)
        if schema is None:
            return Rejection(Reason.UNKNOWN_VERSION,
                             f"version {chosen!r} of model {model!r} is not deployed; deployed "
                             f"versions: {', '.join(sorted(versions))}; omit 'version' to use "
                             f"{self.default[model]!r}",
                             model=model)
        return chosen, schema
