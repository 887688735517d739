"""The commit's order (``Checkpoint.commit``), with a fake producer and consumer: no broker."""

import asyncio
from types import SimpleNamespace

import pytest
from confluent_kafka import KafkaError, KafkaException

from agents.worker import checkpoint as checkpoint_module
from agents.worker.checkpoint import Checkpoint
from pipeline.config import KafkaSettings, Settings
from pipeline.outputs import Incoming, Kind

TP0 = ("requests", 0)


def too_large() -> KafkaException:
    return KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, "too large"))


def fenced() -> KafkaException:
    return KafkaException(KafkaError(KafkaError._FENCED, "fenced", fatal=True))


class FakeProducer:  # agents.kafka.librdkafka.Producer's face
    def __init__(self, events: list, **options: object) -> None:
        self.events = events
        self.transactional = "transactional.id" in options
        self.failed = None
        self.hung = False

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def partitions_for(self, topic: str) -> list[int]:
        return [0, 1]

    async def send(self, topic: str, partition: int, records: list) -> asyncio.Future:
        self.events.append(("send", topic, len(records)))
        future = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future

    def begin_transaction(self) -> None:
        self.events.append(("begin",))

    async def send_offsets_to_transaction(self, offsets: dict, group_metadata: object) -> None:
        self.events.append(("offsets to transaction", offsets))

    async def commit_transaction(self) -> None:
        self.events.append(("commit transaction",))

    async def abort_transaction(self) -> None:
        self.events.append(("abort transaction",))


class FakeConsumer:  # agents.kafka.librdkafka.Consumer's face
    def __init__(self, events: list, group_answer: int | None = None) -> None:
        self.events = events
        self.group_answer = group_answer

    async def commit(self, offsets: dict) -> None:
        self.events.append(("consumer commit", offsets))

    async def committed(self, partitions) -> dict:
        return dict.fromkeys(partitions, self.group_answer)

    async def seek(self, offsets: dict) -> None:
        self.events.extend(("seek", tp, offset) for tp, offset in offsets.items())

    def assignment(self) -> frozenset:
        return frozenset({TP0})

    def group_metadata(self) -> object:
        return "group metadata"


class FakeInference:
    def __init__(self, events: list) -> None:
        self.events = events

    def flush_rows(self) -> list:
        return [output("drift")]

    def delivered(self, outgoing: list) -> None:
        self.events.append(("delivered", len(outgoing)))

    def abandoned(self) -> None: ...

    def undeliverable(self, out) -> None:
        self.events.append(("given up", str(out.kind)))


def output(topic: str) -> SimpleNamespace:
    return SimpleNamespace(topic=topic, partition=0, key=b"k", value=b"v", headers=[],
                           kind=Kind.PREDICTION)


def record(offset: int) -> Incoming:
    return Incoming(topic="requests", partition=0, offset=offset, timestamp=0.0, value=b"")


@pytest.fixture
def make(monkeypatch):
    async def made(delivery: str, group_answer: int | None = None):
        events: list = []
        monkeypatch.setattr(checkpoint_module, "Producer",
                            lambda settings, **options: FakeProducer(events, **options))
        settings = Settings(kafka=KafkaSettings(delivery=delivery, worker_id="w1"))
        checkpoint = Checkpoint(settings, FakeInference(events),
                                FakeConsumer(events, group_answer), forget_queued=lambda: None,
                                stopping=lambda: False)
        monkeypatch.setattr(checkpoint, "_crash_point", lambda point: events.append(("crash point", point)))
        await checkpoint.start()
        return checkpoint, events
    return made


async def test_at_least_once_commits_offsets_after_every_ack(make):
    checkpoint, events = await make("at-least-once")
    await checkpoint.hand_off([output("predictions")] * 2, [record(5), record(6)])
    await checkpoint.commit(now=100.0)
    await checkpoint.drain()
    assert events == [
        ("crash point", "before_produce"),
        ("send", "predictions", 2),
        ("send", "drift", 1),
        ("delivered", 2),
        ("delivered", 1),
        ("crash point", "after_produce"),
        ("consumer commit", {TP0: 7}),
        ("crash point", "after_commit"),
    ]


async def test_exactly_once_commits_outputs_and_offsets_in_one_transaction(make):
    checkpoint, events = await make("exactly-once")
    await checkpoint.hand_off([output("predictions")], [record(5)])
    await checkpoint.commit(now=100.0)
    assert events == [
        ("crash point", "before_produce"),
        ("begin",),
        ("send", "predictions", 1),
        ("send", "drift", 1),
        ("offsets to transaction", {TP0: 6}),
        ("crash point", "after_produce"),
        ("commit transaction",),
        ("delivered", 2),
        ("crash point", "after_commit"),
    ]


async def test_exactly_once_resumes_from_its_own_commit_when_the_group_answers_older(make):
    checkpoint, events = await make("exactly-once", group_answer=3)
    await checkpoint.hand_off([output("predictions")], [record(5)])
    await checkpoint.commit(now=100.0)
    events.clear()
    assert await checkpoint.resume({TP0, ("requests", 1)}) == {TP0: 6}


async def test_a_commit_is_due_every_flush_interval(make):
    checkpoint, _ = await make("at-least-once")
    assert checkpoint.due(100.0)
    await checkpoint.commit(now=100.0)
    assert not checkpoint.due(100.0 + checkpoint_module.FLUSH_SECONDS / 2)
    assert checkpoint.due(100.0 + checkpoint_module.FLUSH_SECONDS)


async def test_exactly_once_rewinds_to_its_own_commit_when_the_group_answers_older(make):
    """Reliability review section 12: a rewind sought the group's answer, which right after
    the failures that cause a rewind can be older than this worker's own commit."""
    checkpoint, events = await make("exactly-once", group_answer=3)
    await checkpoint.hand_off([output("predictions")], [record(5)])
    await checkpoint.commit(now=100.0)  # this worker committed 6

    async def fails() -> None:
        raise RuntimeError("the coordinator went away")
    checkpoint._producer.commit_transaction = fails
    await checkpoint.hand_off([output("predictions")], [record(6)])
    events.clear()
    await checkpoint.commit(now=101.0)
    assert ("seek", TP0, 6) in events and ("seek", TP0, 3) not in events


async def test_exactly_once_rewinds_when_the_broker_fenced_its_producer_during_a_hand_off(make):
    """A broker restart that outlasts the transaction timeout aborts the open transaction
    and fences the producer: the next send fails for good (fatal). The worker crashed on
    it (a chaos run caught it); now a new producer takes over and the batch, whose
    outputs went nowhere, is read again rather than committed."""
    checkpoint, events = await make("exactly-once", group_answer=5)
    fenced_producer = checkpoint._producer

    async def refuses(topic, partition, records):
        raise fenced()

    async def cannot_abort() -> None:
        raise fenced()
    fenced_producer.send, fenced_producer.abort_transaction = refuses, cannot_abort
    await checkpoint.hand_off([output("predictions")], [record(5)])
    assert checkpoint._producer is not fenced_producer
    assert ("seek", TP0, 5) in events
    events.clear()
    await checkpoint.commit(now=100.0)  # nothing served since the rewind: no offsets
    assert ("offsets to transaction", {TP0: 6}) not in events
    await checkpoint.hand_off([output("predictions")], [record(5)])  # read again
    await checkpoint.commit(now=101.0)
    assert ("offsets to transaction", {TP0: 6}) in events


async def test_exactly_once_gives_a_hung_producer_up_without_asking_it_again(make):
    """send_offsets_to_transaction outlasted its own timeout while the group coordinator
    moved (librdkafka issue 5456): the producer is given up as hung, and the rewind does not
    ask it to abort (that call would wait behind the hung one); a new producer's start
    aborts the open transaction, and the requests are read again."""
    checkpoint, events = await make("exactly-once", group_answer=5)
    hung = checkpoint._producer

    async def never_returns(offsets, group_metadata):
        hung.hung = True
        raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "did not return in 40 s", fatal=True))
    hung.send_offsets_to_transaction = never_returns
    await checkpoint.hand_off([output("predictions")], [record(5)])
    await checkpoint.commit(now=100.0)
    assert ("abort transaction",) not in events and checkpoint._producer is not hung
    assert ("seek", TP0, 5) in events


async def test_exactly_once_takes_a_new_producer_after_a_fatal_delivery_error(make):
    """After the partitions' leader was paused for 10 s, every transaction failed with
    OutOfOrderSequenceNumber: the abort went through, but the producer sent nothing more
    after it, and the worker aborted and read again forever (a chaos run caught it). An
    error librdkafka calls fatal takes a new producer (a new epoch, sequences from zero)."""
    checkpoint, events = await make("exactly-once", group_answer=5)
    broken = checkpoint._producer

    async def out_of_order(topic, partition, records):
        future = asyncio.get_running_loop().create_future()
        future.set_exception(fenced())
        return future
    broken.send = out_of_order
    await checkpoint.hand_off([output("predictions")], [record(5)])
    await checkpoint.commit(now=100.0)
    assert ("abort transaction",) in events and checkpoint._producer is not broken
    assert ("seek", TP0, 5) in events
    await checkpoint.hand_off([output("predictions")], [record(5)])  # read again, sent anew
    await checkpoint.commit(now=101.0)
    assert ("offsets to transaction", {TP0: 6}) in events


async def test_an_answer_refused_for_good_is_replaced_and_the_commit_goes_on(make, monkeypatch):
    """Reliability review section 1: a dead letter the broker refused (too large) was sent
    again every second, forever, and no commit followed."""
    from pipeline import outputs
    from pipeline.redaction import Redactor
    from pipeline.rejections import Reason, Rejection

    checkpoint, events = await make("at-least-once")
    request = outputs.Incoming("requests", 0, 5, 0.0, b'{"id": "r-5"}')
    dead = outputs.dead_letter(request, Rejection(Reason.SCHEMA_MISMATCH, "no", id="r-5"),
                               "deadletter", Redactor({}), max_original_bytes=65536)
    sample = outputs.Outgoing(outputs.Kind.SAMPLE, "samples", 0, b"r-5", b"{}", [], "m", "1",
                              None, 0.0)
    producer = checkpoint._producer
    real_send = producer.send

    async def refusing(topic, partition, batch):
        future = await real_send(topic, partition, batch)
        if any(r.value in (dead.value, sample.value) for r in batch):
            future = asyncio.get_running_loop().create_future()
            future.set_exception(too_large())
        return future
    monkeypatch.setattr(producer, "send", refusing)
    monkeypatch.setattr(checkpoint_module, "_SEND_RETRY_SECONDS", 0)
    await checkpoint.hand_off([dead, sample], [record(5)])
    await checkpoint.commit(now=100.0)
    await checkpoint.drain()
    assert ("given up", "sample") in events
    assert ("consumer commit", {TP0: 6}) in events
    # The refused dead letter once, then its stand-in once (to the settings' topic).
    assert [e for e in events if e[0] == "send" and e[1].endswith("deadletter")] == \
        [("send", "deadletter", 1), ("send", "streamserve.deadletter", 1)]


async def test_a_refused_batch_is_sent_again_member_by_member_so_only_the_culprit_is_replaced(
        make, monkeypatch):
    """The broker refuses a record batch whole: its other members are answers that must
    still reach their clients."""
    from pipeline import outputs
    from pipeline.redaction import Redactor
    from pipeline.rejections import Reason, Rejection

    checkpoint, events = await make("at-least-once")
    big = outputs.dead_letter(outputs.Incoming("requests", 0, 5, 0.0, b'{"id": "r-5"}'),
                              Rejection(Reason.SCHEMA_MISMATCH, "x" * 100, id="r-5"), "deadletter",
                              Redactor({}), max_original_bytes=65536)
    small = outputs.dead_letter(outputs.Incoming("requests", 0, 6, 0.0, b'{"id": "r-6"}'),
                                Rejection(Reason.SCHEMA_MISMATCH, "no", id="r-6"), "deadletter",
                                Redactor({}), max_original_bytes=65536)
    producer = checkpoint._producer
    real_send = producer.send

    async def refusing(topic, partition, batch):
        future = await real_send(topic, partition, batch)
        if any(r.value == big.value for r in batch):
            future = asyncio.get_running_loop().create_future()
            future.set_exception(too_large())
        return future
    monkeypatch.setattr(producer, "send", refusing)
    await checkpoint.hand_off([big, small], [record(5), record(6)])
    await checkpoint.commit(now=100.0)
    await checkpoint.drain()
    sends = [e for e in events if e[0] == "send" and e[1].endswith("deadletter")]
    # Both together (refused), then each alone (the small one delivered), then the stand-in.
    assert sends == [("send", "deadletter", 2), ("send", "deadletter", 1),
                     ("send", "deadletter", 1), ("send", "streamserve.deadletter", 1)]
    assert ("consumer commit", {TP0: 7}) in events


async def test_exactly_once_replaces_an_output_refused_for_good_when_served_again(make):
    """An output the broker refuses aborts its transaction; served again, it must not
    abort every transaction after (review section 1, in exactly-once mode)."""
    from pipeline import outputs
    from pipeline.redaction import Redactor
    from pipeline.rejections import Reason, Rejection

    checkpoint, events = await make("exactly-once")
    request = outputs.Incoming("requests", 0, 5, 0.0, b'{"id": "r-5"}')

    def served():
        return outputs.dead_letter(request, Rejection(Reason.TOO_LARGE, "big", id="r-5"),
                                   "deadletter", Redactor({}), max_original_bytes=65536)
    producer = checkpoint._producer
    real_send = producer.send

    async def refusing(topic, partition, batch):
        future = await real_send(topic, partition, batch)
        if topic == "deadletter":
            future = asyncio.get_running_loop().create_future()
            future.set_exception(too_large())
        return future
    producer.send = refusing
    await checkpoint.hand_off([served()], [record(5)])
    await checkpoint.commit(now=100.0)  # refused: the transaction aborts, the request is read again
    assert ("abort transaction",) in events
    events.clear()
    await checkpoint.hand_off([served()], [record(5)])  # served again
    await checkpoint.commit(now=101.0)
    assert ("send", "streamserve.deadletter", 1) in events and ("commit transaction",) in events
