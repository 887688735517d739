"""Signed model versions: Ed25519 signatures over the whole manifest.

What is signed is ``canonical_manifest``: the manifest's JSON with sorted keys and no
spaces, after a fixed prefix. The manifest holds the sha256 of every parameter file, so
one signature covers the parameters too, and verification checks two things:

1. the signature over the manifest, by a trusted key: a changed manifest fails here;
2. the parameter files against the manifest's hashes: changed parameters fail here.

The signature lives in ``signature.json`` beside the manifest; signing writes only that
file, so a version signed after registration keeps its manifest and parameters as they
were. Failures are ``SignatureError`` with a stable ``reason``:

    RegistryError
     └── SignatureError.reason: unsigned | unknown_key | bad_signature
                                | tampered_manifest | tampered_parameters
    RegistryError
     └── SigningKeyError       a key file cannot be written or read

Keys: a private key is PKCS#8 PEM, written with mode 0600; its public key is
SubjectPublicKeyInfo PEM in the file of the same name ending in ``.pub``. A key is known
by ``key_id``: the first 16 hex digits of the sha256 of its 32 raw bytes.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import os
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from pipeline.registry import (
    MANIFEST_FILE,
    PARAMS_FILE,
    SIGNATURE_FILE,
    Manifest,
    ManifestDraft,
    Registry,
    RegistryError,
    parse_params,
)

SIGNATURE_FORMAT = 1
ALGORITHM = "Ed25519"
# Domain separation: these bytes can never be mistaken for another message the key signs.
_PREFIX = b"streamserve manifest signature v1\n"

Reason = Literal["unsigned", "unknown_key", "bad_signature", "tampered_manifest",
                 "tampered_parameters"]


class SignatureError(RegistryError):
    """A version's signature or content does not check out; ``reason`` says which way.

    ``model`` and ``version`` name the version; the message says what failed and what to do.
    A check that failed: ``streamserve`` exits 1 on it (``exit_code``), not 2.
    """

    exit_code = 1

    def __init__(self, reason: Reason, model: str, version: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.model = model
        self.version = version


class SigningKeyError(RegistryError):
    """A key file cannot be written or read; the message names the file and the fix."""


# ---- keys -------------------------------------------------------------------------------


def key_id(public_key: Ed25519PublicKey) -> str:
    """First 16 hex digits of the sha256 of the key's 32 raw bytes."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_key_path(private_key_path: Path) -> Path:
    """Where the public key of ``private_key_path`` lives: ``signing.key`` -> ``signing.pub``."""
    return Path(private_key_path).with_suffix(".pub")


def generate_signing_key(path: Path) -> Ed25519PrivateKey:
    """Create a key pair: the private key at ``path`` (mode 0600) and ``public_key_path(path)``.

    Refuses to replace an existing private key: versions it signed would lose their signer.
    """
    path = Path(path)
    if path.exists():
        raise SigningKeyError(f"{path} already exists; keep it (versions it signed are trusted by "
                              f"its public key) or choose another path, e.g. --out new.key")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.fchmod(fd, 0o600)  # whatever the umask
            os.write(fd, pem)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            # link, not rename: two trainings creating the key at once must not both win.
            os.link(partial, path)
        finally:
            partial.unlink()
    except FileExistsError:
        raise SigningKeyError(f"{path} already exists (created meanwhile); keep it or choose "
                              f"another path") from None
    except OSError as e:
        raise SigningKeyError(f"cannot write the signing key {path}: {e.strerror or e}") from None
    _write_public_key(public_key_path(path), key.public_key())
    return key


def ensure_signing_key(path: Path) -> Ed25519PrivateKey:
    """The private key at ``path``, created with its ``.pub`` when missing (a fresh machine)."""
    path = Path(path)
    if not path.exists():
        try:
            return generate_signing_key(path)
        except SigningKeyError:
            if not path.exists():  # not a lost race: a real failure
                raise
    key = load_private_key(path)
    if not public_key_path(path).exists():
        _write_public_key(public_key_path(path), key.public_key())
    return key


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """The Ed25519 private key in the PEM file ``path``."""
    data = _read_key_file(Path(path), "signing key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise SigningKeyError(f"{path} is not an unencrypted PEM private key ({e}); make one with "
                              f"`streamserve keys generate --out {path}`") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"{path} holds a {type(key).__name__}, not an Ed25519 key; make one "
                              f"with `streamserve keys generate --out {path}`")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """The Ed25519 public key in the PEM file ``path`` (a ``.pub`` file)."""
    data = _read_key_file(Path(path), "public key")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as e:
        raise SigningKeyError(f"{path} is not a PEM public key ({e}); copy the .pub file that "
                              f"`streamserve keys generate` wrote beside the private key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SigningKeyError(f"{path} holds a {type(key).__name__}, not an Ed25519 public key")
    return key


@dataclass(frozen=True, slots=True)
class TrustedKeys:
    """The public keys whose signatures are accepted, by key id; ``source`` names where
    they came from, for error messages."""

    keys: Mapping[str, Ed25519PublicKey]
    source: str = "the trusted keys"

    @classmethod
    def of(cls, *public_keys: Ed25519PublicKey, source: str = "the trusted keys") -> TrustedKeys:
        return cls({key_id(k): k for k in public_keys}, source)

    @classmethod
    def load(cls, path: Path) -> TrustedKeys:
        """A ``.pub`` file, or every ``*.pub`` file of a folder; none when ``path`` is missing."""
        path = Path(path)
        if path.is_dir():
            files: Iterable[Path] = sorted(path.glob("*.pub"))
        elif path.exists():
            files = [path]
        else:
            files = []
        return cls.of(*(load_public_key(f) for f in files), source=str(path))

    def __contains__(self, kid: object) -> bool:
        return kid in self.keys


# ---- signing ----------------------------------------------------------------------------


def canonical_manifest(document: Mapping[str, Any]) -> bytes:
    """The bytes a signature covers: the whole manifest as canonical JSON, after a prefix."""
    body = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False)
    return _PREFIX + body.encode()


@dataclass(frozen=True, slots=True)
class Signature:
    """The content of ``signature.json``: who signed which manifest, and the signature.

    ``manifest_sha256`` is the sha256 of ``canonical_manifest``; it is not trusted, only used to
    tell a changed manifest (``tampered_manifest``) from a damaged signature (``bad_signature``).
    """

    key_id: str
    manifest_sha256: str
    signature: bytes = field(repr=False)

    def to_json(self) -> dict[str, Any]:
        return {"format_version": SIGNATURE_FORMAT, "algorithm": ALGORITHM, "key_id": self.key_id,
                "signs": MANIFEST_FILE, "manifest_sha256": self.manifest_sha256,
                "signature": base64.b64encode(self.signature).decode()}

    def to_bytes(self) -> bytes:
        return (json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, d: Any) -> Signature:
        """Raises ``ValueError`` when ``d`` is not a signature this streamserve writes."""
        if not isinstance(d, dict) or d.get("format_version") != SIGNATURE_FORMAT \
                or d.get("algorithm") != ALGORITHM:
            raise ValueError(f"not a format {SIGNATURE_FORMAT} {ALGORITHM} signature")
        key, digest, text = d.get("key_id"), d.get("manifest_sha256"), d.get("signature")
        if not all(isinstance(v, str) for v in (key, digest, text)):
            raise ValueError("key_id, manifest_sha256 and signature must be strings")
        try:
            signature = base64.b64decode(text, validate=True)
        except binascii.Error as e:
            raise ValueError(f"signature is not base64: {e}") from None
        if len(signature) != 64:
            raise ValueError(f"an Ed25519 signature has 64 bytes, this one {len(signature)}")
        return cls(key, digest, signature)


def sign_manifest(manifest_bytes: bytes, private_key: Ed25519PrivateKey) -> Signature:
    """The signature of a manifest file's bytes (parsed, then made canonical)."""
    message = canonical_manifest(json.loads(manifest_bytes))
    return Signature(key_id(private_key.public_key()), hashlib.sha256(message).hexdigest(),
                     private_key.sign(message))


def register_signed(registry: Registry, draft: ManifestDraft, params: Mapping[str, np.ndarray],
                    private_key: Ed25519PrivateKey) -> Manifest:
    """``registry.register``, with the signature written before the version appears."""
    return registry.register(draft, params, sidecar=lambda manifest_bytes: {
        SIGNATURE_FILE: sign_manifest(manifest_bytes, private_key).to_bytes()})


def sign_version(registry: Registry, model: str, version: str,
                 private_key: Ed25519PrivateKey) -> Signature:
    """Sign a registered version: write ``signature.json`` beside its manifest (replacing any).

    The parameters are checked against the manifest first, so a changed artifact is never
    signed. The manifest and parameters are left as they are.
    """
    folder = registry.folder(model, version)
    manifest_bytes = (folder / MANIFEST_FILE).read_bytes()
    manifest = _parse_manifest(manifest_bytes, folder, model, version, signed_by=None)
    _check_params(folder, manifest)
    signature = sign_manifest(manifest_bytes, private_key)
    _replace(folder / SIGNATURE_FILE, signature.to_bytes())
    return signature


# ---- verifying --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VerifiedVersion:
    """A version whose parameters match its manifest, and whose signature was checked.

    ``problem`` is None when a trusted key's signature verified; otherwise (only when unsigned
    versions were allowed) the ``SignatureError`` that was let through. ``key_id`` is the key
    the signature file names, None when there is none. ``params()`` parses the very bytes
    that were hashed, so the parameters served are the ones checked.
    """

    manifest: Manifest
    key_id: str | None
    problem: SignatureError | None
    _param_bytes: bytes = field(repr=False, compare=False)

    @property
    def model(self) -> str:
        return self.manifest.model

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def verified(self) -> bool:
        return self.problem is None

    @property
    def status(self) -> str:
        """"verified", or the reason code of the problem that was let through."""
        return "verified" if self.problem is None else self.problem.reason

    def params(self) -> dict[str, np.ndarray]:
        return parse_params(self._param_bytes)


def verify_version(registry: Registry, model: str, version: str, trusted_public_keys: TrustedKeys,
                   allow_unsigned: bool = False) -> VerifiedVersion:
    """Check a registered version's signature and parameters; raise ``SignatureError`` if they fail.

    With ``allow_unsigned`` (development only), a missing or invalid signature is let through
    and reported in the result's ``problem``. Parameters that do not match the manifest are
    refused either way: they are not what was registered.
    """
    return verify_folder(registry.folder(model, version), model, version, trusted_public_keys,
                         allow_unsigned)


def newest_verified(registry: Registry, model: str, trusted_public_keys: TrustedKeys,
                    allow_unsigned: bool = False) -> str | None:
    """The newest version of ``model`` that ``verify_version`` accepts (what a worker
    without a spec for it serves); None when none does."""
    for version in reversed(registry.versions(model)):
        try:
            verify_version(registry, model, version, trusted_public_keys, allow_unsigned)
        except RegistryError:
            continue
        return version
    return None


def verify_folder(folder: Path, model: str, version: str, trusted_public_keys: TrustedKeys,
                  allow_unsigned: bool = False) -> VerifiedVersion:
    """``verify_version`` for a version folder outside a registry (an import being unpacked)."""
    name = f"{model}:{version}"
    sign_hint = f"`streamserve models sign {model} {version}`"
    try:
        manifest_bytes = (folder / MANIFEST_FILE).read_bytes()
    except FileNotFoundError:
        raise RegistryError(f"{folder / MANIFEST_FILE} is missing: {name} is incomplete; remove "
                            f"its folder and register the model again") from None
    signature, problem = _check_signature(folder, manifest_bytes, name, model, version,
                                          trusted_public_keys, sign_hint)
    if problem is not None and not allow_unsigned:
        raise problem
    manifest = _parse_manifest(manifest_bytes, folder, model, version,
                               signed_by=signature.key_id if problem is None and signature else None)
    param_bytes = _check_params(folder, manifest)
    return VerifiedVersion(manifest, signature.key_id if signature else None, problem, param_bytes)


def import_version(registry: Registry, archive: Path, trusted_public_keys: TrustedKeys,
                   allow_unsigned: bool = False) -> VerifiedVersion:
    """Register the version an export holds, after verifying it; refuses an existing version."""
    results: list[VerifiedVersion] = []

    def check(folder: Path, model: str, version: str) -> None:
        results.append(verify_folder(folder, model, version, trusted_public_keys, allow_unsigned))

    registry.import_archive(archive, check=check)
    return results[0]


def _check_signature(folder: Path, manifest_bytes: bytes, name: str, model: str, version: str,
                     trusted: TrustedKeys, sign_hint: str
                     ) -> tuple[Signature | None, SignatureError | None]:
    """The signature file's content, and what is wrong with it (None when it verifies)."""
    try:
        raw = (folder / SIGNATURE_FILE).read_bytes()
    except FileNotFoundError:
        return None, SignatureError(
            "unsigned", model, version,
            f"{name} is not signed (no {SIGNATURE_FILE} beside its manifest); sign it with "
            f"{sign_hint}, or set STREAMSERVE_ALLOW_UNSIGNED=on (development only)")
    try:
        signature = Signature.from_json(json.loads(raw))
    except ValueError as e:  # bad JSON too
        return None, SignatureError(
            "bad_signature", model, version,
            f"{name}: {SIGNATURE_FILE} cannot be read ({e}); if you trust this version's content, "
            f"re-sign it with {sign_hint}, else restore it from an export or train a new version")
    public_key = trusted.keys.get(signature.key_id)
    if public_key is None:
        known = ", ".join(sorted(trusted.keys)) or "none"
        return signature, SignatureError(
            "unknown_key", model, version,
            f"{name} is signed by key {signature.key_id} which is not trusted (trusted in "
            f"{trusted.source}: {known}); add its public key to STREAMSERVE_TRUSTED_KEYS or "
            f"re-sign with {sign_hint}")
    try:
        message = canonical_manifest(json.loads(manifest_bytes))
    except ValueError as e:  # not JSON, or a number JSON cannot hold
        return signature, SignatureError(
            "tampered_manifest", model, version,
            f"{name}: {MANIFEST_FILE} is no longer the JSON that key {signature.key_id} signed "
            f"({e}); do not serve it: restore the version from an export or train a new version")
    try:
        public_key.verify(signature.signature, message)
    except InvalidSignature:
        if hashlib.sha256(message).hexdigest() != signature.manifest_sha256:
            return signature, SignatureError(
                "tampered_manifest", model, version,
                f"{name}: {MANIFEST_FILE} was changed after key {signature.key_id} signed it (the "
                f"signature covers the whole manifest); do not serve it: restore the version from "
                f"an export or train a new version")
        return signature, SignatureError(
            "bad_signature", model, version,
            f"{name}: the signature in {SIGNATURE_FILE} does not verify with key "
            f"{signature.key_id} although the manifest is the one it names (a damaged or forged "
            f"signature); if you trust this version's content, re-sign it with {sign_hint}, else "
            f"restore it from an export or train a new version")
    return signature, None


def _parse_manifest(manifest_bytes: bytes, folder: Path, model: str, version: str,
                    signed_by: str | None) -> Manifest:
    try:
        manifest = Manifest.from_json(json.loads(manifest_bytes))
    except (RegistryError, ValueError, TypeError) as e:
        if signed_by is None:
            raise RegistryError(f"{folder / MANIFEST_FILE} cannot be read: {e}") from None
        # Signed, so genuine: most likely a manifest format this release does not read.
        raise RegistryError(f"{model}:{version} is signed by key {signed_by} but its manifest "
                            f"cannot be read: {e}") from None
    if (manifest.model, manifest.version) != (model, version):
        raise RegistryError(
            f"{folder / MANIFEST_FILE} describes {manifest.model}:{manifest.version}, not "
            f"{model}:{version}: version folders must not be moved or renamed by hand")
    return manifest


def _check_params(folder: Path, manifest: Manifest) -> bytes:
    """The bytes of the parameter file, after checking every hashed file against the manifest."""
    name = f"{manifest.model}:{manifest.version}"
    contents: dict[str, bytes] = {}
    for file, expected in sorted(manifest.param_hashes.items()):
        if "/" in file or file.startswith("."):
            raise SignatureError("tampered_manifest", manifest.model, manifest.version,
                                 f"{name}: its manifest hashes {file!r}, which is not a file of "
                                 f"the version folder; do not serve it")
        try:
            contents[file] = (folder / file).read_bytes()
        except FileNotFoundError:
            contents[file] = b""
            actual = "missing"
        else:
            actual = hashlib.sha256(contents[file]).hexdigest()
        if actual != expected:
            raise SignatureError(
                "tampered_parameters", manifest.model, manifest.version,
                f"{name}: {file} does not match the sha256 in its manifest ({actual}, expected "
                f"{expected}), so the parameters changed after registration; do not serve it: "
                f"restore the version from an export or train a new version with "
                f"`streamserve models train {manifest.model}`")
    if PARAMS_FILE not in contents:
        raise SignatureError("tampered_manifest", manifest.model, manifest.version,
                             f"{name}: its manifest has no sha256 for {PARAMS_FILE}; do not serve "
                             f"it: restore the version from an export or train a new version")
    return contents[PARAMS_FILE]


def _read_key_file(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise SigningKeyError(f"the {what} {path} does not exist; create a key pair with "
                              f"`streamserve keys generate --out {path}`") from None
    except OSError as e:
        raise SigningKeyError(f"the {what} {path} cannot be read: {e.strerror or e}") from None


def _write_public_key(path: Path, key: Ed25519PublicKey) -> None:
    pem = key.public_bytes(serialization.Encoding.PEM,
                           serialization.PublicFormat.SubjectPublicKeyInfo)
    try:
        _replace(path, pem)
    except OSError as e:
        raise SigningKeyError(f"cannot write the public key {path}: {e.strerror or e}") from None


def _replace(path: Path, data: bytes) -> None:
    """Write ``path`` whole or not at all: a temporary file renamed over it, then fsynced."""
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
    try:
        with open(partial, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
