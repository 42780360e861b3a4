"""Credentials: what SSPI's AcquireCredentialsHandle builds, once per configuration.

A :class:`Credentials` owns one ``OpenSSL.SSL.Context`` (plus one per SNI
host name on a server) and is shared by every connection made with it. All
validation of certificates, keys and options happens here, at construction,
so that a bad file is reported with its name before any peer connects.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import os
import re
import stat
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Union

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import types as asymmetric_types
from OpenSSL import SSL, crypto

from txschannel import _openssl, keylog
from txschannel.creators import TwistedCreator, adapt
from txschannel.keylog import KeyLogSetting
from txschannel.status import Status
from txschannel.validation import (
    DEFAULT_VALIDATION,
    VALIDATIONS,
    Refusal,
    TrustStore,
    cryptography_verifier_available,
    is_ip,
    judge_peer_chain,
    name_mismatch,
)
from txschannel.validation import verify_error_status as verify_error_status
from txschannel.validation import verify_error_text as verify_error_text

__all__ = [
    "Credentials",
    "CertificateSource",
    "SessionCache",
    "KeySource",
    "read_passphrase",
    "sni_default",
    "sni_files",
    "validity_warnings",
]

#: A certificate (or several, for a chain or trust roots): a path to a PEM
#: file, PEM bytes, or ``cryptography`` certificate objects.
CertificateSource = Union[str, "os.PathLike[str]", bytes, x509.Certificate]
#: A private key: a path to a PEM file, PEM bytes, or a ``cryptography`` key.
KeySource = Union[str, "os.PathLike[str]", bytes, asymmetric_types.CertificateIssuerPrivateKeyTypes]

_VERSIONS = {
    "TLSv1.2": SSL.TLS1_2_VERSION,
    "TLSv1.3": SSL.TLS1_3_VERSION,
}
_INSECURE_VERSIONS = {"SSLv3", "TLSv1", "TLSv1.0", "TLSv1.1"}

#: TLS 1.2 suites: forward-secret key exchange and AEAD only (Mozilla's
#: "intermediate" profile). TLS 1.3 suites are all AEAD already.
_TLS12_CIPHERS = (
    b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    b"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    b"ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)
#: TLS 1.3 suites in Mozilla's "intermediate" order: AES-128-GCM first. A
#: client offers them in this order and, as Mozilla advises, a server takes
#: the client's order (the client knows whether it has AES in hardware).
#: OpenSSL's own default puts AES-256-GCM first, which costs about 10% more
#: CPU per byte for no practical gain in strength.
_TLS13_SUITES = b"TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
_SESSION_CACHE_SIZE = 1024
_PEM_BLOCK = re.compile(
    rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----", re.DOTALL
)

#: pyOpenSSL's public names for OpenSSL's X509_V_ERR_* codes.
_codes: Any = SSL.X509VerificationCodes

_NAME_ERRORS = frozenset(
    {
        _codes.ERR_HOSTNAME_MISMATCH,
        _codes.ERR_EMAIL_MISMATCH,
        _codes.ERR_IP_ADDRESS_MISMATCH,
    }
)


def _version(value: str | None, option: str) -> int | None:
    if value is None:
        return None
    if value in _VERSIONS:
        return _VERSIONS[value]
    if value in _INSECURE_VERSIONS:
        raise ValueError(
            f"{option}={value!r}: TLS versions below 1.2 are not supported; "
            f"use one of {', '.join(_VERSIONS)}"
        )
    raise ValueError(f"{option}={value!r}: unknown TLS version; use one of {', '.join(_VERSIONS)}")


def _describe(source: object) -> str:
    if isinstance(source, (str, os.PathLike)):
        return f"file {os.fspath(source)!r}"
    if isinstance(source, (bytes, bytearray)):
        return "PEM data"
    return type(source).__name__


def _read(source: str | os.PathLike[str] | bytes, what: str) -> tuple[bytes, str]:
    """Return the bytes of *source* and a name for it to use in errors."""
    if isinstance(source, (bytes, bytearray)):
        return bytes(source), f"{what} (PEM data)"
    path = os.fspath(source)
    label = f"{what} file {path!r}"
    try:
        mode = os.stat(path).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            # Opening a FIFO would block until a writer appears: a hang at
            # start-up instead of an error.
            raise ValueError(f"{label} is not a regular file ({_file_kind(mode)})")
        with open(path, "rb") as handle:
            return handle.read(), label
    except FileNotFoundError:
        raise ValueError(f"{label} does not exist") from None
    except IsADirectoryError:
        raise ValueError(f"{label} is a folder, not a PEM file") from None
    except PermissionError:
        raise ValueError(f"{label} is not readable (permission denied)") from None
    except OSError as e:
        raise ValueError(f"{label} cannot be read: {e.strerror}") from None


def _file_kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a file"


def _pem_blocks(data: bytes, label: str) -> list[tuple[str, bytes]]:
    blocks = [(m.group(1).decode("ascii"), m.group(0)) for m in _PEM_BLOCK.finditer(data)]
    if not blocks:
        raise ValueError(f"{label} is not PEM: no '-----BEGIN ...-----' block found")
    return blocks


def _load_certificates(
    sources: CertificateSource | Iterable[CertificateSource], what: str
) -> list[x509.Certificate]:
    """Every certificate named by *sources*, in order; at least one."""
    if isinstance(sources, (str, os.PathLike, bytes, bytearray, x509.Certificate)):
        sources = [sources]
    certificates: list[x509.Certificate] = []
    for source in sources:
        if isinstance(source, x509.Certificate):
            certificates.append(source)
            continue
        if not isinstance(source, (str, os.PathLike, bytes, bytearray)):
            raise TypeError(f"{what}: expected a path, PEM bytes or a certificate, not {source!r}")
        if not isinstance(source, (bytes, bytearray)) and Path(source).is_dir():
            certificates.extend(_load_folder(Path(source), what))
            continue
        data, label = _read(source, what)
        found = _certificates_in(data, label)
        if not found:
            raise ValueError(f"{label} holds no certificate (expected a 'BEGIN CERTIFICATE' block)")
        certificates.extend(found)
    if not certificates:
        raise ValueError(f"{what}: no certificate given")
    return certificates


def _load_folder(folder: Path, what: str) -> list[x509.Certificate]:
    certificates: list[x509.Certificate] = []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() in (".pem", ".crt", ".cer") and path.is_file():
            data, label = _read(path, what)
            certificates.extend(_certificates_in(data, label))
    if not certificates:
        raise ValueError(f"{what} folder {str(folder)!r} holds no .pem/.crt certificate files")
    return certificates


def _certificates_in(data: bytes, label: str) -> list[x509.Certificate]:
    certificates = []
    for kind, block in _pem_blocks(data, label):
        if kind in ("CERTIFICATE", "TRUSTED CERTIFICATE", "X509 CERTIFICATE"):
            try:
                certificates.append(x509.load_pem_x509_certificate(block))
            except ValueError:
                raise ValueError(
                    f"{label}: a certificate in it is damaged: {_damage(block)}"
                ) from None
    return certificates


def _damage(block: bytes) -> str:
    """What is wrong with a PEM *block* that cryptography refused, in plain words.

    cryptography's own message is a parser's (``ParseError { kind:
    ShortData ... }``); this looks at the block itself instead.
    """
    body = b"".join(
        line.strip() for line in block.splitlines()[1:-1] if b":" not in line
    )
    try:
        der = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        return "its base64 text is corrupted (a character that is not base64, or a line cut)"
    if len(der) < 2 or der[0] != 0x30:
        return "its contents are not DER (they do not start with an ASN.1 SEQUENCE)"
    size, header = der[1], 2
    if size & 0x80:
        count = size & 0x7F
        size, header = int.from_bytes(der[2 : 2 + count], "big"), 2 + count
    if header + size > len(der):
        return f"it is cut short ({len(der)} bytes of the {header + size} its header announces)"
    return "its DER contents are not what the block's header says they are"


def _private_key_in(
    data: bytes, label: str, passphrase: bytes | None = None
) -> asymmetric_types.CertificateIssuerPrivateKeyTypes | None:
    for kind, block in _pem_blocks(data, label):
        if kind.endswith("PRIVATE KEY"):
            encrypted = kind == "ENCRYPTED PRIVATE KEY" or b"ENCRYPTED" in block[:200]
            if encrypted and passphrase is None:
                raise ValueError(
                    f"{label}: the private key is encrypted and no passphrase was given "
                    "(passphrase= in Python, passphraseFile= in a schannel: string)"
                )
            try:
                # A passphrase for a key that is not encrypted is not needed,
                # and not an error: OpenSSL, nginx and Python's ssl ignore it too.
                key = serialization.load_pem_private_key(
                    block, password=passphrase if encrypted else None
                )
            except (ValueError, TypeError, UnsupportedAlgorithm) as e:
                if encrypted:
                    # Never the passphrase itself in the message.
                    raise ValueError(
                        f"{label}: the passphrase given does not decrypt the private key "
                        "(wrong passphrase, or a damaged key)"
                    ) from None
                if isinstance(e, UnsupportedAlgorithm):
                    raise ValueError(
                        f"{label}: the private key in it is of a type that is not supported "
                        "(use an RSA, ECDSA P-256/P-384/P-521, Ed25519 or Ed448 key)"
                    ) from None
                raise ValueError(
                    f"{label}: the private key in it is damaged: {_damage(block)}"
                ) from None
            return key  # type: ignore[return-value]
    return None


def _load_key(
    source: KeySource, what: str, passphrase: bytes | None = None
) -> asymmetric_types.CertificateIssuerPrivateKeyTypes:
    if not isinstance(source, (str, os.PathLike, bytes, bytearray)):
        return source
    data, label = _read(source, what)
    key = _private_key_in(data, label, passphrase)
    if key is None:
        kinds = ", ".join(sorted({kind for kind, _ in _pem_blocks(data, label)}))
        raise ValueError(f"{label} holds no private key (it holds: {kinds})")
    return key


def _passphrase(passphrase: bytes | str | None) -> bytes | None:
    if passphrase is None or isinstance(passphrase, bytes):
        return passphrase
    if isinstance(passphrase, str):
        return passphrase.encode("utf-8")
    raise TypeError(f"passphrase must be bytes or str, not {type(passphrase).__name__}")


def read_passphrase(path: str | os.PathLike[str]) -> bytes:
    """The passphrase kept in the file at *path*, for an encrypted private key.

    The whole file is the passphrase, less one trailing newline (``\\n`` or
    ``\\r\\n``, as ``echo`` and editors leave it). The file should be
    readable by the service's user only; that is not checked here.

    :raises ValueError: the file is missing, unreadable, a folder, or empty
        (the message names the file, never its contents).
    """
    if os.path.isdir(path):
        raise ValueError(f"passphrase file {os.fspath(path)!r} is a folder, not a file")
    data, label = _read(path, "passphrase")
    if data.endswith(b"\r\n"):
        data = data[:-2]
    elif data.endswith(b"\n"):
        data = data[:-1]
    if not data:
        raise ValueError(f"{label} is empty")
    return data


def _public_der(key: Any) -> bytes:
    return key.public_bytes(  # type: ignore[no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@dataclass
class Identity:
    """A certificate chain with its private key, checked to belong together.

    :ivar source: where the leaf came from, for messages
        (``certificate file '/etc/tls/site.pem'``).
    :ivar file: the leaf's file, when it came from one (for figures and
        lists; *source* is the text for people).
    """

    leaf: x509.Certificate
    key: asymmetric_types.CertificateIssuerPrivateKeyTypes
    chain: list[x509.Certificate] = field(default_factory=list)
    source: str = "certificate"
    file: str | None = None

    @classmethod
    def load(
        cls,
        certificate: CertificateSource | Sequence[CertificateSource],
        private_key: KeySource | None = None,
        chain: CertificateSource | Iterable[CertificateSource] = (),
        *,
        passphrase: bytes | None = None,
    ) -> Identity:
        """Load and check a certificate, its key and its chain.

        :param passphrase: decrypts an encrypted private key.
        :raises ValueError: naming the file and the problem.
        """
        certificates = _load_certificates(certificate, "certificate")
        if private_key is None:
            key = None
            if isinstance(certificate, (str, os.PathLike, bytes, bytearray)):
                data, label = _read(certificate, "certificate")
                key = _private_key_in(data, label, passphrase)
            if key is None:
                raise ValueError(
                    f"certificate {_describe(certificate)} holds no private key "
                    "and no private key was given"
                )
        else:
            key = _load_key(private_key, "private key", passphrase)
        leaf = certificates[0]
        if _public_der(leaf.public_key()) != _public_der(key.public_key()):
            raise ValueError(
                f"private key {_describe(private_key if private_key is not None else certificate)} "
                f"does not match the certificate {_describe(certificate)} "
                f"(subject {leaf.subject.rfc4514_string()})"
            )
        extra = list(certificates[1:])
        if chain:
            extra.extend(_load_certificates(chain, "chain"))
        if isinstance(certificate, (str, os.PathLike)):
            file: str | None = os.fspath(certificate)
            source = f"certificate {_describe(certificate)}"
        else:
            file, source = None, "certificate (given in memory)"
        return cls(leaf, key, extra, source, file)

    def validity_warning(
        self, now: datetime.datetime, warn_within: datetime.timedelta
    ) -> str | None:
        """What is wrong with the leaf's validity period at *now*, or None.

        Expired, not valid yet, or expiring within *warn_within*; the text
        names the source, the subject and both dates.
        """
        start, end = self.leaf.not_valid_before_utc, self.leaf.not_valid_after_utc
        if now < start:
            problem = "is not valid yet"
        elif now > end:
            problem = f"has expired ({_days(now - end)} ago)"
        elif end - now <= warn_within:
            problem = f"expires in {_days(end - now)}"
        else:
            return None
        subject = self.leaf.subject.rfc4514_string() or "(empty subject)"
        return (
            f"{self.source} (subject {subject}) {problem}: valid from "
            f"{start:%Y-%m-%d %H:%M:%S} to {end:%Y-%m-%d %H:%M:%S} UTC"
        )

    def install(self, context: SSL.Context) -> None:
        context.use_certificate(self.leaf)
        context.use_privatekey(self.key)  # type: ignore[arg-type]
        for certificate in self.chain:
            context.add_extra_chain_cert(certificate)


def _days(delta: datetime.timedelta) -> str:
    if delta.days < 1:
        return "less than a day"
    return "1 day" if delta.days == 1 else f"{delta.days} days"


#: How long before a certificate expires :func:`validity_warnings` speaks up.
EXPIRY_WARNING = datetime.timedelta(days=14)


def validity_warnings(
    credentials: Credentials,
    *,
    now: datetime.datetime | None = None,
    warn_within: datetime.timedelta = EXPIRY_WARNING,
) -> list[str]:
    """Warnings about the validity periods of the certificates *credentials* present.

    One line per certificate (the default one, then each SNI host's) that
    has expired, is not valid yet, or expires within *warn_within* (14 days
    by default), naming its file, its subject and both dates. Credentials
    made from a Twisted object have none to check.

    :param now: the time to judge by (default: the current time).
    """
    moment = now if now is not None else datetime.datetime.now(datetime.timezone.utc)
    warnings = []
    for identity in credentials.identities:
        warning = identity.validity_warning(moment, warn_within)
        if warning is not None:
            warnings.append(warning)
    return warnings


class Verification:
    """Per-connection certificate judgement, reached from OpenSSL's callback.

    OpenSSL's verify callback is set once on the shared ``SSL.Context``; the
    per-connection facts (which name we expect, what went wrong) live here,
    attached to each ``SSL.Connection`` as its app data.
    """

    def __init__(self, target_name: str | None, manual: bool) -> None:
        self.target_name = target_name
        self.manual = manual
        self.failure: tuple[Status, str] | None = None
        #: Set when the server sent a CertificateRequest (client side).
        self.certificate_requested = False
        #: On the public path (see :mod:`txschannel._openssl`): set when a
        #: certificate crossed in this handshake, which a resumed one lacks.
        self.full_handshake = False
        #: The X509_V_ERR_* code to report when :meth:`judge` refuses a
        #: certificate that OpenSSL accepted (it decides the alert sent).
        self.reject_code = 0
        #: Per-connection ALPN choices on a server (None: the credentials').
        self.alpn: tuple[bytes, ...] | None = None
        #: With ``validation="cryptography"``: the verdict on the server's
        #: whole chain (the path built, or the refusal), reached once, at
        #: OpenSSL's first callback; OpenSSL's own verdicts are set aside.
        self.verdict: list[x509.Certificate] | Refusal | None = None
        #: The chain :attr:`verdict` is about, as the server sent it (DER).
        self.judged: tuple[bytes, ...] = ()
        #: Set when the fast path stopped OpenSSL's verification of an
        #: accepted chain (SSL_VERIFY_NONE on the connection).
        self.stopped = False

    def judge_chain(self, connection: SSL.Connection, trust: TrustStore) -> None:
        """Judge the server's chain as a whole, the first time OpenSSL asks
        about it.

        The first callback, whatever its depth, and not the one for depth
        0: once OpenSSL's own refusals are set aside, nothing promises that
        a callback for depth 0 still comes. Every later callback checks
        that the chain is still the one judged: a second chain on the same
        connection (a TLS 1.2 renegotiation, which the credentials refuse,
        but a context changed after they were built might not) is judged
        on its own, never accepted on the first one's verdict.
        """
        try:
            # The certificates' bytes as the server sent them: the verdicts
            # remembered are keyed by these.
            chain = connection.get_peer_cert_chain() or []
            encoded = tuple(crypto.dump_certificate(crypto.FILETYPE_ASN1, c) for c in chain)
            if self.verdict is not None and encoded == self.judged:
                return
            self.judged = encoded
            self.verdict = None
            self.failure = None
            self.reject_code = 0
            self.verdict = judge_peer_chain(encoded, self.target_name, trust)
        except Exception as e:  # nothing may escape into OpenSSL
            self.verdict = Refusal(
                Status.CERT_UNKNOWN,
                f"the server's chain could not be judged ({type(e).__name__}: {e})",
                _codes.ERR_CERT_REJECTED,
            )

    def judge(self, certificate: crypto.X509, errno: int, depth: int, ok: int) -> bool:
        if self.manual:
            return True
        if isinstance(self.verdict, Refusal):
            self.failure = (self.verdict.status, self.verdict.reason)
            self.reject_code = self.verdict.code
            return False
        if self.verdict is not None:
            return True
        if not ok:
            if self.failure is None and errno in _NAME_ERRORS and self.target_name is not None:
                # OpenSSL's own name check (set up by the client context so
                # that the peer gets a bad_certificate alert) failed; say
                # which names the certificate has, as service_identity does.
                problem = name_mismatch(certificate.to_cryptography(), self.target_name)
                self.failure = (
                    Status.WRONG_PRINCIPAL,
                    problem or f"certificate does not match {self.target_name!r}",
                )
            if self.failure is None:
                subject = certificate.to_cryptography().subject.rfc4514_string()
                self.failure = (
                    verify_error_status(errno),
                    f"{verify_error_text(errno)}: {subject or '(empty subject)'} at depth {depth}",
                )
            return False
        if depth == 0:
            problem = _ca_as_end_entity(certificate.to_cryptography())
            if problem is not None:
                # OpenSSL's purpose checks let this through; Mozilla's and
                # webpki's do not. OpenSSL's alert for this code is
                # bad_certificate.
                self.failure = (Status.CERT_UNKNOWN, problem)
                self.reject_code = _codes.ERR_INVALID_NON_CA
                return False
        if depth == 0 and self.target_name is not None:
            problem = name_mismatch(certificate.to_cryptography(), self.target_name)
            if problem is not None:
                self.failure = (Status.WRONG_PRINCIPAL, problem)
                self.reject_code = (
                    _codes.ERR_IP_ADDRESS_MISMATCH
                    if is_ip(self.target_name)
                    else _codes.ERR_HOSTNAME_MISMATCH
                )
                return False
        return True


def _ca_as_end_entity(certificate: x509.Certificate) -> str | None:
    """Why *certificate* may not be a peer's own certificate, or None.

    A CA certificate (basicConstraints cA=TRUE) is refused as the leaf unless
    it is self-issued: a self-signed certificate trusted directly (a test or
    a private service) keeps working.
    """
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    except x509.ExtensionNotFound:
        return None
    if not constraints.value.ca or certificate.subject == certificate.issuer:
        return None
    return (
        "a CA certificate (basicConstraints cA=TRUE) cannot be a peer's own certificate: "
        f"{certificate.subject.rfc4514_string() or '(empty subject)'}"
    )


def _certificate_requested(connection: SSL.Connection) -> None:
    """A server asked this client for a certificate (the fast path's cert_cb).

    Recorded so that a TLS 1.2 server's handshake_failure alert after it
    (TLS 1.2 has no certificate_required alert) can be reported as
    NO_CREDENTIALS rather than as a cipher mismatch.
    """
    verification = connection.get_app_data()
    if isinstance(verification, Verification):
        verification.certificate_requested = True


def _judge(
    connection: SSL.Connection, certificate: crypto.X509, errno: int, depth: int, ok: int
) -> bool:
    """The verdict on one certificate of the peer's chain, for either path."""
    verification = connection.get_app_data()
    if not isinstance(verification, Verification):
        return bool(ok)
    if not verification.manual:
        trust = connection.get_context().get_app_data()
        if isinstance(trust, TrustStore):
            verification.judge_chain(connection, trust)
    return verification.judge(certificate, errno, depth, ok)


def _verify(call: _openssl.VerifyCall) -> bool:
    """OpenSSL's verify callback, on either path (see txschannel._openssl).

    A refusal sets its own X509_V_ERR_* code where the path allows, so that
    the peer gets the alert OpenSSL maps it to (bad_certificate, ...)
    rather than internal_error.
    """
    verification = call.connection.get_app_data()
    if not isinstance(verification, Verification):
        return bool(call.ok)
    if _judge(call.connection, call.certificate, call.errno, call.depth, call.ok):
        call.set_error(_openssl.X509_V_OK)
        if not call.ok and _stop_openssl(call, verification):
            return False
        return True
    if verification.reject_code and (call.ok or verification.verdict is not None):
        call.set_error(verification.reject_code)
    if verification.stopped:
        # A chain after an accepted one, on a connection left at
        # SSL_VERIFY_NONE: the refusal must end the handshake again.
        call.resume_checking()
        verification.stopped = False
    return False


def _stop_openssl(call: _openssl.VerifyCall, verification: Verification) -> bool:
    """Stop OpenSSL's own verification of a chain already accepted whole.

    With ``validation="cryptography"`` OpenSSL's verdict is set aside, but
    left to run it would still build what path it can and check the leaf's
    signature again (a third signature check where Twisted's client makes
    two). Once the verdict accepts, the connection stops asking OpenSSL to
    refuse (SSL_VERIFY_NONE) and the callback ends its verification: the
    handshake goes on. (OpenSSL then reports X509_V_ERR_UNSPECIFIED as the
    connection's verify result, which txschannel reads only on a refusal.)
    The credentials refuse renegotiation; should a later chain still come
    (a context changed to allow it), it is judged on its own
    (:meth:`Verification.judge_chain`), and its refusal sets the
    connection back to SSL_VERIFY_PEER so that it ends the handshake.
    """
    if not isinstance(verification.verdict, list) or verification.manual:
        return False
    if not call.stop_checking():
        return False
    verification.stopped = True
    return True


# OpenSSL's names for the handshake states that only a full handshake goes
# through (a certificate written or read: a resumed handshake sends none),
# and the state of a client asked for its own certificate.
_FULL_HANDSHAKE_STATES = frozenset(
    {b"SSLv3/TLS write certificate", b"SSLv3/TLS read server certificate"}
)
_CERTIFICATE_REQUEST_STATE = b"SSLv3/TLS read server certificate request"


def _observe(connection: SSL.Connection, where: int, ret: int) -> None:
    """The info callback of the public path: what SSL_session_reused and the
    cert_cb tell the fast path, read from the handshake's states."""
    if not where & SSL.SSL_CB_LOOP:
        return
    verification = connection.get_app_data()
    if not isinstance(verification, Verification):
        return
    state = connection.get_state_string()
    if state in _FULL_HANDSHAKE_STATES:
        verification.full_handshake = True
    elif state == _CERTIFICATE_REQUEST_STATE:
        verification.certificate_requested = True
        verification.full_handshake = True


_verifier = _openssl.Verifier(_verify)
_certificate_requests = _openssl.CertificateRequests(_certificate_requested)


def _set_verify(context: SSL.Context, mode: int) -> None:
    """Judge peers with :class:`Verification` (the connection's app data)."""
    _verifier.install(context, mode)


class SessionCache:
    """The TLS sessions client credentials keep for resumption: the latest
    one per target name, the least recently stored dropped past *size*.

    A client context asks for the session to offer (:meth:`get`), hands
    back the one its handshake (or a later TLS 1.3 ticket) gave
    (:meth:`remember`), and drops it when the connection fails
    (:meth:`forget`), so that a failure is not resumed. A target of
    ``None`` (no name to key on) is never cached.
    """

    def __init__(self, size: int = _SESSION_CACHE_SIZE) -> None:
        self._size = size
        self._sessions: OrderedDict[str, SSL.Session] = OrderedDict()

    def get(self, target: str | None) -> SSL.Session | None:
        """The session to offer when connecting to *target*, if any."""
        if target is None:
            return None
        return self._sessions.get(target)

    def remember(self, target: str | None, session: SSL.Session | None) -> None:
        """Keep *session* as the one to offer *target* next."""
        if target is None or session is None:
            return
        self._sessions[target] = session
        self._sessions.move_to_end(target)
        while len(self._sessions) > self._size:
            self._sessions.popitem(last=False)

    def forget(self, target: str | None) -> None:
        """Offer *target* no session next time."""
        if target is not None:
            self._sessions.pop(target, None)

    def clear(self) -> None:
        """Forget every session."""
        self._sessions.clear()

    def __len__(self) -> int:
        return len(self._sessions)


class Credentials:
    """A TLS configuration, built once and shared by every context made from it.

    Use :meth:`client`, :meth:`server` or :meth:`from_twisted`; the
    constructor is not public.
    """

    def __init__(
        self,
        context: SSL.Context,
        *,
        is_client: bool,
        alpn: tuple[bytes, ...] = (),
        manual_validation: bool = False,
        sni: dict[str, SSL.Context] | None = None,
        hostname: str | None = None,
        identities: tuple[Identity, ...] = (),
        observes_handshakes: bool = False,
        validation: str | None = None,
        trust_store: TrustStore | None = None,
        creator: TwistedCreator | None = None,
    ) -> None:
        self.is_client = is_client
        self.alpn = alpn
        self.manual_validation = manual_validation
        #: Client credentials: who judges the server's chain, ``"cryptography"``
        #: or ``"openssl"`` (None for server credentials and Twisted's).
        self.validation = validation
        #: With ``validation="cryptography"``: the trust roots, read once.
        self.trust_store = trust_store
        #: For credentials made from a Twisted client creator: its host name.
        self.hostname = hostname
        #: For credentials made from a Twisted creator: the adapter that
        #: makes each connection (the creator checks the peer and sets SNI).
        self.creator = creator
        #: True on the public path (see txschannel._openssl) for credentials
        #: whose SSL.Context txschannel built: the context carries the info
        #: callback that watches each handshake (for session_reused and a
        #: certificate request), and a context checks the handshake's group
        #: against GROUPS once it is done (OpenSSL's default list could not
        #: be replaced).
        self.observes_handshakes = observes_handshakes
        #: The sessions a client context offers to resume (see SessionCache).
        self.sessions = SessionCache()
        self._context = context
        self._sni = sni or {}
        # The certificates these credentials present, each with its key: the
        # default first, then one per SNI name (see validity_warnings()).
        self._identities = identities

    @property
    def openssl_context(self) -> SSL.Context:
        """The shared ``OpenSSL.SSL.Context``; do not change it once in use."""
        return self._context

    @property
    def identities(self) -> tuple[Identity, ...]:
        """The certificates these credentials present, each with its key and source.

        Server credentials: the default certificate first, then one per
        host of an ``sni`` folder. Client credentials: the client
        certificate, if any. Credentials made from a Twisted object: none.
        """
        return self._identities

    @property
    def sni_contexts(self) -> Mapping[str, SSL.Context]:
        """The ``OpenSSL.SSL.Context`` of each server name of an ``sni`` folder (read-only)."""
        return MappingProxyType(self._sni)

    # -- constructors -----------------------------------------------------

    @classmethod
    def client(
        cls,
        *,
        trust_roots: str | os.PathLike[str] | bytes | Sequence[x509.Certificate] = "system",
        certificate: CertificateSource | None = None,
        private_key: KeySource | None = None,
        alpn: Sequence[str | bytes] = (),
        minimum_version: str = "TLSv1.2",
        maximum_version: str | None = None,
        manual_validation: bool = False,
        passphrase: bytes | str | None = None,
        validation: str | None = None,
        key_log_file: KeyLogSetting = None,
    ) -> Credentials:
        """Credentials for the connecting side (InitializeSecurityContext).

        :param trust_roots: ``"system"`` for the operating system's store
            (read once; see :meth:`txschannel.validation.TrustStore.system`),
            or a PEM file, a folder of PEM files, PEM bytes, or certificates.
        :param certificate: a client certificate (PEM may include its key).
        :param passphrase: decrypts the client certificate's key when it is
            encrypted (a ``str`` is taken as UTF-8); ignored for a key that
            is not. See :func:`read_passphrase` to read it from a file.
        :param manual_validation: SSPI's ISC_REQ_MANUAL_CRED_VALIDATION: the
            handshake does not judge the server's certificate or name; the
            application must, from ``attributes.peer_certificate`` (for
            instance with :func:`txschannel.validation.verify_server_chain`
            and ``credentials.trust_store``).
        :param validation: who judges the server's chain: ``"cryptography"``
            (the default where the installed cryptography has its X.509
            verifier, 44 and later) or ``"openssl"`` (OpenSSL's verification
            and service_identity, as before). See :mod:`txschannel.validation`.
        :param key_log_file: write every connection's TLS secrets to this
            file, for Wireshark; ``None`` (the default) takes the file from
            ``$SSLKEYLOGFILE`` when it is set, as curl and browsers do;
            ``False`` writes none. See :mod:`txschannel.keylog`.
        :raises ValueError: a file is missing or unreadable, not PEM, the key
            does not match the certificate, the key log cannot be opened, or
            an option is invalid.
        """
        validation = _validation(validation)
        context = _new_context(minimum_version, maximum_version)
        trust: TrustStore | None = None
        if validation == "cryptography":
            # OpenSSL's store stays empty: its verdict is set aside anyway,
            # and an empty store spares it building a path of its own.
            if trust_roots == "system":
                trust = TrustStore.system()
            else:
                trust = TrustStore(
                    _load_certificates(trust_roots, "trust roots"),
                    source=f"trust roots {_describe(trust_roots)}",
                )
            if not manual_validation:
                context.set_app_data(trust)
        elif trust_roots == "system":
            context.set_default_verify_paths()
        else:
            store = context.get_cert_store()
            assert store is not None
            for root in _load_certificates(trust_roots, "trust roots"):
                store.add_cert(crypto.X509.from_cryptography(root))
        identities: tuple[Identity, ...] = ()
        if certificate is not None:
            identity = Identity.load(
                certificate, private_key, passphrase=_passphrase(passphrase)
            )
            identity.install(context)
            identities = (identity,)
        elif private_key is not None:
            raise ValueError("private_key was given without a certificate")
        protocols = _alpn(alpn)
        if protocols:
            context.set_alpn_protos(list(protocols))
        _set_verify(context, SSL.VERIFY_PEER)
        keylog.install(context, key_log_file)
        # (On the public path the info callback of _observe sees the request.)
        _certificate_requests.install(context)
        return cls(
            context,
            is_client=True,
            alpn=protocols,
            manual_validation=manual_validation,
            identities=identities,
            observes_handshakes=_openssl.OBSERVES_HANDSHAKES,
            validation=validation,
            trust_store=trust,
        )

    @classmethod
    def server(
        cls,
        *,
        certificate: CertificateSource | Sequence[CertificateSource],
        private_key: KeySource | None = None,
        chain: CertificateSource | Iterable[CertificateSource] = (),
        client_ca: CertificateSource | Iterable[CertificateSource] | None = None,
        require_client_certificate: bool = False,
        alpn: Sequence[str | bytes] = (),
        minimum_version: str = "TLSv1.2",
        maximum_version: str | None = None,
        sni: str | os.PathLike[str] | dict[str, CertificateSource] | None = None,
        passphrase: bytes | str | None = None,
        key_log_file: KeyLogSetting = None,
    ) -> Credentials:
        """Credentials for the accepting side (AcceptSecurityContext).

        :param certificate: the server certificate; a PEM file may hold the
            key and the chain too.
        :param client_ca: CAs whose client certificates are accepted; with
            it, clients are asked for a certificate.
        :param require_client_certificate: refuse clients without one.
        :param sni: a folder of ``<hostname>.pem`` files (key and chain
            inside), or a mapping of host name to such a file, chosen by the
            client's server name; *certificate* serves every other name (see
            :func:`sni_default` for a folder's own default file).
        :param passphrase: decrypts every encrypted private key loaded here
            (the certificate's and the SNI files'; a ``str`` is taken as
            UTF-8); keys that are not encrypted do not need it. See
            :func:`read_passphrase` to read it from a file.
        :param key_log_file: write every connection's TLS secrets to this
            file, for Wireshark; ``None`` (the default) takes the file from
            ``$SSLKEYLOGFILE`` when it is set; ``False`` writes none. See
            :mod:`txschannel.keylog`.
        :raises ValueError: a file is missing or unreadable, not PEM, a key
            does not match its certificate, is encrypted without a passphrase
            or with a wrong one, the key log cannot be opened, or an option
            is invalid.
        """
        if require_client_certificate and client_ca is None:
            raise ValueError("require_client_certificate needs client_ca (which CAs to trust)")
        secret = _passphrase(passphrase)
        identity = Identity.load(certificate, private_key, chain, passphrase=secret)
        roots = None if client_ca is None else _load_certificates(client_ca, "client CA")
        protocols = _alpn(alpn)

        def build(identity: Identity) -> SSL.Context:
            context = _new_context(minimum_version, maximum_version)
            identity.install(context)
            context.check_privatekey()
            context.set_session_id(b"txschannel")
            if roots is not None:
                store = context.get_cert_store()
                assert store is not None
                for root in roots:
                    store.add_cert(crypto.X509.from_cryptography(root))
                context.set_client_ca_list(
                    [crypto.X509.from_cryptography(r).get_subject() for r in roots]
                )
                mode = SSL.VERIFY_PEER
                if require_client_certificate:
                    mode |= SSL.VERIFY_FAIL_IF_NO_PEER_CERT
                _set_verify(context, mode)
            context.set_alpn_select_callback(_select_alpn(protocols))
            # On every SNI host's context too: OpenSSL takes the callback
            # from the context the connection has switched to.
            keylog.install(context, key_log_file)
            return context

        context = build(identity)
        hosts = {
            name: Identity.load(path, passphrase=secret)
            for name, path in _sni_sources(sni).items()
        }
        named = {name: build(host) for name, host in hosts.items()}
        # Always answer the server_name extension: OpenSSL keeps the name in
        # the session only when a callback acknowledged it, and without it a
        # resumed TLS 1.2 connection would report no server name.
        context.set_tlsext_servername_callback(_switch_context(named))
        return cls(
            context,
            is_client=False,
            alpn=protocols,
            sni=named,
            identities=(identity, *hosts.values()),
            observes_handshakes=_openssl.OBSERVES_HANDSHAKES,
        )

    @classmethod
    def from_twisted(cls, creator: object, *, is_client: bool | None = None) -> Credentials:
        """Credentials from a Twisted TLS configuration object.

        Accepts ``optionsForClientTLS(...)`` (an
        ``IOpenSSLClientConnectionCreator``), ``CertificateOptions`` or any
        ``IOpenSSLServerConnectionCreator`` / object with ``getContext()``.
        The ``SSL.Context`` it builds is used as it is: its verification is
        Twisted's, not txschannel's (so the credentials have
        ``manual_validation`` set: txschannel does not judge on top).

        :param is_client: which side the credentials are for. ``None``
            guesses from the interfaces *creator* provides; for one that
            provides both (``CertificateOptions``), server when it has a
            private key, else client; for a legacy ``getContext()``
            factory, server.
        :raises TypeError: *creator* is none of those, or cannot serve the
            side *is_client* asks for.
        """
        if isinstance(creator, Credentials):
            if is_client is not None and creator.is_client != is_client:
                role = "client" if creator.is_client else "server"
                raise TypeError(f"{creator!r} are {role} credentials")
            return creator
        adapted = adapt(creator, is_client)
        if isinstance(adapted, SSL.Context):
            # The context's own verify settings judge the peer, as in Twisted.
            return cls(adapted, is_client=bool(is_client), manual_validation=True)
        return cls(
            adapted.context,
            is_client=adapted.is_client,
            manual_validation=True,
            hostname=adapted.hostname,
            creator=adapted,
        )

    def __repr__(self) -> str:
        role = "client" if self.is_client else "server"
        return f"<Credentials {role} alpn={[p.decode() for p in self.alpn]}>"


def _validation(value: str | None) -> str:
    if value is None:
        return DEFAULT_VALIDATION
    if value not in VALIDATIONS:
        raise ValueError(f"validation={value!r}: use one of {', '.join(VALIDATIONS)}")
    if value == "cryptography" and not cryptography_verifier_available():
        import cryptography

        raise ValueError(
            "validation='cryptography' needs cryptography 44 or later (its X.509 verifier "
            f"with extension policies); {cryptography.__version__} is installed: "
            "use validation='openssl'"
        )
    return value


def _new_context(minimum_version: str, maximum_version: str | None) -> SSL.Context:
    minimum = _version(minimum_version, "minimum_version")
    maximum = _version(maximum_version, "maximum_version")
    if minimum is not None and maximum is not None and maximum < minimum:
        raise ValueError(
            f"maximum_version={maximum_version!r} is below minimum_version={minimum_version!r}"
        )
    context = SSL.Context(SSL.TLS_METHOD)
    context.set_min_proto_version(minimum or SSL.TLS1_2_VERSION)
    if maximum is not None:
        context.set_max_proto_version(maximum)
    context.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION)
    context.set_cipher_list(_TLS12_CIPHERS)
    context.set_tls13_ciphersuites(_TLS13_SUITES)
    _set_groups(context)
    context.set_mode(SSL.MODE_RELEASE_BUFFERS)
    _openssl.observe_handshakes(context, _observe)
    return context


#: Key-exchange groups, best first (Mozilla's "intermediate" profile plus the
#: hybrid post-quantum group where the linked OpenSSL has it).
GROUPS = (b"X25519MLKEM768", b"X25519", b"P-256", b"P-384")


def _set_groups(context: SSL.Context) -> None:
    # pyOpenSSL has no wrapper for SSL_CTX_set1_groups_list. On the public
    # path OpenSSL's default list stays, and each context checks the group
    # once the handshake is done (see group_allowed).
    done = _openssl.set_groups(context, b":".join(GROUPS))
    if done is None or done:
        return
    if not _openssl.set_groups(context, b":".join(GROUPS[1:])):
        raise RuntimeError("the linked OpenSSL knows none of X25519, P-256, P-384")


# OpenSSL's names for GROUPS (SSL_group_to_name), lower case.
_GROUP_NAMES = frozenset(
    {"x25519mlkem768", "x25519", "p-256", "secp256r1", "prime256v1", "p-384", "secp384r1"}
)


def group_allowed(name: str | None) -> bool:
    """Whether a negotiated key-exchange group (``get_group_name()``) is
    one of :data:`GROUPS`. ``None`` (a resumed TLS 1.2 session: no key
    exchange) is allowed."""
    return name is None or name.lower() in _GROUP_NAMES


def _alpn(protocols: Sequence[str | bytes]) -> tuple[bytes, ...]:
    if isinstance(protocols, (str, bytes)):
        raise TypeError("alpn must be a sequence of protocol names, e.g. ['h2', 'http/1.1']")
    result = []
    for protocol in protocols:
        name = protocol.encode("ascii") if isinstance(protocol, str) else bytes(protocol)
        if not 0 < len(name) < 256:
            raise ValueError(f"ALPN protocol name {protocol!r} must be 1 to 255 bytes")
        result.append(name)
    return tuple(result)


class NoCommonProtocol(Exception):
    """Raised inside the ALPN callback when no offered protocol is ours."""

    def __init__(self, offered: list[bytes], ours: tuple[bytes, ...]) -> None:
        super().__init__(offered, ours)
        self.offered = offered
        self.ours = ours

    def __str__(self) -> str:
        def names(protocols: Iterable[bytes]) -> str:
            return ", ".join(p.decode("ascii", "replace") for p in protocols) or "(none)"

        return (
            f"no common application protocol (ALPN): the client offered {names(self.offered)}, "
            f"the server accepts {names(self.ours)}"
        )


def _select_alpn(
    configured: tuple[bytes, ...],
) -> Callable[[SSL.Connection, list[bytes]], Any]:
    def select(connection: SSL.Connection, offered: list[bytes]) -> Any:
        verification = connection.get_app_data()
        ours = configured
        if isinstance(verification, Verification) and verification.alpn is not None:
            ours = verification.alpn
        if not ours:
            # We speak no ALPN: ignore the extension, as RFC 7301 allows.
            # (An empty selection instead would be a malformed reply.)
            return SSL.NO_OVERLAPPING_PROTOCOLS
        for protocol in ours:
            if protocol in offered:
                return protocol
        # RFC 7301 section 3.2: refuse with no_application_protocol. pyOpenSSL
        # turns an exception here into SSL_TLSEXT_ERR_ALERT_FATAL and re-raises
        # it from do_handshake(), where the context maps it.
        raise NoCommonProtocol(offered, ours)

    return select


def _sni_sources(
    sni: str | os.PathLike[str] | dict[str, CertificateSource] | None,
) -> dict[str, CertificateSource]:
    if sni is None:
        return {}
    if isinstance(sni, dict):
        named: dict[str, CertificateSource] = {}
        for name, source in sni.items():
            key = _server_name_key(name)
            if "" in key.split("."):
                raise ValueError(
                    f"sni name {name!r} has an empty label (a leading dot, two dots in a "
                    "row, or two at the end)"
                )
            named[key] = source
        return named
    folder = Path(sni)
    if not folder.is_dir():
        raise ValueError(f"sni folder {str(folder)!r} does not exist or is not a folder")
    found: dict[str, CertificateSource] = dict(sni_files(folder))
    if not found:
        raise ValueError(f"sni folder {str(folder)!r} holds no <hostname>.pem files")
    for name, path in found.items():
        # The file name is the host name as written, never absolute:
        # example.com..pem would stand for "example.com.", which no client
        # reaches (the callback drops one trailing dot), so say so.
        if "" in name.split("."):
            raise ValueError(
                f"sni folder {str(folder)!r}: {Path(str(path)).name!r} names no host "
                f"({name!r} has an empty label: a leading dot, two dots in a row, or a "
                "dot at the end)"
            )
    return found


def _server_name_key(name: str) -> str:
    """Lower case, and without the one trailing dot of an absolute name
    (``example.com.``); a second dot stays, so ``example.com..`` is not
    example.com."""
    name = name.lower()
    return name[:-1] if name.endswith(".") else name


def sni_files(folder: str | os.PathLike[str]) -> dict[str, str]:
    """The certificate file of each host name in an ``sni`` folder.

    Each ``<hostname>.pem`` file serves *hostname* (lower case), in file
    name order; a folder that is missing or empty gives none.
    """
    return {
        path.stem.lower(): str(path)
        for path in sorted(Path(folder).glob("*.pem")) if path.is_file()
    }


def sni_default(folder: str | os.PathLike[str]) -> str | None:
    """The file in an ``sni`` folder that serves clients asking for no known name.

    ``DEFAULT.pem`` (txsni's spelling) or ``default.pem``, in any case;
    ``None`` when the folder holds neither.

    :raises ValueError: the folder does not exist, or holds more than one
        such file (which one was meant?).
    """
    path = Path(folder)
    if not path.is_dir():
        raise ValueError(f"sni folder {str(path)!r} does not exist or is not a folder")
    found = [
        entry for entry in sorted(path.iterdir())
        if entry.name.lower() == "default.pem" and entry.is_file()
    ]
    if len(found) > 1:
        raise ValueError(
            f"sni folder {str(path)!r} holds {' and '.join(e.name for e in found)}: "
            "keep one of them as the default"
        )
    return str(found[0]) if found else None


def _switch_context(named: dict[str, SSL.Context]) -> Callable[[SSL.Connection], None]:
    if not named:
        # No SNI names: the callback is there only to acknowledge the
        # extension (see Credentials.server), which returning does; reading
        # the name would cost four Python calls per handshake for nothing.
        return _acknowledge_server_name

    def switch(connection: SSL.Connection) -> None:
        name = connection.get_servername()
        if name is None:
            return
        context = named.get(_server_name_key(name.decode("ascii", "replace")))
        if context is not None:
            connection.set_context(context)

    return switch


def _acknowledge_server_name(connection: SSL.Connection) -> None:
    """The server-name callback of credentials without SNI names: pyOpenSSL
    acknowledges the extension when it returns."""
