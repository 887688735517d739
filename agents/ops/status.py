"""``streamserve status``, the I/O: what the fleet looks like, read from Kafka, the
registry and the workers' metrics; the figures are computed by ``pipeline.status``.

One ``collect()``:

1. scrapes every ``--metrics`` endpoint (once per refresh after the first: each scrape
   is the next refresh's "before");
2. meanwhile reads Kafka: the deployment specs (control topic), the drift reports
   written since the last refresh (drift topic, tailed), the requests topic's offsets
   and the workers' consumer group's committed offsets; the registry, for the version
   served of models without a spec; and Prometheus's answers to the PromQL queries;
3. scrapes again once ``interval_s`` has passed since the first scrape.

Nothing that fails here stops the view: an unreachable worker, a failing query, an
unreadable record becomes a line in ``FleetStatus.problems``. Only Kafka itself being
unreachable when the collector opens is an error (``KafkaAccessError``).
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Self

import orjson
from aiokafka import ConsumerRecord
from aiokafka.errors import KafkaError
from prometheus_client.parser import text_string_to_metric_families

from agents.kafka.control import read_specs
from agents.kafka.connect import KafkaAccessError
from agents.kafka.read import ClusterView
from pipeline.config import Settings
from pipeline.registry import Registry, RegistryError
from pipeline.routing import ControlError, DeploymentSpec
from pipeline.signing import TrustedKeys, newest_verified
from pipeline.status import (
    FeatureVerdict,
    FleetMetrics,
    FleetStatus,
    GroupLag,
    Scrape,
    StatusError,
    Vector,
    VerdictKey,
    assemble,
    fold_verdicts,
    group_lag,
    merge_metrics,
    metrics_from_prometheus,
    metrics_from_scrapes,
    prometheus_queries,
    series_key,
)


@dataclass(frozen=True, slots=True)
class StatusOptions:
    """Where the figures come from. ``interval_s``: between the two scrapes of the first
    refresh. ``window``: the PromQL rate window. ``timeout_s``: per HTTP request."""

    metrics: tuple[str, ...] = ()
    prometheus: str | None = None
    interval_s: float = 2.0
    window: str = "1m"
    timeout_s: float = 5.0

    def __post_init__(self) -> None:
        if not self.interval_s > 0:
            raise StatusError(f"the interval between scrapes must be positive, e.g. 2 (seconds), "
                              f"got {self.interval_s!r}")
        prometheus_queries(self.window)  # a bad window fails here, before any I/O


def endpoint(url: str, path: str = "") -> str:
    """``url`` with ``http://`` when it names no scheme, and ``path`` when it has none:
    ``127.0.0.1:9100`` is ``http://127.0.0.1:9100/metrics`` for a worker."""
    if "://" not in url:
        url = f"http://{url}"
    if path and urllib.parse.urlsplit(url).path in ("", "/"):
        url = url.rstrip("/") + path
    return url


def parse_metrics(text: str, source: str, at: float) -> Scrape:
    """A ``/metrics`` page as a ``Scrape`` (``_created`` timestamps left out)."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not sample.name.endswith("_created"):
                samples[series_key(sample.name, sample.labels)] = float(sample.value)
    return Scrape(source, at, samples)


def _get(url: str, timeout: float) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


def _why(error: Exception) -> str:
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        return str(error.reason)
    return f"{type(error).__name__}: {error}"


def ask_prometheus(base: str, window: str, timeout: float,
                   problems: list[str]) -> FleetMetrics | None:
    """The figures from the Prometheus server at ``base`` (its HTTP API, instant queries
    over ``window``); None, with the problem added, when it answers none of them."""
    base = base.rstrip("/")
    results: dict[str, Vector] = {}
    failed = []
    for name, promql in prometheus_queries(window).items():
        url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
        try:
            body = json.loads(_get(url, timeout))
            if body.get("status") != "success" or body["data"]["resultType"] != "vector":
                raise ValueError(body.get("error") or f"unexpected answer {body!r:.200}")
            results[name] = [(sample["metric"], float(sample["value"][1]))
                             for sample in body["data"]["result"]]
        except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
            failed.append(f"Prometheus at {base} did not answer {promql!r}: {_why(e)}")
    if not results:  # every query failed alike: once is enough
        problems.append(failed[0])
        return None
    problems.extend(failed)
    return metrics_from_prometheus(results, f"Prometheus {base}, rates over {window}")


class StatusCollector:
    """Reads the fleet's status, again and again (``--watch``) with the same connections.

    Use as ``async with StatusCollector(settings, options) as collector: await
    collector.collect()``.
    """

    def __init__(self, settings: Settings, options: StatusOptions,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self._settings = settings
        self._options = options
        self._clock = clock
        self._wall = wall
        self._view = ClusterView(settings, tailed=(settings.topics.drift,))
        self._last: dict[str, Scrape] = {}  # each endpoint's latest scrape
        self._verdicts: dict[VerdictKey, FeatureVerdict] = {}
        self._unreadable_reports = 0
        self._verified: dict[tuple[str, tuple[str, ...]], str | None] = {}

    async def __aenter__(self) -> Self:
        await self._view.__aenter__()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._view.close()

    async def collect(self) -> FleetStatus:
        s, options, problems = self._settings, self._options, []
        started = self._clock()
        if options.metrics and not self._last:
            for url, scrape in (await self._scrape_all(problems)).items():
                self._last[url] = scrape
        kafka, defaults, prometheus = await asyncio.gather(
            self._read_kafka(problems), asyncio.to_thread(self._defaults, problems),
            asyncio.to_thread(self._ask_prometheus, problems))
        specs, lag = kafka
        scraped = None
        if options.metrics:
            await asyncio.sleep(max(0.0, started + options.interval_s - self._clock()))
            scraped = self._rates(await self._scrape_all(problems), problems)
        return assemble(taken_at=self._wall(), broker=s.bootstrap, group=s.kafka.app_id, specs=specs,
                        defaults={m: v for m, v in defaults.items() if m not in specs},
                        metrics=merge_metrics(prometheus, scraped),
                        verdicts=self._verdicts.values(), lag=lag,
                        problems=list(dict.fromkeys(problems)),
                        metrics_wanted=bool(options.metrics or options.prometheus))

    # ---- metrics ----------------------------------------------------------------------

    async def _scrape_all(self, problems: list[str]) -> dict[str, Scrape]:
        async def one(url: str) -> Scrape | None:
            try:
                text = await asyncio.to_thread(_get, url, self._options.timeout_s)
                return parse_metrics(text.decode("utf-8", errors="replace"), url, self._clock())
            except (OSError, ValueError) as e:
                problems.append(f"cannot read {url}: {_why(e)}; is the worker running with "
                                "--metrics-port, and is that its address?")
                return None

        results = await asyncio.gather(*(one(url) for url in self._options.metrics))
        return {url: scrape for url, scrape in zip(self._options.metrics, results)
                if scrape is not None}

    def _rates(self, now: dict[str, Scrape], problems: list[str]) -> FleetMetrics | None:
        """Rates from each endpoint's previous scrape to this one; this one becomes the
        previous. None (and a problem) when no endpoint was read twice."""
        pairs = [(self._last[url], scrape) for url, scrape in now.items() if url in self._last]
        self._last.update(now)
        if not pairs:
            problems.append("no worker's /metrics was read twice: no rates this time")
            return None
        return metrics_from_scrapes(pairs)

    def _ask_prometheus(self, problems: list[str]) -> FleetMetrics | None:
        if self._options.prometheus is None:
            return None
        return ask_prometheus(self._options.prometheus, self._options.window,
                              self._options.timeout_s, problems)

    # ---- Kafka and the registry -------------------------------------------------------

    async def _read_kafka(self, problems: list[str]) -> tuple[dict[str, DeploymentSpec],
                                                              GroupLag | None]:
        s, topics = self._settings, self._settings.topics
        try:
            existing = await self._view.topics()
        except KafkaError as e:
            problems.append(f"cannot read Kafka at {s.bootstrap}: {_why(e)}")
            return {}, None
        missing = [t for t in (topics.control, topics.requests, topics.drift) if t not in existing]
        if missing:
            problems.append(f"no topic {', '.join(missing)} yet: no worker has started with "
                            f"STREAMSERVE_TOPIC_PREFIX={s.kafka.topic_prefix} on {s.bootstrap}")
        specs: dict[str, DeploymentSpec] = {}
        lag = None
        try:
            if topics.control in existing:
                specs = await read_specs(s)
        except ControlError as e:
            problems.append(f"a deployment spec on {topics.control} is unreadable: {e}")
        except (KafkaError, KafkaAccessError) as e:
            problems.append(f"cannot read Kafka at {s.bootstrap}: {_why(e)}")
        try:
            if topics.drift in existing:
                self._fold_reports(await self._view.tail(topics.drift))
                if self._unreadable_reports:
                    problems.append(f"{self._unreadable_reports} records on {topics.drift} are "
                                    "not drift reports (a worker of another release?), skipped")
            if topics.requests in existing:
                offsets = await self._view.offsets(topics.requests)
                committed = await self._view.committed(s.kafka.app_id, topics.requests)
                lag = group_lag(s.kafka.app_id, topics.requests, offsets, committed)
        except (KafkaError, KafkaAccessError) as e:
            problems.append(f"cannot read Kafka at {s.bootstrap}: {_why(e)}")
        return specs, lag

    def _fold_reports(self, records: list[ConsumerRecord]) -> None:
        verdicts = []
        for record in records:
            try:
                verdicts.append(FeatureVerdict.from_report(orjson.loads(record.value)))
            except (orjson.JSONDecodeError, StatusError, TypeError):
                self._unreadable_reports += 1
        self._verdicts = fold_verdicts(self._verdicts, verdicts)

    def _defaults(self, problems: list[str]) -> dict[str, str | None]:
        """Each registered model's newest version that verifies (what workers serve without
        a spec); verified again only when the model's versions change."""
        s = self._settings
        try:
            registry = Registry(s.registry.root)
            trusted = TrustedKeys.load(s.registry.trusted_keys)
            out = {}
            for model in registry.models():
                key = (model, tuple(registry.versions(model)))
                if key not in self._verified:
                    self._verified[key] = newest_verified(registry, model, trusted,
                                                          s.registry.allow_unsigned)
                out[model] = self._verified[key]
            return out
        except (RegistryError, OSError) as e:
            problems.append(f"cannot read the registry {s.registry.root}: {e}")
            return {}


async def collect_once(settings: Settings, options: StatusOptions) -> FleetStatus:
    async with StatusCollector(settings, options) as collector:
        return await collector.collect()

