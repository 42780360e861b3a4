"""TLS over any Twisted stream endpoint: ``schannel:`` endpoint strings.

Twisted's own ``ssl:`` and ``tls:`` endpoints only speak TCP. Here TLS is a
layer put on top of *any* stream endpoint, so the description after the
``schannel:`` prefix is a complete inner endpoint::

    schannel:tcp:8443:certificate=server.pem
    schannel:unix:/run/app.sock:certificate=server.pem
    schannel:haproxy:tcp:8443:certificate=server.pem
    schannel:tcp:example.com:443:trustRoots=ca.pem
    schannel:tcp:443:certificate=site.pem:ocsp=auto

The options that belong to txschannel (:data:`SERVER_OPTIONS`,
:data:`CLIENT_OPTIONS`) are taken out of the description; everything else is
quoted again and handed to :func:`~twisted.internet.endpoints.serverFromString`
or :func:`~twisted.internet.endpoints.clientFromString`. All checking happens
while the string is parsed: a typo, a missing file or a key that does not
match its certificate is a :class:`ValueError` naming it, never a failure at
the first connection.

The plugin module ``twisted/plugins/txschannel_endpoints.py`` registers
:class:`SchannelServerParser` and :class:`SchannelClientParser` with
Twisted, so every Twisted program (``twist web --listen schannel:...``)
understands the prefix once txschannel is installed.
"""

from __future__ import annotations

import difflib
import os
import re
import shlex
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
    IStreamClientEndpointStringParserWithReactor,
    IStreamServerEndpoint,
    IStreamServerEndpointStringParser,
)
from twisted.logger import Logger
from twisted.plugin import IPlugin
from zope.interface import implementer

from txschannel.credentials import (
    Credentials,
    read_passphrase,
    sni_default,
    validity_warnings,
)
from txschannel.haproxy import server_from_string
from txschannel.keylog import open_key_log
from txschannel.ocsp import FolderStapler, OCSPError, Stapler
from txschannel.protocol import (
    DEFAULT_HANDSHAKE_MEMORY,
    DEFAULT_PRE_HANDSHAKE_BUFFER,
    SchannelFactory,
)
from txschannel.validation import VALIDATIONS

__all__ = [
    "CLIENT_OPTIONS",
    "SERVER_OPTIONS",
    "SchannelClientEndpoint",
    "SchannelClientParser",
    "SchannelServerEndpoint",
    "SchannelServerParser",
    "parse_client",
    "parse_error_text",
    "parse_server",
    "unparse",
]

#: The options a ``schannel:`` server string takes for itself.
SERVER_OPTIONS: tuple[str, ...] = (
    "certificate",
    "privateKey",
    "chain",
    "clientCA",
    "requireClientCertificate",
    "alpn",
    "minimumVersion",
    "maximumVersion",
    "sni",
    "handshakeTimeout",
    "handshakeMemory",
    "passphraseFile",
    "ocspResponse",
    "ocsp",
    "ocspAllowPrivate",
    "keyLogFile",
)

#: The options a ``schannel:`` client string takes for itself.
CLIENT_OPTIONS: tuple[str, ...] = (
    "hostname",
    "trustRoots",
    "certificate",
    "privateKey",
    "alpn",
    "minimumVersion",
    "maximumVersion",
    "passphraseFile",
    "validation",
    "keyLogFile",
)

_VERSIONS = ("TLSv1.2", "TLSv1.3")
_OLD_VERSIONS = ("SSLv3", "TLSv1", "TLSv1.0", "TLSv1.1")
_TRUE = ("yes", "true", "on", "1")
_FALSE = ("no", "false", "off", "0")

# The options of the inner endpoints people use most, to list next to ours
# when a name is not recognised. Other endpoint types are not introspected:
# their parsers take **kwargs and only fail when called.
_INNER_SERVER_OPTIONS: dict[str, tuple[str, ...]] = {
    "tcp": ("port", "interface", "backlog"),
    "tcp6": ("port", "interface", "backlog"),
    "unix": ("address", "mode", "backlog", "lockfile"),
    "systemd": ("domain", "index", "name"),
}
_INNER_CLIENT_OPTIONS: dict[str, tuple[str, ...]] = {
    "tcp": ("host", "port", "timeout", "bindAddress"),
    "unix": ("path", "timeout", "lockfile"),
}
# Inner endpoint types that take no options of their own and pass them all
# to the endpoint they wrap.
_WRAPPERS = ("haproxy",)
# Inner client endpoints whose host is the name the server's certificate
# must carry (host and port are positional or keywords, as in tcp:).
_HOST_ENDPOINTS = ("tcp", "tcp6", "ssl", "tls")

# Spellings from Twisted's ssl:/tls: endpoints, to point people at ours.
_TWISTED_SPELLINGS: dict[str, dict[str, str]] = {
    "server": {"certKey": "certificate", "extraCertChain": "chain", "caCertsDir": "clientCA"},
    "client": {"caCertsDir": "trustRoots", "certKey": "certificate"},
}

# Twisted's string functions carry no annotations; these give them types.
# (haproxy: is our own: see txschannel.haproxy.)
_server_from_string: Callable[[Any, str], IStreamServerEndpoint] = server_from_string
_client_from_string: Callable[[Any, str], IStreamClientEndpoint] = clientFromString

_log = Logger(namespace="txschannel")

_UNEXPECTED = re.compile(r"unexpected keyword argument '([^']+)'")
_MISSING = re.compile(r"missing \d+ required (?:positional |keyword-only )?arguments?: (.+)")
_NOT_AN_INTEGER = re.compile(r"invalid literal for int\(\) with base (\d+): '(.*)'\Z")
_NOT_A_NUMBER = re.compile(r"could not convert string to float: '(.*)'\Z")


@implementer(IStreamServerEndpoint)
class SchannelServerEndpoint:
    """Accept TLS connections over any stream server endpoint.

    Each connection the *inner* endpoint accepts is wrapped in a
    :class:`~txschannel.protocol.SchannelFactory` server connection before
    the application's protocol sees it. Credentials are checked when
    :meth:`listen` makes that factory: a Twisted creator for the wrong side,
    or something that is no TLS configuration at all, fails the
    ``Deferred`` it returns.

    :param inner: the endpoint that accepts the raw byte streams (TCP, UNIX,
        systemd, haproxy, ...).
    :param credentials: the server :class:`~txschannel.Credentials`, or a
        Twisted server TLS creator (``CertificateOptions``, ...).
    :param handshake_timeout: seconds a client may take to finish the
        handshake before it is dropped; ``None`` for no limit.
    :param max_pre_handshake_buffer: how many bytes a client may have
        waiting for the handshake at once (see
        :class:`~txschannel.protocol.SchannelFactory`).
    :param handshake_memory: the bytes all unfinished handshakes on one
        listening port may hold together; past it new handshakes are
        refused (see :class:`~txschannel.protocol.SchannelFactory`).
    :param clock: the clock for the handshake timeout (the reactor by
        default).
    :param rebuild: how to make the credentials again from their source
        files, for :meth:`reload`; endpoints made from a string have one.
    :param keep_client_hello: have each connection keep the client's
        ClientHello (see :class:`~txschannel.protocol.SchannelFactory`); an
        attribute too, read when :meth:`listen` is called.
    :param stapler: an OCSP :class:`~txschannel.ocsp.Stapler` for the
        certificate, or a :class:`~txschannel.ocsp.FolderStapler` for the
        certificates of an ``sni`` folder (``ocspResponse=`` and
        ``ocsp=auto`` make them): it is
        installed on the credentials (and on any assigned later), started
        when the first port of this endpoint starts listening, reloaded by
        :meth:`reload` and stopped when the last port stops listening. Also
        an attribute.
    :raises TypeError: a *stapler* with credentials that are not
        :class:`~txschannel.Credentials` (a Twisted creator).
    """

    def __init__(
        self,
        inner: IStreamServerEndpoint,
        credentials: Credentials | object,
        *,
        handshake_timeout: float | None = 30.0,
        max_pre_handshake_buffer: int = DEFAULT_PRE_HANDSHAKE_BUFFER,
        handshake_memory: int | None = DEFAULT_HANDSHAKE_MEMORY,
        clock: IReactorTime | None = None,
        rebuild: Callable[[], Credentials] | None = None,
        keep_client_hello: bool = False,
        stapler: Stapler | FolderStapler | None = None,
    ) -> None:
        self.inner = inner
        self.keep_client_hello = keep_client_hello
        self.stapler = stapler
        # How many of the factories made by listen() a port uses now: the
        # stapler runs while there is one.
        self._serving = 0
        self.handshake_timeout = handshake_timeout
        self.max_pre_handshake_buffer = max_pre_handshake_buffer
        self.handshake_memory = handshake_memory
        self._clock = clock
        self._rebuild = rebuild
        # Kept as given: SchannelFactory turns a Twisted creator into
        # credentials bound to its own connections.
        self._credentials = credentials
        # Every factory made by listen(), so that new credentials reach the
        # ports already listening; weak, because a port that stopped
        # listening should not be kept alive by its endpoint.
        self._factories: weakref.WeakSet[Any] = weakref.WeakSet()
        if stapler is not None:
            self._install(credentials)

    @property
    def credentials(self) -> Credentials | object:
        """The credentials given to each new connection.

        Assigning new credentials affects connections accepted from then on,
        on every port this endpoint is listening on; connections already
        open keep the credentials they started with.

        With a :attr:`stapler`, new credentials get it before they serve a
        handshake.

        :raises TypeError: (assignment) not a TLS configuration, or not
            :class:`~txschannel.Credentials` with a :attr:`stapler`.
        :raises ValueError: (assignment) client credentials.
        """
        return self._credentials

    @credentials.setter
    def credentials(self, credentials: Credentials | object) -> None:
        if self.stapler is not None:
            self._install(credentials)
        # The factories check the value (the first one refuses a bad value
        # before anything has changed), then the endpoint keeps it for the
        # ports it will open later.
        for factory in list(self._factories):
            factory.credentials = credentials
        self._credentials = credentials

    def _install(self, credentials: Credentials | object) -> None:
        assert self.stapler is not None
        if not isinstance(credentials, Credentials):
            raise TypeError(
                "OCSP stapling needs txschannel Credentials, not "
                f"{type(credentials).__name__}: a Twisted creator's context is its own"
            )
        self.stapler.install(credentials)

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        """Listen on the inner endpoint, with TLS around *protocolFactory*.

        With a :attr:`stapler`, it starts when the port starts listening
        (before the port accepts anyone) and stops when the last port of
        this endpoint stops listening.

        :return: the inner endpoint's ``Deferred`` for the listening port;
            it fails with ``TypeError``/``ValueError`` when the credentials
            do not fit a server.
        """
        try:
            factory = _ServerFactory(
                self,
                self._credentials,
                False,
                protocolFactory,
                self._clock,
                handshake_timeout=self.handshake_timeout,
                max_pre_handshake_buffer=self.max_pre_handshake_buffer,
                handshake_memory=self.handshake_memory,
                keep_client_hello=self.keep_client_hello,
                release_quiet_buffers=True,
            )
        except (TypeError, ValueError):
            return fail()
        self._factories.add(factory)
        listening: Deferred[IListeningPort] = self.inner.listen(factory)
        return listening

    def _port_started(self) -> None:
        self._serving += 1
        if self._serving == 1 and self.stapler is not None:
            self.stapler.start()

    def _port_stopped(self) -> None:
        self._serving -= 1
        if self._serving == 0 and self.stapler is not None:
            self.stapler.stop()

    def reload(self, *, warn: bool = True, why: str = "reload") -> Credentials:
        """Build the credentials again from their files and use them from now on.

        Certificates, keys, chains, client CAs, the ``sni`` folder and the
        passphrase file are read again, so renewed files take effect without
        a restart. Connections already open are not disturbed.

        The :attr:`stapler`, if any, is installed on the new credentials
        and reloaded (:meth:`Stapler.reload <txschannel.ocsp.Stapler.reload>`:
        the response file read again, or fetched again while listening);
        an OCSP response that cannot be had is logged, never raised.

        :param warn: log a warning (Twisted's logging, namespace
            ``txschannel``) for each certificate that has expired, is not
            valid yet or expires within 14 days (see
            :func:`~txschannel.credentials.validity_warnings`).
        :param why: what asked for the reload, for the stapler's log lines
            (``twist schannel`` says ``SIGHUP`` or ``--reload-interval``).
        :return: the new credentials.
        :raises ValueError: a file is now missing or bad (the message names
            it); the old credentials stay in use. Also raised when this
            endpoint was given ready-made credentials, with nothing to
            re-read.
        """
        if self._rebuild is None:
            raise ValueError(
                "this endpoint was given ready-made credentials, so there are no "
                "files to read again; make it from a schannel: string or pass rebuild="
            )
        credentials = self._rebuild()
        self.credentials = credentials
        if self.stapler is not None:
            self.stapler.reload(why)
        if warn:
            _warn_validity(credentials)
        return credentials

    def __repr__(self) -> str:
        return f"<SchannelServerEndpoint over {self.inner!r}>"


class _ServerFactory(SchannelFactory):
    """A server :class:`SchannelFactory` that tells its endpoint when a port uses it.

    Twisted starts a factory when the first port using it starts listening
    and stops it when the last one stops, however the port is stopped
    (``stopListening``, ``loseConnection``, an error); each :meth:`listen
    <SchannelServerEndpoint.listen>` makes one, so the endpoint counts its
    ports this way without wrapping them.
    """

    def __init__(self, endpoint: SchannelServerEndpoint, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._endpoint = endpoint

    def startFactory(self) -> None:
        """A port starts listening with this factory (before it accepts)."""
        super().startFactory()  # type: ignore[no-untyped-call]
        self._endpoint._port_started()

    def stopFactory(self) -> None:
        """No port uses this factory any more."""
        super().stopFactory()
        self._endpoint._port_stopped()


@implementer(IStreamClientEndpoint)
class SchannelClientEndpoint:
    """Connect over any stream client endpoint and speak TLS on the connection.

    :param inner: the endpoint that makes the raw byte stream (TCP, UNIX,
        ...).
    :param credentials: the client :class:`~txschannel.Credentials`, or a
        Twisted client creator such as ``optionsForClientTLS(...)``.
    :param target_name: the server name to send (SNI) and to check in the
        server's certificate; ``None`` only with credentials that carry a
        name of their own (a Twisted creator).
    :param clock: the clock for the transport's timers (the reactor by
        default).
    """

    def __init__(
        self,
        inner: IStreamClientEndpoint,
        credentials: Credentials | object,
        target_name: str | None,
        *,
        clock: IReactorTime | None = None,
    ) -> None:
        self.inner = inner
        self.credentials = credentials
        self.target_name = target_name
        self._clock = clock

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        """Connect the inner endpoint and start TLS on the new connection.

        :return: a ``Deferred`` that fires with the application's protocol
            once the inner connection is made (as Twisted's ``wrapClientTLS``
            does; the handshake follows), or fails as the inner endpoint's
            connection attempt does, or with ``TypeError``/``ValueError``
            when the credentials do not fit a client.
        """
        try:
            factory = SchannelFactory(
                self.credentials,
                True,
                protocolFactory,
                self._clock,
                target_name=self.target_name,
                release_quiet_buffers=True,
            )
        except (TypeError, ValueError):
            return fail()
        connecting: Deferred[Any] = self.inner.connect(factory)
        return connecting.addCallback(_wrapped_protocol)

    def __repr__(self) -> str:
        return f"<SchannelClientEndpoint to {self.target_name!r} over {self.inner!r}>"


def _wrapped_protocol(protocol: Any) -> IProtocol:
    wrapped: IProtocol = protocol.wrappedProtocol
    return wrapped


# -- parsing -----------------------------------------------------------------


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return str(value)


def _quote(value: str) -> str:
    # Twisted's quoteStringArgument escapes only "\" and ":"; "=" needs it
    # too in a positional argument or a key, or the tokenizer would split
    # there. A backslash before any character is taken literally, so
    # escaping "=" everywhere is always safe.
    for special in ("\\", ":", "="):
        value = value.replace(special, "\\" + special)
    return value


def unparse(args: Sequence[str], kwargs: Mapping[str, str]) -> str:
    """Write parsed endpoint arguments back as a description string.

    The inverse of Twisted's parser: ``serverFromString`` and
    ``clientFromString`` read the result as exactly *args* and *kwargs*,
    whatever colons, equals signs or backslashes the values hold.
    """
    parts = [_quote(arg) for arg in args]
    parts += [f"{_quote(key)}={_quote(value)}" for key, value in kwargs.items()]
    return ":".join(parts)


def _split(
    args: Sequence[object], kwargs: Mapping[str, object], ours: Sequence[str]
) -> tuple[list[str], dict[str, str], dict[str, str]]:
    """(inner args, our options, inner options), all as text."""
    texts = [_text(arg) for arg in args]
    options = {_text(key): _text(value) for key, value in kwargs.items()}
    mine = {key: value for key, value in options.items() if key in ours}
    theirs = {key: value for key, value in options.items() if key not in ours}
    if not texts or not texts[0]:  # "schannel" or "schannel:"
        raise ValueError(
            "schannel: no inner endpoint after the prefix; write it in full, "
            "e.g. schannel:tcp:8443:certificate=server.pem"
        )
    return texts, mine, theirs


def _inner_error(error: Exception, description: str, kind: str) -> ValueError:
    """A readable ValueError for a failure of the inner endpoint's parser."""
    ours = SERVER_OPTIONS if kind == "server" else CLIENT_OPTIONS
    known = _INNER_SERVER_OPTIONS if kind == "server" else _INNER_CLIENT_OPTIONS
    message = str(error)
    # The endpoint type that owns the other options: past wrappers such as
    # haproxy:, which hand all their options on to the endpoint they wrap.
    types = description.split(":")
    while len(types) > 1 and types[0].lower() in _WRAPPERS:
        types.pop(0)
    inner_type = types[0].lower()
    unexpected = _UNEXPECTED.search(message)
    if isinstance(error, TypeError) and unexpected is not None:
        name = unexpected.group(1)
        theirs: tuple[str, ...] = known.get(inner_type, ())
        valid = f"txschannel {kind} options: {', '.join(ours)}"
        if theirs:
            valid += f"; {inner_type} options: {', '.join(theirs)}"
        else:
            valid += f"; other options go to the inner {inner_type!r} endpoint"
        hint = ""
        spelling = _TWISTED_SPELLINGS[kind].get(name)
        if spelling is not None:
            hint = f" (that is Twisted's ssl: spelling; here it is {spelling})"
        else:
            close = difflib.get_close_matches(name, [*ours, *theirs], n=1)
            if close:
                hint = f" (did you mean {close[0]}?)"
        return ValueError(f"schannel: unknown option {name!r}{hint}. Valid options: {valid}")
    text = parse_error_text(error, description, kind)
    if text.startswith("incomplete: "):
        return ValueError(
            f"schannel: the inner endpoint {description!r} is {text}"
        )
    return ValueError(f"schannel: the inner endpoint {description!r} is not valid: {text}")


def parse_error_text(error: Exception, description: str, kind: str) -> str:
    """What Twisted's parser's *error* about endpoint *description* means, in
    the words of endpoint strings (``incomplete: it needs 'port'``, ``port
    'abc' is not a whole number``), not in those of the Python call that
    failed inside it.

    :param kind: ``"server"`` or ``"client"``: which parser failed.
    """
    message = str(error)
    missing = _MISSING.search(message)
    if isinstance(error, TypeError) and missing is not None:
        return f"incomplete: it needs {missing.group(1)}"
    unexpected = _UNEXPECTED.search(message)
    if isinstance(error, TypeError) and unexpected is not None:
        inner_type = description.split(":", 1)[0].lower()
        known = _INNER_SERVER_OPTIONS if kind == "server" else _INNER_CLIENT_OPTIONS
        names = known.get(inner_type, ())
        listed = f" (a {inner_type}: endpoint takes {', '.join(names)})" if names else ""
        return f"unknown option {unexpected.group(1)!r}{listed}"
    integer = _NOT_AN_INTEGER.search(message)
    number = _NOT_A_NUMBER.search(message)
    if isinstance(error, ValueError) and (integer or number):
        value = integer.group(2) if integer else number.group(1)  # type: ignore[union-attr]
        name = _option_holding(description, value, kind)
        said = f"{name} {value!r}" if name else repr(value)
        kind_of = "an octal number, such as 600" if integer and integer.group(1) == "8" else (
            "a whole number" if integer else "a number"
        )
        return f"{said} is not {kind_of}"
    return message or type(error).__name__


def _option_holding(description: str, value: str, kind: str) -> str | None:
    """The option of *description* (by name, or by position for the endpoint
    types whose options are known) whose text is *value*, if one is."""
    parts = [part.replace("\\:", ":") for part in re.split(r"(?<!\\):", description)]
    known = _INNER_SERVER_OPTIONS if kind == "server" else _INNER_CLIENT_OPTIONS
    names = known.get(parts[0].lower(), ())
    position = 0
    for part in parts[1:]:
        key, equals, given = part.partition("=")
        if equals:
            if given == value:
                return key
            continue
        if part == value:
            return names[position] if position < len(names) else None
        position += 1
    return None


def _inner_server(reactor: Any, description: str) -> IStreamServerEndpoint:
    try:
        endpoint = _server_from_string(reactor, description)
    except (TypeError, ValueError, KeyError, IndexError) as e:
        raise _inner_error(e, description, "server") from None
    return endpoint


def _inner_client(reactor: Any, description: str) -> IStreamClientEndpoint:
    try:
        endpoint = _client_from_string(reactor, description)
    except (TypeError, ValueError, KeyError, IndexError) as e:
        raise _inner_error(e, description, "client") from None
    return endpoint


def _version(options: Mapping[str, str], name: str, default: str | None) -> str | None:
    value = options.get(name)
    if value is None:
        return default
    for known in _VERSIONS:
        if value.lower() == known.lower():
            return known
    if value.lower() in (old.lower() for old in _OLD_VERSIONS):
        raise ValueError(
            f"schannel: {name}={value}: versions below TLS 1.2 are not supported; "
            f"use {' or '.join(_VERSIONS)}"
        )
    raise ValueError(
        f"schannel: {name}={value}: unknown TLS version; use {' or '.join(_VERSIONS)}"
    )


def _boolean(options: Mapping[str, str], name: str) -> bool:
    value = options.get(name)
    if value is None:
        return False
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise ValueError(f"schannel: {name}={value}: expected yes or no")


_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}


def _size(options: Mapping[str, str], name: str, default: int) -> int:
    """A byte count: digits, optionally followed by K, M or G (binary units)."""
    value = options.get(name)
    if value is None:
        return default
    match = re.fullmatch(r"(\d+)([KMG]?)(?:i?B)?", value.strip(), re.IGNORECASE)
    if match is None or int(match.group(1)) <= 0:
        raise ValueError(
            f"schannel: {name}={value}: expected a positive number of bytes, "
            "such as 67108864 or 64M"
        )
    return int(match.group(1)) * _SIZE_UNITS[match.group(2).upper()]


def _alpn(options: Mapping[str, str]) -> tuple[str, ...]:
    value = options.get("alpn")
    if value is None:
        return ()
    names = tuple(name.strip() for name in value.split(","))
    if not all(names):
        raise ValueError(
            f"schannel: alpn={value}: an empty protocol name; write a comma list "
            "such as alpn=h2,http/1.1"
        )
    for name in names:
        if not name.isascii() or len(name) > 255:
            raise ValueError(f"schannel: alpn={value}: {name!r} is not a valid ALPN protocol name")
    return names


def _path(options: Mapping[str, str], name: str) -> str | None:
    value = options.get(name)
    if value is None:
        return None
    if not value:
        raise ValueError(f"schannel: {name}= is empty; give a file name")
    # Absolute, so that reload() finds the same file after a chdir (twistd
    # daemonising, for one).
    return os.path.abspath(value)


def _key_log(options: Mapping[str, str]) -> str | None:
    """The ``keyLogFile`` path, opened now (and warned about, once per process).

    Without the option the credentials fall back to ``$SSLKEYLOGFILE``.
    """
    path = _path(options, "keyLogFile")
    if path is not None:
        try:
            open_key_log(path, "keyLogFile=")
        except ValueError as e:
            raise ValueError(f"schannel: {e}") from None
    return path


def _warn_validity(credentials: Credentials) -> None:
    """Log each certificate of *credentials* that is out of date or nearly so."""
    # Once per file: an sni folder's DEFAULT.pem may serve as the
    # certificate and as a host of the folder.
    for warning in dict.fromkeys(validity_warnings(credentials)):
        # Not "warning=": Twisted's legacy observers take that key for a
        # warnings.warn() event.
        _log.warn("{validity}", validity=warning)


#: Key files already warned about in this process: once each (a --workers
#: worker inherits the set from the supervisor that parsed first).
_warned_keys: set[str] = set()


def _warn_readable_key(path: str | None) -> None:
    """Log once, naming *path*, when any user of this machine can read the key in it.

    Only other users count, not the file's group: a key readable by a
    group such as Debian's ``ssl-cert`` is a deliberate setup. A key inside
    a folder that other users cannot enter is out of their reach.
    """
    if path is None or path in _warned_keys:
        return
    try:
        mode = os.stat(path).st_mode
        reachable = all(
            os.stat(folder).st_mode & 0o001 for folder in _folders_above(path)
        )
    except OSError:
        return  # the credentials were just read from it: gone since
    if mode & 0o004 and reachable:
        _warned_keys.add(path)
        _log.warn(
            "{message}",
            message=f"the private key in {path!r} can be read by any user of this machine "
            f"(mode {mode & 0o7777:04o}): chmod 600 {shlex.quote(path)} "
            "(or 640 if a group must read it)",
        )


def _folders_above(path: str) -> list[str]:
    folders = []
    folder = os.path.dirname(os.path.abspath(path))
    while True:
        folders.append(folder)
        parent = os.path.dirname(folder)
        if parent == folder:
            return folders
        folder = parent


def _checked(build: Callable[[], Credentials]) -> Credentials:
    """Run a Credentials constructor, with its errors marked as ours."""
    try:
        return build()
    except ValueError as e:
        raise ValueError(f"schannel: {e}") from None


@dataclass(frozen=True)
class _ServerSettings:
    """The server options of a ``schannel:`` string, checked and typed.

    Without ``certificate``, the ``sni`` folder's ``DEFAULT.pem`` (or
    ``default.pem``) serves; it is looked up again at every build.
    """

    certificate: str | None
    private_key: str | None
    chain: str | None
    client_ca: str | None
    require_client_certificate: bool
    alpn: tuple[str, ...]
    minimum_version: str
    maximum_version: str | None
    sni: str | None
    handshake_timeout: float
    handshake_memory: int
    passphrase_file: str | None
    ocsp_response: str | None
    ocsp_auto: bool
    ocsp_allow_private: bool
    key_log_file: str | None

    @classmethod
    def from_options(cls, options: Mapping[str, str]) -> _ServerSettings:
        require = _boolean(options, "requireClientCertificate")
        client_ca = _path(options, "clientCA")
        if require and client_ca is None:
            raise ValueError(
                "schannel: requireClientCertificate needs clientCA=<PEM file or folder> "
                "(the CAs whose client certificates are accepted)"
            )
        sni = _path(options, "sni")
        certificate = _path(options, "certificate")
        if certificate is None and sni is None:
            raise ValueError(
                "schannel: a server needs certificate=<PEM file> "
                "(or sni=<folder> with a DEFAULT.pem in it)"
            )
        timeout_text = options.get("handshakeTimeout", "30")
        try:
            timeout = float(timeout_text)
        except ValueError:
            timeout = -1.0
        if not 0 < timeout < float("inf"):
            raise ValueError(
                f"schannel: handshakeTimeout={timeout_text}: expected a positive "
                "number of seconds"
            )
        minimum = _version(options, "minimumVersion", "TLSv1.2")
        assert minimum is not None
        maximum = _version(options, "maximumVersion", None)
        if maximum is not None and _VERSIONS.index(maximum) < _VERSIONS.index(minimum):
            raise ValueError(
                f"schannel: maximumVersion={maximum} is below minimumVersion={minimum}"
            )
        memory = _size(options, "handshakeMemory", DEFAULT_HANDSHAKE_MEMORY)
        if memory < DEFAULT_PRE_HANDSHAKE_BUFFER:
            raise ValueError(
                f"schannel: handshakeMemory={options['handshakeMemory']}: at least "
                f"{DEFAULT_PRE_HANDSHAKE_BUFFER} bytes (one ClientHello of the largest "
                "size OpenSSL accepts) are needed"
            )
        ocsp_response = _path(options, "ocspResponse")
        auto = options.get("ocsp")
        if auto is not None and auto.lower() != "auto":
            raise ValueError(
                f"schannel: ocsp={auto!r}: the only value is auto (or give ocspResponse=FILE)"
            )
        if auto is not None and ocsp_response is not None:
            raise ValueError("schannel: give ocspResponse=FILE or ocsp=auto, not both")
        allow_private = _boolean(options, "ocspAllowPrivate")
        if "ocspAllowPrivate" in options and auto is None:
            raise ValueError(
                "schannel: ocspAllowPrivate= only applies to ocsp=auto (it lets the fetch "
                "reach a responder on a loopback or private address)"
            )
        if ocsp_response is not None and sni is not None:
            raise ValueError(
                "schannel: ocspResponse= names one certificate's response; with an sni= "
                "folder use ocsp=auto, which staples each certificate's own"
            )
        return cls(
            certificate=certificate,
            private_key=_path(options, "privateKey"),
            chain=_path(options, "chain"),
            client_ca=client_ca,
            require_client_certificate=require,
            alpn=_alpn(options),
            minimum_version=minimum,
            maximum_version=maximum,
            sni=sni,
            handshake_timeout=timeout,
            handshake_memory=memory,
            passphrase_file=_path(options, "passphraseFile"),
            ocsp_response=ocsp_response,
            ocsp_auto=auto is not None,
            ocsp_allow_private=allow_private,
            key_log_file=_key_log(options),
        )

    def stapler(self, description: str, reactor: Any) -> Stapler | FolderStapler | None:
        """The OCSP stapler that ``ocspResponse`` or ``ocsp=auto`` ask for, if any.

        :param description: the endpoint, for the stapler's log lines.
        :raises ValueError: the response file does not verify for the
            certificate, its issuer is missing, or with ``ocsp=auto`` the
            certificate names no ``http://`` responder (the message says which).
        """
        if self.ocsp_response is None and not self.ocsp_auto:
            return None
        try:
            if self.sni is not None:
                return FolderStapler(
                    description, self._certificate(), self.sni, chain_file=self.chain,
                    allow_private=self.ocsp_allow_private, reactor=reactor,
                )
            # (from_options refused ocspResponse= with an sni folder.)
            assert self.certificate is not None
            return Stapler(
                description, self.certificate, chain_file=self.chain,
                response_file=self.ocsp_response, auto=self.ocsp_auto,
                allow_private=self.ocsp_allow_private, reactor=reactor,
            )
        except OCSPError as e:
            raise ValueError(f"schannel: {e}") from None

    def _certificate(self) -> str:
        """The certificate file: ``certificate``, or the sni folder's default."""
        if self.certificate is not None:
            return self.certificate
        assert self.sni is not None
        default = sni_default(self.sni)
        if default is None:
            raise ValueError(
                f"sni folder {self.sni!r} holds no DEFAULT.pem or default.pem and no "
                "certificate= was given: one of them must serve clients that ask "
                "for another name or none"
            )
        return default

    def credentials(self) -> Credentials:
        """Read the files and build the server credentials.

        :raises ValueError: naming the file and its problem.
        """
        return _checked(
            lambda: Credentials.server(
                certificate=self._certificate(),
                private_key=self.private_key,
                chain=() if self.chain is None else self.chain,
                client_ca=self.client_ca,
                require_client_certificate=self.require_client_certificate,
                alpn=self.alpn,
                minimum_version=self.minimum_version,
                maximum_version=self.maximum_version,
                sni=self.sni,
                passphrase=_passphrase(self.passphrase_file),
                key_log_file=self.key_log_file,
            )
        )


@dataclass(frozen=True)
class _ClientSettings:
    """The client options of a ``schannel:`` string, checked and typed."""

    hostname: str
    trust_roots: str
    certificate: str | None
    private_key: str | None
    alpn: tuple[str, ...]
    minimum_version: str
    maximum_version: str | None
    passphrase_file: str | None
    validation: str | None
    key_log_file: str | None

    @classmethod
    def from_options(
        cls, options: Mapping[str, str], args: Sequence[str], inner: Mapping[str, str]
    ) -> _ClientSettings:
        hostname = options.get("hostname") or _inner_host(args, inner)
        if not hostname:
            raise ValueError(
                f"schannel: a client over {args[0]!r} needs hostname=<name> "
                "(the name the server's certificate must carry); only TCP "
                "endpoints give one by default"
            )
        trust_roots = options.get("trustRoots", "system")
        if not trust_roots:
            raise ValueError("schannel: trustRoots= is empty; give system, a PEM file or a folder")
        if trust_roots != "system":
            trust_roots = os.path.abspath(trust_roots)
        certificate = _path(options, "certificate")
        private_key = _path(options, "privateKey")
        if private_key is not None and certificate is None:
            raise ValueError("schannel: privateKey needs certificate=<PEM file> as well")
        passphrase_file = _path(options, "passphraseFile")
        if passphrase_file is not None and certificate is None:
            raise ValueError(
                "schannel: passphraseFile decrypts a client certificate's key: "
                "it needs certificate=<PEM file> as well"
            )
        minimum = _version(options, "minimumVersion", "TLSv1.2")
        assert minimum is not None
        maximum = _version(options, "maximumVersion", None)
        if maximum is not None and _VERSIONS.index(maximum) < _VERSIONS.index(minimum):
            raise ValueError(
                f"schannel: maximumVersion={maximum} is below minimumVersion={minimum}"
            )
        memory = _size(options, "handshakeMemory", DEFAULT_HANDSHAKE_MEMORY)
        if memory < DEFAULT_PRE_HANDSHAKE_BUFFER:
            raise ValueError(
                f"schannel: handshakeMemory={options['handshakeMemory']}: at least "
                f"{DEFAULT_PRE_HANDSHAKE_BUFFER} bytes (one ClientHello of the largest "
                "size OpenSSL accepts) are needed"
            )
        validation = options.get("validation")
        if validation is not None and validation not in VALIDATIONS:
            raise ValueError(
                f"schannel: validation={validation!r}: use {' or '.join(VALIDATIONS)}"
            )
        return cls(
            hostname=hostname,
            trust_roots=trust_roots,
            certificate=certificate,
            private_key=private_key,
            alpn=_alpn(options),
            minimum_version=minimum,
            maximum_version=maximum,
            passphrase_file=passphrase_file,
            validation=validation,
            key_log_file=_key_log(options),
        )

    def credentials(self) -> Credentials:
        """Read the files and build the client credentials.

        :raises ValueError: naming the file and its problem.
        """
        return _checked(
            lambda: Credentials.client(
                trust_roots=self.trust_roots,
                certificate=self.certificate,
                private_key=self.private_key,
                alpn=self.alpn,
                minimum_version=self.minimum_version,
                maximum_version=self.maximum_version,
                passphrase=_passphrase(self.passphrase_file),
                validation=self.validation,
                key_log_file=self.key_log_file,
            )
        )


def _passphrase(path: str | None) -> bytes | None:
    """The passphrase in the file *path*, read now (a rotated one is picked up)."""
    return None if path is None else read_passphrase(path)


def _inner_host(args: Sequence[str], inner: Mapping[str, str]) -> str | None:
    """The host a TCP-like inner client endpoint connects to, if it names one."""
    if "host" in inner:
        return inner["host"]
    if args[0].lower() not in _HOST_ENDPOINTS:
        return None
    rest = args[1:]
    # The same reading as Twisted's tcp: client parser: "host:port" or,
    # when port= is a keyword, a lone positional host.
    if len(rest) == 2 or (len(rest) == 1 and "port" in inner):
        return rest[0]
    return None


def parse_server(reactor: Any, *args: object, **kwargs: object) -> SchannelServerEndpoint:
    """Build a server endpoint from a parsed ``schannel:`` description.

    *args* and *kwargs* are what Twisted's parser made of everything after
    the prefix. Our options are checked and the files read now (an
    ``ocspResponse`` file too); a certificate that has expired, is not
    valid yet or expires within 14 days is logged as a warning (Twisted's
    logging, namespace ``txschannel``), since it starts anyway; so is, once
    per file, a private key (``privateKey=``, or ``certificate=`` holding
    it) that any user of the machine can read.

    ``ocspResponse=FILE`` or ``ocsp=auto`` give the endpoint an OCSP
    :class:`~txschannel.ocsp.Stapler` (see :mod:`txschannel.ocsp`), which
    fetches with *reactor*.

    :raises ValueError: naming the option, file or inner-endpoint problem.
    """
    inner_args, ours, theirs = _split(args, kwargs, SERVER_OPTIONS)
    inner = _inner_server(reactor, unparse(inner_args, theirs))
    settings = _ServerSettings.from_options(ours)
    credentials = settings.credentials()
    # The stapler's log lines name the endpoint as written, less its own options.
    described = {
        _text(key): _text(value) for key, value in kwargs.items()
        if _text(key) not in ("ocspResponse", "ocsp", "ocspAllowPrivate")
    }
    stapler = settings.stapler("schannel:" + unparse(inner_args, described), reactor)
    _warn_validity(credentials)
    _warn_readable_key(settings.private_key or settings.certificate)
    return SchannelServerEndpoint(
        inner,
        credentials,
        handshake_timeout=settings.handshake_timeout,
        handshake_memory=settings.handshake_memory,
        clock=reactor if IReactorTime.providedBy(reactor) else None,
        rebuild=settings.credentials,
        stapler=stapler,
    )


def parse_client(reactor: Any, *args: object, **kwargs: object) -> SchannelClientEndpoint:
    """Build a client endpoint from a parsed ``schannel:`` description.

    A client certificate out of its validity period, or within 14 days of
    its end, and a key file any user can read are logged as warnings, as
    in :func:`parse_server`.

    :raises ValueError: naming the option, file or inner-endpoint problem.
    """
    inner_args, ours, theirs = _split(args, kwargs, CLIENT_OPTIONS)
    inner = _inner_client(reactor, unparse(inner_args, theirs))
    settings = _ClientSettings.from_options(ours, inner_args, theirs)
    credentials = settings.credentials()
    _warn_validity(credentials)
    _warn_readable_key(settings.private_key or settings.certificate)
    return SchannelClientEndpoint(
        inner,
        credentials,
        settings.hostname,
        clock=reactor if IReactorTime.providedBy(reactor) else None,
    )


@implementer(IPlugin, IStreamServerEndpointStringParser)
class SchannelServerParser:
    """The ``schannel:`` server string parser that Twisted finds as a plugin."""

    prefix = "schannel"

    def parseStreamServer(
        self, reactor: Any, *args: object, **kwargs: object
    ) -> SchannelServerEndpoint:
        """See :func:`parse_server`.

        :raises ValueError: naming the option, file or inner-endpoint problem.
        """
        return parse_server(reactor, *args, **kwargs)


@implementer(IPlugin, IStreamClientEndpointStringParserWithReactor)
class SchannelClientParser:
    """The ``schannel:`` client string parser that Twisted finds as a plugin."""

    prefix = "schannel"

    def parseStreamClient(
        self, reactor: Any, *args: object, **kwargs: object
    ) -> SchannelClientEndpoint:
        """See :func:`parse_client`.

        :raises ValueError: naming the option, file or inner-endpoint problem.
        """
        return parse_client(reactor, *args, **kwargs)
