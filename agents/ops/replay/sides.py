"""``streamserve replay diff``: one run's replies for the diff (a side), from a capture
file of the predictions and dead-letter topics, or by run id from the topics themselves.

Replies are matched to the requests they answer by their ``streamserve-source-*``
headers (topic, partition, offset), as the ledger does, so a request without a readable
id is matched too.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from agents.kafka.read import read_topic
from agents.kafka.topics import ensure_topics
from agents.ops.replay.files import read_recording
from agents.ops.replay.recorder import as_recorded
from pipeline.config import Settings
from pipeline.replay import (
    INDEX_HEADER,
    REPLAY_HEADER,
    DiffReport,
    Recorded,
    ReplayError,
    Side,
    answer_of,
    check_run_id,
    diff,
    key_replies,
    request_features,
    strip_run,
)
from pipeline.replies import SourcePosition, source_position


def features_of(records: Iterable[Recorded], run_id: str | None = None) -> dict[str, dict]:
    """Requests' features by id (run prefix stripped), the first request of each id."""
    features: dict[str, dict] = {}
    for record in records:
        found = request_features(record.value)
        if found is not None:
            features.setdefault(strip_run(found[0], run_id), found[1])
    return features


async def load_side(settings: Settings, spec: str) -> tuple[Side, dict[str, dict]]:
    """One run's replies and its requests' features: ``spec`` is a capture file of the
    predictions and dead-letter topics, or a run id read from the topics."""
    path = Path(spec)
    if path.is_file():
        return _side_from_file(path), {}
    try:
        run_id = check_run_id(spec)
    except ReplayError:
        raise ReplayError(f"{spec!r} is neither a file nor a run id; give a capture of the "
                          "predictions and dead-letter topics, or the run id `replay run` "
                          "printed") from None
    return await _side_from_topics(settings, run_id)


def _side_from_file(path: Path) -> Side:
    header, records = read_recording(path)
    entries = []
    for record in records:
        # A capture of both reply topics: a dead letter is told by its body.
        answer = answer_of(record.value, header.run_id, dead_letter=None)
        if answer is None:
            continue
        position = (source_position(record.headers)
                    or SourcePosition(record.topic, record.partition, record.offset))
        entries.append((position, answer, "?{}:{}:{}".format(*position)))
    if not entries:
        raise ReplayError(f"{path} holds no predictions or dead letters; capture the replies: "
                          "streamserve replay capture --topic <prefix>.predictions --topic "
                          "<prefix>.deadletter --run-id RUN ...")
    name = f"{path.name}" + (f" (run {header.run_id})" if header.run_id else "")
    return Side(name, key_replies(entries))


async def _side_from_topics(settings: Settings, run_id: str) -> tuple[Side, dict[str, dict]]:
    await ensure_topics(settings)
    topics = settings.topics
    requests: dict[SourcePosition, tuple[str, Recorded]] = {}
    async for r in read_topic(settings, topics.requests, from_beginning=True, to_end=True):
        tags = dict(r.headers)
        if tags.get(REPLAY_HEADER) == run_id.encode():
            index = tags.get(INDEX_HEADER, b"").decode(errors="replace")
            requests[SourcePosition(r.topic, r.partition, r.offset)] = (f"#{index}", as_recorded(r))
    if not requests:
        raise ReplayError(f"no requests of replay run {run_id!r} on {topics.requests}; check the "
                          "run id `streamserve replay run` printed, and STREAMSERVE_TOPIC_PREFIX")
    entries = []
    for topic in (topics.predictions, topics.deadletter):
        dead_letter = topic == topics.deadletter
        async for r in read_topic(settings, topic, from_beginning=True, to_end=True):
            source = source_position(r.headers)
            if source in requests and (
                    answer := answer_of(r.value, run_id, dead_letter=dead_letter)) is not None:
                entries.append((source, answer, requests[source][0]))
    side = Side(f"run {run_id}", key_replies(entries), requests=len(requests))
    return side, features_of((record for _, record in requests.values()), run_id)


async def diff_sides(settings: Settings, baseline: str, candidate: str,
                     recording: Path | None = None, top: int = 10) -> DiffReport:
    base, base_features = await load_side(settings, baseline)
    cand, cand_features = await load_side(settings, candidate)
    features = {**cand_features, **base_features}
    if recording is not None:
        header, records = read_recording(recording)
        features = {**features, **features_of(records, header.run_id)}
    return diff(base, cand, features, top)
