"""How a replay diff and a gate verdict look: a terminal table, or one self-contained HTML
file with its charts embedded as PNG (base64), so it can be kept as a CI artifact."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.replay import DiffReport, GateVerdict, Latency

_FEATURES_SHOWN = 8  # per request in the terminal table
_OUTCOME_PAIRS_SHOWN = 8
_MATRIX_MAX = 12  # outcomes per axis of the outcome matrix


def _share(part: int, whole: int) -> str:
    return f"{part / whole:.2%}" if whole else "n/a"


def _number(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _features(features: Mapping[str, Any] | None, limit: int | None = _FEATURES_SHOWN) -> str:
    if not features:
        return "(request not in the recording)"
    items = list(features.items())
    shown = " ".join(f"{k}={_value(v)}" for k, v in items[:limit])
    return shown + (f" (+{len(items) - limit} more)" if limit and len(items) > limit else "")


def _value(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _latency_rows(report: DiffReport) -> list[tuple[str, Latency | None]]:
    return [("baseline", report.baseline_latency), ("candidate", report.candidate_latency)]


def render_text(report: DiffReport) -> str:
    """The diff as a terminal table."""
    r = report
    unanswered = ""
    if r.baseline_unanswered is not None or r.candidate_unanswered is not None:
        unanswered = (f"; unanswered: {r.baseline_unanswered if r.baseline_unanswered is not None else '?'}"
                      f" baseline, {r.candidate_unanswered if r.candidate_unanswered is not None else '?'}"
                      " candidate")
    lines = [
        f"{'baseline':<20}{r.baseline} ({r.baseline_replies} replies)",
        f"{'candidate':<20}{r.candidate} ({r.candidate_replies} replies)",
        (f"{'compared':<20}{r.compared} requests answered in both (only in baseline "
         f"{r.only_baseline}, only in candidate {r.only_candidate}{unanswered})"),
        (f"{'agreement':<20}{_share(r.agreeing, r.compared)}  ({r.agreeing} same outcome, "
         f"{r.compared - r.agreeing} otherwise)"),
        (f"{'same label':<20}{_share(r.same_label, r.both_predicted)} of {r.both_predicted} "
         "predicted in both"),
        f"{'score |diff|':<20}max {_number(r.score_max)}  p99 {_number(r.score_p99)}",
        f"{'latency ms':<20}{'count':>7}{'p50':>9}{'p95':>9}{'p99':>9}",
    ]
    for name, latency in _latency_rows(r):
        if latency is None:
            lines.append(f"  {name:<18}{0:>7}{'n/a':>9}{'n/a':>9}{'n/a':>9}")
        else:
            lines.append(f"  {name:<18}{latency.count:>7}{latency.p50:>9.1f}{latency.p95:>9.1f}"
                         f"{latency.p99:>9.1f}")
    if r.dead_letters:
        width = max(18, *(len(d.reason) + 2 for d in r.dead_letters))
        lines.append(f"{'dead letters':<{width + 2}}{'baseline':>9}{'candidate':>10}{'change':>8}")
        lines += [f"  {d.reason:<{width}}{d.baseline:>9}{d.candidate:>10}"
                  f"{d.candidate - d.baseline:>+8}" for d in r.dead_letters]
    else:
        lines.append(f"{'dead letters':<20}none")
    changed = [(b, c, n) for b, c, n in r.outcome_pairs if b != c]
    if changed:
        lines.append("outcome changes     baseline -> candidate")
        lines += [f"  {b} -> {c}: {n}" for b, c, n in changed[:_OUTCOME_PAIRS_SHOWN]]
        if len(changed) > _OUTCOME_PAIRS_SHOWN:
            lines.append(f"  ... {len(changed) - _OUTCOME_PAIRS_SHOWN} more kinds")
    if r.differences:
        rows = [(d.key, d.baseline, d.candidate, _number(d.max_abs_difference, 3),
                 _features(d.features)) for d in r.differences]
        widths = [max(len(h), *(len(row[i]) for row in rows))
                  for i, h in enumerate(("REQUEST", "BASELINE", "CANDIDATE", "|DIFF|"))]
        lines.append("most different requests")
        header = ("REQUEST", "BASELINE", "CANDIDATE", "|DIFF|")
        lines.append("  " + "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
                     + "  FEATURES")
        lines += ["  " + "  ".join(v.ljust(w) for v, w in zip(row[:4], widths, strict=True))
                  + "  " + row[4] for row in rows]
    return "\n".join(lines)


def render_verdict(verdict: GateVerdict) -> str:
    lines = [f"{'gate':<20}{'PASS' if verdict.passed else 'FAIL'}"]
    lines += [f"  {'ok' if c.passed else 'FAIL':<6}{c.name:<16}{c.detail}" for c in verdict.checks]
    return "\n".join(lines)


# --------------------------------------------------------------------------------- HTML


def write_html(report: DiffReport, path: Path, verdict: GateVerdict | None = None,
               title: str = "streamserve replay diff") -> None:
    """One HTML file, charts included: nothing to fetch when it is opened."""
    r = report
    parts = [f"<h1>{html.escape(title)}</h1>"]
    if verdict is not None:
        colour = "#1a7f37" if verdict.passed else "#cf222e"
        parts.append(f'<p class="verdict" style="background:{colour}">gate '
                     f"{'PASS' if verdict.passed else 'FAIL'}</p>")
        parts.append(_table(("check", "result", "detail"),
                            [(c.name, "ok" if c.passed else "FAIL", c.detail) for c in verdict.checks]))
    parts.append(_table(("", ""), [
        ("baseline", f"{r.baseline} ({r.baseline_replies} replies)"),
        ("candidate", f"{r.candidate} ({r.candidate_replies} replies)"),
        ("compared", (f"{r.compared} answered in both; only in baseline {r.only_baseline}, only "
                      f"in candidate {r.only_candidate}; unanswered {r.baseline_unanswered} / "
                      f"{r.candidate_unanswered}")),
        ("agreement", (f"{_share(r.agreeing, r.compared)} ({r.agreeing} same outcome, "
                       f"{r.compared - r.agreeing} otherwise)")),
        ("same label", (f"{_share(r.same_label, r.both_predicted)} of {r.both_predicted} "
                        "predicted in both")),
        ("score |diff|", f"max {_number(r.score_max)}, p99 {_number(r.score_p99)}"),
    ]))
    parts.append("<h2>Latency (parameters.latency_ms)</h2>")
    parts.append(_table(("run", "count", "p50", "p95", "p99"), [
        (name, "0", "n/a", "n/a", "n/a") if lat is None else
        (name, str(lat.count), f"{lat.p50:.1f}", f"{lat.p95:.1f}", f"{lat.p99:.1f}")
        for name, lat in _latency_rows(r)]))
    charts = _charts(r)
    for caption, png in charts:
        parts.append(f"<figure><img alt=\"{html.escape(caption)}\" "
                     f"src=\"data:image/png;base64,{base64.b64encode(png).decode()}\">"
                     f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    parts.append("<h2>Dead letters by reason</h2>")
    parts.append(_table(("reason", "baseline", "candidate", "change"),
                        [(d.reason, str(d.baseline), str(d.candidate), f"{d.candidate - d.baseline:+d}")
                         for d in r.dead_letters]) if r.dead_letters else "<p>none</p>")
    parts.append("<h2>Outcomes (baseline → candidate)</h2>")
    parts.append(_table(("baseline", "candidate", "requests"),
                        [(b, c, str(n)) for b, c, n in r.outcome_pairs]))
    parts.append("<h2>Most different requests</h2>")
    parts.append(_table(("request", "baseline", "candidate", "|diff|", "features"),
                        [(d.key, d.baseline, d.candidate, _number(d.max_abs_difference, 3),
                          _features(d.features, None)) for d in r.differences])
                 if r.differences else "<p>none: every request was answered alike</p>")
    page = (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}"
            f"</title><style>{_STYLE}</style></head><body>{''.join(parts)}</body></html>")
    path.write_text(page, encoding="utf-8")


_STYLE = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:70em}"
          "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .6em;"
          "text-align:left;vertical-align:top}th{background:#f3f3f3}"
          ".verdict{color:#fff;display:inline-block;padding:.3em 1em;font-weight:bold}"
          "figure{display:inline-block;margin:1em}img{max-width:32em}")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in row) + "</tr>"
                   for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _charts(r: DiffReport) -> list[tuple[str, bytes]]:
    # The Figure is drawn on an Agg canvas, without pyplot: no display, no global state.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    def png(figure: Figure) -> bytes:
        buffer = io.BytesIO()
        FigureCanvasAgg(figure).print_png(buffer)
        return buffer.getvalue()

    charts = []
    if r.baseline_latencies or r.candidate_latencies:
        figure = Figure(figsize=(5, 3.2), layout="constrained")
        ax = figure.subplots()
        for name, values, colour in (("baseline", r.baseline_latencies, "tab:blue"),
                                     ("candidate", r.candidate_latencies, "tab:orange")):
            if values:
                xs = np.sort(np.asarray(values))
                ax.step(xs, np.arange(1, len(xs) + 1) / len(xs), where="post", label=name,
                        color=colour)
        ax.set_xlabel("latency (ms)")
        ax.set_ylabel("share of requests")
        ax.set_xscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
        charts.append(("latency, cumulative", png(figure)))
    if r.score_differences:
        figure = Figure(figsize=(5, 3.2), layout="constrained")
        ax = figure.subplots()
        ax.hist(r.score_differences, bins=30, color="tab:purple")
        ax.set_xlabel("largest |score difference| per request")
        ax.set_ylabel("requests")
        ax.set_yscale("log")
        charts.append(("score differences", png(figure)))
    if r.outcome_pairs:
        counts: dict[str, int] = {}
        for b, c, n in r.outcome_pairs:
            counts[b] = counts.get(b, 0) + n
            counts[c] = counts.get(c, 0) + n
        outcomes = sorted(counts, key=lambda o: -counts[o])[:_MATRIX_MAX]
        matrix = np.zeros((len(outcomes), len(outcomes)))
        for b, c, n in r.outcome_pairs:
            if b in outcomes and c in outcomes:
                matrix[outcomes.index(b), outcomes.index(c)] += n
        size = 2.5 + 0.45 * len(outcomes)
        figure = Figure(figsize=(size + 1, size), layout="constrained")
        ax = figure.subplots()
        image = ax.imshow(np.log1p(matrix), cmap="Blues")
        ax.set_xticks(range(len(outcomes)), outcomes, rotation=45, ha="right")
        ax.set_yticks(range(len(outcomes)), outcomes)
        ax.set_xlabel("candidate")
        ax.set_ylabel("baseline")
        for (i, j), n in np.ndenumerate(matrix):
            if n:
                ax.text(j, i, f"{int(n)}", ha="center", va="center",
                        color="white" if n > matrix.max() / 2 else "black", fontsize=8)
        figure.colorbar(image, ax=ax, label="log(1 + requests)")
        charts.append(("outcomes: baseline (rows) against candidate (columns)", png(figure)))
    return charts
