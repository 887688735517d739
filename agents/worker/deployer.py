"""The worker side of the control plane: load, verify and warm versions before they serve.

Every worker follows the control topic; for a new spec it loads the versions it lacks in
a loader thread (verified against the trusted keys, every padding bucket compiled), runs
each bucket once in the model thread, and only then swaps the deployment the server
uses, so no request waits on a compile or a cold first run, and a version that fails to
load never takes traffic: the previous spec keeps serving, and the refusal is logged,
counted and audited.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

import mode

from agents.kafka.audit import AuditTrail
from agents.kafka.control import change, read_specs, spec_of
from agents.kafka.read import read_topic
from agents.worker.deployment import Deployment
from agents.worker.inference import InferenceService
from agents.worker.metrics import Metrics
from models.runtime import ServingModel
from pipeline.batching import buckets_for
from pipeline.canary import CanaryVerdict
from pipeline.config import Settings
from pipeline.registry import Registry
from pipeline.routing import DeploymentSpec, promote, rollback
from pipeline.schema import InputSchema
from pipeline.signing import TrustedKeys, VerifiedVersion, verify_version

log = logging.getLogger(__name__)


class Deployer:
    """Loads what specs need and installs them into the worker's ``InferenceService``."""

    def __init__(self, settings: Settings, inference: InferenceService, metrics: Metrics) -> None:
        self._settings = settings
        self._inference = inference
        self._metrics = metrics
        self._registry = Registry(settings.registry.root)
        self._buckets = buckets_for(settings.batching.max_batch)
        self._trail = AuditTrail(settings, source="worker")
        # Compiling happens here, beside the model thread, so serving goes on meanwhile.
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="loader")

    async def start(self) -> None:
        """The first deployment: every spec on the control topic (a spec that cannot load
        falls back to its stable version alone), and for each model without one, its
        newest registered version that loads. A model with nothing that loads is not
        served; every load and refusal is audited (and every refusal logged and counted)."""
        specs = await read_specs(self._settings)
        candidates = {model: [spec, DeploymentSpec(model, spec.stable, revision=spec.revision)]
                      for model, spec in specs.items()}
        for model in self._registry.models():
            candidates.setdefault(model, [DeploymentSpec(model, version) for version in
                                          reversed(self._registry.versions(model))])
        models: dict[tuple[str, str], ServingModel] = {}
        installed: dict[str, DeploymentSpec] = {}
        for model, tries in candidates.items():
            for candidate in tries:
                loaded = await self._load(candidate, models, None)
                if loaded is not None:
                    models.update(loaded)
                    installed[model] = candidate
                    break
        self._inference.install(Deployment(models, installed))
        await self._trail.close()  # the start-up's event loop ends here, the serving one follows

    async def close(self) -> None:
        """Write the audit entries under way, then stop the trail's producer."""
        await self._trail.close()

    async def apply(self, spec: DeploymentSpec) -> bool:
        """Install ``spec`` once its versions are loaded; False (and audited) when one fails."""
        deployment = self._inference.deployment
        current = deployment.specs.get(spec.model)
        if not spec.supersedes(current):
            return True  # already applied (the follower reads the topic from the start)
        loaded = await self._load(spec, deployment.models, current)
        if loaded is None:
            self._metrics.control_changes.labels(spec.model, "refused").inc()
            return False
        deployment = self._inference.deployment  # it may have moved on while loading
        specs = {**deployment.specs, spec.model: spec}
        needed = {(model, v) for model, s in specs.items() for v in s.versions()}
        models = {key: m for key, m in {**deployment.models, **loaded}.items() if key in needed}
        self._inference.install(Deployment(models, specs))
        self._metrics.control_changes.labels(spec.model, "applied").inc()
        log.info("serving %s", spec.describe())
        return True

    async def _load(self, spec: DeploymentSpec, have: Mapping[tuple[str, str], ServingModel],
                    current: DeploymentSpec | None) -> dict[tuple[str, str], ServingModel] | None:
        """The versions of ``spec`` not in ``have``, verified and compiled; None if one fails."""
        loaded, verified = {}, {}
        for version in sorted(spec.versions()):
            key = (spec.model, version)
            if key in have:
                continue
            try:
                loaded[key], verified[key] = await asyncio.get_running_loop().run_in_executor(
                    self._loader, self._load_version, spec.model, version)
            # Whatever stops a version loading (a bad signature, an architecture this
            # release lacks, a compile that fails or runs out of memory) refuses the spec:
            # the previous one keeps serving, and no worker crash-loops on it.
            except Exception as e:  # noqa: BLE001
                self._refuse(spec, version, current, e)
                return None
        everything = {**have, **loaded}
        stable = everything[(spec.model, spec.stable)].manifest
        for version in sorted(spec.versions()):
            theirs = everything[(spec.model, version)].manifest
            if (theirs.inputs.names, theirs.inputs.shape) != (stable.inputs.names, stable.inputs.shape):
                self._refuse(spec, version, current, ValueError(
                    f"{spec.model}:{version} reads {_reads(theirs.inputs)}, but stable version "
                    f"{spec.stable} reads {_reads(stable.inputs)}: one request cannot go to both"))
                return None
            if theirs.outputs.kind != stable.outputs.kind:
                self._refuse(spec, version, current, ValueError(
                    f"{spec.model}:{version} is a {theirs.outputs.kind}, but stable version "
                    f"{spec.stable} is a {stable.outputs.kind}: a model's clients read one kind "
                    f"of answer; register it under another model name"))
                return None
        try:
            await self._inference.warm(list(loaded.values()))
        except Exception as e:  # noqa: BLE001 - a version that cannot run never serves
            self._refuse(spec, ", ".join(v for _, v in loaded), current, e)
            return None
        for check in verified.values():
            signature = "verified" if check.problem is None else \
                f"{check.problem.reason}, let through by STREAMSERVE_ALLOW_UNSIGNED"
            self._trail.note(action="load", subject=spec.model, details={
                "version": check.version, "key_id": check.key_id, "signature": signature})
        return loaded

    def _refuse(self, spec: DeploymentSpec, version: str, current: DeploymentSpec | None,
                error: Exception) -> None:
        """Say why ``spec`` cannot serve: the log, a metric and an audit entry."""
        reason = getattr(error, "reason", type(error).__name__)
        log.error("refused %s, %s keeps serving: %s", spec.describe(),
                  "nothing" if current is None else current.describe(), error)
        self._metrics.model_refusals.labels(spec.model, version, str(reason)).inc()
        self._trail.note(action="load_refused", subject=spec.model, reason=str(error),
                         details={"version": version, "error": str(reason)},
                         before=None if current is None else current.to_json(),
                         after=spec.to_json())

    def _load_version(self, model: str, version: str) -> tuple[ServingModel, VerifiedVersion]:
        s = self._settings
        verified = verify_version(self._registry, model, version, TrustedKeys.load(s.registry.trusted_keys),
                                  s.registry.allow_unsigned)
        if verified.problem:
            log.warning("loading %s:%s although %s (STREAMSERVE_ALLOW_UNSIGNED is on)", model,
                        version, verified.problem)
        # The parameters served are the bytes that were verified, read once.
        served = ServingModel(verified.manifest, verified.params(), self._buckets)
        self._metrics.jit_compiles.labels(model, version).inc(served.compiles)
        return served, verified

    def on_canary_verdict(self, model: str, revision: int, verdict: CanaryVerdict) -> None:
        """Roll the canary back, or promote it, as the judge decided (audited with its reason)."""
        transition = rollback if verdict.action == "rollback" else promote
        log.warning("canary of %s: %s (%s)", model, verdict.action, verdict.reason)
        task = asyncio.get_running_loop().create_task(change(
            self._settings, model, transition, action=f"auto_{verdict.action}",
            source="canary-analysis", reason=verdict.reason,
            expected_revision=revision))
        _background.add(task)
        task.add_done_callback(_background.discard)
        task.add_done_callback(lambda done: self._undecided(model, verdict, done))

    def _undecided(self, model: str, verdict: CanaryVerdict, done: asyncio.Task) -> None:
        """A decision the worker could not write (e.g. its principal may not write the
        control topic) is an error for the log and an entry for the audit trail, so that
        an admin acts on it; serving goes on with the canary as it is."""
        if done.cancelled() or done.exception() is None:
            return
        error = done.exception()
        log.error("canary of %s: the automatic %s could not be written (%s); an admin must "
                  "run `streamserve %s %s`, or let workers decide with `streamserve acl apply "
                  "--workers-decide-canaries`", model, verdict.action, error, verdict.action, model)
        self._trail.note(action=f"auto_{verdict.action}_refused", subject=model,
                         reason=f"{verdict.reason}; not written: {error}")


_background: set[asyncio.Task] = set()  # tasks kept alive until done


class ControlFollower(mode.Service):
    """Follows the control topic and applies each new spec, live."""

    def __init__(self, settings: Settings, deployer: Deployer, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self._settings = settings
        self._deployer = deployer

    async def on_stop(self) -> None:
        await self._deployer.close()

    @mode.Service.task
    async def _follow(self) -> None:
        async for message in read_topic(self._settings, self._settings.topics.control,
                                        from_beginning=True):
            if self.should_stop or (spec := spec_of(message.value, message.offset)) is None:
                continue
            await self._deployer.apply(spec)


def _reads(inputs: InputSchema) -> str:
    if inputs.tensor is not None:
        return f"tensor {inputs.tensor.name!r} of shape {list(inputs.tensor.shape)}"
    return f"features {list(inputs.names)}"
