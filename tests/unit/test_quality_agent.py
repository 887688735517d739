"""The label join's reading of its table (agents/worker/quality.py): an entry another
release wrote, or a damaged one, starts afresh instead of crashing the agent forever."""

import logging

from agents.worker.quality import _read
from pipeline.quality import Entry, Kept


def test_an_unreadable_entry_starts_afresh_and_says_so(caplog):
    entry = Entry(kept=Kept("m", "1", "stable", 1.0, 0, (0.9, 0.1)), truth="a")
    assert _read(b"r-1", entry.to_bytes()) == entry
    assert _read(b"r-1", None) == Entry()
    with caplog.at_level(logging.ERROR):
        for damaged in (b"[1, 2]", b"{not json", b'[null, null, null, null, 0, -1, {}]', b"[[1], 2, 3, 4, 5, 6, 7, 8, 9]"):
            assert _read(b"r-1", damaged) == Entry()
    assert caplog.text.count("unreadable") == 4 and "starting it afresh" in caplog.text
