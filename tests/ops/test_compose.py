"""docker-compose.yml is wired as the README says: Kafka, two workers in one consumer
group, Prometheus scraping both with streamserve's rules, Grafana with the dashboards.

No Docker engine runs where these tests run, so the file is checked by reading it: the
service names, ports, mounts and settings that must agree across docker-compose.yml,
ops/prometheus/prometheus.yml, ops/grafana/provisioning and the Dockerfile.
"""

from __future__ import annotations

import fnmatch
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pytest
import yaml

from agents.worker.health import CheckResult, HealthChecks
from agents.worker.metrics import Metrics
from pipeline.config import KafkaSettings, Settings

ROOT = Path(__file__).resolve().parents[2]
# Bind-mounted sources that `streamserve models train` makes, not the repository.
MADE_BY_THE_USER = ("./registry", "./.streamserve/")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def prometheus_config() -> dict:
    return yaml.safe_load((ROOT / "ops" / "prometheus" / "prometheus.yml").read_text())


def workers(compose: dict) -> dict[str, dict]:
    """The services that run the streamserve image."""
    return {name: s for name, s in compose["services"].items()
            if str(s.get("image", "")).startswith("streamserve") or s.get("build") == "."}


def bind_mounts(service: dict) -> dict[str, str]:
    """Container path -> host path (as written) of a service's bind mounts."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        if source.startswith("."):
            mounts[target] = source
    return mounts


def metrics_port() -> int:
    """The port the image's worker serves /metrics, /healthz and /readyz on."""
    cmd = re.search(r"^CMD (\[.*\])$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert cmd, "the Dockerfile has no CMD"
    argv = yaml.safe_load(cmd.group(1))
    return int(argv[argv.index("--metrics-port") + 1])


def test_two_workers_share_one_group_with_their_own_names_and_ports(compose):
    found = workers(compose)
    assert len(found) >= 2, f"want two workers, found {sorted(found)}"
    ids, groups, host_ports = set(), set(), set()
    for name, service in found.items():
        env = service["environment"]
        ids.add(env.get("STREAMSERVE_WORKER_ID"))
        groups.add(env.get("STREAMSERVE_APP_ID", KafkaSettings().app_id))
        Settings.from_env(env)  # every value parses as the worker would parse it
        for variable in env:
            assert variable in {v for v, _, _ in Settings.documentation()} or \
                not variable.startswith("STREAMSERVE_"), f"{name}: unknown setting {variable}"
        (published,) = service["ports"]
        host, container = published.rsplit(":", 1)[0], int(published.rsplit(":", 1)[1])
        assert container == metrics_port(), f"{name} publishes {container}, serves {metrics_port()}"
        host_ports.add(host)
        assert service["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert None not in ids and len(ids) == len(found), f"worker ids must differ: {ids}"
    assert len(groups) == 1, f"the workers must share one consumer group: {groups}"
    assert len(host_ports) == len(found), f"host ports must differ: {host_ports}"


def test_workers_reach_kafka_on_its_internal_listener(compose):
    kafka = compose["services"]["kafka"]["environment"]
    advertised = dict(item.split("://") for item in kafka["KAFKA_ADVERTISED_LISTENERS"].split(","))
    assert kafka["KAFKA_INTER_BROKER_LISTENER_NAME"] == "INTERNAL"
    for name, service in workers(compose).items():
        assert service["environment"]["STREAMSERVE_BROKER"] == advertised["INTERNAL"], name


def test_worker_healthchecks_ask_readyz_on_the_metrics_port(compose):
    for name, service in workers(compose).items():
        test = service["healthcheck"]["test"]
        command = " ".join(test[1:]) if test[0] in ("CMD", "CMD-SHELL") else shlex.join(test)
        assert f"http://localhost:{metrics_port()}/readyz" in command, name
        assert test[:3] == ["CMD", "python", "-c"], f"{name}: the image has python, not curl or wget"


def test_the_healthcheck_passes_only_while_the_worker_is_ready(compose):
    """The compose healthcheck's own command, against a worker's health endpoints served
    in-process on a free port: exit 0 on 200, non-zero on 503."""
    code = next(iter(workers(compose).values()))["healthcheck"]["test"][-1]
    ready = {"models": CheckResult(False, "models are loading")}
    httpd = Metrics().serve(0, HealthChecks({"loop": lambda: CheckResult(True, "beats")},
                                            {"models": lambda: ready["models"]}))
    probe = code.replace(f"localhost:{metrics_port()}", f"localhost:{httpd.server_port}")

    def healthcheck() -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([sys.executable, "-c", probe], capture_output=True, timeout=30, check=False)

    try:
        assert healthcheck().returncode != 0
        ready["models"] = CheckResult(True, "warm")
        result = healthcheck()
        assert result.returncode == 0, result.stderr.decode()
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_prometheus_mounts_its_config_and_the_rules_it_loads(compose, prometheus_config):
    service = compose["services"]["prometheus"]
    mounts = bind_mounts(service)
    config_flag = next(a for a in service["command"] if a.startswith("--config.file="))
    config_path = config_flag.split("=", 1)[1]
    assert mounts[config_path] == "./ops/prometheus/prometheus.yml"
    rules_at = [t for t, s in mounts.items() if s == "./ops/prometheus/streamserve-rules.yml"]
    assert rules_at, "the rules file is not mounted into Prometheus"
    patterns = prometheus_config["rule_files"]
    assert any(fnmatch.fnmatch(rules_at[0], p) for p in patterns), (
        f"the rules are mounted at {rules_at[0]}, prometheus.yml loads {patterns}")


def test_prometheus_scrapes_every_worker_as_job_streamserve(compose, prometheus_config):
    (job,) = [j for j in prometheus_config["scrape_configs"] if j["job_name"] == "streamserve"]
    targets = {t for c in job["static_configs"] for t in c["targets"]}
    expected = {f"{name}:{metrics_port()}" for name in workers(compose)}
    assert targets == expected
    assert job.get("metrics_path", "/metrics") == "/metrics"


def test_promtool_accepts_the_config_with_the_rules(prometheus_config, tmp_path):
    """`promtool check config` on prometheus.yml, its rule_files pointed at the repository's
    rules (in the container they are mounted there): the config and the rules it loads."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus)")
    rules = sorted(str(p) for p in (ROOT / "ops" / "prometheus").glob("*.yml")
                   if p.name != "prometheus.yml")
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump(prometheus_config | {"rule_files": rules}))
    checked = subprocess.run([promtool, "check", "config", str(config)], capture_output=True, check=False,
                             text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"{len(rules)} rule files found" in checked.stdout


def test_grafana_mounts_provisioning_and_the_dashboards_it_loads(compose):
    service = compose["services"]["grafana"]
    mounts = bind_mounts(service)
    assert mounts["/etc/grafana/provisioning"] == "./ops/grafana/provisioning"
    provisioning = ROOT / "ops" / "grafana" / "provisioning"
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "streamserve.yml").read_text())["providers"]
    dashboards_at = provider["options"]["path"]
    assert mounts[dashboards_at] == "./ops/grafana/dashboards"
    home = PurePosixPath(service["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert home.parent == PurePosixPath(dashboards_at)
    assert (ROOT / "ops" / "grafana" / "dashboards" / home.name).is_file()
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert source["type"] == "prometheus"
    host, port = source["url"].removeprefix("http://").split(":")
    assert host in compose["services"], f"the data source points at {host}, not a service"
    assert f"{port}:{port}" in " ".join(compose["services"][host]["ports"])


def test_every_file_a_service_mounts_is_in_the_repository(compose):
    for name, service in compose["services"].items():
        for target, source in bind_mounts(service).items():
            if source.startswith(MADE_BY_THE_USER):
                continue
            assert (ROOT / source).exists(), f"{name} mounts {source} at {target}: missing"
        if "build" in service:
            assert (ROOT / service["build"] / "Dockerfile").is_file(), name


def test_named_volumes_are_declared(compose):
    declared = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in declared, f"{name} uses volume {source}, not declared"
