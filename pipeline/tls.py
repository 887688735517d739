"""Throwaway TLS material for a local broker: a fresh CA and one server certificate it signs.

``server_tls`` returns PEM bytes only; the caller decides where they go (the secured
local broker writes the key with mode 0600 and drops the CA's key, so no further
certificate can ever be signed by it). Keys are ECDSA P-256: quick to make, and read
by Java's PEM key stores (Kafka's ``ssl.keystore.type=PEM``) and by Python's ``ssl``.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Certificates start an hour back, so a clock a little behind still accepts them.
_BACKDATE = datetime.timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class ServerTls:
    """PEM: the CA certificate clients trust, the server's certificate and its private key
    (unencrypted PKCS#8)."""

    ca_cert: bytes
    cert: bytes
    key: bytes = field(repr=False)

    @property
    def keystore(self) -> bytes:
        """Key then certificate chain, in one PEM file (Kafka's PEM keystore layout)."""
        return self.key + self.cert + self.ca_cert


def server_tls(name: str, *, dns_names: tuple[str, ...] = ("localhost",),
               ip_addresses: tuple[str, ...] = ("127.0.0.1",), days: int = 825,
               now: datetime.datetime | None = None) -> ServerTls:
    """A new CA (``<name> CA``) and a server certificate for ``name``, valid for
    ``dns_names`` and ``ip_addresses`` (its subject alternative names) for ``days``."""
    if not dns_names and not ip_addresses:
        raise ValueError("a server certificate needs at least one DNS name or IP address")
    start = (now or datetime.datetime.now(datetime.UTC)) - _BACKDATE
    end = start + _BACKDATE + datetime.timedelta(days=days)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} CA")])
    ca_cert = (_builder(ca_name, ca_name, ca_key.public_key(), start, end)
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(**_usage(key_cert_sign=True, crl_sign=True)), critical=True)
               .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns_names]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
    cert = (_builder(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]), ca_name,
                     key.public_key(), start, end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(**_usage(digital_signature=True)), critical=True)
            # Server and client: the broker also connects to itself (inter-broker traffic).
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    return ServerTls(
        ca_cert=ca_cert.public_bytes(serialization.Encoding.PEM),
        cert=cert.public_bytes(serialization.Encoding.PEM),
        key=key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def _builder(subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey,
             start: datetime.datetime, end: datetime.datetime) -> x509.CertificateBuilder:
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
            .public_key(public_key).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False))


def _usage(**allowed: bool) -> dict[str, bool]:
    """x509.KeyUsage's nine flags: those named on, the rest off."""
    flags = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
             "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only")
    return {flag: allowed.get(flag, False) for flag in flags}
