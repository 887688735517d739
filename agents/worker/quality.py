"""Ground truth in the Faust app: labels joined with the answers they judge, live quality out.

With STREAMSERVE_LABELS on, the serving hot path keeps each answer it gives (its version,
route, class and probabilities or value; or that the request was dead-lettered) and
sends them with each commit to ``<prefix>.label-join`` (``InferenceService.flush_rows``),
in the partition of each request id's hash (``pipeline.quality.wire``). Two agents do the
rest, a few events per second each:

* ``relay`` reads ``<prefix>.labels`` (clients partition it as they like), checks each
  label (a refusal is counted by outcome and logged, never a crash), and sends it on to
  its id's partition of the join topic;
* ``join`` keeps one ``Entry`` per request id in a changelog-backed table, so the
  answers and the labels of an id meet in one partition whichever comes first, and
  keeps each partition's ``Book`` (the figures, sums over the entries) up to date.
  An entry lives for STREAMSERVE_LABEL_HORIZON after its answer; a label waits
  STREAMSERVE_LABEL_WAIT_S for an answer, then counts as ``unknown_id``; a partition
  keeps at most STREAMSERVE_LABEL_MAX_UNANSWERED labels without an answer (labels for
  made-up ids are dropped beyond it, not kept). The entries due are found in an index
  ordered by due time (``pipeline.quality.join.expiry_key``), beside the entries in the
  partition's RocksDB but not in the changelog, remade when a book is rebuilt: the
  entries not due are never read (a pass over the table would read a horizon of
  answers, a week's by default, to find the few due, on the serving event loop).

Every STREAMSERVE_QUALITY_REPORT_S a worker sends each of its partitions' reports to
``<prefix>.quality`` (keyed model:version) and sets the Prometheus gauges (a reader adds
up the latest report of every partition: ``pipeline.quality.merge_reports``), tests each
version's accuracy against its training accuracy (the alert's p-value), and judges each
canary against stable on the labels of its partitions since the canary's first window
(``InferenceService.judge_canary_on_labels``: less accurate is rolled back).

Counted once: everything reported is derived from the entries, and each entry
remembers the last join event it took, so events read again after a crash (Faust
commits after processing) change nothing; a book is rebuilt from the recovered table
when its partition's first event arrives after an assignment.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import faust
import orjson

from agents.worker.inference import InferenceService
from agents.worker.metrics import Metrics
from pipeline.config import Settings
from pipeline.quality import (
    Book,
    Entry,
    LabelRefusal,
    Outcome,
    Scores,
    below_training,
    decode_label,
    merge_reports,
)
from pipeline.quality.book import TREND_WINDOWS
from pipeline.quality.join import (
    EXPIRY_END,
    EXPIRY_PREFIX,
    Kept,
    expiry_bound,
    expiry_key,
    indexed_key,
    shadow_key,
)
from pipeline.quality.wire import join_partition, label_message, read_kept, read_label
from pipeline.registry import Manifest, RegistryError
from pipeline.routing import Route
from pipeline.slo import QUALITY_ALPHA
from pipeline.topology import changelog_configs

log = logging.getLogger(__name__)

# Rows of a kept-answers message (or entries due) joined between two yields to the event
# loop: a message holds up to half a second of a partition's answers, and serving must
# not wait for all.
_ROWS_BETWEEN_YIELDS = 32
# Table writes the join lets wait in Faust's changelog buffer before it waits for them.
_CHANGELOG_BACKLOG = 100
# How often, at most, a partition's expiry index is looked at for entries due (a wait or
# a horizon run out): a quarter of the wait and a tenth of the horizon at most apart.
_EXPIRY_EVERY_S = 10.0
# A report larger than this drops its windows (a model of very many classes): the totals stay.
_MAX_REPORT_BYTES = 512 * 1024


def add_quality_agents(app: faust.App, settings: Settings, manifest_of: Callable[[str, str], Manifest],
                       inference: InferenceService, metrics: Metrics) -> None:
    """Wire the label relay and join into ``app``; ``manifest_of(model, version)`` gives a
    version's signed manifest (raising RegistryError or OSError when it cannot be read);
    ``inference`` serves, and judges canaries on labels too."""
    q, topics = settings.quality, settings.topics
    partitions = settings.kafka.request_partitions
    raw: dict[str, Any] = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw",
                           "value_serializer": "raw"}
    labels_topic = app.topic(topics.labels, **raw)
    join_topic = app.topic(topics.label_join, partitions=partitions, **raw)
    quality_topic = app.topic(topics.quality, **raw)
    # On disk (RocksDB, in the app's table folder under STREAMSERVE_HOME): a week of answers
    # outgrows any heap. The URL names the files: Faust takes a table's store only when
    # its URL has a path ("rocksdb://" alone falls back to the app's memory store).
    table = app.Table("label-join", default=None, key_type=bytes, value_type=bytes,
                      store="rocksdb:label-join", partitions=partitions,
                      extra_topic_configs=changelog_configs(settings))
    books: dict[int, Book] = {}
    looked: dict[int, float] = {}  # when each partition's expiry index was last looked at
    look_every = min(_EXPIRY_EVERY_S, q.wait_s / 4, q.horizon_s / 10)

    @functools.cache
    def manifest(model: str, version: str) -> Manifest | None:
        try:
            return manifest_of(model, version)
        except (RegistryError, OSError) as e:
            log.error("labels of %s:%s cannot be scored: its manifest cannot be read (%s)",
                      model, version, e)
            return None

    def classes_of(model: str, version: str) -> tuple[str, ...] | None:
        m = manifest(model, version)
        return m.outputs.labels if m is not None and not m.outputs.is_regressor else None

    @app.on_partitions_revoked.connect
    async def forget(sender: faust.App, revoked: object, **kwargs: object) -> None:
        for state in (books, looked):
            state.clear()

    async def ebb() -> None:
        """Let the serving loop run, and keep Faust's changelog buffer short: a table write
        is queued there, and the producer's flush before each commit gives up after a
        0.1 s pause in sending, so a long queue lets offsets be committed ahead of the
        state they changed (a SIGKILL then loses that state: seen at 80,000 queued)."""
        buffer = app.producer.buffer
        while buffer.size > _CHANGELOG_BACKLOG:
            await buffer.flush_atmost(buffer.size - _CHANGELOG_BACKLOG)
        await asyncio.sleep(0)

    def due_key(key: bytes, entry: Entry) -> bytes:
        return expiry_key(entry.next_due(q.horizon_s, q.wait_s), key)

    def reindex(partition: int, key: bytes, before: bytes | None, entry: Entry) -> None:
        """The entry of ``key`` changed: its index key follows its due time (``before``:
        its key before the change; None for a new entry)."""
        after = due_key(key, entry)
        if after != before:
            db = _partition_db(table, partition)
            if before is not None:
                db.delete(before)
            db.put(after, b"")

    async def book_for(partition: int, now: float) -> Book:
        """The partition's book, rebuilt from the table the first time after an assignment,
        and its expiry index with it (a table recovered from the changelog has none; one
        left on this disk may be stale). Entries past the horizon (left by a worker that
        stopped before they came due) are dropped as it goes, not counted until then.
        It reads every entry, yielding to the event loop as it goes: serving shares it."""
        if partition not in books:
            book, db = Book(q.window_s, classes_of), _partition_db(table, partition)
            db.delete_range(EXPIRY_PREFIX, EXPIRY_END)
            for n, (key, value) in enumerate(_partition_items(table, partition), 1):
                entry = _read(key, value)
                book.add(entry)
                settle(book, partition, key, entry, now)
                if n % _ROWS_BETWEEN_YIELDS == 0:
                    await ebb()  # it may delete many
            books[partition] = book
        return books[partition]

    def apply(book: Book, partition: int, key: bytes, step: Any, counted: bool = True) -> Entry:
        """``step`` on the entry of ``key`` (a new one when none), the book following it;
        its labels' outcomes counted in the metrics unless ``counted`` is False (a shadow's
        entry: the label was counted with its request's)."""
        stored = table.get(key)
        entry = _read(key, stored)
        before = None if stored is None else due_key(key, entry)
        with book.change(entry):
            judged = step(entry)
        for j in judged if counted else ():
            kept = j.kept
            metrics.labels.labels(kept.model if kept is not None else "", str(j.outcome)).inc()
            if j.outcome == "scored" and kept is not None and entry.delay_s is not None:
                metrics.label_delay.labels(kept.model, kept.version, kept.route).observe(entry.delay_s)
        updated = entry.to_bytes()
        if updated != stored:
            table[key] = updated
            reindex(partition, key, before, entry)
        return entry

    def keep_shadow(book: Book, partition: int, request_id: str, kept: Kept, offset: int) -> None:
        """A shadow version's answer: an entry of its own, judged on its request's labels
        (the one scored already, and those to come: the request's entry names it)."""
        primary = apply(book, partition, request_id.encode(), lambda e: _shadowed_by(e, kept.version))

        def take(entry: Entry) -> list:
            judged = entry.on_prediction(kept, offset)
            entry.take_truth(primary)
            return judged

        apply(book, partition, shadow_key(request_id, kept.version), take, counted=False)

    def settle(book: Book, partition: int, key: bytes, entry: Entry, now: float) -> None:
        """The entry of ``key``, not indexed: expired if due (a waiting label given up on,
        or the entry dropped), then indexed at its next due time unless dropped."""
        if entry.due(now, q.horizon_s, q.wait_s):
            with book.change(entry):
                drop, judged = entry.expire(now, q.horizon_s, q.wait_s)
            for j in judged:
                metrics.labels.labels("", str(j.outcome)).inc()
            if drop:
                book.add(entry, -1)
                del table[key]
                return
            table[key] = entry.to_bytes()  # due and kept: a waiting label was given up on
        _partition_db(table, partition).put(due_key(key, entry), b"")

    async def expire_due(book: Book, partition: int, now: float) -> None:
        """The entries due, from the partition's expiry index: an index key whose entry's
        due time moved later (a label came) gives way to the entry's own."""
        if now - looked.get(partition, 0.0) < look_every:
            return
        looked[partition] = now
        db, bound = _partition_db(table, partition), expiry_bound(now)
        for n, (index_key, _) in enumerate(db.items(from_key=EXPIRY_PREFIX), 1):
            if index_key >= bound:
                break
            db.delete(index_key)
            key = indexed_key(index_key)
            if (stored := table.get(key)) is not None:
                settle(book, partition, key, _read(key, stored), now)
            if n % _ROWS_BETWEEN_YIELDS == 0:
                await ebb()

    @app.agent(labels_topic)
    async def relay(stream: faust.StreamT) -> None:
        async for event in stream.events():
            label = decode_label(event.key, event.value)
            if isinstance(label, LabelRefusal):
                metrics.labels.labels("", str(label.outcome)).inc()
                log.warning("label at %s:%d refused (%s): %s", event.message.topic,
                            event.message.partition, label.outcome, label.error)
                continue
            source = f"{event.message.partition}:{event.message.offset}"
            await join_topic.send(key=label.id.encode(), value=label_message(label, time.time(), source),
                                  partition=join_partition(label.id, partitions))

    @app.agent(join_topic)
    async def join(stream: faust.StreamT) -> None:
        async for event in stream.events():
            message, now = event.message, time.time()
            partition = message.partition
            book = await book_for(partition, now)
            if event.key:
                label, arrived, source = read_label(event.value)
                if book.unanswered >= q.max_unanswered and table.get(label.id.encode()) is None:
                    metrics.labels.labels("", str(Outcome.DROPPED)).inc()
                    log.warning("label of %s dropped: %d labels of this partition wait for an "
                                "answer or matched none (STREAMSERVE_LABEL_MAX_UNANSWERED)",
                                label.id, book.unanswered)
                    continue
                primary = apply(book, partition, label.id.encode(),
                                lambda e: e.on_label(label, arrived, message.offset, source))
                for version in primary.shadows:  # the shadows' answers are judged on it too
                    apply(book, partition, shadow_key(label.id, version),
                          lambda e: e.on_label(label, arrived, message.offset, source), counted=False)
            else:
                for n, (request_id, kept) in enumerate(read_kept(event.value), 1):
                    if kept.route == Route.SHADOW:
                        keep_shadow(book, partition, request_id, kept, message.offset)
                    else:
                        apply(book, partition, request_id.encode(),
                              lambda e, k=kept: e.on_prediction(k, message.offset))
                    if n % _ROWS_BETWEEN_YIELDS == 0:
                        await ebb()
            await expire_due(book, partition, now)

    @app.timer(q.report_s)
    async def report() -> None:
        now = time.time()
        _forget_key_index(table)
        for gauge in (metrics.quality_answers, metrics.quality_labelled, metrics.quality_correct,
                      metrics.quality_log_loss, metrics.quality_absolute_error, metrics.quality_p_value):
            gauge.clear()
        reports = [(partition, r) for partition, book in list(books.items()) for r in book.reports()]
        by_version = merge_reports(r for _, r in reports)
        _judge_canaries(inference, by_version)
        for (model, version), merged in by_version.items():
            m = manifest(model, version) if model and version else None
            training = m.metrics.get("test_accuracy") if m is not None else None
            if training is not None and not m.outputs.is_regressor:
                recent = Scores()
                for part in merged["routes"].values():
                    for window in sorted(part["windows"])[-TREND_WINDOWS:]:
                        recent.merge(part["windows"][window])
                finding = below_training(recent.correct, recent.labelled, training, q.margin,
                                         alpha=QUALITY_ALPHA, min_labelled=q.min_labels)
                if finding.p_value is not None:
                    metrics.quality_p_value.labels(model, version).set(finding.p_value)
        for partition, r in reports:
            for route, part in r["routes"].items():
                _set_gauges(metrics, r["model"], r["version"], route, part)
            value = orjson.dumps({**r, "partition": partition, "time": now})
            if len(value) > _MAX_REPORT_BYTES:
                for part in r["routes"].values():
                    part["windows"] = {}
                value = orjson.dumps({**r, "partition": partition, "time": now})
            await quality_topic.send(key=f"{r['model']}:{r['version']}".encode(), value=value)


def _read(key: bytes, stored: bytes | None) -> Entry:
    """The entry stored for ``key``; a new one when none, or when it cannot be read
    (another release's, or damaged: a crash here would restart the agent into the same
    value forever, so it starts afresh, said in the log)."""
    if stored is None:
        return Entry()
    try:
        return Entry.from_bytes(stored)
    except (ValueError, TypeError) as e:
        log.error("label join entry %r unreadable (%s: %s); starting it afresh", key[:80],
                  type(e).__name__, e)
        return Entry()


def _shadowed_by(entry: Entry, version: str) -> list:
    if version not in entry.shadows:
        entry.shadows.append(version)
    return []


def _partition_db(table: Any, partition: int) -> Any:
    """The RocksDB (a ``rocksdict.Rdict``) of one partition of ``table``, where the expiry
    index is kept beside the entries, outside Faust's changelog. Relies on
    faust-streaming's RocksDB store (pinned in pyproject.toml): ``_db_for_partition``."""
    return table.data._db_for_partition(partition)


def _partition_items(table: Any, partition: int) -> Iterator[tuple[bytes, bytes]]:
    """One partition's entries, keys and values, from its own RocksDB file: the table's
    public ``items()`` walks every partition this worker holds (standbys too), and decodes
    each item twice. Relies on faust-streaming's RocksDB store, as ``_partition_db``:
    ``_visible_items`` hides the stored offset; the expiry index is skipped here."""
    for key, value in table.data._visible_items(_partition_db(table, partition)):
        if not key.startswith(EXPIRY_PREFIX):
            yield key, value


def _forget_key_index(table: Any) -> None:
    """faust-streaming's RocksDB store remembers the partition of every key it has set or
    read (``_key_index``), for lookups outside an event; the join looks up only within
    its events, where the event names the partition. Emptied, so the heap does not grow
    with every answer kept."""
    table.data._key_index.clear()


def _judge_canaries(inference: InferenceService, by_version: dict[tuple[str, str], dict[str, Any]]) -> None:
    """Each canary's (correct, labelled) answers and stable's over the same windows (from
    the canary's first), for ``InferenceService.judge_canary_on_labels``."""
    for model, spec in inference.deployment.specs.items():
        if spec.canary is None:
            continue
        canary = by_version.get((model, spec.canary.version), {}).get("routes", {}).get("canary")
        stable = by_version.get((model, spec.stable), {}).get("routes", {}).get("stable")
        if not canary or not canary["windows"] or not stable:
            continue
        since = min(canary["windows"])
        arms = []
        for windows in (canary["windows"], stable["windows"]):
            scores = [w for start, w in windows.items() if start >= since]
            arms.append((sum(w.correct for w in scores), sum(w.labelled for w in scores)))
        inference.judge_canary_on_labels(model, arms[0], arms[1])


def _set_gauges(metrics: Metrics, model: str, version: str, route: str, part: dict[str, Any]) -> None:
    total = Scores.from_dict(part["total"])
    labels = (model, version, route)
    metrics.quality_answers.labels(*labels).inc(part["answers"])
    metrics.quality_labelled.labels(*labels).inc(total.labelled)
    metrics.quality_correct.labels(*labels).inc(total.correct)
    metrics.quality_log_loss.labels(*labels).inc(total.log_loss)
    metrics.quality_absolute_error.labels(*labels).inc(total.absolute_error)
