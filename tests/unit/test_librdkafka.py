"""The asyncio face of the serving path's librdkafka clients, without a broker: a send's
future and the errors that decide what the checkpoint does."""

import asyncio
import logging
import threading

import pytest
from confluent_kafka import KafkaError, KafkaException

from agents.kafka.librdkafka import (
    _Acks,
    _client_error,
    breaks_the_producer,
    config,
    group_moved_on,
    refused_for_good,
)
from pipeline.config import Settings


def error(code: int, **flags: bool) -> KafkaException:
    return KafkaException(KafkaError(code, "reason", **flags))


async def test_a_send_resolves_once_its_last_record_is_acknowledged_from_another_thread():
    acks = _Acks(1000, asyncio.get_running_loop())
    reports = [threading.Thread(target=lambda: [acks.delivered(None, None) for _ in range(250)])
               for _ in range(4)]
    for thread in reports:
        thread.start()
    for thread in reports:
        thread.join()
    await asyncio.sleep(0.01)
    assert not acks.future.done()  # every record acknowledged, but not yet all queued
    acks.delivered(None, None)  # the guard: the last record was queued
    await asyncio.wait_for(acks.future, 1)


async def test_a_send_fails_with_the_first_error_once_every_record_is_accounted_for():
    acks = _Acks(3, asyncio.get_running_loop())
    acks.delivered(None, None)
    acks.delivered(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE), None)
    acks.delivered(KafkaError(KafkaError._MSG_TIMED_OUT), None)
    assert not acks.future.done()
    acks.delivered(None, None)
    with pytest.raises(KafkaException) as raised:
        await asyncio.wait_for(acks.future, 1)
    assert refused_for_good(raised.value)


@pytest.mark.parametrize(("exception", "refused", "moved_on", "breaks"), [
    (error(KafkaError.MSG_SIZE_TOO_LARGE), True, False, False),
    (error(KafkaError.TOPIC_AUTHORIZATION_FAILED), True, False, False),
    (error(KafkaError._MSG_TIMED_OUT, retriable=True), False, False, False),
    (error(KafkaError.REBALANCE_IN_PROGRESS), False, True, False),
    (error(KafkaError.ILLEGAL_GENERATION), False, True, False),
    (error(KafkaError.COORDINATOR_NOT_AVAILABLE, retriable=True), False, False, False),
    (error(KafkaError._FENCED, fatal=True), False, False, True),
    (RuntimeError("not Kafka's"), False, False, False),
])
def test_errors_are_told_apart_by_what_mends_them(exception, refused, moved_on, breaks):
    assert refused_for_good(exception) is refused
    assert group_moved_on(exception) is moved_on
    assert breaks_the_producer(exception) is breaks


def test_clients_take_the_servers_and_the_security_of_the_settings():
    s = Settings.from_env({"STREAMSERVE_BROKER": "kafka-0:9092,kafka-1:9092",
                           "STREAMSERVE_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                           "STREAMSERVE_SASL_USERNAME": "worker", "STREAMSERVE_SASL_PASSWORD": "pw"})
    properties = config(s)
    assert properties["bootstrap.servers"] == "kafka-0:9092,kafka-1:9092"
    assert properties["security.protocol"] == "SASL_PLAINTEXT"
    assert properties["sasl.username"] == "worker" and properties["sasl.password"] == "pw"


async def test_a_producer_that_failed_for_good_stops_all_the_same():
    """A chaos run: the broker fenced the exactly-once producer, the rewind that replaces it
    stopped it first, and its flush raised the fencing again: the worker crashed."""
    from agents.kafka.librdkafka import Producer

    producer = Producer(Settings.from_env({"STREAMSERVE_BROKER": "127.0.0.1:9"}))

    class Fenced:
        def flush(self, timeout: float) -> int:
            raise error(KafkaError._FENCED, fatal=True)
    producer._producer = Fenced()
    await producer.stop()  # no exception
    assert producer._deliveries.cancelled()


async def test_a_fatal_error_fails_every_send_outstanding_and_every_send_after():
    """librdkafka's poll raises a fatal error (fenced) instead of reporting it, and the
    records it holds are never reported: the serving loop waited for their acks forever
    (a chaos run: a broker killed for longer than the transaction timeout)."""
    from agents.kafka.librdkafka import Producer

    producer = Producer(Settings.from_env({"STREAMSERVE_BROKER": "127.0.0.1:9"}))
    fenced = KafkaError(KafkaError._FENCED, "fenced by a newer instance", fatal=True)

    class Fenced:  # queues records, then raises the fatal error from poll
        def produce(self, *args: object, **kwargs: object) -> None: ...

        def poll(self, timeout: float) -> int:
            raise KafkaException(fenced)

        def flush(self, timeout: float) -> int:
            return 0
    producer._producer = Fenced()
    record = type("Record", (), {"key": b"k", "value": b"v", "headers": []})()
    outstanding = await producer.send("predictions", 0, [record])
    with pytest.raises(KafkaException) as raised:
        await asyncio.wait_for(outstanding, 1)
    assert breaks_the_producer(raised.value) and producer.failed is fenced
    with pytest.raises(KafkaException):  # a send after it fails at once
        await asyncio.wait_for(await producer.send("predictions", 0, [record]), 1)
    await producer.stop()


def test_a_client_error_is_logged_once_where_nothing_else_says_it(caplog):
    with caplog.at_level(logging.WARNING, logger="agents.kafka.librdkafka"):
        _client_error(KafkaError(KafkaError._TRANSPORT, "127.0.0.1:9092/1: Connect failed"))
        _client_error(KafkaError(KafkaError._ALL_BROKERS_DOWN, "3/3 brokers are down"))
        _client_error(KafkaError(KafkaError._AUTHENTICATION, "SASL authentication failed"))
        _client_error(KafkaError(KafkaError._FENCED, "fenced by a newer instance", fatal=True))
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "Kafka client: KafkaError{code=_AUTHENTICATION,val=-169,str=\"SASL authentication failed\"}"),
        ("ERROR", "the Kafka client failed for good: "
                  "KafkaError{FATAL,code=_FENCED,val=-144,str=\"fenced by a newer instance\"}")]


async def test_a_transactional_call_that_never_returns_gives_its_producer_up(monkeypatch):
    """librdkafka's send_offsets_to_transaction blocked past its own timeout while the group
    coordinator moved (librdkafka issues 5456, 5511): a chaos run's exactly-once worker
    served nothing for minutes, and its stop hung on the same call."""
    from agents.kafka import librdkafka

    monkeypatch.setattr(librdkafka, "_HUNG_AFTER_S", 0.2)
    producer = librdkafka.Producer(Settings.from_env({"STREAMSERVE_BROKER": "127.0.0.1:9"}))
    never = threading.Event()
    flushed = []

    class Hung:
        def produce(self, *args: object, **kwargs: object) -> None: ...

        def poll(self, timeout: float) -> int:
            return 0

        def send_offsets_to_transaction(self, *args: object) -> None:
            never.wait()

        def flush(self, timeout: float) -> int:
            flushed.append(timeout)
            return 0
    producer._producer = Hung()
    record = type("Record", (), {"key": b"k", "value": b"v", "headers": []})()
    outstanding = await producer.send("t", 0, [record])

    with pytest.raises(KafkaException) as raised:
        await producer.send_offsets_to_transaction({("t", 0): 1}, object())
    assert raised.value.args[0].fatal() and breaks_the_producer(raised.value) and producer.hung
    assert "send_offsets_to_transaction did not return in 0 s" in raised.value.args[0].str()
    with pytest.raises(KafkaException):  # its acks would never come
        await outstanding
    await asyncio.wait_for(producer.stop(), 1)  # not behind the hung call
    assert flushed == []
    never.set()
