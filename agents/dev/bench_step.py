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

Beside it, what the drift agent spends counting those requests (``drift_counting``): the
drift-rows messages the step's flushes made, counted by a ``DriftMonitor`` as the agent
counts them (``agents.worker.drift``), and its state encoded as the agent stores it after
each. A drain with drift counting on against one with it off cannot show a cost of a few
per cent on shared cores, where one drain runs up to a third faster than the next.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from agents.worker.deployment import Deployment
from agents.worker.drift import stored_state
from agents.worker.inference import InferenceService
from agents.worker.metrics import Metrics
from models.runtime import ServingModel
from pipeline.client import PredictRequest
from pipeline.config import Settings
from pipeline.drift import CodedRows, DriftMonitor
from pipeline.outputs import Incoming, Outgoing
from pipeline.routing import DeploymentSpec

STEP_BATCHES = (1, 16, 256)
FLUSH_EVERY = 1000  # requests between two drift flushes
_PARTITIONS = 4


@dataclass(frozen=True, slots=True)
class StepCosts:
    per_request_us: dict[int, float]  # batch size -> the serving step's CPU µs a request
    # Of the step's CPU a request at the largest batches, its flushes': the served rows'
    # drift codes, computed once per flush.
    drift_coding_us: float
    # The drift agent's CPU µs to count a request the step served (None: drift counting is
    # off, or the model has no drift reference).
    drift_counting_us: float | None

    @property
    def drift_share(self) -> float | None:
        """Drift monitoring's CPU (coding and counting) over the step's at the largest
        batches: what drift counting costs a worker's throughput, at most."""
        if self.drift_counting_us is None:
            return None
        largest = self.per_request_us[max(self.per_request_us)]
        return (self.drift_coding_us + self.drift_counting_us) / (largest + self.drift_counting_us)


async def serving_step(settings: Settings, served: ServingModel,
                       rows: Sequence[Mapping[str, object]], seconds: float) -> StepCosts:
    """CPU µs per request of the serving step, at each of ``STEP_BATCHES``, each measured
    for about ``seconds`` of CPU after a warm-up; and of counting the drift rows of the
    requests it served."""
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

        costs, coding, flushed = {}, {}, []
        for size in STEP_BATCHES:
            for _ in range(max(1, 256 // size)):  # warm-up: caches, the first calls' paths
                await step(size)
            spent, flushing, served_requests = 0.0, 0.0, 0
            while spent < seconds or served_requests < 10 * size:
                spent += await step(size)
                served_requests += size
                if served_requests % FLUSH_EVERY < size:
                    started = time.process_time()
                    flushed += service.flush_rows()
                    flushing += time.process_time() - started
            costs[size] = (spent + flushing) / served_requests * 1e6
            coding[size] = flushing / served_requests * 1e6
        flushed += service.flush_rows()
        drift_rows = [m for m in flushed if m.topic == settings.topics.drift_rows]
        return StepCosts(costs, coding[max(coding)], drift_counting(settings, served, drift_rows))


def drift_counting(settings: Settings, served: ServingModel, messages: Sequence[Outgoing]) -> float | None:
    """CPU µs a request to count ``messages`` (drift rows of ``served``) into a version's
    windows and encode its state after each, as the drift agent does."""
    if not messages or not served.manifest.reference:
        return None
    policy = settings.policy(served.model)
    monitor = DriftMonitor.from_manifest_reference(served.manifest.reference, policy.drift_window_s,
                                                   policy.drift_hop_s, policy.drift, policy.drift_grace_s)
    counted, started = 0, time.process_time()
    for message in messages:
        coded = CodedRows.from_bytes(message.value)
        monitor.on_rows(coded)
        stored_state(monitor, counted)
        counted += len(coded)
    return (time.process_time() - started) / counted * 1e6

