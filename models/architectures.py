"""Model code, looked up by the architecture name a manifest records; parameters are data.

An architecture is a pure ``apply(params, x)``: ``params`` a dict of arrays, ``x``
float32 of shape (batch, n_features), the result float32 of shape (batch, columns): a
classifier's class probabilities, or a regressor's values (``pipeline.schema.OutputSchema``).
Rows are independent, so padding rows never change real ones.

Besides the built-in ``mlp``, models converted from other libraries (``models.formats``)
are named ``FAMILY:LINK``: a family computes margins (``trees``: tree ensembles,
``linear``: a matrix product), a link turns them into answers (``softmax``, ``sigmoid``
for one margin of a binary classifier, ``exp`` for a log-link regressor, ``none`` when
the margins are the answers already: a regressor's values, or a random forest's averaged
class shares).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from models import exported, linear, trees
from pipeline.errors import StreamserveError

Params = Mapping[str, jax.Array | np.ndarray]
Apply = Callable[[Params, jax.Array], jax.Array]


class UnknownArchitectureError(StreamserveError, LookupError):
    """A manifest names an architecture this streamserve does not have."""


def init_mlp(
    seed: int, sizes: Sequence[int], x_mean: np.ndarray, x_scale: np.ndarray
) -> dict[str, np.ndarray]:
    """Parameters for ``mlp``: sizes = (n_features, *hidden, n_classes).

    Weights are He-normal, biases zero. ``x_mean`` and ``x_scale`` (n_features,)
    standardise the input inside the model, so callers send raw feature values.
    """
    rng = np.random.default_rng(seed)
    params = {"x_mean": np.asarray(x_mean, np.float32), "x_scale": np.asarray(x_scale, np.float32)}
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        params[f"w{i}"] = (rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        params[f"b{i}"] = np.zeros(fan_out, np.float32)
    return params


def mlp_logits(params: Params, x: jax.Array) -> jax.Array:
    """(batch, n_features) -> (batch, n_classes) unnormalised log-probabilities."""
    h = (x - params["x_mean"]) / params["x_scale"]
    # The dict's keys are static under jit, so the layer count is known when tracing.
    n_layers = sum(1 for name in params if name.startswith("w"))
    for i in range(n_layers):
        h = h @ params[f"w{i}"] + params[f"b{i}"]
        if i < n_layers - 1:
            h = jax.nn.relu(h)
    return h


def mlp(params: Params, x: jax.Array) -> jax.Array:
    """(batch, n_features) -> (batch, n_classes) class probabilities."""
    return jax.nn.softmax(mlp_logits(params, x), axis=-1)


def _binary(margin: jax.Array) -> jax.Array:
    """(batch, 1) margins of the positive class -> (batch, 2) probabilities."""
    p = jax.nn.sigmoid(margin)
    return jnp.concatenate([1 - p, p], axis=-1)


FAMILIES: dict[str, Apply] = {"trees": trees.margins, "linear": linear.margins}
LINKS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "softmax": lambda m: jax.nn.softmax(m, axis=-1), "sigmoid": _binary, "none": lambda m: m,
    "exp": jnp.exp}  # exp: a Poisson, gamma or Tweedie regressor's log-link margins
ARCHITECTURES: dict[str, Apply] = {"mlp": mlp}


def architecture(name: str) -> Apply:
    """The ``apply`` function registered under ``name`` (``mlp``, or ``FAMILY:LINK``)."""
    if name in ARCHITECTURES:
        return ARCHITECTURES[name]
    family, _, link = name.partition(":")
    if family not in FAMILIES or link not in LINKS:
        known = [*ARCHITECTURES, *(f"{f}:{k}" for f in FAMILIES for k in LINKS)]
        raise UnknownArchitectureError(
            f"unknown architecture {name!r}; known: {', '.join(known)}. The model was "
            f"registered by a streamserve with more architectures: upgrade streamserve")
    margins, to_probabilities = FAMILIES[family], LINKS[link]
    return lambda params, x: to_probabilities(margins(params, x))


def prepared(name: str, params: Mapping[str, np.ndarray]) -> tuple[Apply, dict[str, np.ndarray]]:
    """The apply function of a version of architecture ``name``, and the arrays it takes: a
    ``jax.export`` function is deserialized from its own parameters (``models.exported``)."""
    if name == exported.ARCHITECTURE:
        return exported.split(params)
    return architecture(name), dict(params)
