"""Signing keys: Ed25519 key pairs on disk, their key ids, and the set of trusted public keys.

A private key is PKCS#8 PEM, written with mode 0600; its public key is
SubjectPublicKeyInfo PEM in the file of the same name ending in ``.pub``. A key is known
by ``key_id``: the first 16 hex digits of the sha256 of its 32 raw bytes. A key file that
cannot be written or read is a ``SigningKeyError``.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from pipeline.registry import RegistryError
from pipeline.signing.atomic import replace_file


class SigningKeyError(RegistryError):
    """A key file cannot be written or read; the message names the file and the fix."""


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
        replace_file(path, pem)
    except OSError as e:
        raise SigningKeyError(f"cannot write the public key {path}: {e.strerror or e}") from None
