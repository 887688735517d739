"""Verifying a version: its signature by a trusted key, then its parameters against the manifest.

``verify_folder`` is the check; ``verify_version`` and ``newest_verified`` apply it to a
registry's versions. ``parse_manifest`` and ``check_params`` are also what signing runs
first (``pipeline.signing.versions``), so a changed artifact is never signed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from cryptography.exceptions import InvalidSignature

from pipeline.registry import (
    MANIFEST_FILE,
    PARAMS_FILE,
    SIGNATURE_FILE,
    Manifest,
    Registry,
    RegistryError,
    parse_params,
)
from pipeline.signing.keys import TrustedKeys
from pipeline.signing.signature import Signature, SignatureError, canonical_manifest


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
    manifest = parse_manifest(manifest_bytes, folder, model, version,
                              signed_by=signature.key_id if problem is None and signature else None)
    param_bytes = check_params(folder, manifest)
    return VerifiedVersion(manifest, signature.key_id if signature else None, problem, param_bytes)


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


def parse_manifest(manifest_bytes: bytes, folder: Path, model: str, version: str,
                   signed_by: str | None) -> Manifest:
    """The manifest of ``model:version`` in ``folder``; ``signed_by`` (a verified key id) only
    changes the message when it cannot be read."""
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


def check_params(folder: Path, manifest: Manifest) -> bytes:
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
