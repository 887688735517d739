"""``streamserve replay``'s refusals: one line on stderr and exit status 2, before any broker
is reached."""

from __future__ import annotations

import pytest

from agents.cli.main import main
from agents.ops.replay import write_recording
from pipeline.replay import RecordingHeader
from tests.unit.replay.samples import record, tabular


def test_cli_mistakes_are_one_line_and_exit_2(tmp_path, capsys):
    assert main(["replay", "run", str(tmp_path / "missing.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a file" in err
    recording = tmp_path / "r.jsonl"
    write_recording(recording, RecordingHeader(("t",)), [record(tabular("r-1"))])
    assert main(["replay", "gate", "--file", str(recording), "--baseline", "1", "--candidate", "2",
                 "--max-disagreement", "5", "--max-p99-ms", "10"]) == 2
    assert "--max-disagreement is a share" in capsys.readouterr().err
    assert main(["replay", "run", str(recording), "--run-id", "a/b"]) == 2
    assert "run id 'a/b'" in capsys.readouterr().err
    assert main(["replay", "diff", "a", "b", "--html", str(tmp_path / "no" / "r.html")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["replay", "capture", "--from", "yesterday", "--out", str(tmp_path / "x.jsonl")])
