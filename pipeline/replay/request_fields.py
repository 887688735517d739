"""What recorded requests name, read without rewriting them: a request's id and features
(shown beside the requests a diff finds most different) and the models a gate pins."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson


def request_features(value: bytes | None) -> tuple[str, dict[str, Any]] | None:
    """A request's id and its features (tabular ``features``, or OIP inputs by name)."""
    try:
        body = orjson.loads(value) if value else None
    except orjson.JSONDecodeError:
        return None
    if not isinstance(body, dict) or not isinstance(body.get("id"), str):
        return None
    if isinstance(body.get("features"), dict):
        return body["id"], body["features"]
    inputs = body.get("inputs")
    if isinstance(inputs, list):
        features: dict[str, Any] = {}
        for i, tensor in enumerate(inputs):
            if isinstance(tensor, dict):
                data = tensor.get("data")
                single = isinstance(data, list) and len(data) == 1
                features[str(tensor.get("name", f"input{i}"))] = data[0] if single else data
        return body["id"], features
    return body["id"], {}


def request_models(values: Iterable[bytes | None]) -> set[str]:
    """The models the requests among ``values`` name (either form)."""
    models = set()
    for value in values:
        try:
            body = orjson.loads(value) if value else None
        except orjson.JSONDecodeError:
            continue
        if isinstance(body, dict):
            model = body.get("model_name" if "inputs" in body else "model")
            if isinstance(model, str):
                models.add(model)
    return models
