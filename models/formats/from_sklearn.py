"""scikit-learn estimators and pipelines as tree tables or matrix products.

A pipeline is scalers (``StandardScaler``, ``MinMaxScaler``) then one estimator. A
scaler maps each feature up (``x * a + c`` with ``a > 0``), so it folds into what
follows: into a linear model's weights, and into a tree's thresholds as the largest
float32 input whose scaled value (rounded as scikit-learn rounds it, to float32 after
each step) is at or below the threshold, found by bisection over the float32 numbers:
exact, where folding the arithmetic would move rows that sit on a threshold. Trees go
left on ``x <= t``, compared in float64 on float32 inputs, as ``tree_table`` expects.

* ``LogisticRegression``: ``linear:sigmoid`` (binary) or ``linear:softmax``;
  ``LinearRegression``, ``Ridge``, ``Lasso``, ``ElasticNet``: ``linear:none``;
* ``DecisionTree*``, ``RandomForest*``, ``ExtraTrees*``: each leaf holds its class shares
  (a regressor: its values) divided by the number of trees, so their sum is the forest's
  average: ``trees:none``;
* ``GradientBoosting*``, ``HistGradientBoosting*``: leaves hold the (learning-rate
  scaled) margins; the initial estimate is the ``base``: ``trees:sigmoid`` or
  ``trees:softmax`` (classifiers), ``trees:none`` or, for a Poisson or gamma loss,
  ``trees:exp`` (regressors).

Unpickling a model file runs whatever code it holds: ``load`` says so before it does,
and only the registering process ever unpickles; workers read the arrays.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from models.formats.converted import Converted
from models.formats.errors import ConversionError
from models.formats.tree_table import Tree, calibrated, table

log = logging.getLogger(__name__)

_SCALERS = ("StandardScaler", "MinMaxScaler")
_FORESTS = ("DecisionTreeClassifier", "RandomForestClassifier", "ExtraTreesClassifier")
_BOOSTED = ("GradientBoostingClassifier", "HistGradientBoostingClassifier")
_CLASSIFIERS = ("LogisticRegression", *_FORESTS, *_BOOSTED)
_LINEAR_REGRESSORS = ("LinearRegression", "Ridge", "Lasso", "ElasticNet")
_FOREST_REGRESSORS = ("DecisionTreeRegressor", "RandomForestRegressor", "ExtraTreesRegressor")
_BOOSTED_REGRESSORS = ("GradientBoostingRegressor", "HistGradientBoostingRegressor")
_REGRESSORS = (*_LINEAR_REGRESSORS, *_FOREST_REGRESSORS, *_BOOSTED_REGRESSORS)


def load(path: Path) -> Converted:
    """Unpickle ``path`` (joblib or pickle) and convert what it holds."""
    import joblib  # scikit-learn's own dependency

    log.warning("unpickling %s runs any code it holds: register only model files you trust "
                "(workers never unpickle; they read the converted arrays)", path)
    try:
        estimator = joblib.load(path)
    except Exception as e:  # noqa: BLE001 - a corrupt pickle raises anything
        raise ConversionError(f"{path} is not a scikit-learn model joblib can load ({e!r}); "
                              f"save the fitted estimator with joblib.dump") from None
    return convert(estimator)


def convert(estimator: Any) -> Converted:
    """A fitted estimator, or a ``Pipeline`` of scalers and an estimator, of the kinds above."""
    import sklearn  # a dependency of streamserve's own: imported when registering

    steps = [s for _, s in estimator.steps] if hasattr(estimator, "steps") else [estimator]
    *scalers, final = steps
    for step in scalers:
        if type(step).__name__ not in _SCALERS:
            raise _unsupported(step, "before the estimator: only", _SCALERS)
        if getattr(step, "clip", False):
            raise ConversionError("a MinMaxScaler with clip=True is not served: fit it with "
                                  "clip=False")
    name = type(final).__name__
    if name not in (*_CLASSIFIERS, *_REGRESSORS):
        raise _unsupported(final, "as the estimator:", (*_CLASSIFIERS, *_REGRESSORS))
    if not hasattr(final, "n_features_in_"):
        raise ConversionError(f"the {name} is not fitted: fit it before registering it")
    n_features = int(getattr(steps[0], "n_features_in_", 0))
    a, c = _affine(scalers, n_features)
    if name in _REGRESSORS:
        architecture, params, width = _regressor(estimator, final, scalers, a, c, n_features)
        predict, classes = (lambda x: np.asarray(estimator.predict(x)).reshape(len(x), width)), None
    else:
        n_classes = len(final.classes_)
        if name == "LogisticRegression":
            architecture, params = _linear(final, a, c)
        else:
            trees, n_outputs, link = _trees(final, n_classes)
            architecture = f"trees:{link}"
            params = table([_unscaled(t, scalers) for t in trees], n_outputs)
            if name in _BOOSTED:  # the initial estimate: the library's margins less the trees'
                params = calibrated(params, n_features, lambda x: estimator.decision_function(x))
        width, predict = max(2, n_classes), (lambda x: estimator.predict_proba(x))
        classes = tuple(map(str, final.classes_))
    features = getattr(steps[0], "feature_names_in_", None)
    details: dict[str, Any] = {"estimator": " -> ".join(type(s).__name__ for s in steps)}
    if "depth" in params:
        details |= {"trees": int(params["feature"].shape[0]), "depth": int(params["depth"].shape[0])}
    return Converted("sklearn", f"scikit-learn {sklearn.__version__}", architecture, params,
                     n_features, width, predict,
                     kind="regressor" if name in _REGRESSORS else "classifier",
                     features=None if features is None else tuple(map(str, features)),
                     classes=classes, details=details)


def _regressor(estimator: Any, final: Any, scalers: list[Any], a: np.ndarray, c: np.ndarray,
               n_features: int) -> tuple[str, dict[str, np.ndarray], int]:
    """A regressor's architecture, parameters and targets."""
    name = type(final).__name__
    if name in _LINEAR_REGRESSORS:
        w = np.atleast_2d(np.asarray(final.coef_, np.float64)).T
        b = np.broadcast_to(np.asarray(final.intercept_, np.float64), (w.shape[1],))
        return "linear:none", _folded(w, b, a, c), w.shape[1]
    if name in _FOREST_REGRESSORS:
        forest = getattr(final, "estimators_", [final])
        trees = [_sklearn_tree(t.tree_, t.tree_.value[:, :, 0] / len(forest)) for t in forest]
        width = int(final.n_outputs_)
        return "trees:none", table([_unscaled(t, scalers) for t in trees], width), width
    if name == "GradientBoostingRegressor":
        trees = [_boosted_tree(stage[0].tree_, 0, 1, final.learning_rate)
                 for stage in final.estimators_]
        link = "none"
    else:  # HistGradientBoostingRegressor: a Poisson or gamma loss predicts exp(margin)
        trees = [_hist_tree(stage[0].nodes, 0, 1) for stage in final._predictors]
        link = "exp" if final.loss in ("poisson", "gamma") else "none"
    params = table([_unscaled(t, scalers) for t in trees], 1)
    margins = ((lambda x: np.log(estimator.predict(x))) if link == "exp"
               else (lambda x: estimator.predict(x)))
    return f"trees:{link}", calibrated(params, n_features, margins), 1


def _unsupported(step: Any, where: str, kinds: tuple[str, ...]) -> ConversionError:
    return ConversionError(f"{type(step).__name__} is not served {where} {', '.join(kinds)} "
                           f"are")


def _affine(scalers: list[Any], n_features: int) -> tuple[np.ndarray, np.ndarray]:
    """The scalers as one ``x * a + c``."""
    a, c = np.ones(n_features), np.zeros(n_features)
    for s in scalers:
        if type(s).__name__ == "StandardScaler":
            scale = s.scale_ if s.scale_ is not None else np.ones(n_features)
            mean = s.mean_ if s.mean_ is not None else np.zeros(n_features)
            step_a, step_c = 1 / scale, -mean / scale
        else:
            step_a, step_c = s.scale_, s.min_
        a, c = a * step_a, c * step_a + step_c
    if np.any(a <= 0):
        raise ConversionError("a scaler maps a feature with a factor of zero or less (a "
                              "MinMaxScaler with a reversed feature_range?): it is not served")
    return a, c


def _linear(model: Any, a: np.ndarray, c: np.ndarray) -> tuple[str, dict[str, np.ndarray]]:
    w, b = np.asarray(model.coef_, np.float64).T, np.asarray(model.intercept_, np.float64)
    return ("linear:sigmoid" if w.shape[1] == 1 else "linear:softmax"), _folded(w, b, a, c)


def _folded(w: np.ndarray, b: np.ndarray, a: np.ndarray, c: np.ndarray) -> dict[str, np.ndarray]:
    """``x @ w + b`` after the scalers' ``x * a + c``, as one matrix product:
    (x * a + c) @ w + b = x @ (a[:, None] * w) + (c @ w + b)."""
    return {"w": (a[:, None] * w).astype(np.float32), "b": (c @ w + b).astype(np.float32)}


def _trees(model: Any, n_classes: int) -> tuple[list[Tree], int, str]:
    """The model's trees, the outputs each leaf adds to, and the link."""
    name = type(model).__name__
    if name in _FORESTS:
        forest = getattr(model, "estimators_", [model])
        return [_forest_tree(t.tree_, len(forest)) for t in forest], n_classes, "none"
    n_outputs = 1 if n_classes == 2 else n_classes
    link = "sigmoid" if n_outputs == 1 else "softmax"
    if name == "GradientBoostingClassifier":
        return [_boosted_tree(stage[k].tree_, k, n_outputs, model.learning_rate)
                for stage in model.estimators_ for k in range(n_outputs)], n_outputs, link
    return [_hist_tree(predictor.nodes, k, n_outputs)
            for stage in model._predictors for k, predictor in enumerate(stage)], n_outputs, link


def _forest_tree(tree: Any, n_trees: int) -> Tree:
    value = tree.value[:, 0, :].astype(np.float64)
    shares = value / np.maximum(value.sum(axis=1, keepdims=True), 1e-300)
    return _sklearn_tree(tree, shares / n_trees)


def _boosted_tree(tree: Any, klass: int, n_outputs: int, learning_rate: float) -> Tree:
    leaf = np.zeros((tree.node_count, n_outputs))
    leaf[:, klass] = learning_rate * tree.value[:, 0, 0]
    return _sklearn_tree(tree, leaf)


def _sklearn_tree(tree: Any, leaf: np.ndarray) -> Tree:
    missing = getattr(tree, "missing_go_to_left", np.zeros(tree.node_count, bool))
    return Tree(feature=tree.feature.astype(np.int64), threshold=tree.threshold,
                left=tree.children_left.astype(np.int64), right=tree.children_right.astype(np.int64),
                missing_left=np.asarray(missing, bool), leaf=leaf)


def _hist_tree(nodes: np.ndarray, klass: int, n_outputs: int) -> Tree:
    if nodes["is_categorical"].any():
        raise ConversionError("the HistGradientBoosting model has categorical splits, which "
                              "are not served: encode categories as numbers and train again")
    leaf_node = nodes["is_leaf"].astype(bool)
    leaf = np.zeros((len(nodes), n_outputs))
    leaf[:, klass] = np.where(leaf_node, nodes["value"], 0.0)
    return Tree(feature=nodes["feature_idx"].astype(np.int64), threshold=nodes["num_threshold"],
                left=np.where(leaf_node, -1, nodes["left"].astype(np.int64)),
                right=np.where(leaf_node, -1, nodes["right"].astype(np.int64)),
                missing_left=nodes["missing_go_to_left"].astype(bool), leaf=leaf)


def _unscaled(tree: Tree, scalers: list[Any]) -> Tree:
    """``tree`` for the inputs before ``scalers``: each threshold becomes the largest float32
    input the scalers map to at or below it."""
    if not scalers:
        return tree
    inner = tree.left >= 0
    feature, t = np.where(inner, tree.feature, 0), tree.threshold
    lo = np.full(len(t), _key(np.float32(-np.inf)))  # bisection over float32 order keys
    hi = np.full(len(t), _key(np.float32(np.inf)))
    while np.any(hi - lo > 1):  # invariant: scale(lo) <= t < scale(hi), ends at neighbours
        mid = (lo + hi) // 2
        left = _scale(_float(mid), feature, scalers).astype(np.float64) <= t
        lo, hi = np.where(left, mid, lo), np.where(left, hi, mid)
    # -inf itself may be above t: then no finite input goes left, as with t below -inf
    threshold = np.where(inner, _float(lo).astype(np.float64), tree.threshold)
    return Tree(tree.feature, threshold, tree.left, tree.right, tree.missing_left, tree.leaf)


def _scale(x: np.ndarray, feature: np.ndarray, scalers: list[Any]) -> np.ndarray:
    """scikit-learn's transform of each ``x`` as feature ``feature``: float32 after each step.
    A ``StandardScaler`` casts its mean and scale to the input's float32 first; a
    ``MinMaxScaler`` computes with its float64 ones (scikit-learn 1.9)."""
    with np.errstate(over="ignore", invalid="ignore"):
        for s in scalers:
            if type(s).__name__ == "StandardScaler":
                if s.mean_ is not None:
                    x = x - s.mean_.astype(np.float32)[feature]
                if s.scale_ is not None:
                    x = x / s.scale_.astype(np.float32)[feature]
            else:
                x = (x.astype(np.float64) * s.scale_[feature]).astype(np.float32)
                x = (x.astype(np.float64) + s.min_[feature]).astype(np.float32)
    return x


def _key(x: np.ndarray | np.float32) -> np.ndarray:
    """float32 -> int64 in the same order (-0 and 0 alike)."""
    bits = np.asarray(x, np.float32).view(np.int32).astype(np.int64)
    return np.where(bits < 0, -(bits & 0x7FFFFFFF), bits)


def _float(key: np.ndarray) -> np.ndarray:
    bits = np.where(key < 0, (-key) | 0x80000000, key).astype(np.uint32)
    return bits.view(np.float32)
