"""The one error of stream replay, kept apart so every replay module can raise it without
importing another."""

from __future__ import annotations

from pipeline.errors import StreamserveError


class ReplayError(StreamserveError, ValueError):
    """A recording that cannot be read, or a replay, diff or gate that cannot work as asked;
    the message says what to do."""
