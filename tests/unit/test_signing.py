import base64
import hashlib
import io
import json
import os
import stat
import tarfile

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization

from pipeline.config import ConfigError, Settings
from pipeline.registry import Registry, RegistryError
from pipeline.signing import (
    SignatureError,
    SigningKeyError,
    TrustedKeys,
    canonical_manifest,
    ensure_signing_key,
    generate_signing_key,
    import_version,
    key_id,
    load_private_key,
    load_public_key,
    public_key_path,
    register_signed,
    sign_version,
    verify_version,
)
from tests.unit.test_registry import PARAMS, draft


@pytest.fixture(scope="module")
def key(tmp_path_factory):
    return generate_signing_key(tmp_path_factory.mktemp("keys") / "signing.key")


@pytest.fixture(scope="module")
def other_key(tmp_path_factory):
    return generate_signing_key(tmp_path_factory.mktemp("other") / "signing.key")


@pytest.fixture
def trusted(key):
    return TrustedKeys.of(key.public_key())


@pytest.fixture
def registry(tmp_path):
    return Registry(tmp_path / "registry")


@pytest.fixture
def signed(registry, key):
    """iris:1, signed as it was registered."""
    register_signed(registry, draft(), PARAMS, key)
    return registry.folder("iris", "1")


def refused(registry, trusted, reason, allow_unsigned=False):
    with pytest.raises(SignatureError) as caught:
        verify_version(registry, "iris", "1", trusted, allow_unsigned=allow_unsigned)
    assert caught.value.reason == reason
    assert (caught.value.model, caught.value.version) == ("iris", "1")
    assert "iris:1" in str(caught.value)
    return str(caught.value)


def test_a_signed_version_verifies_and_serves_the_checked_parameters(registry, signed, key, trusted):
    result = verify_version(registry, "iris", "1", trusted)
    assert result.verified and result.status == "verified" and result.problem is None
    assert result.key_id == key_id(key.public_key()) and len(result.key_id) == 16
    assert result.manifest == registry.manifest("iris", "1")
    for name, array in PARAMS.items():
        np.testing.assert_array_equal(result.params()[name], array)


def test_signing_after_registration_changes_neither_manifest_nor_parameters(registry, key, trusted):
    registry.register(draft(), PARAMS)
    folder = registry.folder("iris", "1")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    signature = sign_version(registry, "iris", "1", key)
    after = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert after.keys() - before.keys() == {"signature.json"}
    assert all(after[name] == data for name, data in before.items())
    assert json.loads(after["signature.json"])["key_id"] == signature.key_id
    assert verify_version(registry, "iris", "1", trusted).verified
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temporary files


def test_the_signature_covers_the_whole_manifest_not_its_layout(registry, signed, trusted):
    path = signed / "manifest.json"
    document = json.loads(path.read_text())
    path.write_text(json.dumps(document))  # same content, other whitespace and order
    assert verify_version(registry, "iris", "1", trusted).verified
    assert canonical_manifest(document) == canonical_manifest(dict(reversed(document.items())))
    assert b'"metrics":{"test_accuracy":1.0}' in canonical_manifest(document)


def test_an_unsigned_version_is_refused_unless_allowed(registry, trusted):
    registry.register(draft(), PARAMS)
    message = refused(registry, trusted, "unsigned")
    assert "streamserve models sign iris 1" in message and "STREAMSERVE_ALLOW_UNSIGNED" in message
    result = verify_version(registry, "iris", "1", trusted, allow_unsigned=True)
    assert not result.verified and result.status == "unsigned" and result.key_id is None
    assert result.params().keys() == PARAMS.keys()


def test_changed_parameters_are_refused_even_when_unsigned_versions_are_allowed(registry, signed,
                                                                                  trusted):
    path = signed / "params.npz"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    message = refused(registry, trusted, "tampered_parameters")
    assert "params.npz does not match the sha256" in message and "do not serve it" in message
    refused(registry, trusted, "tampered_parameters", allow_unsigned=True)


def test_an_edited_manifest_is_refused(registry, signed, trusted, key):
    path = signed / "manifest.json"
    document = json.loads(path.read_text())
    document["metrics"]["test_accuracy"] = 0.5
    path.write_text(json.dumps(document))
    message = refused(registry, trusted, "tampered_manifest")
    assert f"changed after key {key_id(key.public_key())} signed it" in message
    assert "train a new version" in message
    result = verify_version(registry, "iris", "1", trusted, allow_unsigned=True)
    assert result.status == "tampered_manifest" and result.manifest.metrics["test_accuracy"] == 0.5


def test_a_manifest_edited_into_new_hashes_is_refused(registry, signed, trusted):
    # Whoever swaps the parameters and writes their hash into the manifest changes the manifest.
    (signed / "params.npz").write_bytes(b"other")
    path = signed / "manifest.json"
    document = json.loads(path.read_text())
    document["param_hashes"]["params.npz"] = hashlib.sha256(b"other").hexdigest()
    path.write_text(json.dumps(document))
    refused(registry, trusted, "tampered_manifest")


def test_a_damaged_signature_is_refused(registry, signed, trusted):
    path = signed / "signature.json"
    document = json.loads(path.read_text())
    raw = bytearray(base64.b64decode(document["signature"]))
    raw[0] ^= 0x01
    document["signature"] = base64.b64encode(bytes(raw)).decode()
    path.write_text(json.dumps(document))
    message = refused(registry, trusted, "bad_signature")
    assert "does not verify" in message and "streamserve models sign iris 1" in message
    path.write_text("not json")
    assert "cannot be read" in refused(registry, trusted, "bad_signature")


def test_a_signature_by_an_untrusted_key_is_refused(registry, signed, key, other_key):
    trusted = TrustedKeys.of(other_key.public_key(), source="/etc/streamserve/keys")
    message = refused(registry, trusted, "unknown_key")
    assert (f"iris:1 is signed by key {key_id(key.public_key())} which is not trusted" in message)
    assert "/etc/streamserve/keys" in message and key_id(other_key.public_key()) in message
    assert "add its public key to STREAMSERVE_TRUSTED_KEYS" in message
    assert "re-sign with `streamserve models sign iris 1`" in message
    # Re-signing with a trusted key is the fix.
    sign_version(registry, "iris", "1", other_key)
    assert verify_version(registry, "iris", "1", trusted).key_id == key_id(other_key.public_key())


def test_changed_parameters_are_never_signed(registry, key):
    registry.register(draft(), PARAMS)
    (registry.folder("iris", "1") / "params.npz").write_bytes(b"changed")
    with pytest.raises(SignatureError) as caught:
        sign_version(registry, "iris", "1", key)
    assert caught.value.reason == "tampered_parameters"
    assert not (registry.folder("iris", "1") / "signature.json").exists()


def test_a_key_pair_is_written_private_and_loads_back(tmp_path):
    path = tmp_path / "keys" / "signing.key"
    key = generate_signing_key(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert public_key_path(path) == tmp_path / "keys" / "signing.pub"
    assert public_key_path(path).read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert key_id(load_private_key(path).public_key()) == key_id(key.public_key())
    assert key_id(load_public_key(public_key_path(path))) == key_id(key.public_key())
    with pytest.raises(SigningKeyError, match="already exists; keep it"):
        generate_signing_key(path)
    assert key_id(load_private_key(path).public_key()) == key_id(key.public_key())  # unchanged


def test_a_fresh_machine_gets_a_key_and_keeps_it(tmp_path):
    path = tmp_path / ".streamserve" / "keys" / "signing.key"
    first = ensure_signing_key(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    public_key_path(path).unlink()
    again = ensure_signing_key(path)
    assert key_id(again.public_key()) == key_id(first.public_key())
    assert key_id(load_public_key(public_key_path(path))) == key_id(first.public_key())


def test_trusted_keys_come_from_a_file_or_a_folder(tmp_path, key, other_key):
    folder = tmp_path / "trusted"
    folder.mkdir()
    for name, k in (("a", key), ("b", other_key)):
        pem = k.public_key().public_bytes(serialization.Encoding.PEM,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
        (folder / f"{name}.pub").write_bytes(pem)
    (folder / "notes.txt").write_text("ignored")
    assert set(TrustedKeys.load(folder).keys) == {key_id(key.public_key()),
                                                   key_id(other_key.public_key())}
    assert set(TrustedKeys.load(folder / "a.pub").keys) == {key_id(key.public_key())}
    assert TrustedKeys.load(tmp_path / "missing").keys == {}
    (folder / "c.pub").write_text("garbage")
    with pytest.raises(SigningKeyError, match=r"c\.pub is not a PEM public key"):
        TrustedKeys.load(folder)
    with pytest.raises(SigningKeyError, match="does not exist; create a key pair"):
        load_private_key(tmp_path / "nope.key")
    with pytest.raises(SigningKeyError, match="not an unencrypted PEM private key"):
        load_private_key(folder / "a.pub")


def test_export_then_import_into_another_registry_verifies(tmp_path, registry, signed, trusted):
    archive = registry.export("iris", "1", tmp_path / "iris-1.tar.gz")
    other = Registry(tmp_path / "other")
    result = import_version(other, archive, trusted)
    assert result.verified and (result.model, result.version) == ("iris", "1")
    assert verify_version(other, "iris", "1", trusted).verified
    assert other.manifest("iris", "1") == registry.manifest("iris", "1")
    with pytest.raises(RegistryError, match="iris:1 already exists"):
        import_version(other, archive, trusted)


def rewrite(archive, out, change):
    """A copy of ``archive`` with ``change(name, data) -> data`` applied to each file."""
    with tarfile.open(archive) as tar, tarfile.open(out, "w:gz") as new:
        for member in tar:
            data = change(member.name, tar.extractfile(member).read())
            member.size = len(data)
            new.addfile(member, io.BytesIO(data))
    return out


def flip_params(name, data):
    if not name.endswith("params.npz"):
        return data
    return data[:100] + bytes([data[100] ^ 1]) + data[101:]


def raise_accuracy(name, data):
    if not name.endswith("manifest.json"):
        return data
    return data.replace(b'"test_accuracy": 1.0', b'"test_accuracy": 0.99')


@pytest.mark.parametrize("change,reason", [(flip_params, "tampered_parameters"),
                                           (raise_accuracy, "tampered_manifest")])
def test_a_tampered_archive_is_refused_and_nothing_registered(tmp_path, registry, signed, trusted,
                                                               change, reason):
    archive = registry.export("iris", "1", tmp_path / "iris-1.tar.gz")
    tampered = rewrite(archive, tmp_path / "tampered.tar.gz", change)
    other = Registry(tmp_path / "other")
    with pytest.raises(SignatureError) as caught:
        import_version(other, tampered, trusted)
    assert caught.value.reason == reason and "iris:1" in str(caught.value)
    assert other.models() == [] and not any((tmp_path / "other").rglob("*.npz"))


def test_an_unsigned_archive_is_imported_only_when_allowed(tmp_path, registry, trusted):
    registry.register(draft(), PARAMS)
    archive = registry.export("iris", "1", tmp_path / "iris-1.tar.gz")
    other = Registry(tmp_path / "other")
    with pytest.raises(SignatureError, match="iris:1 is not signed"):
        import_version(other, archive, trusted)
    assert other.models() == []
    assert import_version(other, archive, trusted, allow_unsigned=True).status == "unsigned"
    assert other.versions("iris") == ["1"]


def test_keys_live_apart_from_the_registry():
    settings = Settings.from_env({})
    assert settings.registry.signing_key.name == "signing.key" and not settings.registry.allow_unsigned
    assert Settings.from_env({"STREAMSERVE_ALLOW_UNSIGNED": "on"}).registry.allow_unsigned
    with pytest.raises(ConfigError, match="STREAMSERVE_SIGNING_KEY must lie outside the registry"):
        Settings.from_env({"STREAMSERVE_REGISTRY": "/models",
                           "STREAMSERVE_SIGNING_KEY": "/models/../models/keys/signing.key"})
    with pytest.raises(ConfigError, match="STREAMSERVE_TRUSTED_KEYS must lie outside the registry"):
        Settings.from_env({"STREAMSERVE_REGISTRY": "/models", "STREAMSERVE_TRUSTED_KEYS": "/models"})
    with pytest.raises(ConfigError, match="STREAMSERVE_SIGNING_KEY must name the private key"):
        Settings.from_env({"STREAMSERVE_SIGNING_KEY": "/keys/signing.pub"})


def test_a_key_folder_that_links_into_the_registry_is_inside_it(tmp_path):
    """Review section 18: a trusted-keys link into the registry passed the check, so whoever
    writes the registry could plant a trusted key."""
    (tmp_path / "registry" / "keys").mkdir(parents=True)
    (tmp_path / "trusted").symlink_to(tmp_path / "registry" / "keys")
    with pytest.raises(ConfigError, match="STREAMSERVE_TRUSTED_KEYS must lie outside the registry"):
        Settings.from_env({"STREAMSERVE_REGISTRY": str(tmp_path / "registry"),
                           "STREAMSERVE_TRUSTED_KEYS": str(tmp_path / "trusted")})
    with pytest.raises(ConfigError, match="STREAMSERVE_ALLOW_UNSIGNED='maybe' must be on or off"):
        Settings.from_env({"STREAMSERVE_ALLOW_UNSIGNED": "maybe"})
