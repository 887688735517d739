"""``streamserve bench --profile``: where a serving worker's time goes, stage by stage.

The worker drains case 3's backlog under cProfile (``STREAMSERVE_PROFILE``: its event-loop
thread, from the end of warm-up to its stop; the threads librdkafka's calls block in are
not profiled, and count in the case's CPU per request). Each function's own time (not its callees')
goes to the stage its code belongs to, the first that matches in ``STAGES``; the model
runs on a thread of its own, whose time comes from the worker's
``streamserve_inference_latency_seconds``. cProfile slows Python code by about half again
(C code barely), so the shares say where to look; the µs are not the unprofiled costs.
"""

from __future__ import annotations

import pstats
from dataclasses import dataclass
from pathlib import Path

# stage: path fragments of its code (and names of built-ins, whose file is "~")
STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("waiting (I/O, the model thread)", ("select.epoll", "select.select", "_thread.lock")),
    ("decode", ("pipeline/decode.py", "pipeline/fast_decode.py", "pipeline/schema.py",
                "orjson.loads", "msgspec.")),
    ("admission (routing, dedupe, quotas, breakers)",
     ("pipeline/admission.py", "pipeline/dedupe.py", "pipeline/tenant_quotas.py",
      "pipeline/routing/", "pipeline/breaker.py", "pipeline/canary.py")),
    ("model input and output arrays", ("models/", "/jax/", "/jaxlib/", "/numpy/", "numpy.")),
    ("output building", ("pipeline/outputs.py", "pipeline/messages.py", "pipeline/rejections.py",
                         "pipeline/redaction.py", "pipeline/sampling.py", "pipeline/replies.py",
                         "orjson.dumps")),
    ("commit", ("agents/worker/checkpoint.py", "pipeline/offsets.py", "pipeline/ledger.py")),
    # librdkafka's C calls made on the loop (produce) and the asyncio face over it; its
    # consume and delivery threads are not the event loop's (the CPU per request has them).
    ("Kafka client (librdkafka)", ("agents/kafka/librdkafka.py", "/confluent_kafka/", "cimpl.")),
    ("metrics", ("prometheus_client", "agents/worker/metrics.py")),
    ("drift counting and Faust", ("pipeline/drift/", "agents/worker/drift.py", "/faust/", "/mode/",
                                  "/aiokafka/")),
    ("serving loop", ("agents/worker/", "pipeline/")),
    ("event loop (asyncio)", ("/asyncio/", "selectors.py")),
)
OTHER = "other"
WAITING = STAGES[0][0]


@dataclass(frozen=True)
class Profile:
    """Seconds per stage of the event-loop thread, the model thread's, and the requests."""

    stages: dict[str, float]
    model_thread_s: float
    requests: int

    @classmethod
    def read(cls, path: Path, model_thread_s: float, requests: int) -> Profile:
        stages = dict.fromkeys([name for name, _ in STAGES] + [OTHER], 0.0)
        for (file, _line, function), (_cc, _nc, own, _cumulative, callers) in pstats.Stats(
                str(path)).stats.items():  # type: ignore[attr-defined]
            stage = stage_of(file, function)
            if stage == OTHER and file == "~" and callers:
                # A built-in of no stage of its own (len, a socket's send) works for its
                # callers: each gets the time it spent calling it.
                for (caller_file, _, caller), (_, _, spent, _) in callers.items():
                    stages[stage_of(caller_file, caller)] += spent
            else:
                stages[stage] += own
        return cls(stages, model_thread_s, requests)

    def us_per_request(self) -> dict[str, float]:
        """Every stage's µs per request, waiting aside, and the model thread's."""
        per = {name: seconds / self.requests * 1e6 for name, seconds in self.stages.items()
               if name != WAITING}
        return per | {"model thread": self.model_thread_s / self.requests * 1e6}

    def table(self) -> str:
        busy = sum(s for name, s in self.stages.items() if name != WAITING)
        lines = [f"PROFILE of case 3's worker over {self.requests} requests (cProfile, event-loop "
                 "thread; it slows Python code, so read the shares)",
                 f"  {'STAGE':<48}{'SECONDS':>9}{'SHARE':>8}{'µs/REQ':>9}"]
        for name, seconds in sorted(self.stages.items(), key=lambda item: -item[1]):
            if name == WAITING:
                continue
            lines.append(f"  {name:<48}{seconds:>9.2f}{100 * seconds / busy:>7.1f}%"
                         f"{seconds / self.requests * 1e6:>9.1f}")
        lines += [f"  {'busy, in all':<48}{busy:>9.2f}{'':>8}{busy / self.requests * 1e6:>9.1f}",
                  f"  {WAITING:<48}{self.stages[WAITING]:>9.2f}  (from warm-up to stop)",
                  f"  {'model thread (streamserve_inference_latency)':<48}{self.model_thread_s:>9.2f}"
                  f"{'':>8}{self.model_thread_s / self.requests * 1e6:>9.1f}"]
        return "\n".join(lines)


def stage_of(file: str, function: str) -> str:
    where = function if file == "~" else file
    for name, fragments in STAGES:
        if any(fragment in where for fragment in fragments):
            return name
    return OTHER
