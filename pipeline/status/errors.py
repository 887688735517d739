"""The error of ``pipeline.status``: figures that cannot be computed as asked."""

from pipeline.errors import StreamserveError


class StatusError(StreamserveError, ValueError):
    """Figures that cannot be computed as asked; the message says what was wrong."""
