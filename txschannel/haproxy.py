"""The ``haproxy:`` server endpoint: a PROXY protocol header before the stream.

A load balancer that speaks HAProxy's `PROXY protocol
<https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt>`_ writes, as
the first bytes of each connection, who its client is and which address
that client connected to. A listener behind it reads that header, takes it
off the stream, and reports those addresses as the connection's
``getPeer()`` and ``getHost()``.

Twisted's own ``haproxy:`` endpoint does this too; ``schannel:haproxy:...``
and ``twist schannel --listen haproxy:...`` use this one instead, which
differs where a header is hostile or broken:

- every field is checked: version 1 addresses must be IP addresses of the
  family the line names (``TCP4``/``TCP6``) and ports decimal numbers from
  0 to 65535; a version 2 header must have a known command, family and
  transport, addresses as long as its family needs and TLVs that exactly
  fill the rest. Twisted takes ``PROXY TCP4 evil 10.0.0.1 99999 443`` as
  it is, and a port that is no number or an address that is not UTF-8
  escapes its parser as an unhandled error with a traceback;
- ``PROXY UNKNOWN`` (with or without the addresses the specification lets
  follow it), version 2 ``LOCAL`` and the ``UNSPEC`` family are accepted:
  the connection's own addresses stay (Twisted refuses ``PROXY UNKNOWN``);
- a header is refused once it is longer than :data:`MAX_HEADER` bytes,
  the largest HAProxy itself reads (its buffer, ``tune.bufsize``, is
  16,384 bytes by default);
- behind a ``schannel:`` endpoint, the bytes of a header still being read
  are charged to that listener's ``handshakeMemory`` budget like a
  ClientHello: past the budget the connection is refused, and logged in the
  same rate-limited line as refused handshakes;
- the protocol behind the endpoint is only started once the header is
  read, so it never sees the balancer's address as its peer (Twisted's
  starts it at once: a relay there connects its backend, and says who the
  client is, before the header has arrived). A TLS layer is the exception:
  it is started at once, since nothing reaches the application before its
  handshake, and its handshake timeout then covers the header; behind
  anything else the header must arrive within :data:`HEADER_TIMEOUT`,
  and a connection waiting for its header can be counted toward a limit
  on open connections from its accept (:attr:`ProxyHeaderFactory.connections`);
- half-close passes through: a client that shuts down its sending side
  after its request (TCP FIN, after TLS's close_notify or not) still gets
  the reply of a protocol behind that can half-close (a TLS layer,
  ``twist schannel``'s relay); Twisted's wrapper, and this one before,
  closed the whole connection at the FIN. A FIN after part of the header
  refuses the connection at once; one with nothing sent before it (a
  balancer's connect-and-close check) ends as it would without the header;
- a refused connection is aborted. A protocol already started (TLS) is
  told why: its ``connectionLost`` reason is a :class:`ProxyHeaderRefused`
  whose text quotes the peer's bytes escaped (``twist schannel`` writes it
  in the connection's one log line); otherwise the protocol never hears of
  the connection and the refusal is logged here, as one escaped line.

The header is trusted as it stands: whoever can connect to the listener can
claim any address. Such a listener must be reachable from the load balancer
only.
"""

from __future__ import annotations

import ipaddress
import re
import struct
from collections.abc import Callable
from typing import Any, cast
from typing import Protocol as _Interface

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import ConnectionClosed, ConnectionDone
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IFileDescriptor,
    IHalfCloseableProtocol,
    IListeningPort,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamServerEndpoint,
    ITransport,
)
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import directlyProvides, implementer, providedBy

from txschannel.peertext import printable
from txschannel.protocol import SchannelFactory

__all__ = [
    "HEADER_TIMEOUT",
    "MAX_HEADER",
    "MAX_V1_HEADER",
    "V1_SIGNATURE",
    "V2_SIGNATURE",
    "HAProxyServerEndpoint",
    "HeaderReader",
    "ProxyHeaderFactory",
    "ProxyHeaderRefused",
    "server_from_string",
]

#: The longest header accepted, in bytes, version 2 TLVs included: what
#: HAProxy reads itself (one peek of ``tune.bufsize``, 16,384 by default).
#: Real headers are a few hundred bytes at most.
MAX_HEADER = 16384
#: Seconds a header may take to arrive behind a listener that is not TLS
#: (a TLS listener's ``handshakeTimeout`` covers its header). A balancer
#: sends it at once, in its first segment; a connection that holds a
#: ``--max-connections`` slot without one is not a balancer, and keeps
#: the balancer's own connections waiting behind it for this long.
HEADER_TIMEOUT = 5.0
#: The longest version 1 line, CRLF included, as the specification says.
MAX_V1_HEADER = 107
#: The start of every version 1 header.
V1_SIGNATURE = b"PROXY "
#: The 12 bytes every version 2 header starts with.
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"

# Twisted's parser carries no annotations; this gives it types.
_twisted_server_from_string: Callable[[Any, str], IStreamServerEndpoint] = serverFromString

class _Slots(_Interface):
    """A count of open connections, as ``twist schannel --max-connections`` keeps.

    ``opened`` counts one (False: over the limit, abort it), ``closed``
    gives one back, and ``hand_over(start)`` passes a counted connection's
    slot on to whatever *start* starts and counts.
    """

    def opened(self) -> bool: ...

    def closed(self) -> None: ...

    def hand_over(self, start: Callable[[], object]) -> None: ...


_PORT = re.compile(rb"[0-9]{1,5}")
# Version 2: the family and transport byte, and the length of its addresses.
_V2_FAMILIES = {0x11: 12, 0x21: 36, 0x31: 216}
_V2_UNSPEC = 0x00
_log = Logger(namespace="txschannel")

# How many of the peer's bytes a refusal quotes.
_QUOTE = 40

Addresses = tuple[IAddress, IAddress] | None


class ProxyHeaderRefused(ConnectionClosed):
    """A connection was dropped for its PROXY header: malformed, too long, or
    past the listener's handshake memory budget. The text says which, with
    the peer's bytes escaped.

    The ``connectionLost`` reason of the protocol behind a ``haproxy:``
    endpoint whose header was refused. A :class:`ConnectionClosed`, but
    neither a clean close nor a :class:`ConnectionLost`: the connection was
    never the client's to close.
    """

    def __str__(self) -> str:
        # Escaped whoever reads it: the text quotes the peer's bytes.
        return printable(" ".join(str(arg) for arg in self.args))


def _quote(data: bytes) -> str:
    """The first bytes of *data*, quoted, one character each (escaped when shown)."""
    text = bytes(data[:_QUOTE]).decode("latin-1")
    return f"'{text}{'...' if len(data) > _QUOTE else ''}'"


def _refused(why: str) -> ProxyHeaderRefused:
    return ProxyHeaderRefused(f"bad PROXY header: {why}")


def _port(text: bytes, which: str) -> int:
    if not _PORT.fullmatch(text) or int(text) > 65535:
        raise _refused(f"{which} port {_quote(text)} is not a number from 0 to 65535")
    return int(text)


def _v1_address(
    text: bytes, version: int, which: str
) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        # ASCII only, and no IPv6 zone ("%eth0"): neither is an address of
        # the client's that the backend could use.
        if not text.isascii() or b"%" in text:
            raise ValueError
        address = ipaddress.ip_address(text.decode("ascii"))
    except ValueError:
        raise _refused(f"{which} address {_quote(text)} is not an IP address") from None
    if address.version != version:
        raise _refused(f"{which} address {_quote(text)} is not IPv{version}")
    return address


def _parse_v1(line: bytes) -> Addresses:
    """The addresses of a version 1 line (without its CRLF); None for UNKNOWN."""
    fields = line.split(b" ")
    if fields[1:2] == [b"UNKNOWN"]:
        # The specification: whatever follows UNKNOWN is to be ignored.
        return None
    if len(fields) != 6 or fields[1] not in (b"TCP4", b"TCP6"):
        raise _refused(
            f"{_quote(line)} is not PROXY TCP4|TCP6 <source> <destination> <port> <port>"
        )
    version = 4 if fields[1] == b"TCP4" else 6
    source = _v1_address(fields[2], version, "source")
    destination = _v1_address(fields[3], version, "destination")
    source_port = _port(fields[4], "source")
    destination_port = _port(fields[5], "destination")
    kind = IPv4Address if version == 4 else IPv6Address
    return (
        kind("TCP", str(source), source_port),
        kind("TCP", str(destination), destination_port),
    )


def _unix_path(raw: bytes) -> bytes:
    # A path ends at its first NUL; the rest of the 108 bytes is padding.
    return raw.split(b"\0", 1)[0]


def _parse_v2(header: bytes) -> Addresses:
    """The addresses of a whole version 2 header; None for LOCAL and UNSPEC."""
    command = header[12] & 0x0F
    family = header[13]
    body = header[16:]
    if command not in (0, 1):
        raise _refused(f"version 2 command {command} is neither LOCAL nor PROXY")
    if family != _V2_UNSPEC and family not in _V2_FAMILIES:
        raise _refused(
            f"version 2 family and transport 0x{family:02x} is not TCP over IPv4 or "
            "IPv6, a UNIX stream or UNSPEC"
        )
    size = _V2_FAMILIES.get(family, 0)
    if len(body) < size:
        raise _refused(
            f"version 2 addresses of family 0x{family:02x} need {size} bytes, "
            f"the header has {len(body)}"
        )
    tlvs = body[size:]
    while tlvs:
        # Each TLV: type, 2-byte length, value; together they fill the rest.
        if len(tlvs) < 3 or 3 + struct.unpack("!H", tlvs[1:3])[0] > len(tlvs):
            raise _refused("a version 2 TLV runs past the end of the header")
        tlvs = tlvs[3 + struct.unpack("!H", tlvs[1:3])[0]:]
    if command == 0 or family == _V2_UNSPEC:
        # LOCAL (the balancer's own connection, a health check) or an
        # address family it could not say: the connection's own addresses.
        return None
    if family == 0x31:
        return UNIXAddress(_unix_path(body[:108])), UNIXAddress(_unix_path(body[108:216]))
    if family == 0x11:
        source: Any = ipaddress.IPv4Address(body[0:4])
        destination: Any = ipaddress.IPv4Address(body[4:8])
        kind: type[IPv4Address] | type[IPv6Address] = IPv4Address
        ports = struct.unpack("!HH", body[8:12])
    else:
        source = ipaddress.IPv6Address(body[0:16])
        destination = ipaddress.IPv6Address(body[16:32])
        kind = IPv6Address
        ports = struct.unpack("!HH", body[32:36])
    return kind("TCP", str(source), ports[0]), kind("TCP", str(destination), ports[1])


class HeaderReader:
    """Reads one PROXY header, version 1 or 2, off the front of a byte stream.

    Sans-IO: :meth:`feed` takes the bytes as they arrive and says when the
    header is complete. Nothing is decided on a partial signature: a header
    may arrive one byte at a time.

    :param limit: the longest header accepted, in bytes.
    """

    def __init__(self, limit: int = MAX_HEADER) -> None:
        self.limit = limit
        self._buffer = b""

    @property
    def buffered(self) -> int:
        """Bytes held so far for an incomplete header."""
        return len(self._buffer)

    def feed(self, data: bytes) -> tuple[Addresses, bytes] | None:
        """Take *data*; None while the header is incomplete.

        :returns: once the header is complete, its addresses (source,
            destination), or None when it says to keep the connection's
            own (``UNKNOWN``, ``LOCAL``, ``UNSPEC``); and the bytes that
            followed it, which belong to the stream.
        :raises ProxyHeaderRefused: the bytes are no valid header, or a
            longer one than *limit*.
        """
        buffer = self._buffer + data
        if buffer.startswith(V2_SIGNATURE):
            result = self._v2(buffer)
        elif buffer.startswith(V1_SIGNATURE):
            result = self._v1(buffer)
        elif V1_SIGNATURE.startswith(buffer) or V2_SIGNATURE.startswith(buffer):
            result = None
        else:
            raise _refused(f"the connection starts with {_quote(buffer)}, not a PROXY header")
        if result is None:
            self._buffer = buffer
        else:
            self._buffer = b""
        return result

    def _v1(self, buffer: bytes) -> tuple[Addresses, bytes] | None:
        end = buffer.find(b"\r\n", 0, MAX_V1_HEADER)
        if end < 0:
            if len(buffer) >= MAX_V1_HEADER or b"\n" in buffer:
                raise _refused(
                    f"{_quote(buffer)} has no CRLF within {MAX_V1_HEADER} bytes"
                )
            return None
        return _parse_v1(buffer[:end]), buffer[end + 2:]

    def _v2(self, buffer: bytes) -> tuple[Addresses, bytes] | None:
        if len(buffer) < 16:
            return None
        if buffer[12] >> 4 != 2:
            raise _refused(f"version {buffer[12] >> 4} after the version 2 signature")
        size = 16 + struct.unpack("!H", buffer[14:16])[0]
        if size > self.limit:
            raise _refused(
                f"a version 2 header of {size} bytes; this listener takes at most {self.limit}"
            )
        if len(buffer) < size:
            return None
        return _parse_v2(buffer[:size]), buffer[size:]


@implementer(IHalfCloseableProtocol)
class _ProxyHeaderProtocol(ProtocolWrapper):
    """Reads the header, then passes the stream on; reports its addresses.

    The protocol behind it is started (``makeConnection``) only once the
    header is read, so that it never sees the balancer's address as its
    peer, except a TLS layer (:class:`~txschannel.protocol.SchannelFactory`),
    which is started at once: nothing reaches the application through it
    before the handshake, which only follows the header, and its handshake
    timeout, the connection limits and the log line of ``twist schannel``
    then cover the header too. A protocol not started yet is never told of
    the connection at all; a refusal is then logged here, and a header not
    complete within ``timeout`` seconds is refused.

    Half-close passes through: the transport sees an
    ``IHalfCloseableProtocol`` here (declared on the class, so that the
    interfaces copied from the transport in :meth:`makeConnection` keep
    it), and the peer's end of stream reaches the protocol behind as it
    would on the bare transport (see :meth:`readConnectionLost`).
    """

    factory: ProxyHeaderFactory
    # Any ITransport (abortConnection where it has one).
    transport: Any

    def __init__(self, factory: ProxyHeaderFactory, wrappedProtocol: IProtocol) -> None:
        super().__init__(factory, wrappedProtocol)  # type: ignore[arg-type]
        self._reader: HeaderReader | None = HeaderReader(factory.limit)
        self._addresses: Addresses = None
        self._refusal: ProxyHeaderRefused | None = None
        #: Bytes charged to the handshake memory budget for the header so far.
        self._charged = 0
        #: The wrapped protocol has been given the connection.
        self._started = False
        self._timer: IDelayedCall | None = None
        #: The factory's ``connections`` counts this connection for us (until
        #: the slot is handed over to the protocol started behind the header).
        self._holding: _Slots | None = None

    def makeConnection(self, transport: ITransport) -> None:
        directlyProvides(self, providedBy(transport))
        cast(Any, Protocol).makeConnection(self, transport)
        cast(Any, self.factory).registerProtocol(self)
        if isinstance(self.factory.wrappedFactory, SchannelFactory):
            # The TLS layer counts the connection itself (twist's gate is
            # started with it).
            self._start()
            return
        slots = self.factory.connections
        if slots is not None:
            if not slots.opened():
                # Over the limit: only from a port whose accepts could not
                # be capped. Nothing read, nothing logged (the limit counts it).
                self._refusal = ProxyHeaderRefused("over the connection limit")
                self._reader = None
                self._abort()
                return
            self._holding = slots
        if self.factory.timeout is not None:
            self._timer = self.factory.clock.callLater(self.factory.timeout, self._timed_out)

    def _start(self) -> None:
        self._started = True
        self.wrappedProtocol.makeConnection(cast(ITransport, self))

    def _start_counted(self) -> None:
        """Start the protocol behind the header, handing it this connection's slot."""
        slots, self._holding = self._holding, None
        if slots is None:
            self._start()
        else:
            slots.hand_over(self._start)

    def _release(self) -> None:
        slots, self._holding = self._holding, None
        if slots is not None:
            slots.closed()

    def _timed_out(self) -> None:
        self._timer = None
        self._refuse(
            ProxyHeaderRefused(
                f"PROXY header refused: not complete within {self.factory.timeout:g} s"
            )
        )

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def dataReceived(self, data: bytes) -> None:
        reader = self._reader
        if reader is None:
            if self._refusal is None:
                self.wrappedProtocol.dataReceived(data)
            return
        try:
            result = reader.feed(data)
        except ProxyHeaderRefused as refusal:
            self._refuse(refusal)
            return
        if result is None:
            if reader.buffered > self._charged:
                self._charge(reader.buffered)
            return
        self._reader = None
        self._cancel_timer()
        self._give_back()
        self._addresses, rest = result
        if not self._started:
            self._start_counted()
        if rest and self.wrappedProtocol is not None:
            self.wrappedProtocol.dataReceived(rest)

    def _charge(self, size: int) -> None:
        # The bytes wait here as a ClientHello waits in the TLS layer: they
        # are charged to the same budget (a plain listener has none).
        reserve = getattr(self.factory.wrappedFactory, "reserve_handshake_memory", None)
        if reserve is None:
            return
        if reserve(size - self._charged, _describe(self.transport.getPeer())):
            self._charged = size
            return
        self._refuse(
            ProxyHeaderRefused(
                "PROXY header refused: the listener's unfinished handshakes and headers "
                "hold its whole handshake memory budget (handshakeMemory)"
            )
        )

    def _give_back(self) -> None:
        charged, self._charged = self._charged, 0
        if charged:
            self.factory.wrappedFactory.release_handshake_memory(charged)

    def _refuse(self, refusal: ProxyHeaderRefused) -> None:
        self._refusal = refusal
        self._reader = None
        self._cancel_timer()
        self._give_back()
        if not self._started:
            # No protocol will write the connection's line: this is it.
            _log.warn(
                "{peer}: {why}",
                peer=_describe(self.transport.getPeer()),
                why=str(refusal),
                status="PROXY_HEADER_REFUSED",
            )
        self._abort()

    def _abort(self) -> None:
        abort = getattr(self.transport, "abortConnection", None)
        if callable(abort):
            abort()
        else:
            self.transport.loseConnection()

    def readConnectionLost(self) -> None:
        """The peer finished sending (TCP FIN): pass it on as the transport would.

        Before the header is complete it is a refusal: the header can never
        complete, so the connection is aborted at once (not held until the
        header timeout) and logged like any refused header, except a
        connection that sent nothing (a balancer's connect-and-close check),
        which ends as a FIN always ended it: quietly behind a protocol not
        started yet, and as a clean close for a TLS layer started at once
        (as on a bare TLS listener, not a refused header). After it, a
        half-close-aware protocol behind is told (it may still write its
        reply); any other protocol loses the connection the way Twisted's
        TCP transport ends it for a protocol that cannot half-close.
        """
        reader = self._reader
        if reader is not None:
            held = reader._buffer
            if held:
                self._refuse(
                    ProxyHeaderRefused(
                        "PROXY header refused: the connection ended after "
                        f"{_quote(held)}, before the header was complete"
                    )
                )
            else:
                # Nothing sent: a balancer's connect-and-close health check
                # (HAProxy's plain "check" sends no header), which ends as it
                # always has: without a line (a warning each time would fill
                # the log), or behind TLS as a clean close before the
                # handshake, not a refused header and an abort.
                self._end()
            return
        if self._refusal is not None or not self._started:
            # Already being aborted.
            return
        halfClose = IHalfCloseableProtocol(self.wrappedProtocol, None)
        if halfClose is not None:
            halfClose.readConnectionLost()
        else:
            self._end()

    def _end(self) -> None:
        """End the whole connection at the peer's FIN, as Twisted does for a
        protocol that cannot half-close."""
        if IFileDescriptor.providedBy(self.transport):
            # What tcp.Connection.readConnectionLost does when its protocol
            # cannot half-close: the whole connection ends now, with the
            # clean ConnectionDone, exactly as before this layer declared
            # IHalfCloseableProtocol.
            self.transport.connectionLost(Failure(ConnectionDone()))  # type: ignore[no-untyped-call]
        else:
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        """Our writing half was shut: tell the protocol behind if it can half-close."""
        if self._started and self._refusal is None:
            halfClose = IHalfCloseableProtocol(self.wrappedProtocol, None)
            if halfClose is not None:
                halfClose.writeConnectionLost()

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self._reader = None
        self._cancel_timer()
        self._give_back()
        self._release()
        if not self._started:
            cast(Any, self.factory).unregisterProtocol(self)
            return
        if self._refusal is not None:
            reason = Failure(self._refusal)  # type: ignore[no-untyped-call]
        cast(Any, ProtocolWrapper).connectionLost(self, reason)

    def getPeer(self) -> IAddress:
        if self._addresses is not None:
            return self._addresses[0]
        peer: IAddress = self.transport.getPeer()
        return peer

    def getHost(self) -> IAddress:
        if self._addresses is not None:
            return self._addresses[1]
        host: IAddress = self.transport.getHost()
        return host


def _describe(address: object) -> str:
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    if host is None:
        return str(address)
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


class ProxyHeaderFactory(WrappingFactory):
    """Wraps *wrappedFactory*'s protocols in a PROXY header reader.

    :param wrappedFactory: makes the protocol that gets the stream after
        the header (a :class:`~txschannel.protocol.SchannelFactory` for
        ``schannel:haproxy:``: its handshake memory budget is charged for
        headers being read).
    :param limit: the longest header accepted, in bytes.
    :param timeout: seconds the header may take, for a protocol that is not
        started before it (all but TLS, whose handshake timeout covers it);
        None for no limit.
    :param clock: for that timeout (the reactor by default).
    :ivar connections: counts the connections toward a limit from their
        accept, or None (``twist schannel`` sets its ``--max-connections``
        count here). Behind anything but TLS, the protocol behind the
        header is started only once the header is read; counted from then
        on only, clients that never send a header would each hold a file
        descriptor uncounted until :data:`HEADER_TIMEOUT`. The count must
        offer ``opened()`` (False: over the limit, the connection is
        aborted unread), ``closed()`` and ``hand_over(start)``, which
        passes the slot on to the protocol started behind the header (it
        counts connections with the same ``opened()``). TLS listeners
        count at accept already: they start the protocol behind at once.
    """

    protocol = _ProxyHeaderProtocol
    # One "Starting factory" line per listener would say nothing useful.
    noisy = False

    def __init__(
        self,
        wrappedFactory: IProtocolFactory,
        limit: int = MAX_HEADER,
        timeout: float | None = HEADER_TIMEOUT,
        clock: IReactorTime | None = None,
    ) -> None:
        cast(Any, WrappingFactory).__init__(self, wrappedFactory)
        self.limit = limit
        self.timeout = timeout
        self._clock = clock
        self.connections: _Slots | None = None

    @property
    def clock(self) -> IReactorTime:
        """The clock of the header timeout: the reactor unless one was given."""
        if self._clock is None:
            # Imported only when a connection needs it: twist's --workers
            # supervisor makes this factory to find the sockets, and must
            # not import the reactor.
            from twisted.internet import reactor

            self._clock = cast(IReactorTime, reactor)
        return self._clock

    def logPrefix(self) -> str:
        prefix = getattr(self.wrappedFactory, "logPrefix", None)
        inner = prefix() if callable(prefix) else type(self.wrappedFactory).__name__
        return f"{inner} (PROXY)"


@implementer(IStreamServerEndpoint)
class HAProxyServerEndpoint:
    """Listens on *inner*; every connection starts with a PROXY header.

    :param inner: the endpoint the balancer connects to (TCP, UNIX, ...).
    :param limit: the longest header accepted, in bytes.
    """

    def __init__(self, inner: IStreamServerEndpoint, limit: int = MAX_HEADER) -> None:
        self.inner = inner
        self.limit = limit

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        """Listen on the inner endpoint with *protocolFactory*'s protocols behind the header."""
        listening: Deferred[IListeningPort] = self.inner.listen(
            ProxyHeaderFactory(protocolFactory, self.limit)
        )
        return listening


def server_from_string(reactor: Any, description: str) -> IStreamServerEndpoint:
    """``serverFromString``, except that ``haproxy:...`` makes a :class:`HAProxyServerEndpoint`.

    :raises ValueError: and whatever else Twisted's parser raises for the
        endpoint after ``haproxy:``.
    """
    prefix, _, rest = description.partition(":")
    if prefix.strip().lower() == "haproxy":
        endpoint: IStreamServerEndpoint = HAProxyServerEndpoint(
            _twisted_server_from_string(reactor, rest)
        )
        return endpoint
    return _twisted_server_from_string(reactor, description)
