"""Register a model trained elsewhere: convert it, check it against its own library, sign it.

The version is like a trained one (manifest, lineage, hashes, signature), with its
architecture one of streamserve's (``models.architectures``) and its parameters the
converted arrays, so every later step (deploy, canary, shadow, replay, drift) treats it
alike. Before anything is written, the converted model's answers are compared with the
library's own on the reference rows and on rows made to reach every leaf
(``check_rows``): more than ``TOLERANCE`` apart anywhere (a regressor's values: relative
to their magnitude, when over 1), and nothing is registered.
"""

from __future__ import annotations

import csv
import datetime
import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from models.formats import ConversionError, Converted, convert_file, convert_object
from models.provenance import code_revision, input_schema, user
from models.runtime import evaluator
from pipeline.config import Settings
from pipeline.drift import reference_for_predictions, references_for
from pipeline.registry import Manifest, ManifestDraft, Registry, lineage
from pipeline.schema import KINDS, Feature, InputSchema, OutputSchema
from pipeline.signing import ensure_signing_key, register_signed

TOLERANCE = 1e-5  # the largest difference in any probability (or relative, value) let through
GENERATED_ROWS = 512


def register(model: str, source: Path | Any, *, settings: Settings | None = None,
             **options: Any) -> Manifest:
    """Register ``source``, a model file or a fitted model object, as the next signed
    version of ``model`` in the registry of ``settings`` (default: the environment's
    STREAMSERVE_REGISTRY, signed with STREAMSERVE_SIGNING_KEY, created when missing).
    ``options``: those of ``register_model`` (format, kind, features, labels, reference,
    sensitive, params, input_shape, metrics). Raises ``ConversionError`` naming what cannot be served, and the fix."""
    settings = settings if settings is not None else Settings.from_env()
    return register_model(Registry(settings.registry.root), model, source,
                          signing_key=settings.registry.signing_key, **options)


def register_model(registry: Registry, model: str, source: Path | Any, *, format: str | None = None,
                   kind: str | None = None, features: Sequence[str] | None = None,
                   labels: Sequence[str] | None = None,
                   reference: Path | np.ndarray | None = None, sensitive: Iterable[str] = (),
                   params: Path | Mapping[str, np.ndarray] | None = None,
                   input_shape: Sequence[int] | None = None,
                   metrics: Mapping[str, float] | None = None,
                   signing_key: Path | None = None) -> Manifest:
    """Register ``source`` (a model file, or a fitted model object) as the next version of
    ``model``. ``kind``: "classifier" or "regressor" (default: what the model file says;
    an ONNX graph or a JAX function does not say, and is taken for a classifier).
    ``features``: the input names in column order (needed when the model does not name
    them; checked against its names when it does); a model of one tensor per row (an ONNX
    graph or JAX function whose rows have two or more dimensions) takes one name, default
    its input's. ``labels``: a classifier's class names
    in class-index order (default: the model's classes, or "0", "1", ...). ``reference``:
    rows the model is meant for (a CSV file with a header naming the features, or an
    array (n, features)): checked, and kept as the drift reference; without it drift is
    off for this version (and for a tensor model, which takes none). ``params``: the
    parameters a ``jax.export`` function takes (an
    .npz file, or a dict of arrays with an ``Exported`` object or a JAX function).
    ``input_shape``: a JAX function's row shape, ``(features,)`` or a tensor's (it is
    exported with a symbolic batch). ``metrics``: what the model scored on held-out data,
    e.g. ``{"test_accuracy": 0.93}`` (the accuracy alert on labels compares with it).
    Signed with ``signing_key`` when given."""
    key = ensure_signing_key(signing_key) if signing_key is not None else None
    if isinstance(source, str | Path):
        source = Path(source)
        converted = convert_file(source, format, None if params is None else Path(params))
        origin = _file_hash(source)
    else:
        converted, origin = convert_object(source, params, input_shape), None
    names = feature_names(converted, features)
    outputs = output_schema(converted, kind, labels)
    if converted.input_shape and reference is not None:
        raise ConversionError(f"the model reads one tensor of shape {list(converted.input_shape)} "
                              f"per row: --reference (named features) does not apply, and drift "
                              f"is off for tensor inputs; leave --reference out")
    rows = None if reference is None else reference_rows(reference, names)
    inputs = (input_schema(names, rows) if rows is not None
              else InputSchema(tuple(Feature(n, shape=converted.input_shape) for n in names))
              ).marked(sensitive)
    apply = evaluator(converted.architecture, converted.params, inputs.shape)
    checked = check_rows(converted, rows)
    answers = np.asarray(apply(checked), np.float64)
    difference = check(converted, answers, checked, outputs)
    draft = ManifestDraft(
        model=model, architecture=converted.architecture,
        hyperparameters={"format": converted.format, "library": converted.library,
                         **converted.details},
        inputs=inputs, outputs=outputs, metrics=dict(metrics or {}),
        # The data this version was checked on (its training data is the library's to tell).
        lineage=lineage(checked, outputs.watched(answers),
                        code_revision=code_revision(), created_by=user(),
                        created_at=datetime.datetime.now(datetime.UTC),
                        source=str(source) if isinstance(source, Path) else type(source).__name__,
                        **({"source_sha256": origin} if origin else {}),
                        check={"rows": len(checked), "max_difference": difference,
                               "tolerance": TOLERANCE}),
        reference={} if rows is None else drift_reference(apply, rows, names, outputs))
    if key is None:
        return registry.register(draft, converted.params)
    return register_signed(registry, draft, converted.params, key)


def drift_reference(apply: Callable[[np.ndarray], Any], rows: np.ndarray, names: Sequence[str],
                    outputs: OutputSchema) -> dict[str, Any]:
    """Drift is judged against the reference rows and what the model predicts for them, as
    for a trained model and its training data."""
    return {"features": [r.to_json() for r in references_for(rows, list(names))],
            "prediction": reference_for_predictions(np.asarray(apply(rows)), outputs).to_json()}


def feature_names(converted: Converted, given: Sequence[str] | None) -> list[str]:
    """The model's own feature names, or ``given``; both: they must agree. A tensor model's
    one input: ``given`` (one name) or the model's own."""
    own = list(converted.features) if converted.features else None
    given = list(given) if given else None
    if converted.input_shape:
        if given is not None and len(given) != 1:
            raise ConversionError(f"the model reads one tensor of shape {list(converted.input_shape)} "
                                  f"per row: give --features one name for it, or leave it out "
                                  f"(it is then {own[0]!r})")
        return given or own
    if own and given and own != given:
        raise ConversionError(f"--features {','.join(given)} differ from the names the model "
                              f"holds, {','.join(own)}: leave --features out, or fix them")
    names = own or given
    if names is None:
        raise ConversionError(f"the model does not name its {converted.n_features} features: "
                              f"name them in column order with --features a,b,...")
    if len(names) != converted.n_features:
        raise ConversionError(f"the model reads {converted.n_features} features, but "
                              f"{len(names)} are named ({','.join(names)}): name each column once")
    return names


def output_schema(converted: Converted, kind: str | None,
                  labels: Sequence[str] | None) -> OutputSchema:
    """What the model answers: a regressor's values, or a classifier's ``class_labels``."""
    if kind is not None and kind not in KINDS:
        raise ConversionError(f"--kind {kind!r} is not a kind of model: give classifier or "
                              f"regressor")
    if kind and converted.kind and kind != converted.kind:
        raise ConversionError(f"--kind {kind}, but the {converted.format} model is a "
                              f"{converted.kind}: leave --kind out")
    if (kind or converted.kind) == "regressor":
        if labels:
            raise ConversionError("--labels names classes, but the model is a regressor (it "
                                  "answers with a value): leave --labels out")
        return OutputSchema(targets=converted.width)
    if converted.width < 2:
        raise ConversionError(f"the {converted.format} model gives {converted.width} column per "
                              f"row, and a classifier gives one probability per class: if it is "
                              f"a regressor, register it with --kind regressor")
    return OutputSchema(tuple(class_labels(converted, labels)))


def class_labels(converted: Converted, given: Sequence[str] | None) -> list[str]:
    """``given``, or the model's own classes, or the class indices; one per class."""
    labels = list(given or converted.classes or map(str, range(converted.width)))
    if len(labels) != converted.width:
        raise ConversionError(f"--labels names {len(labels)} classes ({','.join(labels)}), but "
                              f"the model has {converted.width}: name each class once, in "
                              f"class-index order")
    if len(set(labels)) != len(labels):
        raise ConversionError(f"--labels names a class twice ({','.join(labels)})")
    return labels


def reference_rows(reference: Path | np.ndarray, names: Sequence[str]) -> np.ndarray:
    """The reference as float32 rows in feature order; a CSV needs a header naming them."""
    if not isinstance(reference, Path | str):
        rows = np.asarray(reference, np.float32)
        if rows.ndim != 2 or rows.shape[1] != len(names):
            raise ConversionError(f"the reference must be rows of {len(names)} features, "
                                  f"shape (n, {len(names)}); got {rows.shape}")
        return rows
    path = Path(reference)
    try:
        with path.open(newline="") as f:
            header = next(csv.reader(f), [])
            columns = [header.index(n) for n in names]
            rows = np.loadtxt(f, delimiter=",", usecols=columns, dtype=np.float32, ndmin=2)
    except OSError as e:
        raise ConversionError(f"cannot read the reference {path}: {e.strerror}") from None
    except ValueError as e:
        missing = [n for n in names if n not in header]
        why = (f"its header lacks {', '.join(missing)}" if missing else f"it holds a value that "
               f"is not a number ({e})")
        raise ConversionError(f"the reference {path} is not a CSV of the model's features: "
                              f"{why}; write a header row naming them ({','.join(names)})") from None
    if not len(rows) or not np.isfinite(rows).all():
        raise ConversionError(f"the reference {path} needs rows of finite numbers")
    return rows


def check_rows(converted: Converted, reference: np.ndarray | None, seed: int = 0) -> np.ndarray:
    """Rows to compare on: the reference (up to 10,000), and ``GENERATED_ROWS`` more. For
    trees, each feature takes values between its split thresholds, so the rows reach
    leaves the reference may not; otherwise values spread like the reference's."""
    rng = np.random.default_rng(seed)
    n_features, params = converted.n_features, converted.params
    shape = (GENERATED_ROWS, n_features)
    if "threshold" in params:
        generated = np.zeros(shape, np.float32)
        inner = params["left"] != np.arange(params["left"].shape[1])
        for j in range(n_features):
            t = np.unique(params["threshold"][inner & (params["feature"] == j)])
            if len(t):
                between = np.concatenate([[t[0] - 1], (t[:-1] + t[1:]) / 2, [t[-1] + 1]])
                generated[:, j] = rng.choice(between, GENERATED_ROWS)
    elif reference is not None:
        generated = rng.normal(reference.mean(axis=0), reference.std(axis=0) + 1e-3, shape)
    else:
        generated = rng.normal(0, 1, shape)
    own = reference[:10_000] if reference is not None else np.zeros((0, n_features))
    return np.concatenate([own, generated]).astype(np.float32)


def check(converted: Converted, ours: np.ndarray, rows: np.ndarray,
          outputs: OutputSchema) -> float:
    """The largest difference of the converted model's answers on ``rows`` (``ours``) from
    the library's own: absolute for probabilities, relative to the value's magnitude (when
    over 1) for a regressor's values. Over ``TOLERANCE``, an error naming where."""
    theirs = np.asarray(converted.predict(rows), np.float64).reshape(ours.shape)
    difference = np.abs(ours - theirs)
    if outputs.is_regressor:
        difference = difference / np.maximum(np.abs(theirs), 1.0)
    worst = np.unravel_index(int(difference.argmax()), difference.shape)
    largest = float(difference[worst])
    if not largest <= TOLERANCE:
        row, column = worst
        what = (f"(relative) in the value of target {column}" if outputs.is_regressor
                else f"in the probability of {outputs.labels[column]!r}")
        raise ConversionError(
            f"the converted model differs from {converted.library} by {largest:.3g} {what} "
            f"(row {row} of {len(rows)} checked: {ours[worst]:.6g} against "
            f"{theirs[worst]:.6g}); nothing was registered. The model may use something the "
            f"converter does not handle: please report it")
    return largest


def _file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
