"""``streamserve bench --quick --model iris --json``: one whole run on the session broker,
its JSON checked (a model other than the built-in synthetic32 adds the case that serves
synthetic32 beside it)."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import orjson
import pytest

from models.train import BUILTIN, train_and_register
from pipeline.registry import Registry
from tests.conftest import REPO, registry_keys

pytestmark = pytest.mark.integration

CASES = ("kafka_ceiling", "kafka_ceiling_compiled", "model_ceiling", "streamserve", "streamserve_drift_off",
         "streamserve_builtin", "streamserve_per_record", "handwritten_aiokafka", "quix_streams",
         "streamserve_two_workers")
STREAMSERVE_CASES = ("streamserve", "streamserve_drift_off", "streamserve_builtin",
                     "streamserve_per_record", "streamserve_two_workers")
RATIOS = ("vs_kafka_ceiling", "vs_compiled_ceiling", "vs_per_record", "vs_handwritten", "vs_quix", "two_workers",
          "model_vs_flop_bound", "drift_on_vs_off", "vs_builtin_mlp", "client_vs_raw_p50",
          "client_vs_raw_p99")


def positive(x: object) -> bool:
    return isinstance(x, int | float) and math.isfinite(x) and x > 0


def test_quick_bench_writes_every_contract_key(kafka_bootstrap, registry_dir, tmp_path, monkeypatch):
    # iris from the session's registry (every worker loads every model: one fewer to compile)
    registry = tmp_path / "registry"
    shutil.copytree(registry_dir, registry, ignore=shutil.ignore_patterns("breast_cancer"))
    # The bench measures speed, not accuracy: a few iterations make a model of the right shape.
    monkeypatch.setitem(BUILTIN, "synthetic32", replace(BUILTIN["synthetic32"], max_iter=5))
    keys = registry_keys(registry_dir)  # the session registry's key signs and is trusted
    train_and_register("synthetic32", Registry(registry),
                       signing_key=Path(keys["STREAMSERVE_SIGNING_KEY"]))
    out = tmp_path / "bench.json"
    env = dict(os.environ, STREAMSERVE_BROKER=kafka_bootstrap, STREAMSERVE_REGISTRY=str(registry),
               STREAMSERVE_HOME=str(tmp_path / "home"), **keys)
    run = subprocess.run([sys.executable, "-m", "agents.cli.main", "bench", "--quick", "--model",
                          "iris", "--json", str(out)],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=180, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "JAX on" in run.stdout and "RATIOS" in run.stdout, run.stdout
    # Its workers' state (each case's Faust data folder) goes with its topics; logs stay.
    home = tmp_path / "home"
    assert (home / "faust").is_dir() and not list((home / "faust").iterdir())
    assert list(home.glob("bench/*/*.log"))

    result = orjson.loads(out.read_bytes())
    assert set(result) == {"device", "cases", "latency_ms", "latency_floor_ms", "client_latency_ms",
                           "ratios", "jit_compiles_after_warmup", "padding_waste",
                           "cpu_us_per_request", "serving_step_cpu_us_per_request", "drift_pairs_rps",
                           "drift_coding_cpu_us_per_request", "drift_counting_cpu_us_per_request",
                           "drift_share_of_serving"}
    step = result["serving_step_cpu_us_per_request"]  # per request: a batch's own cost shared out
    assert set(step) == {"1", "16", "256"} and all(positive(us) for us in step.values()), step
    assert step["1"] > step["256"], step
    # drift monitoring's coding (in the step) and counting (the agent's): a share of serving
    coding, counting = (result[f"drift_{part}_cpu_us_per_request"] for part in ("coding", "counting"))
    assert 0 < coding < step["256"] and 0 < counting < step["256"], result
    assert result["drift_share_of_serving"] == (coding + counting) / (step["256"] + counting)
    # CPU per request over a drain: a --quick backlog may be drained between two looks or
    # within a few of the OS's clock ticks (then there is no figure: None); the full run's
    # 30,000 span many.
    for name in set(CASES) - {"model_ceiling"}:
        cpu = result["cases"][name]["cpu_us_per_request"]
        assert cpu is None or positive(cpu), (name, result["cases"][name])
    assert result["cpu_us_per_request"] == result["cases"]["streamserve"]["cpu_us_per_request"]
    assert isinstance(result["device"], str) and result["device"]
    assert set(result["cases"]) == set(CASES)
    for name, case in result["cases"].items():
        assert positive(case["throughput_rps"]), (name, case)
    for name in STREAMSERVE_CASES:
        case = result["cases"][name]
        assert case["answered_once"] == case["requests"] > 0, (name, case)
        assert case["missing"] == case["duplicates"] == case["deadletters"] == 0, (name, case)
    assert set(result["latency_ms"]) == {"25", "50", "75"}
    for share, point in result["latency_ms"].items():  # where the time went, leg by leg
        legs = point["legs_p50_ms"]
        assert set(legs) == {"send_to_answer", "answer_to_broker", "broker_to_reader",
                             "worker_queue_mean", "model_call_mean"}, (share, legs)
        assert all(math.isfinite(ms) for ms in legs.values()), (share, legs)
        assert positive(legs["send_to_answer"]) and positive(legs["model_call_mean"]), (share, legs)
    client = result["client_latency_ms"]
    assert client["share"] == 25 and client["rate_rps"] == result["latency_ms"]["25"]["rate_rps"]
    floor = result["latency_floor_ms"]  # the same loads, answered by a pass-through
    assert set(floor) == set(result["latency_ms"])
    assert all(point["rate_rps"] == result["latency_ms"][share]["rate_rps"] and not point["legs_p50_ms"]
               for share, point in floor.items()), floor
    for share, point in [*result["latency_ms"].items(), ("client", client),
                         *((f"floor {share}", point) for share, point in floor.items())]:
        assert all(positive(point[p]) for p in ("p50", "p95", "p99", "achieved_rps")), (share, point)
        assert point["p50"] <= point["p95"] <= point["p99"], (share, point)
        assert point["answered"] == point["requests"], (share, point)
    # --quick: one pair of drains, drift counting on then off; the off one is case 3b
    [[on, off]] = result["drift_pairs_rps"]
    assert positive(on) and off == result["cases"]["streamserve_drift_off"]["throughput_rps"]
    assert result["ratios"]["drift_on_vs_off"] == on / off
    assert set(result["ratios"]) == set(RATIOS)
    assert all(positive(v) for v in result["ratios"].values()), result["ratios"]
    assert result["jit_compiles_after_warmup"] == 0
    waste = result["padding_waste"]
    assert waste is None or 0 <= waste < 1
