"""XGBoost boosters (``Booster.save_model``: ``.json`` or ``.ubj``) as tree tables.

XGBoost goes left when ``x < split_condition`` (float32), a missing value to
``default_left``; a leaf's ``split_conditions`` entry is its value. Multi-class models
grow one tree per class per round, multi-target regressors one per target (``tree_info``
names the class or target). The base score is
read back as the library's margin less the trees' (``tree_table.calibrated``), which
holds whatever space a release stores it in.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from models.formats.converted import Converted
from models.formats.errors import ConversionError, need
from models.formats.tree_table import Tree, calibrated, table

# Objectives served, and the link from margins to answers.
_CLASSIFIERS = {"binary:logistic": "sigmoid", "multi:softprob": "softmax", "multi:softmax": "softmax"}
_REGRESSORS = {**dict.fromkeys(("reg:squarederror", "reg:squaredlogerror", "reg:pseudohubererror",
                                "reg:absoluteerror", "reg:quantileerror"), "none"),
               **dict.fromkeys(("count:poisson", "reg:gamma", "reg:tweedie"), "exp")}
_LINKS = {**_CLASSIFIERS, **_REGRESSORS}


def load(path: Path) -> Converted:
    xgboost = need("xgboost")
    booster = xgboost.Booster()
    try:
        booster.load_model(str(path))
    except xgboost.core.XGBoostError as e:
        raise ConversionError(f"{path} is not an XGBoost model XGBoost {xgboost.__version__} "
                              f"reads ({_first_line(e)}); save it with Booster.save_model "
                              f"as .json or .ubj") from None
    return convert(booster)


def convert(booster: Any) -> Converted:
    """A fitted ``xgboost.Booster`` (or ``XGBClassifier``, ``XGBRegressor``) as a ``trees``
    model."""
    xgboost = need("xgboost")
    if hasattr(booster, "get_booster"):
        booster = booster.get_booster()
    learner = json.loads(booster.save_raw("json"))["learner"]
    objective = learner["objective"]["name"]
    if objective not in _LINKS:
        raise ConversionError(f"XGBoost objective {objective!r} is not served: classifiers with "
                              f"{', '.join(_CLASSIFIERS)} and regressors with "
                              f"{', '.join(_REGRESSORS)} are")
    gbm = learner["gradient_booster"]
    if gbm["name"] != "gbtree":
        raise ConversionError(f"XGBoost booster {gbm['name']!r} is not served: train with "
                              f"booster='gbtree'")
    regressor = objective in _REGRESSORS
    n_classes = max(2, int(learner["learner_model_param"]["num_class"]))
    n_targets = max(1, int(learner["learner_model_param"].get("num_target", 1)))
    width = n_targets if regressor else n_classes
    n_outputs = 1 if objective == "binary:logistic" else width
    model = gbm["model"]
    trees = [_tree(t, klass, n_outputs) for t, klass in zip(model["trees"], model["tree_info"],
                                                            strict=True)]
    n_features = int(learner["learner_model_param"]["num_feature"])
    params = table(trees, n_outputs, strict=True)
    params = calibrated(params, n_features, lambda x: booster.inplace_predict(x, predict_type="margin"))

    def predict(x: np.ndarray) -> np.ndarray:
        if regressor:
            return booster.inplace_predict(x).reshape(len(x), width)
        if objective == "multi:softmax":  # its predict answers labels: probabilities of margins
            m = booster.inplace_predict(x, predict_type="margin")
            e = np.exp(m - m.max(axis=1, keepdims=True))
            return e / e.sum(axis=1, keepdims=True)
        p = booster.inplace_predict(x)
        return np.stack([1 - p, p], axis=1) if n_outputs == 1 else p

    return Converted("xgboost", f"xgboost {xgboost.__version__}", f"trees:{_LINKS[objective]}",
                     params, n_features, width, predict,
                     kind="regressor" if regressor else "classifier",
                     features=tuple(learner.get("feature_names") or ()) or None,
                     details={"objective": objective, "trees": len(trees),
                              "depth": int(params["depth"].shape[0])})


def _tree(tree: dict[str, Any], klass: int, n_outputs: int) -> Tree:
    if int(tree["tree_param"].get("size_leaf_vector", 1)) > 1:
        raise ConversionError("the XGBoost model has vector leaves (multi_strategy="
                              "'multi_output_tree'), which are not served: train with "
                              "multi_strategy='one_output_per_tree' (the default)")
    if any(tree["split_type"]):
        raise ConversionError("the XGBoost model has categorical splits, which are not served: "
                              "encode categories as numbers (e.g. one-hot) and train again")
    left = np.asarray(tree["left_children"], np.int64)
    value = np.asarray(tree["split_conditions"], np.float64)
    leaf = np.zeros((len(left), n_outputs))
    leaf[:, klass if n_outputs > 1 else 0] = value
    return Tree(feature=np.asarray(tree["split_indices"], np.int64), threshold=value, left=left,
                right=np.asarray(tree["right_children"], np.int64),
                missing_left=np.asarray(tree["default_left"], bool), leaf=leaf)


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
