"""What ``streamserve bench`` measured, and how it shows it: the result types, the table,
the JSON (contract: scripts read its keys) and the progress line."""

from __future__ import annotations

import os
import statistics
import sys
import time
from dataclasses import dataclass, field

from agents.dev.bench_profile import Profile
from agents.dev.bench_step import StepCosts


@dataclass(frozen=True, slots=True)
class Sizes:
    requests: int  # per throughput case
    per_record_requests: int  # for case 4, an order of magnitude slower than the others
    latency_seconds: float  # of load per latency point
    timing_seconds: float  # per in-process measurement
    drift_pairs: int  # case 3b's alternating drains with drift counting on and off


@dataclass(frozen=True, slots=True)
class Answers:
    """How the outputs of one throughput case match its requests."""

    requests: int
    answered_once: int
    missing: int
    duplicates: int  # answers beyond an id's first, and answers to ids never sent
    deadletters: int

    @property
    def complete(self) -> bool:
        return self.answered_once == self.requests and not self.duplicates


@dataclass(frozen=True, slots=True)
class WorkerStats:
    """Counter deltas of workers from the moment they were ready to the end of a case."""

    jit_compiles: float
    padding_rows: float | None  # None: the workers export no streamserve_padding_rows_total
    rows: float
    batches: float

    @classmethod
    def between(cls, before: dict[str, float], after: dict[str, float]) -> WorkerStats:
        def delta(name: str) -> float:
            return after.get(name, 0.0) - before.get(name, 0.0)

        padding = "streamserve_padding_rows_total"
        return cls(delta("streamserve_jit_compiles_total"), delta(padding) if padding in after else None,
                   delta("streamserve_batch_size_sum"), delta("streamserve_batch_size_count"))

    def __add__(self, other: WorkerStats) -> WorkerStats:
        padding = (None if self.padding_rows is None or other.padding_rows is None
                   else self.padding_rows + other.padding_rows)
        return WorkerStats(self.jit_compiles + other.jit_compiles, padding,
                           self.rows + other.rows, self.batches + other.batches)

    @property
    def padding_waste(self) -> float | None:
        """The share of the rows computed that were padding."""
        if self.padding_rows is None or self.padding_rows + self.rows == 0:
            return None
        return self.padding_rows / (self.padding_rows + self.rows)

    @property
    def mean_batch(self) -> float | None:
        return self.rows / self.batches if self.batches else None


@dataclass(frozen=True, slots=True)
class Case:
    title: str
    throughput_rps: float
    seconds: float  # the measured window
    answers: Answers | None = None
    workers: WorkerStats | None = None
    extra: dict[str, float] = field(default_factory=dict)  # more facts, for the JSON and the notes

    def to_json(self) -> dict:
        out: dict = {"throughput_rps": self.throughput_rps, "seconds": self.seconds}
        if (a := self.answers) is not None:
            out |= {"requests": a.requests, "answered_once": a.answered_once, "missing": a.missing,
                    "duplicates": a.duplicates, "deadletters": a.deadletters}
        if (w := self.workers) is not None:
            out |= {"mean_batch": w.mean_batch, "padding_waste": w.padding_waste,
                    "jit_compiles_after_warmup": w.jit_compiles}
        return out | self.extra

    def notes(self) -> str:
        notes = []
        if self.extra.get("cpu_us_per_request") is not None:
            notes.append(f"CPU {self.extra['cpu_us_per_request']:.0f} µs/req")
        if split := self.extra.get("cpu_us_by_thread"):
            notes[-1] += " (" + ", ".join(f"{group} {us:.0f}" for group, us in split.items()) + ")"
        if self.workers is not None and self.workers.mean_batch is not None:
            notes.append(f"mean batch {self.workers.mean_batch:.1f}")
        if self.workers is not None and self.workers.padding_waste is not None:
            notes.append(f"padding {100 * self.workers.padding_waste:.1f} %")
        if self.answers is not None and self.answers.deadletters:
            notes.append(f"{self.answers.deadletters} dead letters")
        if self.answers is not None and self.answers.duplicates:
            notes.append(f"{self.answers.duplicates} DUPLICATES")
        if "best_bucket" in self.extra:
            x = self.extra
            notes.append(f"rows/s at bucket {x['best_bucket']:.0f} ({x['bucket_1_rps']:,.0f} at 1)")
            if x["flop_bound_rps"]:
                notes.append(f"FLOP bound {x['flop_bound_rps']:,.0f} rows/s at {x['gflops']:.1f} GFLOP/s")
            if x["library_rps"]:
                notes.append(f"{x['library']}'s own predictor {x['library_rps']:,.0f} rows/s "
                             f"({self.throughput_rps / x['library_rps']:.2f}x)")
        return ", ".join(notes)


@dataclass(frozen=True, slots=True)
class LatencyPoint:
    share: int  # percent of case 3's throughput
    rate_rps: float  # offered
    achieved_rps: float  # what the load generator kept up
    requests: int
    answered: int
    p50: float  # milliseconds from a request's send to its answer's arrival
    p95: float
    p99: float
    legs: dict[str, float] = field(default_factory=dict)  # median ms per leg (bench_traffic.latency_legs)


@dataclass(frozen=True, slots=True)
class Report:
    device: str
    model: str
    sizes: Sizes
    cases: dict[str, Case]
    serving_step: StepCosts  # CPU µs a request, in-process (agents.dev.bench_step)
    latency: dict[int, LatencyPoint]  # from a raw producer
    latency_floor: dict[int, LatencyPoint]  # the same loads, answered by a compiled pass-through
    client: LatencyPoint  # the same load through the client library, at one share
    workers: WorkerStats  # summed over every streamserve worker and case
    load: float  # the machine's 1-minute load average before the run
    # Case 3b's drains with drift counting on and off, in the order run: (on, off) req/s.
    drift_pairs: tuple[tuple[float, float], ...] = ()
    profile: Profile | None = None  # --profile: where case 3's worker spends its time

    def ratios(self) -> dict[str, float | None]:
        rps = {name: case.throughput_rps for name, case in self.cases.items()}
        flop_bound = self.cases["model_ceiling"].extra["flop_bound_rps"]
        return {"vs_kafka_ceiling": rps["streamserve"] / rps["kafka_ceiling"],
                "vs_compiled_ceiling": rps["streamserve"] / rps["kafka_ceiling_compiled"],
                "vs_per_record": rps["streamserve"] / rps["streamserve_per_record"],
                "vs_handwritten": rps["streamserve"] / rps["handwritten_aiokafka"],
                "vs_quix": rps["streamserve"] / rps["quix_streams"],
                "two_workers": rps["streamserve_two_workers"] / rps["streamserve"],
                "drift_on_vs_off": self.drift_on_vs_off,
                "vs_builtin_mlp": (rps["streamserve"] / rps["streamserve_builtin"]
                                   if "streamserve_builtin" in rps else None),
                "model_vs_flop_bound": rps["model_ceiling"] / flop_bound if flop_bound else None,
                "client_vs_raw_p50": self.client.p50 / self.latency[self.client.share].p50,
                "client_vs_raw_p99": self.client.p99 / self.latency[self.client.share].p99}

    @property
    def drift_on_vs_off(self) -> float:
        """The median of case 3b's pairs' throughput ratios, drift counting on over off."""
        return statistics.median(on / off for on, off in self.drift_pairs)

    def incomplete(self) -> list[str]:
        """Titles of the cases where a request was not answered exactly once."""
        return [c.title for c in self.cases.values() if c.answers is not None and not c.answers.complete]

    def to_json(self) -> dict:
        return {
            "device": self.device,
            "cases": {name: case.to_json() for name, case in self.cases.items()},
            "latency_ms": {str(p.share): _point_json(p) for p in self.latency.values()},
            "latency_floor_ms": {str(p.share): _point_json(p) for p in self.latency_floor.values()},
            "client_latency_ms": {"share": self.client.share, **_point_json(self.client)},
            "ratios": self.ratios(),
            "drift_pairs_rps": [list(pair) for pair in self.drift_pairs],
            "cpu_us_per_request": self.cases["streamserve"].extra.get("cpu_us_per_request"),
            "serving_step_cpu_us_per_request": {str(size): us for size, us in
                                                self.serving_step.per_request_us.items()},
            "drift_coding_cpu_us_per_request": self.serving_step.drift_coding_us,
            "drift_counting_cpu_us_per_request": self.serving_step.drift_counting_us,
            "drift_share_of_serving": self.serving_step.drift_share,
            "jit_compiles_after_warmup": round(self.workers.jit_compiles),
            "padding_waste": self.workers.padding_waste,
        } | ({"profile_us_per_request": self.profile.us_per_request()} if self.profile else {})

    def table(self, quick: bool) -> str:
        lines = [(f"streamserve bench{' --quick' if quick else ''}: model {self.model}, JAX on "
                  f"{self.device}, {self.sizes.requests} requests per case"),
                 (f"{os.cpu_count()} CPUs, load average {self.load:.2f} before the run "
                  "(other work on the machine skews every number)"),
                 "",
                 f"{'CASE':<32}{'THROUGHPUT':>12}  {'ANSWERED ONCE':<15}NOTES"]
        for case in self.cases.values():
            answered = f"{case.answers.answered_once}/{case.answers.requests}" if case.answers else ""
            lines.append(f"{case.title:<32}{case.throughput_rps:>10,.0f}/s  {answered:<15}{case.notes()}")
        lines += ["", "3b DRIFT COUNTING, drains on and off in turn: "
                  + ", ".join(f"{on:,.0f}/{off:,.0f}" for on, off in self.drift_pairs)
                  + f" req/s; on/off {self.drift_on_vs_off:.3f} (the median pair's)"]
        step = self.serving_step
        lines += ["", "2b SERVING STEP, in-process (no Kafka): CPU "
                  + ", ".join(f"{us:,.1f} µs a request at batches of {size}"
                              for size, us in step.per_request_us.items())
                  + ("" if step.drift_share is None else
                     f"; drift monitoring {step.drift_coding_us:.2f} µs a request to code (in the step) "
                     f"and {step.drift_counting_us:.2f} to count, {100 * step.drift_share:.1f} % of it")]
        lines += ["", (f"{'6 LATENCY, OPEN LOOP':<32}{'OFFERED':>12}{'KEPT':>12}  {'ANSWERED':<15}"
                       f"{'P50':>9}{'P95':>11}{'P99':>11}")]
        points = [point for p in self.latency.values() for point in (
            (f"{p.share} % of case 3", p), (f"{p.share} %, floor (6f)", self.latency_floor[p.share]))]
        points.append((f"{self.client.share} %, through the client", self.client))
        for title, p in points:
            answered = f"{p.answered}/{p.requests}"
            lines.append(f"{f'  {title}':<32}{p.rate_rps:>10,.0f}/s{p.achieved_rps:>10,.0f}/s  "
                         f"{answered:<15}{p.p50:>6.1f} ms{p.p95:>8.1f} ms{p.p99:>8.1f} ms")
            if p.legs:
                lines.append("    medians: " + ", ".join(f"{leg.replace('_', ' ')} {ms:.1f} ms"
                                                       for leg, ms in p.legs.items()))
        raw = self.latency[self.client.share]
        lines.append(f"{'  client / raw producer':<73}{self.client.p50 / raw.p50:>8.2f}x"
                     f"{self.client.p95 / raw.p95:>10.2f}x{self.client.p99 / raw.p99:>10.2f}x")
        lines += ["", "RATIOS", *(f"  {name:<22}{'n/a' if value is None else f'{value:.3f}':>8}"
                                  for name, value in self.ratios().items())]
        waste = self.workers.padding_waste
        lines += ["", f"jit compiles after warm-up: {self.workers.jit_compiles:.0f}",
                  "padding waste: " + (f"{100 * waste:.1f} % of the rows computed" if waste is not None
                                       else "n/a (the workers export no streamserve_padding_rows_total)")]
        if self.profile is not None:
            lines += ["", self.profile.table()]
        return "\n".join(lines)


def _point_json(p: LatencyPoint) -> dict[str, object]:
    return {"p50": p.p50, "p95": p.p95, "p99": p.p99, "rate_rps": p.rate_rps,
            "achieved_rps": p.achieved_rps, "requests": p.requests, "answered": p.answered,
            "legs_p50_ms": p.legs}


class CaseProgress:
    """One line per case on stderr, rewritten in place while it runs (on a terminal)."""

    def __init__(self) -> None:
        self._live = sys.stderr.isatty()
        self.title = ""
        self._started = time.monotonic()

    def start(self, title: str) -> None:
        self.title = title
        self._started = time.monotonic()
        self.status("starting")

    def status(self, text: str) -> None:
        if self._live:
            print(f"\r\033[K{self.title}: {text}", end="", file=sys.stderr, flush=True)

    def done(self, text: str) -> None:
        line = f"{self.title}: {text} ({time.monotonic() - self._started:.1f} s)"
        print(f"\r\033[K{line}" if self._live else line, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------- the run
