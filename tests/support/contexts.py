"""Credentials for in-memory handshakes between txschannel contexts: one
trustme CA per key type for the whole run (key generation is the slow part),
with a server certificate for localhost and a client certificate, plus an
expired and a self-signed server certificate.
"""

from __future__ import annotations

import datetime
import functools
from dataclasses import dataclass

import trustme
from OpenSSL import SSL

from txschannel import Credentials

NAME = "localhost"


@dataclass
class Authority:
    """A throw-away CA with one server and one client certificate."""

    ca: trustme.CA
    server: trustme.LeafCert
    client: trustme.LeafCert

    @property
    def roots(self) -> bytes:
        return self.ca.cert_pem.bytes()

    @property
    def server_pem(self) -> bytes:
        return self.server.private_key_and_cert_chain_pem.bytes()

    @property
    def client_pem(self) -> bytes:
        return self.client.private_key_and_cert_chain_pem.bytes()


def authority(key_type: str = "ECDSA") -> Authority:
    """One CA per key type ("ECDSA" or "RSA") for the whole run, with keys of
    that type throughout: key generation is the slow part."""
    return _authority(key_type)


@functools.cache
def _authority(key_type: str) -> Authority:
    kind = trustme.KeyType[key_type]
    ca = trustme.CA(key_type=kind)
    return Authority(
        ca,
        ca.issue_cert(NAME, "127.0.0.1", key_type=kind),
        ca.issue_cert("client@example.com", key_type=kind),
    )


@functools.cache
def expired_pem() -> bytes:
    """A server certificate for localhost that expired yesterday."""
    now = datetime.datetime.now(datetime.timezone.utc)
    leaf = authority().ca.issue_cert(
        NAME,
        not_before=now - datetime.timedelta(days=30),
        not_after=now - datetime.timedelta(days=1),
    )
    return leaf.private_key_and_cert_chain_pem.bytes()


@functools.cache
def self_signed_pem() -> bytes:
    """A self-signed CA certificate for localhost with its key, the kind
    `twist schannel` makes for itself."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, NAME)])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(NAME)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())


def server_credentials(key_type: str = "ECDSA", **options: object) -> Credentials:
    return Credentials.server(certificate=authority(key_type).server_pem, **options)  # type: ignore[arg-type]


def client_credentials(key_type: str = "ECDSA", **options: object) -> Credentials:
    options.setdefault("trust_roots", authority(key_type).roots)
    return Credentials.client(**options)  # type: ignore[arg-type]


def bio_addresses(connection: SSL.Connection | None) -> tuple[int, int]:
    """The addresses of the memory BIOs *connection*'s OpenSSL reads from
    and writes to (to see whether they were replaced)."""
    from OpenSSL._util import ffi  # (pyOpenSSL's: the public path has no other)

    assert connection is not None
    return (int(ffi.cast("uintptr_t", connection._into_ssl)),
            int(ffi.cast("uintptr_t", connection._from_ssl)))
