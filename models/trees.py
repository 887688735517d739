"""Tree ensembles as arrays, every tree of a batch's rows walked at once by a jitted loop.

The converters (``models.formats``) turn XGBoost, LightGBM and scikit-learn trees into
these parameters, all trees padded to the same node count ``N``:

* ``feature`` (T, N) int32, ``threshold`` (T, N) float32: a row goes to ``left`` when
  its feature value is ``<=`` the threshold, else to ``right`` (T, N) int32. A library
  that splits on ``<`` (XGBoost) has its thresholds moved to the float32 just below,
  and one that compares in float64 (LightGBM, scikit-learn) to the float32 at or below,
  so every float32 input takes the branch it takes in the library;
* ``missing_left`` (T, N) bool: where a missing value (NaN) goes. Requests never carry
  NaN (decoding refuses it), but a model is its library's model, missing values included;
* ``leaf`` (T, N, K) float32: what a leaf adds to each of the K outputs (zero at inner
  nodes); ``base`` (K,): the starting margins;
* ``depth`` (D,): its length is the deepest tree's depth, known when tracing.

A leaf's children are itself, so ``D`` steps leave every row at its leaf in every tree.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp


def margins(params: Mapping[str, jax.Array], x: jax.Array) -> jax.Array:
    """(batch, features) -> (batch, K): ``base`` plus each tree's leaf value."""
    feature, threshold = params["feature"], params["threshold"]
    left, right, missing_left = params["left"], params["right"], params["missing_left"]
    n_trees, n_nodes = feature.shape
    # Flat node ids (tree * N + node) let one gather read every tree's node at once.
    first = jnp.arange(n_trees, dtype=jnp.int32) * n_nodes
    node = jnp.broadcast_to(first, (x.shape[0], n_trees))
    feature, threshold, missing_left = (a.reshape(-1) for a in (feature, threshold, missing_left))
    left, right = ((a + first[:, None]).reshape(-1) for a in (left, right))
    for _ in range(params["depth"].shape[0]):
        value = jnp.take_along_axis(x, feature[node], axis=1)
        go_left = jnp.where(jnp.isnan(value), missing_left[node], value <= threshold[node])
        node = jnp.where(go_left, left[node], right[node])
    leaf = params["leaf"].reshape(n_trees * n_nodes, -1)
    return params["base"] + leaf[node].sum(axis=1)
