"""`streamserve quality report` from partition reports (agents/ops/quality_report.py): the
sums of every partition's latest report, per version and route, with a trend per window."""

from agents.ops.quality_report import format_report, plot_quality, summarize
from pipeline.config import Settings
from pipeline.quality import Book, Entry, Kept, Label

CLASSES = ("a", "b")


def partition_reports(answers) -> list[dict]:
    """(id, version, route, answer time, predicted, truth) -> one report per partition and version."""
    books = [Book(3600, lambda model, version: CLASSES) for _ in range(2)]
    for n, (request_id, version, route, when, predicted, truth) in enumerate(answers):
        entry = Entry()
        entry.on_prediction(Kept("m", version, route, when, predicted, (0.9, 0.1)[::1 - 2 * predicted]), 1)
        if truth is not None:
            entry.on_label(Label(request_id, truth, None, None), arrived=when + 30, offset=2)
        books[n % 2].add(entry)
    return [{**r, "partition": p} for p, book in enumerate(books) for r in book.reports()]


def test_the_report_adds_up_partitions_and_shows_a_trend(tmp_path):
    answers = [(f"r-{i}", "1", "stable", 3600.0 * (i // 10), 0, "a" if i % 10 < 9 - i // 10 else "b")
               for i in range(30)]
    answers += [(f"c-{i}", "2", "canary", 7200.0, 1, "b") for i in range(4)]
    answers += [("u-1", "1", "stable", 7300.0, 0, None)]  # answered, never labelled
    settings = Settings.from_env({"STREAMSERVE_REGISTRY": str(tmp_path)})
    [one, two] = summarize(settings, "m", partition_reports(answers))
    assert (one["version"], one["labelled"], one["answers"]) == ("1", 30, 31)
    assert one["accuracy"] == (9 + 8 + 7) / 30 and one["labelled_share"] == 30 / 31
    assert one["routes"]["stable"]["trend"] == [[0, 10, 0.9], [3600, 10, 0.8], [7200, 10, 0.7]]
    assert one["label_delay_p50_s"] == 30 and one["training"] == {}  # no manifest here
    assert (two["routes"]["canary"]["accuracy"], two["routes"]["canary"]["labelled"]) == (1.0, 4)
    since = summarize(settings, "m", partition_reports(answers), since=3600)
    assert since[0]["labelled"] == 20 and since[0]["routes"]["stable"]["trend"][0][0] == 3600
    text = format_report("m", [one, two])
    assert "version 1 (classifier)" in text and "0.8000" in text and "█▇▆" in text
    plot_quality("m", [one, two], tmp_path / "quality.png")
    assert (tmp_path / "quality.png").read_bytes()[:4] == b"\x89PNG"


def test_no_report_says_what_to_check():
    assert "STREAMSERVE_LABELS=on" in format_report("m", [])
