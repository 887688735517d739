"""Writing signed versions: registering one signed, signing a registered one, and importing
an export after verifying it (``Registry.export`` writes the archives).

The signature lives in ``signature.json`` beside the manifest; signing writes only that
file, so a version signed after registration keeps its manifest and parameters as they were.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pipeline.registry import (
    MANIFEST_FILE,
    SIGNATURE_FILE,
    Manifest,
    ManifestDraft,
    Registry,
)
from pipeline.signing.atomic import replace_file
from pipeline.signing.keys import TrustedKeys
from pipeline.signing.signature import Signature, sign_manifest
from pipeline.signing.verify import VerifiedVersion, check_params, parse_manifest, verify_folder


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
    manifest = parse_manifest(manifest_bytes, folder, model, version, signed_by=None)
    check_params(folder, manifest)
    signature = sign_manifest(manifest_bytes, private_key)
    replace_file(folder / SIGNATURE_FILE, signature.to_bytes())
    return signature


def import_version(registry: Registry, archive: Path, trusted_public_keys: TrustedKeys,
                   allow_unsigned: bool = False) -> VerifiedVersion:
    """Register the version an export holds, after verifying it; refuses an existing version."""
    results: list[VerifiedVersion] = []

    def check(folder: Path, model: str, version: str) -> None:
        results.append(verify_folder(folder, model, version, trusted_public_keys, allow_unsigned))

    registry.import_archive(archive, check=check)
    return results[0]
