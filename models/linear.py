"""Linear models as a matrix product: scikit-learn's linear and logistic regressions, with
any scaler before them folded into the weights by the converter (``models.formats``).

Parameters: ``w`` (features, K) and ``b`` (K,) float32.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax


def margins(params: Mapping[str, jax.Array], x: jax.Array) -> jax.Array:
    """(batch, features) -> (batch, K)."""
    return x @ params["w"] + params["b"]
