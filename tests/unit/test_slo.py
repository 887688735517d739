"""The SLO objectives and the rules built from them (pipeline/slo.py), the YAML writer, and
`streamserve ops rules` (agents/cli/ops.py). promtool runs the rules in tests/ops."""

import argparse
from pathlib import Path

import pytest

from agents.cli.ops import RULES_FILE, register, rules_text
from pipeline import slo
from pipeline.config import LATENCY_BUCKETS_S, ConfigError, Settings
from pipeline.rejections import Reason

REPO = Path(__file__).resolve().parents[2]


def test_server_reasons_are_the_ones_rejections_calls_server_side():
    assert set(slo.SERVER_REASONS) == {"deadline_exceeded", "model_error", "circuit_open",
                                   "undeliverable"}
    assert all(not Reason(r).is_client_error for r in slo.SERVER_REASONS)


def test_the_checked_in_rules_file_is_what_the_command_writes_with_the_default_settings():
    expected = rules_text(Settings())
    assert (REPO / RULES_FILE).read_text() == expected, (
        f"{RULES_FILE} is stale: regenerate it with `streamserve ops rules --out {RULES_FILE}`")


def _run_ops(argv: list[str], settings: Settings) -> int:
    parser = argparse.ArgumentParser(prog="streamserve")
    register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.run(settings, args)


def test_ops_rules_writes_the_file_or_stdout(tmp_path, capsys):
    out = tmp_path / "rules.yml"
    assert _run_ops(["ops", "rules", "--out", str(out)], Settings()) == 0
    assert out.read_text() == rules_text(Settings())
    assert _run_ops(["ops", "rules", "--job", "serving", "--runbook-base",
                     "https://example.com/rb/"], Settings()) == 0
    text = capsys.readouterr().out
    assert 'up{job="serving"}' in text
    assert "runbook_url: 'https://example.com/rb/worker-down.md'" in text


def test_a_latency_objective_that_is_no_bucket_stops_the_start():
    with pytest.raises(ConfigError, match="STREAMSERVE_SLO_LATENCY_MS must be a bound") as e:
        Settings.from_env({"STREAMSERVE_SLO_LATENCY_MS": "120"})
    assert "100, 250" in str(e.value)


def test_objectives_come_from_the_settings():
    assert Settings().slo.objectives == slo.Objectives(0.999, 100.0, 0.99)
    got = Settings.from_env({"STREAMSERVE_SLO_AVAILABILITY": "0.995", "STREAMSERVE_SLO_LATENCY_MS": "250",
                             "STREAMSERVE_SLO_LATENCY_TARGET": "0.95"}).slo.objectives
    assert got == slo.Objectives(0.995, 250, 0.95)
    with pytest.raises(ConfigError, match="STREAMSERVE_SLO_"):
        Settings.from_env({"STREAMSERVE_SLO_AVAILABILITY": "0.9"})


@pytest.mark.parametrize("changes, message", [
    ({"availability": 1.0}, "availability=1.0 must lie in"),
    ({"availability": 0.9}, "could never fire"),
    ({"latency_target": 0}, "latency_target=0 must lie in"),
    ({"latency_ms": 0}, "positive number of milliseconds"),
    ({"latency_ms": float("inf")}, "positive number of milliseconds"),
])
def test_objectives_that_cannot_work_are_refused_with_the_fix(changes, message):
    with pytest.raises(slo.SloError, match=message):
        slo.Objectives(**changes)


@pytest.mark.parametrize("ms, le", [(100, "0.1"), (2.5, "0.0025"), (1000, "1.0"), (10000, "10.0")])
def test_the_latency_bucket_label_is_written_as_prometheus_client_writes_it(ms, le):
    assert slo.Objectives(latency_ms=ms).latency_bucket(LATENCY_BUCKETS_S) == le


def test_the_rules_follow_the_objectives():
    document = slo.rules_document(slo.Objectives(0.995, 250, 0.95), LATENCY_BUCKETS_S)
    rules = {r.get("alert") or r["record"]: r for g in document["groups"] for r in g["rules"]}
    assert 'le="0.25"' in rules["model:streamserve_latency_slow:ratio_rate5m"]["expr"]
    page = rules["StreamserveAvailabilityBudgetBurn"]["expr"]
    assert "ratio_rate1h > 14.4 * (1 - 0.995)" in page and "ratio_rate5m > 14.4 * (1 - 0.995)" in page
    assert "ratio_rate6h > 6 * (1 - 0.995)" in page and "ratio_rate30m > 6 * (1 - 0.995)" in page
    ticket = rules["StreamserveLatencyBudgetBurnSlow"]["expr"]
    assert "ratio_rate3d > 1 * (1 - 0.95)" in ticket and "ratio_rate6h > 1 * (1 - 0.95)" in ticket
    description = rules["StreamserveLatencyBudgetBurnSlow"]["annotations"]["description"]
    assert "objective 95% within it" in description
    # every window a burn rate reads is recorded
    for burn in slo.PAGE_BURNS + slo.TICKET_BURNS:
        for window in (burn.long, burn.short):
            assert f"{slo.AVAILABILITY_RECORD}{window}" in rules
            assert f"{slo.LATENCY_RECORD}{window}" in rules


def test_every_alert_is_labelled_annotated_and_has_its_runbook_listed_in_the_index():
    alerts = slo.alerts(slo.Objectives())
    names = [a.name for a in alerts]
    assert len(names) == len(set(names))
    index = (REPO / "runbooks" / "README.md").read_text().splitlines()
    for alert in alerts:
        rule = alert.rule("runbooks/")
        assert rule["labels"]["severity"] in ("page", "ticket")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert (REPO / rule["annotations"]["runbook_url"]).is_file(), alert.name
        row = next((line for line in index if line.startswith(f"| [{alert.runbook}]")), "")
        assert f"`{alert.name}`" in row, (
            f"runbooks/README.md lists no {alert.name} in the row of {alert.runbook}")


def test_yaml_quotes_whatever_could_be_misread():
    text = slo.to_yaml({"groups": [{"name": "g", "rules": [
        {"alert": "A", "for": "5m", "expr": 'x{a="b"} > 0', "labels": {"severity": "page"},
         "annotations": {"d": "it's {{ $value }}", "t": "tab\there"}},
        {"record": "r", "expr": "yes"}]}], "empty": [], "none": {}, "n": 3, "on": True},
        header="generated\n\nby a test")
    assert text == (
        "# generated\n#\n# by a test\n"
        "groups:\n"
        "  - name: g\n"
        "    rules:\n"
        "      - alert: A\n"
        "        for: '5m'\n"
        "        expr: 'x{a=\"b\"} > 0'\n"
        "        labels:\n"
        "          severity: page\n"
        "        annotations:\n"
        "          d: 'it''s {{ $value }}'\n"
        '          t: "tab\\there"\n'
        "      - record: r\n"
        "        expr: 'yes'\n"
        "empty: []\n"
        "none: {}\n"
        "'n': 3\n"
        "'on': true\n")


def test_yaml_refuses_what_it_cannot_write():
    with pytest.raises(TypeError, match="cannot write set"):
        slo.to_yaml({"a": {1, 2}})
    with pytest.raises(ValueError, match="finite"):
        slo.to_yaml({"a": float("nan")})


def test_the_yaml_reads_back_as_the_document():
    yaml = pytest.importorskip("yaml", reason="PyYAML (a test dependency) reads the YAML back")
    document = slo.rules_document(slo.Objectives(), LATENCY_BUCKETS_S)
    assert yaml.safe_load(slo.to_yaml(document, header="a comment")) == document
    tricky = {"s": ["it's", "tab\there", "é", "3d", "1e3", "no", "a: b", "- x", "#x", "", " x "]}
    assert yaml.safe_load(slo.to_yaml(tricky)) == tricky
