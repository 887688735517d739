"""The fleet as ``streamserve status`` shows it: every model with its deployment, figures
and drift, assembled from what the shell read."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from pipeline.routing import DeploymentSpec
from pipeline.status.drift import DriftSummary, FeatureVerdict, summarize_drift
from pipeline.status.lag import GroupLag
from pipeline.status.metrics import NO_MODEL, FleetMetrics, ModelMetrics


@dataclass(frozen=True, slots=True)
class ModelStatus:
    """One model in the fleet. ``spec`` is its deployment on the control topic; without
    one, workers serve ``default_version`` (its newest version that verifies, when the
    registry could be read here). ``metrics`` is None without a metrics source."""

    model: str
    spec: DeploymentSpec | None
    default_version: str | None
    metrics: ModelMetrics | None
    drift: tuple[DriftSummary, ...]


@dataclass(frozen=True, slots=True)
class FleetStatus:
    """Everything ``streamserve status`` shows, as of ``taken_at`` (seconds since the epoch)."""

    taken_at: float
    broker: str
    group: str
    models: tuple[ModelStatus, ...]
    unrouted: ModelMetrics | None  # dead letters naming no served model
    metrics: FleetMetrics | None  # None: no metrics source given
    lag: GroupLag | None  # None: the requests topic does not exist yet
    problems: tuple[str, ...] = field(default=())
    metrics_wanted: bool = False  # a metrics source was given (``metrics`` None: it failed)


def assemble(*, taken_at: float, broker: str, group: str, specs: Mapping[str, DeploymentSpec],
             defaults: Mapping[str, str | None], metrics: FleetMetrics | None,
             verdicts: Iterable[FeatureVerdict], lag: GroupLag | None,
             problems: Sequence[str] = (), metrics_wanted: bool | None = None) -> FleetStatus:
    """The fleet: every model named by a spec, the registry (``defaults``: model to the
    version served without a spec), the metrics or a drift report, sorted by name.

    Drift shows the versions a model's spec names (the default version without a spec);
    with neither, the newest version reported.
    """
    summaries = summarize_drift(verdicts)
    by_model: dict[str, list[DriftSummary]] = defaultdict(list)
    for summary in summaries:
        by_model[summary.model].append(summary)
    figures = {} if metrics is None else metrics.models
    names = set(specs) | set(defaults) | set(by_model) | (set(figures) - {NO_MODEL})
    models = []
    for model in sorted(names):
        spec, default = specs.get(model), defaults.get(model)
        reported = by_model.get(model, [])
        if spec is not None:
            wanted = spec.versions()
        elif default is not None:
            wanted = frozenset({default})
        else:
            wanted = frozenset({reported[-1].version}) if reported else frozenset()
        models.append(ModelStatus(
            model, spec, default,
            None if metrics is None else figures.get(model, ModelMetrics(model)),
            tuple(s for s in reported if s.version in wanted)))
    unrouted = figures.get(NO_MODEL)
    all_problems = tuple(problems) + (() if metrics is None else metrics.problems)
    return FleetStatus(taken_at, broker, group, tuple(models), unrouted, metrics, lag, all_problems,
                       metrics is not None if metrics_wanted is None else metrics_wanted)
