"""``--route NAME=ENDPOINT``: the backend is chosen by the server name the client asked for.

Each route maps a server name (``api.example.com``) or a one-label wildcard
(``*.example.com``, which matches ``a.example.com`` but neither
``example.com`` nor ``a.b.example.com``, as a certificate's wildcard does)
to a client endpoint. An exact name wins over a wildcard. Names are
compared without case and without one trailing dot (the DNS root), in their
ASCII (IDNA) form. A wildcard stands for one label of 1 to 63 letters,
digits and inner hyphens; a name no certificate could carry (an empty
label, as in ``.example.com`` or ``example.com..``, a ``*``, a label over
63 characters, over 253 characters in all) matches no route. A server
name no route matches goes to ``--connect``; with no ``--connect`` the
handshake itself is refused with TLS's ``unrecognized_name`` alert (the
client learns why, and no backend connection is ever opened), as is a
client that sends no server name.

The refusal happens in OpenSSL's server-name callback, which is also where
an ``sni=`` folder picks its certificate: :meth:`Router.install` puts a
callback on the credentials that does both.
"""

from __future__ import annotations

import ipaddress
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType

import idna
from OpenSSL import SSL
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.logger import Logger

from txschannel.credentials import Credentials, Verification
from txschannel.peertext import PeerText
from txschannel.status import Status

__all__ = ["Route", "Router", "UnrecognizedName", "normalize_route_name"]

_log = Logger(namespace="txschannel")

#: Seconds between two warnings about refused server names.
_WARNING_INTERVAL = 10.0

#: One label of a host name: letters, digits and hyphens, no hyphen at either end.
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
#: The longest server name, without its trailing dot (RFC 1035's 255 bytes on the wire).
_MAX_NAME = 253


class UnrecognizedName(Exception):
    """Raised in the server-name callback: OpenSSL answers ``unrecognized_name``."""


def _a_label(name: str) -> str:
    try:
        return idna.encode(name, uts46=True).decode("ascii")
    except idna.IDNAError:
        # Ordinary ASCII names with underscores and such: judged below.
        return name.lower()


def normalize_route_name(name: str) -> str:
    """The form a route's *name* is compared in: lower case, ASCII, no trailing dot.

    One trailing dot (the DNS root) is dropped, so ``example.com.`` is
    ``example.com``. A wildcard is ``*.`` before a name: it stands for
    exactly one label.

    :raises ValueError: *name* cannot be a server name: empty, an IP
        address, an empty label (``a..b``, ``.a``, two trailing dots), a
        label of more than 63 characters or other than letters, digits and
        inner hyphens, more than 253 characters, or a wildcard other than a
        whole first label.
    """
    text = name.strip()
    if text.endswith("."):
        text = text[:-1]
    if not text:
        raise ValueError("expected a server name, such as api.example.com or *.example.com")
    try:
        ipaddress.ip_address(text)
    except ValueError:
        pass
    else:
        raise ValueError(
            "an IP address is never a server name (clients send none for addresses); "
            "use --connect for them"
        )
    wildcard = text.startswith("*.")
    rest = text[2:] if wildcard else text
    if "*" in rest:
        raise ValueError(
            "a wildcard must be a whole first label followed by a name, such as *.example.com"
        )
    if "" in rest.split("."):
        # Checked before IDNA, which would drop some empty labels silently.
        raise ValueError("a server name has no empty labels (no leading dot, no '..')")
    ascii_name = _a_label(rest)
    labels = ascii_name.split(".")
    if any(len(label) > 63 for label in labels):
        raise ValueError("a label of a server name has at most 63 characters")
    if not all(_LABEL.fullmatch(label) for label in labels):
        raise ValueError("not a valid server name (labels of letters, digits and hyphens)")
    normalized = ("*." if wildcard else "") + ascii_name
    if len(normalized) > _MAX_NAME:
        raise ValueError(f"a server name has at most {_MAX_NAME} characters")
    return normalized


def _normalize_offered(name: str | None) -> str | None:
    """The name a client sent, in the form routes are compared in, or None.

    None also for what no route can match: an empty label (``.a``,
    ``a..b``, ``a.`` followed by another dot), a label that is not letters,
    digits and inner hyphens (``*``, ``_``, anything not ASCII) or longer
    than 63 characters, a name longer than 253 characters, an IPv4 address.
    Such a name goes to the default route, as one no route names does.
    """
    if not name:
        return None
    if not name.isascii():
        # Clients send A-labels (IDNA's ASCII form); str.lower() would also
        # turn some other letters into ASCII ones (KELVIN SIGN into "k").
        return None
    text = name.lower()
    if text.endswith("."):
        text = text[:-1]
    if not text or len(text) > _MAX_NAME:
        return None
    if not all(_LABEL.fullmatch(label) for label in text.split(".")):
        return None
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return text
    return None


@dataclass(frozen=True)
class Route:
    """One backend: the server name (or wildcard) it serves, and where to connect.

    :ivar name: the normalized name or ``*.`` wildcard (``None`` for the
        default, ``--connect``).
    :ivar description: the endpoint as given, for log lines.
    :ivar endpoint: the client endpoint to connect to.
    """

    name: str | None
    description: str
    endpoint: IStreamClientEndpoint


class Router:
    """Picks a :class:`Route` by server name.

    :param routes: the ``--route`` routes, each with a normalized name
        (see :func:`normalize_route_name`).
    :param default: the route for every other name (``--connect``), or None.
    :raises ValueError: two routes for the same name.
    """

    def __init__(
        self, routes: Sequence[Route], default: Route | None, clock: IReactorTime | None = None
    ) -> None:
        self.routes = list(routes)
        self.default = default
        self._clock = clock
        self._warned_at: float | None = None
        self._unwarned = 0
        self._exact: dict[str, Route] = {}
        self._wildcards: dict[str, Route] = {}
        for route in routes:
            assert route.name is not None
            table = self._wildcards if route.name.startswith("*.") else self._exact
            key = route.name[2:] if route.name.startswith("*.") else route.name
            if key in table:
                raise ValueError(f"two routes for {route.name}")
            table[key] = route

    def pick(self, server_name: str | None) -> Route | None:
        """The route for *server_name* (as the client sent it), the default, or None.

        A name no route could match (see :func:`_normalize_offered`) gets
        the default, as a name no route names does.
        """
        name = _normalize_offered(server_name)
        if name is not None:
            route = self._exact.get(name)
            if route is not None:
                return route
            _, dot, parent = name.partition(".")
            if dot:
                route = self._wildcards.get(parent)
                if route is not None:
                    return route
        return self.default

    def _refused(self, name: str | None, connection: SSL.Connection | None = None) -> None:
        # OpenSSL only knows that the server-name callback failed ("callback
        # failed"): the reason given here becomes the handshake's error, so
        # that the connection's own lines (its handshake failure, its close
        # line) name the refused name, every time. (repr: the client chose
        # the name; the log escapes it once more.)
        verification = connection.get_app_data() if connection is not None else None
        if isinstance(verification, Verification) and verification.failure is None:
            offered = f"server name {name!r}" if name is not None else "no server name"
            verification.failure = (
                Status.ILLEGAL_MESSAGE,
                f"refused {offered} with unrecognized_name: no --route matches it "
                "and there is no --connect",
            )
        # And a summary here, at most once every _WARNING_INTERVAL seconds.
        self._unwarned += 1
        clock = self._clock
        if clock is None:
            from twisted.internet import reactor

            clock = self._clock = reactor
        assert clock is not None
        now = clock.seconds()
        if self._warned_at is not None and now - self._warned_at < _WARNING_INTERVAL:
            return
        _log.warn(
            "refused server name {name} with unrecognized_name: no --route matches it and "
            "there is no --connect ({count} refusal(s) since the last such line)",
            name=PeerText(repr(name)) if name is not None else "(none sent)",
            count=self._unwarned,
        )
        self._warned_at = now
        self._unwarned = 0

    def install(self, credentials: Credentials) -> None:
        """Refuse names with no route in *credentials*' handshakes (``unrecognized_name``).

        Call it before the credentials serve their first handshake: at
        start, and for the new credentials of every reload. With a default
        route nothing is refused and nothing is installed.
        """
        if self.default is not None:
            return
        _quiet_refusals()
        # The per-name contexts of an sni= folder; the callback installed
        # here replaces the one that switched to them, so it switches too.
        named: dict[str, SSL.Context] = dict(credentials.sni_contexts)

        def server_name(connection: SSL.Connection) -> None:
            raw = connection.get_servername()
            offered = raw.decode("ascii", "replace") if raw else None
            if self.pick(offered) is None:
                self._refused(offered, connection)
                raise UnrecognizedName(offered)
            switched = named.get(_normalize_offered(offered) or "")
            if switched is not None:
                connection.set_context(switched)

        credentials.openssl_context.set_tlsext_servername_callback(server_name)


_previous_hook = None


def _quiet_refusals() -> None:
    # pyOpenSSL reports an exception raised in the server-name callback to
    # sys.excepthook before answering with the alert: a refusal is not an
    # error, and a client sending unknown names must not fill the log with
    # tracebacks. Other exceptions still reach the previous hook.
    global _previous_hook
    if _previous_hook is not None:
        return
    _previous_hook = previous = sys.excepthook

    def hook(
        kind: type[BaseException], value: BaseException, traceback: TracebackType | None
    ) -> None:
        if isinstance(value, UnrecognizedName):
            return
        previous(kind, value, traceback)

    sys.excepthook = hook
