"""What the label join costs at scale: bytes per kept answer, and the recovery of its table.

``python -m agents.dev.label_scale --answers 100000`` (the local broker, started when none
runs; a registry holding iris, trained when it lacks one):

1. a worker with STREAMSERVE_LABELS=on serves ``--answers`` iris requests, sent at once;
2. once the join has kept them all (``quality report``'s answers), it prints the RocksDB
   files' bytes per kept answer and the worker's resident memory;
3. the worker is killed with SIGKILL, and a worker on another STREAMSERVE_HOME (a new
   machine: no RocksDB files) starts in its place: it prints how long that worker took
   to be ready (its table recovered from the changelog) against a normal start, and how
   long until its reports count every kept answer again.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

import orjson

from agents.dev.fleet import WorkerProcess
from agents.ops.quality_report import read_quality, summarize
from models.datasets import load as load_dataset
from models.train import servable_version
from pipeline.config import Settings
from pipeline.registry import Registry
from pipeline.signing import TrustedKeys

_SEND_BATCH = 5000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--answers", type=int, default=100_000)
    args = parser.parse_args()
    settings = Settings.from_env()
    from agents.dev.broker import LocalBroker

    broker = LocalBroker(settings.kafka.home, settings.kafka.local_broker_port)
    started = broker.start() if settings.kafka.uses_local_broker else False
    try:
        servable_version("iris", Registry(settings.registry.root), settings.registry.signing_key,
                         TrustedKeys.load(settings.registry.trusted_keys))
        with tempfile.TemporaryDirectory() as folder:
            measure(settings, args.answers, Path(folder))
    finally:
        if started:
            broker.stop()


def measure(settings: Settings, n: int, folder: Path) -> None:
    prefix = f"scale{int(time.time())}"
    env = {"STREAMSERVE_BROKER": settings.bootstrap, "STREAMSERVE_TOPIC_PREFIX": prefix,
           "STREAMSERVE_APP_ID": prefix, "STREAMSERVE_LABELS": "on", "STREAMSERVE_QUALITY_REPORT_S": "1",
           "STREAMSERVE_HOME": str(folder / "first"), "STREAMSERVE_DRIFT": "off",
           "STREAMSERVE_SAMPLE_RATE": "0"}
    began = time.monotonic()
    worker = WorkerProcess.start(folder / "first.log", env)
    normal_start = time.monotonic() - began
    asyncio.run(_send(worker.settings, n))
    kept_s = _until_kept(worker.settings, n)
    files = sum(f.stat().st_size for f in (folder / "first").rglob("*") if f.is_file()
                and "label-join" in str(f))
    print(f"{n} answers kept in {kept_s:.1f} s; RocksDB files {files / 1e6:.1f} MB: "
          f"{files / n:.0f} bytes per kept answer; worker resident memory {_rss_mb(worker):.0f} MB")
    worker.kill()
    began = time.monotonic()
    fresh = WorkerProcess.start(folder / "second.log", {**env, "STREAMSERVE_HOME": str(folder / "second")})
    try:
        ready_s = time.monotonic() - began
        asyncio.run(_send(fresh.settings, 40, start=n))  # an event per partition: figures rebuilt
        counted_s = _until_kept(fresh.settings, n + 40) + ready_s
        print(f"after kill -9, a worker on a new machine: ready in {ready_s:.1f} s (a fresh "
              f"start: {normal_start:.1f} s), every answer counted again after {counted_s:.1f} s; "
              f"resident memory {_rss_mb(fresh):.0f} MB")
    finally:
        fresh.stop()


async def _send(settings: Settings, n: int, start: int = 0) -> None:
    from aiokafka import AIOKafkaProducer

    iris = load_dataset("iris")
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap, linger_ms=5)
    await producer.start()
    try:
        for first in range(start, start + n, _SEND_BATCH):
            await asyncio.gather(*[await producer.send(settings.topics.requests, orjson.dumps(
                {"id": f"s-{i}", "model": "iris",
                 "features": dict(zip(iris.features, iris.X[i % len(iris.X)].tolist(), strict=True))}))
                for i in range(first, min(start + n, first + _SEND_BATCH))])
    finally:
        await producer.stop()


def _until_kept(settings: Settings, n: int, timeout: float = 1800) -> float:
    began = time.monotonic()
    while sum(v["answers"] for v in summarize(settings, "iris", asyncio.run(read_quality(settings, "iris")))) < n:
        if time.monotonic() - began > timeout:
            raise TimeoutError(f"the join did not keep {n} answers in {timeout:.0f} s")
        time.sleep(1)
    return time.monotonic() - began


def _rss_mb(worker: WorkerProcess) -> float:
    for line in Path(f"/proc/{worker.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
