import pytest

from agents.cli.main import main
from agents.ops.drift_report import format_report, plot_reports, sparkline
from agents.ops.times import duration_text, utc_text
from pipeline.drift import Verdict

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_sparkline_scales_psi_to_bars_and_leaves_empty_windows_blank():
    assert sparkline([0.0, 0.25, 0.5, None, 3.0]) == "▁▅█ █"


def report(feature, end, status, psi=None, threshold=0.12, size=500, event=None):
    """A report as the drift agent emits it (agents/worker/drift.py ``_report_json``)."""
    judged = status != "insufficient"
    verdict = Verdict(feature, status, psi if judged else None, threshold if judged else None,
                      size, 200)
    return {"model": "iris", "version": "1", "feature": feature, "kind": "numeric",
            "window_start": end - 2, "window_end": end, "window_size": size, "psi": psi,
            "kl_ref_cur": None if psi is None else psi / 2,
            "kl_cur_ref": None if psi is None else psi / 2, "js_distance": None,
            "missing_rate": 0.0, "non_finite": 0, "out_of_range_share": 0.0, "unseen_share": 0.0,
            "verdict": verdict.to_json(), "event": event}


def test_plot_draws_one_png_with_every_status(tmp_path):
    by_feature = {
        "sepal_length": [report("sepal_length", 10, "insufficient", size=50),
                         report("sepal_length", 11, "stable", 0.02),
                         report("sepal_length", 12, "drift", 0.18),
                         report("sepal_length", 13, "alert", 0.4)],
        "petal_width": [report("petal_width", end, "stable", 0.01) for end in (10, 11, 12, 13)],
        # Five features leave three cells of the second row of four empty.
        **{f"f{i}": [report(f"f{i}", 13, "stable", 0.03)] for i in range(3)},
    }
    path = tmp_path / "drift.png"
    plot_reports("iris", "1", by_feature, path)
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert 10_000 < len(data) < 2_000_000


def test_plot_shows_a_feature_with_no_judged_window_as_a_gap(tmp_path):
    path = tmp_path / "drift.png"
    plot_reports("iris", "1", {"label": [report("label", end, "insufficient", size=50)
                                         for end in (10, 11)]}, path)
    assert path.read_bytes().startswith(PNG_MAGIC)


def test_cli_refuses_a_plot_in_a_missing_folder_before_reading_kafka(tmp_path, capsys, monkeypatch):
    # No broker anywhere: reaching Kafka would hang or fail, not print this error.
    monkeypatch.setenv("STREAMSERVE_BROKER", "127.0.0.1:1")
    path = tmp_path / "missing" / "drift.png"
    assert main(["drift", "report", "iris", "--plot", str(path)]) == 2
    error = capsys.readouterr().err
    assert str(path.parent) in error and "mkdir -p" in error


def test_the_text_report_reads_in_utc_and_puts_the_features_that_need_a_look_first():
    end = 1_796_569_102  # 2026-12-06 14:58:22 UTC
    by_feature = {
        "a_stable": [report("a_stable", end, "stable", 0.05)],
        "b_drifted_once": [report("b_drifted_once", end - 2, "drift", 0.2, event={"status": "drift"}),
                           report("b_drifted_once", end, "stable", 0.01)],
        "c_alert": [report("c_alert", end, "alert", 0.4)],
        "d_too_few": [report("d_too_few", end, "insufficient", size=50)],
        "e_drift_small": [report("e_drift_small", end, "drift", 0.15)],
        "f_drift_large": [report("f_drift_large", end, "drift", 0.25)],
    }
    lines = format_report("iris", "1", by_feature).splitlines()
    assert "windows of 2 s up to 2026-12-06 14:58:22 UTC (event time)" in lines[0]
    assert str(end) not in lines[0]
    assert [line.split()[0] for line in lines[2:]] == [
        "c_alert", "f_drift_large", "e_drift_small", "b_drifted_once", "a_stable", "d_too_few"]
    assert "EVENT" in lines[5]


@pytest.mark.parametrize(("seconds", "text"), [(2, "2 s"), (45, "45 s"), (90, "1.5 min"),
                                                (600, "10 min"), (7200, "2 h"), (604_800, "7 d")])
def test_window_lengths_read_in_their_largest_whole_unit(seconds, text):
    assert duration_text(seconds) == text


def test_times_read_as_utc_wall_clock():
    assert utc_text(0) == "1970-01-01 00:00:00 UTC"
