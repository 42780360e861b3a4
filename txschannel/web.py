"""HTTPS for ``twisted.web.client.Agent`` and treq, through txschannel.

Most Twisted TLS traffic is an ``Agent`` (or treq, built on one), and an
``Agent`` never reads endpoint strings: it asks an
:class:`~twisted.web.iweb.IAgentEndpointFactory` for an endpoint per URI.
:class:`SchannelEndpointFactory` is that factory::

    from twisted.web.client import Agent
    from txschannel.web import SchannelEndpointFactory

    agent = Agent.usingEndpointFactory(reactor, SchannelEndpointFactory(reactor))

For ``https`` (and ``wss``) it connects with a ``HostnameEndpoint`` (so IPv6
and "happy eyeballs" work as they do in Twisted's own ``Agent``) and speaks
TLS over it through :class:`~txschannel.protocol.SchannelFactory`, checking
the server's certificate for the URI's host; the ``Agent`` gets the
connection once the handshake is complete, so a refused certificate fails
the request with the :class:`~txschannel.SecurityError` itself. ``http``
(and ``ws``) get the plain ``HostnameEndpoint``, as Twisted's default
factory gives them.

One :class:`~txschannel.Credentials` serves every connection the factory
makes, so its session cache carries TLS sessions from one connection to
the next one to the same host: the second connection an
``HTTPConnectionPool`` opens to a host resumes the first one's session
(Twisted's own ``Agent`` never resumes).
"""

from __future__ import annotations

import ipaddress
import math
import os
from collections.abc import Callable, Sequence
from typing import Any, Union, cast

from cryptography import x509
from twisted.internet.defer import Deferred, fail
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import (
    IDelayedCall,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.python.failure import Failure
from twisted.web.client import URI
from twisted.web.error import SchemeNotSupported
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from txschannel.credentials import CertificateSource, Credentials, KeySource
from txschannel.keylog import KeyLogSetting
from txschannel.protocol import HandshakeTimeout, SchannelFactory, SchannelProtocol

__all__ = ["SchannelEndpointFactory"]

#: What :class:`SchannelEndpointFactory` accepts as ``trust_roots``: as
#: :meth:`Credentials.client` does.
TrustRoots = Union[str, "os.PathLike[str]", bytes, Sequence[x509.Certificate]]

#: The local address to connect from: ``(host, port)`` or a host alone, as
#: ``HostnameEndpoint``'s ``bindAddress`` takes it.
BindAddress = tuple[str, int] | str

#: The ALPN protocols an ``Agent`` can speak: it is an HTTP/1.1 client only.
_HTTP1 = (b"http/1.1", b"http/1.0")

_PLAIN_SCHEMES = (b"http", b"ws")
_TLS_SCHEMES = (b"https", b"wss")


@implementer(IAgentEndpointFactory)
class SchannelEndpointFactory:
    """Endpoints for ``Agent.usingEndpointFactory``: HTTPS through txschannel.

    Server name, verification and session resumption per host, as a browser
    does them: the certificate must chain to *trust_roots* (the system's
    store by default) and carry the URI's host (a DNS name, or an IP
    address for ``https://127.0.0.1/`` and ``https://[::1]/``); ALPN offers
    ``http/1.1``; a TLS session is resumed on the next connection to the
    same host name.

    :param reactor: the reactor to connect with (and to time with).
    :param credentials: client :class:`~txschannel.Credentials` to use for
        every connection, instead of building them from the options below.
        They must check certificates (not ``manual_validation``) and offer
        no ALPN protocol other than ``http/1.1`` (an ``Agent`` speaks
        HTTP/1.1 only).
    :param trust_roots: the CAs to trust: ``"system"`` (the default), a PEM
        file, a folder of PEM files, PEM bytes, or ``cryptography``
        certificates.
    :param certificate: a client certificate to present when a server asks
        for one (a PEM file may also hold its key and chain).
    :param private_key: the client certificate's key, when it is not in
        *certificate*.
    :param minimum_version: ``"TLSv1.2"`` (the default) or ``"TLSv1.3"``.
    :param maximum_version: ``"TLSv1.2"`` or ``"TLSv1.3"``; the newest by
        default.
    :param connect_timeout: seconds to wait for the TCP connection, as
        ``Agent``'s ``connectTimeout`` (``HostnameEndpoint``'s 30 when
        None).
    :param bind_address: the local address to connect from, as ``Agent``'s
        ``bindAddress``.
    :param handshake_timeout: seconds the TLS handshake may take once the
        TCP connection is made; past it the connection is aborted and the
        request fails with :class:`~txschannel.protocol.HandshakeTimeout`.
        None waits for ever (as Twisted's ``Agent`` does).
    :param key_log_file: write the TLS secrets of every connection to this
        file, for Wireshark; by default ``$SSLKEYLOGFILE`` when it is set
        (as curl and browsers do); ``False`` for none. See
        :mod:`txschannel.keylog`.
    :raises ValueError: a file is missing, unreadable or not PEM, a key does
        not match its certificate, a version or timeout is invalid, or the
        *credentials* are unfit for HTTPS (server credentials, manual
        validation, an ALPN protocol other than ``http/1.1``); the message
        names the option or file.
    :raises TypeError: *credentials* are not txschannel ``Credentials``, or
        are given together with options that would build them.

    :ivar credentials: the client :class:`~txschannel.Credentials` every
        connection uses (they hold the session cache).
    """

    def __init__(
        self,
        reactor: Any,
        credentials: Credentials | None = None,
        *,
        trust_roots: TrustRoots | None = None,
        certificate: CertificateSource | None = None,
        private_key: KeySource | None = None,
        minimum_version: str | None = None,
        maximum_version: str | None = None,
        connect_timeout: float | None = None,
        bind_address: BindAddress | None = None,
        handshake_timeout: float | None = 30.0,
        key_log_file: KeyLogSetting = None,
    ) -> None:
        self._reactor = reactor
        self._connect_timeout = _seconds("connect_timeout", connect_timeout)
        self._handshake_timeout = _seconds("handshake_timeout", handshake_timeout)
        self._bind_address = bind_address
        options = {
            "trust_roots": trust_roots,
            "certificate": certificate,
            "private_key": private_key,
            "minimum_version": minimum_version,
            "maximum_version": maximum_version,
            "key_log_file": key_log_file,
        }
        given = {name: value for name, value in options.items() if value is not None}
        if credentials is None:
            self.credentials = _build_credentials(given)
        else:
            if given:
                raise TypeError(
                    "SchannelEndpointFactory: give credentials or the options that build "
                    f"them ({', '.join(given)}), not both"
                )
            self.credentials = _checked_credentials(credentials)

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        """The endpoint that connects to *uri*'s host and port.

        ``https`` and ``wss``: TLS through txschannel, the certificate
        checked for the URI's host. ``http`` and ``ws``: plain TCP, as
        Twisted's default endpoint factory does.

        :raises SchemeNotSupported: any other scheme (``Agent.request``
            turns it into a failed ``Deferred``, as for its own factory).
        :raises ValueError: the host is not ASCII (as Twisted's factory
            raises).
        """
        if uri.scheme not in _PLAIN_SCHEMES and uri.scheme not in _TLS_SCHEMES:
            raise SchemeNotSupported(f"Unsupported scheme: {uri.scheme!r}")
        host = _host(uri)
        kwargs: dict[str, Any] = {"bindAddress": self._bind_address}
        if self._connect_timeout is not None:
            kwargs["timeout"] = self._connect_timeout
        tcp = HostnameEndpoint(self._reactor, host, uri.port, **kwargs)
        if uri.scheme in _PLAIN_SCHEMES:
            return tcp
        return _HTTPSEndpoint(
            self._reactor, tcp, self.credentials, host, uri.port, self._handshake_timeout
        )

    def __repr__(self) -> str:
        return f"<SchannelEndpointFactory {self.credentials!r}>"


def _seconds(name: str, value: float | None) -> float | None:
    if value is None:
        return None
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or not 0 < value < math.inf:
        raise ValueError(
            f"SchannelEndpointFactory: {name}={value!r}: expected a positive number of "
            "seconds or None"
        )
    return float(value)


def _build_credentials(options: dict[str, Any]) -> Credentials:
    """``Credentials.client`` from the factory's keyword options, offering http/1.1."""
    try:
        return Credentials.client(alpn=("http/1.1",), **options)
    except (ValueError, TypeError) as e:
        raise type(e)(f"SchannelEndpointFactory: {e}") from None


def _checked_credentials(credentials: object) -> Credentials:
    """*credentials*, if they can make HTTPS connections that an Agent can use."""
    if not isinstance(credentials, Credentials):
        raise TypeError(
            f"SchannelEndpointFactory: credentials={credentials!r}: expected "
            "txschannel Credentials from Credentials.client(...); pass trust_roots=, "
            "certificate= and private_key= to have them built"
        )
    if not credentials.is_client:
        raise ValueError(
            "SchannelEndpointFactory: credentials are server credentials; "
            "use Credentials.client(...)"
        )
    if credentials.manual_validation:
        raise ValueError(
            "SchannelEndpointFactory: credentials with manual_validation would let any "
            "server certificate through, and an Agent gives its caller no place to check "
            "it; use Credentials.client(trust_roots=...) instead"
        )
    others = [p for p in credentials.alpn if p not in _HTTP1]
    if others:
        names = ", ".join(p.decode("ascii", "replace") for p in others)
        raise ValueError(
            f"SchannelEndpointFactory: credentials offer ALPN {names}, but an Agent speaks "
            "HTTP/1.1 only; use alpn=('http/1.1',)"
        )
    return credentials


def _host(uri: URI) -> str:
    """*uri*'s host as text: an IP literal without its brackets, a DNS name as it is.

    :raises ValueError: the host is not ASCII.
    """
    raw: bytes = uri.host
    try:
        host = raw.decode("ascii")
    except UnicodeDecodeError:
        raise ValueError(
            f"The host of the provided URI ({raw!r}) contains non-ASCII octets, "
            "it should be ASCII decodable."
        ) from None
    if host.startswith("[") and host.endswith("]"):
        # An IPv6 literal (RFC 3986): URI.fromBytes keeps the brackets.
        host = host[1:-1]
    return host


def _target_name(host: str) -> tuple[str, ValueError | None]:
    """The name to check the certificate for (and to keep the session under).

    IP addresses in their canonical spelling, DNS names in lower case
    without a trailing dot, so that every spelling of a host shares its
    session. The error is for a name that cannot be a host name.
    """
    from txschannel.validation import host_a_label

    try:
        return str(ipaddress.ip_address(host)), None
    except ValueError:
        pass
    name = host.rstrip(".").lower()
    try:
        host_a_label(name)
    except ValueError as e:
        return name, ValueError(f"{e} for TLS")
    return name, None


@implementer(IStreamClientEndpoint)
class _HTTPSEndpoint:
    """TLS over a ``HostnameEndpoint``; the connection is handed over once secure.

    Twisted's TLS endpoints hand the protocol over as soon as TCP connects
    and report a failed handshake only as a lost connection, which an
    ``Agent`` reports as ``ResponseNeverReceived`` around it. Waiting for
    the handshake instead makes a refused certificate the request's own
    failure: the :class:`~txschannel.SecurityError` itself reaches the
    caller's errback, as a refused TCP connection would.
    """

    def __init__(
        self,
        clock: IReactorTime,
        tcp: IStreamClientEndpoint,
        credentials: Credentials,
        host: str,
        port: int,
        handshake_timeout: float | None,
    ) -> None:
        self.tcp = tcp
        self.credentials = credentials
        self.target_name, self._invalid = _target_name(host)
        self.clock = clock
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.handshake_timeout = handshake_timeout

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        """Connect, complete the TLS handshake, then fire with the protocol.

        :return: a ``Deferred`` that fires with *protocolFactory*'s protocol
            once the handshake is complete. It fails, once the connection is
            closed, with the :class:`~txschannel.SecurityError` that ended
            the handshake, :class:`~txschannel.protocol.HandshakeTimeout`,
            or why the connection was lost; at once with the TCP
            connection's error, or with ``ValueError`` for a host that
            cannot be a TLS server name. Cancelling it aborts the connection.
        """
        if self._invalid is not None:
            return fail(self._invalid)
        return _Connection(self, protocolFactory).result

    def __repr__(self) -> str:
        return f"<SchannelEndpointFactory endpoint to {self.address} over {self.tcp!r}>"


class _ConnectionFactory(SchannelFactory):
    """The :class:`SchannelFactory` of one connection attempt; says when it is gone."""

    def __init__(self, gone: Callable[[], None], *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._gone = gone

    def unregisterProtocol(self, p: Any) -> None:
        """The connection is closed (``ProtocolWrapper.connectionLost`` says so)."""
        cast(Any, super()).unregisterProtocol(p)
        gone, self._gone = self._gone, _nothing
        gone()


def _nothing() -> None:
    pass


class _Connection:
    """One connection attempt of an :class:`_HTTPSEndpoint`: TCP, then the handshake.

    A failure is reported once the connection is closed, not as soon as it
    is known: a request whose Deferred has failed leaves no socket behind
    (trial's clean-reactor check, and Twisted's own ``Agent``, rely on it).
    """

    def __init__(self, endpoint: _HTTPSEndpoint, protocolFactory: IProtocolFactory) -> None:
        self._endpoint = endpoint
        self._tls: SchannelProtocol | None = None
        self._timer: IDelayedCall | None = None
        #: Why the handshake did not complete, to report once the connection is gone.
        self._failure: Failure | None = None
        self._gone = False
        self.result: Deferred[IProtocol] = Deferred(self._cancel)
        try:
            factory = _ConnectionFactory(
                self._closed,
                endpoint.credentials,
                True,
                protocolFactory,
                endpoint.clock,
                target_name=endpoint.target_name,
            )
        except (TypeError, ValueError):
            self.result.errback()
            return
        self._connecting: Deferred[Any] = endpoint.tcp.connect(factory)
        self._connecting.addCallbacks(self._connected, self._report)

    def _connected(self, tls: SchannelProtocol) -> None:
        self._tls = tls
        timeout = self._endpoint.handshake_timeout
        if timeout is not None and not self._gone:
            self._timer = self._endpoint.clock.callLater(timeout, self._timed_out, timeout)
        tls.whenHandshakeDone().addCallbacks(self._established, self._failed)

    def _established(self, tls: SchannelProtocol) -> None:
        self._stop_timer()
        if not self.result.called:
            self.result.callback(tls.wrappedProtocol)

    def _failed(self, reason: Failure) -> None:
        # The first reason is the one to report: after a timeout, the
        # connection's own reason is only that we aborted it.
        if self._failure is None:
            self._failure = reason
        if self._gone:
            self._report(self._failure)

    def _closed(self) -> None:
        self._gone = True
        # The protocol leads back here through its factory: let go of it.
        self._tls = None
        if self._failure is not None:
            self._report(self._failure)

    def _report(self, reason: Failure) -> None:
        self._stop_timer()
        if not self.result.called:
            self.result.errback(reason)

    def _timed_out(self, timeout: float) -> None:
        self._timer = None
        if self._failure is None:
            error: HandshakeTimeout = cast(Any, HandshakeTimeout)(
                string=f"the TLS handshake with {self._endpoint.address} did not complete "
                f"within {timeout:g} s"
            )
            self._failure = Failure(error)  # type: ignore[no-untyped-call]
        if self._tls is not None:
            self._tls.abortConnection()

    def _cancel(self, result: Deferred[IProtocol]) -> None:
        self._stop_timer()
        if self._tls is None:
            # Still connecting: HostnameEndpoint's own cancellation.
            self._connecting.cancel()
        else:
            self._tls.abortConnection()

    def _stop_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
