"""The data sets the built-in models train on: shipped with scikit-learn or generated, never downloaded."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from sklearn.datasets import load_breast_cancer, load_iris, make_classification

from pipeline.errors import StreamserveError


class UnknownDatasetError(StreamserveError, LookupError):
    """No data set has the requested name."""


@dataclass(frozen=True, slots=True, eq=False)
class Dataset:
    """A labelled table: ``X`` float32 (n, n_features), ``y`` int32 (n,) indexing ``labels``."""

    name: str
    features: tuple[str, ...]
    X: np.ndarray
    y: np.ndarray
    labels: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.X.dtype != np.float32 or self.X.shape[1:] != (len(self.features),):
            raise ValueError(f"{self.name}: X must be float32 (n, {len(self.features)}), "
                             f"got {self.X.dtype} {self.X.shape}")
        if self.y.dtype != np.int32 or self.y.shape != self.X.shape[:1]:
            raise ValueError(f"{self.name}: y must be int32 ({self.X.shape[0]},), "
                             f"got {self.y.dtype} {self.y.shape}")
        if set(np.unique(self.y)) != set(range(len(self.labels))):
            raise ValueError(f"{self.name}: y must use every class 0..{len(self.labels) - 1}")


def _iris() -> Dataset:
    bunch = load_iris()
    return Dataset(
        "iris",
        ("sepal_length", "sepal_width", "petal_length", "petal_width"),
        bunch.data.astype(np.float32),
        bunch.target.astype(np.int32),
        tuple(str(t) for t in bunch.target_names),
    )


def _breast_cancer() -> Dataset:
    bunch = load_breast_cancer()
    return Dataset(
        "breast_cancer",
        tuple(str(f).replace(" ", "_") for f in bunch.feature_names),
        bunch.data.astype(np.float32),
        bunch.target.astype(np.int32),
        tuple(str(t) for t in bunch.target_names),
    )


def _synthetic32() -> Dataset:
    # Sized for a throughput benchmark model, not for accuracy: enough rows to train a
    # 32 -> 256 -> 256 -> 10 network in seconds, fixed random_state so it never changes.
    X, y = make_classification(
        n_samples=8000, n_features=32, n_informative=20, n_redundant=6, n_classes=10,
        n_clusters_per_class=2, class_sep=1.5, random_state=32,
    )
    return Dataset(
        "synthetic32",
        tuple(f"f{i:02d}" for i in range(32)),
        X.astype(np.float32),
        y.astype(np.int32),
        tuple(f"class_{i}" for i in range(10)),
    )


DATASETS: dict[str, Callable[[], Dataset]] = {
    "iris": _iris,
    "breast_cancer": _breast_cancer,
    "synthetic32": _synthetic32,
}


def load(name: str) -> Dataset:
    try:
        loader = DATASETS[name]
    except KeyError:
        raise UnknownDatasetError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}") from None
    return loader()
