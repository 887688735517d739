"""Repeated warnings of the Kafka clients, one line a minute: aiokafka logs every failed
connection and fetch, about 2,000 lines a second while no broker answers. What changed is
said once by the worker's watch on the cluster (``agents.worker.brokers``); the clients'
own lines say how, and one of each kind a minute is enough for that.
"""

from __future__ import annotations

import logging

EVERY_S = 60.0
LIMITED = ("aiokafka", "faust", "mode")  # loggers whose warnings repeat per retry


class RepeatLimiter(logging.Filter):
    """A handler filter: the first warning (or worse) of each kind from ``LIMITED`` loggers
    passes, then one per ``every_s`` seconds, saying how many like it were held back. A
    kind is the logger and the message's template (its ``%s`` not filled in)."""

    def __init__(self, every_s: float = EVERY_S) -> None:
        super().__init__()
        self._every_s = every_s
        self._kinds: dict[tuple[str, str], list] = {}  # kind -> [last passed, held back since]

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or not record.name.startswith(LIMITED):
            return True
        verdict = getattr(record, "_limited", None)
        if verdict is None:  # decided once per record, however many handlers it passes
            verdict = self._decide(record)
            record._limited = verdict
        return verdict

    def _decide(self, record: logging.LogRecord) -> bool:
        kind = (record.name, str(record.msg))
        seen = self._kinds.get(kind)
        if seen is not None and record.created - seen[0] < self._every_s:
            seen[1] += 1
            return False
        if seen is not None and seen[1]:
            record.msg = f"{record.msg} [{seen[1]} more like it held back in {self._every_s:.0f} s]"
        self._kinds[kind] = [record.created, 0]
        return True


def limit_repeats(logger: logging.Logger, limiter: RepeatLimiter | None = None) -> RepeatLimiter:
    """Put one limiter on every handler of ``logger`` (the root, once Faust set it up)."""
    limiter = limiter or RepeatLimiter()
    for handler in logger.handlers:
        handler.addFilter(limiter)
    return limiter
