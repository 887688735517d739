"""Version signatures: the bytes a signature covers, the ``signature.json`` format, and
``SignatureError`` with its stable ``reason`` codes.

What is signed is ``canonical_manifest``: the manifest's JSON with sorted keys and no
spaces, after a fixed prefix. The manifest holds the sha256 of every parameter file, so
one signature covers the parameters too.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pipeline.registry import MANIFEST_FILE, RegistryError
from pipeline.signing.keys import key_id

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
