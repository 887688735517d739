"""``streamserve quality report MODEL``: live quality on labels, per version and route.

Reads ``<prefix>.quality``, keeps the latest report of each join partition, adds them
up (``pipeline.quality.merge_reports``) and prints, per version and route, the answers
kept, the labelled share and the figures (``Scores.report``), with the version's
training metrics from its manifest beside them, and the trend per window of answer time
(STREAMSERVE_QUALITY_WINDOW_S); ``--since`` keeps only the windows from then on, and
``--plot`` draws the trend.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from agents.kafka.read import read_topic
from agents.kafka.topics import ensure_topics
from agents.ops.times import utc
from pipeline.config import Settings
from pipeline.quality import Scores, merge_reports
from pipeline.registry import Registry, RegistryError

_ROUTE_ORDER = ("stable", "canary", "shadow", "pinned", "fallback")
_BARS = "▁▂▃▄▅▆▇█"


async def read_quality(settings: Settings, model: str) -> list[dict[str, Any]]:
    """The latest report of each join partition on ``model`` (and those of labels whose
    request no worker answered)."""
    await ensure_topics(settings)
    latest: dict[tuple[str, str, int], dict[str, Any]] = {}
    async for record in read_topic(settings, settings.topics.quality, from_beginning=True, to_end=True):
        report = orjson.loads(record.value)
        if report["model"] in (model, ""):
            key = (report["model"], report["version"], report["partition"])
            if key not in latest or latest[key]["time"] <= report["time"]:
                latest[key] = report
    return list(latest.values())


def summarize(settings: Settings, model: str, reports: list[dict[str, Any]],
              since: float | None = None) -> list[dict[str, Any]]:
    """One object per version of ``model``: ``model``, ``version``, ``kind``, ``answers``,
    ``labelled``, ``labelled_share``, the figures of all its routes together (``accuracy``
    ... or ``mae`` ...), ``routes`` (each route's own), ``outcomes`` (of its labels),
    ``trend`` per route (``[window start, labelled, accuracy or MAE]`` per window of
    answer time, oldest first), ``unmatched_labels`` (labels whose request no worker
    answered, of any model: a label
    names no model), ``refused_labels`` (labels of this model's requests dead-lettered
    before any version took them) and ``training`` (its manifest's metrics)."""
    merged = merge_reports(reports)
    unanswered = merged.pop(("", ""), None)
    unmatched = unanswered["outcomes"].get("unknown_id", 0) if unanswered else 0
    # Requests dead-lettered before any version took them (malformed, unknown version...).
    refused = merged.pop((model, ""), None)
    refused_labels = sum(refused["outcomes"].values()) if refused else 0
    registry = Registry(settings.registry.root)
    versions = []
    for (_, version), report in sorted(merged.items(), key=lambda item: _version_key(item[0][1])):
        training, regressor = _training(registry, model, version)
        every, routes, answers = Scores(), {}, 0
        for route, part in sorted(report["routes"].items(), key=lambda r: _route_key(r[0])):
            scores = part["total"] if since is None else _since(part["windows"], since)
            every.merge(scores)
            answers += part["answers"]
            routes[route] = {"answers": part["answers"], **_figures(scores, part["answers"], regressor),
                             "trend": _trend(part["windows"], since, regressor)}
        versions.append({"model": model, "version": version, "kind": "regressor" if regressor else "classifier",
                         **_figures(every, answers, regressor), "answers": answers,
                         "routes": routes, "outcomes": dict(report["outcomes"]),
                         "unmatched_labels": unmatched, "refused_labels": refused_labels,
                         "training": training})
    return versions


def format_report(model: str, versions: list[dict[str, Any]]) -> str:
    if not versions:
        return (f"no quality reports for {model} yet: are workers running with STREAMSERVE_LABELS=on, "
                "and labels sent to the labels topic?")
    first = versions[0]
    lines = [f"quality of {model} on labels ({first['unmatched_labels']} labels matched no answer, "
             f"{first['refused_labels']} were of requests refused before any version)"]
    for v in versions:
        regressor = v["kind"] == "regressor"
        header = ("MAE", "RMSE", "BIAS") if regressor else ("ACCURACY", "LOG LOSS", "BRIER", "ECE")
        lines.append(f"\nversion {v['version']} ({v['kind']}); training: "
                     + (", ".join(f"{k} {val:.4g}" for k, val in sorted(v["training"].items())) or "none"))
        lines.append(f"{'ROUTE':<10}{'ANSWERS':>9}{'LABELLED':>10}{'SHARE':>7}"
                     + "".join(f"{h:>10}" for h in header) + f"{'DELAY p50':>11}{'p95':>8}  TREND")
        for route, r in v["routes"].items():
            keys = ("mae", "rmse", "bias") if regressor else (
                "accuracy", "log_loss", "brier", "expected_calibration_error")
            lines.append(f"{route:<10}{r['answers']:>9}{r['labelled']:>10}{_share(r['labelled_share']):>7}"
                         + "".join(f"{_number(r[k]):>10}" for k in keys)
                         + f"{_seconds(r['label_delay_p50_s']):>11}{_seconds(r['label_delay_p95_s']):>8}  "
                         + ("" if regressor else _sparkline([f for _, _, f in r["trend"]])))
        if v["outcomes"]:
            lines.append("labels: " + ", ".join(f"{k} {n}" for k, n in sorted(v["outcomes"].items())))
        if not regressor:
            for route, r in v["routes"].items():
                classes = ", ".join(f"{name} P {_number(c['precision'])} R {_number(c['recall'])}"
                                    for name, c in r.get("classes", {}).items())
                if classes:
                    lines.append(f"{route} per class: {classes}")
    return "\n".join(lines)


def plot_quality(model: str, versions: list[dict[str, Any]], path: Path) -> None:
    """Accuracy (or MAE) per window of answer time, one subplot per version, a line per
    route, the training accuracy dashed; into a PNG."""
    # As the drift chart: an Agg canvas without pyplot needs no display, keeps no state.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 2.8 * len(versions)), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(versions), 1, squeeze=False).flat
    for ax, v in zip(axes, versions, strict=True):
        regressor = v["kind"] == "regressor"
        for route, r in v["routes"].items():
            points = [(utc(start), figure_) for start, _, figure_ in r["trend"] if figure_ is not None]
            if points:
                ax.plot(*zip(*points), marker=".", label=route)
        training = v["training"].get("test_accuracy")
        if training is not None and not regressor:
            ax.axhline(training, color="tab:gray", linestyle="--", label="training")
        ax.set_ylabel("MAE" if regressor else "accuracy")
        ax.set_title(f"{model}:{v['version']}", fontsize="medium")
        ax.legend(fontsize="small")
    figure.supxlabel("window of answer time (start, UTC)")
    figure.suptitle(f"live quality of {model} on labels")
    figure.savefig(path, format="png")


def _trend(windows: dict[int, Scores], since: float | None, regressor: bool) -> list[list[Any]]:
    key = "mae" if regressor else "accuracy"
    return [[start, scores.labelled, scores.report(regressor)[key]]
            for start, scores in sorted(windows.items()) if since is None or start >= since]


def _figures(scores: Scores, answers: int, regressor: bool) -> dict[str, Any]:
    figures = scores.report(regressor)
    figures["labelled_share"] = figures["labelled"] / answers if answers else None
    return figures


def _since(windows: dict[int, Scores], since: float) -> Scores:
    total = Scores()
    for start, scores in windows.items():
        if start >= since:
            total.merge(scores)
    return total


def _training(registry: Registry, model: str, version: str) -> tuple[dict[str, float], bool]:
    try:
        manifest = registry.manifest(model, version)
    except (RegistryError, OSError):
        return {}, False
    return dict(manifest.metrics), manifest.outputs.is_regressor


def _version_key(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (1 << 62, version)


def _route_key(route: str) -> tuple[int, str]:
    return (_ROUTE_ORDER.index(route) if route in _ROUTE_ORDER else len(_ROUTE_ORDER), route)


def _sparkline(accuracies: list[float | None]) -> str:
    """One character per window, accuracy 0 to 1; windows without labels are blank."""
    return "".join(" " if a is None else _BARS[min(len(_BARS) - 1, int(a * len(_BARS)))]
                   for a in accuracies)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _share(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"≤{value:g}s" if value < 3600 else f"≤{value / 3600:g}h"
