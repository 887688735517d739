"""Event and answer times as people read them: UTC wall-clock, not epoch seconds."""

from __future__ import annotations

import datetime


def utc(seconds: float) -> datetime.datetime:
    """Epoch ``seconds`` as an aware UTC datetime (what a chart's time axis takes)."""
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC)


def utc_text(seconds: float) -> str:
    """Epoch ``seconds`` as ``2026-12-07 17:31:42 UTC``."""
    return utc(seconds).strftime("%Y-%m-%d %H:%M:%S UTC")


def duration_text(seconds: float) -> str:
    """A window's length in its largest whole unit: ``45 s``, ``1.5 min``, ``2 h``, ``7 d``."""
    for unit, size in (("d", 86_400), ("h", 3_600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds:.3g} s"
