"""``streamserve status`` without a broker: figures from scrapes and from Prometheus's
answers, lag, drift verdicts, the fleet they make, and the view drawn from it."""

from __future__ import annotations

import argparse
import io
import json
import math
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prometheus_client import generate_latest
from rich.console import Console

from agents.worker.metrics import Metrics
from agents.ops.status import StatusOptions, ask_prometheus, endpoint, parse_metrics
from agents.cli.status import console_for, options_from, register
from agents.ops.status_view import METRICS_HINT, render
from pipeline.routing import Canary, DeploymentSpec
from pipeline.status import (
    NO_MODEL,
    FeatureVerdict,
    FleetMetrics,
    ModelMetrics,
    Scrape,
    StatusError,
    assemble,
    fold_verdicts,
    group_lag,
    histogram_quantile,
    increase,
    merge_metrics,
    metrics_from_prometheus,
    metrics_from_scrapes,
    prometheus_queries,
    series_key,
    summarize_drift,
)

INF = math.inf


def sample(name: str, value: float, **labels: str) -> tuple:
    return series_key(name, labels), value


def scraped(at: float, *samples: tuple, source: str = "w1") -> Scrape:
    return Scrape(source, at, dict(samples))


# ---- increase and quantiles ------------------------------------------------------------


def test_increase_counts_growth_new_series_and_resets():
    before = scraped(0, sample("c_total", 10, model="a"), sample("c_total", 50, model="b"))
    after = scraped(2, sample("c_total", 15, model="a"), sample("c_total", 3, model="b"),
                    sample("c_total", 7, model="new"))
    grown = increase(before, after)
    assert grown[series_key("c_total", {"model": "a"})] == 5
    assert grown[series_key("c_total", {"model": "b"})] == 3  # reset: a restarted worker
    assert grown[series_key("c_total", {"model": "new"})] == 7  # created in between


def test_histogram_quantile_interpolates_like_prometheus():
    buckets = [(0.1, 50), (0.5, 90), (1.0, 100), (INF, 100)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.1)
    assert histogram_quantile(0.99, buckets) == pytest.approx(0.5 + 0.5 * 9 / 10)
    assert histogram_quantile(0.25, buckets) == pytest.approx(0.05)
    assert histogram_quantile(0.99, list(reversed(buckets))) == pytest.approx(0.95)  # any order


def test_histogram_quantile_in_the_inf_bucket_is_the_highest_finite_bound():
    assert histogram_quantile(0.99, [(0.1, 10), (0.25, 10), (INF, 20)]) == 0.25


def test_histogram_quantile_without_observations_is_none():
    assert histogram_quantile(0.99, [(0.1, 0), (INF, 0)]) is None


def test_histogram_quantile_repairs_counts_that_decrease():
    # Increases of buckets read a moment apart can dip; Prometheus takes the running max.
    assert histogram_quantile(0.5, [(0.1, 4), (0.2, 3), (INF, 4)]) == pytest.approx(0.05)


@pytest.mark.parametrize("q, buckets, match", [
    (1.5, [(INF, 1)], "between 0 and 1"),
    (0.5, [(0.1, 1)], r"\+Inf"),
    (0.5, [], r"\+Inf"),
])
def test_histogram_quantile_refuses_what_it_cannot_compute(q, buckets, match):
    with pytest.raises(StatusError, match=match):
        histogram_quantile(q, buckets)


# ---- figures from a worker's real /metrics ---------------------------------------------


def traffic(metrics: Metrics, served: int, dead: dict[tuple[str, str], int],
            latency_s: float, breaker: dict[tuple[str, str], int] | None = None) -> None:
    """What a worker counts: ``served`` iris predictions at ``latency_s``, dead letters."""
    metrics.requests.labels("iris", "1", "prediction").inc(served)
    metrics.predictions.labels("iris", "1", "stable").inc(served)
    for _ in range(served):
        metrics.e2e_latency.labels("iris").observe(latency_s)
    for (model, reason), n in dead.items():
        metrics.requests.labels(model, "1" if model else "", "deadletter").inc(n)
        metrics.deadletters.labels(model, reason).inc(n)
    for (model, version), state in (breaker or {}).items():
        metrics.breaker_state.labels(model, version).set(state)


def page(metrics: Metrics, source: str, at: float) -> Scrape:
    return parse_metrics(generate_latest(metrics.registry).decode(), source, at)


def test_rates_p99_and_breakers_from_two_workers_scraped_twice():
    one, two = Metrics(), Metrics()
    one.ready.set(1)
    traffic(one, 5, {}, 0.003)
    traffic(two, 1, {}, 0.003)
    before = [page(one, "w1", 10.0), page(two, "w2", 10.1)]
    traffic(one, 40, {("iris", "schema_mismatch"): 4, ("", "malformed_json"): 2}, 0.02)
    traffic(two, 60, {("iris", "model_error"): 2}, 0.2, breaker={("iris", "2"): 2})
    after = [page(one, "w1", 12.0), page(two, "w2", 12.1)]
    fleet = metrics_from_scrapes(list(zip(before, after)))
    iris = fleet.models["iris"]
    assert iris.requests_per_s == pytest.approx((44 + 62) / 2)
    assert iris.predictions_per_s == pytest.approx(100 / 2)
    assert iris.deadletters_per_s == pytest.approx(3)
    assert iris.reasons == (("schema_mismatch", 2.0), ("model_error", 1.0))
    assert iris.deadletter_share == pytest.approx(6 / 106)
    # 100 observations in the window: 40 at 20 ms (bucket 0.025), 60 at 200 ms (0.25);
    # the p99 is interpolated in (0.1, 0.25]; the 3 ms of before the window do not count.
    assert iris.p99_s == pytest.approx(0.1 + 0.15 * (99 - 40) / 60)
    assert iris.breakers == (("2", 2),) and iris.unhealthy_breakers == (("2", 2),)
    unrouted = fleet.models[NO_MODEL]
    assert unrouted.reasons == (("malformed_json", 1.0),) and unrouted.p99_s is None
    assert fleet.workers == 2 and fleet.ready == 1
    assert fleet.source == "2 workers' /metrics, rates over 2.0 s"


def test_a_worker_not_read_twice_is_a_problem_not_a_zero():
    m = Metrics()
    fleet = metrics_from_scrapes([(page(m, "w1", 5.0), page(m, "w1", 5.0))],
                                 failed=["cannot read w2"])
    assert fleet.workers == 0
    assert fleet.problems == ("cannot read w2", "w1: scraped twice at the same time; no rate")


def test_an_idle_model_has_zero_rates_and_no_p99():
    m = Metrics()
    traffic(m, 10, {}, 0.01)
    fleet = metrics_from_scrapes([(page(m, "w1", 0.0), page(m, "w1", 2.0))])
    assert fleet.models["iris"] == ModelMetrics("iris", 0.0, 0.0, 0.0, (), None, ())


# ---- Prometheus -------------------------------------------------------------------------


def test_prometheus_queries_are_the_documented_promql():
    queries = prometheus_queries("5m")
    assert queries["p99"] == ("histogram_quantile(0.99, sum by (le, model) "
                              "(rate(streamserve_e2e_latency_seconds_bucket[5m])))")
    assert queries["deadletters"] == \
        "sum by (model, reason) (rate(streamserve_deadletters_total[5m]))"
    with pytest.raises(StatusError, match="PromQL duration"):
        prometheus_queries("five minutes")


def test_metrics_from_prometheus_answers():
    results = {
        "requests": [({"model": "iris"}, 12.5), ({"model": ""}, 0.5)],
        "predictions": [({"model": "iris"}, 12.0)],
        "deadletters": [({"model": "iris", "reason": "schema_mismatch"}, 0.5),
                        ({"model": "", "reason": "malformed_json"}, 0.5)],
        "p99": [({"model": "iris"}, 0.038), ({"model": "breast_cancer"}, math.nan)],
        "breakers": [({"model": "iris", "version": "1"}, 0.0)],
        "ready": [({}, 2.0)],
        "workers": [({}, 3.0)],
    }
    fleet = metrics_from_prometheus(results, "Prometheus http://p:9090, rates over 1m")
    assert fleet.models["iris"] == ModelMetrics("iris", 12.5, 12.0, 0.5,
                                                (("schema_mismatch", 0.5),), 0.038, (("1", 0),))
    assert fleet.models["breast_cancer"].p99_s is None  # NaN: no observations in the window
    assert fleet.models[NO_MODEL].deadletters_per_s == 0.5
    assert (fleet.workers, fleet.ready) == (3, 2)
    assert metrics_from_prometheus({"ready": []}, "p").ready == 0  # sum() of nothing
    assert metrics_from_prometheus({}, "p").ready is None  # the query failed


@pytest.fixture
def fake_prometheus() -> Iterator[tuple[str, dict]]:
    """An HTTP server answering /api/v1/query from ``answers[query]`` (a JSON body), 400
    with Prometheus's error body for the others: the I/O boundary, without Prometheus."""
    answers: dict[str, dict] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            query = urllib.parse.parse_qs(url.query).get("query", [""])[0]
            known = url.path == "/api/v1/query" and query in answers
            body = answers[query] if known else {"status": "error", "error": "parse error"}
            self.send_response(200 if known else 400)
            self.end_headers()
            self.wfile.write(json.dumps(body).encode())

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/", answers
    finally:
        server.shutdown()
        server.server_close()


def vector(*samples: tuple[dict, float]) -> dict:
    return {"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": labels, "value": [1.8e9, str(value)]} for labels, value in samples]}}


def test_prometheus_is_asked_over_its_http_api(fake_prometheus):
    url, answers = fake_prometheus
    queries = prometheus_queries("1m")
    answers[queries["requests"]] = vector(({"model": "iris"}, 12.5))
    answers[queries["p99"]] = vector(({"model": "iris"}, math.nan))
    answers[queries["workers"]] = vector(({}, 2))
    problems: list[str] = []
    fleet = ask_prometheus(url, "1m", 5, problems)
    assert fleet.models["iris"].requests_per_s == 12.5 and fleet.models["iris"].p99_s is None
    assert fleet.workers == 2 and fleet.source == f"Prometheus {url.rstrip('/')}, rates over 1m"
    assert len(problems) == 4 and all("HTTP 400" in p for p in problems)  # the 4 not answered


def test_a_prometheus_that_answers_nothing_is_one_problem(fake_prometheus):
    url, _ = fake_prometheus
    problems: list[str] = []
    assert ask_prometheus(url, "1m", 5, problems) is None
    assert len(problems) == 1 and problems[0].startswith(f"Prometheus at {url.rstrip('/')}")


def test_merging_prefers_the_first_source_per_model_and_never_sums():
    first = FleetMetrics("prometheus", {"iris": ModelMetrics("iris", 10.0)}, 2, 2)
    second = FleetMetrics("scrapes", {"iris": ModelMetrics("iris", 99.0),
                                      "wine": ModelMetrics("wine", 1.0)}, 1, 1, ("x",))
    merged = merge_metrics(first, second)
    assert merged.models == {"iris": ModelMetrics("iris", 10.0), "wine": ModelMetrics("wine", 1.0)}
    assert merged.problems == ("x",) and merged.workers == 2
    assert merge_metrics(None, second) is second and merge_metrics(None, None) is None


# ---- lag and drift ------------------------------------------------------------------------


def test_group_lag_per_partition():
    lag = group_lag("g", "t.requests", {0: (0, 100), 1: (50, 80), 2: (0, 30), 3: (10, 10)},
                    {0: 90, 1: 20, 2: -1})
    by = {p.partition: p for p in lag.partitions}
    assert by[0].lag == 10
    assert by[1].lag == 30  # committed below the records kept: starts at the first kept
    assert by[2].committed is None and by[2].lag == 30  # -1: never committed
    assert by[3].committed is None and by[3].lag == 0
    assert lag.total == 70 and [p.partition for p in lag.partitions] == [0, 1, 2, 3]


def report(feature: str, status: str, psi: float | None, end: float, *, version: str = "1",
           model: str = "iris", event: bool = False) -> dict:
    """A report as the drift agent writes it (agents/worker/drift.py, ``_report_json``)."""
    return {"model": model, "version": version, "feature": feature, "kind": "numeric",
            "window_start": end - 60, "window_end": end, "window_size": 500, "psi": psi,
            "kl_ref_cur": None, "kl_cur_ref": None, "js_distance": None, "missing_rate": 0.0,
            "non_finite": 0, "out_of_range_share": 0.0, "unseen_share": 0.0,
            "verdict": {"feature": feature, "status": status, "psi": psi, "threshold": 0.1,
                        "window_size": 500, "min_window_size": 200},
            "event": {"feature": feature, "status": status} if event else None}


def verdicts(*reports: dict) -> dict:
    return fold_verdicts({}, [FeatureVerdict.from_report(r) for r in reports])


def test_the_latest_window_per_feature_wins():
    latest = verdicts(report("a", "drift", 0.3, 100), report("a", "stable", 0.01, 110),
                      report("b", "stable", 0.02, 110))
    latest = fold_verdicts(latest, [FeatureVerdict.from_report(report("a", "alert", 0.5, 90))])
    assert latest[("iris", "1", "a")].status == "stable"  # a late report of an older window
    assert len(latest) == 2


def test_a_record_that_is_not_a_drift_report_says_so():
    with pytest.raises(StatusError, match="not a drift report"):
        FeatureVerdict.from_report({"model": "iris"})


def test_drift_summaries_count_verdicts_and_rank_the_drifting():
    summaries = summarize_drift(verdicts(
        report("a", "stable", 0.01, 100), report("b", "drift", 0.15, 100),
        report("c", "alert", 0.4, 101, event=True), report("d", "insufficient", None, 100),
        report("a", "stable", 0.01, 100, version="10"), report("a", "stable", 0.0, 100,
                                                                version="2")).values())
    assert [(s.model, s.version) for s in summaries] == [("iris", "1"), ("iris", "2"),
                                                        ("iris", "10")]
    first = summaries[0]
    assert first.counts == (("alert", 1), ("drift", 1), ("stable", 1), ("insufficient", 1))
    assert first.worst == "alert" and first.window_end == 101
    assert [v.feature for v in first.drifting] == ["c", "b"] and first.events == ("c",)


# ---- the fleet ------------------------------------------------------------------------------


SPEC = DeploymentSpec("iris", "1", canary=Canary("2", 0.2), shadows=("3",), fallback="0",
                      revision=4)


def fleet_status(metrics: FleetMetrics | None = None, **kwargs):
    args = {
        "taken_at": 1_800_000_000.0, "broker": "127.0.0.1:9092", "group": "streamserve",
        "specs": {"iris": SPEC}, "defaults": {"breast_cancer": "1", "old": None},
        "metrics": metrics,
        "lag": group_lag("streamserve", "streamserve.requests", {0: (0, 1200), 1: (0, 1100)},
                         {0: 1200, 1: 1088}),
        "verdicts": verdicts(report("petal_width", "alert", 0.31, 1_799_999_990, event=True),
                             report("sepal_width", "stable", 0.02, 1_799_999_990),
                             report("sepal_width", "stable", 0.02, 1_799_999_000, version="9"),
                             report("mean_radius", "insufficient", None, 1_799_999_950,
                                    model="breast_cancer")).values(),
        "problems": ["cannot read http://w2:9100/metrics: Connection refused"],
    }
    return assemble(**{**args, **kwargs})


METRICS = FleetMetrics("2 workers' /metrics, rates over 2.0 s", {
    "iris": ModelMetrics("iris", 48.5, 45.0, 3.5, (("schema_mismatch", 3.0), ("model_error", 0.5)),
                         0.0382, (("1", 0), ("2", 2))),
    NO_MODEL: ModelMetrics(NO_MODEL, 1.0, 0.0, 1.0, (("malformed_json", 1.0),)),
}, workers=2, ready=2)


def test_assemble_names_every_model_and_shows_only_the_deployed_versions_drift():
    status = fleet_status(METRICS)
    assert [m.model for m in status.models] == ["breast_cancer", "iris", "old"]
    iris = status.models[1]
    assert iris.spec == SPEC and iris.metrics == METRICS.models["iris"]
    assert [s.version for s in iris.drift] == ["1"]  # version 9 is no role of the spec
    assert status.models[0].metrics == ModelMetrics("breast_cancer")  # idle, not unknown
    assert [s.version for s in status.models[0].drift] == ["1"]
    assert status.unrouted == METRICS.models[NO_MODEL]
    assert status.lag.total == 12 and status.metrics_wanted


def test_without_metrics_the_models_have_none():
    status = fleet_status()
    assert all(m.metrics is None for m in status.models) and status.unrouted is None
    assert not status.metrics_wanted


def text_of(renderable, width: int = 120) -> str:
    console = Console(record=True, width=width, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


def test_the_view_shows_routes_figures_lag_drift_and_problems():
    text = text_of(render(fleet_status(METRICS), latency_objective_s=0.1))
    print(text)
    assert "2027-01-15 08:00:00 UTC" in text and "group streamserve" in text
    assert "metrics (2 of 2 workers ready): 2 workers' /metrics, rates over 2.0 s" in text
    lines = text.splitlines()
    iris = lines.index(next(line for line in lines if line.startswith("iris ")))
    routes = [line[16:38].strip() for line in lines[iris:iris + 4]]
    assert routes == ["stable 1  rev 4", "canary 2 (20%)", "shadow 3", "fallback 0"]
    for cell in ("48.5", "45.0", "38.2 ms", "3.50", "7.2%", "schema_mismatch 3.00,", "2 open"):
        assert cell in lines[iris], (cell, lines[iris])
    assert "model_error 0.50" in lines[iris + 1]
    assert "no spec: the newest" in text  # breast_cancer: stable 1, the default
    assert "no spec, and nothing" in text  # old
    assert "(no model)" in text and "malformed_json 1.00" in text
    assert "consumer lag of group streamserve on streamserve.requests: 12 in all" in text
    assert next(line.split() for line in lines if line.strip().startswith("1 ")) == \
        ["1", "1,088", "1,100", "12"]
    assert "petal_width 0.31 event" in text and "1 alert, 1 stable" in text and "10 s ago" in text
    assert "1 insufficient" in text
    assert "! cannot read http://w2:9100/metrics: Connection refused" in text


def test_the_view_marks_a_p99_over_the_objective_and_the_servers_own_failures():
    console = Console(record=True, width=120, file=io.StringIO(), force_terminal=True,
                      color_system="standard")
    console.print(render(fleet_status(METRICS), latency_objective_s=0.025))
    styled = console.export_text(styles=True)
    red = "\x1b[31m"
    assert f"{red}38.2 ms" in styled  # over 25 ms
    assert f"{red}model_error 0.50" in styled  # the server failed these requests
    assert f"{red}schema_mismatch" not in styled  # the sender's mistake
    console = Console(record=True, width=120, file=io.StringIO(), force_terminal=True,
                      color_system="standard")
    console.print(render(fleet_status(METRICS), latency_objective_s=0.1))
    assert f"{red}38.2 ms" not in console.export_text(styles=True)


def test_the_view_without_metrics_says_how_to_add_them():
    text = text_of(render(fleet_status()), width=200)
    assert METRICS_HINT in " ".join(text.split())
    assert "req/s" not in text and "canary 2 (20%)" in text


def test_the_view_when_the_metrics_asked_for_could_not_be_read():
    text = text_of(render(fleet_status(None, metrics_wanted=True)))
    assert "metrics: none could be read (see below)" in text and "--metrics" not in text


def test_many_partitions_show_the_most_lagging_and_sum_the_rest():
    lag = group_lag("g", "t", {p: (0, 100 + p) for p in range(20)}, {p: 100 for p in range(20)})
    text = text_of(render(fleet_status(lag=lag)))
    assert "and 8 more partitions, lag 28" in text  # partitions 0-7 lag 0..7
    assert "19 " in text.split("consumer lag")[1]


def test_an_empty_fleet_says_so():
    text = text_of(render(fleet_status(specs={}, defaults={}, verdicts=(), lag=None)))
    assert "no models" in text and "requests topic does not exist yet" in text
    assert "drift: no verdicts yet" in text


# ---- the command line ----------------------------------------------------------------------


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return parser.parse_args(argv)


def test_the_command_line_options():
    args = parse("status", "--metrics", "http://a/metrics", "--metrics", "http://b/metrics",
                 "--prometheus", "http://p:9090", "--interval", "1.5", "--window", "5m")
    assert options_from(args) == StatusOptions(("http://a/metrics", "http://b/metrics"),
                                               "http://p:9090", 1.5, "5m")
    assert args.watch is None
    assert parse("status", "--watch").watch == 2.0 and parse("status", "--watch", "10").watch == 10


@pytest.mark.parametrize("given, path, url", [
    ("127.0.0.1:9100", "/metrics", "http://127.0.0.1:9100/metrics"),
    ("http://w1:9100/", "/metrics", "http://w1:9100/metrics"),
    ("https://w1/x/metrics", "/metrics", "https://w1/x/metrics"),
    ("prometheus:9090", "", "http://prometheus:9090"),
])
def test_endpoints_may_be_given_short(given, path, url):
    assert endpoint(given, path) == url


@pytest.mark.parametrize("argv, message", [
    (("--window", "1 minute"), "PromQL duration"),
    (("--interval", "0"), "interval between scrapes must be positive"),
    (("--watch", "0"), "--watch SECONDS must be positive"),
])
def test_bad_options_fail_before_reading_anything(argv, message, capsys, monkeypatch):
    from agents.cli.main import main

    # An unreachable broker: reading it would take seconds and fail otherwise.
    monkeypatch.setenv("STREAMSERVE_BROKER", "127.0.0.1:1")
    assert main(["status", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("streamserve: error: ") and message in err and len(err.splitlines()) == 1


def test_piped_output_is_wide_enough_for_the_tables(monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    assert console_for(io.StringIO()).width == 120
