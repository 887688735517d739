"""``streamserve bench``'s case 2b: the serving step in-process, without Kafka.

``InferenceService.handle`` then ``delivered`` (decode, admission, the model call, the
outputs and their tally) over batches of the bench's requests built beforehand, with the
worker's settings, and the drift codes at a flush every ``FLUSH_EVERY`` requests (a
worker flushes twice a second: under load thousands of rows, under light load dozens):
what a worker's serving step costs per request at each batch size, apart from its Kafka
client, its commit and the broker's share of the cores, which case 3's CPU per request
holds too. A batch of one shows the cost of a batch; 256 (the default largest) the cost
of a request under load. Process CPU time, so a model call handed to the model thread
counts too.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

from agents.worker.deployment import Deployment
from agents.worker.inference import InferenceService
from agents.worker.metrics import Metrics
from models.runtime import ServingModel
from pipeline.client import PredictRequest
from pipeline.config import Settings
from pipeline.outputs import Incoming
from pipeline.routing import DeploymentSpec

STEP_BATCHES = (1, 16, 256)
FLUSH_EVERY = 1000  # requests between two drift flushes
_PARTITIONS = 4


async def serving_step(settings: Settings, served: ServingModel,
                       rows: Sequence[Mapping[str, object]], seconds: float) -> dict[int, float]:
    """CPU µs per request of the serving step, at each of ``STEP_BATCHES``, each measured
    for about ``seconds`` of CPU after a warm-up."""
    with ThreadPoolExecutor(1, thread_name_prefix="model") as executor:
        service = InferenceService(settings, Metrics(), executor)
        service.install(Deployment({(served.model, served.version): served},
                                   {served.model: DeploymentSpec(served.model, served.version)}))
        await service.warm([served])
        offsets = iter(range(1 << 62))  # every request's own id and position: none is a repeat

        def batch(size: int) -> list[Incoming]:
            return [Incoming("bench.requests", offset % _PARTITIONS, offset, time.time(),
                             PredictRequest(served.model, rows[offset % len(rows)],
                                            id=f"step-{offset}").encode())
                    for offset in (next(offsets) for _ in range(size))]

        async def step(size: int) -> float:
            records = batch(size)
            started = time.process_time()
            service.delivered(await service.handle(records, 0.0, time.time()))
            return time.process_time() - started

        costs = {}
        for size in STEP_BATCHES:
            for _ in range(max(1, 256 // size)):  # warm-up: caches, the first calls' paths
                await step(size)
            spent, served_requests = 0.0, 0
            while spent < seconds or served_requests < 10 * size:
                spent += await step(size)
                served_requests += size
                if served_requests % FLUSH_EVERY < size:
                    started = time.process_time()
                    service.flush_rows()
                    spent += time.process_time() - started
            costs[size] = spent / served_requests * 1e6
        service.flush_rows()
        return costs

