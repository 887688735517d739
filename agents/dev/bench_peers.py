"""What the benchmark compares streamserve with, each run as a process of its own.

``python -m agents.dev.bench_peers KIND --bootstrap B --prefix P --group G --registry R --model M``
reads ``P.requests`` in consumer group ``G`` and writes one record per request to
``P.predictions``, keyed as the request, until it is terminated:

- ``passthrough``: the Kafka ceiling with aiokafka (the worker's client). ``getmany``, send
  each record's bytes back unchanged (a response of the same size), wait for the acks,
  commit. No decoding, no model. Fetches as large as the worker's, and the worker's
  producer settings (acks=all, idempotence, linger 1 ms).
- ``passthrough_confluent``: the same with confluent-kafka (librdkafka, compiled): what the
  broker and a compiled client can do on this machine, beside what aiokafka can.
- ``echo_confluent``: the latency floor: librdkafka, each record sent back as soon as it
  is read (the first record fetched, then whatever else has come), no wait for its acks
  and offsets committed in the background: what the broker, two hops and a compiled
  client add to a round trip on this machine, with no work at all.
- ``handwritten``: what a user writes with aiokafka: one record at a time, orjson,
  a one-row float32 array into the jitted model, orjson out, commit every so often.
- ``quix``: the same job written the Quix Streams way: ``Application``, topics,
  ``sdf.apply``, ``to_topic``.

The two model peers answer ``{"id", "model", "probabilities", "label"}``.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson

_COMMIT_EVERY = 500  # records between the hand-written loop's commits


_FETCH_BYTES = 8 * 1024 * 1024  # per fetch, and per partition: a drain is never fetch-bound
_FETCH_RECORDS = 5000  # records per getmany / consume call


async def passthrough(bootstrap: str, prefix: str, group: str) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    consumer = AIOKafkaConsumer(f"{prefix}.requests", bootstrap_servers=bootstrap, group_id=group,
                                enable_auto_commit=False, auto_offset_reset="earliest",
                                fetch_max_bytes=_FETCH_BYTES, max_partition_fetch_bytes=_FETCH_BYTES)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True,
                                linger_ms=1)
    await producer.start()
    await consumer.start()
    while True:
        fetched = await consumer.getmany(timeout_ms=100, max_records=_FETCH_RECORDS)
        futures = [await producer.send(f"{prefix}.predictions", r.value, key=r.key)
                   for records in fetched.values() for r in records]
        if futures:
            await asyncio.gather(*futures)
            await consumer.commit()


def passthrough_confluent(bootstrap: str, prefix: str, group: str) -> None:
    from confluent_kafka import Consumer, Producer

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
                         "auto.offset.reset": "earliest", "fetch.max.bytes": _FETCH_BYTES,
                         "max.partition.fetch.bytes": _FETCH_BYTES})
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
                         "linger.ms": 1})
    consumer.subscribe([f"{prefix}.requests"])
    topic = f"{prefix}.predictions"
    while True:
        records = consumer.consume(_FETCH_RECORDS, timeout=0.1)
        _send_back(producer, topic, records)
        if records:
            producer.flush()
            consumer.commit(asynchronous=False)


def echo_confluent(bootstrap: str, prefix: str, group: str) -> None:
    from confluent_kafka import Consumer, Producer

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest",
                         "socket.nagle.disable": True})
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
                         "linger.ms": 1, "socket.nagle.disable": True})
    consumer.subscribe([f"{prefix}.requests"])
    topic = f"{prefix}.predictions"
    while True:
        records = consumer.consume(1, timeout=0.1)
        if records:
            records += consumer.consume(_FETCH_RECORDS - 1, 0)
        _send_back(producer, topic, records)
        producer.poll(0)  # serve the acks


def _send_back(producer: Any, topic: str, records: Sequence[Any]) -> None:
    """Each record's bytes to ``topic``, keyed as it was."""
    for record in records:
        if record.error() is None:
            while True:
                try:
                    producer.produce(topic, record.value(), record.key())
                    break
                except BufferError:  # librdkafka's queue is full: let it send
                    producer.poll(0.01)


def scorer(registry: Path, model: str) -> Callable[[dict], dict]:
    """The user's scoring function: request dict -> response dict, one row at a time (a
    tabular request's features, or a tensor model's one OIP input)."""
    from models.runtime import evaluator
    from pipeline.registry import Registry

    store = Registry(registry)
    version = store.latest(model)
    manifest = store.manifest(model, version)
    names = manifest.inputs.names
    outputs = manifest.outputs
    predict = evaluator(manifest.architecture, store.load_params(model, version),
                        manifest.inputs.shape)

    def score(request: dict) -> dict:
        if "inputs" in request:
            x = np.array([request["inputs"][0]["data"]], np.float32)
        else:
            x = np.array([[request["features"][name] for name in names]], np.float32)
        answer = np.asarray(predict(x))[0]
        if outputs.is_regressor:
            return {"id": request["id"], "model": model, "value": answer.tolist()}
        return {"id": request["id"], "model": model, "probabilities": answer.tolist(),
                "label": outputs.labels[int(answer.argmax())]}

    return score


async def handwritten(bootstrap: str, prefix: str, group: str, score: Callable[[dict], dict]) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    consumer = AIOKafkaConsumer(f"{prefix}.requests", bootstrap_servers=bootstrap, group_id=group,
                                enable_auto_commit=False, auto_offset_reset="earliest")
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    await consumer.start()
    processed = 0
    async for message in consumer:
        response = score(orjson.loads(message.value))
        await producer.send(f"{prefix}.predictions", orjson.dumps(response), key=message.key)
        processed += 1
        if processed % _COMMIT_EVERY == 0:
            await producer.flush()
            await consumer.commit()


def quix(bootstrap: str, prefix: str, group: str, score: Callable[[dict], dict]) -> None:
    from quixstreams import Application

    with tempfile.TemporaryDirectory() as state:
        app = Application(broker_address=bootstrap, consumer_group=group,
                          auto_offset_reset="earliest", state_dir=state, loglevel="WARNING")
        requests = app.topic(f"{prefix}.requests", value_deserializer="json")
        predictions = app.topic(f"{prefix}.predictions", value_serializer="json")
        sdf = app.dataframe(requests)
        sdf = sdf.apply(score)
        sdf.to_topic(predictions)
        app.run()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m agents.dev.bench_peers")
    parser.add_argument("kind", choices=("passthrough", "passthrough_confluent", "echo_confluent",
                                         "handwritten", "quix"))
    for option in ("--bootstrap", "--prefix", "--group", "--registry", "--model"):
        parser.add_argument(option, required=True)
    args = parser.parse_args(argv)
    if args.kind == "passthrough":
        asyncio.run(passthrough(args.bootstrap, args.prefix, args.group))
        return
    if args.kind in ("passthrough_confluent", "echo_confluent"):
        (passthrough_confluent if args.kind == "passthrough_confluent" else echo_confluent)(
            args.bootstrap, args.prefix, args.group)
        return
    score = scorer(Path(args.registry), args.model)
    if args.kind == "handwritten":
        asyncio.run(handwritten(args.bootstrap, args.prefix, args.group, score))
    else:
        quix(args.bootstrap, args.prefix, args.group, score)


if __name__ == "__main__":
    main()
