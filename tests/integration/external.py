"""What the tests of models trained elsewhere share: the CLI, a worker serving a
registry of them, and reading its answers on the real broker."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import orjson

from agents.dev.fleet import WorkerProcess
from tests.conftest import registry_keys, start_worker
from tests.integration.clients import collect, produce, run


def cli(env, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agents.cli.main", *args], env=env,
                          capture_output=True, text=True, timeout=120)


def registry_env(folder: Path) -> dict[str, str]:
    """The environment that registers into ``folder``/registry, signed with its test key."""
    root = folder / "registry"
    return {"STREAMSERVE_REGISTRY": str(root), **registry_keys(root)}


def serving(kafka_bootstrap: str, folder: Path, env: dict[str, str]) -> WorkerProcess:
    """A worker serving ``folder``'s registry. The canary analysis judges errors and the
    output distribution here, with bounds that a few hundred requests split by id hash
    stay within (a regressor's PSI over quartiles at 50 requests an arm: 0.74 at its 99.9th
    percentile, 2.1 at most in 20,000 draws); its sensitivity, and latency on two loaded
    cores, are left to the unit tests."""
    return start_worker(kafka_bootstrap, Path(env["STREAMSERVE_REGISTRY"]), folder / "worker.log",
                        **{k: v for k, v in env.items() if k != "STREAMSERVE_REGISTRY"},
                        STREAMSERVE_SAMPLE_RATE="0", STREAMSERVE_CANARY_MIN_REQUESTS="50",
                        STREAMSERVE_CANARY_PROMOTE_AFTER="100",
                        STREAMSERVE_CANARY_MAX_OUTPUT_PSI="3",
                        STREAMSERVE_CANARY_MAX_P99_RATIO="1000")


def tabular(prefix: str, n: int, model: str, names, rows) -> list[bytes]:
    """``n`` tabular requests to ``model``, ids ``prefix0``..., cycling over ``rows``."""
    return [orjson.dumps({"id": f"{prefix}{i}", "model": model, "features": dict(zip(
        names, rows[i % len(rows)].tolist(), strict=True))}) for i in range(n)]


def outputs(worker, prefix: str, values: list[bytes]) -> list:
    """Send ``values`` (ids starting ``prefix``) and read one reply for each."""
    s = worker.settings
    run(produce(s.bootstrap, s.topics.requests, values))
    return run(collect(s.bootstrap, [s.topics.predictions, s.topics.deadletter],
                       expected=len(values), timeout=90,
                       where=lambda r: r.key is not None and r.key.startswith(prefix.encode())))


def answers(worker, prefix: str, values: list[bytes]) -> dict[str, dict]:
    """The predictions of ``values`` (ids starting ``prefix``), by id; no dead letter."""
    got = outputs(worker, prefix, values)
    assert all(r.topic == worker.settings.topics.predictions for r in got), [r.value for r in got]
    return {r.value["id"]: r.value for r in got}


def shadow_answers(worker, prefix: str, n: int, versions: str) -> dict[str, dict[str, dict]]:
    """Each shadow version's answers to the ``n`` requests of ``prefix``, by id; none failed."""
    s = worker.settings
    shadowed = run(collect(s.bootstrap, [s.topics.shadow], expected=len(versions) * n, timeout=90,
                           where=lambda r: r.key is not None and r.key.startswith(prefix.encode())))
    by_version = {}
    for version in versions:
        by_id = {r.value["id"]: r.value for r in shadowed if r.value["model_version"] == version}
        assert len(by_id) == n and not any("error" in a for a in by_id.values()), version
        by_version[version] = by_id
    return by_version


def wait_for_metric(worker, line: str, what: str, timeout: float = 60) -> None:
    """Until the worker's metrics hold ``line`` (a spec applies within seconds)."""
    deadline = time.monotonic() + timeout
    while line not in worker.metrics():
        assert time.monotonic() < deadline, f"the worker did not {what} in {timeout:.0f} s"
        time.sleep(0.2)
