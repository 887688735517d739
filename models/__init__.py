"""JAX models: architectures looked up by name, the built-in training recipes, and serving.

The names below load their module on first use: a worker needs only ``models.runtime``,
and the training side (scikit-learn's datasets, SciPy's optimisers) costs seconds to
import in every worker start.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "ARCHITECTURES": "architectures", "Apply": "architectures", "UnknownArchitectureError": "architectures",
    "architecture": "architectures", "mlp": "architectures",
    "Dataset": "datasets", "UnknownDatasetError": "datasets", "load": "datasets",
    "ServingModel": "runtime",
    "BUILTIN": "train", "TrainedModel": "train", "TrainingRecipe": "train", "UnknownModelError": "train",
    "train_and_register": "train",
}
# ``models.train`` is the training module; its ``train`` function is ``models.train.train``.

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'models' has no attribute {name!r}")
    return getattr(importlib.import_module(f"models.{_HOMES[name]}"), name)
