from agents.drift_report import sparkline


def test_sparkline_scales_psi_to_bars_and_leaves_empty_windows_blank():
    assert sparkline([0.0, 0.25, 0.5, None, 3.0]) == "▁▅█ █"
