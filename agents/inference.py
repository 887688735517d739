"""The inference step: a batch of request records in, one output record per request out.

It knows nothing of Faust: the agent hands it ``Incoming`` records and sends the
``Outgoing`` ones it returns. Every request yields exactly one output, a prediction
or a dead letter (the ledger), whatever the request or the model does.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from agents.metrics import Metrics
from models.runtime import ServingModel
from pipeline.batching import padded_size
from pipeline.catalog import Catalog
from pipeline.config import Settings
from pipeline.decode import Request, decode
from pipeline.drift import CodedRows, MatrixCounter, watched_columns, watched_references
from pipeline.isolation import RowFailure, serve_isolated
from pipeline.messages import (
    ServingFacts,
    dead_letter_key,
    encode_dead_letter,
    encode_prediction,
    encode_sample,
    source_headers,
)
from pipeline.redaction import Redactor
from pipeline.rejections import Reason, Rejection
from pipeline.sampling import sampled

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Incoming:
    topic: str
    partition: int
    offset: int
    timestamp: float  # seconds since the epoch, as Kafka stamped the request
    value: bytes | None


class Kind(StrEnum):
    PREDICTION = "prediction"
    DEAD_LETTER = "dead_letter"
    SAMPLE = "sample"  # a copy of a served request, redacted, beside its prediction
    DRIFT_ROWS = "drift_rows"  # internal: served rows coded for the drift windows


@dataclass(frozen=True, slots=True)
class Outgoing:
    kind: Kind
    topic: str
    partition: int  # the request's partition: replies land on the same partition number
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]
    model: str  # "" when the request named no servable model
    version: str
    reason: Reason | None  # why, for a dead letter
    request_timestamp: float


class InferenceService:
    """Decodes, batches per model version, runs the models off the event loop, encodes."""

    def __init__(self, settings: Settings, served: Mapping[tuple[str, str], ServingModel],
                 default_versions: Mapping[str, str], metrics: Metrics, executor: Executor) -> None:
        self._served = dict(served)
        self._topics = settings.topics
        self._policies = {model: settings.policy(model) for model, _ in self._served}
        # Dead letters may name no model, or one not served: hide every model's fields.
        self._dead_letter_redactor = settings.policy("").redactor
        for policy in self._policies.values():
            self._dead_letter_redactor = self._dead_letter_redactor.merged(policy.redactor)
        self._pending_drift: dict[tuple[str, str], list[CodedRows]] = {}
        # Drift is coded for versions trained with reference statistics (the drift agent
        # keeps the windows).
        self._coders = {key: MatrixCounter(watched_references(serving.manifest.reference))
                        for key, serving in self._served.items()
                        if settings.drift and serving.manifest.reference}
        self._max_bytes = settings.max_message_bytes
        self._metrics = metrics
        self._executor = executor
        self.catalog = Catalog(
            schemas=_schemas_by_model(self._served),
            default=dict(default_versions),
        )

    async def handle(self, batch: Sequence[Incoming], expected_seconds: float = 0.0) -> list[Outgoing]:
        """One output per record. A request whose deadline would pass before the batch is
        served (``expected_seconds`` from now) is dead-lettered instead of computed."""
        outgoing: list[Outgoing] = []
        groups: dict[tuple[str, str], list[tuple[Incoming, Request]]] = {}
        now = time.time()
        for record in batch:
            decoded = decode(record.value, self.catalog, self._max_bytes)
            if isinstance(decoded, Request) and _expired(decoded, record, now + expected_seconds):
                decoded = Rejection(Reason.DEADLINE_EXCEEDED,
                                    f"the request had waited {1000 * (now - record.timestamp):.0f} ms "
                                    f"and could not be answered within its deadline_ms of "
                                    f"{decoded.deadline_ms}; raise the deadline or add workers",
                                    id=decoded.id, model=decoded.model)
            if isinstance(decoded, Rejection):
                outgoing.append(self._dead_letter(record, decoded, version=""))
            else:
                groups.setdefault((decoded.model, decoded.version), []).append((record, decoded))
        for (model, version), items in groups.items():
            outgoing.extend(await self._serve_group(model, version, items))
        return outgoing

    async def _serve_group(self, model: str, version: str,
                           items: list[tuple[Incoming, Request]]) -> list[Outgoing]:
        served = self._served[(model, version)]
        rows = np.array([request.row for _, request in items], dtype=np.float32)
        started = time.perf_counter()
        # JAX blocks: run it in the executor so commits, timers and heartbeats go on.
        results = await asyncio.get_running_loop().run_in_executor(
            self._executor, serve_isolated, served.predict, rows)
        self._metrics.inference_latency.labels(model, version).observe(time.perf_counter() - started)
        self._metrics.batch_size.labels(model, version).observe(len(rows))
        self._metrics.padding_rows.labels(model, version).inc(
            padded_size(len(rows), served.buckets) - len(rows))
        labels = served.manifest.outputs.labels
        policy = self._policies[model]
        names = served.manifest.inputs.names
        done = time.time()
        outgoing = []
        for (record, request), result in zip(items, results, strict=True):
            if isinstance(result, RowFailure):
                log.warning("model %s:%s failed on request %s: %s", model, version, request.id,
                            result.error)
                rejection = Rejection(Reason.MODEL_ERROR, result.error, id=request.id, model=model)
                outgoing.append(self._dead_letter(record, rejection, version))
                continue
            facts = ServingFacts(route="stable", batch_size=len(rows),
                                 latency_ms=1000 * (done - record.timestamp))
            outgoing.append(Outgoing(
                kind=Kind.PREDICTION,
                topic=self._topics.predictions, partition=record.partition, key=request.id.encode(),
                value=encode_prediction(request.id, model, version, result, labels, facts),
                headers=source_headers(record.topic, record.partition, record.offset),
                model=model, version=version, reason=None, request_timestamp=record.timestamp))
            if policy.sample_rate and sampled(request.id, policy.sample_rate):
                outgoing.append(self._sample(record, request, names, result, labels, policy.redactor))
        coder = self._coders.get((model, version))
        served_rows = [i for i, result in enumerate(results) if not isinstance(result, RowFailure)]
        if coder is not None and served_rows:
            classes = np.stack([results[i] for i in served_rows]).argmax(axis=1)
            sources = [items[i][0] for i in served_rows]
            self._pending_drift.setdefault((model, version), []).append(CodedRows(
                coder.codes(watched_columns(rows[served_rows], classes)),
                np.array([r.partition for r in sources], np.int32),
                np.array([r.offset for r in sources], np.int64),
                np.array([round(r.timestamp * 1000) for r in sources], np.int64)))
        return outgoing

    def _sample(self, record: Incoming, request: Request, names: Sequence[str], result: np.ndarray,
                labels: Sequence[str], redactor: Redactor) -> Outgoing:
        features = redactor.fields(dict(zip(names, request.row, strict=True)))
        return Outgoing(
            kind=Kind.SAMPLE, topic=self._topics.samples, partition=record.partition,
            key=request.id.encode(),
            value=encode_sample(request.id, request.model, request.version, record.timestamp,
                                features, result, labels),
            headers=source_headers(record.topic, record.partition, record.offset),
            model=request.model, version=request.version, reason=None,
            request_timestamp=record.timestamp)

    def drift_rows(self) -> list[Outgoing]:
        """The rows served since the last call, coded for drift, as one message per version.

        Called every fraction of a second rather than per batch: the drift agent's cost
        is per message, and small batches under light load would multiply it.
        """
        messages = []
        for (model, version), parts in sorted(self._pending_drift.items()):
            key = f"{model}:{version}".encode()
            rows = CodedRows.concatenate(parts)
            # All of a version's rows go to one partition: one worker owns its windows.
            messages.append(Outgoing(
                kind=Kind.DRIFT_ROWS, topic=self._topics.drift_rows, partition=zlib.crc32(key),
                key=key, value=rows.to_bytes(), headers=[], model=model, version=version,
                reason=None, request_timestamp=float(rows.timestamps_ms.max()) / 1000))
        self._pending_drift.clear()
        return messages

    def _dead_letter(self, record: Incoming, rejection: Rejection, version: str) -> Outgoing:
        return Outgoing(
            kind=Kind.DEAD_LETTER, topic=self._topics.deadletter, partition=record.partition,
            key=dead_letter_key(rejection, record.topic, record.partition, record.offset),
            value=encode_dead_letter(rejection, self._dead_letter_redactor.original(record.value)),
            headers=source_headers(record.topic, record.partition, record.offset),
            model=rejection.model or "", version=version, reason=rejection.reason,
            request_timestamp=record.timestamp)

    def fail_batch(self, batch: Sequence[Incoming], error: Exception) -> list[Outgoing]:
        """Dead letters for a whole batch, when serving it failed outside any model call."""
        message = f"the worker failed to serve this batch: {type(error).__name__}: {error}"
        return [self._dead_letter(record, Rejection(Reason.MODEL_ERROR, message), version="")
                for record in batch]

    def delivered(self, outgoing: Sequence[Outgoing]) -> None:
        """Count outputs once the broker has acknowledged them."""
        m, now = self._metrics, time.time()
        # Count per label set, then touch each metric once: label lookups cost more
        # than the increments.
        served: Counter[tuple[str, str]] = Counter()
        samples: Counter[str] = Counter()
        dead: Counter[tuple[str, str, Reason]] = Counter()
        latencies: dict[str, list[float]] = {}
        for out in outgoing:
            if out.kind is Kind.PREDICTION:
                served[(out.model, out.version)] += 1
                latencies.setdefault(out.model, []).append(now - out.request_timestamp)
            elif out.kind is Kind.DEAD_LETTER:
                assert out.reason is not None
                dead[(out.model, out.version, out.reason)] += 1
            elif out.kind is Kind.SAMPLE:
                samples[out.model] += 1
        for (model, version), count in served.items():
            m.requests.labels(model, version, "prediction").inc(count)
            m.predictions.labels(model, version, "stable").inc(count)
        for (model, version, reason), count in dead.items():
            m.requests.labels(model, version, "deadletter").inc(count)
            m.deadletters.labels(model, str(reason)).inc(count)
        for model, count in samples.items():
            m.samples.labels(model).inc(count)
        for model, seconds in latencies.items():
            histogram = m.e2e_latency.labels(model)
            for s in seconds:
                histogram.observe(max(0.0, s))


def _expired(request: Request, record: Incoming, answer_time: float) -> bool:
    return (request.deadline_ms is not None
            and (answer_time - record.timestamp) * 1000 > request.deadline_ms)


def _schemas_by_model(served: Mapping[tuple[str, str], ServingModel]) -> dict:
    schemas: dict = {}
    for (model, version), serving in served.items():
        schemas.setdefault(model, {})[version] = serving.manifest.inputs
    return schemas
