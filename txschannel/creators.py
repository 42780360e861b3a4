"""Twisted's TLS connection creators, adapted for txschannel's credentials.

Twisted configures TLS with objects that make ``OpenSSL.SSL.Connection``
objects: ``IOpenSSLClientConnectionCreator`` (``optionsForClientTLS``),
``IOpenSSLServerConnectionCreator`` (``CertificateOptions``, also a client
creator) and, before those, context factories with a ``getContext()``
method. Each expects to be called with "the TLS protocol" and finds things
on it: ``protocol.factory.wrappedFactory`` for ALPN, ``failVerification``
to report a peer name that does not match, ``abortConnection`` when its SNI
lookup fails. This module is the one place that knows all that, and the
one that reads the creators' private attributes (their host name and
``SSL.Context``) for what has no public accessor.

:class:`TwistedCreator` is what :class:`~txschannel.credentials.Credentials`
hold (as ``creator``) when they come from such an object; a security
context asks it for each connection.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable
from typing import Any

from OpenSSL import SSL

__all__ = ["LegacyContextFactoryWarning", "TwistedCreator", "adapt", "adapt_for_factory"]

try:
    from twisted.protocols._tls_legacy import LegacyContextFactoryWarning
except ImportError:  # an older Twisted: warn with a class of our own

    class LegacyContextFactoryWarning(Warning):  # type: ignore[no-redef]
        """A getContext() object that declares no OpenSSL creator interface."""


class _NoFactory:
    """What a stand-in without app data offers as ``.factory``: no wrapped
    factory, so Twisted finds no extra ALPN protocols."""

    wrappedFactory = None


class _ProtocolStandIn:
    """Stands in for Twisted's TLS protocol as app data of a Connection made
    by a Twisted creator.

    Twisted reports a bad peer name through :meth:`failVerification`, which
    goes to the security context (it turns it into WRONG_PRINCIPAL); every
    other attribute (notably ``factory``) comes from the caller's
    *app_data*, so that Twisted's ALPN lookups see the real factory.
    """

    def __init__(self, on_failure: Callable[[str], None], app_data: object | None) -> None:
        # Weak: the context holds its connection, whose app data (or
        # verify callback) holds this stand-in; a strong reference back
        # would make every context a reference cycle that only the GC frees.
        self._on_failure = weakref.WeakMethod(on_failure)
        self._app_data = app_data

    def failVerification(self, reason: object) -> None:
        on_failure = self._on_failure()
        if on_failure is not None:
            value = getattr(reason, "value", reason)
            on_failure(f"certificate verification failed: {value}")

    def __getattr__(self, name: str) -> object:
        if self._app_data is not None:
            return getattr(self._app_data, name)
        if name == "factory":
            return _NoFactory
        raise AttributeError(name)


class _FactoryStandIn:
    """What a creator adapted for a :class:`~txschannel.protocol.SchannelFactory`
    sees as "the TLS protocol": that factory as ``factory`` (for its wrapped
    factory's ALPN protocols); failures go to the security context."""

    def __init__(self, factory: object, stand_in: _ProtocolStandIn) -> None:
        self.factory = factory
        self._stand_in = stand_in

    def failVerification(self, reason: object) -> None:
        self._stand_in.failVerification(reason)

    def abortConnection(self) -> None:
        # Twisted's SNI callback calls this when its lookup raises.
        self._stand_in.failVerification("the server-name lookup of the Twisted creator failed")


class TwistedCreator:
    """A Twisted object that makes the ``SSL.Connection`` of each connection.

    :ivar original: the Twisted object itself.
    :ivar is_client: which side its connections are for.
    :ivar hostname: the host name a client creator checks (and sends as SNI).
    :ivar context: its ``SSL.Context`` where it has one, else a fresh one
        that only fills the slot (the creator makes its own contexts).
    :ivar factory: the :class:`~txschannel.protocol.SchannelFactory` this
        adaptation was made for (its connections see that factory's ALPN
        list), or None.
    """

    def __init__(
        self,
        original: object,
        make_connection: Callable[[object], SSL.Connection],
        *,
        is_client: bool,
        hostname: str | None = None,
        context: SSL.Context | None = None,
        factory: object | None = None,
    ) -> None:
        self.original = original
        self.is_client = is_client
        self.hostname = hostname
        self.context = context if context is not None else SSL.Context(SSL.TLS_METHOD)
        self.factory = factory
        self._make_connection = make_connection

    def connection(
        self, on_failure: Callable[[str], None], app_data: object | None = None
    ) -> SSL.Connection:
        """A new connection from the creator, with a stand-in for Twisted's
        TLS protocol as its app data.

        :param on_failure: a bound method, called (while its object lives)
            with the reason when Twisted's verification refuses the peer.
        :param app_data: what the stand-in takes every other attribute from
            (the transport's protocol); ignored when adapted for a factory.
        """
        stand_in = _ProtocolStandIn(on_failure, app_data)
        if self.factory is not None:
            seen = _FactoryStandIn(self.factory, stand_in)
            connection = self._make_connection(seen)
            # Twisted's ALPN select callback finds "the protocol" as app data.
            connection.set_app_data(seen)
            return connection
        connection = self._make_connection(stand_in)
        if connection.get_app_data() is None:
            # (A creator may have set its own.)
            connection.set_app_data(stand_in)
        return connection


def _context_of(creator: object, *names: str) -> SSL.Context | None:
    # (Twisted's creators keep theirs as _ctx, some objects as _context;
    # neither is public. None: the creator makes its own contexts, and a
    # fresh one only fills the slot.)
    for name in names:
        context = getattr(creator, name, None)
        if context:
            return context if isinstance(context, SSL.Context) else None
    return None


def _hostname_of(creator: object) -> str | None:
    # (optionsForClientTLS keeps the name it checks only here.)
    hostname = getattr(creator, "_hostnameASCII", None)
    return hostname if isinstance(hostname, str) else None


def adapt(creator: object, is_client: bool | None) -> TwistedCreator | SSL.Context:
    """What :meth:`Credentials.from_twisted` makes its credentials from: the
    creator adapted, or the ``SSL.Context`` of a legacy ``getContext()``
    factory (whose own verify settings judge the peer, as in Twisted).

    :param is_client: the side wanted; None: a creator that can make both
        is a server's if it has a private key, a legacy factory a server's.
    :raises TypeError: *creator* is none of those, or cannot serve the side
        *is_client* asks for.
    """
    from twisted.internet import interfaces

    client = interfaces.IOpenSSLClientConnectionCreator.providedBy(creator)
    server = interfaces.IOpenSSLServerConnectionCreator.providedBy(creator)
    if client and server and is_client is None:
        # CertificateOptions can make both; one with its own certificate
        # and key is a server's, one without can only be a client's.
        is_client = getattr(creator, "privateKey", None) is None
    made: Any = creator
    if client and is_client is not False:
        return TwistedCreator(
            creator,
            made.clientConnectionForTLS,
            is_client=True,
            hostname=_hostname_of(creator),
            context=_context_of(creator, "_ctx"),
        )
    if server and is_client is not True:
        return TwistedCreator(
            creator,
            made.serverConnectionForTLS,
            is_client=False,
            context=_context_of(creator, "_ctx"),
        )
    get_context = getattr(creator, "getContext", None)
    if callable(get_context):
        context = get_context()
        if not isinstance(context, SSL.Context):
            raise TypeError(f"{creator!r}.getContext() returned {context!r}, not an SSL.Context")
        return context
    if client or server:
        wanted = "client" if is_client else "server"
        raise TypeError(f"{creator!r} cannot make {wanted} connections")
    raise TypeError(
        f"{creator!r} is not Credentials, an IOpenSSLClientConnectionCreator, "
        "an IOpenSSLServerConnectionCreator or a context factory"
    )


def adapt_for_factory(value: object, is_client: bool, factory: object) -> TwistedCreator:
    """*value* (a creator or a context factory) adapted for one
    :class:`~txschannel.protocol.SchannelFactory`, whose connections then see
    that factory's wrapped factory (for ALPN).

    Anything but a creator goes as in Twisted's TLSMemoryBIOFactory
    (``_tls_legacy.oldest``): the same warning and TypeErrors, in the same
    words, which Twisted's own test_brokenContextFactoryErrors compares.

    :raises TypeError: *value* is no TLS configuration.
    """
    from twisted.internet import interfaces

    made: Any = value
    if is_client and interfaces.IOpenSSLClientConnectionCreator.providedBy(value):
        return TwistedCreator(
            value,
            made.clientConnectionForTLS,
            is_client=True,
            hostname=_hostname_of(value),
            context=_context_of(value, "_ctx", "_context"),
            factory=factory,
        )
    if not is_client and interfaces.IOpenSSLServerConnectionCreator.providedBy(value):
        return TwistedCreator(
            value,
            made.serverConnectionForTLS,
            is_client=False,
            context=_context_of(value, "_ctx", "_context"),
            factory=factory,
        )
    get_context = getattr(value, "getContext", None)
    if not interfaces.IOpenSSLContextFactory.providedBy(value):
        side = "Client" if is_client else "Server"
        warnings.warn(
            f"{value} does not explicitly provide any OpenSSL connection-creator "
            f"{side} interface; neither IOpenSSL{side}ConnectionCreator, nor "
            "IOpenSSLContextFactory.",
            LegacyContextFactoryWarning,
            # (The caller of SchannelFactory, through its credentials setter.)
            stacklevel=5,
        )
    if not callable(get_context):
        role = "client" if is_client else "server"
        error = TypeError(f"{value} does not even have a `getContext` method")
        if hasattr(error, "add_note"):  # Python 3.11: the hint, in the traceback
            error.add_note(
                f"SchannelFactory takes txschannel Credentials, an "
                f"IOpenSSL{role.capitalize()}ConnectionCreator such as "
                "optionsForClientTLS(...) or CertificateOptions, or a context factory"
            )
        raise error
    context = get_context()
    if not isinstance(context, SSL.Context):
        raise TypeError(f"{value}'s `getContext` method doesn't return a `Context`")

    def make_connection(protocol: object) -> SSL.Connection:
        # As Twisted does for these legacy factories: ask again for
        # every connection, so a factory that rotates its context works.
        return SSL.Connection(get_context(), None)

    return TwistedCreator(
        value, make_connection, is_client=is_client, context=context, factory=factory
    )
