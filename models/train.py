"""Train the built-in models and register them.

Each recipe is a stratified, seeded train/test split and an ``mlp`` fitted by
full-batch L-BFGS (scipy) on a jitted cross-entropy + L2 gradient: deterministic
for a seed, and fast on a laptop CPU because the data sets are small.
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize
from jax.flatten_util import ravel_pytree
from sklearn.model_selection import train_test_split

from models.architectures import architecture, init_mlp, mlp_logits
from models.datasets import load
from models.provenance import code_revision, input_schema, user
from pipeline.drift import reference_for_labels, references_for
from pipeline.errors import StreamserveError
from pipeline.registry import Manifest, ManifestDraft, Registry, lineage
from pipeline.schema import OutputSchema
from pipeline.signing import TrustedKeys, ensure_signing_key, newest_verified, register_signed

log = logging.getLogger(__name__)

# Standardisation is part of the model but fixed by the training data, not fitted.
_FIXED = ("x_mean", "x_scale")


class UnknownModelError(StreamserveError, LookupError):
    """No built-in training recipe has the requested name."""


@dataclass(frozen=True, slots=True)
class TrainingRecipe:
    """How to train one built-in model; the model is named after its data set."""

    dataset: str
    hidden: tuple[int, ...]
    l2: float
    max_iter: int
    test_size: float = 0.25


BUILTIN: dict[str, TrainingRecipe] = {
    "iris": TrainingRecipe("iris", hidden=(16,), l2=1e-3, max_iter=500),
    "breast_cancer": TrainingRecipe("breast_cancer", hidden=(32,), l2=1e-3, max_iter=500),
    # The benchmark model: iterations capped so training stays well under 30 s on 2 cores.
    "synthetic32": TrainingRecipe("synthetic32", hidden=(256, 256), l2=1e-4, max_iter=150),
}


@dataclass(frozen=True, slots=True, eq=False)
class TrainedModel:
    """A trained model ready for ``Registry.register(draft, params)``; ``seconds`` is wall time."""

    draft: ManifestDraft
    params: dict[str, np.ndarray]
    seconds: float


def train(name: str, seed: int = 0, sensitive: Iterable[str] = ()) -> TrainedModel:
    """Train the built-in model ``name``; the same seed gives the same parameters.

    ``sensitive`` names the features whose values must never leave a worker in clear
    (marked in the manifest's input schema; see ``pipeline.redaction``).
    """
    try:
        recipe = BUILTIN[name]
    except KeyError:
        raise UnknownModelError(f"no built-in model {name!r}; built-in: {', '.join(BUILTIN)}") from None
    started = time.perf_counter()
    data = load(recipe.dataset)
    X_train, X_test, y_train, y_test = train_test_split(
        data.X, data.y, test_size=recipe.test_size, stratify=data.y, random_state=seed
    )
    inputs = input_schema(data.features, X_train).marked(sensitive)  # a bad name fails before fitting
    scale = X_train.std(axis=0)
    sizes = (X_train.shape[1], *recipe.hidden, len(data.labels))
    params = init_mlp(seed, sizes, X_train.mean(axis=0), np.where(scale > 0, scale, 1.0))
    params = _fit(params, X_train, y_train, recipe)

    apply = architecture("mlp")
    train_probabilities = apply(params, X_train)
    metrics = {
        "train_accuracy": _accuracy(train_probabilities, y_train),
        "test_accuracy": _accuracy(apply(params, X_test), y_test),
    }
    # Drift is judged against what the model saw in training: its inputs, and the
    # classes it predicted for them.
    reference = {
        "features": [r.to_json() for r in references_for(X_train, data.features)],
        "prediction": reference_for_labels(np.asarray(train_probabilities).argmax(axis=1),
                                           len(data.labels)).to_json(),
    }
    draft = ManifestDraft(
        model=name,
        architecture="mlp",
        hyperparameters={"hidden": list(recipe.hidden), "l2": recipe.l2, "max_iter": recipe.max_iter,
                         "test_size": recipe.test_size, "optimizer": "L-BFGS-B"},
        inputs=inputs,
        outputs=OutputSchema(data.labels),
        metrics=metrics,
        lineage=lineage(X_train, y_train, code_revision=code_revision(), created_by=user(),
                        created_at=datetime.datetime.now(datetime.UTC), dataset=data.name,
                        n_train=len(y_train), n_test=len(y_test), seed=seed),
        reference=reference,
    )
    return TrainedModel(draft, params, time.perf_counter() - started)


def train_and_register(name: str, registry: Registry, seed: int = 0,
                       signing_key: Path | None = None, sensitive: Iterable[str] = ()) -> Manifest:
    """Train the built-in model ``name`` and register it as its next version, with the
    features ``sensitive`` names marked sensitive.

    With ``signing_key`` (a private key file, ``Settings.registry.signing_key``) the version is signed
    as it is registered; a missing key is created, with its ``.pub`` beside it. Without it
    the version is unsigned, and only served where STREAMSERVE_ALLOW_UNSIGNED is on.
    """
    # The key first: a bad key path fails before a minute of training, not after.
    key = ensure_signing_key(signing_key) if signing_key is not None else None
    trained = train(name, seed, sensitive)
    if key is None:
        return registry.register(trained.draft, trained.params)
    return register_signed(registry, trained.draft, trained.params, key)


def servable_version(name: str, registry: Registry, signing_key: Path, trusted: TrustedKeys) -> str:
    """The newest version of the built-in model ``name`` that verifies against ``trusted``
    (what a worker would serve); trained and signed with ``signing_key`` when none does."""
    version = newest_verified(registry, name, trusted)
    if version is not None:
        return version
    log.warning("training %s: no version in %s verifies against the trusted keys", name,
                registry.root)
    return train_and_register(name, registry, signing_key=signing_key).version


def _fit(params: dict[str, np.ndarray], X: np.ndarray, y: np.ndarray,
         recipe: TrainingRecipe) -> dict[str, np.ndarray]:
    fixed = {k: params[k] for k in _FIXED}
    theta0, unravel = ravel_pytree({k: v for k, v in params.items() if k not in fixed})

    @jax.jit
    def objective(theta: jax.Array, X: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
        def loss(theta: jax.Array) -> jax.Array:
            p = unravel(theta)
            logp = jax.nn.log_softmax(mlp_logits(p | fixed, X), axis=-1)
            nll = -jnp.take_along_axis(logp, y[:, None], axis=1).mean()
            return nll + recipe.l2 * sum(jnp.sum(w**2) for k, w in p.items() if k.startswith("w"))

        return jax.value_and_grad(loss)(theta)

    def fun(theta: np.ndarray) -> tuple[float, np.ndarray]:
        # scipy works in float64; the model and its gradient stay float32.
        value, grad = objective(theta.astype(np.float32), X, y)
        return float(value), np.asarray(grad, np.float64)

    result = scipy.optimize.minimize(fun, np.asarray(theta0, np.float64), jac=True, method="L-BFGS-B",
                                     options={"maxiter": recipe.max_iter})
    fitted = unravel(jnp.asarray(result.x, jnp.float32))
    return {k: np.asarray(v) for k, v in fitted.items()} | fixed


def _accuracy(probabilities: jax.Array, y: np.ndarray) -> float:
    return float(np.mean(np.asarray(probabilities).argmax(axis=1) == y))
