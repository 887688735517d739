"""The inference step: a batch of request records in, one output record per request out.

It knows nothing of Faust: the server hands it ``Incoming`` records and sends the
``Outgoing`` ones it returns (``pipeline.outputs``). Every request yields exactly one
output, a prediction or a dead letter (the ledger), whatever the request or the model
does. Beside them go samples, shadow outputs and (every flush) drift codes.

A batch reads top-down: ``handle`` admits its records (``pipeline.admission``: decode,
dedupe, deadline, tenant quota, grouping), serves each group in the model thread
(``_serve_group``, with a second opinion for the rows a version fails on), then asks the
shadows, and builds an output per request.

What it serves is a ``Serving`` (``agents.worker.deployment``: the loaded versions, each
model's spec and what derives from them), swapped whole when the control plane changes a
spec; a batch works on the one it started with. Per version it keeps a circuit breaker,
and per model with a canary a ``CanaryJudge`` whose verdicts it hands to
``on_canary_verdict``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

import jax
import numpy as np

from agents.kafka.topics import DEFAULT_MESSAGE_LIMIT
from agents.worker.deployment import Deployment, Serving, roles
from agents.worker.metrics import Metrics, observe_all
from models.runtime import ServingModel
from pipeline import messages, outputs
from pipeline.admission import admit, forget_retryable
from pipeline.batching import padded_size
from pipeline.breaker import BreakerState
from pipeline.canary import CanaryJudge, CanaryVerdict
from pipeline.config import Settings
from pipeline.decode import Request
from pipeline.dedupe import RecentIds
from pipeline.drift import ServedRows, watched_columns
from pipeline.isolation import Answers, RowFailure, serve_isolated
from pipeline.messages import PredictionEncoder
from pipeline.outputs import Incoming, Outgoing
from pipeline.quality.significance import CANARY_ALPHA, canary_worse
from pipeline.quality.wire import KeptAnswers
from pipeline.rejections import Reason, Rejection
from pipeline.routing import Route, RouteDecision
from pipeline.sampling import sampled
from pipeline.schema import OutputSchema
from pipeline.tenant_quotas import TenantQuotas

log = logging.getLogger(__name__)

_BREAKER_VALUE = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}
# A model call expected to be shorter than this runs on the event loop itself: handing it
# to the model thread and back costs more (about 0.4 ms a call, measured with 8 rows of a
# 32-feature MLP) than a small model's call. The expectation is the version's last call,
# scaled up by the rows when this call has more; a version's first call, and any after a
# longer one, go to the thread.
INLINE_CALL_SECONDS = 0.001


@dataclass(frozen=True, slots=True)
class OutputLimits:
    """The largest record the broker takes on the dead-letter and drift-rows topics,
    read from it at start (``agents.kafka.topics.message_limit``)."""

    dead_letter: int = DEFAULT_MESSAGE_LIMIT
    drift_rows: int = DEFAULT_MESSAGE_LIMIT


# A served group: its requests, their rows and each row's result.
_Served = tuple[list[tuple[Incoming, Request]], np.ndarray, Answers]


class InferenceService:
    """Admits, batches per model version, runs the models off the event loop, answers."""

    def __init__(self, settings: Settings, metrics: Metrics, executor: Executor,
                 on_canary_verdict: Callable[[str, int, CanaryVerdict], None] | None = None,
                 limits: OutputLimits = OutputLimits()) -> None:
        self._settings = settings
        self._topics = settings.topics
        # An original escaped into a dead letter grows at most sevenfold (\u00XX per byte).
        self._max_original = min(settings.admission.max_message_bytes, limits.dead_letter // 7)
        self._drift_bytes = min(outputs.DRIFT_MESSAGE_BYTES, limits.drift_rows // 2)
        self._faults = settings.faults.plan
        self._device = jax.default_backend()  # "cpu", "gpu" or "tpu": what model calls cost
        metrics.price_per_hour.labels("cpu").set(settings.cost.price_cpu_hour)
        metrics.price_per_hour.labels(self._device if self._device != "cpu" else "gpu").set(
            settings.cost.price_gpu_hour)
        self._recent = (RecentIds(settings.admission.dedupe_ids, settings.admission.dedupe_window_s)
                        if settings.admission.dedupe_ids else None)
        plan = settings.admission.tenant_quota_plan
        self._quotas = TenantQuotas(plan) if plan else None
        self._metrics = metrics
        self._executor = executor
        self._on_canary_verdict = on_canary_verdict
        self._serving = Serving.of(Deployment({}, {}), settings)
        self._queueing_budget_s = settings.batching.batch_timeout_ms / 1000
        self._judges: dict[tuple[str, int], CanaryJudge] = {}  # (model, spec revision)
        self._judged: set[tuple[str, int]] = set()  # canaries already rolled back or promoted
        self._pending_drift: dict[tuple[str, str], ServedRows] = {}  # coded at each flush
        # The answers kept for the label join since the last flush (STREAMSERVE_LABELS).
        self._kept = KeptAnswers() if settings.quality.enabled else None
        # Per version: its last model call's seconds and rows.
        self._last_call: dict[tuple[str, str], tuple[float, int]] = {}

    @property
    def deployment(self) -> Deployment:
        return self._serving.deployment

    @property
    def queueing_budget_s(self) -> float:
        """The worker's queue holds every model's requests: the tightest budget applies."""
        return self._queueing_budget_s

    async def warm(self, models: Sequence[ServingModel]) -> None:
        """Run each of ``models`` once per bucket in the model thread, before it serves; then
        time a call of one row, which decides where its first serving call runs
        (``INLINE_CALL_SECONDS``). Without it a new version's calls started in the thread,
        where a call's time holds its waits for the busy event loop, while the versions
        beside it ran on the loop: a canary judged on those times against its stable was
        rolled back for calls of 11 ms against 0.4 (seen in a chaos run)."""
        loop = asyncio.get_running_loop()
        for served in models:
            await loop.run_in_executor(self._executor, served.warm)
            row = np.zeros((1, served.n_features), np.float32)
            _, seconds = await loop.run_in_executor(self._executor, _timed_serve,
                                                    self._faults.model(served.predict), row)
            self._last_call[(served.model, served.version)] = seconds, 1

    def install(self, deployment: Deployment) -> None:
        """Serve ``deployment`` from the next batch on (its versions loaded and warm)."""
        s = self._settings
        self._queueing_budget_s = min(
            (spec.batch_timeout_ms or s.batching.batch_timeout_ms for spec in deployment.specs.values()),
            default=s.batching.batch_timeout_ms) / 1000
        # Canary judges of revisions no longer current never reach a verdict: drop them.
        current = {(model, spec.revision) for model, spec in deployment.specs.items()}
        self._judges = {key: judge for key, judge in self._judges.items() if key in current}
        self._judged &= current
        self._serving = Serving.of(deployment, s, self._serving)
        self._last_call = {key: last for key, last in self._last_call.items()
                           if key in deployment.models}
        m = self._metrics
        m.loaded.clear()
        for model, spec in deployment.specs.items():
            for version, role in roles(spec):
                m.loaded.labels(model, version, role).set(1)

    async def handle(self, batch: Sequence[Incoming], expected_seconds: float = 0.0,
                     taken: float | None = None) -> list[Outgoing]:
        """One output per record. A request whose deadline would pass before the batch is
        served (``expected_seconds`` from now) is dead-lettered instead of computed;
        ``taken``: when the worker fetched the batch's oldest record (epoch seconds)."""
        serving = self._serving  # this batch's, whatever is installed while it runs
        deployment = serving.deployment
        kept_before = len(self._kept) if self._kept is not None else 0
        admission = admit(batch, serving.decoder, self._recent, self._quotas, now=time.time(),
                          clock=time.monotonic(), expected_seconds=expected_seconds, taken=taken,
                          tenants_from_records=bool(self._settings.admission.tenant_header))
        for refusal in admission.refusals:
            self._metrics.quota_rejections.labels(refusal.quota, refusal.limit).inc()
        outgoing = [self._dead_letter(serving, record, rejection, version="")
                    for record, rejection in admission.rejected]
        for (model, version, route), count in admission.slow.items():  # too slow for them
            self._feed_breaker(serving, model, version, 0, count)
            self._judge_failures(deployment, model, version, route, count)
        try:
            for (model, version, route), items in admission.groups.items():
                spec = deployment.specs[model]
                size = spec.max_batch or len(items)
                for start in range(0, len(items), size):
                    served, out = await self._serve_group(serving, model, version, route,
                                                          items[start:start + size])
                    outgoing.extend(out)
                    for shadow in spec.shadows if served is not None else ():
                        outgoing.extend(await self._shadow(deployment, model, shadow, version, served))
        except BaseException:
            # These answers will not be sent (the caller dead-letters the batch untagged).
            for quota, count in admission.quota_slots.items():
                self._quotas.release(quota, count)
            if self._kept is not None:
                self._kept.truncate(kept_before)
            raise
        if self._recent is not None:  # a request refused for now may be sent again with its id
            forget_retryable(self._recent, outgoing)
        return outgoing

    async def _serve_group(self, serving: Serving, model: str, version: str, route: Route,
                           items: list[tuple[Incoming, Request]]) -> tuple[_Served | None, list[Outgoing]]:
        """Serve one group with its version; the rows it fails on get a second opinion.

        A row the version fails on is tried on the other version it can fall back on (the
        fallback; or, while the version's breaker is open and the fallback serves, the
        version itself). Served there, the row is answered from there and the failure is
        the version's; failing there too, the input is at fault: it is dead-lettered and
        counts against neither breaker, so no client can open a breaker for others by
        sending inputs no version can serve. Without a second version, a failure counts.
        """
        deployment, breakers, now = serving.deployment, serving.breakers, time.monotonic()
        fallback = serving.catalog.fallback(model)
        if fallback is not None and (fallback.version == version
                                     or not breakers[(model, fallback.version)].allow(now)):
            fallback = None
        if breakers[(model, version)].allow(now):
            second = fallback
        else:
            # Refused by its breaker: failures of this version (a canary's judge counts them).
            self._feed_breaker(serving, model, version, 0, len(items))
            self._judge_failures(deployment, model, version, route, len(items))
            if fallback is None:
                error = (f"{model}:{version} is failing and its circuit breaker is open; "
                         + ("its fallback is failing too" if serving.catalog.fallback(model) else
                            f"set a fallback with `streamserve fallback {model} VERSION`")
                         + "; the breaker tries the version again shortly")
                return None, [self._dead_letter(serving, record, Rejection(
                    Reason.CIRCUIT_OPEN, error, id=request.id, model=model), version,
                    quota=self._quota_of(request)) for record, request in items]
            second = RouteDecision(version, route)
            version, route = fallback.version, fallback.route
        served = deployment.models[(model, version)]
        rows = np.array([request.row for _, request in items], dtype=np.float32)
        answers, seconds = await self._predict(served, rows)
        failures = answers.failures  # the version's: a rescued row's stays, beside its rescue
        rescued: dict[int, np.ndarray] = {}  # row -> the second version's answer
        if failures and second is not None:
            failed = sorted(failures)
            retried, _ = await self._predict(deployment.models[(model, second.version)], rows[failed])
            for j, i in enumerate(failed):
                if j in retried.failures:
                    failures[i] = RowFailure(
                        f"versions {version} and {second.version} of {model} both failed on this "
                        f"request, so its inputs are at fault: {failures[i].error}")
                else:
                    rescued[i] = retried.values[j]
            self._feed_breaker(serving, model, second.version, len(rescued), 0)
        charged = len(rescued) if second is not None else len(failures)
        self._metrics.batch_size.labels(model, version).observe(len(rows))
        self._metrics.padding_rows.labels(model, version).inc(
            padded_size(len(rows), served.buckets) - len(rows))
        policy = serving.policies[model]
        done = time.time()
        quotas = None if self._quotas is None else [self._quota_of(request) for _, request in items]
        ok = answers.answered(range(len(items)))
        replies = self._predictions(deployment, model, (version, route), items, ok,
                                    answers.values[ok], done, quotas)
        if rescued:
            replies |= self._predictions(deployment, model, (second.version, second.route), items,
                                         list(rescued), np.array(list(rescued.values())), done, quotas)
        outgoing = []
        for i, (record, request) in enumerate(items):
            reply = replies.get(i)
            if reply is None:  # failed on every version it was tried on
                error = failures[i].error
                log.warning("model %s:%s failed on request %s: %s", model, version, request.id, error)
                rejection = Rejection(Reason.MODEL_ERROR, error, id=request.id, model=model)
                outgoing.append(self._dead_letter(serving, record, rejection, version, route,
                                                  quota=quotas[i] if quotas else ""))
                continue
            outgoing.append(reply)
            if policy.sample_rate and sampled(request.id, policy.sample_rate):
                schema = deployment.models[(model, reply.version)].manifest.outputs
                answer = rescued[i] if i in rescued else answers.values[i]
                outgoing.append(outputs.sample(record, request, served.manifest.inputs, answer, schema,
                                               policy.redactor, self._topics.samples))
        self._feed_breaker(serving, model, version, len(ok), charged)
        # Replayed requests test a version: they say nothing of live traffic or the canary.
        watched = ([i for i, (record, _) in enumerate(items)
                    if not record.replay or self._settings.replay.monitoring])
        watched_ok = answers.answered(watched)
        watched_charged = sum(1 for i in watched if i in rescued) if second is not None else \
            len(watched) - len(watched_ok)
        predicted = (served.manifest.outputs.watched(answers.values[watched_ok])
                     if watched_ok else np.empty(0))
        self._judge_canary(deployment, model, route, watched_charged,
                           [seconds] * len(watched_ok), predicted, served.manifest.outputs)
        if self._kept is not None and (watched_ok or rescued):
            self._keep(deployment, items, answers, watched, rescued, model, (version, route),
                       second and (second.version, second.route), done)
        coder = serving.coders.get((model, version))
        if coder is not None and watched_ok:
            sources = [items[i][0] for i in watched_ok]
            self._pending_drift.setdefault((model, version), ServedRows(coder)).add(
                watched_columns(rows[watched_ok], predicted),
                np.array([r.partition for r in sources], np.int32),
                np.array([r.offset for r in sources], np.int64),
                np.array([round(r.timestamp * 1000) for r in sources], np.int64))
        return (items, rows, answers), outgoing

    def _predictions(self, deployment: Deployment, model: str, by: tuple[str, Route],
                     items: list[tuple[Incoming, Request]], answered: list[int], values: np.ndarray,
                     done: float, quotas: list[str] | None) -> dict[int, Outgoing]:
        """The predictions of version and route ``by`` for the group's ``answered`` rows
        (``values``: its answers to them, in order), by row, encoded in one pass."""
        version, route = by
        encoder = PredictionEncoder(model, version, deployment.models[(model, version)].manifest.outputs,
                                    str(route), len(items))
        return dict(zip(answered, outputs.predictions(
            [items[i] for i in answered], values, encoder, done, self._topics.predictions,
            None if quotas is None else [quotas[i] for i in answered]), strict=True))

    async def _predict(self, served: ServingModel, rows: np.ndarray) -> tuple[Answers, float]:
        # JAX blocks: a call that may take long runs in the executor, so that commits,
        # timers and heartbeats go on meanwhile (INLINE_CALL_SECONDS).
        key, predict = (served.model, served.version), self._faults.model(served.predict)
        last_seconds, last_rows = self._last_call.get(key, (math.inf, 1))
        if last_seconds * max(1.0, len(rows) / last_rows) < INLINE_CALL_SECONDS:
            answers, seconds = _timed_serve(predict, rows)
        else:
            answers, seconds = await asyncio.get_running_loop().run_in_executor(
                self._executor, _timed_serve, predict, rows)
        self._last_call[key] = seconds, len(rows)
        self._metrics.inference_latency.labels(served.model, served.version).observe(seconds)
        if self._device != "cpu":
            self._metrics.accelerator_seconds.labels(served.model, served.version,
                                                     self._device).inc(seconds)
        return answers, seconds

    def _feed_breaker(self, serving: Serving, model: str, version: str, successes: int,
                      failures: int) -> None:
        """A group's outcome to its version's breaker."""
        breaker = serving.breakers.get((model, version))
        if breaker is not None:
            before = breaker.state
            breaker.record(successes, failures, time.monotonic())
            if breaker.state is not before:
                log.warning("circuit breaker of %s:%s is now %s", model, version, breaker.state)
            self._metrics.breaker_state.labels(model, version).set(_BREAKER_VALUE[breaker.state])

    def _judge_failures(self, deployment: Deployment, model: str, version: str, route: Route,
                        failures: int) -> None:
        """A group that failed before any answer (too slow for its deadlines, refused by
        an open breaker), for the canary's judge."""
        self._judge_canary(deployment, model, route, failures, [], np.empty(0),
                           deployment.models[(model, version)].manifest.outputs)

    def _judge_canary(self, deployment: Deployment, model: str, route: Route, failures: int,
                      latencies: list[float], predicted: np.ndarray,
                      schema: OutputSchema) -> None:
        """During a canary, let its judge see a group's failures, latencies and predictions
        (``schema.watched``: class indices into the answering version's labels, or values)."""
        spec = deployment.specs.get(model)
        if spec is None or spec.canary is None or route not in (Route.STABLE, Route.CANARY):
            return
        key = (model, spec.revision)
        if key in self._judged:
            return
        if schema.is_regressor:  # the deployer lets only versions of one kind serve together
            n_classes, observed = None, predicted
        else:
            # The versions may predict different classes (a canary that adds one): the
            # judge counts by label, over stable's labels and then the canary's new ones.
            stable = deployment.models[(model, spec.stable)].manifest.outputs.labels
            canary = deployment.models[(model, spec.canary.version)].manifest.outputs.labels
            union = {label: i for i, label in enumerate(dict.fromkeys([*stable, *canary]))}
            n_classes, observed = len(union), [union[schema.labels[c]] for c in predicted.tolist()]
        judge = self._judges.get(key)
        if judge is None:
            judge = self._judges[key] = CanaryJudge(self._settings.canary.policy, n_classes)
        judge.observe(route, failures, latencies, observed)
        verdict = judge.verdict()
        if verdict.action in ("rollback", "promote") and self._on_canary_verdict is not None:
            self._judged.add(key)
            del self._judges[key]
            self._on_canary_verdict(model, spec.revision, verdict)

    def judge_canary_on_labels(self, model: str, canary: tuple[int, int], stable: tuple[int, int]) -> None:
        """During ``model``'s canary, judge it on labels: ``canary`` and ``stable`` are each
        arm's (correct, labelled) answers since the canary began, on this worker's join
        partitions. Less accurate than stable (``canary_worse``): rolled back."""
        spec = self._serving.deployment.specs.get(model)
        if spec is None or spec.canary is None or (model, spec.revision) in self._judged:
            return
        finding = canary_worse(canary, stable, CANARY_ALPHA, self._settings.canary.min_labels)
        if finding.worse and self._on_canary_verdict is not None:
            key = (model, spec.revision)
            self._judged.add(key)
            self._judges.pop(key, None)
            self._on_canary_verdict(model, spec.revision, CanaryVerdict(
                "rollback", f"less accurate than stable on labels: {finding.detail}"))

    async def _shadow(self, deployment: Deployment, model: str, shadow: str, primary: str,
                      served_group: _Served) -> list[Outgoing]:
        """The shadow version's answers to the same rows, to the shadow topic, with agreement."""
        items, rows, primary_answers = served_group
        served = deployment.models[(model, shadow)]
        answers, _ = await self._predict(served, rows)
        schema = served.manifest.outputs
        their_schema = deployment.models[(model, primary)].manifest.outputs
        agreement: Counter[str] = Counter()
        outgoing = []
        for i, (record, request) in enumerate(items):
            theirs, ours, agree = primary_answers.of(i), answers.of(i), None
            if not isinstance(theirs, RowFailure) and not isinstance(ours, RowFailure):
                agree, difference = messages.agreement(ours, schema, theirs, their_schema)
                if difference is not None:
                    self._metrics.shadow_difference.labels(model, shadow).observe(difference)
            agreement["unknown" if agree is None else "yes" if agree else "no"] += 1
            outgoing.append(outputs.shadow(record, request, shadow, primary, ours, theirs, schema,
                                           their_schema, self._topics.shadow))
        for agree, count in agreement.items():
            self._metrics.shadow_agreement.labels(model, shadow, agree).inc(count)
        answered = answers.answered([i for i, (record, _) in enumerate(items)
                                     if not record.replay or self._settings.replay.monitoring])
        if self._kept is not None and answered:  # judged on the labels of the same requests
            self._kept.answered([items[i][1].id for i in answered], model, shadow, str(Route.SHADOW),
                                time.time(), answers.values[answered], schema.is_regressor)
        return outgoing

    def _keep(self, deployment: Deployment, items: list[tuple[Incoming, Request]],
              answers: Answers, watched: list[int], rescued: dict[int, np.ndarray], model: str,
              by: tuple[str, Route], second: tuple[str, Route] | None, done: float) -> None:
        """Keep the answers to the ``watched`` rows for the label join, each by the version
        that gave it (``second`` for the rows it rescued)."""
        assert self._kept is not None
        own, theirs = answers.answered(watched), [i for i in watched if i in rescued]
        for answering, rows, values in (
                (by, own, answers.values[own]),
                (second, theirs, np.array([rescued[i] for i in theirs]))):
            if rows and answering is not None:
                version, route = answering
                schema = deployment.models[(model, version)].manifest.outputs
                self._kept.answered([items[i][1].id for i in rows], model, version, str(route), done,
                                    values, schema.is_regressor)

    def flush_rows(self) -> list[Outgoing]:
        """What was served since the last call, for the side agents: the rows coded for
        drift (one message per version) and the answers kept for the label join.

        Called every fraction of a second rather than per batch: the agents' cost is per
        message, and small batches under light load would multiply it.
        """
        messages = [message for (model, version), served in sorted(self._pending_drift.items())
                    for message in outputs.drift_rows(model, version, served.coded(),
                                                      self._topics.drift_rows, self._drift_bytes)]
        self._pending_drift.clear()
        if self._kept:
            messages += outputs.kept_rows(self._kept.take(), self._topics.label_join,
                                          self._settings.kafka.request_partitions)
        return messages

    def _quota_of(self, request: Request) -> str:
        """The quota holding an in-flight slot for ``request``, which its answer frees."""
        quota = self._quotas.governing(request.tenant) if self._quotas is not None else None
        return quota or ""

    def _dead_letter(self, serving: Serving, record: Incoming, rejection: Rejection,
                     version: str, route: Route | str = "", quota: str = "") -> Outgoing:
        if (self._kept is not None and rejection.id is not None and rejection.model in serving.deployment.specs
                and (not record.replay or self._settings.replay.monitoring)):
            self._kept.dead_lettered(rejection.id, rejection.model, version, str(route), time.time(),
                                     str(rejection.reason))
        return outputs.dead_letter(record, rejection, self._topics.deadletter,
                                   serving.dead_letter_redactor, self._max_original, version, route,
                                   quota)

    def fail_batch(self, batch: Sequence[Incoming], error: Exception) -> list[Outgoing]:
        """Dead letters for a whole batch, when serving it failed outside any model call:
        each keyed by its request's id where one can be read (its sender waits on it), and
        the ids forgotten by the dedupe window, so a retry is served."""
        serving = self._serving
        message = f"the worker failed to serve this batch: {type(error).__name__}: {error}"
        dead = []
        for record in batch:
            decoded = serving.decoder.decode(record.value)
            dead.append(self._dead_letter(serving, record, Rejection(
                Reason.MODEL_ERROR, message, id=decoded.id, model=decoded.model), version=""))
        if self._recent is not None:
            forget_retryable(self._recent, dead)
        return dead

    def delivered(self, outgoing: Sequence[Outgoing]) -> None:
        """Count outputs once the broker has acknowledged them, and free the in-flight
        slots of the requests they answer."""
        m = self._metrics
        counted = outputs.tally(outgoing, self._serving.deployment.specs, time.time())
        for (model, version, route), count in counted.predictions.items():
            m.requests.labels(model, version, "prediction").inc(count)
            m.predictions.labels(model, version, route).inc(count)
        for (model, version, reason), count in counted.dead_letters.items():
            m.requests.labels(model, version, "deadletter").inc(count)
            m.deadletters.labels(model, str(reason)).inc(count)
        for model, count in counted.samples.items():
            m.samples.labels(model).inc(count)
        for model, seconds in counted.latencies.items():
            observe_all(m.e2e_latency.labels(model), seconds)
        for quota, count in counted.answered.items():
            self._quotas.release(quota, count)

    def undeliverable(self, out: Outgoing) -> None:
        """``out`` will never reach the broker: count it, and free its request's slot (the
        ledger shows the request unanswered)."""
        self._metrics.given_up.labels(str(out.kind)).inc()
        if out.quota:
            self._quotas.release(out.quota, 1)

    def abandoned(self) -> None:
        """The outputs handed out and not yet delivered never will be (an aborted
        transaction): free every in-flight slot; their requests are read again."""
        if self._quotas is not None:
            self._quotas.release_all()


def _timed_serve(predict: Callable[[np.ndarray], np.ndarray], rows: np.ndarray) -> tuple[Answers, float]:
    """Serve ``rows`` and say how long the model took, timed in the model thread: the event
    loop's delays in picking up the result are not the version's (canary analysis
    compares versions on this time)."""
    started = time.perf_counter()
    answers = serve_isolated(predict, rows)
    return answers, time.perf_counter() - started
