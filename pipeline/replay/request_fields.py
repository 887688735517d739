"""What recorded requests name, read without rewriting them: a request's id and features
(shown beside the requests a diff finds most different), the models a gate pins, and the
records a gate replays."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from pipeline.replay.errors import ReplayError
from pipeline.replay.recording import Recorded


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


def request_model(value: bytes | None) -> str | None:
    """The model a request names (either form); None when it names none readably."""
    try:
        body = orjson.loads(value) if value else None
    except orjson.JSONDecodeError:
        return None
    if not isinstance(body, dict):
        return None
    model = body.get("model_name" if "inputs" in body else "model")
    return model if isinstance(model, str) else None


def request_models(values: Iterable[bytes | None]) -> set[str]:
    """The models the requests among ``values`` name (either form)."""
    return {model for model in map(request_model, values) if model is not None}


def gated(records: Sequence[Recorded], model: str | None,
          retarget: bool = False) -> tuple[list[Recorded], str]:
    """What a gate replays of ``records``, and the one model whose versions it pins.

    ``model`` None: the one model the requests name. Given: only the requests that name it
    (and those that name none, refused alike by both versions); with ``retarget``, every
    request, each sent to ``model`` whatever it names (a recording of another model's
    traffic, for a model that reads the same features).
    """
    if retarget and model is None:
        raise ReplayError("--retarget needs --model M, the model every request is sent to")
    named = request_models(r.value for r in records)
    if model is None:
        if not named:
            raise ReplayError("no request in the recording names a model; pass --model")
        if len(named) > 1:
            raise ReplayError(f"the recording holds requests for {', '.join(sorted(named))}; a "
                              "gate pins one model's versions: pass --model")
        return list(records), named.pop()
    if retarget:
        return list(records), model
    if model not in named:
        raise ReplayError(f"no request in the recording names {model} (they name "
                          f"{', '.join(sorted(named)) or 'no model'}); pass --retarget to send every "
                          f"request to {model}")
    return [r for r in records if request_model(r.value) in (model, None)], model
