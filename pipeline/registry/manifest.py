"""A model version's manifest: what training knows (``ManifestDraft``), what the registry
assigned (``Manifest``), its lineage and data fingerprint, and the names of the files of a
version folder.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from pipeline.errors import StreamserveError
from pipeline.schema import InputSchema, OutputSchema

# The manifest's shape. Signatures (a file beside the manifest) and the lineage keys
# below did not change it, so versions registered before them still load (unsigned).
FORMAT_VERSION = 1
# Format 2 marks input features sensitive. Only a manifest with marks is written as 2:
# unmarked ones keep their bytes (and signatures), and a release that cannot honour the
# marks refuses such a version instead of serving it without the redaction it asks for.
SENSITIVE_FORMAT_VERSION = 2
MANIFEST_FILE = "manifest.json"
PARAMS_FILE = "params.npz"
SIGNATURE_FILE = "signature.json"
# The files a version folder may hold; an export carries exactly these.
VERSION_FILES = (MANIFEST_FILE, PARAMS_FILE, SIGNATURE_FILE)
# What every manifest's lineage must say: which data, which code, when, and who.
LINEAGE_KEYS = ("data_fingerprint", "code_revision", "created_at", "created_by")

# Model names become folder names and arrive in requests: no separators, no dot files.
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
VERSION_NAME = re.compile(r"[1-9][0-9]*")


class RegistryError(StreamserveError):
    """The registry cannot do what was asked; the message says what to do instead."""


@dataclass(frozen=True, slots=True)
class ManifestDraft:
    """What training knows about a model; ``Registry.register`` adds the version and hashes.

    ``reference`` holds the drift reference statistics of the training data
    (``pipeline.drift``: ``{"features": [...], "prediction": {...}}``). It, and
    ``hyperparameters``, ``metrics`` and ``lineage``, are stored as strict JSON; they are
    normalised here (tuples become lists), so a manifest compares equal after a round trip.
    ``lineage`` must hold at least ``LINEAGE_KEYS``; build it with ``lineage()``.
    """

    model: str
    architecture: str
    hyperparameters: dict[str, Any]
    inputs: InputSchema
    outputs: OutputSchema
    metrics: dict[str, float]
    lineage: dict[str, Any]
    reference: dict[str, Any]

    def __post_init__(self) -> None:
        """Check the fields, and store the JSON-able ones as JSON would."""
        check_model_name(self.model)
        if not self.architecture:
            raise RegistryError("architecture must name a function in models.architectures, e.g. 'mlp'")
        for name in ("hyperparameters", "metrics", "lineage", "reference"):
            value = getattr(self, name)
            if not isinstance(value, dict):
                raise RegistryError(f"manifest {name} must be a dict, got {type(value).__name__}")
            try:
                value = json.loads(json.dumps(value, allow_nan=False))
            except (TypeError, ValueError) as e:
                raise RegistryError(f"manifest {name} must be plain JSON with finite numbers: {e}") from None
            object.__setattr__(self, name, value)
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in self.metrics.values()):
            raise RegistryError(f"manifest metrics must map names to numbers, e.g. "
                                f"{{'test_accuracy': 0.97}}, got {self.metrics}")
        object.__setattr__(self, "metrics", {k: float(v) for k, v in self.metrics.items()})
        _check_lineage(self.lineage)


@dataclass(frozen=True, slots=True)
class Manifest(ManifestDraft):
    """A registered model version: the draft plus what the registry assigned.

    ``lineage`` holds ``data_fingerprint`` (see ``fingerprint``), ``code_revision``,
    ``created_at`` (ISO 8601, UTC) and ``created_by`` (``user@host``), and whatever else
    training recorded (the recipes add ``dataset``, ``seed``, ``n_train``, ``n_test``).
    ``param_hashes`` maps each parameter file in the version folder to its sha256.
    """

    version: str
    param_hashes: dict[str, str]

    def __post_init__(self) -> None:
        ManifestDraft.__post_init__(self)
        if not VERSION_NAME.fullmatch(self.version):
            raise RegistryError(f"version must be a positive whole number like '3', got {self.version!r}")
        object.__setattr__(self, "param_hashes", {str(k): str(v) for k, v in self.param_hashes.items()})

    @classmethod
    def of(cls, draft: ManifestDraft, version: str, param_hashes: dict[str, str]) -> Manifest:
        fields_of_draft = {f.name: getattr(draft, f.name) for f in fields(ManifestDraft)}
        return cls(**fields_of_draft, version=version, param_hashes=param_hashes)

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": SENSITIVE_FORMAT_VERSION if self.inputs.sensitive else FORMAT_VERSION,
            "model": self.model,
            "version": self.version,
            "architecture": self.architecture,
            "hyperparameters": self.hyperparameters,
            "inputs": self.inputs.to_json(),
            "outputs": self.outputs.to_json(),
            "metrics": self.metrics,
            "lineage": self.lineage,
            "reference": self.reference,
            "param_hashes": self.param_hashes,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Manifest:
        if d.get("format_version") not in (FORMAT_VERSION, SENSITIVE_FORMAT_VERSION):
            raise RegistryError(
                f"manifest format_version {d.get('format_version')!r} is not one this streamserve "
                f"reads ({FORMAT_VERSION} or {SENSITIVE_FORMAT_VERSION}); use the streamserve "
                f"release that wrote it"
            )
        try:
            return cls(
                model=d["model"],
                version=d["version"],
                architecture=d["architecture"],
                hyperparameters=d["hyperparameters"],
                inputs=InputSchema.from_json(d["inputs"]),
                outputs=OutputSchema.from_json(d["outputs"]),
                metrics=d["metrics"],
                lineage=d["lineage"],
                # Versions registered before drift statistics existed have none.
                reference=d.get("reference", {}),
                param_hashes=d["param_hashes"],
            )
        except KeyError as e:
            raise RegistryError(
                f"manifest lacks the field {e.args[0]!r}; it was not written by Registry.register"
            ) from None


def fingerprint(*arrays: np.ndarray) -> str:
    """sha256 over each array's dtype, shape and bytes: names the exact data a model saw."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape};".encode())
        h.update(a.data)
    return h.hexdigest()


def lineage(X: np.ndarray, y: np.ndarray, *, code_revision: str, created_by: str,
            created_at: datetime.datetime, **details: Any) -> dict[str, Any]:
    """A manifest's lineage: the fingerprint of the training matrix ``X`` (n, features) and
    labels ``y`` (n,), the code revision ("unknown" outside a git checkout), the time
    (timezone-aware; stored as UTC ISO 8601) and who trained (``user@host``), plus ``details``.

    The caller finds the revision, the user and the time, so this stays free of I/O.
    """
    if created_at.tzinfo is None:
        raise RegistryError("lineage created_at must be timezone-aware, e.g. "
                            "datetime.datetime.now(datetime.UTC)")
    return {
        **details,
        "data_fingerprint": fingerprint(X, y),
        "code_revision": code_revision,
        "created_at": created_at.astimezone(datetime.UTC).isoformat(timespec="seconds"),
        "created_by": created_by,
    }


def parse_params(data: bytes) -> dict[str, np.ndarray]:
    """The arrays of a ``params.npz`` file's bytes (hash them first: see ``Registry.load_params``)."""
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}


def check_model_name(model: str) -> None:
    if not MODEL_NAME.fullmatch(model):
        raise RegistryError(
            f"{model!r} is not a model name: use letters, digits, '.', '_' and '-', "
            f"starting with a letter or digit"
        )


def _check_lineage(lineage: Mapping[str, Any]) -> None:
    missing = [k for k in LINEAGE_KEYS if not isinstance(lineage.get(k), str) or not lineage[k]]
    if missing:
        raise RegistryError(
            f"manifest lineage lacks {', '.join(missing)} (each a non-empty string): build it with "
            f"pipeline.registry.lineage(X, y, code_revision=..., created_by=..., created_at=...)")
    if not re.fullmatch(r"[0-9a-f]{64}", lineage["data_fingerprint"]):
        raise RegistryError(f"manifest lineage data_fingerprint must be a sha256 (64 hex digits) "
                            f"from pipeline.registry.fingerprint, got {lineage['data_fingerprint']!r}")
    try:
        stamp = datetime.datetime.fromisoformat(lineage["created_at"])
    except ValueError:
        stamp = None
    if stamp is None or stamp.utcoffset() != datetime.timedelta(0):
        raise RegistryError(f"manifest lineage created_at must be an ISO 8601 time in UTC, e.g. "
                            f"2026-11-30T05:00:00+00:00, got {lineage['created_at']!r}")
