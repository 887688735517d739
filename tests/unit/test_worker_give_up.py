"""A worker whose stop outlasts STREAMSERVE_STOP_GRACE_S exits, and says first where each
of its own tasks and every thread waits (agents/worker/run.py ``_give_up``)."""

import asyncio
import logging
import os
from pathlib import Path

from agents.worker import run


async def _blocked() -> None:
    await asyncio.Event().wait()


async def _waits_forever() -> None:
    await _blocked()


async def test_a_stop_that_hangs_says_where_each_own_task_and_thread_waits(monkeypatch, caplog):
    monkeypatch.setattr(run, "_OWN_CODE", (str(Path(__file__).parent) + os.sep,))
    monkeypatch.setattr(logging, "shutdown", lambda: None)
    exits: list[int] = []
    monkeypatch.setattr(os, "_exit", exits.append)
    stuck = asyncio.create_task(_waits_forever(), name="stuck")
    elsewhere = asyncio.create_task(asyncio.sleep(60), name="elsewhere")
    await asyncio.sleep(0)
    with caplog.at_level(logging.ERROR, logger=run.log.name):
        await asyncio.to_thread(run._give_up, 25.0, asyncio.get_running_loop())
    stuck.cancel()
    elsewhere.cancel()

    messages = [r.getMessage() for r in caplog.records if r.name == run.log.name]
    assert exits == [1]
    assert "did not stop within STREAMSERVE_STOP_GRACE_S (25 s)" in messages[-1]  # last: read first
    [task] = [m for m in messages if m.startswith("stop hangs: task stuck ")]
    assert task.startswith("stop hangs: task stuck waits in _waits_forever (test_worker_give_up.py:")
    assert "-> _blocked (test_worker_give_up.py:" in task
    assert not [m for m in messages if "task elsewhere " in m]  # only asyncio's own code
    assert any(m.startswith("stop hangs: thread MainThread waits in ") for m in messages)


def test_a_chain_outside_the_workers_own_code_is_left_out():
    coroutine = asyncio.sleep(0)
    assert run._awaiting(coroutine) == ""
    coroutine.close()
