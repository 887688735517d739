"""The drift package's one exception."""

from __future__ import annotations

from pipeline.errors import StreamserveError


class DriftError(StreamserveError, ValueError):
    """Drift statistics cannot be built or compared as asked; the message says what to do."""
