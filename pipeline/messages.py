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
from pipeline.schema import OutputSchema

SOURCE_TOPIC_HEADER = "streamserve-source-topic"
SOURCE_PARTITION_HEADER = "streamserve-source-partition"
SOURCE_OFFSET_HEADER = "streamserve-source-offset"


@dataclass(frozen=True, slots=True)
class ServingFacts:
    """How a prediction was made, reported in its ``parameters``."""

    route: str
    batch_size: int
    latency_ms: float


def encode_prediction(request_id: str, model: str, version: str, answer: np.ndarray,
                      outputs: OutputSchema, facts: ServingFacts) -> bytes:
    """An Open Inference Protocol v2 response for one row of the model's answers."""
    [encoded] = PredictionEncoder(model, version, outputs, facts.route, facts.batch_size).encode(
        [request_id], answer.reshape(1, -1), [facts.latency_ms])
    return encoded


class PredictionEncoder:
    """The responses of one version to a batch's requests: what they share (the model, the
    version, the output names and shapes, the route, the batch size) is encoded once, so
    each response costs only its id, numbers, label and latency. The parts are cut from
    the response object encoded with stand-ins for those four, so the bytes are those of
    ``orjson.dumps`` of the response (``_outputs`` says what it holds)."""

    __slots__ = ("_labels", "_parts", "route", "version")

    def __init__(self, model: str, version: str, outputs: OutputSchema, route: str,
                 batch_size: int) -> None:
        self.version, self.route = version, route
        template = orjson.dumps(_response(_STAND_IN, model, version,
                                          _output_objects(outputs, _STAND_IN, _STAND_IN), route,
                                          batch_size, _STAND_IN))
        stand_in = orjson.dumps(_STAND_IN)
        # A classifier's label stands in as ["..."]: it is the label's own JSON string.
        self._parts = template.split(stand_in)
        if len(self._parts) != (5 if outputs.labels else 4):
            raise ValueError(f"model {model!r}, version {version!r} or route {route!r} holds "
                             "the encoder's stand-in; no served name may")
        self._labels = tuple(orjson.dumps(label) for label in outputs.labels)

    def encode(self, request_ids: Sequence[str], answers: np.ndarray,
               latencies_ms: Sequence[float]) -> list[bytes]:
        """The responses to ``request_ids``: ``answers`` holds the version's row for each,
        in order, and ``latencies_ms`` each one's latency. The rows become lists in one
        call, and a classifier's labels come from one argmax (the first largest, all
        finite), so only the byte joins are per response."""
        p, dumps = self._parts, orjson.dumps
        rows = answers.tolist()
        if self._labels:
            labels = self._labels
            return [b"".join((p[0], dumps(request_id), p[1], dumps(values), p[2], labels[best], p[3],
                              dumps(round(latency, 3)), p[4]))
                    for request_id, values, best, latency in zip(
                        request_ids, rows, answers.argmax(axis=1).tolist(), latencies_ms, strict=True)]
        return [b"".join((p[0], dumps(request_id), p[1], dumps(values), p[2], dumps(round(latency, 3)), p[3]))
                for request_id, values, latency in zip(request_ids, rows, latencies_ms, strict=True)]


def encode_sample(request_id: str, model: str, version: str, timestamp: float,
                  features: Mapping[str, Any], answer: np.ndarray,
                  outputs: OutputSchema) -> bytes:
    """A sampled request (its features as the model read them, already redacted) and its
    prediction, for offline checks. ``timestamp``: the request's, in seconds."""
    return orjson.dumps({"id": request_id, "model_name": model, "model_version": version,
                         "timestamp": timestamp, "features": features,
                         "outputs": _outputs(answer, outputs)})


def encode_shadow(request_id: str, model: str, version: str, answered_by: str,
                  ours: np.ndarray | Any, theirs: np.ndarray | Any, outputs: OutputSchema,
                  their_outputs: OutputSchema) -> bytes:
    """A shadow version's answer beside the one the client got. ``ours``/``theirs`` are
    answers as ``outputs``/``their_outputs`` describe them, or a failure (anything with an
    ``error``)."""
    message: dict[str, Any] = {"id": request_id, "model_name": model, "model_version": version,
                               "answered_by": answered_by}
    if isinstance(ours, np.ndarray):
        message["outputs"] = _outputs(ours, outputs)
    else:
        message["error"] = ours.error
    if isinstance(ours, np.ndarray) and isinstance(theirs, np.ndarray):
        agree, difference = agreement(ours, outputs, theirs, their_outputs)
        message["agree"] = agree
        if difference is not None:
            message["max_abs_difference"] = difference
    return orjson.dumps(message)


def agreement(ours: np.ndarray, outputs: OutputSchema, theirs: np.ndarray,
              their_outputs: OutputSchema) -> tuple[bool, float | None]:
    """Whether two versions' answers agree, and the largest difference of their values when
    they are comparable. Classifiers agree when they name the same label; their
    probabilities are compared when they have the same labels in the same order (a version
    that adds or reorders classes has no such difference). Regressors agree when
    ``values_agree``. A classifier and a regressor never agree."""
    if outputs.is_regressor != their_outputs.is_regressor:
        return False, None
    same = outputs == their_outputs
    difference = float(np.abs(ours - theirs).max()) if same else None
    if outputs.is_regressor:
        return same and values_agree(ours, theirs), difference
    agree = outputs.labels[int(np.argmax(ours))] == their_outputs.labels[int(np.argmax(theirs))]
    return agree, difference


AGREE_RELATIVE = 0.01  # regressors' answers agree within 1% of the larger magnitude ...
AGREE_ABSOLUTE = 1e-6  # ... or this much, for values near zero


def values_agree(ours: Sequence[float] | np.ndarray, theirs: Sequence[float] | np.ndarray) -> bool:
    """Two regressors' answers agree: every value within ``AGREE_RELATIVE`` of the larger
    magnitude (or ``AGREE_ABSOLUTE``)."""
    a, b = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    if a.shape != b.shape:
        return False
    bound = AGREE_RELATIVE * np.maximum(np.abs(a), np.abs(b)) + AGREE_ABSOLUTE
    return bool(np.all(np.abs(a - b) <= bound))


def _outputs(answer: np.ndarray, outputs: OutputSchema) -> list[dict[str, Any]]:
    label = None if outputs.is_regressor else outputs.labels[int(np.argmax(answer))]
    return _output_objects(outputs, answer.tolist(), label)


def _output_objects(outputs: OutputSchema, data: Any, label: Any) -> list[dict[str, Any]]:
    """The OIP outputs of one row: a regressor's values, or a classifier's probabilities
    (``data``) and top ``label``."""
    if outputs.is_regressor:
        return [{"name": "value", "shape": [outputs.targets], "datatype": "FP32", "data": data}]
    return [
        {"name": "probabilities", "shape": [1, len(outputs.labels)], "datatype": "FP32",
         "data": data},
        {"name": "label", "shape": [1], "datatype": "BYTES", "data": [label]},
    ]


def _response(request_id: Any, model: str, version: str, outputs: list[dict[str, Any]],
              route: str, batch_size: int, latency_ms: Any) -> dict[str, Any]:
    return {"id": request_id, "model_name": model, "model_version": version, "outputs": outputs,
            "parameters": {"route": route, "batch_size": batch_size, "latency_ms": latency_ms}}


# Stands in for a response's own parts in PredictionEncoder's template: no JSON a served
# model, version or route encodes to holds it.
_STAND_IN = "\x00streamserve-stand-in\x00"


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
