"""Stream replay, the pure part: record a topic range, send it again, compare the answers.

The flow of ``streamserve replay capture|run|diff|gate`` (the Kafka and file side is
``agents.ops.replay``)::

    capture:  parse_bound(text) -> Bound; capture_range(...) -> offsets per partition
              belongs_to_run(record, run_id)          (only one run's records, when asked)
              RecordingHeader + [Recorded] in replay_order(...)   (the recording file)
    run:      plan(records, Rewrite(...), run_id, speed) -> [ScheduledRecord]
              (rewritten, tagged with REPLAY_HEADER and INDEX_HEADER, on schedule(...))
    diff:     answer_of(value, run_id, ...) -> Answer; key_replies(...) -> Side
              diff(baseline, candidate, features) -> DiffReport
    gate:     gate(report, GateLimits(...)) -> GateVerdict

Modules: ``recording`` (the file format), ``capture`` (bounds and which records to keep),
``runs`` (run ids and the replay headers), ``rewrite`` (what a replay changes in a
request), ``schedule`` (what to send again, and when), ``request_fields`` (a request's
features and model), ``answers`` (one run's replies, keyed), ``comparison`` (the diff),
``verdict`` (the gate), ``errors``.
"""

from pipeline.replay.answers import Answer, Side, answer_of, key_replies
from pipeline.replay.capture import (
    Bound,
    OffsetBound,
    TimeBound,
    belongs_to_run,
    capture_range,
    describe_bound,
    in_time_range,
    parse_bound,
)
from pipeline.replay.comparison import (
    DiffReport,
    Difference,
    Latency,
    ReasonCount,
    diff,
    max_abs_difference,
)
from pipeline.replay.errors import ReplayError
from pipeline.replay.recording import FORMAT, FORMAT_VERSION, Recorded, RecordingHeader, replay_order
from pipeline.replay.request_fields import gated, request_features, request_models
from pipeline.replay.rewrite import Rewrite
from pipeline.replay.runs import INDEX_HEADER, REPLAY_HEADER, check_run_id, new_run_id, strip_run
from pipeline.replay.schedule import ScheduledRecord, plan, recorded_pace, schedule
from pipeline.replay.verdict import GateCheck, GateLimits, GateVerdict, accuracy, gate, read_labels

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "INDEX_HEADER",
    "REPLAY_HEADER",
    "Answer",
    "Bound",
    "DiffReport",
    "Difference",
    "GateCheck",
    "GateLimits",
    "GateVerdict",
    "Latency",
    "OffsetBound",
    "ReasonCount",
    "Recorded",
    "RecordingHeader",
    "ReplayError",
    "Rewrite",
    "ScheduledRecord",
    "Side",
    "TimeBound",
    "accuracy",
    "answer_of",
    "belongs_to_run",
    "capture_range",
    "check_run_id",
    "describe_bound",
    "diff",
    "gate",
    "gated",
    "in_time_range",
    "key_replies",
    "max_abs_difference",
    "new_run_id",
    "parse_bound",
    "plan",
    "read_labels",
    "recorded_pace",
    "replay_order",
    "request_features",
    "request_models",
    "schedule",
    "strip_run",
]
