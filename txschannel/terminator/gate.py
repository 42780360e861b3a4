"""The gate around every connection ``twist schannel`` accepts, and its log line.

A :class:`ConnectionGate` stands between the accepted transport and the
application (relay or inspector): it admits the client once the handshake is
done (:class:`~txschannel.terminator.access.AccessPolicy`), applies
``--max-connections`` and ``--idle-timeout``, counts the bytes each way and
writes one ``connection closed`` line (logfmt, peer text escaped).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHalfCloseableProtocol,
    IHandshakeListener,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    ITransport,
)
from twisted.internet.protocol import Factory, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer, providedBy

from txschannel.context import Attributes
from txschannel.peertext import PeerText, printable
from txschannel.protocol import ConnectionTruncated, SchannelProtocol, declare_provides
from txschannel.status import SecurityError
from txschannel.terminator.access import AccessPolicy
from txschannel.terminator.addresses import address_text
from txschannel.terminator.limits import ConnectionLimit
from txschannel.terminator.relay import (
    no_delay,
    probe_window,
    reset,
    send_at_once,
    send_progress,
)

__all__ = ["ConnectionGate", "GateFactory"]

if TYPE_CHECKING:
    # Imported when --status is given: with --workers, prometheus_client
    # must first be told where the workers keep their figures.
    from txschannel.terminator.metrics import Metrics


_log = Logger(namespace="txschannel")


_NEEDS_QUOTES = re.compile(r'[\s"=]').search
#: Printable ASCII but for space, '"', '=' and backslash: text made only of
#: these is its own logfmt value (nothing to escape, nothing to quote).
_PLAIN = re.compile(r"[!#-<>-\[\]-~]+").fullmatch


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
    if type(value) is int or type(value) is float:  # counts, durations: nothing to escape
        return str(value)
    if type(value) is str and _PLAIN(value):
        # The usual address, protocol, cipher and name: one regex call
        # instead of printable() and the quoting check (a line per connection).
        return value
    text = printable(value if isinstance(value, str) else str(value))
    if _NEEDS_QUOTES(text):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


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
    facts: dict[str, Any] = {"peer": address_text(getPeer()) if callable(getPeer) else None}
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

    #: The application starts only after makeConnection() turned Nagle off
    #: and switched the TCP under us to sending at once (see relay.no_delay
    #: and relay.send_at_once): the relay need not do it again.
    tcp_tuned = True

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
        if type(transport) is not SchannelProtocol:
            # (Ours switched the TCP under it in its own makeConnection: the
            # walk down the layers to find it again is saved.)
            send_at_once(transport)
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
        line = " ".join([f"{name}={_logfmt(value)}" for name, value in fields.items()])
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

    def abort(self, reason: str) -> None:
        """Close now, dropping pending bytes; the log line gives *reason* as why."""
        self._our_reason = reason
        self.abortConnection()

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
