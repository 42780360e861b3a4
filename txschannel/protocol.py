"""The Twisted transport: a security context driven as a ``ProtocolWrapper``.

:class:`SchannelFactory` wraps any protocol factory so that its connections
speak TLS; it takes the same positional arguments as Twisted's
``TLSMemoryBIOFactory`` and can replace it. :class:`SchannelProtocol` only
moves bytes: what the transport delivers goes into one receive buffer that
is handed to :meth:`ClientContext.initialize` / :meth:`ServerContext.accept`
until the handshake returns OK, then to :meth:`SecurityContext.decrypt`; what
the wrapped protocol writes goes through :meth:`SecurityContext.encrypt`.
Every TLS decision (versions, certificates, ALPN, alerts) is the context's.

:func:`startSchannel` upgrades a connection that is already carrying a
plaintext protocol (STARTTLS).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Iterable
from typing import Any, Union, cast

from OpenSSL import SSL, crypto
from twisted.internet import interfaces
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.error import TimeoutError as _TwistedTimeoutError
from twisted.internet.interfaces import (
    IDelayedCall,
    IHalfCloseableProtocol,
    IHandshakeListener,
    INegotiated,
    IProtocol,
    IProtocolFactory,
    IProtocolNegotiationFactory,
    IPushProducer,
    IReactorTime,
    ISSLTransport,
    ISystemHandle,
    ITLSTransport,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import (
    FilteringLogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    LogPublisher,
)
from twisted.logger._observer import bitbucketLogObserver
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import directlyProvides, implementer, providedBy

from txschannel import _openssl
from txschannel._sendnow import send_at_once
from txschannel.context import ClientContext, SecurityContext, ServerContext
from txschannel.creators import adapt_for_factory
from txschannel.credentials import Credentials
from txschannel.peertext import PeerText
from txschannel.records import MAX_CLIENT_HELLO_WIRE
from txschannel.status import SecurityError, Status

__all__ = [
    "ConnectionTruncated",
    "DEFAULT_HANDSHAKE_MEMORY",
    "DEFAULT_PRE_HANDSHAKE_BUFFER",
    "HandshakeBufferExceeded",
    "HandshakeMemoryExceeded",
    "HandshakeTimeout",
    "SchannelFactory",
    "SchannelProtocol",
    "startSchannel",
]

_log = Logger(namespace="txschannel.protocol")

#: What a debug event of :data:`_log` looks like to a log-level filter.
_DEBUG_PROBE = {"log_level": LogLevel.debug, "log_namespace": _log.namespace}


def _debug_observed(observer: Any = None, depth: int = 0) -> bool:
    """Whether a debug event of :data:`_log` would reach anything but a
    filter that drops it: False only when every observer it would go to is
    known to drop it (a ``LogPublisher`` of such observers, or a
    ``FilteringLogObserver`` whose predicates are all
    ``LogLevelFilterPredicate`` and refuse debug for our namespace, with no
    negative observer). Any other observer, or any shape not recognised,
    counts as observing it.

    Asked anew for each event, not decided once: an observer added later
    (``globalLogPublisher.addObserver``), or a level changed with
    ``setLogLevelForNamespace``, counts from the next event on. The walk
    reads a few attributes (``twist`` logs through one filter with one
    predicate), where building and emitting the event cost about 30 Python
    calls and 6 calls into OpenSSL per handshake.
    """
    if observer is None:
        observer = _log.observer
    kind = type(observer)
    if depth > 8:  # a publisher that contains itself: let Twisted deal with it
        return True
    if kind is LogPublisher:
        inner = getattr(observer, "_observers", None)
        if type(inner) is not list:
            return True
        for each in inner:
            if _debug_observed(each, depth + 1):
                return True
        return False
    if kind is FilteringLogObserver:
        should = getattr(observer, "_shouldLogEvent", None)
        predicates = getattr(should, "args", ((),))[0]
        if (
            getattr(observer, "_negativeObserver", None) is not bitbucketLogObserver
            or not isinstance(predicates, list)
            or not all(type(p) is LogLevelFilterPredicate for p in predicates)
            or not callable(should)
        ):
            return True
        # The filter's own test, on an event with only what these
        # predicates read (its level and namespace).
        if not should(_DEBUG_PROBE):
            return False
        return _debug_observed(getattr(observer, "_observer", None), depth + 1)
    return True


class _NoClock:
    """The clock of a protocol made without a factory (Twisted's own tests
    build ``TLSMemoryBIOProtocol(None, None)`` to check its interfaces)."""

    def callLater(self, *args: object, **kwargs: object) -> IDelayedCall:
        raise RuntimeError("this SchannelProtocol has no factory, hence no clock")


_NO_CLOCK = cast(IReactorTime, _NoClock())

#: Plaintext written in one reactor turn is gathered up to this size before
#: it is encrypted, so a stream of small writes costs a few records instead
#: of one each. Not 64 KiB: Twisted's TCP transport pauses its producer as
#: soon as it holds more than 64 KiB (``bufferSize``), and 64 KiB of
#: plaintext makes slightly more than that once framed, so every flush
#: paused the producer. 64,000 bytes (as Twisted's own TLS transport
#: gathers) leaves room for the records' headers, tags and padding, and the
#: transport takes two flushes before it pauses: half the pauses, each a
#: reactor iteration, for a producer of small writes. (Gathering more, up to
#: the end of the turn, was measured slower: larger chunks leave both ends
#: idle longer and fall out of the CPU cache.) A single write of 64 KiB
#: or so, as a relay makes, is what _FRAMING_ROOM below is for.
_COALESCE_LIMIT = 64000

#: Twisted's ``FileDescriptor.bufferSize``: how much a TCP transport reads
#: at once, and how much it holds before it pauses its producer.
_TWISTED_BUFFER_SIZE = 65536

#: Added to that on a TCP transport under TLS (one still at Twisted's
#: default). A relay writes what it reads, 64 KiB at a time, and framed as
#: TLS records 64 KiB become a little more (per 16 KiB record, 22 bytes with
#: TLS 1.3, 29 with TLS 1.2 and AES-GCM): the transport found itself over
#: its limit after every chunk and paused the producer, two epoll changes
#: and a reactor turn more per chunk (a 256 MiB download through ``twist
#: schannel`` made 28% fewer epoll_ctl calls with it). Kept small: it also
#: grows each read of ciphertext: 256 bytes more still give at most four
#: whole records, 64 KiB of plaintext, for all but about 1% of reads, so
#: the other direction keeps fitting a plain 64 KiB transport.
_FRAMING_ROOM = 256

#: The bytes a peer may have waiting before the handshake completes, by
#: default: the largest ClientHello OpenSSL accepts, with its record
#: headers. (Later flights go to OpenSSL record by record, so they never
#: wait here in more than one partial record.)
DEFAULT_PRE_HANDSHAKE_BUFFER = MAX_CLIENT_HELLO_WIRE

#: The bytes a server's unfinished handshakes may hold together, by
#: default (see :class:`_HandshakeBudget`): room for about 500 stalled
#: handshakes of the largest ClientHello, or tens of thousands of ordinary
#: ones, which are a few hundred bytes to a few kilobytes each.
DEFAULT_HANDSHAKE_MEMORY = 64 * 1024 * 1024

#: Seconds between two log lines about refused handshakes: a flood of
#: refusals must not become a flood of lines.
_REFUSAL_LOG_INTERVAL = 10.0

#: Read at every handshake step: as globals, not through EnumType.__getattr__
#: (see txschannel.context).
_OK = Status.OK
_INCOMPLETE_MESSAGE = Status.INCOMPLETE_MESSAGE

#: The ALPN list of a connection whose application speaks none of the
#: configured protocols (see SchannelFactory._alpn).
_NO_PROTOCOL_SPOKEN = (b"",)

#: Anything :meth:`Credentials.from_twisted` accepts, or our own credentials.
CredentialsOrCreator = Union[Credentials, object]  # noqa: UP007 (a runtime alias)


class ConnectionTruncated(ConnectionLost):
    """The transport closed without the peer's close_notify.

    After the handshake this means the peer's data may have been cut short
    by an attacker or a crash (what TLS calls a truncation attack); during
    the handshake it means the peer went away before the connection was
    secured. It is a :class:`twisted.internet.error.ConnectionLost`, so code
    that treats any unclean close alike keeps working, and distinct from the
    ``ConnectionDone`` that a close_notify produces.

    :ivar closed: True when the transport itself ended cleanly (a TCP FIN:
        the peer closed without close_notify, as many HTTP clients do after
        their exchange); False when it was lost (a reset, an error), which
        can cut a stream mid-way.
    """

    MESSAGE = "TLS connection truncated"
    closed = False


class HandshakeTimeout(_TwistedTimeoutError):
    """A connection whose TLS handshake did not complete in time was dropped."""

    MESSAGE = "TLS handshake timed out"


class HandshakeBufferExceeded(ConnectionLost):
    """The peer sent more bytes than allowed before the handshake completed."""

    MESSAGE = "TLS pre-handshake limit exceeded"


class HandshakeMemoryExceeded(ConnectionLost):
    """The server's unfinished handshakes hold their whole memory budget."""

    MESSAGE = "TLS handshake memory budget exhausted"


def _find_malloc_trim() -> Callable[[], object] | None:
    """glibc's ``malloc_trim(0)``, or None where the C library has none (musl, macOS)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)


_MALLOC_TRIM = _find_malloc_trim()

#: Bytes of handshakes that must have ended since the last trim before the
#: memory allocator is asked to give free memory back (see _HandshakeBudget).
_TRIM_AFTER = 1024 * 1024


class _HandshakeBudget:
    """The bytes that a server's unfinished handshakes hold, against a limit.

    Each connection is charged the largest buffer its handshake has needed
    so far: the bytes waiting here for the rest of a record or of the
    ClientHello, and, by the same measure, what OpenSSL keeps of them (its
    input buffer and the message it is assembling grow to that size and do
    not shrink until the handshake ends). The charge is given back when the
    handshake completes, fails or the connection closes. A connection whose
    charge would take the total past the limit is refused; while the budget
    is spent, that means every new handshake.

    Refusals are logged at once, then at most once per
    ``_REFUSAL_LOG_INTERVAL`` with how many there were since.

    Memory given back: the buffers of stalled handshakes are many blocks of
    tens of kilobytes, below the size glibc serves with mmap, so once they
    are freed the allocator keeps them (a flood of 1,000 stalled hellos of
    64 KB each left 80 MB behind for good). After ``_TRIM_AFTER`` bytes of
    handshakes have ended, ``malloc_trim(0)`` is called a second later
    (once, however many ended meanwhile), which returns free pages to the
    system.
    """

    __slots__ = (
        "limit", "held", "refused", "_clock", "_logged_at", "_unlogged", "_summary",
        "_released", "_trim_call",
    )

    def __init__(self, limit: int, clock: IReactorTime) -> None:
        self.limit = limit
        self.held = 0
        #: Handshakes refused since the budget was made.
        self.refused = 0
        self._clock = clock
        self._logged_at: float | None = None
        self._unlogged = 0
        self._summary: IDelayedCall | None = None
        self._released = 0
        self._trim_call: IDelayedCall | None = None

    def take(self, amount: int) -> bool:
        """Charge *amount* more bytes; False (and nothing charged) when over the limit."""
        if self.held + amount > self.limit:
            return False
        self.held += amount
        return True

    def give_back(self, amount: int) -> None:
        self.held -= amount
        self._released += amount
        if self._released >= _TRIM_AFTER and self._trim_call is None and _MALLOC_TRIM:
            self._trim_call = self._clock.callLater(1.0, self._trim)

    def _trim(self) -> None:
        self._trim_call = None
        self._released = 0
        if _MALLOC_TRIM is not None:
            _MALLOC_TRIM()

    def refusal(self, peer: str) -> None:
        """Count a refused handshake; log it now, or in the interval's summary."""
        self.refused += 1
        self._unlogged += 1
        now = self._clock.seconds()
        if self._logged_at is not None and now - self._logged_at < _REFUSAL_LOG_INTERVAL:
            if self._summary is None:
                self._summary = self._clock.callLater(
                    self._logged_at + _REFUSAL_LOG_INTERVAL - now, self._log, peer
                )
            return
        self._log(peer)

    def _log(self, peer: str) -> None:
        self._summary = None
        _log.warn(
            "TLS handshake memory budget of {limit} bytes is in use by unfinished "
            "handshakes: refused {count} new handshake(s) since the last such line, "
            "the last from {peer}",
            limit=self.limit,
            count=self._unlogged,
            peer=peer,
            status="HANDSHAKE_MEMORY_EXCEEDED",
        )
        self._logged_at = self._clock.seconds()
        self._unlogged = 0

    def stop(self) -> None:
        """Cancel the timers (the factory stopped)."""
        for call in (self._summary, self._trim_call):
            if call is not None and call.active():
                call.cancel()
        self._summary = self._trim_call = None


class _Handshake:
    """Everything a connection needs only until its handshake settles.

    Its own object, not attributes of :class:`SchannelProtocol`, because the
    handshake has its own state, limits and reason to change. Until it
    completes, a peer can make the server hold bytes the context cannot use
    yet (the rest of a record, of a ClientHello): two limits bound them,
    ``max_pre_handshake_buffer`` for one connection and the listener's
    :class:`_HandshakeBudget` for all of them (this object keeps the charge
    and gives it back). It also holds the timer that bounds the handshake,
    the plaintext written before the keys exist and the
    ``whenHandshakeDone()`` waiters. The protocol makes it with itself and
    drops it (``_handshake`` becomes None) once the handshake completes or
    can no longer complete, so an established connection carries none of it.

    @ivar data: the peer's bytes not given to the context yet (a partial record).
    @ivar needed: ``len(data)`` at which the context can make progress
        again; calling it with less would only hand back the same partial
        record.
    @ivar charged: what this handshake is charged against the budget: the
        largest buffer it has needed.
    @ivar pending: plaintext written before the handshake completed.
    @ivar waiters: ``whenHandshakeDone()`` Deferreds still waiting.
    @ivar timer: the bound on the handshake's duration (servers), or None.
    """

    __slots__ = ("protocol", "data", "needed", "charged", "pending", "waiters", "timer")

    def __init__(self, protocol: SchannelProtocol) -> None:
        self.protocol = protocol
        self.data = b""
        self.needed = 0
        self.charged = 0
        self.pending: list[bytes] | None = None
        self.waiters: list[Deferred[SchannelProtocol]] | None = None
        self.timer: IDelayedCall | None = None

    def start(self) -> None:
        """The connection is made: bound the handshake (server) or begin it (client)."""
        factory = self.protocol.factory
        if factory.isClient:
            self.step(b"")
        elif factory.handshake_timeout is not None:
            self.timer = factory._clock.callLater(factory.handshake_timeout, self._timed_out)

    def receive(self, data: bytes) -> None:
        """The peer's *data*; once the handshake completes, what follows it is delivered."""
        protocol = self.protocol
        buffer = self.data + data if self.data else data
        if len(buffer) > self.charged and not self._charge(len(buffer)):
            return
        limit = protocol.factory.max_pre_handshake_buffer
        # Past the limit, the context gets a look before the verdict: it may
        # take the whole records off the buffer (a ClientHello cut into
        # small records, for one, is larger on the wire than the limit).
        if len(buffer) >= self.needed or len(buffer) > limit:
            self.data = b""
            remaining = self.step(buffer)
            if remaining is None:
                return
            if protocol._established:
                protocol._received = remaining
                protocol._unwrap()
                return
            buffer = remaining
        self.data = buffer
        if len(buffer) > limit:
            self._fail_at_limit(len(buffer), limit)

    def _charge(self, size: int) -> bool:
        """Charge the server's handshake budget up to *size* bytes in all; False if refused."""
        protocol = self.protocol
        budget = protocol.factory._budget
        if budget is None or budget.take(size - self.charged):
            self.charged = size
            return True
        budget.refusal(_peer_name(protocol.transport))
        error = HandshakeMemoryExceeded(
            f"the server's unfinished TLS handshakes hold its whole budget of "
            f"{budget.limit} bytes (handshake_memory)"
        )
        protocol._fail(_failure(error), abort=True)
        return False

    def step(self, data: bytes) -> bytes | None:
        """One ``initialize``/``accept`` call; the bytes left, or None on failure."""
        protocol = self.protocol
        call = "initialize" if protocol.factory.isClient else "accept"
        context = protocol.securityContext
        try:
            if isinstance(context, ClientContext):
                step = context.initialize(data)
            else:
                # (A ServerContext; annotated, not cast(): no call at run time.)
                server: Any = context
                step = server.accept(data)
        except SecurityError as e:
            protocol.handshakeLadder.append(
                # (``_name_``, the member's name as enum documents it: ``.name`` is a
                # property, two Python calls per handshake step.)
                (call, e.status._name_, len(data), len(e.token))
            )
            protocol._security_failed(
                e, "handshake", protocol=None, cipher=None, alpn=None, server_name=None
            )
            return None
        consumed = len(data) - len(step.extra)
        if consumed or step.token or step.status is not _INCOMPLETE_MESSAGE:
            protocol.handshakeLadder.append(
                (call, step.status._name_, consumed, len(step.token))
            )
        if step.token:
            protocol.transport.write(step.token)
        if step.status is _OK:
            self._done()
        else:
            self.needed = len(step.extra) + step.missing
        return step.extra

    def _done(self) -> None:
        protocol = self.protocol
        protocol._established = True
        protocol._update_write_state()
        if protocol._quiet is not None:
            # The BIOs that carried the flights keep them otherwise.
            protocol._quiet.note(protocol)
        waiters = self._end()
        self._log_done()
        # Writes held during the handshake go first, ahead of anything the
        # application writes from here on; they are sent only after it has
        # heard of the handshake, so that it can still abortConnection() if
        # it does not like the peer (and they never leave).
        # (Queued without the size checks of add(): those would flush them
        # now, before handshakeCompleted().)
        if self.pending:
            protocol._outgoing.hold(self.pending)
            self.pending = None
        for waiter in waiters:
            waiter.callback(protocol)
        wrapped = protocol.wrappedProtocol
        if wrapped is not None and IHandshakeListener.providedBy(wrapped):
            wrapped.handshakeCompleted()
        if protocol._failed or protocol._lost or protocol._aborted:
            return
        protocol._flush()
        if protocol._producer is not None:
            protocol._producer.resume("handshake")
        if protocol._closing.write_shutdown_wanted:
            protocol._closing.shutdown_write()
        elif protocol.disconnecting and protocol._producer is None:
            protocol._close_sequence().shutdown()

    def _log_done(self) -> None:
        # Debug, not info: a completed handshake is the normal case, and a
        # written info line costs about as much as 5% of the handshake itself
        # (applications log their own connections; failures are warnings).
        # The fields are read straight from the connection: the full
        # ``attributes`` (certificates, sizes) would cost a few percent of a
        # handshake's CPU time for an event most deployments filter out.
        # Nor is any of it read when no observer would keep the event.
        if not _debug_observed():
            return
        context = self.protocol.securityContext
        connection = cast(SSL.Connection, context.openssl_connection)
        alpn = connection.get_alpn_proto_negotiated()
        if isinstance(context, ClientContext):
            server_name = context.target_name
        else:
            raw = connection.get_servername()
            server_name = raw.decode("ascii", "replace") if raw else None
        _log.debug(
            "TLS handshake with {peer} done: {protocol} {cipher}, ALPN {alpn}, "
            "server name {server_name}",
            peer=_peer_name(self.protocol.transport),
            status="OK",
            protocol=connection.get_protocol_version_name(),
            cipher=connection.get_cipher_name() or "",
            alpn=PeerText(alpn.decode("ascii", "replace")) if alpn else None,
            server_name=None if server_name is None else PeerText(server_name),
            resumed=context.session_reused,
        )

    def _timed_out(self) -> None:
        self.timer = None
        protocol = self.protocol
        timeout = protocol.factory.handshake_timeout
        _log.warn(
            "TLS handshake with {peer} did not complete within {timeout} s: dropped",
            peer=_peer_name(protocol.transport),
            status="TIMEOUT",
            timeout=timeout,
        )
        protocol._fail(_failure(_timeout_error(timeout)), abort=True)

    def _fail_at_limit(self, size: int, limit: int) -> None:
        protocol = self.protocol
        _log.error(
            "{peer} had {size} bytes waiting before the TLS handshake completed "
            "(limit {limit}): dropped",
            peer=_peer_name(protocol.transport),
            status="BUFFER_EXCEEDED",
            size=size,
            limit=limit,
        )
        error = HandshakeBufferExceeded(
            f"the peer had {size} bytes waiting before the TLS handshake "
            f"completed; the limit is {limit}"
        )
        protocol._fail(_failure(error), abort=True)

    def hold(self, data: bytes) -> None:
        """Keep plaintext written before the keys exist, and pause the producer meanwhile."""
        if self.pending is None:
            self.pending = []
        self.pending.append(data)
        if self.protocol._producer is not None:
            self.protocol._producer.pause("handshake")

    def wait(self) -> Deferred[SchannelProtocol]:
        """A Deferred for ``whenHandshakeDone()``, fired when the handshake settles."""
        waiter: Deferred[SchannelProtocol] = Deferred()
        if self.waiters is None:
            self.waiters = []
        self.waiters.append(waiter)
        return waiter

    def fail(self, reason: Failure) -> None:
        """The handshake can no longer complete: drop it and fail its waiters."""
        self.pending = None
        for waiter in self._end():
            waiter.errback(reason)

    def _end(self) -> list[Deferred[SchannelProtocol]]:
        """Drop this from the protocol, stop the timer, give the charge back;
        the waiters are returned, for the caller to fire."""
        self.protocol._handshake = None
        timer, self.timer = self.timer, None
        if timer is not None and timer.active():
            timer.cancel()
        charged, self.charged = self.charged, 0
        self.data = b""
        budget = self.protocol.factory._budget
        if charged and budget is not None:
            budget.give_back(charged)
        waiters, self.waiters = self.waiters, None
        return waiters or []


def _failure(error: BaseException) -> Failure:
    """A Failure for *error*, without a traceback.

    The traceback's frames would refer back to the protocol that keeps the
    Failure (as the reason to report), a reference cycle that only Python's
    cyclic collector breaks; until it runs, each failed connection's OpenSSL
    memory stays allocated, and a flood of failing handshakes piles it up.
    The exception itself (status, reason) is all a reader of the reason needs.
    """
    error.__traceback__ = None
    error.__context__ = None
    return Failure(error)  # type: ignore[no-untyped-call]


def _timeout_error(timeout: float | None) -> HandshakeTimeout:
    error: HandshakeTimeout = cast(Any, HandshakeTimeout)(
        string=f"no complete handshake within {timeout} s"
    )
    return error


_PASSED_ON: dict[Any, Any] = {}


def _passed_on(provided: Any) -> Any:
    """What the real transport provides, for us to provide too.

    Everything (ITCPTransport: getPeer(), setTcpNoDelay(), ...) except
    ITLSTransport: starting TLS at the transport's level, under this layer,
    could only corrupt the stream. Subtracting an interface builds a new
    zope declaration, which costs about 200 us, so the result is kept per
    transport class (its declaration object is the key).
    """
    result = _PASSED_ON.get(provided)
    if result is None:
        result = provided - ITLSTransport
        if len(_PASSED_ON) < 256:  # per-instance declarations must not pile up
            _PASSED_ON[provided] = result
    return result


_DECLARATIONS: dict[tuple[type, Any], Any] = {}


def declare_provides(target: object, provided: Any) -> None:
    """``directlyProvides(target, provided)``, at the cost of a dictionary lookup.

    ``directlyProvides`` normalises the interfaces every time (about 6 us
    per connection, more for a long list); the declaration it makes depends
    only on *target*'s class and *provided*, so the first one is kept and
    handed to later objects as is (zope.interface shares such declarations
    itself).
    """
    key = (type(target), provided)
    declaration = _DECLARATIONS.get(key)
    if declaration is not None:
        holder: Any = target  # (not cast(): this runs once per connection)
        holder.__provides__ = declaration
        return
    directlyProvides(target, provided)
    if len(_DECLARATIONS) < 256:  # per-instance declarations must not pile up
        _DECLARATIONS[key] = cast(Any, target).__provides__


def _provide_like(protocol: SchannelProtocol, transport: object) -> None:
    """Declare that *protocol* provides what *transport* does (see :func:`_passed_on`)."""
    declare_provides(protocol, _passed_on(providedBy(transport)))


#: ProtocolWrapper's methods carry no type hints; calling them through this
#: name keeps ``mypy --strict`` quiet without an ignore at every call.
_Wrapper: Any = ProtocolWrapper
#: The same for Protocol (not ``cast()``, a function call on every connection).
_Protocol: Any = Protocol


def _credentials_from(
    value: CredentialsOrCreator, is_client: bool, factory: SchannelFactory
) -> Credentials:
    """Our :class:`Credentials` for *value*, checked to fit *is_client*.

    :raises TypeError: *value* is neither credentials nor a Twisted TLS object.
    :raises ValueError: client credentials for a server or the reverse.
    """
    role = "client" if is_client else "server"
    if isinstance(value, Credentials) and value.creator is not None and (
        value.creator.factory is not None
    ):
        # Made for another factory: its connections would see that factory's
        # ALPN list. Convert the Twisted object again, for this one.
        value = value.creator.original
    if isinstance(value, Credentials):
        if value.is_client != is_client:
            other = "client" if value.is_client else "server"
            raise ValueError(
                f"SchannelFactory(isClient={is_client}) needs {role} credentials, "
                f"not {other} credentials"
            )
        return value
    creator = adapt_for_factory(value, is_client, factory)
    return Credentials(
        creator.context,
        is_client=is_client,
        manual_validation=True,
        hostname=creator.hostname,
        creator=creator,
    )


#: The pause reasons of a producer that nothing pauses (one object for all).
_NO_REASONS: frozenset[str] = frozenset()


@implementer(IPushProducer)
class _ProducerGate:
    """Stands between the wrapped protocol's producer and the transport.

    Two parties may want the producer paused: the transport (its write
    buffer is full) and the handshake (writes are being held until the keys
    exist). The producer resumes only when neither does, so that one
    party's resume cannot undo the other's pause. A pull producer is asked
    for data only when the transport asks and the handshake is done.
    """

    # The names ``_producer`` and ``_producerPaused`` are those of Twisted's
    # own ``_ProducerMembrane``, which Twisted's TLS test suite inspects.

    # One per connection with a producer (every relayed connection), for the
    # connection's life: slots, and the pause reasons in a frozenset, which
    # while empty is one object shared by all (a set took 216 bytes each).
    __slots__ = ("_producer", "streaming", "_reasons", "_pull_wanted", "stopped")

    def __init__(self, producer: Any, streaming: bool) -> None:
        self._producer = producer
        self.streaming = streaming
        self._reasons = _NO_REASONS
        self._pull_wanted = False
        self.stopped = False

    @property
    def _producerPaused(self) -> bool:
        return bool(self._reasons)

    def pause(self, reason: str) -> None:
        if not self.streaming:
            self._reasons |= {reason}
            return
        was_running = not self._reasons
        self._reasons |= {reason}
        if was_running and not self.stopped:
            self._producer.pauseProducing()

    def resume(self, reason: str) -> None:
        if reason not in self._reasons:
            return
        # Back to the shared empty one when the last reason goes.
        self._reasons = self._reasons - {reason} or _NO_REASONS
        if self._reasons or self.stopped:
            return
        if self.streaming:
            self._producer.resumeProducing()
        elif self._pull_wanted:
            self._pull_wanted = False
            self._producer.resumeProducing()

    # IPushProducer / IPullProducer, as the transport sees it.

    def pauseProducing(self) -> None:
        self.pause("transport")

    def resumeProducing(self) -> None:
        if self.streaming:
            self.resume("transport")
        elif self._reasons:
            self._pull_wanted = True
        elif not self.stopped:
            self._producer.resumeProducing()

    def stopProducing(self) -> None:
        if not self.stopped:
            self.stopped = True
            self._producer.stopProducing()


class _CloseSequence:
    """Where the TLS close stands: our close_notify, the peer's, and the wait between.

    Its own object, not flags of :class:`SchannelProtocol`, because closing
    has its own states and its own reason to change: a full close sends
    close_notify and waits a bounded time for the peer's (Twisted #7926), a
    half-close sends ours and keeps reading, and the peer may close first.
    Most connections read and write for a long time before any of that, so
    they all share :data:`_NOT_CLOSING` (never written to, and it takes no
    step) and a connection gets its own with the first step of its close
    (see ``SchannelProtocol._close_sequence()``).

    @ivar sent: our close_notify was sent.
    @ivar received: the peer's close_notify arrived; nothing after it is
        part of its stream.
    @ivar write_shutdown_wanted: ``loseWriteConnection()`` was called before
        the handshake completed; our close_notify goes when it does.
    @ivar timer: the bounded wait (for the peer's close_notify, then for the
        transport to close), or None when nothing is waited for.
    """

    __slots__ = ("protocol", "sent", "received", "write_shutdown_wanted", "timer")

    def __init__(self, protocol: SchannelProtocol) -> None:
        self.protocol = protocol
        self.sent = False
        self.received = False
        self.write_shutdown_wanted = False
        self.timer: IDelayedCall | None = None

    def begin(self) -> None:
        """``loseConnection()``: close_notify after the handshake (once a producer
        is gone), else close at once, unless writes wait for the handshake."""
        protocol = self.protocol
        if protocol._established:
            if protocol._producer is None:
                self.shutdown()
        elif protocol._handshake is not None and protocol._handshake.pending:
            self.start_timer()
        else:
            protocol.transport.loseConnection()

    def half_close(self) -> None:
        """``loseWriteConnection()``: our close_notify now, or once the handshake completes."""
        if self.protocol._established:
            self.shutdown_write()
        else:
            self.write_shutdown_wanted = True
            self.protocol._update_write_state()

    def shutdown(self) -> None:
        """Full close after the handshake: close_notify, then wait (bounded) for the peer's."""
        protocol = self.protocol
        self.send_close_notify()
        if protocol._failed or protocol._lost:
            return
        if self.received or protocol.factory.close_timeout is None:
            protocol.transport.loseConnection()
        else:
            self.start_timer()

    def shutdown_write(self) -> None:
        """Half-close: our close_notify, and the wrapped protocol hears its side is closed."""
        protocol = self.protocol
        self.write_shutdown_wanted = False
        protocol._update_write_state()
        self.send_close_notify()
        wrapped = protocol.wrappedProtocol
        if wrapped is not None and IHalfCloseableProtocol.providedBy(wrapped):
            wrapped.writeConnectionLost()
        if self.received and not protocol._lost:
            protocol.transport.loseConnection()

    def send_close_notify(self) -> None:
        """Flush what was written, then send our close_notify (once)."""
        protocol = self.protocol
        if self.sent or protocol._failed or protocol._lost:
            return
        protocol._flush()
        if protocol._failed:
            return
        self.sent = True
        protocol._update_write_state()
        token = protocol.securityContext.shutdown()
        if token:
            protocol.transport.write(token)

    def peer_closed(self) -> None:
        """The peer's close_notify arrived: end its direction, then (unless the
        wrapped protocol half-closes) ours."""
        protocol = self.protocol
        self.received = True
        wrapped = protocol.wrappedProtocol
        if (
            not protocol.disconnecting
            and wrapped is not None
            and IHalfCloseableProtocol.providedBy(wrapped)
        ):
            # The peer's direction is done; ours stays open until the
            # wrapped protocol closes it (or already has, by half-closing).
            wrapped.readConnectionLost()
            if self.sent and not protocol._lost:
                protocol.transport.loseConnection()
            return
        if self.sent:
            self.cancel()
            protocol.transport.loseConnection()
            return
        protocol.disconnecting = True
        protocol._update_write_state()
        self.send_close_notify()
        if not protocol._lost:
            protocol.transport.loseConnection()

    def start_timer(self) -> None:
        """Bound the wait for the peer from now (if not bounded already)."""
        timeout = self.protocol.factory.close_timeout
        if timeout is not None:
            self.wait(timeout, self._timed_out)

    def _timed_out(self) -> None:
        """The peer never answered our close_notify (Twisted #7926).

        Close the transport normally (it still flushes what we sent); if even
        that does not finish within another ``close_timeout``, the peer is
        not reading and the transport is aborted.
        """
        protocol = self.protocol
        protocol.transport.loseConnection()
        if not protocol._lost:
            self.wait(protocol.factory.close_timeout or 0.0, protocol._abort_transport)

    def wait(self, timeout: float, then: Callable[[], object]) -> None:
        """Call *then* after *timeout* seconds, unless a wait is running already."""
        if self.timer is None:
            self.timer = self.protocol.factory._clock.callLater(timeout, self._expired, then)

    def _expired(self, then: Callable[[], object]) -> None:
        self.timer = None
        then()

    def cancel(self) -> None:
        """Stop waiting (the close finished, or the connection is gone)."""
        timer, self.timer = self.timer, None
        if timer is not None and timer.active():
            timer.cancel()


#: The close sequence of every connection that has not begun to close; it
#: has no protocol because no step is ever taken on it.
_NOT_CLOSING = _CloseSequence(cast("SchannelProtocol", None))


class _Coalescer:
    """The plaintext written this reactor turn, not yet encrypted.

    A plain object of its own, not part of :class:`SchannelProtocol`,
    because its ``write`` is the hot path of a stream of small writes:
    ``ProtocolWrapper`` defines ``__getattr__``, which makes every attribute
    access on the protocol take CPython's slow path. The protocol's
    ``write`` attribute is this object's bound ``write``; a write the fast
    path does not take is checked here too, then held for the handshake or
    dropped after a close.
    """

    __slots__ = ("chunks", "size", "call", "open", "full", "resume", "_clock", "_protocol")

    def __init__(self, protocol: SchannelProtocol, clock: IReactorTime) -> None:
        self.chunks: list[bytes] = []
        self.size = 0
        self.call: IDelayedCall | None = None
        #: True while a write may go straight here: established, and
        #: nothing closing or closed (see SchannelProtocol._update_write_state);
        #: otherwise _write_slowly() decides.
        self.open = False
        #: Flushes made this reactor turn because the writes reached the
        #: limit (see _flush_full).
        self.full = 0
        #: The next turn's call that lets a producer paused by _flush_full write again.
        self.resume: IDelayedCall | None = None
        self._clock = clock
        #: None once the connection is over (see SchannelProtocol._release).
        self._protocol: SchannelProtocol | None = protocol

    def write(self, data: bytes) -> None:
        if self.open and type(data) is bytes:
            # add(), inlined: a call per write is a measurable share here.
            self.chunks.append(data)
            self.size += len(data)
            if self.size >= _COALESCE_LIMIT:
                self._flush_full()
            elif self.call is None:
                self.call = self._clock.callLater(0, self._turn_over)
            return
        if self._protocol is not None:
            self._write_slowly(self._protocol, data)

    def _write_slowly(self, protocol: SchannelProtocol, data: bytes) -> None:
        """write() when the fast path does not apply: check, hold, or drop."""
        if isinstance(data, str):
            raise TypeError("SchannelProtocol.write() takes bytes, not str")
        if (
            protocol._closing.sent
            or protocol._closing.write_shutdown_wanted
            or protocol._failed
            or protocol._aborted
            or protocol._lost
            or (protocol.disconnecting and protocol._producer is None)
            or not data
        ):
            return
        # A bytearray or memoryview may change after write() returns: copy.
        data = bytes(data)
        if protocol._established:
            self.add(data)
        elif protocol._handshake is not None:
            protocol._handshake.hold(data)

    def add(self, data: bytes) -> None:
        """Gather *data* whatever the state (the protocol checked it)."""
        self.chunks.append(data)
        self.size += len(data)
        if self.size >= _COALESCE_LIMIT:
            self._flush_full()
        elif self.call is None:
            self.call = self._clock.callLater(0, self._turn_over)

    def _flush_full(self) -> None:
        """Flush because this turn's writes reached the limit, and pause a
        push producer that keeps writing within one turn.

        The TCP transport sends at once what the kernel takes
        (txschannel._sendnow), so while the peer keeps up nothing is
        queued and Twisted's transport never pauses the producer: one that
        writes until it is paused would never give the reactor back (other
        connections, timers), and its loop ran about 25% more CPU per byte
        than with a turn every 128 KB. As Twisted's transport did when it
        queued, the second full flush of a turn pauses the producer; the
        end-of-turn call resumes it.
        """
        # A write earlier in this turn scheduled the end-of-turn call: this
        # is not the first write of one large piece (a relay's 64 KiB).
        within_turn = self.call is not None
        self.flush()
        if not within_turn:
            return
        self.full += 1
        protocol = self._protocol
        gate = protocol._producer if protocol is not None else None
        if self.full >= 2 and gate is not None and gate.streaming and not gate.stopped:
            gate.pause("turn")
            # Its own call: any flush (the handshake's end, a close)
            # cancels the end-of-turn one.
            if self.resume is None:
                self.resume = self._clock.callLater(0, self._resume)

    def _turn_over(self) -> None:
        """The end of the turn that wrote: send what was gathered."""
        self.call = None
        self.full = 0
        self.flush()

    def _resume(self) -> None:
        """The reactor's next turn: the producer paused by _flush_full writes again."""
        self.resume = None
        self.full = 0
        protocol = self._protocol
        gate = protocol._producer if protocol is not None else None
        if gate is not None:
            gate.resume("turn")

    def hold(self, chunks: list[bytes]) -> None:
        """Queue *chunks* ahead of later writes, without sending anything yet."""
        self.chunks.extend(chunks)
        self.size += sum(map(len, chunks))

    def take(self) -> bytes:
        """Everything gathered, as one string; the buffer is empty after."""
        if self.call is not None:
            if self.call.active():
                self.call.cancel()
            self.call = None
        chunks = self.chunks
        if not chunks:
            return b""
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self.chunks = []
        self.size = 0
        return data

    def flush(self) -> None:
        data = self.take()
        if data and self._protocol is not None:
            self._protocol._send(data)

    def drop(self) -> None:
        self.open = False
        self.take()
        # Nothing is left to resume: the connection is over.
        if self.resume is not None:
            if self.resume.active():
                self.resume.cancel()
            self.resume = None


#: A read or write of more than this many bytes grows OpenSSL's memory
#: BIOs past what an idle connection should keep (they keep the largest
#: piece they held; see _QuietRelease).
_LARGE_PIECE = 4096
#: Seconds between two looks at the connections that moved large pieces: one
#: that moved none for a whole period has its memory BIOs replaced by empty
#: ones, so it gives back their memory between 5 and 10 seconds after its
#: last large piece.
_QUIET_PERIOD = 5.0
#: The most connections whose buffers are released in one reactor turn.
_RELEASE_BATCH = 200


class _QuietRelease:
    """Gives back the buffer memory of a factory's connections that went quiet.

    A memory BIO keeps the largest piece it ever held: after a 64 KiB
    response an idle relayed connection kept about 64 KB more than one that
    only shook hands (and that one its handshake's flights, about 2 KB).
    Replacing the BIOs after each large piece would cost the bulk path a
    free and a regrowth per piece; so each large piece (and each completed
    handshake) only notes the connection here, a dict store, and one timer
    for the whole factory (running only while some connection is noted)
    replaces the BIOs of those that moved no large piece for a whole
    period (:meth:`SecurityContext.release_buffers`), at most
    ``_RELEASE_BATCH`` per reactor turn: a release costs up to about 90 µs
    (freeing 64 KiB pieces), and 5,000 connections going quiet together
    would otherwise hold the reactor for about 0.4 s.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        #: Noted connections, with the period of their last large piece.
        self._noted: dict[SchannelProtocol, int] = {}
        self._period = 0
        #: The look or the next batch of releases, whichever is due.
        self._call: IDelayedCall | None = None
        #: Connections found quiet by the look, still to be released.
        self._due: list[SchannelProtocol] = []
        #: Connections released since the look (for one malloc_trim after all).
        self._released = 0

    def note(self, protocol: SchannelProtocol) -> None:
        """*protocol* just moved a large piece (or finished its handshake)."""
        self._noted[protocol] = self._period
        if self._call is None:
            self._call = self._clock.callLater(_QUIET_PERIOD, self._look)

    def forget(self, protocol: SchannelProtocol) -> None:
        """*protocol*'s connection is over."""
        if self._noted.pop(protocol, None) is not None and not self._noted:
            self.stop()

    def _look(self) -> None:
        period = self._period
        self._period += 1
        self._due = [protocol for protocol, last in self._noted.items() if last < period]
        self._released = 0
        self._release_batch()

    def _release_batch(self) -> None:
        self._call = None
        batch, self._due = self._due[:_RELEASE_BATCH], self._due[_RELEASE_BATCH:]
        for protocol in batch:
            # Still noted (not lost since the look) and still quiet (noted
            # again since, it carries the new period).
            if self._noted.get(protocol, self._period) < self._period - 1:
                del self._noted[protocol]
                # A context that still holds bytes keeps its buffers.
                self._released += protocol.securityContext.release_buffers()
        if self._due:
            self._call = self._clock.callLater(0, self._release_batch)
            return
        if self._released and _MALLOC_TRIM is not None:
            # Freed, the buffers lie between live allocations: without a
            # trim the allocator keeps their pages (see _HandshakeBudget).
            _MALLOC_TRIM()
        self._released = 0
        if self._noted:
            self._call = self._clock.callLater(_QUIET_PERIOD, self._look)

    def stop(self) -> None:
        """Cancel the timer (the factory stopped, or nothing is noted)."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self._due = []


@implementer(ISSLTransport, INegotiated, ISystemHandle, IHalfCloseableProtocol)
class SchannelProtocol(ProtocolWrapper):
    """A TLS connection: the wrapped protocol's transport, driving a security context.

    Made by :class:`SchannelFactory`. To the wrapped protocol it is an
    ``ISSLTransport`` (plus ``INegotiated`` for ALPN and whatever the real
    transport provides); to the real transport it is the protocol.

    Until the handshake completes, the peer's bytes go to a held
    :class:`_Handshake`; after, straight to the context, and the plaintext
    to the wrapped protocol. Writes are gathered for one reactor turn (see
    :class:`_Coalescer`), so many small writes become few records.

    Closing is TLS's: close_notify and a bounded wait for the peer's
    (:meth:`loseConnection`), or a half-close (:meth:`loseWriteConnection`);
    a held :class:`_CloseSequence` keeps where it stands. The peer's
    close_notify reaches an ``IHalfCloseableProtocol`` as
    ``readConnectionLost``; other protocols get a clean ``connectionLost``.
    An end of stream without close_notify is reported as
    :class:`ConnectionTruncated`; a failed handshake as a ``Failure``
    wrapping the :class:`SecurityError`, after the alert was sent.

    :ivar securityContext: the :class:`SecurityContext` (for ``attributes``
        and ``channel_binding``).
    :ivar handshakeLadder: one ``(call, status name, bytes in, bytes out)``
        tuple per handshake step that consumed or produced bytes, e.g.
        ``("accept", "CONTINUE_NEEDED", 517, 1234)``.
    :ivar bytesReceived: application bytes delivered to the wrapped protocol.
    :ivar bytesSent: application bytes encrypted and sent.
    """

    factory: SchannelFactory
    securityContext: SecurityContext
    # Any ITransport, used for the optional parts too (producer methods,
    # abortConnection) where the transport has them.
    transport: Any
    disconnecting: bool = False

    # Per-connection state starts as these class attributes and becomes an
    # instance attribute only when it changes: an idle connection then
    # carries a small instance dictionary (CPython shares the keys of up to
    # 30 instance attributes between instances of a class).

    bytesReceived = 0
    bytesSent = 0
    #: Bytes that arrived while the wrapped protocol had paused us (or
    #: were left after the handshake's last record). (Once established, the
    #: context keeps partial records itself.)
    _received = b""
    #: The handshake while it runs; None once it completed or cannot.
    _handshake: _Handshake | None = None
    _established = False
    _producer: _ProducerGate | None = None
    #: The wrapped protocol called pauseProducing().
    _read_paused = False
    #: Why the connection ended, when we know better than the transport.
    _reason: Failure | None = None
    #: The context raised (or a limit was hit): no more TLS on this connection.
    _failed = False
    #: How far the TLS close has come (shared until it begins).
    _closing: _CloseSequence = _NOT_CLOSING
    _aborted = False
    #: connectionLost() has run.
    _lost = False

    def __init__(
        self,
        factory: SchannelFactory,
        wrappedProtocol: IProtocol,
        _connectWrapped: bool = True,
    ) -> None:
        _Wrapper.__init__(self, factory, wrappedProtocol)
        self._connectWrapped = _connectWrapped
        self.handshakeLadder: list[tuple[str, str, int, int]] = []
        self._handshake = _Handshake(self)
        # Plaintext written this reactor turn, not yet encrypted; its
        # write() is ours, bound once for speed (see _Coalescer).
        self._outgoing = _Coalescer(self, factory._clock if factory is not None else _NO_CLOCK)
        self.write = self._outgoing.write  # type: ignore[method-assign]
        self._quiet = factory._quiet if factory is not None else None

    # -- connection setup -------------------------------------------------

    def makeConnection(self, transport: interfaces.ITransport) -> None:
        """Create the security context, connect the wrapped protocol, start the handshake."""
        self.securityContext = self.factory._new_context()
        _provide_like(self, transport)
        if getattr(transport, "bufferSize", None) == _TWISTED_BUFFER_SIZE:
            transport.bufferSize = _TWISTED_BUFFER_SIZE + _FRAMING_ROOM  # type: ignore[attr-defined]
        send_at_once(transport)
        _Protocol.makeConnection(self, transport)
        factory: Any = self.factory
        factory.registerProtocol(self)
        if self._connectWrapped:
            # Not ProtocolWrapper.makeConnection, which would repeat what was
            # just done and declare every interface of the transport again,
            # ITLSTransport included (see _passed_on).
            self.wrappedProtocol.makeConnection(self)
        handshake = self._handshake
        if handshake is None or self._lost or self._aborted or self._failed:
            return
        if self.disconnecting and not handshake.pending:
            # connectionMade() closed the connection already: no handshake.
            return
        handshake.start()

    def getHandle(self) -> SSL.Connection | None:
        """The ``OpenSSL.SSL.Connection`` under the context (``ISystemHandle``).

        For ``twisted.internet.ssl.Certificate.peerFromTransport`` and
        similar; prefer :attr:`securityContext`. ``None`` after the context
        was deleted (a failed handshake).
        """
        # (No context before makeConnection.)
        context: SecurityContext | None = getattr(self, "securityContext", None)
        return None if context is None else context.openssl_connection

    # -- receiving --------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        """Bytes from the transport: through the handshake, then decrypted and delivered."""
        if self._failed or self._aborted or self._lost or self._closing.received:
            # (After the peer's close_notify nothing more is its stream.)
            return
        if self._established:
            if self._received or self._read_paused:
                self._received += data
                self._unwrap()
            else:
                # The usual case: straight to the context, no buffering here.
                self._deliver(data)
            return
        if self._handshake is not None:
            self._handshake.receive(data)

    def _unwrap(self, final: bool = False) -> None:
        """Decrypt and deliver the bytes held back while the wrapped protocol
        had paused us (or left after the handshake's last record).

        *final*: the transport is gone, deliver what there is regardless of
        the pause.
        """
        if (
            not self._received
            or (self._read_paused and not final)
            or self._failed
            or self._aborted
            or self._closing.received
            or (self._lost and not final)
        ):
            return
        data, self._received = self._received, b""
        self._deliver(data, final)

    def _deliver(self, data: bytes, final: bool = False) -> None:
        """Give *data* to the context; deliver the plaintext of every record it completes.

        The context keeps a partial record itself (see :meth:`SecurityContext.feed`), so nothing
        stays here.
        """
        try:
            plaintext, token, closed = self.securityContext.feed(data)
        except SecurityError as e:
            self._security_failed(e, "connection")
            return
        if len(data) > _LARGE_PIECE and self._quiet is not None:
            self._quiet.note(self)
        if token:
            self.transport.write(token)
        if plaintext:
            self.bytesReceived += len(plaintext)
            _Wrapper.dataReceived(self, plaintext)
        if closed:
            # Whatever follows the peer's close_notify is not part of the stream.
            self._received = b""
            if not final:
                self._close_sequence().peer_closed()
            else:
                self._close_sequence().received = True

    # -- failures -----------------------------------------------------------

    def _security_failed(self, error: SecurityError, stage: str, **fields: object) -> None:
        if error.token:
            # The alert tells the peer why; it must leave before the close.
            self.transport.write(error.token)
        _log.warn(
            "TLS {stage} with {peer} failed: {status}: {reason}",
            stage=stage,
            peer=_peer_name(self.transport),
            status=error.status.name,
            # The reason may quote the peer (its certificate's names, its
            # server name): written escaped, never as extra log lines.
            reason=PeerText(error.reason),
            **fields,
        )
        self._fail(_failure(error))

    def _fail(self, reason: Failure, abort: bool = False) -> None:
        """Stop all TLS processing, remember why, and close the transport."""
        if self._reason is None:
            self._reason = reason
        self._failed = True
        self._update_write_state()
        self._received = b""
        self._outgoing.drop()
        if self._handshake is not None:
            self._handshake.fail(reason)
        self.securityContext.delete()
        if abort:
            self._abort_transport()
        else:
            self.transport.loseConnection()

    def whenHandshakeDone(self) -> Deferred[SchannelProtocol]:
        """A Deferred that fires with this protocol once the handshake is OK.

        It fails with the :class:`SecurityError` (or the reason the
        connection was lost) if the handshake does not complete.
        """
        if self._established:
            return _succeed(self)
        if self._handshake is None:
            return _fail(self._reason or _failure(ConnectionDone("the connection is closed")))
        return self._handshake.wait()

    # -- sending ----------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Encrypt and send *data* (gathered with other writes of this reactor turn).

        Before the handshake completes the data is held (and a registered
        producer paused) until it does. After :meth:`loseConnection` (unless
        a producer is still registered) or :meth:`loseWriteConnection`,
        writes are dropped, as Twisted's transports do.

        :raises TypeError: *data* is not bytes.
        """
        self._outgoing.write(data)

    def writeSequence(self, iovec: Iterable[bytes]) -> None:
        """Write the concatenation of *iovec* (see :meth:`write`)."""
        self.write(b"".join(iovec))

    def _flush(self) -> None:
        """Encrypt and send what this reactor turn wrote."""
        self._outgoing.flush()

    def _send(self, data: bytes) -> None:
        if self._failed or self._lost:
            return
        try:
            records = self.securityContext.encrypt(data)
        except SecurityError as e:
            self._fail(_failure(e))
            return
        self.bytesSent += len(data)
        if len(data) > _LARGE_PIECE and self._quiet is not None:
            self._quiet.note(self)
        self.transport.write(records)

    # -- producers and consumers ------------------------------------------

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        """Register the wrapped protocol's producer (push or pull).

        It is paused when the transport's buffer is full and while writes
        wait for the handshake.

        :raises RuntimeError: a producer is already registered.
        """
        if self._failed or self._lost or self._closing.sent:
            producer.stopProducing()
            return
        if self._producer is not None:
            raise RuntimeError(
                f"Cannot register producer {producer!r}: {self._producer._producer!r} "
                "is still registered"
            )
        gate = _ProducerGate(producer, streaming)
        if self._handshake is not None and self._handshake.pending:
            gate.pause("handshake")
        self._producer = gate
        self.transport.registerProducer(gate, streaming)

    def unregisterProducer(self) -> None:
        """Unregister the producer; a pending :meth:`loseConnection` proceeds."""
        gate = self._producer
        if gate is None:
            return
        self._producer = None
        gate.stopped = True
        self.transport.unregisterProducer()
        if self.disconnecting and self._established and not self._failed:
            self._close_sequence().shutdown()

    def pauseProducing(self) -> None:
        """The wrapped protocol cannot take more data: stop reading the transport."""
        self._read_paused = True
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        """The wrapped protocol takes data again: deliver what is buffered, read on."""
        self._read_paused = False
        if self._established:
            self._unwrap()
        if not (self._lost or self._aborted):
            self.transport.resumeProducing()

    def stopProducing(self) -> None:
        """The wrapped protocol wants no more data: close the transport."""
        self.transport.stopProducing()

    # -- closing ----------------------------------------------------------

    def loseConnection(self) -> None:
        """Close politely: flush, send close_notify, then close the transport.

        Pending writes (and a registered producer, until it unregisters) are
        sent first. The transport is closed when the peer answers with its
        close_notify, or after ``close_timeout`` seconds if it does not.
        Before the handshake completes there is nothing to protect and the
        transport is closed at once, unless writes are waiting for the
        handshake; then ``close_timeout`` bounds the wait for it too.
        """
        if self.disconnecting or not self.connected or self._lost:
            return
        self.disconnecting = True
        self._update_write_state()
        if not (self._failed or self._aborted):
            self._close_sequence().begin()

    def loseWriteConnection(self) -> None:
        """Half-close: send close_notify after pending data, keep reading.

        The wrapped protocol keeps receiving until the peer's close_notify,
        which reaches an ``IHalfCloseableProtocol`` as ``readConnectionLost``.
        """
        closing = self._closing
        if closing.sent or closing.write_shutdown_wanted or not self.connected:
            return
        if not (self._failed or self._aborted or self._lost):
            self._close_sequence().half_close()

    def abortConnection(self) -> None:
        """Close the transport at once: no close_notify, nothing more delivered."""
        if self._aborted or self._lost:
            return
        self._aborted = True
        self.disconnecting = True
        self._update_write_state()
        self._outgoing.drop()
        if self._handshake is not None:
            self._handshake.pending = None
        self._abort_transport()

    def _close_sequence(self) -> _CloseSequence:
        """This connection's own close sequence, created with the first step of its close."""
        closing = self._closing
        if closing is _NOT_CLOSING:
            closing = self._closing = _CloseSequence(self)
        return closing

    def readConnectionLost(self) -> None:
        """The transport's peer half-closed (TCP FIN), with or without close_notify.

        After the peer's close_notify this is the normal end of its stream,
        and our own side may still be writing. Otherwise the stream was cut
        short; the transport is closed and the loss reported as truncation.
        """
        if self._closing.received and not self._closing.sent and not self.disconnecting:
            return
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        """The transport's write side closed; nothing to do (we never half-close TCP)."""

    def _abort_transport(self) -> None:
        self._closing.cancel()
        abort = getattr(self.transport, "abortConnection", None)
        if abort is not None:
            abort()
        else:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure | None = None) -> None:
        """The transport is gone: tell the wrapped protocol, exactly once, and why."""
        if self._lost:
            return
        if reason is None:
            reason = _failure(ConnectionDone())
        self._lost = True
        self._update_write_state()
        self._outgoing.drop()
        self._closing.cancel()
        if self._established:
            # Whole records that arrived while the wrapped protocol had paused
            # us are still the peer's data (and may end with its close_notify).
            self._unwrap(final=True)
        reported = self._reason if self._reason is not None else _reported(reason, self)
        if self._handshake is not None:
            self._handshake.fail(reported)
        self.connected = False
        if self._producer is not None and not self._producer.stopped:
            self._producer.stopProducing()
        _Wrapper.connectionLost(self, reported)
        self._release()

    def _release(self) -> None:
        """Drop every reference that could lead back to this protocol.

        The connection is over; freeing the context now (instead of when a
        cyclic garbage collection happens to run) returns OpenSSL's memory
        at once. After this, ``securityContext`` raises INVALID_HANDLE and
        ``negotiatedProtocol``/``getPeerCertificate()`` return None, as
        Twisted's transport drops its ``Connection`` at this point too.
        """
        self._reason = None
        self._producer = None
        if self._quiet is not None:
            self._quiet.forget(self)
        self._outgoing.drop()
        self._outgoing._protocol = None
        if self._closing is not _NOT_CLOSING:
            self._closing.protocol = cast(SchannelProtocol, None)
        self.__dict__.pop("write", None)
        self.securityContext.delete()

    # -- ISSLTransport, INegotiated ---------------------------------------

    def getPeerCertificate(self) -> crypto.X509 | None:
        """The peer's certificate as a pyOpenSSL ``X509``, or None (``ISSLTransport``).

        None before the handshake completes, when the peer sent none, or
        after a failure. ``securityContext.attributes.peer_certificate`` has
        it as a ``cryptography`` certificate.
        """
        if not self.securityContext.established:
            return None
        certificate = self.securityContext.attributes.peer_certificate
        return None if certificate is None else crypto.X509.from_cryptography(certificate)

    @property
    def negotiatedProtocol(self) -> bytes | None:
        """The ALPN protocol agreed in the handshake, or None (``INegotiated``)."""
        context = getattr(self, "securityContext", None)
        if context is None or not context.established:
            return None
        alpn = context.attributes.alpn
        return alpn.encode("ascii") if alpn else None

    def _update_write_state(self) -> None:
        self._outgoing.open = self._established and not (
            self._closing.sent
            or self._closing.write_shutdown_wanted
            or self._failed
            or self._aborted
            or self._lost
            or self.disconnecting
        )


def _reported(reason: Failure, protocol: SchannelProtocol) -> Failure:
    """What to tell *protocol*'s application about the transport's *reason*:
    a :class:`ConnectionTruncated` if the stream ended without close_notify."""
    if protocol._aborted or protocol._closing.received or protocol.disconnecting:
        return reason
    # The stream ended, cleanly or not at the TCP level, without the
    # peer's close_notify: what we received may be cut short.
    # isinstance, not reason.check(): check() compares qualified class
    # names, built anew for every class asked about, once per connection.
    value = reason.value
    if not isinstance(value, (ConnectionDone, ConnectionLost)) or isinstance(
        value, ConnectionTruncated
    ):
        return reason
    how = "closed" if isinstance(value, ConnectionDone) else f"was lost ({value})"
    if not protocol._established:
        message = f"the connection {how} before the TLS handshake completed"
    else:
        message = (
            f"the connection {how} without the peer's close_notify: "
            "its data may be incomplete"
        )
    truncated = ConnectionTruncated(message)
    truncated.closed = isinstance(value, ConnectionDone)
    return _failure(truncated)


def _peer_name(transport: Any) -> str:
    """The peer as a log reads best: ``host:port`` for IP, else what the transport says."""
    try:
        address = transport.getPeer()
    except Exception:
        return "(unknown peer)"
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    if isinstance(host, str) and isinstance(port, int):
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return str(address)


def _succeed(value: SchannelProtocol) -> Deferred[SchannelProtocol]:
    d: Deferred[SchannelProtocol] = Deferred()
    d.callback(value)
    return d


def _fail(reason: Failure) -> Deferred[SchannelProtocol]:
    d: Deferred[SchannelProtocol] = Deferred()
    d.errback(reason)
    return d


class SchannelFactory(WrappingFactory):
    """Adds TLS to the connections of *wrappedFactory*: a drop-in ``TLSMemoryBIOFactory``.

    :param credentials_or_creator: txschannel :class:`Credentials`, or what
        ``TLSMemoryBIOFactory`` accepts: ``optionsForClientTLS(...)``,
        ``CertificateOptions``, any ``IOpenSSLClientConnectionCreator`` /
        ``IOpenSSLServerConnectionCreator``, or a legacy object with
        ``getContext()``. Twisted objects keep their own certificate
        checks.
    :param isClient: True to send the ClientHello (connect side).
    :param wrappedFactory: makes the application protocols. If it provides
        ``IProtocolNegotiationFactory`` its ``acceptableProtocols()`` are
        offered (client) or accepted (server) by ALPN, per connection.
    :param clock: for write coalescing and the timeouts; the reactor by default.
    :param target_name: (client) the name the server's certificate must
        match, also sent as SNI. Defaults to the Twisted creator's host name
        or the credentials' ``hostname``.
    :param handshake_timeout: (server) seconds a connection may take to
        complete the handshake before it is dropped; None for no limit.
    :param max_pre_handshake_buffer: bytes a peer may have waiting for the
        handshake at once (a partial record, or the records of a ClientHello
        not yet whole); more and it is disconnected (and logged). The
        default, :data:`DEFAULT_PRE_HANDSHAKE_BUFFER`, fits the largest
        ClientHello OpenSSL accepts.
    :param handshake_memory: (server) bytes that all unfinished handshakes
        of this factory may hold together (see :data:`DEFAULT_HANDSHAKE_MEMORY`);
        past it new handshakes are refused, with a log line. None for no
        limit.
    :param close_timeout: seconds :meth:`SchannelProtocol.loseConnection`
        waits for the peer's close_notify before closing anyway.
    :param keep_client_hello: (server) have each connection's context keep
        the client's ClientHello (see :attr:`ServerContext.client_hello`),
        for an application that shows or judges what clients offer.
    :param release_quiet_buffers: give back the memory OpenSSL's buffers
        keep of large pieces (and of the handshake) once a connection has
        moved none for 5 to 10 seconds (:meth:`SecurityContext.release_buffers`):
        one timer for the factory, running while some connection moved a
        large piece. ``schannel:`` endpoints (and so ``twist schannel``)
        set it; it is off by default, so that a factory made directly has
        no timer of its own left once its handshakes are done, as
        ``TLSMemoryBIOFactory`` has none (trial would call the reactor
        unclean for a test that leaves a connection open).
    :raises ValueError: credentials for the wrong side, a client without a
        name to check, or a bad limit.
    :raises TypeError: *credentials_or_creator* is not a TLS configuration.

    :ivar credentials: the :class:`Credentials` new connections use.
        Assign new ones (or a Twisted creator) to reload certificates:
        connections already open keep theirs.
    :ivar keep_client_hello: whether new server connections keep the
        ClientHello; may be changed, for the connections accepted after.
    """

    protocol = SchannelProtocol
    noisy = False
    #: The (configured, accepted) ALPN lists last warned about as disjoint.
    _alpn_warned: tuple[tuple[bytes, ...], tuple[bytes, ...]] | None = None

    def __init__(
        self,
        credentials_or_creator: CredentialsOrCreator,
        isClient: bool,
        wrappedFactory: IProtocolFactory,
        clock: IReactorTime | None = None,
        *,
        target_name: str | None = None,
        handshake_timeout: float | None = 30.0,
        max_pre_handshake_buffer: int = DEFAULT_PRE_HANDSHAKE_BUFFER,
        close_timeout: float | None = 5.0,
        handshake_memory: int | None = DEFAULT_HANDSHAKE_MEMORY,
        keep_client_hello: bool = False,
        release_quiet_buffers: bool = False,
    ) -> None:
        cast(Any, super()).__init__(wrappedFactory)
        self.isClient = bool(isClient)
        self.target_name = target_name
        self.keep_client_hello = keep_client_hello
        for name, value in (("handshake_timeout", handshake_timeout),
                            ("close_timeout", close_timeout)):
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be a positive number of seconds or None, "
                                 f"not {value!r}")
        if not isinstance(max_pre_handshake_buffer, int) or max_pre_handshake_buffer <= 0:
            raise ValueError(
                "max_pre_handshake_buffer must be a positive number of bytes, "
                f"not {max_pre_handshake_buffer!r}"
            )
        if handshake_memory is not None and (
            not isinstance(handshake_memory, int) or handshake_memory <= 0
        ):
            raise ValueError(
                f"handshake_memory must be a positive number of bytes or None, "
                f"not {handshake_memory!r}"
            )
        self.handshake_timeout = handshake_timeout
        self.max_pre_handshake_buffer = max_pre_handshake_buffer
        self.close_timeout = close_timeout
        if clock is None:
            from twisted.internet import reactor

            clock = cast(IReactorTime, reactor)
        self._clock = clock
        # (The public path cannot replace the BIOs: no timer for nothing.)
        self._quiet = (
            _QuietRelease(clock) if release_quiet_buffers and _openssl.FAST else None
        )
        self._budget = (
            _HandshakeBudget(handshake_memory, clock)
            if handshake_memory is not None and not self.isClient
            else None
        )
        self.credentials = credentials_or_creator

    @property
    def credentials(self) -> Credentials:
        """The credentials for new connections (see the class docstring)."""
        return self._credentials

    @credentials.setter
    def credentials(self, value: CredentialsOrCreator) -> None:
        credentials = _credentials_from(value, self.isClient, self)
        if (
            self.isClient
            and self.target_name is None
            and credentials.hostname is None
            and not credentials.manual_validation
        ):
            raise ValueError(
                "SchannelFactory(isClient=True) needs target_name=... (the name the "
                "server's certificate must match), or credentials made with "
                "Credentials.client(manual_validation=True)"
            )
        self._credentials = credentials

    @property
    def clock(self) -> IReactorTime:
        """The clock used for write coalescing and timeouts."""
        return self._clock

    @property
    def handshake_memory(self) -> int | None:
        """The budget of bytes for unfinished handshakes (server), or None."""
        return None if self._budget is None else self._budget.limit

    @property
    def handshake_memory_held(self) -> int:
        """The bytes unfinished handshakes are charged now (0 without a budget)."""
        return 0 if self._budget is None else self._budget.held

    @property
    def handshakes_refused(self) -> int:
        """How many handshakes the memory budget has refused so far."""
        return 0 if self._budget is None else self._budget.refused

    def reserve_handshake_memory(self, amount: int, peer: str) -> bool:
        """Charge *amount* more bytes, held for a connection from *peer* before
        its handshake begins (a PROXY header being read, see
        :mod:`txschannel.haproxy`), to the handshake memory budget.

        :returns: False when the budget has no room: nothing is charged, the
            refusal is counted and logged like a refused handshake, and the
            caller drops the connection. Always True without a budget.
        """
        if self._budget is None:
            return True
        if self._budget.take(amount):
            return True
        self._budget.refusal(peer)
        return False

    def release_handshake_memory(self, amount: int) -> None:
        """Give back *amount* bytes charged by :meth:`reserve_handshake_memory`."""
        if self._budget is not None:
            self._budget.give_back(amount)

    def _new_context(self) -> SecurityContext:
        credentials = self._credentials
        # (A creator adapted for this factory offers its wrapped factory's
        # ALPN protocols itself.)
        creator = credentials.creator
        alpn = None if creator is not None and creator.factory is not None else (
            self._alpn(credentials)
        )
        if self.isClient:
            return ClientContext(credentials, self.target_name, alpn=alpn)
        return ServerContext(credentials, alpn=alpn, keep_client_hello=self.keep_client_hello)

    def _alpn(self, credentials: Credentials) -> tuple[bytes, ...] | None:
        """The ALPN protocols this connection offers (client) or accepts (server).

        Only what the application can speak: the wrapped factory's
        ``acceptableProtocols()``, narrowed to the credentials' list (the
        ``alpn=`` option) when there is one, in that list's order of
        preference. Without ``IProtocolNegotiationFactory`` the credentials'
        list stands as it is (None: the context uses it).
        """
        negotiation = IProtocolNegotiationFactory(self.wrappedFactory, None)
        if negotiation is None:
            return None
        wanted = tuple(bytes(p) for p in negotiation.acceptableProtocols())
        configured = credentials.alpn
        if not configured:
            return wanted
        speakable = tuple(p for p in configured if p in wanted)
        if self._alpn_warned == (configured, wanted):
            pass
        elif speakable:
            self._alpn_warned = (configured, wanted)
            unspoken = [p for p in configured if p not in wanted]
            if unspoken:
                _log.info(
                    "ALPN: {unspoken} (configured) is not offered: the application does "
                    "not accept it (it accepts {wanted})",
                    unspoken=", ".join(p.decode("ascii", "replace") for p in unspoken),
                    wanted=", ".join(p.decode("ascii", "replace") for p in wanted),
                )
        else:
            self._alpn_warned = (configured, wanted)
            _log.warn(
                "ALPN: none of the protocols configured ({configured}) is one the "
                "application accepts ({wanted}): "
                "{refusal}",
                configured=", ".join(p.decode("ascii", "replace") for p in configured),
                wanted=", ".join(p.decode("ascii", "replace") for p in wanted) or "none",
                refusal=(
                    "no ALPN is offered"
                    if self.isClient
                    else "clients that offer ALPN are refused with no_application_protocol"
                ),
            )
        if speakable:
            return speakable
        if self.isClient:
            return ()
        # An empty protocol name: no client can offer it (RFC 7301 names are
        # 1 to 255 bytes), so every offer is refused with no_application_protocol.
        return _NO_PROTOCOL_SPOKEN

    def buildProtocol(self, addr: interfaces.IAddress | None) -> SchannelProtocol | None:  # type: ignore[override]
        """A :class:`SchannelProtocol` around the wrapped factory's protocol."""
        wrapped = self.wrappedFactory.buildProtocol(addr)
        if wrapped is None:
            return None
        return self.protocol(self, wrapped)

    def stopFactory(self) -> None:
        """No more ports use this factory: cancel the handshake budget's timers
        and the look for quiet connections."""
        if self._budget is not None:
            self._budget.stop()
        if self._quiet is not None:
            self._quiet.stop()

    def logPrefix(self) -> str:
        """The wrapped factory's log prefix, marked as TLS."""
        wrapped = self.wrappedFactory
        if interfaces.ILoggingContext.providedBy(wrapped):
            prefix = wrapped.logPrefix()
        else:
            prefix = type(wrapped).__name__
        return f"{prefix} (TLS)"


def startSchannel(
    protocol: IProtocol,
    credentials_or_creator: CredentialsOrCreator,
    isClient: bool,
    *,
    received: bytes = b"",
    clock: IReactorTime | None = None,
    target_name: str | None = None,
    handshake_timeout: float | None = 30.0,
    max_pre_handshake_buffer: int = DEFAULT_PRE_HANDSHAKE_BUFFER,
    close_timeout: float | None = 5.0,
) -> SchannelProtocol:
    """Upgrade *protocol*'s connection to TLS in place (STARTTLS).

    *protocol* is connected and has just agreed with its peer to start TLS.
    From now on its transport is a :class:`SchannelProtocol` (returned):
    its writes are encrypted and it receives decrypted data. Whatever it
    wrote before this call has already gone out in the clear.
    ``protocol.makeConnection`` is not called again; an
    ``IHandshakeListener`` gets ``handshakeCompleted()``, and
    ``whenHandshakeDone()`` on the result gives a Deferred.

    :param received: bytes the plaintext protocol already read past the
        STARTTLS command that belong to TLS (a pipelined ClientHello).
    :raises TypeError: the transport cannot be re-pointed (it is neither a
        ``ProtocolWrapper`` nor has a ``protocol`` attribute, as Twisted's
        TCP, UNIX and standard-I/O transports do).

    The other arguments are those of :class:`SchannelFactory`.
    """
    transport: Any = getattr(protocol, "transport", None)
    if transport is None:
        raise TypeError(f"{protocol!r} is not connected (it has no transport)")
    inner_factory = getattr(protocol, "factory", None)
    if inner_factory is None:
        inner_factory = Factory()
    factory = SchannelFactory(
        credentials_or_creator,
        isClient,
        inner_factory,
        clock,
        target_name=target_name,
        handshake_timeout=handshake_timeout,
        max_pre_handshake_buffer=max_pre_handshake_buffer,
        close_timeout=close_timeout,
        handshake_memory=None,
    )
    tls = SchannelProtocol(factory, protocol, _connectWrapped=False)
    if isinstance(transport, ProtocolWrapper):
        transport.wrappedProtocol = tls
    elif "protocol" in getattr(transport, "__dict__", {}):
        transport.protocol = tls
    else:
        raise TypeError(
            f"cannot start TLS on {transport!r}: startSchannel needs a transport whose "
            "'protocol' attribute can be re-pointed (TCP, UNIX, standard I/O) or a "
            "ProtocolWrapper"
        )
    cast(Any, protocol).transport = tls
    tls.makeConnection(transport)
    if received:
        tls.dataReceived(received)
    return tls

