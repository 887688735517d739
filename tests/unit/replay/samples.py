"""Requests, replies and runs' answers the replay tests build on."""

from __future__ import annotations

import orjson

from pipeline.replay import Answer, DiffReport, Recorded, Side, diff


FEATURES = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


def tabular(request_id: str, **extra) -> bytes:
    return orjson.dumps({"id": request_id, "model": "iris", "features": FEATURES, **extra})


def oip(request_id: str, **extra) -> bytes:
    return orjson.dumps({"id": request_id, "model_name": "iris", **extra, "inputs": [
        {"name": k, "shape": [1], "datatype": "FP32", "data": [v]} for k, v in FEATURES.items()]})


def record(value: bytes | None, key: bytes | None = None, ts: int = 1_000, offset: int = 0,
           headers=()) -> Recorded:
    return Recorded("streamserve.requests", 0, offset, ts, key, value, tuple(headers))


def prediction(request_id: str, label: str, probabilities, latency: float = 3.0,
               version: str = "1") -> bytes:
    return orjson.dumps({"id": request_id, "model_name": "iris", "model_version": version,
                         "outputs": [{"name": "probabilities", "shape": [1, len(probabilities)],
                                      "datatype": "FP32", "data": probabilities},
                                     {"name": "label", "shape": [1], "datatype": "BYTES",
                                      "data": [label]}],
                         "parameters": {"route": "pinned", "batch_size": 4, "latency_ms": latency}})


def dead_letter(request_id: str | None, reason: str) -> bytes:
    return orjson.dumps({"id": request_id, "reason": reason, "error": "...", "original": "x",
                         "original_encoding": "utf-8"})


def side(name: str, replies: dict[str, Answer], requests: int | None = None) -> Side:
    return Side(name, replies, requests)


def p(label: str, scores=(0.5, 0.5), latency: float = 3.0) -> Answer:
    return Answer("x", "1", label, {"probabilities": tuple(scores)}, None, latency)


def gate_report(disagreeing: int, latency: float, unanswered: int = 0) -> DiffReport:
    """A diff of 100 requests: the first ``disagreeing`` answered otherwise, the last
    ``unanswered`` not answered by the candidate."""
    base = {f"r-{i}": p("a") for i in range(100)}
    cand = {f"r-{i}": p("b" if i < disagreeing else "a", latency=latency) for i in range(100 - unanswered)}
    return diff(side("B", base, 100), side("C", cand, 100))
