"""A both-ways relay: every accepted connection is joined to a new outgoing one.

This is the stunnel part of ``twist schannel``. Each connection accepted by
a :class:`RelayFactory` opens a connection on the configured client endpoint
and the two are joined:

- bytes flow both ways unchanged; either endpoint may be plain or
  ``schannel:``, so the same code terminates TLS and originates it;
- *flow control*: each transport is registered as the streaming producer of
  the other, so when one side cannot keep up, Twisted pauses reading on the
  other side instead of buffering without bound;
- *half-close*: end-of-stream from one side (TCP FIN, or TLS close_notify)
  becomes a write shutdown toward the other, so request/response protocols
  that signal "done sending" that way keep working;
- when one side ends cleanly (TCP FIN, TLS close_notify), the other is
  closed cleanly too, after its pending bytes; when one side ends in an
  abort (a reset, a TLS error, a stream cut short without close_notify),
  the other is aborted: no close_notify is sent and a TCP peer gets a
  reset, so a cut-off stream never looks complete on the other side;
- nothing is buffered without a bound: until the backend is connected the
  client is not read, and once either side has ended, whatever still
  arrives for it is dropped.

The relay says why a connection ended in :attr:`Inbound.close_reason`, for
the one log line ``twist schannel`` writes per connection.
"""

from __future__ import annotations

import errno
import math
import socket
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHalfCloseableProtocol,
    IProtocol,
    IStreamClientEndpoint,
    ITransport,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txschannel import _sendnow
from txschannel.peertext import PeerText
from txschannel.protocol import ConnectionTruncated

if TYPE_CHECKING:
    from txschannel.terminator.routing import Router

# Imported now, not when the warning is due: with no file descriptor left,
# an import cannot open the module's file and fails.
try:
    import resource  # (POSIX only)
except ImportError:  # pragma: no cover (Windows)
    resource = None  # type: ignore[assignment]
try:
    import fcntl  # (POSIX only)
    import termios
except ImportError:  # pragma: no cover (Windows)
    fcntl = None  # type: ignore[assignment]
    termios = None  # type: ignore[assignment]

__all__ = ["RelayFactory", "Inbound", "Outbound", "no_delay", "reset", "send_at_once"]

# (Named, not derived from the module: operators filter on the namespace
# their logs have always shown, "txschannel.relay".)
_log = Logger(namespace="txschannel.relay")

#: Bytes an inbound connection may hold while its backend connection is
#: being made. Reading is paused meanwhile, so only what was already on its
#: way arrives (one read of the transport, at most 64 KiB, decrypted); more
#: means the transport does not honour pauseProducing, and the client is
#: aborted rather than buffered.
MAX_PENDING = 256 * 1024

#: Seconds between two warnings that file descriptors ran out: a flood of
#: clients must not become a flood of identical log lines.
_FD_WARNING_INTERVAL = 10.0


def no_delay(transport: object) -> None:
    """Turn Nagle's algorithm off on *transport* (or the TCP under it), if it is TCP.

    A relay passes bytes on as they come; with Nagle on, a short write that
    follows another (a response's end, then TLS close_notify) waits for the
    peer's delayed ACK, about 40 ms on Linux, on every exchange.
    """
    try:
        set_no_delay = getattr(transport, "setTcpNoDelay", None)
        if callable(set_no_delay):
            set_no_delay(True)
    except OSError:
        pass


def send_at_once(transport: object) -> None:
    """Have the TCP transport under *transport* (through TLS and gate layers)
    send each write at once when nothing is queued before it, instead of in
    the reactor's next turn (see :mod:`txschannel._sendnow`): for a relay,
    whose sockets are almost always writable, two ``epoll_ctl`` calls and
    a reactor turn less per 64 KiB chunk and per short exchange. Transports
    of other kinds are left alone.
    """
    _sendnow.send_at_once(_bottom(transport)[0])


def _unregister(transport: ITransport | None) -> None:
    # A transport with a paused streaming producer resumes the producer
    # instead of finishing a close once its buffer drains (Twisted's
    # FileDescriptor.doWrite), so a close would never complete: the other
    # side has nothing more to give anyway.
    unregister = getattr(transport, "unregisterProducer", None)
    if callable(unregister):
        unregister()


def _lose(transport: ITransport | None) -> None:
    """Close *transport* after its pending bytes."""
    if transport is None:
        return
    _unregister(transport)
    transport.loseConnection()


def _lose_write(transport: ITransport | None) -> None:
    """Shut down the writing half of *transport*, or all of it when it cannot half-close."""
    if transport is None:
        return
    _unregister(transport)
    lose_write = getattr(transport, "loseWriteConnection", None)
    if callable(lose_write):
        lose_write()
    else:
        transport.loseConnection()


def _socket_under(transport: object) -> socket.socket | None:
    """The socket at the bottom of *transport* (through TLS and gate layers), if any."""
    return _bottom(transport)[1]


#: Where ``tcpi_bytes_acked`` (Linux 4.1) and ``tcpi_snd_wnd`` (5.4) sit in
#: Linux's ``struct tcp_info``, which only ever grows at its end.
_TCPI_BYTES_ACKED = struct.Struct("=Q")
_TCPI_BYTES_ACKED_OFFSET = 120
_TCPI_SND_WND = struct.Struct("=I")
_TCPI_SND_WND_OFFSET = 228
_TCP_INFO = getattr(socket, "TCP_INFO", None)
#: SIOCOUTQ, under the name the termios module has for it (Linux).
_OUTQ = getattr(termios, "TIOCOUTQ", None) if termios is not None else None


def probe_window(transport: object, every: float) -> None:
    """Have the kernel ask *transport*'s TCP peer for its receive window
    every *every* seconds that nothing is in flight (TCP keep-alive).

    A peer reading from its own receive buffer says so only in the window
    its ACKs carry; with nothing to acknowledge it sends none, so
    :func:`send_progress` would see no change. Keep-alive probes are
    answered with an ACK and the window of the moment. Does nothing for
    other transports, and never raises.
    """
    sock = _bottom(transport)[1]
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    seconds = max(1, math.ceil(every))
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if hasattr(socket, "TCP_KEEPIDLE"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, seconds)
        if hasattr(socket, "TCP_KEEPINTVL"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, seconds)
    except OSError:
        pass


def _bottom(transport: object) -> tuple[object, socket.socket | None]:
    """The lowest transport under *transport* (through TLS and gate layers) and its socket."""
    for _ in range(8):
        get_handle = getattr(transport, "getHandle", None)
        handle = get_handle() if callable(get_handle) else None
        if isinstance(handle, socket.socket):
            return transport, handle
        below = getattr(transport, "transport", None)
        if below is None:
            return transport, None
        transport = below
    return transport, None


def send_progress(transport: object) -> tuple[int, int, int, int]:
    """A snapshot of what *transport* has still to deliver to its peer.

    ``(bytes the peer acknowledged, the receive window it announced last,
    bytes in the kernel's send queue, bytes in Twisted's write buffer)``;
    -1 for what cannot be known (the first two are TCP's, from Linux's
    ``TCP_INFO``; the third needs a socket and ``SIOCOUTQ``, which Unix
    sockets have too). Between two snapshots with no write in between, any
    change means the peer took bytes: its reading is progress even when
    nothing new is written or read.

    Never raises: a transport of another kind (a pipe, a closed socket)
    gives -1s and its buffer.
    """
    bottom, sock = _bottom(transport)
    # Twisted's FileDescriptor: what write() took and the kernel did not
    # (it writes on only as the socket drains).
    data_buffer = getattr(bottom, "dataBuffer", b"")
    offset = getattr(bottom, "offset", 0)
    temporary = getattr(bottom, "_tempDataLen", 0)
    try:
        buffered = len(data_buffer) - int(offset) + int(temporary)
    except (TypeError, ValueError):
        buffered = -1
    acked = queued = window = -1
    if sock is not None:
        try:
            fd = sock.fileno()
        except OSError:
            fd = -1
        if fd >= 0:
            if _TCP_INFO is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
                try:
                    info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 256)
                except OSError:
                    info = b""
                if len(info) >= _TCPI_BYTES_ACKED_OFFSET + _TCPI_BYTES_ACKED.size:
                    (acked,) = _TCPI_BYTES_ACKED.unpack_from(info, _TCPI_BYTES_ACKED_OFFSET)
                if len(info) >= _TCPI_SND_WND_OFFSET + _TCPI_SND_WND.size:
                    (window,) = _TCPI_SND_WND.unpack_from(info, _TCPI_SND_WND_OFFSET)
            if _OUTQ is not None:
                try:
                    # SIOCOUTQ (TIOCOUTQ on a socket): unsent and unacknowledged
                    # bytes of TCP, undelivered memory of a Unix socket.
                    answer = fcntl.ioctl(fd, _OUTQ, b"\0\0\0\0")
                    (queued,) = struct.unpack("i", answer)
                except OSError:
                    pass
    return acked, window, queued, buffered


def reset(transport: ITransport | None) -> None:
    """End *transport* as an abort: no TLS close_notify, and a TCP reset.

    Twisted's ``abortConnection`` drops pending bytes but closes the socket
    with a FIN, which a plaintext peer cannot tell from a complete stream;
    with SO_LINGER at zero the kernel sends a reset instead.
    """
    if transport is None:
        return
    _unregister(transport)
    sock = _socket_under(transport)
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    abort = getattr(transport, "abortConnection", None)
    if callable(abort):
        abort()
    else:
        transport.loseConnection()


def _is_abort(reason: Failure) -> bool:
    """Whether *reason* ended a connection other than cleanly.

    Clean is a TCP FIN or, for TLS, the peer's close_notify: both are
    ``ConnectionDone``. A reset, a TLS error, a timeout, or a TLS stream
    that ended without close_notify (``ConnectionTruncated``, a
    ``ConnectionLost``) is an abort.
    """
    return not isinstance(reason.value, ConnectionDone)


@implementer(IHalfCloseableProtocol)
class _Side(Protocol):
    """One end of a joined pair: what it reads, its partner writes.

    :ivar partner: the other side, once both are connected.
    :ivar read_closed: the peer of this side finished sending (EOF).
    :ivar write_closed: we shut down writing toward the peer of this side.
    """

    partner: _Side | None = None
    read_closed = False
    write_closed = False
    lost = False

    def _inbound(self) -> Inbound:
        raise NotImplementedError

    def dataReceived(self, data: bytes) -> None:
        partner = self.partner
        # Once the partner is gone or its writing half is shut, there is
        # no one to give the bytes to: drop them (its transport may still
        # buffer writes while it closes, with no producer left to pause us).
        if partner is not None and partner.transport is not None and not (
            partner.lost or partner.write_closed
        ):
            partner.transport.write(data)

    def readConnectionLost(self) -> None:
        # The peer on this side said it has nothing more to send: say the
        # same to the peer on the other side, and keep the other direction.
        self.read_closed = True
        partner = self.partner
        if partner is not None and not partner.lost:
            partner.write_closed = True
            _lose_write(partner.transport)
            partner._close_if_done()
        self._close_if_done()

    def writeConnectionLost(self) -> None:
        self.write_closed = True
        self._close_if_done()

    def _close_if_done(self) -> None:
        # Both directions are finished: Twisted does not close a half-closed
        # TCP connection by itself.
        if self.read_closed and self.write_closed:
            _lose(self.transport)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost = True
        partner = self.partner
        if partner is not None and not partner.lost:
            if _is_abort(reason):
                reset(partner.transport)
            else:
                _lose(partner.transport)


class Inbound(_Side):
    """The accepted side. It opens the outbound connection when it is connected.

    :ivar close_reason: why the pair ended, in words, once known (the
        first side to end decides).
    """

    close_reason: str | None = None
    #: "client" or "backend": which finished sending first, if one did.
    finished_first: str | None = None

    def __init__(self, factory: RelayFactory) -> None:
        self.factory = factory
        self._pending: list[bytes] = []
        self._pending_size = 0
        #: The backend cannot be had: nothing more is kept for it.
        self._given_up = False
        self._connecting: Deferred[IProtocol] | None = None
        #: How log lines name the backend this connection is relayed to.
        self.backend_name = factory.name
        #: Gives up on the backend connection after ``connect_timeout``.
        self._connect_timer: IDelayedCall | None = None
        self._timed_out = False

    def _ended(self, reason: str) -> None:
        if self.close_reason is None:
            self.close_reason = reason

    def _finished(self, side: str) -> None:
        # The first side to finish sending (TCP FIN, TLS close_notify).
        if self.finished_first is None:
            self.finished_first = side

    def connectionMade(self) -> None:
        assert self.transport is not None
        if not getattr(self.transport, "tcp_tuned", False):
            # (Under a gate both are done already: a setsockopt and a walk
            # down the layers less per connection.)
            no_delay(self.transport)
            send_at_once(self.transport)
        # Read nothing more until the outgoing side exists to take it.
        pause = getattr(self.transport, "pauseProducing", None)
        if callable(pause):
            pause()
        endpoint = self.factory.endpoint
        router = self.factory.router
        if router is not None:
            server_name = _server_name(self.transport)
            route = router.pick(server_name)
            if route is None:
                # A TLS client asking for such a name was already refused in
                # the handshake (unrecognized_name): this is a plain
                # listener's client, which names nothing.
                self._given_up = True
                self._ended(
                    "no --route for "
                    + (f"server name {server_name!r}" if server_name else "a client without a "
                       "server name")
                    + " and no --connect"
                )
                reset(self.transport)
                return
            endpoint, self.backend_name = route.endpoint, route.description
        assert endpoint is not None
        timeout = self.factory.connect_timeout
        if timeout is not None:
            self._connect_timer = self.factory._clock.callLater(timeout, self._connect_timed_out)
        self._connecting = endpoint.connect(_OutboundFactory(self))
        self._connecting.addCallbacks(self._joined, self._unreachable)

    def _connect_timed_out(self) -> None:
        self._connect_timer = None
        connecting = self._connecting
        if connecting is not None:
            self._timed_out = True
            # Cancelling fails the Deferred: _unreachable() aborts the client.
            connecting.cancel()

    def _stop_connect_timer(self) -> None:
        if self._connect_timer is not None:
            self._connect_timer.cancel()
            self._connect_timer = None

    def _joined(self, outbound: IProtocol) -> None:
        self._connecting = None
        self._stop_connect_timer()
        assert isinstance(outbound, Outbound)
        if self.lost:
            # The client left while we were connecting.
            if outbound.transport is not None:
                outbound.transport.loseConnection()
            return
        self.partner = outbound
        outbound.partner = self
        assert self.transport is not None and outbound.transport is not None
        try:
            # Each transport is the producer of the other: a full write buffer on
            # one side pauses reading on the other.
            self.transport.registerProducer(outbound.transport, True)  # type: ignore[attr-defined]
            outbound.transport.registerProducer(self.transport, True)  # type: ignore[attr-defined]
            if self.factory.proxy_header is not None:
                # Before any byte of the client's: the backend reads it first.
                outbound.transport.write(self.factory.proxy_header(self.transport))
            pending, self._pending = self._pending, []
            self._pending_size = 0
            for data in pending:
                outbound.transport.write(data)
            if self.read_closed:
                self.readConnectionLost()
            resume = getattr(self.transport, "resumeProducing", None)
            if callable(resume) and not self.read_closed:
                resume()
        except Exception as error:
            # Raised here, the error would only fail the connect Deferred's
            # callback chain: the client would stay paused and the backend
            # connected, both for good, with no line. Both are aborted
            # instead, and the close line says why.
            self._ended(f"relay error: {type(error).__name__}: {error}")
            self._pending = []
            reset(outbound.transport)
            reset(self.transport)

    def _unreachable(self, failure: Failure) -> None:
        self._connecting = None
        self._stop_connect_timer()
        if self.lost:
            return
        self._given_up = True
        self._pending = []
        if self._timed_out:
            self._ended(
                f"connect endpoint timed out: no connection within "
                f"--connect-timeout {self.factory.connect_timeout:g} s"
            )
            _log.warn(
                "cannot reach {endpoint}: no connection within --connect-timeout {timeout} s",
                endpoint=self.backend_name,
                timeout=f"{self.factory.connect_timeout:g}",
            )
        elif _out_of_descriptors(failure):
            self._ended(f"connect endpoint failed: {failure.getErrorMessage()}")
            self.factory._descriptors_exhausted()
        else:
            self._ended(f"connect endpoint failed: {failure.getErrorMessage()}")
            _log.warn(
                "cannot reach {endpoint}: {error}",
                endpoint=self.backend_name,
                # (A TLS backend's error may quote its certificate.)
                error=PeerText(failure.getErrorMessage()),
            )
        # An abort, not a close: a clean close (TLS close_notify, TCP FIN)
        # would tell the client that the service answered with nothing.
        reset(self.transport)

    def dataReceived(self, data: bytes) -> None:
        if self.partner is None:
            if self._given_up or self.lost:
                return
            self._pending_size += len(data)
            if self._pending_size > MAX_PENDING:
                self._ended(
                    f"client sent over {MAX_PENDING} bytes while the backend connection "
                    "was being made"
                )
                self._given_up = True
                self._pending = []
                reset(self.transport)
                return
            self._pending.append(data)
            return
        super().dataReceived(data)

    def readConnectionLost(self) -> None:
        self._finished("client")
        if self.partner is None:
            # Remember it; _joined() passes it on.
            self.read_closed = True
            return
        super().readConnectionLost()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._ended(_describe("client", reason, self.finished_first))
        # Marked before cancelling: the cancellation runs _unreachable(),
        # which must see that there is no client left to tell.
        self.lost = True
        self._stop_connect_timer()
        connecting, self._connecting = self._connecting, None
        if connecting is not None:
            connecting.cancel()
        super().connectionLost(reason)


class Outbound(_Side):
    """The side this relay connected to (the ``--connect`` endpoint)."""

    def __init__(self, inbound: Inbound) -> None:
        self.inbound = inbound

    def connectionMade(self) -> None:
        no_delay(self.transport)
        send_at_once(self.transport)

    def readConnectionLost(self) -> None:
        self.inbound._finished("backend")
        super().readConnectionLost()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.inbound._ended(_describe("backend", reason, self.inbound.finished_first))
        super().connectionLost(reason)


def _server_name(transport: object) -> str | None:
    """The server name a TLS client asked for on *transport* (None for plain TCP)."""
    context = getattr(transport, "securityContext", None)
    if context is None or not getattr(context, "established", False):
        return None
    name: str | None = context.attributes.server_name
    return name


def _out_of_descriptors(failure: Failure) -> bool:
    """Whether a connect failed because this process has no file descriptor left."""
    value = failure.value
    number = getattr(value, "osError", None)
    if number is None:
        number = getattr(value, "errno", None)
    return number in (errno.EMFILE, errno.ENFILE)


def _describe(side: str, reason: Failure, first: str | None = None) -> str:
    """Why a connection ended, in words, as *side* lost it with *reason*.

    *first* is the side that finished sending first, if one did: after a
    clean end it is the one that ended the exchange (a client's
    close_notify reaches the backend as an end of its input, and the
    backend's close follows).
    """
    value = reason.value
    if isinstance(value, ConnectionDone):
        return f"{first or side} closed"
    if isinstance(value, ConnectionTruncated) and value.closed:
        # A TCP FIN without TLS's close_notify: what many HTTP clients do
        # once their exchange is over. (The other side is still aborted.)
        how = f"{side} closed without close_notify"
    elif getattr(value, "status", None) is not None:
        how = f"{side} TLS error {value}"
    else:
        how = f"{side} lost: {reason.getErrorMessage()}"
    if first is not None and first != side:
        return f"{first} closed, then {how}"
    return how


class _OutboundFactory(Factory):
    # One per relayed connection: Twisted's start/stop lines would double the log.
    noisy = False

    def __init__(self, inbound: Inbound) -> None:
        self.inbound = inbound

    def buildProtocol(self, addr: IAddress | None) -> Outbound:
        protocol = Outbound(self.inbound)
        protocol.factory = self
        return protocol


class RelayFactory(Factory):
    """Accepts connections and relays each to a new connection on *endpoint*.

    :param endpoint: where every accepted connection is relayed to (any
        ``IStreamClientEndpoint``; ``schannel:`` for TLS origination).
    :param name: how log lines name *endpoint* (e.g. its description string).
    :param clock: for spacing repeated warnings and the connect timeout
        (the reactor by default).
    :param connect_timeout: seconds to wait for the backend connection
        before aborting the client (``--connect-timeout``), or ``None``
        (the endpoint's own timeout, such as ``tcp:``'s ``timeout=`` of 30
        s, still applies).
    :param router: picks the endpoint by the client's server name
        (``--route``); *endpoint* is then the default for other names, and
        may be ``None`` (no default: such clients are aborted).
    :param proxy_header: makes the bytes written to each backend connection
        before the client's, from the accepted transport (``--proxy-protocol``:
        a PROXY header).
    """

    noisy = False

    def __init__(
        self,
        endpoint: IStreamClientEndpoint | None,
        name: str | None = None,
        clock: Any = None,
        *,
        connect_timeout: float | None = None,
        router: Router | None = None,
        proxy_header: Callable[[Any], bytes] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.connect_timeout = connect_timeout
        self.router = router
        self.proxy_header = proxy_header
        self.name = name if name is not None else repr(endpoint)
        if clock is None:
            from twisted.internet import reactor

            clock = reactor
        self._clock = clock
        self._fd_warned_at: float | None = None
        self._fd_unwarned = 0

    def _descriptors_exhausted(self) -> None:
        """A backend connection could not be made for want of a file descriptor.

        Warn once, naming the limit, then at most once every
        ``_FD_WARNING_INTERVAL`` seconds with how many clients were aborted
        since: the cause is this process's limit, not the backend.
        """
        self._fd_unwarned += 1
        now = self._clock.seconds()
        if self._fd_warned_at is not None and now - self._fd_warned_at < _FD_WARNING_INTERVAL:
            return
        soft: object = (
            "unknown" if resource is None else resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        )
        _log.warn(
            "out of file descriptors (the open-files limit, ulimit -n, is {limit}): "
            "{count} client(s) aborted because no connection to {endpoint} could be "
            "opened; raise the limit or lower the load",
            limit=soft,
            count=self._fd_unwarned,
            endpoint=self.name,
        )
        self._fd_warned_at = now
        self._fd_unwarned = 0

    def buildProtocol(self, addr: IAddress | None) -> Inbound:
        protocol = Inbound(self)
        protocol.factory = self
        return protocol

    def __repr__(self) -> str:
        return f"<RelayFactory to {self.name}>"
