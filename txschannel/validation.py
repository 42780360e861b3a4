"""Judging a server's certificate chain: the rules a txschannel client applies.

A client credentials' default is ``validation="cryptography"``: the chain the
server sent is judged as a whole, once per connection, by pyca/cryptography's
X.509 verifier (``cryptography.x509.verification``: path building with
backtracking, the CA/Browser Forum profile for CA and end-entity
certificates, name constraints, key strength, the name against the
subjectAltName), then by the rules cryptography leaves to its caller,
checked on the path it built:

- every key of the path strong enough (RSA of 2048 bits or more and a whole
  number of bytes, no DSA, no curve below P-256), not only the keys that
  verify a signature;
- no anyExtendedKeyUsage in the server's certificate, no extendedKeyUsage
  in a root;
- serial numbers above 0; a subjectKeyIdentifier in every CA certificate,
  an authorityKeyIdentifier in every certificate not self-issued, a
  policyConstraints only if critical;
- the CN, where it names a subjectAltName entry, spelled as that entry is
  (CA/Browser Forum Baseline Requirements 7.1.4.3, narrowly);
- no wildcard on a public suffix (``*.co.uk``, and so ``*.com``), by the
  ICANN section of the public-suffix list bundled with ``publicsuffixlist``.

OpenSSL's own verification still starts inside the handshake, but its
verdict is replaced by this one; on a refusal, OpenSSL is asked which of its
checks the chain fails, so that the status (and the alert the server gets)
is the one OpenSSL alone would have given wherever it refuses too.

Three rules of cryptography's profile go beyond RFC 5280 and are relaxed to
it: a CA certificate may lack keyUsage (``openssl req -x509`` makes such
CAs), and a subjectAltName (with a non-empty subject) or an
extendedKeyUsage may be critical (trustme's certificates are both).

A :class:`TrustStore` remembers the chains it accepted (bounded, least
recently used first out, each by the SHA-256 digest of its bytes): a chain
presented again, byte for byte, for the same name (a DNS name, or an IP
address), while every certificate of its path is within its period, is
accepted without being judged again. A refusal is never remembered, and a
store read again (new credentials, a changed system bundle) starts empty.

:func:`verify_server_chain` applies the same rules offline, to a chain
loaded from anywhere. ``validation="openssl"`` keeps the earlier rules
(OpenSSL's X.509 verification, then service_identity); it is also what
credentials fall back to when the installed cryptography has no verifier
with extension policies (before 44.0).

What a trust root must be (OpenSSL requires a self-signed one; cryptography
takes any certificate in its store as an anchor):

- a self-issued root whose authorityKeyIdentifier names another key or
  another certificate is not used: it does not sign itself, so it is not
  the end of a path (OpenSSL cannot build one through it either);
- a root that is not self-issued (an intermediate given as a trust root) is
  used only if it carries an authorityKeyIdentifier, as RFC 5280 section
  4.2.1.1 requires of every certificate a CA issues.

The roots of the system store (``trust_roots="system"``) are taken as
anchors, not judged as certificates: RFC 5280 section 6.1.1 takes from a
trust anchor its name, its key and its constraints. A few real roots are
encoded in ways the CA profile refuses (basicConstraints not critical,
validity dates in GeneralizedTime before 2050); each is given to
cryptography re-encoded, with the same name, key and extensions. Roots given
explicitly are judged by the profile like any CA certificate (but for their
serial number, which real roots have as 0).
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import ipaddress
import os
import re
import ssl
import threading
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL, crypto

from txschannel import _openssl
from txschannel.status import SecurityError, Status

__all__ = [
    "DEFAULT_VALIDATION",
    "VALIDATIONS",
    "TrustStore",
    "cryptography_verifier_available",
    "verify_server_chain",
]

#: The values of ``Credentials.client(validation=...)``.
VALIDATIONS = ("cryptography", "openssl")


def cryptography_verifier_available() -> bool:
    """True when the installed cryptography has the verifier these rules need.

    That is ``cryptography.x509.verification`` with extension policies
    (cryptography 44.0 and later).
    """
    try:
        from cryptography.x509 import verification
    except ImportError:  # pragma: no cover - cryptography before 42
        return False
    return hasattr(verification, "ExtensionPolicy") and hasattr(
        verification.PolicyBuilder, "extension_policies"
    )


#: What client credentials use when ``validation`` is not given.
DEFAULT_VALIDATION = "cryptography" if cryptography_verifier_available() else "openssl"


# -- OpenSSL's verdicts, as SSPI statuses ---------------------------------

#: pyOpenSSL's public names for the X509_V_ERR_* codes (``ERR_CERT_HAS_EXPIRED``),
#: whose values are the linked OpenSSL's own.
_codes: Any = SSL.X509VerificationCodes

# OpenSSL X509_V_ERR_* codes that have a more specific SSPI status, keyed by
# the linked OpenSSL's own constants (their numbers change between releases).
_VERIFY_STATUS = {
    _codes.ERR_CERT_NOT_YET_VALID: Status.CERT_EXPIRED,  # outside the validity period too
    _codes.ERR_CERT_HAS_EXPIRED: Status.CERT_EXPIRED,
    _codes.ERR_UNABLE_TO_GET_ISSUER_CERT: Status.UNTRUSTED_ROOT,
    _codes.ERR_DEPTH_ZERO_SELF_SIGNED_CERT: Status.UNTRUSTED_ROOT,
    _codes.ERR_SELF_SIGNED_CERT_IN_CHAIN: Status.UNTRUSTED_ROOT,
    _codes.ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY: Status.UNTRUSTED_ROOT,
    _codes.ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE: Status.UNTRUSTED_ROOT,
    _codes.ERR_CERT_UNTRUSTED: Status.UNTRUSTED_ROOT,
    _codes.ERR_HOSTNAME_MISMATCH: Status.WRONG_PRINCIPAL,
    _codes.ERR_EMAIL_MISMATCH: Status.WRONG_PRINCIPAL,
    _codes.ERR_IP_ADDRESS_MISMATCH: Status.WRONG_PRINCIPAL,
}

# The codes OpenSSL finds after it has checked the host name (validity
# periods, signatures, name constraints); every other code comes before it.
# A refusal says the earlier kind first, then a wrong name, then these, in
# the order OpenSSL would report them.
_AFTER_NAME = frozenset(
    getattr(_codes, name.removeprefix("X509_V_"))
    for name in (
        "X509_V_ERR_CERT_NOT_YET_VALID",
        "X509_V_ERR_CERT_HAS_EXPIRED",
        "X509_V_ERR_ERROR_IN_CERT_NOT_BEFORE_FIELD",
        "X509_V_ERR_ERROR_IN_CERT_NOT_AFTER_FIELD",
        "X509_V_ERR_CERT_SIGNATURE_FAILURE",
        "X509_V_ERR_UNABLE_TO_DECRYPT_CERT_SIGNATURE",
        "X509_V_ERR_UNABLE_TO_DECODE_ISSUER_PUBLIC_KEY",
        "X509_V_ERR_PERMITTED_VIOLATION",
        "X509_V_ERR_EXCLUDED_VIOLATION",
        "X509_V_ERR_SUBTREE_MINMAX",
        "X509_V_ERR_UNSUPPORTED_CONSTRAINT_TYPE",
        "X509_V_ERR_UNSUPPORTED_CONSTRAINT_SYNTAX",
        "X509_V_ERR_UNSUPPORTED_NAME_SYNTAX",
    )
    if hasattr(_codes, name.removeprefix("X509_V_"))
)


def verify_error_status(errno: int) -> Status:
    """The SSPI status for an OpenSSL X509_V_ERR_* code."""
    return _VERIFY_STATUS.get(errno, Status.CERT_UNKNOWN)


def verify_error_text(errno: int) -> str:
    """OpenSSL's own words for an X509_V_ERR_* code.

    On the public path (see :mod:`txschannel._openssl`), which cannot ask
    OpenSSL, txschannel's own words for the codes it reports most, and the
    words of the code's name for the rest (``unable to get crl``).
    """
    text = _openssl.error_string(errno)
    if text is not None:
        return text
    name = _CODE_NAMES.get(errno)
    if name is None:
        return f"certificate verification error {errno}"
    if name in _OWN_WORDS:
        return _OWN_WORDS[name]
    words = name.removeprefix("ERR_").lower().replace("_", " ")
    return " ".join("certificate" if word == "cert" else word for word in words.split())


_CODE_NAMES = {
    getattr(_codes, name): name
    for name in dir(_codes)
    if name.startswith("ERR_") and isinstance(getattr(_codes, name), int)
}
_OWN_WORDS = {
    "ERR_CERT_HAS_EXPIRED": "certificate has expired",
    "ERR_CERT_NOT_YET_VALID": "certificate is not yet valid",
    "ERR_DEPTH_ZERO_SELF_SIGNED_CERT": "self-signed certificate that is not a trust root",
    "ERR_SELF_SIGNED_CERT_IN_CHAIN": "self-signed certificate in the chain, not a trust root",
    "ERR_UNABLE_TO_GET_ISSUER_CERT": "the issuer certificate was not found",
    "ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY": "no trusted issuer certificate was found",
    "ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE": "the issuer of the only certificate is unknown",
    "ERR_CERT_UNTRUSTED": "certificate not trusted",
    "ERR_HOSTNAME_MISMATCH": "host name mismatch",
    "ERR_IP_ADDRESS_MISMATCH": "IP address mismatch",
    "ERR_INVALID_NON_CA": "a CA certificate where the peer's own certificate belongs",
    "ERR_INVALID_CA": "not a valid CA certificate",
    "ERR_INVALID_PURPOSE": "certificate not allowed for this purpose",
    "ERR_CERT_REJECTED": "certificate rejected",
    "ERR_CERT_CHAIN_TOO_LONG": "certificate chain too long",
    "ERR_CERT_SIGNATURE_FAILURE": "certificate signature does not verify",
    "ERR_PERMITTED_VIOLATION": "permitted subtree violation (name constraints)",
    "ERR_EXCLUDED_VIOLATION": "excluded subtree violation (name constraints)",
}


# -- names ----------------------------------------------------------------


_IPV4_CHARACTERS = frozenset("0123456789.")


def address(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IPv4 or IPv6 address *name* is (in any spelling Python reads), or None.

    A host name is told apart without ``ipaddress`` raising twice for it
    (once per family): that costs more than the rest of a verdict remembered.
    """
    # (An IPv6 address has a colon, which no host name has; an IPv4
    # address is digits and dots.)
    if ":" not in name and not _IPV4_CHARACTERS.issuperset(name):
        return None
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def is_ip(name: str) -> bool:
    """True when *name* is an IPv4 or IPv6 address, in any spelling."""
    return address(name) is not None


def host_a_label(name: str) -> str:
    """*name* as it is compared with certificates and sent as the SNI: lower
    case, no trailing dot, internationalised labels as their A-labels.

    A name written in ASCII is taken as it is written: each label letters,
    digits and hyphens (1 to 63 of them, no hyphen first or last), 253
    characters in all. Its ``xn--`` labels are not decoded and judged
    again: a certificate names a host by its A-label (RFC 5280 section
    4.2.1.6), and the comparison is of those bytes, so a label IDNA 2008
    would not register (``xn--n3h.com``, whose U-label is a snowman) is
    still a name a certificate can carry and a client must be able to check.

    A name with non-ASCII characters goes through UTS 46 processing,
    nontransitional (``ß`` stays ``ß``, as browsers do), with the STD3 ASCII
    rules: mapped (case folded, NFC), disallowed code points refused, each
    label checked for hyphens, a leading combining mark, joiners (CONTEXTJ)
    and bidi, then Punycode. The IDNA 2008 code-point table is not applied
    on top, as UTS 46 does not (``☃.com`` is ``xn--n3h.com``). One trailing
    dot is dropped after the mapping (a full-width one is a dot then).

    A name whose last label is a number (``127.1``, ``0x7f.1``,
    ``127.0.0.1.``, a full-width ``１２７．０．０．１``) is refused: resolvers
    read it as an IPv4 address, which is checked only as an address (given
    in its usual form), never as a DNS name.

    :raises ValueError: *name* is not a valid host name, saying why.
    """
    host = name
    if not host.isascii():
        import idna
        from idna import core

        try:
            mapped = core.uts46_remap(host, std3_rules=True, transitional=False)
            # The trailing dot is dropped after the mapping, which is what
            # turns a full-width or ideographic full stop into one.
            mapped = mapped[:-1] if mapped.endswith(".") else mapped
            labels = []
            for label in mapped.split("."):
                if label.isascii():
                    labels.append(label)
                    continue
                core.check_nfc(label)
                core.check_hyphen_ok(label)
                core.check_initial_combiner(label)
                core.check_bidi(label)
                for position, character in enumerate(label):
                    # ZERO WIDTH NON-JOINER and JOINER, allowed only where
                    # a script needs them (RFC 5892 appendix A.1, A.2).
                    if character in "\u200c\u200d" and not core.valid_contextj(label, position):
                        raise idna.IDNAError(f"joiner U+{ord(character):04X} not allowed here")
                labels.append("xn--" + label.encode("punycode").decode("ascii"))
            host = ".".join(labels)
        except (idna.IDNAError, UnicodeError) as e:
            raise ValueError(f"{name!r} is not a valid host name ({e})") from None
    elif host.endswith("."):
        host = host[:-1]
    host = host.lower()
    number = _numeric_problem(host)
    if number is not None:
        raise ValueError(f"{name!r} is not a valid host name ({number})")
    if _dns_name(host):
        return host
    problem = _ldh_problem(host)
    if problem is not None:
        raise ValueError(f"{name!r} is not a valid host name ({problem})")
    return host


def _ends_in_a_number(host: str) -> bool:
    """Whether *host*'s last label is a number (decimal digits, or ``0x``
    and hex digits): the hosts resolvers and URL parsers (WHATWG's "ends in
    a number") read as an IPv4 address, never as a DNS name."""
    last = host.rpartition(".")[2].lower()
    if last.startswith("0x"):
        return all(c in "0123456789abcdef" for c in last[2:])
    return last.isascii() and last.isdigit()


def _numeric_problem(host: str) -> str | None:
    """Why *host* (ASCII, lower case) cannot be a host name for ending in a
    number, or None. Such a name is refused rather than taken as the
    address it spells: the client would otherwise check an address as a
    DNS name (``127.0.0.1.``, full-width ``１２７．０．０．１``) or a DNS name
    the resolver connects to as an address (``127.1``, ``0x7f.1``)."""
    if not _ends_in_a_number(host):
        return None
    spelled = _lenient_address(host) if host else None
    if spelled is not None:
        return (
            f"it reads as the IP address {spelled}: give the address as {str(spelled)!r}, "
            "which is checked against the certificate's iPAddress entries"
        )
    return (
        f"its last label {host.rpartition('.')[2]!r} is a number, which resolvers "
        "read as an IPv4 address, not a DNS name"
    )


def _ldh_problem(host: str) -> str | None:
    """Why *host* (ASCII) is not a host name of letters, digits and hyphens, or None."""
    if not host:
        return "it is empty"
    if len(host) > 253:
        return "longer than 253 characters"
    for label in host.split("."):
        if not label:
            return "an empty label"
        if len(label) > 63:
            return f"the label {label[:20]!r}... is longer than 63 characters"
        if label[0] == "-" or label[-1] == "-":
            return f"the label {label!r} starts or ends with a hyphen"
        if not all(c.isalnum() or c == "-" for c in label):
            return f"the label {label!r} has a character other than a letter, digit or hyphen"
    return None


@functools.lru_cache(maxsize=1024)
def _reference(name: str) -> tuple[str, x509.DNSName | x509.IPAddress]:
    """*name* as certificates spell it, and as cryptography's subject.

    An address in its canonical form; a host name as :func:`host_a_label`
    gives it.

    :raises ValueError: *name* is not a valid host name.
    """
    found = address(name)
    if found is None:
        host = host_a_label(name)
        return host, x509.DNSName(host)
    return str(found), x509.IPAddress(found)


def name_mismatch(certificate: x509.Certificate, name: str) -> str | None:
    """Why *certificate* is not for *name* (service_identity's rules), or None.

    A host name is compared as OpenSSL sees it: without a trailing dot
    (RFC 6125 section 6.2.1) and as its IDNA A-label (so case and Unicode
    spelling do not matter).
    """
    from service_identity import CertificateError, VerificationError
    from service_identity.cryptography import (
        verify_certificate_hostname,
        verify_certificate_ip_address,
    )

    def offered() -> str:
        try:
            san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        except x509.ExtensionNotFound:
            return "no subjectAltName"
        except ValueError:
            return "an unreadable subjectAltName"
        names = [str(v) for v in san.value.get_values_for_type(x509.DNSName)] + [
            str(v) for v in san.value.get_values_for_type(x509.IPAddress)
        ]
        return ", ".join(names) if names else "no DNS or IP subjectAltName"

    try:
        try:
            reference, subject = _reference(name)
        except ValueError as e:
            return str(e)
        if isinstance(subject, x509.IPAddress):
            verify_certificate_ip_address(certificate, reference)
        else:
            verify_certificate_hostname(certificate, reference)
    except (VerificationError, CertificateError) as e:
        return f"certificate for {offered()} does not match {name!r} ({e})"
    except Exception as e:  # service_identity refusing in a way it does not document
        return f"certificate for {offered()} does not match {name!r} ({type(e).__name__}: {e})"
    return None


def _subject(certificate: x509.Certificate) -> str:
    try:
        return certificate.subject.rfc4514_string() or "(empty subject)"
    except ValueError:
        return "(unreadable subject)"


# -- trust anchors --------------------------------------------------------


def _anchor_problem(certificate: x509.Certificate) -> str | None:
    """Why *certificate* cannot end a path as a trust root, or None."""
    try:
        extensions = certificate.extensions
        aki = extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    except x509.ExtensionNotFound:
        aki = None
    except (ValueError, TypeError) as e:
        # Malformed by RFC 5280 (an authorityKeyIdentifier with an issuer
        # but no serial number, say): OpenSSL cannot build a path through
        # it either.
        return f"its extensions cannot be read ({e})"
    if certificate.issuer != certificate.subject:
        if aki is None or aki.key_identifier is None:
            return (
                "it is not self-issued and has no authorityKeyIdentifier "
                "(RFC 5280 section 4.2.1.1)"
            )
        return None
    if aki is None:
        return None
    try:
        ski: bytes | None = extensions.get_extension_for_class(
            x509.SubjectKeyIdentifier
        ).value.digest
    except x509.ExtensionNotFound:
        ski = None
    if aki.key_identifier is not None and ski is not None and aki.key_identifier != ski:
        return "its authorityKeyIdentifier names another key than its own"
    if aki.authority_cert_issuer is not None and x509.DirectoryName(
        certificate.issuer
    ) not in aki.authority_cert_issuer:
        return "its authorityKeyIdentifier names another issuer"
    if (
        aki.authority_cert_serial_number is not None
        and aki.authority_cert_serial_number != certificate.serial_number
    ):
        return "its authorityKeyIdentifier names another certificate"
    return None


# One throw-away key signs every re-encoded anchor: an anchor's own
# signature is never checked (trust comes from being in the store).
_ANCHOR_SIGNER: list[ec.EllipticCurvePrivateKey] = []


def _reencoded(root: x509.Certificate) -> x509.Certificate | None:
    """*root* as an anchor the CA profile accepts, or None if it already is.

    Same name, key, validity and extensions; basicConstraints critical (and
    present, for a version 1 root); dates in the encoding RFC 5280 asks for;
    a positive serial number.
    """
    try:
        extensions = list(root.extensions)
        constraints = root.extensions.get_extension_for_class(x509.BasicConstraints)
    except x509.ExtensionNotFound:
        constraints = None
    except (ValueError, TypeError):
        return None  # an extension Python cannot read: leave the root as it is
    if (
        constraints is not None
        and constraints.critical
        and root.version is x509.Version.v3
        and root.serial_number >= 0
        and not _generalized_time_before_2050(root)
    ):
        return None
    if not _ANCHOR_SIGNER:
        _ANCHOR_SIGNER.append(ec.generate_private_key(ec.SECP256R1()))
    builder = (
        x509.CertificateBuilder()
        .subject_name(root.subject)
        .issuer_name(root.issuer)
        .serial_number(root.serial_number if root.serial_number > 0 else 1)
        .not_valid_before(root.not_valid_before_utc)
        .not_valid_after(root.not_valid_after_utc)
        .public_key(root.public_key())
    )
    if constraints is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
    for extension in extensions:
        critical = extension.critical or isinstance(extension.value, x509.BasicConstraints)
        builder = builder.add_extension(extension.value, critical)
    try:
        return builder.sign(_ANCHOR_SIGNER[0], hashes.SHA256())
    except (TypeError, ValueError):
        return None  # a key type cryptography cannot put in a certificate


def _generalized_time_before_2050(certificate: x509.Certificate) -> bool:
    """Whether a validity date before 2050 is encoded as GeneralizedTime
    (RFC 5280 section 4.1.2.5 asks for UTCTime; cryptography refuses it)."""
    tbs = certificate.tbs_certificate_bytes
    try:
        _, position, _ = _der_element(tbs, 0)
        tag, _, end = _der_element(tbs, position)
        if tag == 0xA0:  # the version, when it is not v1
            position = end
        for _ in range(3):  # the serial number, the signature algorithm, the issuer
            position = _der_element(tbs, position)[2]
        _, position, end = _der_element(tbs, position)  # the validity
        while position < end:
            tag, value, after = _der_element(tbs, position)
            if tag == 0x18 and int(tbs[value : value + 4]) < 2050:
                return True
            position = after
    except (IndexError, ValueError):
        return False
    return False


def _der_element(data: bytes, position: int) -> tuple[int, int, int]:
    """(tag, start of the value, end of the value) of the DER element at *position*."""
    tag = data[position]
    length = data[position + 1]
    start = position + 2
    if length & 0x80:
        count = length & 0x7F
        length = int.from_bytes(data[start : start + count], "big")
        start += count
    return tag, start, start + length


#: Where Linux distributions and BSDs keep the system's PEM bundle, tried in
#: this order after the SSL_CERT_FILE/SSL_CERT_DIR variables and the paths
#: the linked OpenSSL and Python's ssl module were built with.
SYSTEM_BUNDLES = (
    "/etc/ssl/certs/ca-certificates.crt",  # Debian, Ubuntu, Arch, Gentoo
    "/etc/pki/tls/certs/ca-bundle.crt",  # Fedora, RHEL
    "/etc/ssl/ca-bundle.pem",  # openSUSE
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",  # RHEL 7 and later
    "/etc/ssl/cert.pem",  # Alpine, macOS, OpenBSD
    "/usr/local/share/certs/ca-root-nss.crt",  # FreeBSD
)


def _system_sources() -> list[Path]:
    candidates: list[str] = []
    file_variable = os.environ.get("SSL_CERT_FILE")
    directory_variable = os.environ.get("SSL_CERT_DIR")
    if file_variable or directory_variable:
        # As OpenSSL does: the variables replace the built-in locations.
        candidates = [p for p in (file_variable, directory_variable) if p]
    else:
        # (The public path cannot ask which file pyOpenSSL's OpenSSL was
        # built to read; Python's own OpenSSL's files and the usual bundles
        # follow anyway.)
        linked = _openssl.default_cert_file()
        paths = ssl.get_default_verify_paths()
        candidates = [
            *([linked] if linked else []),
            *(p for p in (paths.cafile, paths.openssl_cafile) if p),
            *SYSTEM_BUNDLES,
        ]
    for candidate in candidates:
        path = Path(candidate)
        if path.is_file():
            return [path]
        if path.is_dir() and (file_variable or directory_variable):
            return sorted(p for p in path.iterdir() if p.is_file())
    return []


def _certificates_in_files(paths: Iterable[Path]) -> list[x509.Certificate]:
    found: dict[bytes, x509.Certificate] = {}
    for path in paths:
        try:
            data = path.read_bytes()
        except OSError:
            continue
        if b"-----BEGIN" not in data:
            continue
        with warnings.catch_warnings():
            # Some roots in real bundles have serial number 0, which
            # cryptography warns about; they are the system's to judge.
            warnings.simplefilter("ignore")
            try:
                certificates = x509.load_pem_x509_certificates(data)
            except ValueError:
                certificates = _one_by_one(data)
        for certificate in certificates:
            found.setdefault(certificate.public_bytes(serialization.Encoding.DER), certificate)
    return list(found.values())


def _one_by_one(data: bytes) -> list[x509.Certificate]:
    """The readable certificates of a bundle that also holds unreadable ones."""
    marker = b"-----BEGIN CERTIFICATE-----"
    certificates = []
    for chunk in data.split(marker)[1:]:
        try:
            certificates.append(x509.load_pem_x509_certificate(marker + chunk))
        except ValueError:
            continue
    return certificates


_SYSTEM_STORES: dict[tuple[tuple[str, int, int], ...], TrustStore] = {}


class TrustStore:
    """Trust roots, read and prepared once for every chain judged against them.

    :class:`~txschannel.Credentials` keeps one per client credentials;
    build one to call :func:`verify_server_chain` many times.

    :param certificates: the trust roots.
    :param system: take the roots as the operating system's store is taken
        (see the module's notes); :meth:`system` does this for you.
    :param source: where the roots came from, for error messages.
    """

    def __init__(
        self,
        certificates: Iterable[x509.Certificate],
        *,
        system: bool = False,
        source: str = "the trust roots given",
    ) -> None:
        #: Every root given, in order.
        self.certificates: tuple[x509.Certificate, ...] = tuple(certificates)
        #: Where they came from.
        self.source = source
        #: The roots that cannot end a path, each with the reason.
        self.unusable: tuple[tuple[x509.Certificate, str], ...] = ()
        self._system = system
        anchors: list[x509.Certificate] = []
        unusable = []
        pinned = []
        self._original: dict[x509.Certificate, x509.Certificate] = {}
        with warnings.catch_warnings():
            # Real bundles hold roots with serial number 0, which cryptography
            # warns about on every look; judging them is the system's job.
            warnings.simplefilter("ignore")
            for root in self.certificates:
                problem = _anchor_problem(root)
                if problem is not None:
                    unusable.append((root, problem))
                    continue
                anchor = _reencoded(root) if system else None
                if anchor is not None:
                    self._original[anchor] = root
                anchors.append(anchor or root)
                if root.issuer == root.subject:
                    pinned.append(root)
        self.unusable = tuple(unusable)
        #: Self-issued roots: a server may present one of these as it is.
        self._pinned = frozenset(pinned)
        self._store: Any = None
        if anchors and cryptography_verifier_available():
            from cryptography.x509.verification import Store

            self._store = Store(anchors)
            # Read once per process (about 60 ms), here rather than in the
            # first handshake.
            _icann_suffixes()
        self._openssl: crypto.X509Store | None = None
        self._lock = threading.Lock()
        # The chains accepted against these roots. A store that is read
        # again (new credentials, a changed system bundle) is a new object
        # with an empty memory: no verdict outlives the roots it was
        # reached with.
        self._verdicts = _Verdicts(VERDICT_CACHE_SIZE)

    @classmethod
    def system(cls) -> TrustStore:
        """The operating system's trust roots (its PEM bundle), read once.

        Looks where OpenSSL does: ``SSL_CERT_FILE`` or ``SSL_CERT_DIR`` if
        set, else the bundle the linked OpenSSL (or Python's) was built to
        read, else the usual places of Linux distributions and BSDs
        (:data:`SYSTEM_BUNDLES`). Finding none is not an error: every chain
        is then refused as UNTRUSTED_ROOT, with a reason that says so.
        """
        sources = _system_sources()
        key = []
        for path in sources:
            try:
                found = path.stat()
            except OSError:
                continue
            key.append((str(path), found.st_mtime_ns, found.st_size))
        cached = _SYSTEM_STORES.get(tuple(key))
        if cached is not None:
            return cached
        where = ", ".join(str(p) for p in sources[:3]) + (" ..." if len(sources) > 3 else "")
        store = cls(
            _certificates_in_files(sources),
            system=True,
            source=f"the system store ({where})" if sources else "the system store (not found)",
        )
        # Credentials made one after the other share one store (it does not
        # change once built) until the bundle on disk changes.
        _SYSTEM_STORES.clear()
        _SYSTEM_STORES[tuple(key)] = store
        return store

    def __len__(self) -> int:
        return len(self.certificates)

    def __repr__(self) -> str:
        return f"<TrustStore {len(self.certificates)} roots from {self.source}>"

    def _openssl_store(self) -> crypto.X509Store:
        """The same roots for OpenSSL, built when a refusal is first explained."""
        if self._openssl is None:
            store = crypto.X509Store()
            for root in self.certificates:
                try:
                    store.add_cert(crypto.X509.from_cryptography(root))
                except crypto.Error:
                    continue  # a duplicate
            # What an OpenSSL client checks a server's certificate for.
            _openssl.set_server_purpose(store)
            self._openssl = store
        return self._openssl


# -- the verifier ---------------------------------------------------------


class Refusal(NamedTuple):
    """Why a chain was refused: the status, a reason naming the certificate
    at fault, and the X509_V_ERR_* code that makes OpenSSL send the server
    the matching alert."""

    status: Status
    reason: str
    code: int


def _key_usage_of_ca(policy: Any, certificate: x509.Certificate, usage: Any) -> None:
    # RFC 5280 section 4.2.1.3 asks CAs to include keyUsage, but validators
    # (OpenSSL, Go, browsers) take its absence as "any usage", and so do
    # x509-limbo's expectations; CAs made by `openssl req -x509` have none.
    if usage is not None and not usage.key_cert_sign:
        raise ValueError("the keyUsage of a CA certificate must assert keyCertSign")


def _alt_names_of_server(policy: Any, certificate: x509.Certificate, names: Any) -> None:
    # cryptography's own check, but for one rule: RFC 5280 section 4.2.1.6
    # only says a subjectAltName SHOULD be non-critical when the subject is
    # not empty, and trustme's certificates (the usual ones in Python test
    # suites) mark it critical. The matching below is cryptography's.
    if not any(_alt_name_matches(name, policy.subject) for name in names):
        raise ValueError("leaf certificate has no matching subjectAltName")
    if not _critical(certificate, x509.SubjectAlternativeName) and len(certificate.subject) == 0:
        raise ValueError("subjectAltName must be critical when the subject is empty")


def _usage_of_server(policy: Any, certificate: x509.Certificate, usages: Any) -> None:
    # cryptography's own check, but for one rule: the CA/Browser Forum
    # forbids a critical extendedKeyUsage, RFC 5280 section 4.2.1.12 leaves
    # it to the issuer, and trustme's certificates mark it critical.
    if usages is not None and ExtendedKeyUsageOID.SERVER_AUTH not in usages:
        raise ValueError("required EKU not found (serverAuth)")


def _critical(certificate: x509.Certificate, kind: type[x509.ExtensionType]) -> bool:
    try:
        return certificate.extensions.get_extension_for_class(kind).critical
    except (x509.ExtensionNotFound, ValueError, TypeError):
        return False


def _alt_name_matches(name: x509.GeneralName, subject: object) -> bool:
    """cryptography's matching of one subjectAltName entry: an address
    equals the address; a DNS name equals the host name, or is ``*.``
    followed by the host name without its first label."""
    if isinstance(subject, x509.IPAddress):
        return isinstance(name, x509.IPAddress) and name.value == subject.value
    if not isinstance(subject, x509.DNSName) or not isinstance(name, x509.DNSName):
        return False
    pattern, host = name.value.lower(), subject.value.lower()
    if _ends_in_a_number(pattern):
        # An address written as a DNS name (``127.0.0.1``, ``*.0.0.1``)
        # names no host: an address is matched only by an iPAddress entry
        # (service_identity refused these as invalid DNS patterns too).
        return False
    if pattern.startswith("*."):
        parent = pattern[2:]
        return _dns_name(parent) and host.partition(".")[2] == parent
    return _dns_name(pattern) and pattern == host


def _dns_name(value: str) -> bool:
    """A host name as cryptography accepts one: letters, digits and inner
    hyphens, labels of 1 to 63 characters, 253 in all."""
    return len(value) <= 253 and _DNS_NAME.fullmatch(value) is not None


_DNS_NAME = re.compile(
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)


@functools.lru_cache(maxsize=1)
def _policies() -> tuple[Any, Any]:
    from cryptography.x509.verification import Criticality, ExtensionPolicy

    ca = ExtensionPolicy.webpki_defaults_ca().may_be_present(
        x509.KeyUsage, Criticality.AGNOSTIC, _key_usage_of_ca
    )
    ee = (
        ExtensionPolicy.webpki_defaults_ee()
        .require_present(x509.SubjectAlternativeName, Criticality.AGNOSTIC, _alt_names_of_server)
        .may_be_present(x509.ExtendedKeyUsage, Criticality.AGNOSTIC, _usage_of_server)
    )
    return ca, ee


# -- rules on the path built -----------------------------------------------
#
# cryptography's profile leaves these to the caller; each is checked on the
# path the verifier returns (never on a certificate the path does not use).


def _key_problem(certificate: x509.Certificate) -> str | None:
    """Why the key *certificate* carries is too weak, or None: every key of
    the path, not only the ones that verify a signature (the leaf's signs
    the handshake; a root's signs what it issues)."""
    try:
        key = certificate.public_key()
    except (ValueError, UnsupportedAlgorithm):
        return "a public key of a kind that cannot be read"
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            return f"an RSA key of {key.key_size} bits (2048 at least)"
        if key.key_size % 8:
            return f"an RSA key of {key.key_size} bits, not a whole number of bytes"
    elif isinstance(key, dsa.DSAPublicKey):
        return "a DSA key"
    elif isinstance(key, ec.EllipticCurvePublicKey) and key.curve.key_size < 256:
        return f"an elliptic-curve key on {key.curve.name} (P-256 or stronger)"
    return None


def _extensions(certificate: x509.Certificate) -> dict[type[Any], Any]:
    """*certificate*'s extensions (``x509.Extension``) by the class of their
    value, read in one pass (an unreadable set: none)."""
    try:
        return {type(extension.value): extension for extension in certificate.extensions}
    except (ValueError, TypeError):
        return {}


def _certificate_problem(
    certificate: x509.Certificate, depth: int, last: bool, anchor: bool
) -> tuple[str, int] | None:
    """:func:`_key_problem` and (unless *anchor*) :func:`_profile_problem`."""
    problem = _key_problem(certificate)
    if problem is not None:
        return problem, int(_codes.ERR_CERT_REJECTED)
    return None if anchor else _profile_problem(certificate, depth, last)


# What the rules found of the CA certificates seen lately (an intermediate
# serves many servers), by their bytes and place: their verdict depends on
# nothing else.
_CA_PROBLEMS: OrderedDict[
    tuple[x509.Certificate, bool, bool], tuple[str, int] | None
] = OrderedDict()
_CA_PROBLEMS_SIZE = 256
_CA_PROBLEMS_LOCK = threading.Lock()


def _ca_problem(
    certificate: x509.Certificate, last: bool, anchor: bool
) -> tuple[str, int] | None:
    """:func:`_certificate_problem` for a certificate above the leaf, remembered."""
    # (A certificate equals another with the same content: what the rules read.)
    key = (certificate, last, anchor)
    with _CA_PROBLEMS_LOCK:
        if key in _CA_PROBLEMS:
            _CA_PROBLEMS.move_to_end(key)
            return _CA_PROBLEMS[key]
    found = _certificate_problem(certificate, 1, last, anchor)
    with _CA_PROBLEMS_LOCK:
        _CA_PROBLEMS[key] = found
        while len(_CA_PROBLEMS) > _CA_PROBLEMS_SIZE:
            _CA_PROBLEMS.popitem(last=False)
    return found


def _issuer_and_subject(certificate: x509.Certificate) -> tuple[bytes, bytes]:
    """The encoded issuer and subject names of *certificate*, read from its
    bytes (building ``x509.Name`` objects costs more than every rule here)."""
    tbs = certificate.tbs_certificate_bytes
    try:
        _, position, _ = _der_element(tbs, 0)
        tag, _, end = _der_element(tbs, position)
        if tag == 0xA0:  # the version, when it is not v1
            position = end
        for _ in range(2):  # the serial number, the signature algorithm
            position = _der_element(tbs, position)[2]
        issuer_end = _der_element(tbs, position)[2]
        issuer = tbs[position:issuer_end]
        subject_start = _der_element(tbs, issuer_end)[2]  # after the validity
        subject = tbs[subject_start : _der_element(tbs, subject_start)[2]]
    except (IndexError, ValueError):
        return (
            certificate.issuer.public_bytes(),
            certificate.subject.public_bytes(),
        )
    return issuer, subject


def _profile_problem(
    certificate: x509.Certificate, depth: int, last: bool
) -> tuple[str, int] | None:
    """Why *certificate*, at *depth* of the path (*last*: the trust root
    ending it), breaks RFC 5280 or the CA/Browser Forum's rules in a way
    cryptography does not check, with the X509_V_ERR_* code; or None."""
    rejected = int(_codes.ERR_CERT_REJECTED)
    if certificate.serial_number <= 0 and not last:
        # RFC 5280 section 4.1.2.2: a positive integer. (Not asked of the
        # trust root: section 6.1.1 takes only its name and key, and real
        # roots, Starfield's G2, have serial number 0.)
        return f"serial number {certificate.serial_number} (it must be positive)", rejected
    extensions = _extensions(certificate)
    constraints = extensions.get(x509.BasicConstraints)
    is_ca = constraints is not None and constraints.value.ca
    if is_ca and extensions.get(x509.SubjectKeyIdentifier) is None:
        # RFC 5280 section 4.2.1.2: MUST appear in every CA certificate.
        return "a CA certificate without subjectKeyIdentifier", rejected

    def self_issued() -> bool:
        # (Asked only when it matters: reading the names costs more than
        # every other rule.)
        issuer, subject = _issuer_and_subject(certificate)
        return issuer == subject

    aki = extensions.get(x509.AuthorityKeyIdentifier)
    if (aki is None or aki.value.key_identifier is None) and not self_issued():
        # RFC 5280 section 4.2.1.1: the keyIdentifier MUST be in every
        # certificate a CA issues (only a self-signed one may lack it).
        return "no authorityKeyIdentifier (keyIdentifier)", rejected
    constraints_on_policy = extensions.get(x509.PolicyConstraints)
    if constraints_on_policy is not None and not constraints_on_policy.critical:
        # RFC 5280 section 4.2.1.11: conforming CAs MUST mark it critical.
        return "a policyConstraints extension that is not critical", rejected
    usages = extensions.get(x509.ExtendedKeyUsage)
    if usages is not None:
        purpose = int(_codes.ERR_INVALID_PURPOSE)
        if depth == 0 and ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE in usages.value:
            # CA/Browser Forum Baseline Requirements 7.1.2.7.10.
            return "anyExtendedKeyUsage in a server's certificate", purpose
        if last and self_issued():
            # Baseline Requirements 7.1.2.1.2: a root has no extendedKeyUsage.
            return "an extendedKeyUsage in a root certificate", purpose
    return None


def _common_name_problem(leaf: x509.Certificate) -> str | None:
    """Why the leaf's subject CN breaks the Baseline Requirements 7.1.4.3,
    narrowly, or None: a CN that names one of the subjectAltName entries
    must be written as that entry is (a DNS name byte for byte, an address
    in its canonical form), and an internationalised CN must be an A-label
    copy of an entry (never a U-label: the Baseline Requirements forbid
    converting P-labels to Unicode there). Other CNs that name no entry are
    not refused (that stricter rule refuses certificates valid by RFC 5280
    and by x509-limbo)."""
    try:
        names = [
            attribute.value
            for attribute in leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
            if isinstance(attribute.value, str)
        ]
    except ValueError:
        return None
    if not names:
        return None
    san = _extensions(leaf).get(x509.SubjectAlternativeName)
    if san is None:
        return None
    dns_names = san.value.get_values_for_type(x509.DNSName)
    addresses = set(san.value.get_values_for_type(x509.IPAddress))
    for name in names:
        if name in dns_names:
            continue
        if not name.isascii():
            try:
                host_a_label(name)
            except ValueError:
                pass  # not a host name at all (a person's or a service's name)
            else:
                return f"its CN {name!r} is a host name written in Unicode, not as its A-label"
        if any(label.lower().startswith("xn--") for label in name.split(".")):
            return f"its CN {name!r} is an internationalised name not in its subjectAltName"
        if any(name.lower() == entry.lower() for entry in dns_names):
            return f"its CN {name!r} differs from its subjectAltName in case"
        address = _lenient_address(name)
        if address is not None and address in addresses and str(address) != name:
            return f"its CN {name!r} is the address {address} not written canonically"
    return None


def _lenient_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address *text* spells, in any spelling the C library reads
    (``0xC0A80101``, ``192.168.001.001``, upper case, uncompressed), or None."""
    import socket

    try:
        return ipaddress.ip_address(text)
    except ValueError:
        pass
    for family in (socket.AF_INET6, socket.AF_INET):
        try:
            return ipaddress.ip_address(socket.inet_pton(family, text))
        except (OSError, ValueError):
            continue
    try:
        return ipaddress.IPv4Address(socket.inet_aton(text))
    except (OSError, ValueError):
        return None


@functools.lru_cache(maxsize=1)
def _icann_suffixes() -> Any:
    """The ICANN section of the public-suffix list bundled with the
    ``publicsuffixlist`` package (read once; never fetched). The private
    section (``s3.amazonaws.com``, ``github.io``) is left out: names under
    those are registered by their companies, who may well hold a wildcard."""
    from publicsuffixlist import PublicSuffixList

    return PublicSuffixList(only_icann=True)


def _public_suffix_wildcard(leaf: x509.Certificate, host: str) -> str | None:
    """The wildcard entry on a public suffix that alone matches *host*, or None.

    A wildcard whose parent is a public suffix (``*.co.uk``) matches every
    registrant's names under it; the Baseline Requirements (3.2.2.6) forbid
    it. *host* is still accepted if the certificate names it exactly.
    """
    parent = host.partition(".")[2]
    if not parent or not _icann_suffixes().is_public(parent):
        return None
    san = _extensions(leaf).get(x509.SubjectAlternativeName)
    if san is None:
        return None
    entries = [entry.lower() for entry in san.value.get_values_for_type(x509.DNSName)]
    if host in entries:
        return None
    wildcard = f"*.{parent}"
    return wildcard if wildcard in entries else None


def _path_refusal(
    path: Sequence[x509.Certificate], store: TrustStore, text: str, subject: object
) -> Refusal | None:
    """The refusal the rules above make of *path* (leaf first, root last), or None."""
    for depth, certificate in enumerate(path):
        last = depth == len(path) - 1
        # A root of the system store is an anchor, not a certificate to
        # judge (see the module's notes); its key is still checked.
        anchor = last and store._system
        if depth == 0:
            found = _certificate_problem(certificate, depth, last, anchor)
        else:
            found = _ca_problem(certificate, last, anchor)
        if found is not None:
            problem, code = found
            return Refusal(
                Status.CERT_UNKNOWN,
                f"{verify_error_text(code)}: {_subject(certificate)} at depth {depth} "
                f"({problem})",
                code,
            )
    leaf = path[0]
    spelling = _common_name_problem(leaf)
    if spelling is not None:
        code = int(_codes.ERR_CERT_REJECTED)
        return Refusal(
            Status.CERT_UNKNOWN,
            f"{verify_error_text(code)}: {_subject(leaf)} at depth 0 ({spelling}; "
            "CA/Browser Forum Baseline Requirements 7.1.4.3)",
            code,
        )
    if isinstance(subject, x509.DNSName):
        wildcard = _public_suffix_wildcard(leaf, text)
        if wildcard is not None:
            return Refusal(
                Status.WRONG_PRINCIPAL,
                f"certificate for {wildcard} does not match {text!r} ({wildcard} is a "
                "wildcard on a public suffix, which matches every registrant's names)",
                _mismatch_code(text),
            )
    return None


def verify_server_chain(
    chain: Sequence[x509.Certificate],
    name: str,
    *,
    trust_roots: Sequence[x509.Certificate] | TrustStore,
    at: datetime.datetime | None = None,
    max_depth: int | None = None,
) -> list[x509.Certificate]:
    """Judge a server's certificate chain as a txschannel client does.

    :param chain: the server's certificates, its own first, then whatever
        else it sent (in any order; extra certificates are ignored).
    :param name: the host name (Unicode or IDNA; case and a trailing dot do
        not matter) or the IP address the certificate must be for.
    :param trust_roots: the trust roots, or a :class:`TrustStore` built
        once (``TrustStore.system()`` for the operating system's).
    :param at: when to judge the validity periods (default: now). A naive
        datetime is taken as UTC. A judgement at a time given is neither
        remembered nor answered from memory.
    :param max_depth: how many intermediate CAs a path may have (default:
        cryptography's, 8).
    :returns: the path built: the server's certificate, the intermediates
        used, and the trust root it ends at. With a :class:`TrustStore`, a
        chain it accepted before (the same certificates, for the same name,
        still within their periods) is answered from its memory.
    :raises SecurityError: the chain is refused; ``status`` is the most
        specific of UNTRUSTED_ROOT, CERT_EXPIRED, WRONG_PRINCIPAL and
        CERT_UNKNOWN, ``reason`` names the certificate at fault.
    :raises ValueError: *chain* is empty, or *name* is not a valid host
        name or address.
    :raises RuntimeError: the installed cryptography has no verifier with
        extension policies (before 44.0).
    """
    verdict = judge_server_chain(chain, name, trust_roots=trust_roots, at=at, max_depth=max_depth)
    if isinstance(verdict, Refusal):
        raise SecurityError(verdict.status, verdict.reason)
    return verdict


def judge_server_chain(
    chain: Sequence[x509.Certificate],
    name: str,
    *,
    trust_roots: Sequence[x509.Certificate] | TrustStore,
    at: datetime.datetime | None = None,
    max_depth: int | None = None,
) -> list[x509.Certificate] | Refusal:
    """:func:`verify_server_chain`, returning the refusal instead of raising it."""
    if not cryptography_verifier_available():
        raise RuntimeError(
            "the installed cryptography has no X.509 verifier with extension policies "
            "(cryptography 44 or later); use validation='openssl'"
        )
    if not chain:
        raise ValueError("the chain is empty: it starts with the server's own certificate")
    store = trust_roots if isinstance(trust_roots, TrustStore) else TrustStore(trust_roots)
    return _judge_remembered(chain, None, name, store, at, max_depth)


def _judge_remembered(
    chain: Sequence[x509.Certificate],
    encoded: Sequence[bytes] | None,
    name: str,
    store: TrustStore,
    at: datetime.datetime | None,
    max_depth: int | None,
) -> list[x509.Certificate] | Refusal:
    """:func:`judge_server_chain` on a non-empty chain, *encoded* its
    certificates' bytes as received, if known (else they are encoded again)."""
    when = _utc(at)
    text, subject = _reference(name)
    leaf, intermediates = chain[0], list(chain[1:])
    # Only a judgement made now is remembered or answered from memory.
    key = _verdict_key(chain, encoded, subject, max_depth) if at is None else None
    if key is not None:
        remembered = store._verdicts.get(key, when)
        if remembered is not None:
            return remembered
    verdict = _judge(store, leaf, intermediates, name, text, subject, when, max_depth)
    if key is not None and not isinstance(verdict, Refusal):
        store._verdicts.put(key, verdict)
    return verdict


def _judge(
    store: TrustStore,
    leaf: x509.Certificate,
    intermediates: list[x509.Certificate],
    name: str,
    text: str,
    subject: x509.DNSName | x509.IPAddress,
    when: datetime.datetime,
    max_depth: int | None,
) -> list[x509.Certificate] | Refusal:
    """:func:`judge_server_chain`'s work, without the memory of verdicts."""
    if leaf in store._pinned:
        return _pinned(leaf, name, when)
    if store._store is None:
        nothing = Refusal(
            Status.UNTRUSTED_ROOT,
            f"no usable trust root in {store.source}: nothing can vouch for "
            f"{_subject(leaf)}" + _unusable_note(store),
            _codes.ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY,
        )
        return _explain(nothing, leaf, intermediates, name, store, when)
    from cryptography.x509.verification import PolicyBuilder, VerificationError

    ca_policy, ee_policy = _policies()
    builder = (
        PolicyBuilder()
        .store(store._store)
        .time(when)
        .extension_policies(ca_policy=ca_policy, ee_policy=ee_policy)
    )
    if max_depth is not None:
        builder = builder.max_chain_depth(max_depth)
    try:
        built = builder.build_server_verifier(subject).verify(leaf, intermediates)
    except VerificationError as e:
        return _explain(str(e), leaf, intermediates, name, store, when)
    except ValueError as e:  # cryptography cannot take the name as a subject
        return Refusal(
            Status.WRONG_PRINCIPAL,
            f"{name!r} cannot be checked against a certificate ({e})",
            _mismatch_code(text),
        )
    path = [store._original.get(certificate, certificate) for certificate in built]
    # The name was matched inside the verifier (_alt_names_of_server); what
    # service_identity refused on top of that match, a wildcard directly
    # under a top-level domain (*.com), is a wildcard on a public suffix,
    # which _path_refusal refuses (with any single label as a suffix). It
    # is asked again only to word a refusal (_explain).
    refusal = _path_refusal(path, store, text, subject)
    if refusal is not None:
        return _explain(refusal, leaf, intermediates, name, store, when)
    return path


# -- remembered verdicts ----------------------------------------------------

#: How many accepted chains each trust store remembers (the least recently
#: used is forgotten first).
VERDICT_CACHE_SIZE = 1024

# Names the rules a remembered verdict was reached by; part of every key,
# so that verdicts reached by other rules are never taken for these.
_POLICY = ("txschannel validation", 3, "webpki+rfc5280 path rules", "ICANN public suffixes")


def _verdict_key(
    chain: Sequence[x509.Certificate],
    encoded: Sequence[bytes] | None,
    subject: x509.DNSName | x509.IPAddress,
    max_depth: int | None,
) -> tuple[object, ...]:
    """What a verdict depends on besides the trust store (whose own memory
    it is) and the time: the chain exactly as presented, the name in the
    form it is compared and whether it was checked as a DNS name or as an
    IP address, and the rules.

    The chain is kept as the SHA-256 digest of every certificate's bytes,
    in order (each after its length): a key's size does not grow with
    what the server sends (a chain padded with certificates that no path
    uses would otherwise hold its whole bytes in memory), and another
    chain has another digest.
    """
    if encoded is None:
        encoded = [certificate.public_bytes(serialization.Encoding.DER) for certificate in chain]
    digest = hashlib.sha256()
    for der in encoded:
        digest.update(len(der).to_bytes(4, "big"))
        digest.update(der)
    kind = "ip" if isinstance(subject, x509.IPAddress) else "dns"
    return (digest.digest(), kind, str(subject.value), max_depth, _POLICY)


class _Verdicts:
    """A trust store's memory of the chains it accepted: bounded (least
    recently used first out), each verdict good only while every
    certificate of its path is within its validity period. Refusals are
    never remembered: the next connection judges again."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[
            tuple[object, ...],
            tuple[datetime.datetime, datetime.datetime, tuple[x509.Certificate, ...]],
        ] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: tuple[object, ...], now: datetime.datetime) -> list[x509.Certificate] | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            start, end, path = entry
            if not start <= now <= end:
                # Out of a certificate's period (or the clock went back):
                # judged again, and the verdict forgotten.
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return list(path)

    def put(self, key: tuple[object, ...], path: Sequence[x509.Certificate]) -> None:
        start = max(certificate.not_valid_before_utc for certificate in path)
        end = min(certificate.not_valid_after_utc for certificate in path)
        with self._lock:
            self._entries[key] = (start, end, tuple(path))
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


def _now() -> datetime.datetime:
    """The clock every judgement made now reads (a test may set it)."""
    return datetime.datetime.now(datetime.timezone.utc)


def _utc(at: datetime.datetime | None) -> datetime.datetime:
    if at is None:
        return _now()
    if at.tzinfo is None:
        return at.replace(tzinfo=datetime.timezone.utc)
    return at.astimezone(datetime.timezone.utc)


def _mismatch_code(text: str) -> int:
    return int(
        _codes.ERR_IP_ADDRESS_MISMATCH if is_ip(text) else _codes.ERR_HOSTNAME_MISMATCH
    )


def _unusable_note(store: TrustStore) -> str:
    if not store.unusable:
        return ""
    notes = "; ".join(f"{_subject(root)}: {why}" for root, why in store.unusable[:3])
    return f" (trust roots not used: {notes})"


def _pinned(leaf: x509.Certificate, name: str, when: datetime.datetime) -> Refusal | list[
    x509.Certificate
]:
    """A self-issued certificate that is itself a trust root (a private
    service's own certificate, ``twist schannel``'s): its period, its
    purpose and its name are all there is to check."""
    if when < leaf.not_valid_before_utc:
        code = _codes.ERR_CERT_NOT_YET_VALID
    elif when > leaf.not_valid_after_utc:
        code = _codes.ERR_CERT_HAS_EXPIRED
    else:
        code = 0
    if code:
        return Refusal(
            Status.CERT_EXPIRED, f"{verify_error_text(code)}: {_subject(leaf)} at depth 0", code
        )
    try:
        usages = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        usages = None
    if usages is not None and not {
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE,
    } & set(usages):
        code = _codes.ERR_INVALID_PURPOSE
        return Refusal(
            Status.CERT_UNKNOWN, f"{verify_error_text(code)}: {_subject(leaf)} at depth 0", code
        )
    problem = name_mismatch(leaf, name)
    if problem is not None:
        return Refusal(Status.WRONG_PRINCIPAL, problem, _mismatch_code(_reference(name)[0]))
    return [leaf]


def _explain(
    refused: str | Refusal,
    leaf: x509.Certificate,
    intermediates: list[x509.Certificate],
    name: str,
    store: TrustStore,
    when: datetime.datetime,
) -> Refusal:
    """The refusal for a chain cryptography refused (*refused*: its words,
    or the refusal already made), as specific as can be.

    Where OpenSSL refuses the chain too, its verdict gives the status and
    the alert (the ones a client gave before this verifier existed); a
    wrong name comes after the problems OpenSSL finds before it checks the
    name, and before the ones it finds after.
    """
    found = _openssl_error(store, leaf, intermediates, when)
    if found is not None and found[0] not in _AFTER_NAME:
        return _openssl_refusal(*found)
    # (A certificate whose extensions cannot be read is not for a wrong
    # name: it is malformed, which cryptography's words say.)
    problem = name_mismatch(leaf, name) if _readable(leaf) else None
    if problem is not None:
        return Refusal(Status.WRONG_PRINCIPAL, problem, _mismatch_code(_reference(name)[0]))
    if found is not None:
        return _openssl_refusal(*found)
    if isinstance(refused, Refusal):
        return refused
    return _cryptography_refusal(refused, leaf, intermediates, name, store, when)


def _readable(certificate: x509.Certificate) -> bool:
    try:
        return certificate.extensions is not None
    except (ValueError, TypeError):
        return False


def _openssl_error(
    store: TrustStore,
    leaf: x509.Certificate,
    intermediates: list[x509.Certificate],
    when: datetime.datetime,
) -> tuple[int, int, x509.Certificate] | None:
    """OpenSSL's first objection to the chain: (code, depth, certificate)."""
    if not store.certificates:
        return None
    context = crypto.X509StoreContext(
        store._openssl_store(),
        crypto.X509.from_cryptography(leaf),
        [crypto.X509.from_cryptography(c) for c in intermediates],
    )
    with store._lock:  # the time is a setting of the shared store
        store._openssl_store().set_time(when)
        try:
            context.verify_certificate()
        except crypto.X509StoreContextError as e:
            code, depth = int(e.errors[0]), int(e.errors[1])
            return code, depth, e.certificate.to_cryptography()
    return None


def _openssl_refusal(code: int, depth: int, certificate: x509.Certificate) -> Refusal:
    return Refusal(
        verify_error_status(code),
        f"{verify_error_text(code)}: {_subject(certificate)} at depth {depth}",
        code,
    )


# What cryptography's words mean, most specific first: (words, status, code).
_CRYPTOGRAPHY_WORDS: tuple[tuple[str, Status, str], ...] = (
    ("not valid at validation time", Status.CERT_EXPIRED, "X509_V_ERR_CERT_HAS_EXPIRED"),
    ("no interior errors", Status.UNTRUSTED_ROOT, "X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY"),
    ("exceeds max depth", Status.CERT_UNKNOWN, "X509_V_ERR_CERT_CHAIN_TOO_LONG"),
    ("excluded name constraint", Status.CERT_UNKNOWN, "X509_V_ERR_EXCLUDED_VIOLATION"),
    ("name constraint", Status.CERT_UNKNOWN, "X509_V_ERR_PERMITTED_VIOLATION"),
    ("EKU", Status.CERT_UNKNOWN, "X509_V_ERR_INVALID_PURPOSE"),
    ("must not be asserted in an EE", Status.CERT_UNKNOWN, "X509_V_ERR_INVALID_NON_CA"),
    ("no matching subjectAltName", Status.WRONG_PRINCIPAL, "X509_V_ERR_HOSTNAME_MISMATCH"),
)


def _cryptography_refusal(
    message: str,
    leaf: x509.Certificate,
    intermediates: list[x509.Certificate],
    name: str,
    store: TrustStore,
    when: datetime.datetime,
) -> Refusal:
    """A refusal only cryptography's rules make: its own words, a status."""
    detail = message.removeprefix("validation failed: ")
    status, code = Status.CERT_UNKNOWN, int(_codes.ERR_CERT_REJECTED)
    for words, word_status, code_name in _CRYPTOGRAPHY_WORDS:
        if words in detail:
            found = getattr(_codes, code_name.removeprefix("X509_V_"), code)
            status, code = word_status, int(found)
            break
    if "candidates exhausted" not in detail:
        culprit, depth = leaf, 0  # the server's own certificate broke the profile
    else:
        culprit, depth = _issuer_at_fault(leaf, intermediates, store, when)
    if status is Status.CERT_EXPIRED and when < culprit.not_valid_before_utc:
        code = _codes.ERR_CERT_NOT_YET_VALID
    if status is Status.WRONG_PRINCIPAL:
        code = _mismatch_code(_reference(name)[0])
    where = f"{_subject(culprit)} at depth {depth}" if depth == 0 else (
        f"no valid issuer for {_subject(culprit)} at depth {depth}"
    )
    note = _unusable_note(store) if status is Status.UNTRUSTED_ROOT else ""
    return Refusal(status, f"{verify_error_text(code)}: {where} ({detail}){note}", code)


def _issuer_at_fault(
    leaf: x509.Certificate,
    intermediates: list[x509.Certificate],
    store: TrustStore,
    when: datetime.datetime,
) -> tuple[x509.Certificate, int]:
    """Where a path from *leaf* stops: the last certificate reached, by
    names alone, before there was no issuer (or one out of its period)."""
    current, depth = leaf, 0
    pool = [*intermediates, *store.certificates]
    seen = {leaf}
    while depth < 16:
        issuers = [c for c in pool if c.subject == current.issuer and c not in seen]
        if not issuers:
            return current, depth
        current, depth = issuers[0], depth + 1
        seen.add(current)
        if not current.not_valid_before_utc <= when <= current.not_valid_after_utc:
            return current, depth
        if current in store.certificates:
            return current, depth
    return current, depth


def judge_peer_chain(
    encoded: Sequence[bytes] | None,
    name: str | None,
    trust: TrustStore,
) -> list[x509.Certificate] | Refusal:
    """The handshake's use of :func:`judge_server_chain`, on the chain's
    certificates as received (DER): no chain or no name is a refusal, not
    an exception (nothing may escape into OpenSSL)."""
    chain = [x509.load_der_x509_certificate(der) for der in encoded or ()]
    if not chain:
        code = int(getattr(_codes, "ERR_UNSPECIFIED", 1))
        return Refusal(Status.CERT_UNKNOWN, "the server sent no certificate", code)
    if name is None:
        return Refusal(
            Status.WRONG_PRINCIPAL,
            "no target name to check the server's certificate against",
            _codes.ERR_HOSTNAME_MISMATCH,
        )
    try:
        return _judge_remembered(chain, encoded, name, trust, None, None)
    except ValueError as e:
        return Refusal(Status.WRONG_PRINCIPAL, str(e), _codes.ERR_HOSTNAME_MISMATCH)

