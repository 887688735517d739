"""The registry itself: model versions stored under a root folder, one immutable folder
per version, registered, read, exported and imported.

A version folder appears in one ``os.rename`` of a fully written temporary folder, so
readers never see half a version, and an existing version is never overwritten.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
import uuid
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from pipeline.registry.manifest import (
    MANIFEST_FILE,
    MODEL_NAME,
    PARAMS_FILE,
    SIGNATURE_FILE,
    VERSION_FILES,
    VERSION_NAME,
    Manifest,
    ManifestDraft,
    RegistryError,
    check_model_name,
    parse_params,
)


class Registry:
    """Model versions stored under ``root``; safe for concurrent readers."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def models(self) -> list[str]:
        """Names of the models with at least one version, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if MODEL_NAME.fullmatch(p.name) and self.versions(p.name))

    def versions(self, model: str) -> list[str]:
        """The model's versions in numeric order ("2" before "10"); empty when there are none."""
        folder = self._model_dir(model)
        if not folder.is_dir():
            return []
        return sorted((p.name for p in folder.iterdir() if VERSION_NAME.fullmatch(p.name)), key=int)

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
        check_model_name(model)
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
                if not MODEL_NAME.fullmatch(parts[0]) or not VERSION_NAME.fullmatch(parts[1]):
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
