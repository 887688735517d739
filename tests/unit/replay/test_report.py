"""How a diff and a verdict look (``agents.ops.replay_report``): the terminal table and the
self-contained HTML file."""

from __future__ import annotations

import re

from agents.ops.replay_report import render_text, write_html
from pipeline.replay import GateLimits, gate
from tests.unit.replay.samples import gate_report


def test_the_text_report_shows_the_figures():
    text = render_text(gate_report(4, 12.5))
    assert re.search(r"agreement\s+96\.00%", text)
    assert "r-0" in text and "a" in text and "most different requests" in text
    assert re.search(r"candidate\s+100\s+12\.5\s+12\.5\s+12\.5", text)


def test_the_html_report_is_self_contained(tmp_path):
    report = gate_report(4, 12.5)
    path = tmp_path / "report.html"
    write_html(report, path, gate(report, GateLimits(0.01, 100)))
    page = path.read_text()
    assert page.count("data:image/png;base64,") == 3
    assert "gate FAIL" in page and "96.00%" in page
    assert not re.search(r'(src|href)="(?!data:)', page)
