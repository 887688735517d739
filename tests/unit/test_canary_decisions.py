"""A canary decision the worker may not write is logged and audited, never dropped unseen."""

import asyncio
import logging

from agents.worker.deployer import Deployer
from pipeline.canary import CanaryVerdict
from pipeline.config import RegistrySettings, Settings


class Trail:
    def __init__(self) -> None:
        self.notes: list[dict] = []

    def note(self, **entry: object) -> None:
        self.notes.append(entry)


async def test_a_refused_automatic_rollback_is_logged_and_audited(caplog, tmp_path) -> None:
    deployer = Deployer(Settings(registry=RegistrySettings(root=tmp_path)), inference=None, metrics=None)
    deployer._trail = trail = Trail()
    verdict = CanaryVerdict("rollback", "error rate 0.40 over stable's 0.01")

    async def refused() -> None:
        raise PermissionError("User:worker may not write topic streamserve.control")

    task = asyncio.ensure_future(refused())
    await asyncio.gather(task, return_exceptions=True)
    with caplog.at_level(logging.ERROR, logger="agents.kafka.control"):
        deployer._undecided("iris", verdict, task)
    assert "the automatic rollback could not be written" in caplog.text
    assert "streamserve rollback iris" in caplog.text and "--workers-decide-canaries" in caplog.text
    assert trail.notes == [{"action": "auto_rollback_refused", "subject": "iris",
                            "reason": "error rate 0.40 over stable's 0.01; not written: "
                                      "User:worker may not write topic streamserve.control"}]


async def test_a_written_decision_adds_nothing(tmp_path) -> None:
    deployer = Deployer(Settings(registry=RegistrySettings(root=tmp_path)), inference=None, metrics=None)
    deployer._trail = trail = Trail()
    task = asyncio.ensure_future(asyncio.sleep(0))
    await task
    deployer._undecided("iris", CanaryVerdict("promote", "healthy"), task)
    assert trail.notes == []
