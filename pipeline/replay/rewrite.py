"""How a replay changes the requests it sends again: ``Rewrite`` retargets them (model,
pinned version, both request forms) and prefixes their ids with the run id
(``<run id>/<id>``).

A value that is not a JSON object, or holds a key twice, is sent as recorded, since
rewriting it would change how it is refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import orjson

from pipeline.decode import MAX_ID_LENGTH
from pipeline.replay.errors import ReplayError
from pipeline.replay.runs import check_run_id


@dataclass(frozen=True, slots=True)
class Rewrite:
    """How a replay changes requests: ``prefix`` (a run id) prefixes ids and keys equal to
    them as ``prefix/id``; ``model`` retargets (``model`` or ``model_name``), ``version`` pins
    (``version`` or ``model_version``)."""

    prefix: str | None = None
    model: str | None = None
    version: str | None = None

    def __post_init__(self) -> None:
        if self.prefix is not None:
            check_run_id(self.prefix)
        for name, value in (("model", self.model), ("version", self.version)):
            if value is not None and (not isinstance(value, str) or not value):
                raise ReplayError(f"--{name} must be a non-empty name, got {value!r}")

    @property
    def changes_anything(self) -> bool:
        return self.prefix is not None or self.model is not None or self.version is not None

    def apply(self, key: bytes | None, value: bytes | None) -> tuple[bytes | None, bytes | None]:
        """The rewritten key and value; both unchanged when the value is not a JSON object
        read unambiguously (replayed as recorded, to be refused as it was)."""
        if not self.changes_anything or not value:
            return key, value
        body = _unambiguous_object(value)
        if body is None:
            return key, value
        oip = "inputs" in body
        if self.prefix is not None and isinstance(body.get("id"), str):
            original = body["id"]
            body["id"] = f"{self.prefix}/{original}"
            if len(body["id"]) > MAX_ID_LENGTH >= len(original):
                raise ReplayError(f"request id {original!r} with the run prefix is over "
                                  f"{MAX_ID_LENGTH} characters; use a shorter --run-id")
            if key == original.encode():
                key = body["id"].encode()
        model_field = "model_name" if oip else "model"
        if self.model is not None and model_field in body:
            body[model_field] = self.model
        if self.version is not None:
            body["model_version" if oip else "version"] = self.version
        return key, orjson.dumps(body)


def _unambiguous_object(value: bytes) -> dict[str, Any] | None:
    try:
        body = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(body, dict):
        return None
    try:
        json.loads(value, object_pairs_hook=_refuse_repeats)
    except (ValueError, RecursionError):
        return None
    return body


def _refuse_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    d = dict(pairs)
    if len(d) != len(pairs):
        raise ValueError("a key appears twice")
    return d
