"""ops/kubernetes: the manifests are valid Kubernetes objects and agree with each other
and with the worker.

Core objects are validated against the Kubernetes API's JSON schemas (kubernetes-validate
bundles them, so this runs offline), strictly: an unknown or misspelt field fails. KEDA's
ScaledObject is a custom resource without a bundled schema: its fields are checked here by
hand. The kustomize overlays are built with `kubectl kustomize` where kubectl is installed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from pipeline.config import Settings, Topics

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "ops" / "kubernetes"
BASE = KUBE / "base"
OVERLAYS = sorted(p.parent for p in (KUBE / "overlays").glob("*/kustomization.yaml"))
# The oldest Kubernetes still in providers' extended support, and the newest schema bundled.
VERSIONS = ("1.29.0", kubernetes_validate.utils.latest_version())
# The kafka trigger's metadata (KEDA 2.x docs, "Apache Kafka" scaler).
KEDA_KAFKA_KEYS = frozenset({
    "bootstrapServers", "consumerGroup", "topic", "lagThreshold", "activationLagThreshold",
    "offsetResetPolicy", "allowIdleConsumers", "scaleToZeroOnInvalidOffset",
    "excludePersistentLag", "limitToPartitionsWithLag", "partitionLimitation", "version",
    "sasl", "tls", "unsafeSsl", "ensureEvenDistributionOfPartitions"})
KUBECTL = shutil.which("kubectl")


def load(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def kustomize(folder: Path) -> list[dict]:
    """`kubectl kustomize folder`: the objects an apply -k would send."""
    if KUBECTL is None:
        pytest.skip("kubectl is not installed: the kustomize build is not checked here")
    built = subprocess.run([KUBECTL, "kustomize", str(folder)], capture_output=True, text=True,
                           timeout=60, check=False)
    assert built.returncode == 0, built.stderr
    return [d for d in yaml.safe_load_all(built.stdout) if d]


def base_objects() -> list[dict]:
    """The base's resources as written, in kustomization order (no kubectl needed)."""
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    return [d for name in kustomization["resources"] for d in load(BASE / name)]


def one(objects: list[dict], kind: str) -> dict:
    (found,) = [o for o in objects if o["kind"] == kind]
    return found


def worker_container(objects: list[dict]) -> dict:
    (container,) = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def validate(objects: list[dict]) -> None:
    problems = []
    for o in objects:
        if o["apiVersion"].startswith("keda.sh/"):
            continue
        for version in VERSIONS:
            try:
                kubernetes_validate.validate(o, version, strict=True)
            except jsonschema.ValidationError as e:  # kubernetes-validate's too
                problems.append(f"{o['kind']} {o['metadata']['name']} (Kubernetes {version}): "
                                f"{e.message} at {'.'.join(map(str, e.path))}")
    assert not problems, "\n".join(problems)


def test_every_base_file_is_listed_in_its_kustomization():
    listed = set(yaml.safe_load((BASE / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in BASE.glob("*.yaml")} - {"kustomization.yaml"}


def test_base_objects_match_the_kubernetes_schemas():
    validate(base_objects())


@pytest.mark.parametrize("folder", [BASE, *OVERLAYS], ids=lambda p: str(p.relative_to(KUBE)))
def test_kustomize_builds_objects_that_match_the_schemas(folder: Path):
    objects = kustomize(folder)
    validate(objects)
    assert {o["metadata"].get("namespace") for o in objects if o["kind"] != "Namespace"} == {"streamserve"}


def test_the_configmap_holds_valid_settings():
    data = one(base_objects(), "ConfigMap")["data"]
    known = {variable for variable, _, _ in Settings.documentation()}
    for variable in data:
        assert not variable.startswith("STREAMSERVE_") or variable in known, f"unknown setting {variable}"
    Settings.from_env(data)  # parses and checks every value as a worker does at start
    assert "STREAMSERVE_REDACTION_KEY" not in data, "a secret belongs in the Secret"


def test_the_worker_probes_health_on_its_metrics_port():
    container = worker_container(base_objects())
    args = container["args"]
    port = int(args[args.index("--metrics-port") + 1])
    (named,) = [p for p in container["ports"] if p["name"] == "metrics"]
    assert named["containerPort"] == port
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"


def test_the_worker_is_named_after_its_pod_and_reads_config_and_secret():
    objects = base_objects()
    container = worker_container(objects)
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    env = {e["name"]: e for e in container["env"]}
    assert env["STREAMSERVE_WORKER_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert container["envFrom"] == [{"configMapRef": {"name": one(objects, "ConfigMap")["metadata"]["name"]}}]
    secret_file = Path(env["STREAMSERVE_REDACTION_KEY_FILE"]["value"])
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "secret" in volumes[mounts[str(secret_file.parent)]]
    resources = container["resources"]
    assert resources["requests"]["cpu"] and resources["requests"]["memory"] and resources["limits"]["memory"]
    # A worker still starting finishes its start (30 s at most) before it drains on SIGTERM.
    assert pod["terminationGracePeriodSeconds"] >= 30


def test_selectors_find_the_worker_pods():
    objects = base_objects()
    deployment = one(objects, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selectors = {"Deployment": deployment["spec"]["selector"]["matchLabels"],
                 "PodDisruptionBudget": one(objects, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
                 "Service": one(objects, "Service")["spec"]["selector"]}
    for kind, selector in selectors.items():
        assert selector.items() <= pod_labels.items(), f"the {kind}'s selector misses the pods"
    (port,) = one(objects, "Service")["spec"]["ports"]
    assert port["targetPort"] == "metrics"


def test_keda_scales_the_deployment_on_the_workers_group_lag_up_to_the_partitions():
    objects = base_objects()
    scaled = one(objects, "ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    assert set(spec) <= {"scaleTargetRef", "pollingInterval", "cooldownPeriod", "idleReplicaCount",
                         "initialCooldownPeriod", "minReplicaCount", "maxReplicaCount", "fallback",
                         "advanced", "triggers"}, "a field KEDA's ScaledObject does not have"
    deployment = one(objects, "Deployment")
    target = spec["scaleTargetRef"]
    assert target["name"] == deployment["metadata"]["name"]
    assert target.get("kind", "Deployment") == "Deployment"
    assert target.get("apiVersion", "apps/v1") == "apps/v1"

    settings = Settings.from_env(one(objects, "ConfigMap")["data"])
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] <= settings.kafka.request_partitions, (
        "more workers than partitions sit idle: maxReplicaCount must not exceed "
        "STREAMSERVE_REQUEST_PARTITIONS")

    (trigger,) = spec["triggers"]
    assert trigger["type"] == "kafka"
    metadata = trigger["metadata"]
    assert set(metadata) <= KEDA_KAFKA_KEYS, f"unknown kafka trigger keys {set(metadata) - KEDA_KAFKA_KEYS}"
    assert all(isinstance(v, str) for v in metadata.values()), "KEDA trigger metadata values are strings"
    assert metadata["bootstrapServers"] == settings.kafka.broker
    assert metadata["consumerGroup"] == settings.kafka.app_id
    assert metadata["topic"] == Topics(settings.kafka.topic_prefix).requests
    assert int(metadata["lagThreshold"]) > 0
    assert metadata.get("allowIdleConsumers", "false") == "false"
    behavior = spec.get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get("behavior")
    if behavior:  # the HPA's own schema
        kubernetes_validate.validate({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
                                      "metadata": {"name": "x"},
                                      "spec": {"scaleTargetRef": target | {"kind": "Deployment"},
                                               "maxReplicas": spec["maxReplicaCount"],
                                               "behavior": behavior}},
                                     VERSIONS[-1], strict=True)


def test_the_gpu_overlay_runs_the_gpu_image_on_one_gpu_per_pod():
    objects = kustomize(KUBE / "overlays" / "gpu")
    container = worker_container(objects)
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert container["image"].endswith(":gpu")
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"], "GPU pods must land on GPU nodes"
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    assert one(objects, "ConfigMap")["data"]["JAX_PLATFORMS"] == "cuda"
    # The image the overlay names is the Dockerfile's with the gpu extra.
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG EXTRAS=", dockerfile, re.MULTILINE) and "${EXTRAS:+[$EXTRAS]}" in dockerfile
