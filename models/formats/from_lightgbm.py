"""LightGBM boosters (``Booster.save_model``, a text file) as tree tables.

LightGBM goes left when ``x <= threshold`` (float64). Where a missing value goes depends
on the split's ``missing_type``: ``NaN``: ``default_left``; ``None``: LightGBM reads a
missing value as 0. Multi-class models grow ``num_class`` trees per round, class
``i % num_class`` for tree ``i``. A binary model's ``sigmoid:S`` scales its margins: it
is folded into the leaves.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from models.formats.converted import Converted
from models.formats.errors import ConversionError, need
from models.formats.tree_table import Tree, calibrated, table

_CLASSIFIERS = {"binary": "sigmoid", "multiclass": "softmax"}
_REGRESSORS = {**dict.fromkeys(("regression", "regression_l1", "huber", "fair", "quantile", "mape"),
                               "none"), **dict.fromkeys(("poisson", "gamma", "tweedie"), "exp")}
_LINKS = {**_CLASSIFIERS, **_REGRESSORS}


def load(path: Path) -> Converted:
    lightgbm = need("lightgbm")
    try:
        booster = lightgbm.Booster(model_file=str(path))
    except lightgbm.basic.LightGBMError as e:
        raise ConversionError(f"{path} is not a LightGBM model LightGBM {lightgbm.__version__} "
                              f"reads ({str(e).strip()}); save it with Booster.save_model") from None
    return convert(booster)


def convert(booster: Any) -> Converted:
    """A fitted ``lightgbm.Booster`` (or ``LGBMClassifier``, ``LGBMRegressor``) as a
    ``trees`` model."""
    lightgbm = need("lightgbm")
    if hasattr(booster, "booster_"):
        booster = booster.booster_
    dump = booster.dump_model()
    objective, *options = dump["objective"].split()
    if objective not in _LINKS:
        raise ConversionError(f"LightGBM objective {objective!r} is not served: classifiers with "
                              f"{', '.join(_CLASSIFIERS)} and regressors with "
                              f"{', '.join(_REGRESSORS)} are")
    per_round = int(dump["num_tree_per_iteration"])
    sigmoid = 1.0  # a binary model's probability is sigmoid(S * raw score)
    if objective == "binary":
        sigmoid = float(dict(o.split(":", 1) for o in options if ":" in o).get("sigmoid", 1.0))
    if dump.get("average_output"):
        raise ConversionError("LightGBM random-forest models (boosting='rf') are not served: "
                              "train with boosting='gbdt', or use scikit-learn's RandomForest")
    trees = [_tree(info["tree_structure"], i % per_round, per_round, sigmoid)
             for i, info in enumerate(dump["tree_info"])]
    n_features = int(dump["max_feature_idx"]) + 1
    params = calibrated(table(trees, per_round), n_features,
                        lambda x: sigmoid * booster.predict(x, raw_score=True))

    regressor = objective in _REGRESSORS

    def predict(x: np.ndarray) -> np.ndarray:
        p = booster.predict(x)
        if regressor:
            return p.reshape(len(x), 1)
        return np.stack([1 - p, p], axis=1) if per_round == 1 else p

    names = tuple(dump.get("feature_names") or ())
    unnamed = all(re.fullmatch(r"Column_\d+", n) for n in names)
    return Converted("lightgbm", f"lightgbm {lightgbm.__version__}", f"trees:{_LINKS[objective]}",
                     params, n_features, 1 if regressor else max(2, int(dump["num_class"])),
                     predict, kind="regressor" if regressor else "classifier",
                     features=None if unnamed else names,
                     details={"objective": dump["objective"], "trees": len(trees),
                              "depth": int(params["depth"].shape[0])})


def _tree(root: dict[str, Any], klass: int, n_outputs: int, scale: float) -> Tree:
    """Number the nested nodes depth first: the root is 0."""
    nodes: list[dict[str, Any]] = []
    children: list[list[int]] = []

    def visit(node: dict[str, Any]) -> int:
        i = len(nodes)
        nodes.append(node)
        children.append([-1, -1])
        if "split_feature" in node:
            children[i] = [visit(node["left_child"]), visit(node["right_child"])]
        return i

    visit(root)
    inner = [n for n in nodes if "split_feature" in n]
    if any(n["decision_type"] != "<=" for n in inner):
        raise ConversionError("the LightGBM model has categorical splits, which are not served: "
                              "encode categories as numbers and train again")
    if any(n["missing_type"] == "Zero" for n in inner):
        raise ConversionError("the LightGBM model treats zeros as missing (zero_as_missing), "
                              "which is not served: train with zero_as_missing=False")
    threshold = np.array([n.get("threshold", 0.0) for n in nodes], np.float64)
    missing_left = np.array([n.get("default_left", False) if n.get("missing_type") == "NaN"
                             else 0.0 <= n.get("threshold", 0.0) for n in nodes], bool)
    leaf = np.zeros((len(nodes), n_outputs))
    leaf[:, klass] = [scale * n.get("leaf_value", 0.0) for n in nodes]
    kids = np.array(children, np.int64)
    return Tree(feature=np.array([n.get("split_feature", 0) for n in nodes], np.int64),
                threshold=threshold, left=kids[:, 0], right=kids[:, 1],
                missing_left=missing_left, leaf=leaf)
