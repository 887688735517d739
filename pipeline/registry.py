"""The model registry's on-disk format: one immutable folder per model version.

Layout under the registry root::

    <model>/<version>/params.npz      parameters, numpy's npz (never pickle)
    <model>/<version>/manifest.json   Manifest.to_json(), with the sha256 of params.npz

Versions are "1", "2", ... assigned by ``Registry.register``. A version folder
appears in one ``os.rename`` of a fully written temporary folder, so readers
never see half a version, and an existing version is never overwritten.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.schema import InputSchema, OutputSchema

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
PARAMS_FILE = "params.npz"

# Model names become folder names and arrive in requests: no separators, no dot files.
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_VERSION = re.compile(r"[1-9][0-9]*")


class RegistryError(Exception):
    """The registry cannot do what was asked; the message says what to do instead."""


@dataclass(frozen=True, slots=True)
class ManifestDraft:
    """What training knows about a model; ``Registry.register`` adds the version and hashes.

    ``reference`` holds the drift reference statistics of the training data
    (``pipeline.drift``: ``{"features": [...], "prediction": {...}}``). It, and
    ``hyperparameters``, ``metrics`` and ``lineage``, are stored as strict JSON; they are
    normalised here (tuples become lists), so a manifest compares equal after a round trip.
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
        _check_model_name(self.model)
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


@dataclass(frozen=True, slots=True)
class Manifest(ManifestDraft):
    """A registered model version: the draft plus what the registry assigned.

    ``lineage`` holds ``data_fingerprint`` (see ``fingerprint``), ``seed``,
    ``code_revision``, ``created_at`` (ISO 8601, UTC) and ``created_by``.
    ``param_hashes`` maps each parameter file in the version folder to its sha256.
    """

    version: str
    param_hashes: dict[str, str]

    def __post_init__(self) -> None:
        ManifestDraft.__post_init__(self)
        if not _VERSION.fullmatch(self.version):
            raise RegistryError(f"version must be a positive whole number like '3', got {self.version!r}")
        object.__setattr__(self, "param_hashes", {str(k): str(v) for k, v in self.param_hashes.items()})

    @classmethod
    def of(cls, draft: ManifestDraft, version: str, param_hashes: dict[str, str]) -> Manifest:
        fields_of_draft = {f.name: getattr(draft, f.name) for f in fields(ManifestDraft)}
        return cls(**fields_of_draft, version=version, param_hashes=param_hashes)

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
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
        if d.get("format_version") != FORMAT_VERSION:
            raise RegistryError(
                f"manifest format_version {d.get('format_version')!r} is not one this streamserve "
                f"reads ({FORMAT_VERSION}); use the streamserve release that wrote it"
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


class Registry:
    """Model versions stored under ``root``; safe for concurrent readers."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def models(self) -> list[str]:
        """Names of the models with at least one version, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if _MODEL_NAME.fullmatch(p.name) and self.versions(p.name))

    def versions(self, model: str) -> list[str]:
        """The model's versions in numeric order ("2" before "10"); empty when there are none."""
        folder = self._model_dir(model)
        if not folder.is_dir():
            return []
        return sorted((p.name for p in folder.iterdir() if _VERSION.fullmatch(p.name)), key=int)

    def latest(self, model: str) -> str | None:
        versions = self.versions(model)
        return versions[-1] if versions else None

    def manifest(self, model: str, version: str) -> Manifest:
        path = self._version_dir(model, version) / MANIFEST_FILE
        try:
            manifest = Manifest.from_json(json.loads(path.read_bytes()))
        except FileNotFoundError:
            raise RegistryError(f"{path} is missing: {model} version {version} is incomplete; "
                                f"remove its folder and register the model again") from None
        except (RegistryError, ValueError, TypeError) as e:  # ValueError covers bad JSON
            raise RegistryError(f"{path} cannot be read: {e}") from None
        if (manifest.model, manifest.version) != (model, version):
            raise RegistryError(
                f"{path} describes {manifest.model} version {manifest.version}, not {model} version "
                f"{version}: version folders must not be moved or copied by hand"
            )
        return manifest

    def load_params(self, model: str, version: str) -> dict[str, np.ndarray]:
        """The version's parameters, after checking them against the manifest's sha256."""
        manifest = self.manifest(model, version)
        path = self._version_dir(model, version) / PARAMS_FILE
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise RegistryError(f"{path} is missing: {model} version {version} is incomplete; "
                                f"remove its folder and register the model again") from None
        # Hash the very bytes that get parsed, so the file cannot change in between.
        if hashlib.sha256(data).hexdigest() != manifest.param_hashes.get(PARAMS_FILE):
            raise RegistryError(
                f"{model} version {version}: {PARAMS_FILE} does not match the sha256 in its manifest, "
                f"so the artifact was modified after registration; do not serve it, register the "
                f"model again as a new version"
            )
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}

    def register(self, draft: ManifestDraft, params: Mapping[str, np.ndarray]) -> Manifest:
        """Store ``params`` under the model's next version and return its manifest."""
        if not params:
            raise RegistryError(f"no parameters given for {draft.model}: pass the trained arrays")
        model_dir = self._model_dir(draft.model)
        model_dir.mkdir(parents=True, exist_ok=True)
        version = str(int(self.latest(draft.model) or 0) + 1)
        target = model_dir / version
        # Same parent as the target, so the final rename stays on one file system.
        incoming = model_dir / f".incoming-{uuid.uuid4().hex}"
        incoming.mkdir()
        try:
            buffer = io.BytesIO()
            np.savez(buffer, allow_pickle=False, **{k: np.asarray(v) for k, v in params.items()})
            data = buffer.getvalue()
            _write(incoming / PARAMS_FILE, data)
            manifest = Manifest.of(draft, version,
                                   {PARAMS_FILE: hashlib.sha256(data).hexdigest()})
            text = json.dumps(manifest.to_json(), indent=2, sort_keys=True, allow_nan=False) + "\n"
            _write(incoming / MANIFEST_FILE, text.encode())
            # rename() would silently replace an empty folder, so refuse any existing one first;
            # a non-empty one makes rename() itself fail.
            if target.exists():
                raise FileExistsError(target)
            os.rename(incoming, target)
        except OSError as e:
            shutil.rmtree(incoming, ignore_errors=True)
            if target.exists():
                raise RegistryError(
                    f"{target} already exists (another registration of {draft.model} ran at the same "
                    f"time?); versions are never overwritten: register again to get the next version"
                ) from None
            raise RegistryError(
                f"cannot write {draft.model} version {version} under {model_dir}: {e}"
            ) from e
        except BaseException:
            shutil.rmtree(incoming, ignore_errors=True)
            raise
        _fsync_dir(model_dir)
        return manifest

    def _model_dir(self, model: str) -> Path:
        _check_model_name(model)
        return self.root / model

    def _version_dir(self, model: str, version: str) -> Path:
        versions = self.versions(model)
        if version in versions:
            return self._model_dir(model) / version
        if not versions:
            known = ", ".join(self.models()) or "none"
            raise RegistryError(
                f"unknown model {model!r} in the registry at {self.root} (known models: {known}); "
                f"train and register it first, e.g. `streamserve models train {model}`"
            )
        raise RegistryError(
            f"{model} has no version {version!r} (known versions: {', '.join(versions)})"
        )


def _check_model_name(model: str) -> None:
    if not _MODEL_NAME.fullmatch(model):
        raise RegistryError(
            f"{model!r} is not a model name: use letters, digits, '.', '_' and '-', "
            f"starting with a letter or digit"
        )


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable across a power loss."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
