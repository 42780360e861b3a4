"""Helpers for trial tests of applications that use txschannel.

Two things most TLS tests need and nobody wants to write twice:

* :class:`CertificateAuthority`: a throw-away certificate authority that
  issues server and client certificates (ECDSA or RSA; host names, wildcards
  and IP addresses) and hands out ready :class:`~txschannel.Credentials`.
* :func:`connected_pair`: a client and a server protocol joined through
  :class:`~txschannel.protocol.SchannelFactory` over an in-memory
  :class:`twisted.test.iosim.IOPump`, so that an application's behaviour
  over TLS can be tested without sockets, threads or a running reactor.

Everything here is built with ``cryptography`` only; ``trustme`` is not
needed. Keys and certificates live in memory; :meth:`IssuedCertificate.write`
puts them in a file when a test needs a path (an endpoint string, a
subprocess such as ``openssl s_client``).

Example::

    from twisted.trial.unittest import SynchronousTestCase
    from txschannel.testing import connected_pair

    class EchoTests(SynchronousTestCase):
        def test_echo_over_tls(self) -> None:
            client, server, pump = connected_pair(MyClient, MyEcho)
            client.transport.write(b"ping")
            pump.flush()
            self.assertEqual(client.received, b"ping")
"""

from __future__ import annotations

import datetime
import ipaddress
import itertools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IAddress, ILoggingContext, IProtocol, IProtocolFactory
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.test.iosim import FakeTransport, IOPump, connect
from zope.interface import implementer

from txschannel.credentials import Credentials

__all__ = [
    "CertificateAuthority",
    "ConnectedPair",
    "IssuedCertificate",
    "KeyType",
    "connected_pair",
]

#: The kinds of key a certificate can have: ECDSA on P-256 (fast to make,
#: the default) or 2048-bit RSA (for code that must see an RSA peer).
KeyType = Literal["ecdsa", "rsa"]

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

_DAY = datetime.timedelta(days=1)
# Certificates start a day in the past so that a peer whose clock is a little
# behind (a container, a VM just resumed) still accepts them.
_BACKDATE = _DAY
_DEFAULT_LIFETIME = 365 * _DAY


def _new_key(key_type: KeyType) -> PrivateKey:
    if key_type == "ecdsa":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise ValueError(f"key_type={key_type!r}: use 'ecdsa' or 'rsa'")


def _general_name(name: str) -> x509.GeneralName:
    """A subjectAltName entry for a host name, wildcard or IP address."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"certificate name {name!r}: expected a non-empty host name or IP")
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        pass
    if name.startswith("*."):
        return x509.DNSName("*." + _ascii_host(name[2:], name))
    return x509.DNSName(_ascii_host(name, name))


def _ascii_host(host: str, original: str) -> str:
    # The client's own reading of a name (txschannel.validation.host_a_label),
    # so that every name the test CA certifies is one a client can reach.
    from txschannel.validation import host_a_label

    try:
        return host_a_label(host)
    except ValueError as e:
        raise ValueError(f"certificate name {original!r}: {e}") from None


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _pem_key(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _pem_certificate(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def _write(path: str | os.PathLike[str], data: bytes) -> Path:
    target = Path(path)
    # The file may hold a private key: readable by its owner only.
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    return target


@dataclass(frozen=True)
class IssuedCertificate:
    """A leaf certificate, its private key and the chain up to (not including) the root.

    :ivar certificate: the leaf, a ``cryptography`` certificate.
    :ivar private_key: its key, a ``cryptography`` private key.
    :ivar chain: intermediate CA certificates, nearest first (empty when the
        issuer is the root).
    """

    certificate: x509.Certificate
    private_key: PrivateKey
    chain: tuple[x509.Certificate, ...] = ()

    @property
    def certificate_pem(self) -> bytes:
        """The leaf certificate as PEM."""
        return _pem_certificate(self.certificate)

    @property
    def private_key_pem(self) -> bytes:
        """The private key as unencrypted PKCS#8 PEM."""
        return _pem_key(self.private_key)

    @property
    def pem(self) -> bytes:
        """Key, leaf and chain in one PEM blob: what ``Credentials`` and
        ``schannel:`` endpoint strings accept as a single ``certificate``."""
        return self.private_key_pem + self.certificate_pem + b"".join(
            _pem_certificate(c) for c in self.chain
        )

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write :attr:`pem` (key, leaf, chain) to *path*, mode 0600; return the path.

        :raises OSError: the file cannot be written.
        """
        return _write(path, self.pem)


class CertificateAuthority:
    """A throw-away certificate authority for tests.

    Each instance makes a fresh key and CA certificate (nothing trusts it
    by default anywhere), then issues certificates on demand::

        ca = CertificateAuthority()
        server = ca.server_credentials("localhost", "127.0.0.1")
        client = ca.client_credentials()

    :param key_type: the CA's own key (``"ecdsa"`` or ``"rsa"``); leaves
        choose theirs in :meth:`issue`.
    :param name: the CA's common name, as peers will report it.
    :param issuer: the CA that signs this one (see :meth:`intermediate`);
        ``None`` makes a self-signed root.
    :raises ValueError: an unknown *key_type*.
    """

    def __init__(
        self,
        *,
        key_type: KeyType = "ecdsa",
        name: str = "txschannel testing CA",
        issuer: CertificateAuthority | None = None,
    ) -> None:
        self.key_type: KeyType = key_type
        self.name = name
        #: The CA's private key.
        self.private_key: PrivateKey = _new_key(key_type)
        #: This CA's certificate (self-signed for a root).
        self.certificate: x509.Certificate = self._ca_certificate(self.private_key, issuer)
        #: The CA certificates above this one, nearest first, ending with
        #: the root (empty for a root).
        self.chain: tuple[x509.Certificate, ...] = (
            () if issuer is None else (issuer.certificate, *issuer.chain)
        )

    def __repr__(self) -> str:
        kind = "root" if not self.chain else f"intermediate (depth {len(self.chain)})"
        return f"<CertificateAuthority {self.name!r} {self.key_type} {kind}>"

    def _ca_certificate(
        self, key: PrivateKey, parent: CertificateAuthority | None
    ) -> x509.Certificate:
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "txschannel testing"),
                x509.NameAttribute(NameOID.COMMON_NAME, self.name),
            ]
        )
        issuer = subject if parent is None else parent.certificate.subject
        signer = key if parent is None else parent.private_key
        now = _now()
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + 10 * _DEFAULT_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        )
        if parent is not None:
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    parent.private_key.public_key()
                ),
                critical=False,
            )
        return builder.sign(signer, hashes.SHA256())

    # -- PEM ----------------------------------------------------------------

    @property
    def certificate_pem(self) -> bytes:
        """This CA's certificate as PEM (what a peer's trust store needs when
        this CA is a root)."""
        return _pem_certificate(self.certificate)

    @property
    def root(self) -> x509.Certificate:
        """The root certificate at the top of this CA's chain (itself for a root)."""
        return self.chain[-1] if self.chain else self.certificate

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write the *root* certificate (the trust anchor) as PEM to *path*; return it.

        :raises OSError: the file cannot be written.
        """
        return _write(path, _pem_certificate(self.root))

    def write_key(self, path: str | os.PathLike[str]) -> Path:
        """Write this CA's private key, certificate and chain as PEM to *path*
        (mode 0600), for :meth:`load` to issue more certificates later (a
        renewal). Anyone who reads the file can issue certificates that the
        CA's clients trust. Return the path.

        :raises OSError: the file cannot be written.
        """
        return _write(
            path,
            _pem_key(self.private_key)
            + b"".join(_pem_certificate(c) for c in (self.certificate, *self.chain)),
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CertificateAuthority:
        """The CA that :meth:`write_key` wrote to *path*, to issue with again.

        :raises ValueError: the file holds no private key, no certificate, or
            a key that is not the certificate's (the message names the file).
        :raises OSError: the file cannot be read.
        """
        data = Path(path).read_bytes()
        try:
            key = serialization.load_pem_private_key(data, password=None)
            certificates = x509.load_pem_x509_certificates(data)
        except ValueError:
            raise ValueError(
                f"CA file {os.fspath(path)!r} is not what write_key() writes: an "
                "unencrypted PEM private key and the CA's certificate"
            ) from None
        if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
            raise ValueError(f"CA file {os.fspath(path)!r}: an ECDSA or RSA key is needed")
        if certificates[0].public_key() != key.public_key():
            raise ValueError(
                f"CA file {os.fspath(path)!r}: the key is not the first certificate's"
            )
        ca = cls.__new__(cls)
        ca.key_type = "ecdsa" if isinstance(key, ec.EllipticCurvePrivateKey) else "rsa"
        names = certificates[0].subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        ca.name = str(names[0].value) if names else ""
        ca.private_key = key
        ca.certificate = certificates[0]
        ca.chain = tuple(certificates[1:])
        return ca

    # -- issuing --------------------------------------------------------------

    def intermediate(
        self, name: str = "txschannel testing intermediate CA"
    ) -> CertificateAuthority:
        """A new CA signed by this one: the certificates it issues carry it in their chain.

        Useful to test that a server sends its chain and that a client
        builds the path up to the root it trusts.
        """
        return CertificateAuthority(key_type=self.key_type, name=name, issuer=self)

    def issue(
        self,
        *names: str,
        key_type: KeyType = "ecdsa",
        common_name: str | None = None,
        not_before: datetime.datetime | None = None,
        not_after: datetime.datetime | None = None,
    ) -> IssuedCertificate:
        """Issue a leaf certificate for *names*, good for both server and client use.

        :param names: host names (``"localhost"``, ``"*.example.com"``,
            internationalised names are IDNA-encoded) and IP addresses
            (``"127.0.0.1"``, ``"::1"``), all put in subjectAltName. A
            client certificate may have no name at all.
        :param key_type: ``"ecdsa"`` (P-256, the default) or ``"rsa"`` (2048).
        :param common_name: the subject CN; the first name by default.
        :param not_before: start of validity (default: a day ago, or a day
            before *not_after* when that is in the past).
        :param not_after: end of validity (default: a year from now); a
            time in the past makes an expired certificate, to test
            ``Status.CERT_EXPIRED``.
        :raises ValueError: a name that is neither a host name nor an IP
            address, an unknown *key_type*, or *not_after* before *not_before*.
        """
        key = _new_key(key_type)
        now = _now()
        end = not_after if not_after is not None else now + _DEFAULT_LIFETIME
        # The default start is a day ago, or a day before an end in the
        # past: an expired certificate needs no not_before of its own.
        start = not_before if not_before is not None else min(now, end) - _BACKDATE
        if end <= start:
            raise ValueError(f"not_after ({end.isoformat()}) must be after not_before "
                             f"({start.isoformat()})")
        alt_names = [_general_name(n) for n in names]
        cn = common_name if common_name is not None else (names[0] if names else "client")
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "txschannel testing"),
                x509.NameAttribute(NameOID.COMMON_NAME, cn[:64]),
            ]
        )
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    # RSA key exchange is off in txschannel's cipher list,
                    # but other peers may still want the bit on RSA leaves.
                    key_encipherment=key_type == "rsa",
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.private_key.public_key()),
                critical=False,
            )
        )
        if alt_names:
            builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        certificate = builder.sign(self.private_key, hashes.SHA256())
        # The root is the peer's trust anchor and is not sent.
        chain = (self.certificate, *self.chain[:-1]) if self.chain else ()
        return IssuedCertificate(certificate, key, chain)

    # -- credentials ------------------------------------------------------------

    def server_credentials(
        self,
        *names: str,
        key_type: KeyType = "ecdsa",
        trust_client_certificates: bool = False,
        **options: Any,
    ) -> Credentials:
        """Server :class:`~txschannel.Credentials` with a fresh certificate for *names*.

        :param names: as for :meth:`issue`; ``"localhost"`` when none is given.
        :param trust_client_certificates: ask clients for a certificate and
            accept those this CA issued (pass
            ``require_client_certificate=True`` too to refuse clients without one).
        :param options: passed to :meth:`Credentials.server` (``alpn``,
            ``minimum_version``, ``require_client_certificate``, ...).
        :raises ValueError: as :meth:`issue` and :meth:`Credentials.server` do.
        """
        issued = self.issue(*(names or ("localhost",)), key_type=key_type)
        if trust_client_certificates:
            options.setdefault("client_ca", [self.root])
        return Credentials.server(
            certificate=[issued.certificate, *issued.chain],
            private_key=issued.private_key,
            **options,
        )

    def client_credentials(
        self, *, certificate: IssuedCertificate | None = None, **options: Any
    ) -> Credentials:
        """Client :class:`~txschannel.Credentials` that trust this CA (only).

        :param certificate: a client certificate to present (from
            :meth:`issue`), for mutual TLS.
        :param options: passed to :meth:`Credentials.client` (``alpn``,
            ``minimum_version``, ``manual_validation``, ...).
        :raises ValueError: as :meth:`Credentials.client` does.
        """
        if certificate is not None:
            options["certificate"] = [certificate.certificate, *certificate.chain]
            options["private_key"] = certificate.private_key
        return Credentials.client(trust_roots=[self.root], **options)


class ConnectedPair(NamedTuple):
    """What :func:`connected_pair` returns; unpacks as ``client, server, pump``.

    :ivar client: the client *application* protocol (what your factory
        built). Its ``transport`` is the client's ``SchannelProtocol``.
    :ivar server: the server application protocol.
    :ivar pump: moves bytes between them: ``pump.flush()`` until quiet,
        ``pump.pump()`` for one exchange. ``pump.clock`` is the
        :class:`~twisted.internet.task.Clock` both sides use.
    """

    client: Any
    server: Any
    pump: IOPump

    @property
    def client_tls(self) -> Any:
        """The client's ``SchannelProtocol`` (``securityContext``,
        ``negotiatedProtocol``, ``getPeerCertificate()``); still reachable
        after the connection is lost, unlike its ``wrappedProtocol``."""
        return self.client.transport

    @property
    def server_tls(self) -> Any:
        """The server's ``SchannelProtocol``."""
        return self.server.transport


#: What :func:`connected_pair` accepts for each side.
ProtocolSource = IProtocolFactory | Callable[[], IProtocol]


@implementer(IProtocolFactory, ILoggingContext)
class _CallableFactory:
    """A protocol factory whose protocols come from any zero-argument callable."""

    def __init__(self, make: Callable[[], IProtocol]) -> None:
        self._make = make

    def logPrefix(self) -> str:
        return getattr(self._make, "__name__", type(self._make).__name__)

    def doStart(self) -> None:
        pass

    def doStop(self) -> None:
        pass

    def buildProtocol(self, addr: IAddress | None) -> IProtocol:
        protocol = self._make()
        if isinstance(protocol, Protocol):
            protocol.factory = self
        return protocol


def _as_factory(source: ProtocolSource, what: str) -> IProtocolFactory:
    if IProtocolFactory.providedBy(source):
        return source
    if callable(source):
        return _CallableFactory(source)
    raise TypeError(f"{what}: expected a protocol factory or a callable returning a "
                    f"protocol, not {source!r}")


_ports = itertools.count(49152)


def connected_pair(
    client: ProtocolSource,
    server: ProtocolSource,
    *,
    client_credentials: Credentials | None = None,
    server_credentials: Credentials | None = None,
    ca: CertificateAuthority | None = None,
    target_name: str = "localhost",
    clock: Clock | None = None,
    handshake: bool = True,
) -> ConnectedPair:
    """Connect *client* and *server* over TLS in memory, through ``SchannelFactory``.

    Nothing touches a socket or the global reactor: bytes move only when
    the returned pump is pumped, and time moves only when its clock is
    advanced, so tests are deterministic.

    :param client: the client application's protocol factory, or a callable
        returning a protocol (a protocol class will do).
    :param server: the same for the server application.
    :param client_credentials: defaults to credentials trusting *ca*.
    :param server_credentials: defaults to credentials with a certificate
        from *ca* for *target_name*.
    :param ca: the authority for whichever credentials are not given; a new
        one by default.
    :param target_name: the name the client checks the server against
        (and sends as SNI).
    :param clock: shared by both sides (handshake timeout, write
        coalescing); a new :class:`~twisted.internet.task.Clock` by default.
    :param handshake: pump until quiet before returning, so that the
        handshake is done (or has failed) when the pair comes back.
    :returns: a :class:`ConnectedPair`: the two application protocols and
        the pump (``pair.client_tls`` / ``pair.server_tls`` are the
        ``SchannelProtocol`` instances).
    :raises TypeError: *client* or *server* is neither a factory nor callable.
    :raises ValueError: a factory refused the connection (``buildProtocol``
        returned None), or credentials for the wrong side were given.
    """
    from txschannel.protocol import SchannelFactory

    client_factory = _as_factory(client, "client")
    server_factory = _as_factory(server, "server")
    if client_credentials is None or server_credentials is None:
        ca = ca if ca is not None else CertificateAuthority()
        if server_credentials is None:
            server_credentials = ca.server_credentials(target_name)
        if client_credentials is None:
            client_credentials = ca.client_credentials()
    clock = clock if clock is not None else Clock()
    client_tls = SchannelFactory(
        client_credentials, True, client_factory, clock, target_name=target_name
    )
    server_tls = SchannelFactory(server_credentials, False, server_factory, clock)
    server_address = IPv4Address("TCP", "127.0.0.1", 443)
    client_address = IPv4Address("TCP", "127.0.0.1", next(_ports))
    client_protocol = client_tls.buildProtocol(server_address)
    server_protocol = server_tls.buildProtocol(client_address)
    if client_protocol is None or server_protocol is None:
        side = "client" if client_protocol is None else "server"
        raise ValueError(f"the {side} factory's buildProtocol() returned None (refused)")
    # ProtocolWrapper drops its wrappedProtocol when the connection is lost
    # (a failed handshake during the first flush, say): keep the application
    # protocols here so that tests can inspect them afterwards.
    client_app, server_app = client_protocol.wrappedProtocol, server_protocol.wrappedProtocol
    # iosim is untyped; its FakeTransport and connect() are what Twisted's
    # own TLS tests pump with.
    client_io = FakeTransport(  # type: ignore[no-untyped-call]
        client_protocol, False, client_address, server_address
    )
    server_io = FakeTransport(  # type: ignore[no-untyped-call]
        server_protocol, True, server_address, client_address
    )
    pump: IOPump = connect(  # type: ignore[no-untyped-call]
        server_protocol, server_io, client_protocol, client_io, greet=handshake, clock=clock
    )
    return ConnectedPair(client_app, server_app, pump)

