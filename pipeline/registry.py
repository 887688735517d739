"""The model registry's on-disk format: one immutable folder per model version.

Layout under the registry root::

    <model>/<version>/params.npz      parameters, numpy's npz (never pickle)
    <model>/<version>/manifest.json   Manifest.to_json(), with the sha256 of params.npz
    <model>/<version>/signature.json  Ed25519 signature over the whole manifest (``pipeline.signing``)

Versions are "1", "2", ... assigned by ``Registry.register``. A version folder
appears in one ``os.rename`` of a fully written temporary folder, so readers
never see half a version, and an existing version is never overwritten.
``Registry.import_archive`` places a version exported elsewhere (``Registry.export``)
the same way, under the version number its manifest names.

The signature sits beside the manifest rather than in it, so signing a version
after registration changes neither its manifest nor its parameters.
"""

from __future__ import annotations

import contextlib
import datetime
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import tarfile
import uuid
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
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
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_VERSION = re.compile(r"[1-9][0-9]*")


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
        if not _VERSION.fullmatch(self.version):
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

    def folder(self, model: str, version: str) -> Path:
        """The version's folder; a ``RegistryError`` that lists what exists when it does not."""
        return self._version_dir(model, version)

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
        return parse_params(data)

    def register(self, draft: ManifestDraft, params: Mapping[str, np.ndarray], *,
                 sidecar: Callable[[bytes], Mapping[str, bytes]] | None = None) -> Manifest:
        """Store ``params`` under the model's next version and return its manifest.

        ``sidecar`` gets the manifest file's bytes and returns more files for the version
        folder (``{SIGNATURE_FILE: ...}``: ``pipeline.signing.register_signed``); they are
        written before the version appears, so no reader sees it unsigned.
        """
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
            for name, content in (sidecar(text.encode()) if sidecar else {}).items():
                if name not in VERSION_FILES or name in (MANIFEST_FILE, PARAMS_FILE):
                    raise RegistryError(f"a sidecar may add only {SIGNATURE_FILE}, not {name!r}")
                _write(incoming / name, content)
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

    def export(self, model: str, version: str, out: Path) -> Path:
        """Write the version folder (manifest, parameters, signature) to ``out``, a .tar.gz.

        The archive holds ``<model>/<version>/<file>`` entries with fixed times and owners, so
        exporting a version twice gives the same bytes. ``out`` is never overwritten.
        """
        folder = self._version_dir(model, version)
        out = Path(out)
        if out.exists():
            raise RegistryError(f"{out} already exists; remove it or choose another --out")
        partial = out.with_name(f".{out.name}.{uuid.uuid4().hex}.partial")
        try:
            with open(partial, "wb") as f:
                # filename and mtime fixed: the same version always exports to the same bytes.
                with gzip.GzipFile(filename="", fileobj=f, mode="wb", mtime=0) as gz, \
                        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
                    for name in VERSION_FILES:
                        path = folder / name
                        if not path.is_file():
                            continue
                        data = path.read_bytes()
                        info = tarfile.TarInfo(f"{model}/{version}/{name}")
                        info.size, info.mode, info.mtime = len(data), 0o644, 0
                        tar.addfile(info, io.BytesIO(data))
                f.flush()
                os.fsync(f.fileno())
            os.link(partial, out)  # unlike rename, fails rather than replace a file made meanwhile
        except FileExistsError:
            raise RegistryError(f"{out} already exists; remove it or choose another --out") from None
        except OSError as e:
            raise RegistryError(f"cannot write {out}: {e}") from e
        finally:
            partial.unlink(missing_ok=True)
        return out

    def import_archive(self, archive: Path, *, check: Callable[[Path, str, str], object]) -> Manifest:
        """Register the version that ``archive`` (from ``export``) holds, under its own number.

        ``check(folder, model, version)`` runs on the unpacked version before it appears
        and refuses it by raising (``pipeline.signing.import_version`` verifies the signature
        there). An existing version is never replaced; a refused one leaves nothing behind.
        """
        model, version, files = _read_archive(Path(archive))
        model_dir = self._model_dir(model)
        target = model_dir / version
        exists = RegistryError(
            f"{model}:{version} already exists in the registry at {self.root}; versions are never "
            f"overwritten: compare them with `streamserve models show {model} {version}`")
        if target.exists():
            raise exists
        created = not model_dir.exists()
        model_dir.mkdir(parents=True, exist_ok=True)
        incoming = model_dir / f".incoming-{uuid.uuid4().hex}"
        incoming.mkdir()
        try:
            for name, data in files.items():
                _write(incoming / name, data)
            check(incoming, model, version)
            if target.exists():
                raise FileExistsError(target)
            os.rename(incoming, target)
        except BaseException as e:
            shutil.rmtree(incoming, ignore_errors=True)
            if created:
                with contextlib.suppress(OSError):
                    model_dir.rmdir()
            if isinstance(e, OSError):
                if target.exists():
                    raise exists from None
                raise RegistryError(f"cannot write {model}:{version} under {model_dir}: {e}") from e
            raise
        _fsync_dir(model_dir)
        return self.manifest(model, version)

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


def _read_archive(archive: Path) -> tuple[str, str, dict[str, bytes]]:
    """The model, version and files of an exported version; refuses anything else in it."""
    def refuse(why: str) -> RegistryError:
        return RegistryError(f"{archive} is not a streamserve model export ({why}); make one with "
                             f"`streamserve models export MODEL VERSION --out FILE`")

    files: dict[str, bytes] = {}
    where: set[tuple[str, str]] = set()
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                parts = member.name.split("/")
                if member.isdir() and len(parts) <= 2:
                    continue
                # Only plain files at <model>/<version>/<known file>: no links, no paths out.
                if not member.isfile() or len(parts) != 3 or parts[2] not in VERSION_FILES:
                    raise refuse(f"unexpected entry {member.name!r}")
                if not _MODEL_NAME.fullmatch(parts[0]) or not _VERSION.fullmatch(parts[1]):
                    raise refuse(f"{member.name!r} does not name a model and version")
                where.add((parts[0], parts[1]))
                if len(where) > 1:
                    raise refuse("it must hold exactly one model version")
                if parts[2] in files:
                    raise refuse(f"{member.name!r} appears twice")
                extracted = tar.extractfile(member)
                assert extracted is not None  # a regular file always has content
                files[parts[2]] = extracted.read()
    except FileNotFoundError:
        raise RegistryError(f"{archive} does not exist") from None
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise refuse(f"not a .tar.gz: {e}") from None
    if not where:
        raise refuse("it is empty")
    missing = [n for n in (MANIFEST_FILE, PARAMS_FILE) if n not in files]
    if missing:
        raise refuse(f"it lacks {', '.join(missing)}")
    (model, version), = where
    return model, version, files


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
