"""The Prometheus rules (ops/prometheus/streamserve-rules.yml) under promtool: the file is
valid, its unit tests (ops/prometheus/tests/*.yml: series in, alerts out) pass, and every
alert has at least one case where it fires and one where it stays quiet."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from pipeline import slo

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "ops" / "prometheus" / "streamserve-rules.yml"
TESTS = sorted((REPO / "ops" / "prometheus" / "tests").glob("*.yml"))
PROMTOOL = shutil.which("promtool")

needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed: scripts/setup.sh installs it (Debian "
                             "package prometheus), or put Prometheus' promtool on PATH")


def promtool(*args: str) -> subprocess.CompletedProcess:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], check=False, capture_output=True, text=True,
                          timeout=240)


@needs_promtool
def test_the_rules_file_is_valid():
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
@pytest.mark.parametrize("test_file", TESTS, ids=lambda p: p.name)
def test_promtool_unit_tests_pass(test_file: Path):
    result = promtool("test", "rules", str(test_file))
    assert result.returncode == 0, result.stdout + result.stderr


def alert_cases() -> tuple[Counter[str], Counter[str]]:
    """(firing, quiet) case counts per alert in the promtool tests: each ``alertname: X``
    followed by ``exp_alerts: []`` is a quiet case, by a list of alerts a firing one."""
    firing: Counter[str] = Counter()
    quiet: Counter[str] = Counter()
    for path in TESTS:
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            match = re.fullmatch(r"\s*alertname: (\w+)\s*", line)
            if match:
                expected = lines[i + 1].strip()
                assert expected.startswith("exp_alerts:"), f"{path.name}:{i + 2}: {expected}"
                (quiet if expected.split("#")[0].strip() == "exp_alerts: []" else firing)[
                    match.group(1)] += 1
    return firing, quiet


def test_every_alert_has_a_firing_and_a_quiet_case():
    firing, quiet = alert_cases()
    names = {a.name for a in slo.alerts(slo.Objectives())}
    assert set(firing) | set(quiet) <= names, "tests name alerts that do not exist"
    assert not [n for n in names if firing[n] < 1], "alerts never tested firing"
    assert not [n for n in names if quiet[n] < 1], "alerts never tested quiet"
