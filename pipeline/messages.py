"""Output message encodings (contract): the bytes of predictions, dead letters, samples and
shadow answers, and the source headers that name a reply's request.

Clients parse what these write (``pipeline.client``); which topic, partition and key
each record gets is ``pipeline.outputs``'s job.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from pipeline.redaction import RedactedOriginal
from pipeline.rejections import Rejection

SOURCE_TOPIC_HEADER = "streamserve-source-topic"
SOURCE_PARTITION_HEADER = "streamserve-source-partition"
SOURCE_OFFSET_HEADER = "streamserve-source-offset"


@dataclass(frozen=True, slots=True)
class ServingFacts:
    """How a prediction was made, reported in its ``parameters``."""

    route: str
    batch_size: int
    latency_ms: float


def encode_prediction(request_id: str, model: str, version: str, probabilities: np.ndarray,
                      labels: Sequence[str], facts: ServingFacts) -> bytes:
    """An Open Inference Protocol v2 response for one row of class probabilities."""
    return orjson.dumps({
        "id": request_id,
        "model_name": model,
        "model_version": version,
        "outputs": _outputs(probabilities, labels),
        "parameters": {"route": facts.route, "batch_size": facts.batch_size,
                       "latency_ms": round(facts.latency_ms, 3)},
    })


def encode_sample(request_id: str, model: str, version: str, timestamp: float,
                  features: Mapping[str, Any], probabilities: np.ndarray,
                  labels: Sequence[str]) -> bytes:
    """A sampled request (its features as the model read them, already redacted) and its
    prediction, for offline checks. ``timestamp``: the request's, in seconds."""
    return orjson.dumps({"id": request_id, "model_name": model, "model_version": version,
                         "timestamp": timestamp, "features": features,
                         "outputs": _outputs(probabilities, labels)})


def encode_shadow(request_id: str, model: str, version: str, answered_by: str,
                  ours: np.ndarray | Any, theirs: np.ndarray | Any, labels: Sequence[str],
                  their_labels: Sequence[str]) -> bytes:
    """A shadow version's answer beside the one the client got. ``ours``/``theirs`` are
    probabilities over ``labels``/``their_labels``, or a failure (anything with an ``error``)."""
    message: dict[str, Any] = {"id": request_id, "model_name": model, "model_version": version,
                               "answered_by": answered_by}
    if isinstance(ours, np.ndarray):
        message["outputs"] = _outputs(ours, labels)
    else:
        message["error"] = ours.error
    if isinstance(ours, np.ndarray) and isinstance(theirs, np.ndarray):
        agree, difference = agreement(ours, labels, theirs, their_labels)
        message["agree"] = agree
        if difference is not None:
            message["max_abs_difference"] = difference
    return orjson.dumps(message)


def agreement(ours: np.ndarray, labels: Sequence[str], theirs: np.ndarray,
              their_labels: Sequence[str]) -> tuple[bool, float | None]:
    """Whether two versions' answers name the same label, and the largest difference of
    their probabilities when they have the same labels in the same order (a version that
    adds or reorders classes has no such difference)."""
    agree = labels[int(np.argmax(ours))] == their_labels[int(np.argmax(theirs))]
    same = tuple(labels) == tuple(their_labels)
    return agree, float(np.abs(ours - theirs).max()) if same else None


def _outputs(probabilities: np.ndarray, labels: Sequence[str]) -> list[dict[str, Any]]:
    return [
        {"name": "probabilities", "shape": [1, len(labels)], "datatype": "FP32",
         "data": probabilities.tolist()},
        {"name": "label", "shape": [1], "datatype": "BYTES",
         "data": [labels[int(np.argmax(probabilities))]]},
    ]


def encode_dead_letter(rejection: Rejection, original: RedactedOriginal) -> bytes:
    """The rejection plus the request as received after redaction (base64 when it is not
    UTF-8; ``original_encoding`` "withheld" when redaction could not find its fields, or
    when it was too large to keep: then ``original_bytes`` and ``original_sha256`` say
    what it was)."""
    raw = original.value or b""
    if original.withheld:
        text, encoding = "", "withheld"
    else:
        try:
            text, encoding = raw.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            text, encoding = base64.b64encode(raw).decode("ascii"), "base64"
    message = {"id": rejection.id, "reason": str(rejection.reason), "error": rejection.error,
               "original": text, "original_encoding": encoding}
    if original.sha256 is not None:
        message |= {"original_bytes": original.size, "original_sha256": original.sha256}
    if rejection.model is not None:
        message["model"] = rejection.model
    return orjson.dumps(message)


def source_headers(topic: str, partition: int, offset: int) -> list[tuple[str, bytes]]:
    return [(SOURCE_TOPIC_HEADER, topic.encode()),
            (SOURCE_PARTITION_HEADER, b"%d" % partition),
            (SOURCE_OFFSET_HEADER, b"%d" % offset)]
