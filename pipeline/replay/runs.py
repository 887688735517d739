"""How a replay run is told apart: the headers every replayed request carries, and run ids
(checked, generated, and stripped from the request ids they prefix as ``<run id>/<id>``)."""

from __future__ import annotations

import datetime
import re

from pipeline.replay.errors import ReplayError

REPLAY_HEADER = "streamserve-replay"
"""Every replayed request carries it (value: the run id); workers keep such requests out of
drift statistics and canary analysis."""
INDEX_HEADER = "streamserve-replay-index"
"""The replayed record's place among the recording's records (0-based), so a reply to a
request without a readable id is still matched across runs."""

_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_run_id(run_id: str) -> str:
    if not _RUN_ID.fullmatch(run_id):
        raise ReplayError(f"run id {run_id!r} must be 1 to 64 letters, digits, '.', '_' or '-', "
                          "starting with a letter or digit (it prefixes request ids as RUN/ID)")
    return run_id


def new_run_id(now: datetime.datetime, token: str) -> str:
    """A run id for a replay not given one: ``replay-20260131T100000-<token>``."""
    return check_run_id(f"replay-{now.astimezone(datetime.UTC):%Y%m%dT%H%M%S}-{token}")


def strip_run(request_id: str, run_id: str | None) -> str:
    """The request id as recorded: ``run_id/`` removed when it starts with it."""
    if run_id is not None and request_id.startswith(f"{run_id}/"):
        return request_id[len(run_id) + 1:]
    return request_id
