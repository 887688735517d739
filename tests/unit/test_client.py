"""The client library's pure part: requests, reply parsing, correlation; no broker."""

import asyncio
import re
import subprocess
import sys
from concurrent.futures import Future
from dataclasses import replace

import numpy as np
import orjson
import pytest

from pipeline.client import (
    DeadLetterError,
    Outcome,
    PendingReplies,
    PredictionTimeout,
    PredictRequest,
    RequestIds,
    StreamClientError,
    choose_partition,
    raw_request_key,
    reply_partitions,
    requested_partitions,
)
from pipeline.rejections import Reason
from pipeline.replies import DeadLetter, SourcePosition, parse_reply, source_position
from tests.unit.test_replies import dead_letter_record, prediction_record

IRIS = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# -- requests ------------------------------------------------------------------------------

def test_request_encodes_the_documented_tabular_form():
    request = PredictRequest("iris", IRIS, version="3", id="r-1", deadline_ms=200, tenant="acme")
    assert orjson.loads(request.encode()) == {"id": "r-1", "model": "iris", "features": IRIS,
                                              "version": "3", "deadline_ms": 200, "tenant": "acme"}
    assert orjson.loads(PredictRequest("iris", IRIS, id="r-2").encode()) == {
        "id": "r-2", "model": "iris", "features": IRIS}


def test_request_features_are_checked_and_copied_as_floats():
    row = {"a": np.float32(1.5), "b": 2, "c": np.int64(3)}
    request = PredictRequest("m", row)
    row["a"] = 99.0
    assert request.features == {"a": 1.5, "b": 2.0, "c": 3.0}
    assert all(type(v) is float for v in request.features.values())
    with pytest.raises(ValueError, match="finite"):
        PredictRequest("m", {"a": float("nan")})
    with pytest.raises(TypeError, match="'a' is 'high'"):
        PredictRequest("m", {"a": "high"})
    with pytest.raises(TypeError, match="must be a number"):
        PredictRequest("m", {"a": True})
    with pytest.raises(TypeError, match="dict\\(zip\\(names, row\\)\\)"):
        PredictRequest("m", [1.0, 2.0])


@pytest.mark.parametrize("row", [{"a": 1.5, "b": -2.0}, {"a": 1e308, "b": 1e308},  # sum overflows
                                 {"a": 1.0, "b": float("inf")}, {"a": float("nan"), "b": 1.0},
                                 {"a": 1.0, 2: 1.0}, {}])
def test_plain_float_rows_are_checked_as_every_other_row(row):
    # Named plain floats take a shortcut; with one value of another type they take the
    # per-feature loop: both decide alike (values accepted, the same error raised).
    def outcome(features):
        try:
            return PredictRequest("m", features).features
        except (TypeError, ValueError) as e:
            return type(e), str(e)
    slow = {**row, "z": np.float64(0.0)}  # np.float64: not a plain float, so the loop
    expected = outcome(slow)
    got = outcome(row)
    if isinstance(expected, dict):
        assert got == {k: v for k, v in expected.items() if k != "z"}
        assert all(type(v) is float for v in got.values())
    else:
        assert got == expected


@pytest.mark.parametrize("changes", [{"model": ""}, {"version": 3}, {"id": ""}, {"id": "x" * 257},
                                     {"deadline_ms": 0}, {"deadline_ms": 1.5}, {"tenant": ""}])
def test_request_refuses_what_the_worker_would_dead_letter(changes):
    with pytest.raises(ValueError):
        PredictRequest(**{"model": "iris", "features": IRIS, **changes})


def test_a_request_without_an_id_cannot_be_encoded_until_it_has_one():
    request = PredictRequest("iris", IRIS, version="3", tenant="acme")
    with pytest.raises(ValueError, match="with_id"):
        request.encode()
    assert orjson.loads(request.with_id("r-9").encode())["id"] == "r-9"
    assert request.with_id("r-9") == replace(request, id="r-9") and request.id is None
    with pytest.raises(ValueError, match="request id"):
        request.with_id("")


def test_request_ids_are_unique_under_one_prefix_per_client():
    ids = RequestIds()
    assert ids.prefix.startswith("client-") and RequestIds().prefix != ids.prefix
    many = {ids.next() for _ in range(1000)}
    assert len(many) == 1000 and all(i.startswith(ids.prefix + "-") and len(i) <= 256 for i in many)
    # <prefix>-<32 hex digits>, as the README and `verify --id-prefix` describe them.
    assert all(re.fullmatch(re.escape(ids.prefix) + "-[0-9a-f]{32}", i) for i in many)
    assert RequestIds("nb").next().startswith("nb-")
    with pytest.raises(ValueError, match="id_prefix"):
        RequestIds("")


def test_a_raw_request_is_keyed_by_its_readable_id_only():
    assert raw_request_key(b'{"id": "r-1", "model": "iris"}') == b"r-1"
    for value in (b"not json", b'{"model": "iris"}', b'{"id": 17}', b"[1, 2]", b'{"id": ""}', b""):
        assert raw_request_key(value) is None


def test_partitions_are_chosen_stably_and_replies_read_on_the_same_numbers():
    assert choose_partition(b"r-1", [2, 5]) == choose_partition(b"r-1", [2, 5]) in (2, 5)
    assert {choose_partition(f"r-{i}".encode(), [0, 1, 2, 3]) for i in range(100)} == {0, 1, 2, 3}
    assert requested_partitions(None, {3, 1, 0, 2}) == [0, 1, 2, 3]
    assert requested_partitions([2, 2, 1], range(4)) == [1, 2]
    with pytest.raises(ValueError, match="unknown: \\[7\\]"):
        requested_partitions([1, 7], range(4))
    with pytest.raises(ValueError):
        requested_partitions([], range(4))
    assert reply_partitions([1, 2], 4) == [1, 2]
    assert reply_partitions([1, 5], 4) == [1]  # a reply topic with fewer partitions


# -- replies -------------------------------------------------------------------------------

def test_errors_form_one_tree_and_say_what_to_do():
    dead = DeadLetterError(DeadLetter("r-1", "unknown_model", "model 'x' is not served here"))
    assert isinstance(dead, StreamClientError) and dead.reason == Reason.UNKNOWN_MODEL
    assert str(dead) == "unknown_model (request r-1): model 'x' is not served here"
    late = PredictionTimeout("r-1", 2.0, "s.requests")
    assert isinstance(late, StreamClientError) and isinstance(late, TimeoutError)
    assert "r-1 within 2 s" in str(late) and "s.requests" in str(late)


def test_an_outcome_holds_exactly_one_of_prediction_and_error():
    request = PredictRequest("iris", IRIS, id="r")
    prediction = parse_reply(prediction_record("r")[0], dead_letter=False)
    assert Outcome(request, prediction=prediction).result() is prediction
    failed = Outcome(request, error=PredictionTimeout("r", 1, "t"))
    assert not failed.ok
    with pytest.raises(PredictionTimeout):
        failed.result()
    with pytest.raises(ValueError):
        Outcome(request)


# -- correlation ---------------------------------------------------------------------------

def test_a_reply_settles_only_its_own_request_with_the_round_trip_time():
    clock = Clock()
    pending = PendingReplies(clock=clock)
    mine, other = Future(), Future()
    pending.expect("r-1", mine)
    pending.expect("r-3", other)
    clock.now += 0.25
    value, headers = prediction_record("r-2")
    assert not pending.wants(b"r-2", source_position(headers))
    assert not pending.settle(parse_reply(value, dead_letter=False, headers=headers))
    value, headers = prediction_record("r-1")
    assert pending.wants(b"r-1", source_position(headers))
    assert pending.settle(parse_reply(value, dead_letter=False, headers=headers))
    assert mine.result().id == "r-1" and mine.result().round_trip_ms == pytest.approx(250)
    assert not other.done() and len(pending) == 1
    # A repeat of the same reply (at-least-once delivery after a crash) is ignored.
    assert not pending.settle(parse_reply(value, dead_letter=False, headers=headers))


def test_a_dead_letter_fails_its_request_with_the_reason():
    pending = PendingReplies()
    waiter = Future()
    pending.expect("r-2", waiter)
    pending.settle(parse_reply(dead_letter_record("r-2")[0], dead_letter=True))
    with pytest.raises(DeadLetterError) as caught:
        waiter.result()
    assert caught.value.reason == "unknown_model" and caught.value.dead_letter.model == "x"


def test_an_id_awaited_twice_at_once_is_refused_and_a_forgotten_one_ignored():
    pending = PendingReplies()
    pending.expect("r-1", Future())
    with pytest.raises(ValueError, match="duplicate_request"):
        pending.expect("r-1", Future())
    pending.forget("r-1")
    assert len(pending) == 0
    assert not pending.settle(parse_reply(prediction_record("r-1")[0], dead_letter=False))
    cancelled = Future()
    cancelled.cancel()
    pending.expect("r-1", cancelled)  # e.g. timed out just before its reply came
    assert not pending.settle(parse_reply(prediction_record("r-1")[0], dead_letter=False))


def test_a_raw_request_is_found_by_where_it_was_written():
    pending = PendingReplies()
    waiter = Future()
    sent = pending.raw_sending()
    assert pending.wants(None, None)  # unacknowledged: anything may be its reply
    pending.expect_at(SourcePosition("s.requests", 1, 8), waiter, sent)
    assert not pending.wants(b"s.requests:1:9", SourcePosition("s.requests", 1, 9))
    assert pending.wants(b"s.requests:1:8", SourcePosition("s.requests", 1, 8))
    value, headers = dead_letter_record(None, raw=b"not json", offset=8)
    assert pending.settle(parse_reply(value, dead_letter=True, headers=headers))
    assert waiter.exception().dead_letter.original == b"not json"
    assert len(pending) == 0


def test_a_reply_that_beats_its_raw_requests_acknowledgement_is_kept_for_it():
    pending = PendingReplies(keep_unclaimed=2)
    waiter = Future()
    sent = pending.raw_sending()
    for offset in (5, 6, 7):  # 5 is dropped: only the newest two are kept
        value, headers = prediction_record(f"other-{offset}", offset=offset)
        assert not pending.settle(parse_reply(value, dead_letter=False, headers=headers))
    pending.expect_at(SourcePosition("s.requests", 2, 6), waiter, sent)
    assert waiter.result().id == "other-6"
    assert len(pending) == 0 and not pending._unclaimed  # nothing unacknowledged: nothing kept
    late = Future()
    sent = pending.raw_sending()
    value, headers = prediction_record("x", offset=5)
    pending.settle(parse_reply(value, dead_letter=False, headers=headers))
    pending.raw_failed()
    assert not pending._unclaimed
    late.cancel()
    sent = pending.raw_sending()
    pending.expect_at(SourcePosition("s.requests", 2, 5), late, sent)  # timed out before its ack
    assert len(pending) == 0
    with pytest.raises(RuntimeError):
        pending.raw_failed()


def test_closing_fails_everything_still_awaited():
    from pipeline.client import ClientClosed

    pending = PendingReplies()
    by_id, by_source, done = Future(), Future(), Future()
    done.set_result(None)
    pending.expect("r-1", by_id)
    pending.expect("r-2", done)
    pending.expect_at(SourcePosition("t", 0, 1), by_source, pending.raw_sending())
    assert pending.fail_all(ClientClosed("closed")) == 2
    assert isinstance(by_id.exception(), ClientClosed) and isinstance(by_source.exception(), ClientClosed)
    assert len(pending) == 0


def test_the_pure_part_loads_no_kafka_library_and_leaves_the_io_classes_to_the_shell():
    code = ("import sys, pipeline.client as c; assert 'aiokafka' not in sys.modules; "
            "assert not hasattr(c, 'StreamClient') and not hasattr(c, 'SyncStreamClient'); "
            "assert 'agents' not in {m.split('.')[0] for m in sys.modules}")
    subprocess.run([sys.executable, "-c", code], check=True)


# -- the client's sender, on a fake producer -----------------------------------------------

class HeldProducer:
    """A producer whose sends wait until ``released``, as librdkafka's do while its queue
    is full; each delivery fails with ``failure`` when one is given."""

    def __init__(self, failure: Exception | None = None) -> None:
        self.sent: list[bytes] = []
        self.released = asyncio.Event()
        self.failure = failure

    async def send(self, topic, partition, records):
        await self.released.wait()
        self.sent += [record.key for record in records]
        delivery = asyncio.get_running_loop().create_future()
        if self.failure is None:
            delivery.set_result(None)
        else:
            delivery.set_exception(self.failure)
        return delivery

    async def stop(self) -> None:
        pass


def client_on(producer: HeldProducer):
    """A started client whose sender feeds ``producer`` (and no reply reader)."""
    from agents.client.stream import StreamClient

    client = StreamClient(timeout=30)
    client._producer = producer
    client._sender = asyncio.create_task(client._send_queued(producer))
    return client


async def test_a_request_whose_time_runs_out_before_its_turn_is_never_sent():
    from pipeline.client import ClientClosed

    producer = HeldProducer()
    client = client_on(producer)
    first = asyncio.ensure_future(client.predict("iris", IRIS, request_id="first"))
    await asyncio.sleep(0)  # "first" is queued, and holds the sender
    with pytest.raises(PredictionTimeout, match="second"):  # on time, though the sender is held
        await client.predict("iris", IRIS, request_id="second", timeout=0.05)
    producer.released.set()
    await asyncio.sleep(0.01)
    assert producer.sent == [b"first"]
    await client.close()
    with pytest.raises(ClientClosed):
        await first


async def test_a_failed_delivery_fails_its_request_as_not_sent():
    from confluent_kafka import KafkaError, KafkaException

    from pipeline.client import RequestNotSent

    timed_out = KafkaException(KafkaError(KafkaError._MSG_TIMED_OUT))
    producer = HeldProducer(timed_out)
    producer.released.set()
    client = client_on(producer)
    results = await client.predict_many("iris", [IRIS, IRIS], return_exceptions=True)
    assert all(isinstance(r, RequestNotSent) and r.__cause__ is timed_out
               and "timed out" in str(r) for r in results)
    await client.close()
