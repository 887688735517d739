"""Repeated Kafka client warnings: one line a minute of each kind, counting what was held."""

import logging

from agents.worker.log_limits import RepeatLimiter, limit_repeats


def record(name, msg, args=(), created=0.0, level=logging.ERROR):
    rec = logging.LogRecord(name, level, __file__, 1, msg, args, None)
    rec.created = created
    return rec


def test_the_first_of_a_kind_passes_then_one_a_minute_with_the_count_held_back():
    limiter = RepeatLimiter(every_s=60)
    template = "Unable connect to node with id %s: %s"
    assert limiter.filter(record("aiokafka.conn", template, (1, "refused"), 0.0))
    held = [limiter.filter(record("aiokafka.conn", template, (i % 3, "refused"), 0.01 * i))
            for i in range(1, 2001)]
    assert not any(held)
    later = record("aiokafka.conn", template, (2, "refused"), 61.0)
    assert limiter.filter(later)
    assert later.getMessage() == "Unable connect to node with id 2: refused [2000 more like it held back in 60 s]"


def test_kinds_are_counted_apart_and_other_loggers_and_info_are_never_held():
    limiter = RepeatLimiter(every_s=60)
    assert limiter.filter(record("aiokafka.conn", "a %s", (1,)))
    assert limiter.filter(record("aiokafka.cluster", "b %s", (1,)))
    assert not limiter.filter(record("aiokafka.conn", "a %s", (2,), 1.0))
    assert all(limiter.filter(record("agents.worker.brokers", "lost", created=t)) for t in range(5))
    assert all(limiter.filter(record("aiokafka.conn", "a %s", (1,), t, logging.INFO)) for t in range(5))


def test_a_record_passing_several_handlers_is_judged_once():
    logger = logging.Logger("test-root")
    first, second = logging.NullHandler(), logging.NullHandler()
    logger.addHandler(first)
    logger.addHandler(second)
    limit_repeats(logger)
    rec = record("faust.transport", "x")
    assert first.filter(rec) and second.filter(rec)
    again = record("faust.transport", "x", created=1.0)
    assert not first.filter(again) and not second.filter(again)
