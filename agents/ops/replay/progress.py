"""The progress line replay and gate draw on stderr while they send and wait for replies."""

from __future__ import annotations

import sys
import time
from typing import IO


class ProgressBar:
    """A progress line on stderr, redrawn at most ten times a second on a terminal; elsewhere
    (a CI log) one line per tenth of the way."""

    def __init__(self, label: str, total: int, stream: IO[str] | None = None) -> None:
        self.label, self.total = label, total
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self._drawn = 0.0
        self._tenth = 0
        self._started = time.monotonic()

    def update(self, sent: int, note: str = "") -> None:
        now = time.monotonic()
        tenth = 10 * sent // max(1, self.total)
        if self.tty and (now - self._drawn >= 0.1 or sent == self.total):
            self._drawn = now
            width = 30
            done = width * sent // max(1, self.total)
            rate = sent / max(now - self._started, 1e-9)
            print(f"\r{self.label} [{'#' * done}{'.' * (width - done)}] {sent}/{self.total} "
                  f"{rate:,.0f}/s {note}", end="", file=self.stream, flush=True)
        elif not self.tty and tenth > self._tenth:
            self._tenth = tenth
            print(f"{self.label}: {sent}/{self.total} {note}".rstrip(), file=self.stream, flush=True)

    def finish(self) -> None:
        if self.tty:
            print(file=self.stream, flush=True)
