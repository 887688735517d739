"""What a worker serves at one moment, and everything a batch reads of it.

``Deployment`` is the loaded versions and each model's spec (``agents.worker.deployer``
builds it); ``Serving`` adds what the inference step derives from it and the settings:
the catalog requests are checked against and its decoder, each model's policy (its
redaction marked with the sensitive features of its loaded versions), the dead-letter
redactor, the breakers and the drift coders. The inference step swaps a new ``Serving`` in whole, and each batch
keeps the one it started with.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from models.runtime import ServingModel
from pipeline.breaker import CircuitBreaker
from pipeline.catalog import Catalog
from pipeline.config import ModelPolicy, Settings
from pipeline.drift import MatrixCounter, watched_references
from pipeline.fast_decode import FastDecoder
from pipeline.redaction import Redactor
from pipeline.routing import DeploymentSpec


@dataclass(frozen=True, slots=True)
class Deployment:
    """What a worker serves at one moment: the loaded versions and each model's spec."""

    models: Mapping[tuple[str, str], ServingModel]
    specs: Mapping[str, DeploymentSpec]

    @property
    def catalog(self) -> Catalog:
        return Catalog({model: {v: served.manifest.inputs for (m, v), served in self.models.items()
                                if m == model} for model in self.specs}, self.specs)


@dataclass(frozen=True, slots=True)
class Serving:
    """All a batch reads of what is installed: a batch works on the one it started with,
    even when a spec changes while its models run."""

    deployment: Deployment
    catalog: Catalog
    decoder: FastDecoder  # the catalog's, with the settings' limits
    policies: Mapping[str, ModelPolicy]  # per served model
    dead_letter_redactor: Redactor  # every model's rules: a dead letter may name any model
    breakers: Mapping[tuple[str, str], CircuitBreaker]
    coders: Mapping[tuple[str, str], MatrixCounter]  # versions with drift references

    @classmethod
    def of(cls, deployment: Deployment, settings: Settings, before: Serving | None = None) -> Serving:
        """``deployment`` made ready to serve; breakers and drift coders of the versions
        ``before`` served live on."""
        s = settings
        # A loaded version's sensitive features are redacted whatever the rules say (they
        # may only be stricter); a model's marks are those of all its loaded versions.
        marks: dict[str, set[str]] = {}
        for (model, _), served in deployment.models.items():
            marks.setdefault(model, set()).update(served.manifest.inputs.sensitive)
        policies = {}
        for model in deployment.specs:
            policy = s.policy(model)
            policies[model] = replace(policy, redactor=policy.redactor.marking(marks.get(model, ())))
        # Dead letters may name no model, or one not served here (refused, not deployed
        # yet, registered since): hide the fields of every model the rules name.
        redactor = s.policy("").redactor
        for policy in [*policies.values(), *map(s.policy, s.configured_models)]:
            redactor = redactor.merged(policy.redactor)
        breakers = before.breakers if before is not None else {}
        coders = before.coders if before is not None else {}
        catalog = deployment.catalog
        return cls(
            deployment, catalog,
            FastDecoder(catalog, s.admission.max_message_bytes, s.admission.max_features),
            policies, redactor,
            breakers={key: breakers.get(key) or CircuitBreaker(s.breaker.config)
                      for key in deployment.models},
            # Drift is coded for versions trained with reference statistics (the drift
            # agent keeps the windows).
            coders={key: coders.get(key) or MatrixCounter(
                        watched_references(served.manifest.reference))
                    for key, served in deployment.models.items()
                    if s.drift.enabled and served.manifest.reference})


def roles(spec: DeploymentSpec) -> list[tuple[str, str]]:
    """Each version ``spec`` names, with its role: stable, canary, shadow or fallback."""
    roles = [(spec.stable, "stable")]
    if spec.canary is not None:
        roles.append((spec.canary.version, "canary"))
    roles += [(v, "shadow") for v in spec.shadows]
    if spec.fallback is not None:
        roles.append((spec.fallback, "fallback"))
    return roles
