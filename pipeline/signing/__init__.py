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

Modules: ``keys`` (key files and the trusted keys), ``signature`` (what is signed, the
``signature.json`` format, ``SignatureError``), ``verify`` (checking a version),
``versions`` (registering signed, signing and importing versions), ``atomic`` (whole-file
writes).
"""

from pipeline.signing.keys import (
    SigningKeyError,
    TrustedKeys,
    ensure_signing_key,
    generate_signing_key,
    key_id,
    load_private_key,
    load_public_key,
    public_key_path,
)
from pipeline.signing.signature import (
    ALGORITHM,
    SIGNATURE_FORMAT,
    Reason,
    Signature,
    SignatureError,
    canonical_manifest,
    sign_manifest,
)
from pipeline.signing.verify import (
    VerifiedVersion,
    newest_verified,
    verify_folder,
    verify_version,
)
from pipeline.signing.versions import import_version, register_signed, sign_version

__all__ = [
    "ALGORITHM",
    "SIGNATURE_FORMAT",
    "Reason",
    "Signature",
    "SignatureError",
    "SigningKeyError",
    "TrustedKeys",
    "VerifiedVersion",
    "canonical_manifest",
    "ensure_signing_key",
    "generate_signing_key",
    "import_version",
    "key_id",
    "load_private_key",
    "load_public_key",
    "newest_verified",
    "public_key_path",
    "register_signed",
    "sign_manifest",
    "sign_version",
    "verify_folder",
    "verify_version",
]
