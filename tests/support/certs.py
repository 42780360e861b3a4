"""Certificates built to order for the reliability tests, with ``cryptography``.

trustme makes good certificates; the validation corpus also needs bad ones
(expired, constrained, a CA used as a leaf, a missing intermediate), so this
module builds each certificate from its parts. Everything is in memory; use
:func:`pem` to get bytes for ``Credentials`` or :func:`write` for files that a
peer process (``openssl s_server``, ``gnutls-serv``) reads.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from txschannel.testing import IssuedCertificate

__all__ = ["Issued", "authority", "leaf", "new_key", "pem", "write"]

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
_DAY = datetime.timedelta(days=1)


def new_key(kind: str = "ec") -> PrivateKey:
    """A fresh private key: ``"ec"`` (P-256) or ``"rsa"`` (2048 bits)."""
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kind == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    raise ValueError(f"unknown key kind {kind!r}: use 'ec' or 'rsa'")


@dataclass
class Issued:
    """A certificate, its key, and the chain above it (nearest issuer first,
    root excluded) as a server would send it."""

    certificate: x509.Certificate
    key: PrivateKey
    chain: list[x509.Certificate] = field(default_factory=list)

    @property
    def chain_pem(self) -> bytes:
        """Leaf, chain and key in one PEM blob, the way servers load them."""
        return pem(self.certificate, *self.chain) + pem(self.key)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "txschannel test corpus"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _general_name(value: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(value))
    except ValueError:
        return x509.DNSName(value)


def _skeleton(
    subject: str,
    key: PrivateKey,
    issuer: Issued | None,
    not_before: datetime.datetime | None,
    not_after: datetime.datetime | None,
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    issuer_name = _name(subject) if issuer is None else issuer.certificate.subject
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - _DAY)
        .not_valid_after(not_after or now + 30 * _DAY)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(
                issuer.key.public_key()  # type: ignore[arg-type]
            ),
            False,
        )
    return builder


def authority(
    name: str,
    *,
    issuer: Issued | None = None,
    key_kind: str = "ec",
    permitted: Sequence[str] = (),
    excluded: Sequence[str] = (),
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
) -> Issued:
    """A CA: a self-signed root when *issuer* is None, else an intermediate.

    :param permitted: DNS names (``example.com`` covers its subdomains) or
        IP networks (``10.0.0.0/8``) this CA may issue for (name constraints).
    :param excluded: names it may not issue for.
    """
    key = new_key(key_kind)
    builder = _skeleton(name, key, issuer, not_before, not_after)
    builder = builder.add_extension(
        x509.BasicConstraints(ca=True, path_length=None), critical=True
    ).add_extension(
        x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True,
            crl_sign=True, encipher_only=False, decipher_only=False,
        ),
        critical=True,
    )
    if permitted or excluded:
        builder = builder.add_extension(
            x509.NameConstraints(
                permitted_subtrees=[_subtree(n) for n in permitted] or None,
                excluded_subtrees=[_subtree(n) for n in excluded] or None,
            ),
            critical=True,
        )
    signing_key = key if issuer is None else issuer.key
    certificate = builder.sign(signing_key, hashes.SHA256())
    return Issued(certificate, key, [] if issuer is None else chain_above(issuer))


def chain_above(issuer: Issued) -> list[x509.Certificate]:
    """The certificates a server sends above a leaf that *issuer* signed."""
    if _is_root(issuer.certificate):
        return []
    return [issuer.certificate, *issuer.chain]


def _is_root(certificate: x509.Certificate) -> bool:
    return certificate.issuer == certificate.subject


def _subtree(value: str) -> x509.GeneralName:
    if "/" in value:
        return x509.IPAddress(ipaddress.ip_network(value))
    return x509.DNSName(value)


def leaf(
    issuer: Issued | None,
    names: Sequence[str] = ("localhost",),
    *,
    key_kind: str = "ec",
    common_name: str | None = None,
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
    ca: bool = False,
    usages: Sequence[str] = ("server",),
) -> Issued:
    """An end-entity certificate for *names* (DNS names or IP addresses).

    :param issuer: the CA that signs it; None makes it self-signed.
    :param ca: mark it as a CA (basicConstraints cA=TRUE, keyCertSign), to
        test a CA certificate presented as a server's leaf.
    :param usages: its extended key usages: ``"server"``, ``"client"``.
    """
    key = new_key(key_kind)
    subject = common_name if common_name is not None else (names[0] if names else "no name")
    builder = _skeleton(subject, key, issuer, not_before, not_after)
    if names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_general_name(n) for n in names]), critical=False
        )
    builder = builder.add_extension(
        x509.BasicConstraints(ca=ca, path_length=None), critical=True
    ).add_extension(
        x509.KeyUsage(
            digital_signature=True, content_commitment=False,
            key_encipherment=isinstance(key, rsa.RSAPrivateKey), data_encipherment=False,
            key_agreement=False, key_cert_sign=ca, crl_sign=ca,
            encipher_only=False, decipher_only=False,
        ),
        critical=True,
    )
    if not ca:
        oids = {
            "server": ExtendedKeyUsageOID.SERVER_AUTH,
            "client": ExtendedKeyUsageOID.CLIENT_AUTH,
        }
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([oids[u] for u in usages]), critical=False
        )
    signing_key = key if issuer is None else issuer.key
    certificate = builder.sign(signing_key, hashes.SHA256())
    return Issued(certificate, key, [] if issuer is None else chain_above(issuer))


def pem(*items: x509.Certificate | PrivateKey) -> bytes:
    """PEM bytes of certificates and keys, in the order given."""
    out = []
    for item in items:
        if isinstance(item, x509.Certificate):
            out.append(item.public_bytes(serialization.Encoding.PEM))
        else:
            out.append(
                item.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
    return b"".join(out)


def write(folder: str, name: str, data: bytes) -> str:
    """Write *data* to *folder*/*name* and return the path."""
    path = os.path.join(folder, name)
    with open(path, "wb") as handle:
        handle.write(data)
    return path


def encrypted_pem(issued: IssuedCertificate, passphrase: bytes) -> bytes:
    """*issued*'s key, encrypted with *passphrase*, then its certificate."""
    key = issued.private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase),
    )
    return key + issued.certificate_pem
