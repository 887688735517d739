"""The dashboards and the Prometheus rules ask only for series a worker exposes.

Every metric name in the dashboards' PromQL (panel targets, annotations, template
variables) and in the rules' expressions (ops/prometheus/*.yml) must be a series of a real
worker's ``/metrics``: the metric families declared on ``agents.worker.metrics.Metrics().registry``
and the sample names their types expose (a counter ``x`` as ``x_total``, a histogram as
``x_bucket``/``x_count``/``x_sum``); recording rules the rules files define; or a series
Prometheus adds itself (``up``). A label matcher must name a label the metric has, or a
target label. Families are read from the registry, not from an exposition: a labelled
metric has no sample until its first child, so a fresh worker's text lacks most names.

Expressions are parsed with a real PromQL parser (promql-parser), so a syntax error in a
dashboard fails here too, not on a screen during an incident.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import promql_parser
import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from agents.worker.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "ops" / "grafana" / "dashboards").glob("*.json"))
RULE_FILES = sorted((ROOT / "ops" / "prometheus").glob("*.yml"))

# Series Prometheus writes itself, with no exporter behind them.
PROMETHEUS_SERIES = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped",
                               "scrape_samples_post_metric_relabeling", "scrape_series_added",
                               "ALERTS", "ALERTS_FOR_STATE"})
# Labels every scraped series carries (scrape targets), whatever its metric declares.
TARGET_LABELS = frozenset({"job", "instance", "__name__"})
# The sample names each family type exposes, with the labels the client adds to them.
SUFFIXES = {"counter": {"_total": (), "_created": ()},
            "gauge": {"": ()},
            "histogram": {"_bucket": ("le",), "_count": (), "_sum": (), "_created": ()},
            "summary": {"": ("quantile",), "_count": (), "_sum": (), "_created": ()},
            "info": {"_info": ()},
            "stateset": {"": ()},
            "gaugehistogram": {"_bucket": ("le",), "_gcount": (), "_gsum": ()},
            "unknown": {"": ()}}
# Grafana's interval variables stand for a duration, every other variable for a value.
GRAFANA_INTERVAL = re.compile(r"\$(?:\{)?__(?:rate_interval|interval|range)(?:_ms|_s)?(?:\})?")
GRAFANA_VARIABLE = re.compile(r"\$\{[^}]+\}|\$\w+|\[\[\w+(?::\w+)?\]\]")


@dataclass(frozen=True)
class Expression:
    where: str  # file and position, for the failure message
    promql: str


@dataclass(frozen=True)
class Selector:
    name: str
    labels: frozenset[str]


def exposed_series() -> dict[str, frozenset[str]]:
    """Sample name -> label names, for every series a worker's /metrics can hold."""
    metrics = Metrics()
    declared = {m._name: m for m in vars(metrics).values() if isinstance(m, MetricWrapperBase)}
    series: dict[str, frozenset[str]] = {}
    for family in metrics.registry.collect():
        wrapper = declared.get(family.name)
        labels = frozenset(wrapper._labelnames) if wrapper is not None else frozenset()
        for suffix, extra in SUFFIXES[family.type].items():
            series[family.name + suffix] = labels | set(extra)
        for sample in family.samples:  # collectors other than Metrics' own wrappers
            series.setdefault(sample.name, frozenset())
            series[sample.name] |= frozenset(sample.labels)
    return series


def load_rules() -> dict[Path, list[dict]]:
    """Each rules file (a YAML file with `groups`) and its rules."""
    files = {}
    for path in RULE_FILES:
        document = yaml.safe_load(path.read_text())
        if isinstance(document, dict) and "groups" in document:
            files[path] = [rule for group in document["groups"] for rule in group.get("rules", [])]
    return files


def recorded_names() -> frozenset[str]:
    return frozenset(rule["record"] for rules in load_rules().values() for rule in rules
                     if "record" in rule)


def rule_expressions() -> Iterator[Expression]:
    for path, rules in load_rules().items():
        for rule in rules:
            name = rule.get("record") or rule.get("alert")
            yield Expression(f"{path.relative_to(ROOT)}: {name}", str(rule["expr"]))


def panels(dashboard: dict) -> Iterator[dict]:
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])  # a collapsed row holds its panels


def dashboard_expressions(path: Path) -> Iterator[Expression]:
    dashboard = json.loads(path.read_text())
    name = path.relative_to(ROOT)
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            yield Expression(f"{name}: panel {panel.get('title')!r} target {target.get('refId')}",
                             target.get("expr", ""))
    for annotation in dashboard.get("annotations", {}).get("list", []):
        if annotation.get("expr"):
            yield Expression(f"{name}: annotation {annotation['name']!r}", annotation["expr"])
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable["query"]
        query = query.get("query", "") if isinstance(query, dict) else query
        selector = re.fullmatch(r"\s*(?:label_values|query_result)\((.*?)(?:,\s*\w+)?\)\s*", query)
        if selector and selector.group(1).strip():
            yield Expression(f"{name}: variable {variable['name']!r}", selector.group(1))


def all_expressions() -> list[Expression]:
    return [e for path in DASHBOARDS for e in dashboard_expressions(path)] + list(rule_expressions())


def parse(expression: Expression) -> promql_parser.Expr:
    text = GRAFANA_VARIABLE.sub("x", GRAFANA_INTERVAL.sub("5m", expression.promql))
    try:
        return promql_parser.parse(text)
    except ValueError as e:
        pytest.fail(f"{expression.where}: not valid PromQL ({e}): {expression.promql}")


def selectors(expression: Expression) -> list[Selector]:
    found: list[Selector] = []

    def visit(node: object) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            matchers = node.matchers.matchers
            names = [m.value for m in matchers if m.name == "__name__" and m.op == promql_parser.MatchOp.Equal]
            name = node.name or (names[0] if names else None)
            if name is not None:
                found.append(Selector(name, frozenset(m.name for m in matchers)))

    promql_parser.walk(parse(expression), visit)
    return found


def test_there_are_dashboards_and_rules_to_check():
    assert {p.name for p in DASHBOARDS} >= {"executive.json", "oncall.json", "debug.json"}
    assert load_rules(), "no rules file (a YAML file with groups) in ops/prometheus"


def test_the_series_table_knows_how_each_type_is_exposed():
    series = exposed_series()
    assert "streamserve_requests_total" in series
    assert "streamserve_requests" not in series  # a counter's samples end in _total
    assert series["streamserve_e2e_latency_seconds_bucket"] == {"model", "le"}
    assert series["streamserve_e2e_latency_seconds_count"] == {"model"}
    assert series["streamserve_consumer_lag"] == {"partition"}
    assert "streamserve_e2e_latency_seconds" not in series  # a histogram has no bare sample


@pytest.mark.parametrize("expression", all_expressions(), ids=lambda e: e.where)
def test_every_metric_an_expression_names_is_exposed_by_a_worker(expression: Expression):
    series = exposed_series()
    known_elsewhere = recorded_names() | PROMETHEUS_SERIES
    problems = []
    for selector in selectors(expression):
        if selector.name in known_elsewhere:
            continue
        if selector.name not in series:
            problems.append(f"{selector.name} is not a series of a worker's /metrics "
                            "(agents/worker/metrics.py) nor a recording rule of ops/prometheus")
        elif unknown := selector.labels - series[selector.name] - TARGET_LABELS:
            problems.append(f"{selector.name} has no label {sorted(unknown)} (it has "
                            f"{sorted(series[selector.name])}): the matcher never matches")
    assert not problems, (f"{expression.where}:\n  " + "\n  ".join(problems) + "\nRename the "
                          "series to one the worker exposes, or add it to agents.worker.metrics.Metrics.")


def test_every_panel_has_a_title_and_every_target_an_expression():
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        ids = [panel["id"] for panel in panels(dashboard)]
        assert len(ids) == len(set(ids)), f"{path.name}: panel ids repeat"
        for panel in panels(dashboard):
            assert panel.get("title", "").strip(), f"{path.name}: panel {panel['id']} has no title"
            if panel["type"] == "row":
                continue
            assert panel.get("targets"), f"{path.name}: panel {panel['title']!r} has no target"
            assert panel.get("datasource", {}).get("uid") == "${datasource}", (
                f"{path.name}: panel {panel['title']!r} must use the ${{datasource}} variable")
            for target in panel["targets"]:
                assert target.get("expr", "").strip(), (
                    f"{path.name}: panel {panel['title']!r} target {target.get('refId')} has no expr")
                assert target.get("datasource", {}).get("uid") == "${datasource}"


def test_every_dashboard_has_the_datasource_and_model_variables():
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        assert variables["model"]["type"] == "query"
        assert dashboard["uid"].startswith("streamserve-"), path.name
        assert "streamserve" in dashboard["tags"]


def test_burn_rate_panels_divide_by_the_objectives_the_alerts_use():
    """A burn rate is the error ratio over the error budget, 1 - objective: the on-call
    dashboard and the alerts must use the same objective, or the panel says 14 while the
    page fires at 1.4 (the rules are generated from STREAMSERVE_SLO_*; dashboards are not)."""
    in_alerts: dict[str, set[str]] = {}
    for expression in rule_expressions():
        for record, objective in re.findall(r"([\w:]+:ratio_rate)\w+ > [\d.]+ \* \(1 - ([\d.]+)\)",
                                            expression.promql):
            in_alerts.setdefault(record, set()).add(objective)
    in_panels = [(e, record, objective) for path in DASHBOARDS for e in dashboard_expressions(path)
                 for record, objective in re.findall(r"([\w:]+:ratio_rate)\w+(?:\{[^}]*\})? / \(1 - ([\d.]+)\)",
                                                     e.promql)]
    assert in_panels, "no burn-rate panel found (ratio_rateW{...} / (1 - objective))"
    for expression, record, objective in in_panels:
        assert record in in_alerts, f"{expression.where}: no alert compares {record}* with a budget"
        assert objective in in_alerts[record], (
            f"{expression.where}: divides {record}* by 1 - {objective}, the alerts by "
            f"1 - {' or '.join(sorted(in_alerts[record]))}: change the dashboard to the rules' objective")
