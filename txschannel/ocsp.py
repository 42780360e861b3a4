"""OCSP stapling for ``schannel:`` server endpoints: ``ocspResponse=FILE`` and ``ocsp=auto``.

A :class:`Stapler` holds the current OCSP response (DER) for one server
endpoint's certificate and hands it to every client that asks for it
(the ``status_request`` extension), through pyOpenSSL's
``set_ocsp_server_callback``. The two endpoint-string options make one
(:func:`~txschannel.endpoints.parse_server`), so every Twisted program
that reads endpoint strings staples (``twist web --listen
schannel:tcp:443:certificate=site.pem:ocsp=auto``), ``twist schannel``
included; the :class:`~txschannel.endpoints.SchannelServerEndpoint` starts
it when a port starts listening, reloads it with the certificates and stops
it when its last port stops:

- ``ocspResponse=FILE``: the response is read from *FILE* when the string
  is parsed and on every reload, with the certificates. A file that does
  not hold a successful response for the served certificate is an error
  when parsing and, at a reload, is logged while the previous response
  stays in use.
- ``ocsp=auto``: the response is fetched from the certificate's OCSP
  responder (its Authority Information Access URL) with Twisted's
  ``Agent``, when the endpoint starts listening, on every reload while it
  listens, and again halfway between the response's thisUpdate and
  nextUpdate (hourly when it has none). When the responder fails, the last
  good response is kept (until its nextUpdate) and the fetch retried,
  sooner at first, then less often. Each fetch is logged.

A response is stapled only while it is current: one past its nextUpdate
is not sent (clients would refuse it), nor is one for another certificate.

With an ``sni`` folder, ``ocsp=auto`` makes a :class:`FolderStapler`: a
:class:`Stapler` for each certificate the endpoint serves, installed on the
OpenSSL context that serves it. (``ocspResponse=`` names one certificate's
response, so the parser refuses it with ``sni``.)
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import (
    AuthorityInformationAccessOID,
    ExtendedKeyUsageOID,
    SignatureAlgorithmOID,
)
from OpenSSL import SSL
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IResolutionReceiver,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from txschannel.credentials import Credentials, sni_files
from txschannel.peertext import PeerText, printable

__all__ = [
    "FolderStapler",
    "OCSPError",
    "Stapler",
    "certificate_and_issuer",
    "refused_address",
    "responder_url",
    "verify",
]

_log = Logger(namespace="txschannel")

#: The most bytes of a responder's answer that are read.
MAX_RESPONSE = 64 * 1024
#: Seconds a whole fetch may take (resolving, connecting, the answer's last
#: byte): then its connection is aborted.
FETCH_TIMEOUT = 15.0
#: How far a response's thisUpdate may be ahead of our clock (the
#: responder's clock may run a little ahead of ours).
CLOCK_SKEW = datetime.timedelta(minutes=5)
#: Seconds between refreshes of a response that gives no nextUpdate.
_NO_NEXT_UPDATE = 3600.0
#: Retry delays after a failed fetch: the first, and the most.
_RETRY_FIRST = 30.0
_RETRY_MOST = 3600.0


class OCSPError(ValueError):
    """An OCSP response or setting that cannot be used (the message says why)."""


def certificate_and_issuer(
    certificate_file: str, chain_file: str | None = None
) -> tuple[x509.Certificate, x509.Certificate | None]:
    """The leaf of *certificate_file* (the first certificate in it) and its issuer.

    The issuer is looked for among the other certificates of the file and
    of *chain_file*.

    :raises OCSPError: a file cannot be read or holds no certificate.
    """
    found: list[x509.Certificate] = []
    for name in (certificate_file, chain_file):
        if name is None:
            continue
        try:
            found += x509.load_pem_x509_certificates(Path(name).read_bytes())
        except (OSError, ValueError) as e:
            raise OCSPError(f"cannot read certificates from {name!r}: {e}") from None
    if not found:
        raise OCSPError(f"no certificate in {certificate_file!r}")
    leaf = found[0]
    issuer = next((c for c in found[1:] if c.subject == leaf.issuer), None)
    return leaf, issuer


def responder_url(certificate: x509.Certificate) -> str | None:
    """The OCSP responder URL of *certificate*'s Authority Information Access, if any."""
    try:
        access = certificate.extensions.get_extension_for_class(
            x509.AuthorityInformationAccess
        ).value
    except x509.ExtensionNotFound:
        return None
    for description in access:
        if description.access_method == AuthorityInformationAccessOID.OCSP and isinstance(
            description.access_location, x509.UniformResourceIdentifier
        ):
            return str(description.access_location.value)
    return None


def _responder(url: str) -> tuple[str, int]:
    """The host and port of an ``http://`` responder *url*.

    :raises OCSPError: another scheme (``https://`` too: the response is
        signed, what protects it is its verification, and a TLS connection
        would need a trust store of its own), or no host.
    """
    if not url.isascii() or not url.isprintable() or " " in url:
        raise OCSPError(f"responder URL {printable(url)!r} is not a plain ASCII URL")
    parts = urlsplit(url)
    if parts.scheme.lower() != "http":
        raise OCSPError(
            f"responder URL {url!r}: only http:// responders are fetched (an OCSP "
            "response is signed and verified, so it needs no TLS)"
        )
    try:
        port = parts.port or 80
    except ValueError:
        raise OCSPError(f"responder URL {url!r} has no valid port") from None
    if not parts.hostname:
        raise OCSPError(f"responder URL {url!r} names no host")
    return parts.hostname, port


def refused_address(address: str) -> str | None:
    """Why an OCSP fetch must not connect to IP *address*, or ``None`` when it may.

    Refused are the addresses that reach the machine itself or its own
    networks rather than the public internet: unspecified, loopback,
    link-local, multicast, private (and every other address that is not
    global, such as 100.64.0.0/10) and reserved ones, also written as IPv6
    (``::ffff:127.0.0.1``, 6to4, NAT64, IPv4-compatible).
    """
    ip = ipaddress.ip_address(address.partition("%")[0])
    if isinstance(ip, ipaddress.IPv6Address):
        last32 = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        embedded: ipaddress.IPv4Address | None = None
        if ip.ipv4_mapped is not None:
            embedded = ip.ipv4_mapped
        elif ip.sixtofour is not None:
            embedded = ip.sixtofour
        elif ip in ipaddress.IPv6Network("64:ff9b::/96"):
            embedded = last32
        elif ip in ipaddress.IPv6Network("::/96") and int(ip) > 1:
            embedded = last32  # IPv4-compatible (deprecated, still routed by some)
        if embedded is not None:
            inner = refused_address(str(embedded))
            if inner is not None:
                return f"{inner} (written as IPv6)"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if ip.is_private or not ip.is_global:
        return "private"
    if ip.is_reserved:
        return "reserved"
    return None


def _article(word: str) -> str:
    """The indefinite article before *word* (a kind of address from refused_address)."""
    # Each kind is a plain English word: the first letter decides.
    return "an" if word.startswith(("a", "e", "i", "o", "u")) else "a"


def _key_hash(certificate: x509.Certificate) -> bytes:
    # SHA-1 of the subjectPublicKey BIT STRING: what a responder ID "by key"
    # holds, and what RFC 5280's key identifier (method 1) hashes too.
    return x509.SubjectKeyIdentifier.from_public_key(certificate.public_key()).digest


def _subject(certificate: x509.Certificate) -> str:
    return printable(certificate.subject.rfc4514_string())


def _verify_signature(response: ocsp.OCSPResponse, signer: x509.Certificate) -> None:
    """Raise InvalidSignature (or OCSPError) unless *signer*'s key signed *response*."""
    key = signer.public_key()
    algorithm = response.signature_hash_algorithm
    if response.signature_algorithm_oid == SignatureAlgorithmOID.RSASSA_PSS:
        raise OCSPError("its signature is RSA-PSS, which is not supported")
    if isinstance(key, rsa.RSAPublicKey) and algorithm is not None:
        key.verify(response.signature, response.tbs_response_bytes, padding.PKCS1v15(),
                   algorithm)
    elif isinstance(key, ec.EllipticCurvePublicKey) and algorithm is not None:
        key.verify(response.signature, response.tbs_response_bytes, ec.ECDSA(algorithm))
    elif isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        key.verify(response.signature, response.tbs_response_bytes)
    else:
        raise OCSPError(
            f"its signature algorithm ({response.signature_algorithm_oid.dotted_string}) "
            f"does not fit the signer's {type(key).__name__}"
        )


def _signer(
    response: ocsp.OCSPResponse, issuer: x509.Certificate, now: datetime.datetime
) -> x509.Certificate:
    """The certificate that may sign *response*: the issuer, or its delegated responder.

    :raises OCSPError: the responder ID names neither the issuer nor a
        certificate the response carries, or that certificate is not a
        delegated responder of the issuer valid now.
    """
    name, key_hash = response.responder_name, response.responder_key_hash

    def named(candidate: x509.Certificate) -> bool:
        if name is not None:
            return candidate.subject == name
        return _key_hash(candidate) == key_hash

    if named(issuer):
        return issuer
    signer = next((c for c in response.certificates if named(c)), None)
    if signer is None:
        said = (printable(name.rfc4514_string()) if name is not None
                else f"key hash {(key_hash or b'').hex()}")
        raise OCSPError(
            f"its responder ({said}) is neither the certificate's issuer nor a "
            "certificate the response carries"
        )
    # A delegated responder (RFC 6960 4.2.2.2): issued by the same CA, for OCSP signing.
    try:
        usages = signer.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        usages = x509.ExtendedKeyUsage([])
    if ExtendedKeyUsageOID.OCSP_SIGNING not in usages:
        raise OCSPError(
            f"its delegated responder ({_subject(signer)}) lacks the OCSP-signing "
            "extended key usage"
        )
    try:
        signer.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        raise OCSPError(
            f"its delegated responder ({_subject(signer)}) is not issued by the "
            f"certificate's issuer ({_subject(issuer)})"
        ) from None
    if not signer.not_valid_before_utc <= now <= signer.not_valid_after_utc:
        raise OCSPError(
            f"its delegated responder's certificate ({_subject(signer)}) is not valid now "
            f"(valid {signer.not_valid_before_utc:%Y-%m-%d %H:%M:%S} to "
            f"{signer.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC)"
        )
    return signer


def _why_not_der(der: bytes) -> str:
    """What *der* is instead, in words (cryptography's parser names Rust types)."""
    if not der:
        return "it is empty"
    if der.lstrip().startswith(b"-----BEGIN"):
        return "it is PEM text; give the DER form, as 'openssl ocsp -respout' writes it"
    if der[0] != 0x30:
        return f"it does not start as DER does (first byte 0x{der[0]:02x}, not 0x30)"
    return "its DER structure is not an OCSPResponse"


def _parse(der: bytes, source: str) -> ocsp.OCSPResponse:
    try:
        return ocsp.load_der_ocsp_response(der)
    except ValueError:
        raise OCSPError(f"{source} is not a DER OCSP response ({_why_not_der(der)})") from None


def verify(
    der: bytes,
    certificate: x509.Certificate,
    issuer: x509.Certificate,
    now: datetime.datetime | None = None,
) -> ocsp.OCSPSingleResponse:
    """The status in *der* about *certificate*, once the response is verified.

    As nginx's ``ssl_stapling_verify``: the response must be successful;
    hold a status for *certificate*'s serial number whose issuer name and
    key hashes (in the response's hash algorithm) are *issuer*'s; be
    signed by *issuer*, or by a delegated responder certificate it carries
    (issued by *issuer*, with the OCSP-signing extended key usage, valid
    *now*) that its responder ID names; have a thisUpdate not after *now*
    (give or take :data:`CLOCK_SKEW`) and a nextUpdate, if any, after *now*;
    and say ``good`` or ``revoked``, not ``unknown``.

    :param now: the time to check against (default: the current time).
    :raises OCSPError: saying what does not hold (the message starts with
        "it", the response, or "the responder"; the caller names the source).
    """
    now = now or datetime.datetime.now(datetime.timezone.utc)
    try:
        response = ocsp.load_der_ocsp_response(der)
    except ValueError:
        raise OCSPError(f"it is not a DER OCSP response ({_why_not_der(der)})") from None
    if response.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise OCSPError(f"the responder says {response.response_status.name}, not SUCCESSFUL")
    singles = list(response.responses)
    single = next((s for s in singles if s.serial_number == certificate.serial_number), None)
    if single is None:
        about = ", ".join(f"{s.serial_number:x}" for s in singles) or "no certificate"
        raise OCSPError(
            f"it is about serial number {about}, not the certificate's "
            f"({certificate.serial_number:x})"
        )
    try:
        expected = ocsp.OCSPRequestBuilder().add_certificate(
            certificate, issuer, single.hash_algorithm
        ).build()
    except (ValueError, UnsupportedAlgorithm) as e:
        raise OCSPError(f"its certificate ID uses an unsupported hash ({e})") from None
    if single.issuer_name_hash != expected.issuer_name_hash:
        raise OCSPError(f"its issuer name hash is not that of {_subject(issuer)}")
    if single.issuer_key_hash != expected.issuer_key_hash:
        raise OCSPError(f"its issuer key hash is not that of the key of {_subject(issuer)}")
    signer = _signer(response, issuer, now)
    try:
        _verify_signature(response, signer)
    except (InvalidSignature, UnsupportedAlgorithm, ValueError):
        who = "the issuer" if signer is issuer else "the delegated responder"
        raise OCSPError(
            f"its signature does not verify with the key of {who} ({_subject(signer)})"
        ) from None
    if single.this_update_utc > now + CLOCK_SKEW:
        raise OCSPError(
            f"its thisUpdate ({single.this_update_utc:%Y-%m-%d %H:%M:%S} UTC) is in the future"
        )
    next_update = single.next_update_utc
    if next_update is not None and next_update <= now:
        raise OCSPError(
            f"it has expired (nextUpdate {next_update:%Y-%m-%d %H:%M:%S} UTC is past)"
        )
    if single.certificate_status == ocsp.OCSPCertStatus.UNKNOWN:
        raise OCSPError("the responder does not know the certificate (status unknown)")
    return single


def _until(single: ocsp.OCSPSingleResponse) -> float | None:
    after = single.next_update_utc
    return after.timestamp() if after is not None else None


def _describe(single: ocsp.OCSPSingleResponse) -> str:
    next_update = single.next_update_utc
    return (
        f"{single.certificate_status.name.lower()}, this update "
        f"{single.this_update_utc:%Y-%m-%d %H:%M:%S}, next update "
        + (f"{next_update:%Y-%m-%d %H:%M:%S} UTC" if next_update else "none")
    )


def _failure_text(failure: Failure) -> str:
    # twisted.web wraps what went wrong (ResponseNeverReceived(reasons=[...])): say the cause.
    for _ in range(4):
        reasons = getattr(failure.value, "reasons", None)
        if not reasons:
            break
        failure = reasons[0]
    return failure.getErrorMessage() or type(failure.value).__name__


@implementer(IResolutionReceiver)
class _Addresses:
    """Collects what the reactor's resolver says a host name is."""

    def __init__(self) -> None:
        self.done: Deferred[list[str]] = Deferred()
        self.hosts: list[str] = []

    def resolutionBegan(self, resolution: object) -> None:
        pass

    def addressResolved(self, address: IAddress) -> None:
        host = getattr(address, "host", None)
        if isinstance(host, str):
            self.hosts.append(host)

    def resolutionComplete(self) -> None:
        if not self.done.called:
            self.done.callback(self.hosts)


@implementer(IStreamClientEndpoint, IAgentEndpointFactory)
class _Pinned:
    """Connects to the addresses that were checked, in turn, and nowhere else.

    The fetch resolves the responder's name once, checks every address
    (:func:`refused_address`) and connects only to those: a second
    resolution at connect time could answer otherwise (DNS rebinding).
    """

    def __init__(self, reactor: Any, hosts: list[str], port: int,
                 connected: Callable[[Any], None]) -> None:
        self.reactor = reactor
        self.hosts = hosts
        self.port = port
        self.connected = connected

    def connect(self, factory: Any) -> Deferred[Any]:
        remaining = list(self.hosts)

        def attempt(failure: Failure | None = None) -> Deferred[Any] | Failure:
            if not remaining:
                assert failure is not None
                return failure
            host = remaining.pop(0)
            kind = TCP6ClientEndpoint if ":" in host else TCP4ClientEndpoint
            connecting: Deferred[Any] = kind(self.reactor, host, self.port).connect(factory)
            return connecting.addErrback(attempt)

        def record(protocol: Any) -> Any:
            self.connected(protocol.transport)
            return protocol

        first = attempt()
        assert isinstance(first, Deferred)
        return first.addCallback(record)

    def endpointForURI(self, uri: object) -> _Pinned:
        # (IAgentEndpointFactory: the Agent asks; the URI is the one we gave.)
        return self



class _Body(Protocol):
    """Collects a response body of at most MAX_RESPONSE bytes."""

    def __init__(self, done: Deferred[bytes]) -> None:
        self.done = done
        self.parts: list[bytes] = []
        self.size = 0

    def dataReceived(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > MAX_RESPONSE:
            if not self.done.called:
                self.done.errback(OCSPError(f"the answer is over {MAX_RESPONSE} bytes"))
            assert self.transport is not None
            self.transport.stopProducing()  # type: ignore[attr-defined]
            return
        self.parts.append(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        from twisted.web.client import ResponseDone
        from twisted.web.http import PotentialDataLoss

        if self.done.called:
            return
        # Done: the whole body (PotentialDataLoss: one that ends with the
        # connection, as HTTP/1.0 allows). Anything else cut it short.
        if reason is None or reason.check(ResponseDone, PotentialDataLoss):  # type: ignore[no-untyped-call]
            self.done.callback(b"".join(self.parts))
        else:
            self.done.errback(OCSPError(f"the answer was cut short ({_failure_text(reason)})"))


class Stapler:
    """Staples an OCSP response for one server endpoint's certificate.

    :meth:`install` it on the credentials before their first handshake,
    :meth:`start` it when serving begins, :meth:`reload` it with the
    certificates and :meth:`stop` it when serving ends;
    :class:`~txschannel.endpoints.SchannelServerEndpoint` does all four for
    the stapler it is given.

    :param description: the endpoint, for log lines.
    :param certificate_file: the served certificate (the first in the file).
    :param chain_file: where else its issuer may be (``chain=``).
    :param response_file: ``ocspResponse=``: read the response from here.
    :param auto: ``ocsp=auto``: fetch it from the certificate's responder.
    :param allow_private: ``ocspAllowPrivate=yes``: let *auto* fetch from a
        responder on a loopback, private, link-local... address (a test
        responder, an internal PKI); without it such a responder is refused
        (:func:`refused_address`), since a certificate's responder URL,
        which whoever made the certificate chose, would otherwise aim this
        server's requests at services only it can reach.
    :param fetch_timeout: the seconds a whole fetch may take (default:
        :data:`FETCH_TIMEOUT` when the fetch starts).
    :param reactor: for the fetches (``Agent``) and the refresh timer.
    :raises OCSPError: at construction: the response file does not verify
        (:func:`verify`) for the certificate, the certificate's issuer is
        not found, or with *auto* the certificate names no ``http://``
        responder.
    """

    def __init__(
        self,
        description: str,
        certificate_file: str,
        *,
        chain_file: str | None = None,
        response_file: str | None = None,
        auto: bool = False,
        allow_private: bool = False,
        fetch_timeout: float | None = None,
        reactor: Any,
    ) -> None:
        self.description = description
        self.certificate_file = certificate_file
        self.chain_file = chain_file
        self.response_file = response_file
        self.auto = auto
        self.allow_private = allow_private
        self.fetch_timeout = fetch_timeout
        self.reactor = reactor
        #: The DER response stapled now (b"" for none), and until when.
        self.response = b""
        self.valid_until: float | None = None
        self._timer: IDelayedCall | None = None
        self._fetching: Deferred[Any] | None = None
        #: The connection of the fetch under way, aborted when it ends.
        self._connection: Any = None
        self._retry = _RETRY_FIRST
        #: Between start() and stop(): only then are there fetches and timers.
        self._running = False
        self._read_certificate()
        if response_file is not None:
            self.response, self.valid_until = self._read_file()

    def _read_certificate(self) -> None:
        certificate, issuer = certificate_and_issuer(self.certificate_file, self.chain_file)
        option = "ocsp=auto" if self.auto else "ocspResponse"
        url = None
        if self.auto:
            url = responder_url(certificate)
            if url is None:
                raise OCSPError(
                    f"ocsp=auto: the certificate in {self.certificate_file!r} names no OCSP "
                    "responder (Authority Information Access)"
                )
            try:
                _responder(url)
            except OCSPError as e:
                raise OCSPError(
                    f"ocsp=auto: the certificate in {self.certificate_file!r}: {e}"
                ) from None
        if issuer is None:
            raise OCSPError(
                f"{option}: the issuer of the certificate in {self.certificate_file!r} "
                "is in neither that file nor chain=: OCSP requests and the "
                "verification of responses need it"
            )
        self.certificate, self.issuer, self.url = certificate, issuer, url

    def _read_file(self) -> tuple[bytes, float | None]:
        assert self.response_file is not None
        try:
            der = Path(self.response_file).read_bytes()
        except OSError as e:
            raise OCSPError(
                f"ocspResponse file {self.response_file!r}: {e.strerror or e}"
            ) from None
        source = f"ocspResponse file {self.response_file!r}"
        _parse(der, source)
        try:
            single = self._verify(der)
        except OCSPError as e:
            raise OCSPError(
                f"{source} is refused for the certificate in {self.certificate_file!r}: {e}"
            ) from None
        return der, _until(single)

    def _verify(self, der: bytes) -> ocsp.OCSPSingleResponse:
        assert self.issuer is not None
        # (The clock, not the reactor's: a --workers supervisor parses
        # endpoints with a reactor that has none.)
        return verify(der, self.certificate, self.issuer)

    # -- stapling ---------------------------------------------------------

    def install(self, credentials: Credentials) -> None:
        """Staple from now on in *credentials*' handshakes.

        Call it before their first handshake: OpenSSL reads a context's
        callbacks when a connection is made from it.
        """
        self.install_context(credentials.openssl_context)

    def install_context(self, context: SSL.Context) -> None:
        """Staple from now on in the handshakes of one OpenSSL *context*.

        (An ``sni`` folder's per-name contexts: see :class:`FolderStapler`.)
        """
        context.set_ocsp_server_callback(self._staple)

    def _staple(self, connection: SSL.Connection, data: object) -> bytes:
        # (Only asked when the client sent status_request.)
        until = self.valid_until
        if until is not None and self.reactor.seconds() >= until:
            return b""
        return self.response

    # -- the life cycle ------------------------------------------------------

    def start(self) -> None:
        """Serving begins: with ``ocsp=auto``, fetch now (and then on schedule)."""
        self._running = True
        if self.auto:
            self._fetch("start")

    @property
    def running(self) -> bool:
        """Whether the stapler is started (and not stopped since)."""
        return self._running

    def reload(self, why: str) -> None:
        """Read the certificate again and the response file, or fetch again.

        A response that cannot be had is logged and the previous one kept
        (when it is still about the certificate). With ``ocsp=auto``, a
        stapler that is not started fetches nothing: it will at its start.
        """
        try:
            self._read_certificate()
        except OCSPError as e:
            _log.error("{why}: OCSP for {endpoint}: {error}", why=why,
                       endpoint=self.description, error=str(e))
            return
        if self.response:
            try:
                self._verify(self.response)
            except OCSPError:
                # A new certificate: the old response is about another one.
                self.response, self.valid_until = b"", None
        if self.response_file is not None:
            try:
                self.response, self.valid_until = self._read_file()
            except OCSPError as e:
                _log.error(
                    "{why}: {error}; {kept}", why=why, error=str(e),
                    kept="keeping the previous response" if self.response
                    else "no response to staple",
                )
            else:
                _log.info("{why}: stapling {file} for {endpoint}", why=why,
                          file=self.response_file, endpoint=self.description)
        if self.auto and self._running:
            self._fetch(why)

    def stop(self) -> None:
        """Serving ended: cancel the refresh timer and any fetch under way."""
        self._running = False
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        fetching = self._fetching
        if fetching is not None:
            fetching.cancel()
        self._fetching = None
        self._disconnect()

    def _disconnect(self) -> None:
        # Whatever the fetch's outcome, its connection ends with it: a
        # responder that never finishes must not keep a socket open.
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.abortConnection()

    # -- ocsp=auto -----------------------------------------------------------

    def _schedule(self, delay: float) -> None:
        if not self._running:
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = self.reactor.callLater(delay, self._fetch, "refresh")

    def _request(self) -> bytes:
        assert self.issuer is not None
        builder = ocsp.OCSPRequestBuilder().add_certificate(
            self.certificate, self.issuer, hashes.SHA1()
        )
        return builder.build().public_bytes(serialization.Encoding.DER)

    def _fetch(self, why: str) -> None:
        if self._fetching is not None:
            return
        self._timer = None
        url = self.url
        assert url is not None
        fetching: Deferred[bytes] = maybeDeferred(self._get, url)
        expired: list[bool] = []

        def deadline() -> None:
            # The whole fetch has one deadline, not each read: a responder
            # dribbling its answer is cut off with its connection.
            expired.append(True)
            self._disconnect()
            fetching.cancel()

        timeout = FETCH_TIMEOUT if self.fetch_timeout is None else self.fetch_timeout
        timer = self.reactor.callLater(timeout, deadline)

        def ended(result: object) -> object:
            if timer.active():
                timer.cancel()
            self._disconnect()
            if expired and isinstance(result, Failure):
                return Failure(OCSPError(  # type: ignore[no-untyped-call]
                    f"no complete answer within {timeout:g} s"))
            return result

        fetching.addBoth(ended)
        self._fetching = fetching
        fetching.addCallbacks(self._fetched, self._failed, callbackArgs=(why, url),
                              errbackArgs=(why, url))

    def _get(self, url: str) -> Deferred[bytes]:
        """The body of the responder's answer to our request, from a checked address."""
        host, port = _responder(url)
        try:
            ipaddress.ip_address(host.partition("%")[0])
        except ValueError:
            receiver = _Addresses()
            self.reactor.nameResolver.resolveHostName(receiver, host, port)
            resolving = receiver.done
            literal = False
        else:
            resolving = succeed([host])
            literal = True

        def check(hosts: list[str]) -> Deferred[bytes]:
            if not hosts:
                raise OCSPError(f"{host} resolves to no address")
            if not self.allow_private:
                for address in hosts:
                    kind = refused_address(address)
                    if kind is not None:
                        said = address if literal else f"{host} resolves to {address}"
                        raise OCSPError(
                            f"refused the responder of the certificate in "
                            f"{self.certificate_file!r}: {said}, {_article(kind)} {kind} address "
                            "(ocspAllowPrivate=yes allows private responders)"
                        )
            return self._post(url, hosts, port)

        return resolving.addCallback(check)

    def _post(self, url: str, hosts: list[str], port: int) -> Deferred[bytes]:
        from io import BytesIO

        from twisted.web.client import Agent, FileBodyProducer
        from twisted.web.http_headers import Headers

        def connected(transport: Any) -> None:
            self._connection = transport

        agent = Agent.usingEndpointFactory(  # type: ignore[no-untyped-call]
            self.reactor, _Pinned(self.reactor, hosts, port, connected)
        )
        body = FileBodyProducer(BytesIO(self._request()))  # type: ignore[no-untyped-call]
        requesting: Deferred[Any] = agent.request(
            b"POST", url.encode("ascii"),
            Headers({b"content-type": [b"application/ocsp-request"]}),
            body,
        )

        def read(response: Any) -> Deferred[bytes]:
            # (Redirects are not followed: a 3xx is a failure like any other.)
            if response.code != 200:
                raise OCSPError(f"the responder answered HTTP {response.code}")
            if isinstance(response.length, int) and response.length > MAX_RESPONSE:
                raise OCSPError(f"the answer is over {MAX_RESPONSE} bytes")
            done: Deferred[bytes] = Deferred()
            response.deliverBody(_Body(done))
            return done

        return requesting.addCallback(read)

    def _fetched(self, der: bytes, why: str, url: str) -> None:
        self._fetching = None
        try:
            single = self._verify(der)
        except OCSPError as e:
            self._failed(Failure(OCSPError(  # type: ignore[no-untyped-call]
                f"refused its response for the certificate in {self.certificate_file!r}: {e}"
            )), why, url)
            return
        if single.certificate_status == ocsp.OCSPCertStatus.REVOKED:
            _log.error("OCSP: {url} says the certificate of {endpoint} is REVOKED",
                       url=PeerText(url), endpoint=self.description)
        self.response, self.valid_until = der, _until(single)
        self._retry = _RETRY_FIRST
        now = datetime.datetime.now(datetime.timezone.utc)
        next_update = single.next_update_utc
        if next_update is None:
            delay = _NO_NEXT_UPDATE
        else:
            delay = (single.this_update_utc + (next_update - single.this_update_utc) / 2
                     - now).total_seconds()
            delay = max(delay, _RETRY_FIRST)
        _log.info(
            "OCSP ({why}): fetched from {url} for {endpoint}: {state}; refreshing in {delay} s",
            why=why, url=PeerText(url), endpoint=self.description, state=_describe(single),
            delay=round(delay),
        )
        self._schedule(delay)

    def _failed(self, failure: Failure, why: str, url: str) -> None:
        self._fetching = None
        if not self._running:
            return
        delay, self._retry = self._retry, min(self._retry * 2, _RETRY_MOST)
        if self.response:
            kept = "keeping the last good response"
            if self.valid_until is not None:
                until = datetime.datetime.fromtimestamp(self.valid_until, datetime.timezone.utc)
                kept += f" (valid until {until:%Y-%m-%d %H:%M:%S} UTC)"
        else:
            kept = "no response to staple"
        _log.warn(
            "OCSP ({why}): fetching from {url} for {endpoint} failed: {error}; {kept}; "
            "retrying in {delay} s",
            why=why, url=PeerText(url), endpoint=self.description,
            error=PeerText(_failure_text(failure)), kept=kept, delay=round(delay),
        )
        self._schedule(delay)


class FolderStapler:
    """``ocsp=auto`` for an endpoint with an ``sni`` folder: one staple per certificate.

    Each certificate the endpoint serves, the default one and each
    ``<hostname>.pem`` of the folder, gets a :class:`Stapler` of its own,
    which fetches from that certificate's responder (its issuer must be in
    its file); each is installed on the OpenSSL context that serves its
    certificate. The methods are :class:`Stapler`'s, for all of them. Files
    that appear in the folder get a stapler at the next :meth:`install`
    (a reload), started if serving is; those that go are stopped.

    :param description: the endpoint, for log lines (each stapler adds its
        host name).
    :param certificate_file: the default certificate (``certificate=``, or
        the folder's ``DEFAULT.pem``).
    :param folder: the ``sni`` folder.
    :param chain_file: where else the default certificate's issuer may be.
    :param allow_private: as :class:`Stapler`'s, for every certificate.
    :param fetch_timeout: as :class:`Stapler`'s.
    :param reactor: for the fetches and the refresh timers.
    :raises OCSPError: at construction: a certificate names no ``http://``
        responder, or its issuer is not found (the message names the file);
        at a reload such a file is logged and skipped.
    :ivar default: the default certificate's stapler.
    :ivar hosts: the stapler of each host name of the folder (a file's stem).
    """

    def __init__(
        self,
        description: str,
        certificate_file: str,
        folder: str,
        *,
        chain_file: str | None = None,
        allow_private: bool = False,
        fetch_timeout: float | None = None,
        reactor: Any,
    ) -> None:
        self.description = description
        self.folder = folder
        self.reactor = reactor
        self.allow_private = allow_private
        self.fetch_timeout = fetch_timeout
        self.default = Stapler(
            description, certificate_file, chain_file=chain_file, auto=True,
            allow_private=allow_private, fetch_timeout=fetch_timeout, reactor=reactor,
        )
        self.hosts: dict[str, Stapler] = {}
        self._running = False
        self._scan(strict=True, why="start")

    @property
    def running(self) -> bool:
        """Whether the staplers are started (and not stopped since)."""
        return self._running

    def _all(self) -> list[Stapler]:
        # The folder's DEFAULT.pem may be the default certificate and a
        # host at once: one stapler, fetching once.
        return list({id(s): s for s in (self.default, *self.hosts.values())}.values())

    def _scan(self, *, strict: bool, why: str) -> None:
        """Make a stapler for each new file of the folder, drop those of files gone."""
        # The names the credentials serve, read the same way.
        files = sni_files(self.folder)
        changed = [n for n, s in self.hosts.items() if files.get(n) != s.certificate_file]
        for name in changed:
            gone = self.hosts.pop(name)
            if gone is not self.default:
                gone.stop()
        for name, file in files.items():
            if name in self.hosts:
                continue
            if file == self.default.certificate_file:
                self.hosts[name] = self.default
                continue
            try:
                stapler = Stapler(
                    f"{self.description} ({name})", file, auto=True,
                    allow_private=self.allow_private, fetch_timeout=self.fetch_timeout,
                    reactor=self.reactor,
                )
            except OCSPError as e:
                if strict:
                    raise
                _log.error("{why}: OCSP for {endpoint}: {error}", why=why,
                           endpoint=f"{self.description} ({name})", error=str(e))
                continue
            self.hosts[name] = stapler
            if self._running:
                stapler.start()

    def install(self, credentials: Credentials) -> None:
        """Staple from now on in *credentials*' handshakes, each name with its own.

        Call it before their first handshake, as :meth:`Stapler.install`.
        """
        self._scan(strict=False, why="reload")
        self.default.install(credentials)
        for name, context in credentials.sni_contexts.items():
            stapler = self.hosts.get(name)
            if stapler is not None:
                stapler.install_context(context)

    def start(self) -> None:
        """Serving begins: every stapler fetches now (and then on schedule)."""
        self._running = True
        for stapler in self._all():
            stapler.start()

    def reload(self, why: str) -> None:
        """Read every certificate again, and fetch again (see :meth:`Stapler.reload`)."""
        for stapler in self._all():
            stapler.reload(why)

    def stop(self) -> None:
        """Serving ended: cancel every refresh timer and fetch under way."""
        self._running = False
        for stapler in self._all():
            stapler.stop()
