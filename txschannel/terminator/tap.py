"""``twist schannel``: a TLS terminator and tunnel, as a Twisted service.

``twist schannel [--listen ENDPOINT]... [--connect ENDPOINT]`` accepts on
every listen endpoint and relays each connection both ways to a new
connection on the connect endpoint (:mod:`txschannel.terminator.relay`); either side
may be plain or ``schannel:``. Without ``--connect`` it serves the inspector
(:mod:`txschannel.terminator.inspector`). Without ``--listen`` it listens on
``schannel:tcp:8443`` with a self-signed certificate for ``localhost``,
``127.0.0.1`` and ``::1`` that it creates once and keeps in a state folder.

Around every accepted connection sits a gate (:class:`ConnectionGate`) that
applies ``--allow-cn`` / ``--allow-san`` once the handshake is done, counts
the bytes each way and writes one log line when the connection closes.
``SIGHUP`` and ``--reload-interval`` re-read the certificate files of the
``schannel:`` listen endpoints.

The plugin module ``twisted/plugins/txschannel_tap.py`` makes this module's
:class:`Options` and :func:`makeService` the ``schannel`` subcommand of
``twist``.
"""

from __future__ import annotations

import datetime
import errno
import ipaddress
import os
import re
import shlex
import shutil
import signal
import socket
import stat
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL
from twisted.application import service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHalfCloseableProtocol,
    IHandshakeListener,
    IListeningPort,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
    IStreamServerEndpoint,
    ITransport,
)
from twisted.internet.protocol import Factory, connectionDone
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogEvent,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    textFileLogObserver,
)
from twisted.python import usage
from twisted.python.failure import Failure
from zope.interface import implementer, providedBy

from txschannel.context import Attributes
from txschannel.credentials import Credentials, validity_warnings
from txschannel.endpoints import (
    SchannelClientEndpoint,
    SchannelServerEndpoint,
    parse_error_text,
)
from txschannel.haproxy import server_from_string
from txschannel.peertext import PeerText, printable
from txschannel.protocol import ConnectionTruncated, declare_provides
from txschannel.status import SecurityError
from txschannel.terminator import notify
from txschannel.terminator.access import AccessPolicy, parse_allowed_name
from txschannel.terminator.health import Health
from txschannel.terminator.inspector import InspectorSite, _address
from txschannel.terminator.limits import (
    STATUS_IDLE_TIMEOUT,
    STATUS_MAX_CONNECTIONS,
    ConnectionLimit,
)
from txschannel.terminator.proxyheader import header_v1, header_v2, tls_facts
from txschannel.terminator.relay import RelayFactory, no_delay, probe_window, reset, send_progress
from txschannel.terminator.routing import Route, Router, normalize_route_name
from txschannel.terminator.workers import (
    AdoptingReactor,
    RecordingReactor,
    Supervisor,
    Sweep,
    Worker,
    WorkersError,
    make_metrics_folder,
    open_sockets,
    record_listening,
    sweep_metrics_folders,
    worker_count,
)

if TYPE_CHECKING:
    # Imported when --status is given: with --workers, prometheus_client
    # must first be told where the workers keep their figures.
    from txschannel.terminator.metrics import Metrics

__all__ = [
    "DEFAULT_PORT",
    "AccessPolicy",
    "ConnectionGate",
    "GateFactory",
    "Options",
    "SchannelService",
    "SelfSignedCertificate",
    "default_state_dir",
    "ensure_self_signed",
    "makeService",
]

#: The port ``twist schannel`` listens on when no ``--listen`` is given.
DEFAULT_PORT = 8443
#: The names the self-signed certificate is good for.
_SELF_SIGNED_NAMES = ("localhost", "127.0.0.1", "::1")
#: Within the 366 days that Mozilla's profile (and browsers) accept; a
#: new one is made (and its fingerprint logged) when it runs out.
_SELF_SIGNED_DAYS = 365
#: ``twist``'s own exit status for a bad command line (EX_USAGE).
_EX_USAGE = 64
#: Seconds between checks of the served certificates' validity periods, so
#: that a server nobody reloads still says when its certificate runs out.
_VALIDITY_CHECK_INTERVAL = 24 * 60 * 60.0
#: Options by which a listen endpoint names its own certificate: such an
#: endpoint never gets the self-signed one.
_IDENTITY_OPTIONS = ("certificate", "privateKey", "chain", "sni", "passphraseFile")
_log = Logger(namespace="txschannel")


# -- the self-signed default certificate -----------------------------------


def default_state_dir() -> Path:
    """Where ``twist schannel`` keeps its state when ``--state-dir`` is not given.

    ``$XDG_STATE_HOME/txschannel``, or ``~/.local/state/txschannel``.
    """
    base = os.environ.get("XDG_STATE_HOME")
    if base and os.path.isabs(base):
        return Path(base) / "txschannel"
    return Path.home() / ".local" / "state" / "txschannel"


@dataclass(frozen=True)
class SelfSignedCertificate:
    """The default certificate kept in the state folder.

    :ivar server_file: certificate and private key (mode 0600): the server's.
    :ivar certificate_file: the certificate alone: give it to clients
        (``curl --cacert``).
    :ivar fingerprint: SHA-256 of the certificate, colon-separated hex.
    :ivar created: whether this run made it (first run, or the old one expired).
    """

    server_file: Path
    certificate_file: Path
    fingerprint: str
    created: bool


def _fingerprint(certificate: x509.Certificate) -> str:
    return certificate.fingerprint(hashes.SHA256()).hex(":").upper()


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(handle, mode)
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def _new_self_signed() -> tuple[bytes, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "localhost"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "txschannel self-signed"),
        ]
    )
    now = datetime.datetime.now(datetime.timezone.utc)
    public = key.public_key()
    alternative: list[x509.GeneralName] = [x509.DNSName("localhost")]
    alternative += [x509.IPAddress(ipaddress.ip_address(a)) for a in _SELF_SIGNED_NAMES[1:]]
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=_SELF_SIGNED_DAYS))
        .add_extension(x509.SubjectAlternativeName(alternative), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key_pem, certificate


def ensure_self_signed(folder: Path) -> SelfSignedCertificate:
    """Return the self-signed certificate kept in *folder*, making it if needed.

    A new one is made on first use and when the kept one has expired; a
    damaged one is an error rather than being silently replaced, since its
    fingerprint may be pinned somewhere.

    :raises ValueError: the folder cannot be created or written, the kept
        files are damaged, or others could read or replace the private key
        (the message names the file or folder and the fix).
    """
    server_file = folder / "localhost.pem"
    certificate_file = folder / "localhost.crt"
    _check_private(folder, server_file)
    if os.path.lexists(server_file):
        try:
            data = _read_kept(server_file)
            certificate = x509.load_pem_x509_certificate(data)
        except (OSError, ValueError) as e:
            raise ValueError(
                f"the kept certificate {str(server_file)!r} cannot be read ({e}); "
                "remove it to make a new one"
            ) from None
        now = datetime.datetime.now(datetime.timezone.utc)
        if certificate.not_valid_after_utc > now:
            if not _holds(certificate_file, certificate):
                # The log tells clients to trust this file: it must be the
                # certificate actually served, not a stale or planted one.
                try:
                    _write_public(certificate_file, certificate)
                except OSError as e:
                    raise ValueError(
                        f"cannot write the certificate to trust, {str(certificate_file)!r}: "
                        f"{e.strerror or e}; remove it to have it made again"
                    ) from None
            return SelfSignedCertificate(
                server_file, certificate_file, _fingerprint(certificate), False
            )
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        key_pem, certificate = _new_self_signed()
        pem = certificate.public_bytes(serialization.Encoding.PEM)
        _write_atomically(server_file, key_pem + pem, 0o600)
        _write_public(certificate_file, certificate)
    except OSError as e:
        raise ValueError(
            f"cannot keep the self-signed certificate in {str(folder)!r}: "
            f"{e.strerror or e} (use --state-dir)"
        ) from None
    return SelfSignedCertificate(server_file, certificate_file, _fingerprint(certificate), True)


#: More than any self-signed certificate and key we write (about 1 KiB).
_KEPT_FILE_LIMIT = 64 * 1024


def _read_kept(path: Path) -> bytes:
    """The bytes of a file in the state folder, which must be a small regular file.

    Opened without following a symbolic link and without blocking, so that a
    named pipe planted there cannot hang the start and ``/dev/zero`` cannot
    fill memory.

    :raises ValueError: it is a link, not a regular file, or too large.
    :raises OSError: it cannot be opened or read.
    """
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ValueError("it is a symbolic link, not a file of its own") from None
        raise
    with os.fdopen(descriptor, "rb") as handle:
        mode = os.fstat(descriptor).st_mode
        if not stat.S_ISREG(mode):
            raise ValueError("it is not a regular file")
        data = handle.read(_KEPT_FILE_LIMIT + 1)
    if len(data) > _KEPT_FILE_LIMIT:
        raise ValueError(f"it is larger than {_KEPT_FILE_LIMIT} bytes")
    return data


def _holds(path: Path, certificate: x509.Certificate) -> bool:
    """Whether *path* is a regular file holding exactly *certificate* in PEM."""
    try:
        return _read_kept(path) == certificate.public_bytes(serialization.Encoding.PEM)
    except (OSError, ValueError):
        return False


def _check_private(folder: Path, server_file: Path) -> None:
    """Refuse a kept private key that other users could read or replace, as ssh does.

    Served silently, such a key would let anyone on the machine impersonate
    this server to every client that trusts its fingerprint.
    """
    try:
        # lstat: a link is refused when the file is read, with its own message.
        kept: os.stat_result | None = server_file.lstat()
    except OSError:
        kept = None  # made below, mode 0600
    if kept is not None and stat.S_ISLNK(kept.st_mode):
        kept = None  # refused when read: a link has no mode of its own
    if kept is not None and kept.st_uid != os.geteuid():
        raise ValueError(
            f"the kept private key {str(server_file)!r} belongs to another user (uid "
            f"{kept.st_uid}): remove it to make a new one"
        )
    if kept is not None and kept.st_mode & 0o077:
        raise ValueError(
            f"the kept private key {str(server_file)!r} is open to other users (mode "
            f"{stat.S_IMODE(kept.st_mode):04o}): chmod 600 {shlex.quote(str(server_file))}, "
            "or remove it to make a new key if others may have read it"
        )
    try:
        state = folder.stat()
    except OSError:
        return  # made below, mode 0700
    if state.st_mode & 0o022 and not state.st_mode & stat.S_ISVTX:
        # Whoever can write there can put a key of their own in place.
        raise ValueError(
            f"the state folder {str(folder)!r} can be written by other users (mode "
            f"{stat.S_IMODE(state.st_mode):04o}): chmod 700 {shlex.quote(str(folder))}"
        )


def _write_public(path: Path, certificate: x509.Certificate) -> None:
    _write_atomically(path, certificate.public_bytes(serialization.Encoding.PEM), 0o644)


def _served_fingerprint(credentials: Credentials) -> str | None:
    """The SHA-256 fingerprint of the certificate *credentials* present, if any."""
    if credentials.identities:
        return _fingerprint(credentials.identities[0].leaf)
    # (Credentials of a Twisted creator.) Not for our own: pyOpenSSL refuses
    # changes to a context once a connection was made from it, and a
    # --workers worker installs its OCSP stapler and --route callback on the
    # credentials that its supervisor reloaded and looked at here.
    certificate = SSL.Connection(credentials.openssl_context, None).get_certificate()
    if certificate is None:
        return None
    return _fingerprint(certificate.to_cryptography())


# -- the gate around every accepted connection ------------------------------------


_NEEDS_QUOTES = re.compile(r'[\s"=]').search


def _data_may_be_lost(reason: Failure) -> bool:
    """Whether the client's TLS stream was cut other than by its own close.

    A client that closes its TCP connection without close_notify once its
    exchange is done is ordinary (browsers do it); a stream lost to a
    reset or an error after the handshake, with or without bytes still on
    their way, may have been cut mid-way: that one is worth a warning.
    """
    value = reason.value
    return isinstance(value, ConnectionTruncated) and not value.closed


def _logfmt(value: object) -> str:
    # Every value may come from the peer (server name, certificate names,
    # ALPN, reasons quoting them): unprintable characters are escaped, so
    # that one connection is always one line.
    if value is None or value == "":
        return "-"
    if type(value) is int:  # byte counts: nothing to escape
        return str(value)
    text = printable(value if isinstance(value, str) else str(value))
    if _NEEDS_QUOTES(text):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def _worker_lines(
    factory: Callable[[Any], ILogObserver], pid: int
) -> Callable[[Any], ILogObserver]:
    """twist's log-observer factory, for a ``--workers`` worker: every line
    the worker writes ends with ``worker=PID``, so that each connection's
    lines (a failed handshake, a refusal, an unreachable backend, the close)
    name the process that served it, as do Twisted's own."""

    def make(log_file: Any) -> ILogObserver:
        observer = factory(log_file)

        def named(event: LogEvent) -> None:
            # A copy: the other observers of the event see it as it was.
            format = event.get("log_format")
            observer({
                **event,
                "log_format": (f"{format} " if format else "") + "worker={txschannel_worker}",
                "txschannel_worker": pid,
            })

        provider: ILogObserver = implementer(ILogObserver)(named)
        return provider

    return make


def _socket_address(listening: socket.socket) -> str:
    """``host:port`` or ``[v6]:port`` of a listening socket (``unix:path`` for one
    systemd passed)."""
    name = listening.getsockname()
    if isinstance(name, tuple):
        host, port = name[0], name[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return f"unix:{name.decode(errors='replace') if isinstance(name, bytes) else name}"


def _attributes(transport: object) -> Attributes | None:
    """The negotiated parameters of *transport*'s TLS session; None for plain TCP
    or a handshake that is not done."""
    context = getattr(transport, "securityContext", None)
    if context is None or not getattr(context, "established", False):
        return None
    try:
        attributes: Attributes = context.attributes
    except SecurityError:  # deleted under us: report what there is
        return None
    return attributes


def _log_facts(transport: object, attributes: Attributes | None) -> dict[str, Any]:
    """What a connection's log line says of its client and its TLS session.

    Read once, when the client is admitted (``describe`` would also work out
    the handshake's flights, which a log line does not show).
    """
    getPeer = getattr(transport, "getPeer", None)
    facts: dict[str, Any] = {"peer": _address(getPeer()) if callable(getPeer) else None}
    if getattr(transport, "securityContext", None) is None:
        facts["protocol"] = "plain"
        return facts
    if attributes is not None:
        facts.update(
            protocol=attributes.protocol,
            cipher=attributes.cipher,
            alpn=attributes.alpn,
            server_name=attributes.server_name,
        )
        if attributes.peer_certificate is not None:
            facts["client"] = attributes.peer_certificate.subject.rfc4514_string()
    return facts


def _reason_text(reason: Failure, *, we_closed: bool, handshake_done: bool = True) -> str:
    if isinstance(reason.value, ConnectionDone):
        return "closed by us" if we_closed else "client closed"
    if isinstance(reason.value, ConnectionTruncated) and reason.value.closed:
        if not handshake_done:
            return "client closed before the TLS handshake completed"
        return "client closed without close_notify"
    if getattr(reason.value, "status", None) is not None:
        return f"TLS error {reason.value}"
    return f"client lost: {reason.getErrorMessage()}"


@implementer(IProtocol, IHandshakeListener, IHalfCloseableProtocol)
class ConnectionGate:
    """Stands between an accepted transport and the application protocol.

    To the application it is the transport (every attribute it does not
    define, such as ``securityContext``, is the real transport's); to the
    transport it is the protocol. It starts the application protocol only
    once the TLS handshake is done and the client is admitted by the
    :class:`AccessPolicy`, counts the bytes each way, and logs one line when
    the connection closes.
    """

    def __init__(self, factory: GateFactory, address: IAddress) -> None:
        self.factory = factory
        self.address = address
        self.transport: Any = None
        self.inner: IProtocol | None = None
        self.connected = False
        self.disconnecting = False
        self.bytes_in = 0
        self.bytes_out = 0
        self.refused: str | None = None
        self._started = 0.0
        self._pending: list[bytes] = []
        self._pending_eof = False
        self._description: dict[str, Any] = {}
        #: Why we ended the connection ourselves (idle, over the limit), for the log line.
        self._our_reason: str | None = None
        #: Whether the connection is counted in the factory's ConnectionLimit.
        self._counted = False
        self._handshaking = False
        self._idle: IDelayedCall | None = None
        #: When the application last wrote or the client last sent bytes.
        self._last_activity = 0.0
        #: When a peer was last seen taking bytes we had queued for it.
        self._drained_at = 0.0
        #: When the idle check last looked at the queues, and what it saw.
        self._sampled_at = 0.0
        self._sample: tuple[tuple[int, int, int, int], ...] = ()

    # -- IProtocol (from the real transport) -----------------------------

    def makeConnection(self, transport: ITransport) -> None:
        """Take *transport*; admit now, or after the TLS handshake."""
        self.transport = transport
        # The application sees the real transport's interfaces through us
        # (ISSLTransport for request.isSecure(), producers, ...).
        declare_provides(self, providedBy(transport))
        self.connected = True
        self._started = self.factory.clock.seconds()
        metrics = self.factory.metrics
        if metrics is not None:
            metrics.connections.inc()
        if not self.factory.limit.opened():
            self._our_reason = f"over --max-connections {self.factory.limit.maximum}"
            reset(transport)
            return
        self._counted = True
        self.factory.gates.add(self)
        if metrics is not None:
            metrics.connections_open.inc()
        no_delay(transport)
        context = getattr(transport, "securityContext", None)
        # Whether a handshake outcome is still to be counted.
        self._handshaking = context is not None and not getattr(context, "established", False)
        if context is None or getattr(context, "established", False):
            self._admit(_attributes(transport))

    def handshakeCompleted(self) -> None:
        """The TLS handshake is done: check the client, then start the application."""
        attributes = _attributes(self.transport)
        metrics = self.factory.metrics
        if self._handshaking and metrics is not None:
            metrics.handshake_succeeded(
                self.factory.clock.seconds() - self._started,
                bool(attributes is not None and attributes.session_reused),
            )
        self._handshaking = False
        if self.inner is None and self.refused is None and self.connected:
            self._admit(attributes)

    def _admit(self, attributes: Attributes | None) -> None:
        self._description = _log_facts(self.transport, attributes)
        certificate = attributes.peer_certificate if attributes is not None else None
        refusal = self.factory.policy.refusal(certificate)
        if refusal is not None:
            self.refused = refusal
            _log.warn(
                "refused {peer}: {why}",
                peer=self._description.get("peer"),
                why=PeerText(refusal),
            )
            # An abort, not a clean close: a client that completed the
            # handshake must not read "the server had nothing to say". (TLS
            # has access_denied for this, but once the handshake is over
            # OpenSSL offers no way to send an alert of our choosing.)
            reset(self.transport)
            return
        inner = self.factory.wrapped.buildProtocol(self.address)
        if inner is None:
            self.transport.loseConnection()
            return
        self.inner = inner
        if self.factory.idle_timeout is not None:
            # Counted from here: until the handshake is done, the listen
            # endpoint's handshakeTimeout applies.
            now = self.factory.clock.seconds()
            self._last_activity = self._drained_at = self._sampled_at = now
            self._idle = self.factory.clock.callLater(
                _idle_step(self.factory.idle_timeout), self._idle_check
            )
            probe_window(self.transport, _idle_step(self.factory.idle_timeout))
        inner.makeConnection(self)  # type: ignore[arg-type]
        pending, self._pending = self._pending, []
        for data in pending:
            inner.dataReceived(data)
        if self._pending_eof:
            self.readConnectionLost()

    def _queues(self) -> tuple[tuple[int, int, int, int], ...]:
        """What the client's connection, and the relay's backend connection
        if there is one, still have to deliver (see :func:`send_progress`)."""
        sides = [send_progress(self.transport)]
        partner = getattr(self.inner, "partner", None)
        backend = getattr(partner, "transport", None)
        if backend is not None:
            sides.append(send_progress(backend))
        return tuple(sides)

    def _idle_check(self) -> None:
        # One timer per connection, moved only when it fires: noting the
        # time of each read and write is cheaper than rescheduling a
        # DelayedCall for every chunk of a transfer. Idle means nothing
        # moved: neither a byte read or written, nor a byte of ours taken
        # by a peer. A slow reader drains megabytes from the socket buffers
        # without a single write of ours for minutes (flow control holds
        # the rest back), so the queues are sampled every step; any change
        # is a peer reading.
        self._idle = None
        timeout = self.factory.idle_timeout
        assert timeout is not None
        now = self.factory.clock.seconds()
        sample = self._queues()
        if self._last_activity > self._sampled_at or len(sample) != len(self._sample):
            # Bytes were written or read since the last look (or this is
            # the first look): what is queued now may have been draining
            # all along, so count from now.
            if any(value > 0 for side in sample for value in side[2:]):
                self._drained_at = now
        elif sample != self._sample:
            self._drained_at = now
        self._sampled_at, self._sample = now, sample
        quiet = now - max(self._last_activity, self._drained_at)
        if quiet < timeout:
            self._idle = self.factory.clock.callLater(
                min(_idle_step(timeout), timeout - quiet), self._idle_check
            )
            return
        self._our_reason = f"idle timeout: no bytes either way for {timeout:g} s"
        # Neither side finished its stream: both get an abort (the relay
        # passes the client's on to the backend), never a clean end.
        reset(self.transport)

    def dataReceived(self, data: bytes) -> None:
        """Count *data* and pass it on (or keep it until the client is admitted)."""
        self.bytes_in += len(data)
        if self.factory.metrics is not None:
            self.factory.metrics.bytes_in.inc(len(data))
        if self._idle is not None:
            self._last_activity = self.factory.clock.seconds()
        if self.inner is not None:
            self.inner.dataReceived(data)
        elif self.refused is None:
            self._pending.append(data)

    def readConnectionLost(self) -> None:
        """The client finished sending; tell a half-close-aware application."""
        if self.inner is None:
            self._pending_eof = True
            return
        halfClose = IHalfCloseableProtocol(self.inner, None)
        if halfClose is not None:
            halfClose.readConnectionLost()
        else:
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        """Our sending half is shut; tell a half-close-aware application."""
        halfClose = IHalfCloseableProtocol(self.inner, None)
        if halfClose is not None:
            halfClose.writeConnectionLost()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Finish the application protocol and write the connection's log line."""
        self.connected = False
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if self._counted:
            self._counted = False
            self.factory.gates.discard(self)
            self.factory.limit.closed()
            metrics = self.factory.metrics
            if metrics is not None:
                metrics.connections_open.dec()
                if self._handshaking:
                    status = getattr(reason.value, "status", None)
                    # A client that left (or was dropped) before finishing.
                    metrics.handshake_failed(
                        getattr(status, "name", None) or "INCOMPLETE_MESSAGE"
                    )
            self._handshaking = False
        if self.inner is not None:
            self.inner.connectionLost(reason)
        self._log_close(reason)

    def _log_close(self, reason: Failure) -> None:
        description = self._description or _log_facts(
            self.transport, _attributes(self.transport)
        )
        if self.refused is not None:
            why = f"refused: {self.refused}"
        elif self._our_reason is not None:
            why = self._our_reason
        else:
            why = getattr(self.inner, "close_reason", None) or _reason_text(
                reason,
                we_closed=self.disconnecting,
                handshake_done=description.get("protocol") is not None,
            )
        fields = {
            "peer": description.get("peer"),
            "server_name": description.get("server_name"),
            "protocol": description.get("protocol"),
            "cipher": description.get("cipher"),
            "alpn": description.get("alpn"),
            "client": description.get("client"),
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "duration": round(self.factory.clock.seconds() - self._started, 3),
            "reason": why,
        }
        line = " ".join(f"{name}={_logfmt(value)}" for name, value in fields.items())
        if self.factory.worker is not None:
            # (Not in the line: a worker's log observer ends every line with
            # it, see _worker_lines.)
            fields["worker"] = self.factory.worker
        if self.inner is not None and self._our_reason is None and _data_may_be_lost(reason):
            _log.warn("connection closed {line}", line=line, connection=fields)
        else:
            _log.info("connection closed {line}", line=line, connection=fields)

    # -- ITransport (for the application) ---------------------------------

    def write(self, data: bytes) -> None:
        """Count and send *data*."""
        self.bytes_out += len(data)
        if self.factory.metrics is not None:
            self.factory.metrics.bytes_out.inc(len(data))
        if self._idle is not None:
            self._last_activity = self.factory.clock.seconds()
        self.transport.write(data)

    def writeSequence(self, data: Iterable[bytes]) -> None:
        """Count and send every item of *data*."""
        items = list(data)
        size = sum(len(item) for item in items)
        self.bytes_out += size
        if self.factory.metrics is not None:
            self.factory.metrics.bytes_out.inc(size)
        if self._idle is not None:
            self._last_activity = self.factory.clock.seconds()
        self.transport.writeSequence(items)

    def loseConnection(self) -> None:
        """Close after the pending bytes are sent."""
        self.disconnecting = True
        self.transport.loseConnection()

    def abortConnection(self) -> None:
        """Close now, dropping pending bytes."""
        self.disconnecting = True
        self.transport.abortConnection()

    def loseWriteConnection(self) -> None:
        """Shut down sending (TLS close_notify, TCP FIN) and keep receiving."""
        self.transport.loseWriteConnection()

    def getPeer(self) -> IAddress:
        """The client's address."""
        peer: IAddress = self.transport.getPeer()
        return peer

    def getHost(self) -> IAddress:
        """Our address."""
        host: IAddress = self.transport.getHost()
        return host

    def registerProducer(self, producer: object, streaming: bool) -> None:
        """Register *producer* with the real transport."""
        self.transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        """Unregister the real transport's producer."""
        self.transport.unregisterProducer()

    def pauseProducing(self) -> None:
        """Stop reading from the client."""
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        """Read from the client again."""
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        """Stop for good: close the connection."""
        self.transport.stopProducing()

    def logPrefix(self) -> str:
        """How Twisted's log names this connection."""
        return "schannel"

    def __getattr__(self, name: str) -> Any:
        # Everything else (securityContext, negotiatedProtocol,
        # getPeerCertificate, handshakeLadder, ...) is the real transport's.
        transport = self.__dict__.get("transport")
        if transport is None:
            raise AttributeError(name)
        return getattr(transport, name)


def _idle_step(timeout: float) -> float:
    """How often the idle check looks at a connection's queues: a connection
    whose peers stop taking bytes is ended at most this long after *timeout*."""
    return min(timeout / 4, 5.0)


class GateFactory(Factory):
    """Wraps *wrapped* so that each connection passes a :class:`ConnectionGate`.

    :param wrapped: the application's factory (relay or inspector).
    :param policy: who may connect, checked after the TLS handshake.
    :param clock: for connection durations and the idle timeout.
    :param limit: counts the open connections (``--max-connections``).
    :param idle_timeout: seconds without a byte either way after which a
        connection is aborted (``--idle-timeout``), or ``None``.
    :param metrics: the ``--status`` figures to keep, or ``None``.
    :param worker: this worker's process id, named in each connection's
        log line (``--workers``), or ``None``.
    :ivar gates: the connections open now (counted in *limit*).
    """

    noisy = False

    def __init__(
        self,
        wrapped: IProtocolFactory,
        policy: AccessPolicy,
        clock: IReactorTime,
        *,
        limit: ConnectionLimit | None = None,
        idle_timeout: float | None = None,
        metrics: Metrics | None = None,
        worker: int | None = None,
    ) -> None:
        self.wrapped = wrapped
        self.metrics = metrics
        self.worker = worker
        self.gates: set[ConnectionGate] = set()
        self.policy = policy
        self.clock = clock
        self.limit = limit if limit is not None else ConnectionLimit()
        self.idle_timeout = idle_timeout

    def doStart(self) -> None:
        """Start the wrapped factory too."""
        self.wrapped.doStart()

    def doStop(self) -> None:
        """Stop the wrapped factory too."""
        self.wrapped.doStop()

    def buildProtocol(self, addr: IAddress | None) -> ConnectionGate:  # type: ignore[override]
        """A gate for one accepted connection."""
        assert addr is not None
        return ConnectionGate(self, addr)


# -- the service ---------------------------------------------------------------


class SchannelService(service.Service):
    """Listens on every endpoint; reloads certificates on SIGHUP and on a timer.

    :param listen: ``(description, endpoint)`` pairs.
    :param factory: what serves each connection (already gated).
    :param reactor: for listening, timers and signals.
    :param reload_interval: seconds between certificate reloads, or None.
    :param announce: lines to log when the service starts.
    :param validity_interval: seconds between checks of the served
        certificates' validity periods (daily by default), or None.
    :param limit: the ``--max-connections`` count, whose ports it pauses.
    :param status: ``(description, endpoint, factory)`` of the ``--status``
        listener, or None.
    :param on_credentials: called with the listen endpoints at start and
        after every reload (the ``--status`` certificate figures).
    :param prepare: called with the credentials of every ``schannel:``
        listen endpoint before they serve a handshake: at start and after
        each reload (``--route`` installs its server-name check this way).
    :param drain_timeout: when stopping, how long open connections may take
        to finish before they are aborted.
    :param drain_delay: when stopping, how long to go on accepting (while
        ``/healthz`` says ``503 draining``) before the listeners close, so
        that a load balancer's health checks see it first (``--drain-delay``).
    :param signals: whether ``SIGHUP`` reloads (a ``--workers`` worker
        leaves signals and timers to its supervisor).
    :param worker: a ``--workers`` worker: its supervisor, which opened the
        sockets, said once where they listen, so each worker says only that
        it is ready (``ready: accepting connections``).
    :param replaced: for a worker, whether it stops because a new generation
        took over: then it stops accepting at once and never says
        ``draining`` (the service goes on).

    A certificate that has expired, is not valid yet or expires within 14
    days is logged as a warning (naming its file, subject and dates) on
    every ``SIGHUP``, at each check, and on a timer reload when the warning
    is new; endpoints made from strings also warn when they are parsed,
    that is, at start.
    """

    def __init__(
        self,
        listen: Sequence[tuple[str, IStreamServerEndpoint]],
        factory: IProtocolFactory,
        reactor: Any,
        *,
        reload_interval: float | None = None,
        announce: Sequence[str] = (),
        validity_interval: float | None = _VALIDITY_CHECK_INTERVAL,
        limit: ConnectionLimit | None = None,
        prepare: Callable[[Credentials], None] | None = None,
        status: tuple[str, IStreamServerEndpoint, IProtocolFactory] | None = None,
        on_credentials: (
            Callable[[Sequence[tuple[str, IStreamServerEndpoint]]], None] | None
        ) = None,
        drain_timeout: float = 30.0,
        drain_delay: float = 0.0,
        signals: bool = True,
        worker: bool = False,
        replaced: Callable[[], bool] | None = None,
    ) -> None:
        self.listen = list(listen)
        self.drain_delay = drain_delay
        self.replaced = replaced
        #: What ``/healthz`` says (see txschannel.terminator.health).
        self.health = Health(limit)
        self.worker = worker
        self.log = _log
        self.drain_timeout = drain_timeout
        self.signals = signals
        self.status = status
        self.on_credentials = on_credentials
        self._status_port: IListeningPort | None = None
        self._status_limit: ConnectionLimit | None = None
        self.limit = limit
        self.prepare = prepare
        self.factory = factory
        self.reactor = reactor
        self.reload_interval = reload_interval
        self.announce = list(announce)
        self.validity_interval = validity_interval
        self.ports: list[IListeningPort] = []
        self._reloader: LoopingCall | None = None
        self._checker: LoopingCall | None = None
        self._previous_handler: Any = None
        self._last_errors: dict[str, str] = {}
        self._last_warnings: dict[str, set[str]] = {}

    def startService(self) -> None:
        """Listen everywhere; exit with one line when a port cannot be had."""
        super().startService()  # type: ignore[no-untyped-call]
        for line in self.announce:
            _log.info("{line}", line=line)
        starting = True
        problems: list[str] = []

        def listening(port: IListeningPort, description: str) -> None:
            self.ports.append(port)
            if self.limit is not None:
                self.limit.add_port(port)
            if self.worker:
                return
            # The address says which port "tcp:0" got.
            _log.info(
                "listening on {endpoint} at {address}",
                endpoint=description,
                address=_address(port.getHost()),
            )

        def failed(failure: Failure, description: str) -> None:
            message = f"cannot listen on {description}: {failure.getErrorMessage()}"
            if starting:
                problems.append(message)
            else:
                _log.critical("{message}; stopping", message=message)
                self.reactor.stop()

        bound: list[Deferred[Any]] = []
        for description, endpoint in self.listen:
            credentials = getattr(endpoint, "credentials", None)
            if isinstance(credentials, Credentials):
                self._prepare(credentials)
            waiting = endpoint.listen(self.factory)
            waiting.addCallbacks(
                listening, failed, callbackArgs=(description,), errbackArgs=(description,)
            )
            bound.append(waiting)
        if self.on_credentials is not None:
            self.on_credentials(self.listen)
        if self.status is not None:
            description, endpoint, factory = self.status

            def serving_status(port: IListeningPort) -> None:
                self._status_port = port
                # The status listener's own bound (see status_site): its
                # clients past the bound wait in the kernel's queue.
                bound = getattr(factory, "limit", None)
                if isinstance(bound, ConnectionLimit):
                    self._status_limit = bound
                    bound.add_port(port)
                if self.worker:
                    return
                _log.info(
                    "serving /metrics and /status on {endpoint} at {address}",
                    endpoint=description, address=_address(port.getHost()),
                )

            waiting = endpoint.listen(factory)
            waiting.addCallbacks(
                serving_status, failed, errbackArgs=(f"--status {description}",)
            )
            bound.append(waiting)
        starting = False
        if problems:
            for port in self.ports:
                port.stopListening()
            if self._status_port is not None:
                self._status_port.stopListening()
            raise SystemExit(f"twist schannel: {problems[0]}")
        if self.worker:
            _log.info("ready: accepting connections")
        if self.signals and hasattr(signal, "SIGHUP"):
            self._previous_handler = signal.signal(signal.SIGHUP, self._on_sighup)
        self.note_warned()
        if self.reload_interval:
            self._reloader = LoopingCall(self.reload, "--reload-interval")
            self._reloader.clock = self.reactor
            self._reloader.start(self.reload_interval, now=False)
        if self.validity_interval:
            self._checker = LoopingCall(self.check_validity, "validity check")
            self._checker.clock = self.reactor
            self._checker.start(self.validity_interval, now=False)
        DeferredList(bound).addCallback(lambda _: self._ready())

    def _ready(self) -> None:
        # systemd's Type=notify: started once every listener is bound.
        status_bound = self.status is None or self._status_port is not None
        if self.running and len(self.ports) == len(self.listen) and status_bound:
            notify.ready()

    def note_warned(self) -> None:
        """Take the listen endpoints' validity warnings as said already.

        Endpoints made from strings warned when they were parsed: a timer
        reload repeats only what is new since.
        """
        for description, endpoint in self.listen:
            credentials = getattr(endpoint, "credentials", None)
            if isinstance(credentials, Credentials):
                self._last_warnings[description] = set(validity_warnings(credentials))

    def _prepare(self, credentials: Credentials) -> None:
        # Before the credentials' first handshake: their OpenSSL context
        # cannot be changed once a connection was made from it. (An OCSP
        # stapler is the endpoint's: it installs it on the same credentials.)
        if self.prepare is not None:
            self.prepare(credentials)

    def _on_sighup(self, number: int, frame: FrameType | None) -> None:
        # A signal handler may run between any two bytecodes: hand the work
        # to the reactor thread.
        self.reactor.callFromThread(self.reload, "SIGHUP")

    def reload(self, why: str) -> tuple[int, int]:
        """Re-read the certificate files of every listen endpoint that has them.

        New handshakes use the new certificate; open connections keep the
        old one. A file that does not load is logged and the old certificate
        stays in use. Timer reloads log only changes, new errors and new
        validity warnings; other reloads warn about every certificate that
        has expired, is not valid yet or expires within 14 days.

        :return: how many endpoints were reloaded, and how many of them now
            serve a different certificate.
        """
        quiet = why == "--reload-interval"
        if why == "SIGHUP":
            notify.reloading()
        reloaded = changed = 0
        for description, endpoint in self.listen:
            reload: Callable[..., Credentials] | None = getattr(endpoint, "reload", None)
            if reload is None:
                continue
            before = _served_fingerprint(endpoint.credentials)  # type: ignore[attr-defined]
            try:
                # (why= for the OCSP stapler's log lines, see txschannel.ocsp.)
                credentials = reload(warn=False, why=why)
            except ValueError as e:
                if not quiet or self._last_errors.get(description) != str(e):
                    self.log.error(
                        "{why}: reloading {endpoint} failed, keeping the old certificate "
                        "(sha256 {fingerprint}): {error}",
                        why=why, endpoint=description, fingerprint=before, error=str(e),
                    )
                self._last_errors[description] = str(e)
                continue
            self._last_errors.pop(description, None)
            self._prepare(credentials)
            after = _served_fingerprint(credentials)
            reloaded += 1
            changed += after != before
            if not quiet or after != before:
                self.log.info(
                    "{why}: reloaded {endpoint}: certificate sha256 {fingerprint}{change}",
                    why=why, endpoint=description, fingerprint=after,
                    change="" if after != before else " (unchanged)",
                )
            self._warn_validity(why, description, credentials, only_new=quiet)
        if self.on_credentials is not None:
            self.on_credentials(self.listen)
        if why == "SIGHUP":
            notify.ready()
        return reloaded, changed

    def check_validity(self, why: str = "validity check") -> None:
        """Warn about every served certificate that is out of date or nearly so.

        Only the certificates in use are looked at; no file is read.
        """
        for description, endpoint in self.listen:
            credentials = getattr(endpoint, "credentials", None)
            if isinstance(credentials, Credentials):
                self._warn_validity(why, description, credentials, only_new=False)

    def _warn_validity(
        self, why: str, description: str, credentials: Credentials, *, only_new: bool
    ) -> None:
        # A warning's text counts the days, so a timer reload repeats it
        # once a day rather than at every tick.
        warnings = list(dict.fromkeys(validity_warnings(credentials)))  # once per file
        previous = self._last_warnings.get(description, set())
        for warning in warnings:
            if not only_new or warning not in previous:
                self.log.warn("{why}: {validity}", why=why, validity=warning)
        self._last_warnings[description] = set(warnings)

    def stopService(self) -> Deferred[Any]:
        """Say ``draining`` on ``/healthz``; after *drain_delay*, stop listening
        and let open connections finish.

        The result fires once every connection has closed, or after
        *drain_timeout*, when those still open are aborted (and logged).
        """
        super().stopService()  # type: ignore[no-untyped-call]
        notify.stopping()
        for timer in (self._reloader, self._checker):
            if timer is not None and timer.running:
                timer.stop()
        if hasattr(signal, "SIGHUP") and self._previous_handler is not None:
            # Not the previous handler yet: that is usually SIG_DFL, and a
            # reload signal (logrotate, systemctl reload) during the drain
            # would kill the process and cut every connection it drains.
            signal.signal(signal.SIGHUP, self._on_sighup_while_stopping)
        stopped = self._stop()
        return stopped.addBoth(self._restore_sighup)

    def _on_sighup_while_stopping(self, number: int, frame: FrameType | None) -> None:
        self.reactor.callFromThread(self.log.info, "SIGHUP while stopping: ignored")

    def _restore_sighup(self, result: object) -> object:
        if hasattr(signal, "SIGHUP") and self._previous_handler is not None:
            signal.signal(signal.SIGHUP, self._previous_handler)
            self._previous_handler = None
        return result

    def _stop(self) -> Deferred[Any]:
        if self.replaced is not None and self.replaced():
            return self._stop_listening()
        self.health.draining = True
        if not self.drain_delay:
            return self._stop_listening()
        # Listening goes on meanwhile: a balancer sends new clients here
        # until its checks have seen the 503, and those must be served.
        self.log.info(
            "stopping: /healthz says draining; still accepting for {seconds:g} s "
            "(--drain-delay)",
            seconds=self.drain_delay,
        )
        delayed: Deferred[None] = deferLater(self.reactor, self.drain_delay, lambda: None)
        return delayed.addCallback(lambda _: self._stop_listening())

    def _stop_listening(self) -> Deferred[Any]:
        for limit in (self.limit, self._status_limit):
            if limit is not None:
                limit.remove_ports()
        stopping = [port.stopListening() for port in self.ports]
        self.ports = []
        stopped = DeferredList([d for d in stopping if isinstance(d, Deferred)])
        stopped.addCallback(lambda _: self._drain())
        if self._status_port is not None:
            # After the drain: the figures stay readable meanwhile.
            status_port = self._status_port
            self._status_port = None
            stopped.addCallback(lambda _: status_port.stopListening())
        return stopped

    def _drain(self) -> Deferred[None] | None:
        gates = getattr(self.factory, "gates", None)
        if not gates or not self.drain_timeout:
            return None
        self.log.info(
            "stopping: waiting up to {seconds:g} s for {count} open connection(s)",
            seconds=self.drain_timeout, count=len(gates),
        )
        drained: Deferred[None] = Deferred()
        deadline = self.reactor.seconds() + self.drain_timeout
        aborted_at: float | None = None

        def check() -> None:
            nonlocal aborted_at
            now = self.reactor.seconds()
            # After aborting, wait (briefly) for the connections to be gone,
            # so that each still writes its log line and ends its backend.
            if not gates or (aborted_at is not None and now >= aborted_at + 2.0):
                poll.stop()
                drained.callback(None)
            elif aborted_at is None and now >= deadline:
                aborted_at = now
                self.log.warn(
                    "stopping: aborting {count} connection(s) still open after {seconds:g} s",
                    count=len(gates), seconds=self.drain_timeout,
                )
                for gate in list(gates):
                    gate._our_reason = "aborted: still open when the drain timeout ran out"
                    gate.abortConnection()

        poll = LoopingCall(check)
        poll.clock = self.reactor
        poll.start(0.1, now=False)
        return drained


# -- the command line ----------------------------------------------------------


def _has_option(description: str, name: str) -> bool:
    """Whether endpoint *description* sets option *name* (``:name=`` not escaped)."""
    return re.search(rf"(?:^|(?<!\\):){re.escape(name)}=", description) is not None


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")


class Options(usage.Options):
    """The command line of ``twist schannel``; checks everything before starting.

    Endpoint strings are parsed here, so a bad endpoint, an unknown option or
    an unreadable certificate is reported as one line naming it, and the
    process exits (status 64) before anything listens.
    """

    synopsis = "[--listen ENDPOINT]... [--connect ENDPOINT] [options]"
    longdesc = (
        "A TLS terminator and tunnel. Accept on every --listen endpoint and relay each "
        "connection both ways to a new connection on --connect; either side may be plain "
        "or schannel:. Without --connect, answer HTTP requests with a page describing the "
        "connection's TLS. Without --listen, listen on schannel:tcp:8443:interface=127.0.0.1 "
        "(this machine only) with a self-signed "
        "certificate for localhost, kept in the state folder. A schannel: listen endpoint "
        "that names no certificate (certificate=, sni=, ...) uses that certificate too. "
        "SIGHUP re-reads certificate files. A certificate that has expired, is not valid "
        "yet or expires within 14 days is logged as a warning at start, on every reload "
        "and once a day."
    )
    optParameters = [
        [
            "state-dir", None, None,
            "Folder for the self-signed certificate "
            "(default: $XDG_STATE_HOME/txschannel or ~/.local/state/txschannel).",
        ],
        [
            "reload-interval", None, None,
            "Also re-read certificate files every SECONDS (a changed certificate is logged).",
        ],
        [
            "status", None, None,
            "Serve /metrics (Prometheus), /status (JSON) and /healthz (200 ok, or 503 when "
            "draining or at --max-connections) on this server endpoint, e.g. "
            f"tcp:9090 (on loopback unless interface= is given; at most "
            f"{STATUS_MAX_CONNECTIONS} connections, each aborted after "
            f"{STATUS_IDLE_TIMEOUT:g} s idle).",
        ],
        [
            "proxy-protocol", None, None,
            "Start every backend connection with a PROXY protocol header, v1 or v2 (v2 "
            "carries ALPN, the server name, and the TLS version, cipher and client "
            "certificate's CN).",
        ],
        [
            "max-connections", None, None,
            "At N open connections stop accepting (the listening ports pause) until one "
            "closes.",
        ],
        [
            "idle-timeout", None, None,
            "Abort a connection (both sides) after SECONDS without a byte either way.",
        ],
        [
            "connect-timeout", None, None,
            "Give up on a --connect connection not made within SECONDS (the client is "
            "aborted).",
        ],
        [
            "workers", None, "1",
            "Serve with N processes (or auto: one per CPU) sharing the listening ports and "
            "the session-ticket keys; a supervisor replaces workers that die, and SIGHUP "
            "starts a new generation with the re-read certificates.",
        ],
        [
            "drain-delay", None, "0",
            "On SIGTERM, answer 503 draining on /healthz at once but go on accepting for "
            "SECONDS, so that a load balancer's health checks take this process out of its "
            "pool before the listeners close; then drain as --drain-timeout says.",
        ],
        [
            "drain-timeout", None, "30",
            "When stopping (SIGTERM, or an old generation of --workers), let relayed "
            "connections finish for up to SECONDS (0: not at all), then abort them. The "
            "inspector's connections are closed at once.",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self["listen"] = []
        self["route"] = []
        self["connect"] = None
        self["allow-cn"] = []
        self["allow-san"] = []

    def opt_route(self, route: str) -> None:
        """NAME=ENDPOINT: relay server name NAME (wildcards too) to ENDPOINT (repeatable)."""
        name, equals, description = route.partition("=")
        if not equals or not description.strip():
            raise usage.UsageError(
                f"--route {route!r}: expected NAME=ENDPOINT, such as "
                "--route api.example.com=tcp:127.0.0.1:8081"
            )
        try:
            normalized = normalize_route_name(name)
        except ValueError as e:
            raise usage.UsageError(f"--route {route!r}: {name!r}: {e}") from None
        if any(given == normalized for given, _, _ in self["route"]):
            raise usage.UsageError(f"--route {route!r}: {normalized} has a route already")
        self["route"].append((normalized, description, route))

    def opt_version(self) -> NoReturn:
        """Print the versions of txschannel, pyOpenSSL, cryptography, OpenSSL and Twisted."""
        print("\n".join(version_lines()))
        sys.exit(0)

    def opt_listen(self, description: str) -> None:
        """Listen on this server endpoint (repeatable; default: schannel:tcp:8443 on 127.0.0.1)."""
        self["listen"].append(description)

    opt_l = opt_listen

    def opt_connect(self, description: str) -> None:
        # (The help text is set below: it is longer than a docstring line.)
        if self["connect"] is not None:
            # Twisted's parameters let the last one win, which would
            # silently drop a backend the operator meant to use.
            raise usage.UsageError(
                f"--connect {description!r}: --connect {self['connect']!r} was given "
                "already; give one (--route NAME=ENDPOINT relays server names elsewhere)"
            )
        self["connect"] = description

    opt_connect.__doc__ = (
        "Relay every connection to this client endpoint, e.g. tcp:127.0.0.1:8080 or "
        "schannel:tcp:db.example:5432:trustRoots=ca.pem (default: serve the inspector)."
    )
    opt_c = opt_connect

    def opt_allow_cn(self, name: str) -> None:
        """Admit client certificates with this subject common name (repeatable)."""
        if not name.strip():
            raise usage.UsageError(
                f"--allow-cn {name!r}: expected a certificate's common name, "
                "such as --allow-cn alice"
            )
        if re.match(r"\s*CN\s*=", name, re.IGNORECASE):
            bare = name.split("=", 1)[1].strip()
            raise usage.UsageError(
                f"--allow-cn {name!r}: give the common name alone, such as "
                f"--allow-cn {bare or 'alice'}"
            )
        self["allow-cn"].append(name)

    def opt_allow_san(self, name: str) -> None:
        """Admit clients with this SAN: dns:, uri:, ip: or email:VALUE (repeatable)."""
        try:
            self["allow-san"].append(parse_allowed_name(name))
        except ValueError as e:
            raise usage.UsageError(f"--allow-san {name!r}: {e}") from None

    def _check_proxy_protocol(self) -> None:
        given = self["proxy-protocol"]
        if given is None:
            return
        version = given.lower()
        if version not in ("v1", "v2"):
            raise usage.UsageError(f"--proxy-protocol {given!r}: expected v1 or v2")
        self["proxy-protocol"] = version
        backends: list[tuple[str, object]] = []
        if self["connect-endpoint"] is not None:
            backends.append((f"--connect {self['connect']!r}", self["connect-endpoint"]))
        if self["router"] is not None:
            backends += [
                (f"--route {route.name}={route.description}", route.endpoint)
                for route in self["router"].routes
            ]
        if not backends:
            raise usage.UsageError(
                f"--proxy-protocol {given}: there is no backend to tell (add --connect)"
            )
        for option, endpoint in backends:
            if isinstance(endpoint, SchannelClientEndpoint):
                raise usage.UsageError(
                    f"--proxy-protocol {given}: {option} is TLS, and the header would have to "
                    "come before its handshake, which is not supported; use a plain backend"
                )

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        """Parse, or exit with one line naming what is wrong (status 64)."""
        try:
            super().parseOptions(options)  # type: ignore[no-untyped-call]
        except usage.UsageError as e:
            _usage_exit(str(e))

    def postOptions(self) -> None:
        """Build the endpoints and the default certificate; any problem is a UsageError.

        With ``--workers`` above 1 this process becomes the supervisor: it
        returns from here only in the workers it forks.
        """
        try:
            self["workers"] = worker_count(str(self["workers"]))
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        self["drain-timeout"] = _seconds(
            "drain-timeout", str(self["drain-timeout"]), zero=True
        )
        self["drain-delay"] = _seconds("drain-delay", str(self["drain-delay"]), zero=True)
        self["worker"] = None
        if self["workers"] == 1:
            from twisted.internet import reactor

            self._build(reactor, reactor)
        else:
            self._supervise()

    def _supervise(self) -> None:
        """Parse, open the sockets, build the credentials, fork; return in a worker."""
        if "twisted.internet.reactor" in sys.modules:
            raise usage.UsageError(
                "--workers: a reactor is installed already (by twist --reactor?), and the "
                "workers must each install their own; leave --reactor out"
            )
        recording = RecordingReactor()
        self._build(recording, recording)
        supervised = list(self["endpoints"])
        listening = [(f"--listen {d!r}", d, e) for d, e in supervised]
        if self["status-endpoint"] is not None:
            listening.append(
                (f"--status {self['status']!r}", self["status"], self["status-endpoint"])
            )
        count = self["workers"]
        sockets: list[dict[tuple[object, ...], Any]] = [{} for _ in range(count)]
        # Said once, here, for all the workers: this process opened them.
        where: list[tuple[str, str, str]] = []
        for option, description, endpoint in listening:
            try:
                requests = record_listening(endpoint, recording)
                per_worker = open_sockets(requests, count)
                for slot, opened in zip(sockets, per_worker, strict=True):
                    slot.update(opened)
                where.append((
                    option.split(" ", 1)[0], description,
                    ", ".join(_socket_address(s) for s in per_worker[0].values()),
                ))
            except WorkersError as e:
                raise usage.UsageError(f"{option}: {e}") from None
            except OSError as e:
                # As without --workers: a port that cannot be had is status 1,
                # and --status is named.
                named = description if option.startswith("--listen") else f"--status {description}"
                raise SystemExit(
                    f"twist schannel: cannot listen on {named}: {e.strerror or e}"
                ) from None
        if "twisted.internet.reactor" in sys.modules:
            raise RuntimeError("the supervisor imported the reactor while parsing (a bug)")
        metrics_folder: str | None = None
        swept = Sweep()
        if self["status-endpoint"] is not None:
            # Each worker writes its figures there; any worker's /metrics
            # adds them all up (prometheus_client's multiprocess mode).
            swept = sweep_metrics_folders()
            metrics_folder, _ = make_metrics_folder()  # locked until we all exit
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_folder
        log = self._supervisor_log()
        # (Escaped: any process of this user could have named them.)
        for folder in swept.removed:
            log.info(
                "removed {folder}, left by a supervisor that was killed", folder=PeerText(folder)
            )
        for folder, why in swept.skipped:
            log.warn(
                "left {folder} alone: {why}, where a supervisor's is a regular file of this "
                "user",
                folder=PeerText(folder), why=why,
            )
        # Reloads and validity warnings are the supervisor's, with its log.
        keeper = SchannelService(supervised, Factory(), None, validity_interval=None)
        keeper.log = log
        keeper.note_warned()

        def reload(why: str) -> bool:
            reloaded, changed = keeper.reload(why)
            return changed > 0 if why == "--reload-interval" else reloaded > 0

        def exited(pid: int) -> None:
            if metrics_folder is not None:
                from prometheus_client import multiprocess

                multiprocess.mark_process_dead(  # type: ignore[no-untyped-call]
                    pid, metrics_folder
                )

        def cleanup() -> None:
            if metrics_folder is not None:
                shutil.rmtree(metrics_folder, ignore_errors=True)

        for line in self["announce"]:
            log.info("{line}", line=line)
        for option, description, address in where:
            log.info(
                "listening on {endpoint} at {address}" if option == "--listen"
                else "serving /metrics and /status on {endpoint} at {address}",
                endpoint=description, address=address,
            )
        supervisor = Supervisor(
            count, sockets, log, reload, keeper.check_validity,
            # (Each worker accepts for --drain-delay before its own drain.)
            drain_timeout=self["drain-delay"] + self["drain-timeout"],
            reload_interval=self["reload-interval"],
            validity_interval=_VALIDITY_CHECK_INTERVAL,
            on_exit=exited, cleanup=cleanup,
        )
        # Every listening socket is bound (the workers adopt them): ready.
        notify.ready()
        worker = supervisor.run()
        # In a worker, from here on: an ordinary twist schannel process
        # whose endpoints adopt the supervisor's sockets and serve its
        # credentials (the same OpenSSL contexts, ticket keys included).
        if os.environ.get("LISTEN_PID") == str(worker.supervisor):
            os.environ["LISTEN_PID"] = str(os.getpid())  # systemd's sockets are ours now
        from twisted.internet import reactor

        self._build(reactor, AdoptingReactor(reactor, worker.sockets))
        for (_, endpoint), (_, built) in zip(self["endpoints"], supervised, strict=True):
            credentials = getattr(built, "credentials", None)
            if isinstance(credentials, Credentials):
                endpoint.credentials = credentials
        self["announce"] = []  # the supervisor said it, once
        self["worker"] = worker
        parent = getattr(self, "parent", None)
        if parent is not None and "fileLogObserverFactory" in parent:
            # twist makes its log observer after parsing, from this factory.
            parent["fileLogObserverFactory"] = _worker_lines(
                parent["fileLogObserverFactory"], os.getpid()
            )

    def _supervisor_log(self) -> Logger:
        """A logger writing where twist writes, in its format, for the supervisor."""
        parent = getattr(self, "parent", None)
        if parent is not None and "fileLogObserverFactory" in parent:
            observer = parent["fileLogObserverFactory"](parent["logFile"])
            level = parent.get("logLevel", LogLevel.info)
        else:
            observer, level = textFileLogObserver(sys.stdout), LogLevel.info
        predicate = LogLevelFilterPredicate(defaultLogLevel=level)
        return Logger(
            namespace="txschannel.workers",
            observer=FilteringLogObserver(observer, [predicate]),
        )

    def _build(self, reactor: Any, listen_reactor: Any) -> None:
        """Parse every endpoint (listening ones with *listen_reactor*); check the rest."""
        from twisted.internet.endpoints import clientFromString, serverFromString

        self["reactor"] = reactor
        for name in ("reload-interval", "idle-timeout", "connect-timeout"):
            if self[name] is not None:
                self[name] = _seconds(name, self[name])
        if self["max-connections"] is not None:
            self["max-connections"] = _count("max-connections", self["max-connections"])
        announce: list[str] = []
        descriptions: list[str] = list(self["listen"])
        inspector = self["connect"] is None and not self["route"]
        if not descriptions:
            # A demo: reachable from this machine only, until --listen says
            # otherwise.
            default = f"schannel:tcp:{DEFAULT_PORT}:interface=127.0.0.1"
            descriptions = [default]
            self["default-listen"] = default
        if inspector:
            # The inspector speaks HTTP/1.x: say so in ALPN, so that clients
            # offering h2 do not guess.
            descriptions = [
                d + ":alpn=http/1.1,http/1.0"
                if d.startswith("schannel:") and not _has_option(d, "alpn")
                else d
                for d in descriptions
            ]
        # An endpoint that names a certificate of its own in any way gets
        # the parser's own error when it is incomplete, never this one.
        needs_default = [
            d for d in descriptions
            if d.startswith("schannel:")
            and not any(_has_option(d, option) for option in _IDENTITY_OPTIONS)
        ]
        self["self-signed"] = None
        if needs_default:
            folder = Path(self["state-dir"]) if self["state-dir"] else default_state_dir()
            try:
                kept = ensure_self_signed(folder)
            except ValueError as e:
                raise usage.UsageError(str(e)) from None
            self["self-signed"] = kept
            verb = "created" if kept.created else "using"
            announce += [
                f"{verb} the self-signed certificate for localhost, 127.0.0.1 and ::1: "
                f"{kept.certificate_file}",
                f"its SHA-256 fingerprint: {kept.fingerprint}",
            ]
            suffix = f":certificate={_escape(str(kept.server_file))}"
            descriptions = [d + suffix if d in needs_default else d for d in descriptions]
        listen: list[tuple[str, IStreamServerEndpoint]] = []
        given = self["listen"] or [self["default-listen"]]
        for original, description in zip(given, descriptions, strict=True):
            if not description.startswith("schannel:") and any(
                _has_option(description, option)
                for option in ("ocspResponse", "ocsp", "ocspAllowPrivate")
            ):
                # Said here: the plain parser's "unexpected keyword" would not.
                raise usage.UsageError(
                    f"--listen {original!r}: ocspResponse=/ocsp=/ocspAllowPrivate= need a "
                    "schannel: endpoint"
                )
            # (ocspResponse= and ocsp=auto are the schannel: parser's, which
            # gives the endpoint an OCSP stapler: txschannel.ocsp.)
            # (haproxy: is txschannel's, which checks the header: see
            # txschannel.haproxy.)
            endpoint = _parse(
                server_from_string, listen_reactor, description, f"--listen {original!r}"
            )
            listen.append((description, endpoint))
        self["endpoints"] = listen
        self["connect-endpoint"] = None
        if self["connect"] is not None:
            self["connect-endpoint"] = _parse(
                clientFromString, reactor, self["connect"], f"--connect {self['connect']!r}"
            )
        self["router"] = None
        if self["route"]:
            routes = []
            for name, description, given in self["route"]:
                endpoint = _parse(clientFromString, reactor, description, f"--route {given!r}")
                routes.append(Route(name, description, endpoint))
            fallback = None
            if self["connect-endpoint"] is not None:
                fallback = Route(None, self["connect"], self["connect-endpoint"])
            elif any(not d.startswith("schannel:") for d, _ in listen):
                raise usage.UsageError(
                    "--route without --connect: a plain listener's clients send no server "
                    "name, so they could never be routed; add --connect for them"
                )
            self["router"] = Router(routes, fallback, reactor)
        self._check_proxy_protocol()
        self["status-endpoint"] = None
        if self["status"] is not None:
            _check_status_description(self["status"])
            self["status-endpoint"] = _parse(
                serverFromString, listen_reactor, self["status"], f"--status {self['status']!r}"
            )
            _loopback_unless_given(self["status-endpoint"], self["status"])
        policy = AccessPolicy(tuple(self["allow-cn"]), tuple(self["allow-san"]))
        if policy.active and not any(_asks_for_client_certificates(e) for _, e in listen):
            raise usage.UsageError(
                "--allow-cn/--allow-san need a schannel: listen endpoint that asks for client "
                "certificates: add clientCA=<CA file> (and requireClientCertificate=yes)"
            )
        self["policy"] = policy
        if inspector:
            announce.append("serving the inspector")
        for name, description, _ in self["route"]:
            announce.append(f"relaying server name {name} to {description}")
        if self["connect"] is not None:
            announce.append(
                f"relaying {'other server names ' if self['route'] else ''}to {self['connect']}"
            )
        elif self["route"]:
            announce.append("refusing other server names (unrecognized_name)")
        if self["self-signed"] is not None and inspector:
            ports = [
                match.group(1)
                for match in (re.match(r"schannel:tcp6?:(?:port=)?(\d+)", d) for d in descriptions)
                if match
            ]
            url = f"https://localhost:{ports[0] if ports else 'PORT'}/"
            announce.append(
                f"open {url} (the certificate is self-signed: trust "
                f"{self['self-signed'].certificate_file}, SHA-256 "
                f"{self['self-signed'].fingerprint})"
            )
            announce.append(f"try: curl --cacert {self['self-signed'].certificate_file} {url}")
        self["announce"] = announce


def _check_status_description(description: str) -> None:
    """Refuse ``--status`` endpoints that would escape its loopback default.

    ``haproxy:`` would take a PROXY header from anyone who can connect and
    bind every address through its inner endpoint; an empty ``interface=``
    is Twisted's spelling of every address, easy to write by mistake.

    :raises usage.UsageError: naming the option and what to write instead.
    """
    segments = re.split(r"(?<!\\):", description)
    types = [segment.lower() for segment in segments[:2]]
    if types[0] == "haproxy" or types[:2] == ["schannel", "haproxy"]:
        raise usage.UsageError(
            f"--status {description!r}: the status listener reads no PROXY header (health "
            "checks and scrapes come to it directly): use tcp:PORT"
        )
    if any(segment == "interface=" for segment in segments):
        raise usage.UsageError(
            f"--status {description!r}: interface= is empty, which means every address: "
            "write interface=0.0.0.0 (or interface=::) if that is meant"
        )


def _loopback_unless_given(endpoint: IStreamServerEndpoint, description: str) -> None:
    """Make a TCP *endpoint* that names no interface listen on loopback only.

    For ``--status``: its pages have no access control, so ``tcp:9090``
    means 127.0.0.1 (``tcp6:9090``: ::1) unless ``interface=`` (or an
    interface given in place) says otherwise. Twisted's TCP endpoints keep
    the interface in ``_interface`` with no public way to change it; the
    defaults are "" (every IPv4 address) and "::" (every IPv6 address).
    """
    if _has_option(description, "interface"):
        return
    from twisted.internet.endpoints import (
        SSL4ServerEndpoint,
        TCP4ServerEndpoint,
        TCP6ServerEndpoint,
    )

    # (schannel:tcp:... keeps its TCP endpoint as .inner.)
    inner = getattr(endpoint, "inner", endpoint)
    if isinstance(inner, TCP6ServerEndpoint):
        if inner._interface == "::":
            inner._interface = "::1"
    elif isinstance(inner, (TCP4ServerEndpoint, SSL4ServerEndpoint)):
        if inner._interface == "":
            inner._interface = "127.0.0.1"


def version_lines() -> list[str]:
    """What ``twist schannel --version`` prints: one ``name version`` per line.

    OpenSSL is the library pyOpenSSL (and so txschannel) links; cryptography
    may link another copy, said when it does.
    """
    import platform

    import cryptography
    import OpenSSL
    from cryptography.hazmat.backends.openssl import backend

    import twisted
    import txschannel

    linked = SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode("ascii", "replace")
    theirs = backend.openssl_version_text()
    lines = [
        f"txschannel {txschannel.__version__}",
        f"pyOpenSSL {OpenSSL.__version__}",
        f"cryptography {cryptography.__version__}"
        + ("" if theirs == linked else f" (with {theirs})"),
        linked,
        f"Twisted {twisted.__version__}",
        f"Python {platform.python_version()}",
    ]
    return lines


def _proxy_header(version: str) -> Callable[[Any], bytes]:
    if version == "v1":
        return lambda transport: header_v1(transport.getPeer(), transport.getHost())
    return lambda transport: header_v2(
        transport.getPeer(), transport.getHost(), tls_facts(transport)
    )


def _seconds(option: str, text: str, *, zero: bool = False) -> float:
    """*text* as a number of seconds: above 0 (or, with *zero*, 0 too)."""
    try:
        value = float(text)
    except ValueError:
        raise usage.UsageError(f"--{option} {text!r}: expected a number of seconds") from None
    # (NaN and infinity are no durations either.)
    if not (0 <= value if zero else 0 < value) or not value < 1e9:
        raise usage.UsageError(
            f"--{option} {text!r}: must be {'0 or more' if zero else 'above 0'}"
        )
    return value


def _count(option: str, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise usage.UsageError(f"--{option} {text!r}: expected a whole number") from None
    if value < 1:
        raise usage.UsageError(f"--{option} {text!r}: must be at least 1")
    return value


def _parse(parse: Callable[[Any, str], Any], reactor: Any, description: str, option: str) -> Any:
    """*parse* (serverFromString or clientFromString) of *description*, or a
    UsageError naming *option* with what was wrong."""
    try:
        return parse(reactor, description)
    except Exception as e:  # Twisted's parsers raise ValueError, TypeError, ...
        kind = "server" if option.startswith(("--listen", "--status")) else "client"
        raise usage.UsageError(f"{option}: {parse_error_text(e, description, kind)}") from None


def _asks_for_client_certificates(endpoint: IStreamServerEndpoint) -> bool:
    credentials = getattr(endpoint, "credentials", None)
    if not isinstance(credentials, Credentials):
        return False
    return bool(credentials.openssl_context.get_verify_mode() & SSL.VERIFY_PEER)


def _usage_exit(message: str) -> NoReturn:
    sys.stderr.write(f"twist schannel: {message} (see twist schannel --help)\n")
    sys.stderr.flush()
    raise SystemExit(_EX_USAGE)


class _StopSignals:
    """Twisted's SIGTERM and SIGINT handlers, made safe to run twice.

    Each stops the reactor, and a second signal while it stops makes
    ``reactor.stop()`` raise ReactorNotRunning: a critical log line with a
    traceback. Under systemd that is every stop with ``--workers``: systemd
    signals every process of the service and the supervisor passes its
    SIGTERM on, so each worker gets two; a drain also leaves time for a
    second Ctrl-C. The first signal still goes to Twisted's handler (which
    notes it for twist's exit status); any signal once the reactor is
    stopping, for whatever reason, is one log line.
    """

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.stopping = False

    def install(self) -> None:
        """Wrap the reactor's own handlers (installed as it started)."""
        for number in (signal.SIGTERM, signal.SIGINT):
            original = signal.getsignal(number)
            if callable(original) and getattr(original, "__self__", None) is self.reactor:
                signal.signal(number, self._wrap(original))
        self.reactor.addSystemEventTrigger("before", "shutdown", self._stopping)

    def _stopping(self) -> None:
        self.stopping = True

    def _wrap(self, original: Callable[[int, FrameType | None], Any]) -> Any:
        def handler(number: int, frame: FrameType | None) -> None:
            if self.stopping:
                # (In a signal handler: the reactor logs it, not this frame.)
                self.reactor.callFromThread(
                    _log.info, "{signal} again: already stopping",
                    signal=signal.Signals(number).name,
                )
                return
            self.stopping = True
            original(number, frame)

        return handler


def makeService(options: Options) -> SchannelService:
    """The ``twist schannel`` service for parsed *options*."""
    reactor = options["reactor"]
    connect: IStreamClientEndpoint | None = options["connect-endpoint"]
    router: Router | None = options["router"]
    application: IProtocolFactory
    if connect is None and router is None:
        application = InspectorSite()
        # The page shows what each client offered: the inspector's TLS
        # listeners keep the ClientHello (a relay's never do).
        for _, endpoint in options["endpoints"]:
            if isinstance(endpoint, SchannelServerEndpoint):
                endpoint.keep_client_hello = True
    else:
        application = RelayFactory(
            connect, options["connect"], reactor,
            connect_timeout=options["connect-timeout"], router=router,
            proxy_header=(
                _proxy_header(options["proxy-protocol"]) if options["proxy-protocol"] else None
            ),
        )
    limit = ConnectionLimit(options["max-connections"])
    worker: Worker | None = options.get("worker")
    metrics = None
    if options["status-endpoint"] is not None:
        from txschannel.terminator.metrics import Metrics, status_site

        metrics = Metrics(
            multiprocess=os.environ.get("PROMETHEUS_MULTIPROC_DIR") if worker else None
        )
    gated = GateFactory(
        application, options["policy"], reactor,
        limit=limit, idle_timeout=options["idle-timeout"], metrics=metrics,
        worker=os.getpid() if worker is not None else None,
    )
    service = SchannelService(
        options["endpoints"],
        gated,
        reactor,
        reload_interval=options["reload-interval"] if worker is None else None,
        announce=options["announce"],
        limit=limit,
        prepare=router.install if router is not None else None,
        on_credentials=metrics.note_certificates if metrics is not None else None,
        # Relayed connections may be anything long-lived; the inspector's
        # are idle HTTP keep-alives more often than not.
        drain_timeout=options["drain-timeout"] if isinstance(application, RelayFactory) else 0,
        drain_delay=options["drain-delay"],
        # A worker's supervisor reloads and warns, for all workers at once.
        signals=worker is None,
        validity_interval=_VALIDITY_CHECK_INTERVAL if worker is None else None,
        worker=worker is not None,
        replaced=worker.replaced if worker is not None else None,
    )
    if metrics is not None:
        service.status = (
            options["status"], options["status-endpoint"], status_site(metrics, service, reactor)
        )
    if hasattr(reactor, "callWhenRunning"):
        reactor.callWhenRunning(_StopSignals(reactor).install)
    return service
