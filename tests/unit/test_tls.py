"""pipeline.tls: a throwaway CA and the server certificate it signs."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from pipeline.tls import server_tls

NOW = datetime.datetime(2026, 1, 31, 12, 0, tzinfo=datetime.UTC)


@pytest.fixture(scope="module")
def tls():
    return server_tls("broker", now=NOW)


def test_the_ca_may_sign_certificates_and_nothing_else(tls) -> None:
    ca = x509.load_pem_x509_certificate(tls.ca_cert)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature


def test_the_server_certificate_is_signed_by_the_ca_for_localhost_only(tls) -> None:
    ca = x509.load_pem_x509_certificate(tls.ca_cert)
    cert = x509.load_pem_x509_certificate(tls.cert)
    cert.verify_directly_issued_by(ca)
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usages) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}


def test_validity_starts_an_hour_back_and_lasts_the_days_asked(tls) -> None:
    for pem in (tls.ca_cert, tls.cert):
        cert = x509.load_pem_x509_certificate(pem)
        assert cert.not_valid_before_utc == NOW - datetime.timedelta(hours=1)
        assert cert.not_valid_after_utc == NOW + datetime.timedelta(days=825)


def test_the_key_is_unencrypted_pkcs8_of_the_certificate_and_leads_the_keystore(tls) -> None:
    assert tls.key.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8, what Kafka's PEM store reads
    key = serialization.load_pem_private_key(tls.key, password=None)
    cert = x509.load_pem_x509_certificate(tls.cert)
    assert key.public_key() == cert.public_key()
    assert tls.keystore == tls.key + tls.cert + tls.ca_cert
    assert "key=" not in repr(tls)


def test_every_call_makes_a_new_ca() -> None:
    assert server_tls("a").ca_cert != server_tls("a").ca_cert


def test_a_certificate_names_something() -> None:
    with pytest.raises(ValueError, match="at least one DNS name or IP address"):
        server_tls("nameless", dns_names=(), ip_addresses=())


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_a_client_trusting_the_ca_completes_a_handshake_by_name_or_address(tmp_path: Path,
                                                                           host: str) -> None:
    tls = server_tls("broker")
    (tmp_path / "server.pem").write_bytes(tls.keystore)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp_path / "server.pem")
    client = ssl.create_default_context(cadata=tls.ca_cert.decode())
    assert _handshake(client, server, host) is None


def test_a_client_refuses_a_name_the_certificate_lacks(tmp_path: Path) -> None:
    tls = server_tls("broker")
    (tmp_path / "server.pem").write_bytes(tls.keystore)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp_path / "server.pem")
    client = ssl.create_default_context(cadata=tls.ca_cert.decode())
    assert "mismatch" in str(_handshake(client, server, "127.0.0.2"))


def _handshake(client: ssl.SSLContext, server: ssl.SSLContext, host: str) -> Exception | None:
    """A TLS handshake in memory; the client's error, if any."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    c = client.wrap_bio(c_in, c_out, server_hostname=host)
    s = server.wrap_bio(s_in, s_out, server_side=True)
    done = {"c": False, "s": False}
    for _ in range(10):
        for name, side in (("c", c), ("s", s)):
            if not done[name]:
                try:
                    side.do_handshake()
                    done[name] = True
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    pass
                except ssl.SSLError as e:
                    if name == "c":
                        return e
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            return None
    raise AssertionError("the handshake did not finish")
