"""``streamserve status``, drawn with rich: a header, what could not be read, the models
(routes and figures), the consumer lag per partition and the drift verdicts.

``render(status)`` returns one renderable, printed once or refreshed by ``rich.live.Live``;
nothing here reads anything.
"""

from __future__ import annotations

import datetime
import math

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from pipeline.rejections import Reason
from pipeline.status import (
    BREAKER_STATES,
    DriftSummary,
    FleetStatus,
    GroupLag,
    ModelMetrics,
    ModelStatus,
)

MAX_PARTITIONS = 12  # rows of the lag table; the others are summed in its caption
TOP_REASONS = 3
_DRIFT_STYLE = {"insufficient": "dim", "stable": "green", "drift": "yellow", "alert": "bold red"}
_BREAKER_STYLE = {1: "yellow", 2: "bold red"}
METRICS_HINT = ("for throughput, p99 latency, dead letters and breakers add --metrics "
                "http://WORKER:PORT/metrics (each worker's --metrics-port; repeatable) or "
                "--prometheus http://PROMETHEUS:9090")


def render(status: FleetStatus, *, latency_objective_s: float | None = None) -> RenderableType:
    """The whole view. A p99 above ``latency_objective_s`` (the SLO) is shown in red."""
    parts: list[RenderableType] = [_header(status)]
    if status.problems:  # first: a watch cut to the terminal's height still shows them
        parts.append(Text("\n".join(f"! {p}" for p in status.problems), style="yellow"))
    parts.append(_models(status, latency_objective_s))
    parts.append(_lag(status.lag) if status.lag is not None else
                 Text("\nconsumer lag: the requests topic does not exist yet", style="dim"))
    parts.append(_drift(status))
    return Group(*parts)


def _header(status: FleetStatus) -> Text:
    when = datetime.datetime.fromtimestamp(status.taken_at, datetime.UTC)
    text = Text.assemble(("streamserve status", "bold"),
                         f"  {when:%Y-%m-%d %H:%M:%S} UTC  ·  Kafka {status.broker}  ·  "
                         f"group {status.group}\n")
    m = status.metrics
    if m is not None:
        ready = "" if m.workers is None or m.ready is None else \
            f" ({m.ready} of {m.workers} workers ready)"
        text.append(f"metrics{ready}: {m.source}", style="dim")
    elif status.metrics_wanted:
        text.append("metrics: none could be read (see below)", style="yellow")
    else:
        text.append(f"routes, lag and drift from Kafka only; {METRICS_HINT}", style="dim")
    return text


def _models(status: FleetStatus, objective: float | None) -> Table:
    with_metrics = status.metrics is not None
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, expand=False)
    table.add_column("model", style="bold", no_wrap=True)
    table.add_column("routes", no_wrap=True)
    if with_metrics:
        for name in ("req/s", "pred/s", "p99", "dead/s", "dead %"):
            table.add_column(name, justify="right", no_wrap=True)
        table.add_column("dead letters by reason /s", overflow="fold", ratio=1)
        table.add_column("breakers", no_wrap=True)
    for model in status.models:
        cells: list[RenderableType] = [model.model, _routes(model)]
        if with_metrics:
            cells += _figures(model.metrics, objective)
        table.add_row(*cells)
    if status.unrouted is not None and with_metrics:
        table.add_row(Text("(no model)", style="dim"),
                      Text("requests naming no\nserved model", style="dim"),
                      *_figures(status.unrouted, objective, breakers=False))
    if not status.models and status.unrouted is None:
        table.add_row(Text("no models: no spec on the control topic, nothing registered here "
                           "and no traffic", style="dim"), *[""] * (len(table.columns) - 1))
    return table


def _routes(model: ModelStatus) -> Text:
    spec = model.spec
    if spec is None:
        if model.default_version is not None:
            return Text.assemble(f"stable {model.default_version}\n",
                                 ("no spec: the newest\nthat verifies", "dim"))
        return Text("no spec, and nothing\nin the registry here\nverifies", style="dim")
    text = Text(f"stable {spec.stable}")
    text.append(f"  rev {spec.revision}", style="dim")
    if spec.canary is not None:
        text.append(f"\ncanary {spec.canary.version} ({spec.canary.weight:.0%})", style="cyan")
    if spec.shadows:
        text.append(f"\nshadow {','.join(spec.shadows)}", style="dim")
    if spec.fallback is not None:
        text.append(f"\nfallback {spec.fallback}")
    return text


def _figures(m: ModelMetrics | None, objective: float | None,
             breakers: bool = True) -> list[RenderableType]:
    if m is None:
        return ["-"] * 7
    share = m.deadletter_share
    p99 = Text("-", style="dim") if m.p99_s is None else Text(
        _seconds(m.p99_s), style="red" if objective is not None and m.p99_s > objective else "")
    reasons = Text()
    for i, (reason, rate) in enumerate(m.reasons[:TOP_REASONS]):
        if i:
            reasons.append(", ")
        reasons.append(f"{reason} {_rate(rate)}", style="" if _client_error(reason) else "red")
    if len(m.reasons) > TOP_REASONS:
        reasons.append(f" +{len(m.reasons) - TOP_REASONS}", style="dim")
    return [_rate(m.requests_per_s), _rate(m.predictions_per_s), p99,
            Text(_rate(m.deadletters_per_s), style="yellow" if m.deadletters_per_s else ""),
            "-" if share is None else f"{share:.1%}", reasons if m.reasons else Text("-", "dim"),
            _breakers(m) if breakers else ""]


def _breakers(m: ModelMetrics) -> Text:
    unhealthy = m.unhealthy_breakers
    if not m.breakers:
        return Text("-", style="dim")  # no version of it served since the workers started
    if not unhealthy:
        return Text("closed", style="green")
    text = Text()
    for i, (version, state) in enumerate(unhealthy):
        if i:
            text.append(", ")
        text.append(f"{version} {BREAKER_STATES.get(state, state)}",
                    style=_BREAKER_STYLE.get(state, ""))
    return text


def _lag(lag: GroupLag) -> RenderableType:
    shown = sorted(sorted(lag.partitions, key=lambda p: -p.lag)[:MAX_PARTITIONS],
                   key=lambda p: p.partition)
    rest = len(lag.partitions) - len(shown)
    rest_lag = lag.total - sum(p.lag for p in shown)
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False,
                  caption=f"and {rest} more partitions, lag {rest_lag:,}" if rest else None,
                  caption_justify="left")
    for name in ("partition", "committed", "end", "lag"):
        table.add_column(name, justify="right")
    for p in shown:
        table.add_row(str(p.partition), Text("none", style="dim") if p.committed is None
                      else f"{p.committed:,}", f"{p.end:,}",
                      Text(f"{p.lag:,}", style="yellow" if p.lag else "green"))
    if not shown:
        table.add_row("-", "-", "-", "-")
    title = Text.assemble(("\nconsumer lag", "bold"),
                          f" of group {lag.group} on {lag.topic}: {lag.total:,} in all")
    return Group(title, table)


def _drift(status: FleetStatus) -> RenderableType:
    summaries = [(m, s) for m in status.models for s in m.drift]
    if not summaries:
        return Text("\ndrift: no verdicts yet (a window's come once it closes: when requests "
                    "of a later window are served)", style="dim")
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for name in ("model", "version", "window end", "verdicts"):
        table.add_column(name, no_wrap=True)
    table.add_column("drifting (PSI)", overflow="fold")
    for model, summary in summaries:
        ago = status.taken_at - summary.window_end
        table.add_row(model.model, summary.version, f"{_age(ago)} ago", _counts(summary),
                      _drifting(summary))
    return Group(Text.assemble(("\ndrift", "bold"), ": the latest verdict of each feature"), table)


def _counts(summary: DriftSummary) -> Text:
    text = Text()
    for i, (verdict, n) in enumerate(summary.counts):
        if i:
            text.append(", ")
        text.append(f"{n} {verdict}", style=_DRIFT_STYLE.get(verdict, ""))
    return text


def _drifting(summary: DriftSummary) -> Text:
    if not summary.drifting:
        return Text("-", style="dim")
    text = Text()
    for i, v in enumerate(summary.drifting):
        if i:
            text.append(", ")
        psi = "" if v.psi is None else f" {v.psi:.2f}"
        text.append(f"{v.feature}{psi}", style=_DRIFT_STYLE.get(v.status, ""))
        if v.event:
            text.append(" event", style="bold")
    return text


def _client_error(reason: str) -> bool:
    try:
        return Reason(reason).is_client_error
    except ValueError:
        return True


def _rate(per_s: float) -> str:
    if per_s == 0:
        return "0"
    if per_s < 10:
        return f"{per_s:.2f}"
    if per_s < 1000:
        return f"{per_s:.1f}"
    return f"{per_s:,.0f}"


def _seconds(s: float) -> str:
    if s < 1:
        return f"{s * 1000:.1f} ms" if s < 0.1 else f"{s * 1000:.0f} ms"
    return f"{s:.2f} s"


def _age(seconds: float) -> str:
    """A duration for people: 4 s, 3 min, 2 h, 5 d."""
    if not math.isfinite(seconds):
        return "?"
    seconds = max(0.0, seconds)
    for limit, unit, size in ((120, "s", 1), (7200, "min", 60), (172800, "h", 3600)):
        if seconds < limit:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds / 86400:.0f} d"
