"""Trees of any library as the arrays ``models.trees`` walks: one table for the ensemble.

A converter describes each tree in its own node numbering (``Tree``); ``table`` pads
them to one node count, turns leaves into nodes that point to themselves, and moves
thresholds to float32 so that every float32 input takes the library's branch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from models.formats.errors import ConversionError


@dataclass(frozen=True, slots=True)
class Tree:
    """One tree, in the numbering of its library; node 0 is the root.

    ``left``/``right`` are -1 at leaves; ``leaf`` (nodes, K) is what each leaf adds to
    each output (rows of inner nodes are ignored). ``threshold`` is the library's own
    value, compared in float64 (``strict``: the library goes left on ``<``, in float32).
    """

    feature: np.ndarray
    threshold: np.ndarray
    left: np.ndarray
    right: np.ndarray
    missing_left: np.ndarray
    leaf: np.ndarray


def table(trees: Sequence[Tree], n_outputs: int, *, strict: bool = False) -> dict[str, np.ndarray]:
    """The parameters of ``models.trees.margins`` (with a zero ``base``) for ``trees``."""
    if not trees:
        raise ConversionError("the model has no trees: train it before registering it")
    n_nodes = max(len(t.feature) for t in trees)
    shape = (len(trees), n_nodes)
    nodes = np.arange(n_nodes, dtype=np.int32)
    feature, threshold = np.zeros(shape, np.int32), np.zeros(shape, np.float32)
    left, right = np.tile(nodes, (len(trees), 1)), np.tile(nodes, (len(trees), 1))
    missing_left = np.zeros(shape, bool)
    leaf = np.zeros((*shape, n_outputs), np.float32)
    depth = 0
    for i, tree in enumerate(trees):
        n = len(tree.feature)
        inner = tree.left >= 0
        feature[i, :n] = np.where(inner, tree.feature, 0)
        threshold[i, :n] = np.where(inner, _float32_at_or_below(tree.threshold, strict), 0)
        left[i, :n] = np.where(inner, tree.left, nodes[:n])
        right[i, :n] = np.where(inner, tree.right, nodes[:n])
        missing_left[i, :n] = tree.missing_left & inner
        leaf[i, :n] = np.where(inner[:, None], 0, tree.leaf)
        depth = max(depth, _depth(tree.left, tree.right))
    return {"feature": feature, "threshold": threshold, "left": left, "right": right,
            "missing_left": missing_left, "leaf": leaf, "base": np.zeros(n_outputs, np.float32),
            "depth": np.zeros(depth, np.int8)}


def _float32_at_or_below(threshold: np.ndarray, strict: bool) -> np.ndarray:
    """The float32 ``t`` with ``x <= t`` exactly when the library goes left, for float32 x:
    ``x <= threshold`` in float64, or ``x < threshold`` (``strict``: a float32 threshold,
    which a JSON file may print in fewer digits)."""
    t = np.asarray(threshold, np.float64)
    with np.errstate(over="ignore"):  # beyond float32: infinity, above every float32 input
        t32 = t.astype(np.float32)
    below = np.nextafter(t32, np.float32(-np.inf))
    if strict:  # x < t, both float32: x <= the float32 just below t
        return below
    return np.where(t32.astype(np.float64) > t, below, t32)


def _depth(left: np.ndarray, right: np.ndarray) -> int:
    """Splits on the longest path from the root to a leaf."""
    depth, level = 0, [0]
    while True:
        level = [c for n in level if left[n] >= 0 for c in (left[n], right[n])]
        if not level:
            return depth
        depth += 1
        if depth > len(left):
            raise ConversionError("a tree's children form a cycle: the model file is corrupt")


def calibrated(params: dict[str, np.ndarray], n_features: int,
               library_margins: Callable[[np.ndarray], np.ndarray]) -> dict[str, np.ndarray]:
    """``params`` with the ``base`` margins that make their margins the library's: what
    the trees do not hold (XGBoost's base score, a gradient boosting's initial estimate)
    is the library's margin less the trees' sum, on any row."""
    from models.trees import margins  # JAX: imported when registering, not by every command

    row = np.zeros((1, n_features), np.float32)
    trees_only = np.asarray(margins(params, row), np.float64)[0]
    wanted = np.asarray(library_margins(row), np.float64).reshape(-1)
    return params | {"base": (wanted - trees_only).astype(np.float32)}
