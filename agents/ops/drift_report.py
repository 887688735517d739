"""``streamserve drift report MODEL``: the latest verdict per feature, with a PSI trend."""

from __future__ import annotations

import math
from pathlib import Path

import orjson

from agents.kafka.read import read_topic
from agents.kafka.topics import ensure_topics
from agents.ops.times import duration_text, utc, utc_text
from pipeline.config import Settings

_BARS = "▁▂▃▄▅▆▇█"
_TREND = 24  # windows in the sparkline
_SCALE = 0.5  # PSI at the top of the sparkline: twice the alert tier
_COLUMNS = 4  # subplots per row of the plot
_STATUS_COLOURS = {"drift": "tab:orange", "alert": "tab:red"}  # windows and their lines
# The latest window's verdict, most in need of a look first.
_CONCERN = {"alert": 0, "drift": 1, "stable": 2, "insufficient": 3}


async def read_reports(settings: Settings, model: str,
                       version: str | None) -> tuple[str | None, dict[str, list[dict]]]:
    """The version (default the newest reported) and its reports per feature, oldest window first.

    No reports: the version as given and an empty dict.
    """
    await ensure_topics(settings)
    reports: list[dict] = []
    async for record in read_topic(settings, settings.topics.drift, from_beginning=True,
                                   to_end=True):
        report = orjson.loads(record.value)
        if report["model"] == model and (version is None or report["version"] == version):
            reports.append(report)
    if reports and version is None:
        version = max((r["version"] for r in reports), key=int)
        reports = [r for r in reports if r["version"] == version]
    by_feature: dict[str, list[dict]] = {}
    for report in sorted(reports, key=lambda r: r["window_end"]):
        by_feature.setdefault(report["feature"], []).append(report)
    return version, by_feature


def format_report(model: str, version: str | None, by_feature: dict[str, list[dict]]) -> str:
    if not by_feature:
        return f"no drift reports for {model}{'' if version is None else ':' + version} yet"
    latest = max((history[-1] for history in by_feature.values()), key=lambda r: r["window_end"])
    lines = [f"drift of {model}:{version}, {len(by_feature)} features, windows of "
             f"{duration_text(latest['window_end'] - latest['window_start'])} up to "
             f"{utc_text(latest['window_end'])} (event time), most concerning first",
             f"{'FEATURE':<26}{'PSI':>8}{'KL(r|c)':>9}{'KL(c|r)':>9}{'M':>7}  {'VERDICT':<13}TREND"]
    for feature, history in by_concern(by_feature):
        latest = history[-1]
        status = latest["verdict"]["status"] + (" EVENT" if any(r["event"] for r in history) else "")
        lines.append(f"{feature:<26}{_number(latest['psi']):>8}{_number(latest['kl_ref_cur']):>9}"
                     f"{_number(latest['kl_cur_ref']):>9}{latest['window_size']:>7}  {status:<13}"
                     f"{sparkline([_judged_psi(r) for r in history[-_TREND:]])}")
    return "\n".join(lines)


def plot_reports(model: str, version: str | None, by_feature: dict[str, list[dict]],
                 path: Path) -> None:
    """One PSI-per-window subplot per feature (``by_feature`` not empty), into a PNG."""
    # Imported here so the text report does not pay for them; the Figure is drawn on an
    # Agg canvas, without pyplot, so it needs no display and leaves no global state.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from pipeline.drift import DriftConfig

    columns = min(_COLUMNS, len(by_feature))
    rows = math.ceil(len(by_feature) / columns)
    figure = Figure(figsize=(4 * columns, 2.5 * rows), layout="constrained")
    FigureCanvasAgg(figure)
    axes = list(figure.subplots(rows, columns, sharex=True, squeeze=False).flat)
    for ax, (feature, history) in zip(axes, by_concern(by_feature)):
        ends = [utc(r["window_end"]) for r in history]
        # NaN breaks the line, so a window too small to judge shows as a gap.
        psi = [math.nan if v is None else v for v in map(_judged_psi, history)]
        ax.plot(ends, psi, color="tab:blue", marker=".")
        for status, colour in _STATUS_COLOURS.items():
            marked = [(e, p) for e, p, r in zip(ends, psi, history)
                      if r["verdict"]["status"] == status]
            if marked:
                ax.scatter(*zip(*marked), color=colour, zorder=3)
        latest = history[-1]["verdict"]
        if latest["threshold"] is not None:
            ax.axhline(latest["threshold"], color=_STATUS_COLOURS["drift"], linestyle="--")
        ax.axhline(DriftConfig().alert_psi, color=_STATUS_COLOURS["alert"], linestyle="--")
        ax.set_title(f"{feature}: {latest['status']}", fontsize="medium")
        ax.set_ylim(bottom=0)  # PSI is never negative; a common floor keeps panels comparable
        ax.set_ylabel("PSI")
    for i in range(len(by_feature), len(axes)):
        axes[i].set_visible(False)
        # The shared axis shows tick labels on the bottom row only, which this cell left.
        axes[i - columns].tick_params(axis="x", labelbottom=True)
    figure.supxlabel("window end (event time, UTC)")
    figure.suptitle(f"PSI per window of {model}:{version}, most concerning first\n"
                    f"orange: drift (dashed: latest threshold), red: alert (dashed: alert tier)")
    figure.savefig(path, format="png")


def by_concern(by_feature: dict[str, list[dict]]) -> list[tuple[str, list[dict]]]:
    """The features most in need of a look first: by their latest window's verdict (alert,
    drift, stable, too few rows to judge), then those with a drift event in their history,
    then by the latest PSI, largest first; by name among equals."""
    def concern(item: tuple[str, list[dict]]) -> tuple[int, bool, float, str]:
        feature, history = item
        latest = history[-1]
        return (_CONCERN.get(latest["verdict"]["status"], len(_CONCERN)),
                not any(r["event"] for r in history), -(_judged_psi(latest) or 0.0), feature)
    return sorted(by_feature.items(), key=concern)


def sparkline(values: list[float | None]) -> str:
    """One character per window; empty windows are blank."""
    return "".join(" " if v is None else _BARS[min(len(_BARS) - 1, int(v / _SCALE * len(_BARS)))]
                   for v in values)


def _judged_psi(report: dict) -> float | None:
    """A window too small to judge (the first, partial ones) shows blank, not as noise."""
    return None if report["verdict"]["status"] == "insufficient" else report["psi"]


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
