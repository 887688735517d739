"""What a converter makes of a model file: parameters for a streamserve architecture, and
the library's own predictor to check them against."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True, slots=True, eq=False)
class Converted:
    """A model in streamserve's terms.

    ``predict`` is the original library's own: float32 rows (n, n_features) to answers
    (n, width), class probabilities or a regressor's values, for the check at
    registration; a model of one tensor per row (``input_shape``, e.g. an image's) takes
    the tensor's numbers flat, row-major. ``kind`` ("classifier" or "regressor"),
    ``features`` and ``classes`` are what the file itself says (None when it does not say;
    a tensor model's ``features`` is its input's name).
    """

    format: str  # xgboost, lightgbm, sklearn, onnx, jax
    library: str  # the library and version that wrote or reads the file, e.g. "xgboost 3.2.0"
    architecture: str  # models.architectures: FAMILY:LINK
    params: dict[str, np.ndarray]
    n_features: int
    width: int  # answer columns: one per class, or one per target
    predict: Callable[[np.ndarray], np.ndarray]
    kind: str | None = None
    features: tuple[str, ...] | None = None
    classes: tuple[str, ...] | None = None
    details: dict[str, Any] = field(default_factory=dict)  # objective, trees, depth: for the manifest
    input_shape: tuple[int, ...] = ()  # a tensor per row: its shape; () for named numbers
