"""``streamserve drift report MODEL``: the latest verdict per feature, with a PSI trend."""

from __future__ import annotations

import orjson

from agents.kafka_io import ensure_topics, read_topic
from pipeline.config import Settings

_BARS = "▁▂▃▄▅▆▇█"
_TREND = 24  # windows in the sparkline
_SCALE = 0.5  # PSI at the top of the sparkline: twice the alert tier


async def drift_report(settings: Settings, model: str, version: str | None) -> str:
    await ensure_topics(settings)
    reports: list[dict] = []
    async for record in read_topic(settings, settings.topics.drift, from_beginning=True,
                                   to_end=True):
        report = orjson.loads(record.value)
        if report["model"] == model and (version is None or report["version"] == version):
            reports.append(report)
    if not reports:
        return f"no drift reports for {model}{'' if version is None else ':' + version} yet"
    if version is None:
        version = max((r["version"] for r in reports), key=int)
        reports = [r for r in reports if r["version"] == version]
    by_feature: dict[str, list[dict]] = {}
    for report in sorted(reports, key=lambda r: r["window_end"]):
        by_feature.setdefault(report["feature"], []).append(report)
    lines = [f"drift of {model}:{version}, {len(by_feature)} features, "
             f"windows up to {max(r['window_end'] for r in reports)} (event time, s)",
             f"{'FEATURE':<26}{'PSI':>8}{'KL(r|c)':>9}{'KL(c|r)':>9}{'M':>7}  {'VERDICT':<13}TREND"]
    for feature, history in sorted(by_feature.items()):
        latest = history[-1]
        status = latest["verdict"]["status"] + (" EVENT" if any(r["event"] for r in history) else "")
        lines.append(f"{feature:<26}{_number(latest['psi']):>8}{_number(latest['kl_ref_cur']):>9}"
                     f"{_number(latest['kl_cur_ref']):>9}{latest['window_size']:>7}  {status:<13}"
                     f"{sparkline([_judged_psi(r) for r in history[-_TREND:]])}")
    return "\n".join(lines)


def sparkline(values: list[float | None]) -> str:
    """One character per window; empty windows are blank."""
    return "".join(" " if v is None else _BARS[min(len(_BARS) - 1, int(v / _SCALE * len(_BARS)))]
                   for v in values)


def _judged_psi(report: dict) -> float | None:
    """A window too small to judge (the first, partial ones) shows blank, not as noise."""
    return None if report["verdict"]["status"] == "insufficient" else report["psi"]


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
