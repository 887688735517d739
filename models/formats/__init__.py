"""Models trained elsewhere, converted to streamserve's own architectures at registration.

One module per library: ``load(path)`` reads a model file, ``convert(obj)`` a fitted
object; both return a ``Converted`` (parameters, and the library's own predictor for the
check). The libraries are imported only here, at registration: workers serve the arrays
(and a ``jax`` export's own function, ``models.exported``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from models.formats import from_jax, from_lightgbm, from_onnx, from_sklearn, from_xgboost
from models.formats.converted import Converted
from models.formats.errors import ConversionError, MissingExtraError

FORMATS = {"xgboost": from_xgboost, "lightgbm": from_lightgbm, "sklearn": from_sklearn,
           "jax": from_jax, "onnx": from_onnx}
# What a file's name says of its format when --format does not.
_SUFFIXES = {".json": "xgboost", ".ubj": "xgboost", ".txt": "lightgbm", ".lgb": "lightgbm",
             ".joblib": "sklearn", ".pkl": "sklearn", ".pickle": "sklearn", ".jax": "jax",
             ".onnx": "onnx"}

__all__ = ["FORMATS", "ConversionError", "Converted", "MissingExtraError", "convert_file",
           "convert_object", "format_of"]


def format_of(path: Path, format: str | None = None) -> str:
    """``format``, or the one ``path``'s suffix names."""
    if format is not None:
        if format not in FORMATS:
            raise ConversionError(f"unknown model format {format!r}; known: {', '.join(FORMATS)}")
        return format
    try:
        return _SUFFIXES[path.suffix.lower()]
    except KeyError:
        raise ConversionError(
            f"cannot tell the format of {path.name} from its suffix ({', '.join(_SUFFIXES)}): "
            f"name it with --format ({', '.join(FORMATS)})") from None


def convert_file(path: Path, format: str | None = None, params: Path | None = None) -> Converted:
    """The model file ``path``; ``params``: the .npz of a ``jax`` export's parameters."""
    if not path.is_file():
        raise ConversionError(f"{path} is not a file: name the saved model file")
    format = format_of(path, format)
    if format == "jax":
        return from_jax.load(path, params)
    if params is not None:
        raise ConversionError(f"--params is for --format jax; a {format} file holds its "
                              f"parameters")
    return FORMATS[format].load(path)


def convert_object(model: Any, params: Mapping[str, Any] | None = None,
                   input_shape: Sequence[int] | None = None) -> Converted:
    """A fitted model object: an XGBoost or LightGBM booster or scikit-learn estimator
    (their scikit-learn wrappers too), an ONNX ``ModelProto``, a ``jax.export.Exported``
    with the ``params`` it takes, or a JAX function ``f(params, x)`` (``f(x)`` without
    ``params``) with the shape of one row, ``input_shape``: it is exported here."""
    if input_shape is not None:
        if not callable(model):
            raise ConversionError(f"input_shape is for a JAX function; a "
                                  f"{type(model).__name__} knows its own inputs")
        return from_jax.convert_function(model, params or {}, input_shape)
    home = type(model).__module__.split(".")[0]  # the library: a format's name
    if home not in FORMATS:
        raise ConversionError(f"a {type(model).__name__} ({home}) is not a model streamserve "
                              f"registers: pass an XGBoost or LightGBM booster, a scikit-learn "
                              f"estimator or Pipeline, an ONNX ModelProto, a "
                              f"jax.export.Exported, or a JAX function with input_shape")
    if home == "jax":
        return from_jax.convert(bytes(model.serialize()), params or {})
    if home == "onnx":  # a ModelProto
        return from_onnx.convert(model.SerializeToString())
    if params is not None:
        raise ConversionError("params are for a jax.export.Exported; this model holds its own")
    return FORMATS[home].convert(model)
