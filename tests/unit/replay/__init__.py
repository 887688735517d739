"""Stream replay, no broker: the pure parts (``pipeline.replay``), the recording files and
the report (``agents.ops.replay``, ``agents.ops.replay_report``), the CLI's refusals."""
