"""``streamserve replay capture|run|diff|gate``: the Kafka and file side of ``pipeline.replay``.

- ``files``: recording files, zstd-compressed when the name ends in ``.zst``.
- ``recorder`` (``capture``): read a topic range (read_committed) into a recording file.
- ``run`` (``replay``): send a recording again on its schedule, rewritten, tagged with
  the run id.
- ``sides`` (``load_side``, ``diff_sides``): one run's replies for the diff, from a capture
  file of the predictions and dead-letter topics, or by run id from the topics themselves.
- ``gate`` (``run_gate``): replay through the baseline and the candidate version, one run
  after the other, wait for every reply, and diff.
- ``progress``: the progress line on stderr.

Replies are matched to the requests they answer by their ``streamserve-source-*``
headers (topic, partition, offset), as the ledger does, so a request without a readable
id is matched too. How a diff is shown: ``agents.ops.replay_report``.
"""

from agents.ops.replay.files import read_recording, write_recording
from agents.ops.replay.gate import GateResult, check_pinnable, run_gate
from agents.ops.replay.progress import ProgressBar
from agents.ops.replay.recorder import CaptureResult, capture
from agents.ops.replay.run import RunResult, replay
from agents.ops.replay.sides import diff_sides, features_of, load_side

__all__ = [
    "CaptureResult",
    "GateResult",
    "ProgressBar",
    "RunResult",
    "capture",
    "check_pinnable",
    "diff_sides",
    "features_of",
    "load_side",
    "read_recording",
    "replay",
    "run_gate",
    "write_recording",
]
