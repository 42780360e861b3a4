"""``--max-connections``: how many connections ``twist schannel`` holds open at once.

At the limit every listening port is paused: the kernel keeps new clients
in its accept queue (they wait, nothing is read from them, no handshake
starts, so no handshake timer runs) until a connection closes, and then
accepting resumes and they are served in the order they connected. Both
turns are logged once.

Twisted's TCP and UNIX ports accept several clients per reactor turn (as
many as ``Port.numberAccepts``, which grows under load). Left alone, a port
would accept past the limit before the pause took effect, and those
clients could only be turned away. So each port of a limit is given a
``doRead`` that first lowers ``numberAccepts`` to the free slots: it never
accepts more clients than it can serve. Only a port that is no Twisted
file descriptor (whose accepting cannot be paused or capped) can still
hand over a client over the limit: that one is aborted (a reset, nothing
read) and counted, so the limit is never exceeded.

With ``--workers``, each worker counts its own connections against its own
limit, and a :class:`LimitBoard` (memory the supervisor shares with every
worker it forks) says which of them are at it: ``/healthz`` answers for the
whole service, whichever worker takes the check.

A plain ``haproxy:`` listener starts the connection's gate (which counts
it) only once the PROXY header is read. Its connections are counted from
accept all the same: :meth:`ConnectionLimit.add_port` gives the limit to
the port's :class:`~txschannel.haproxy.ProxyHeaderFactory`, which counts a
connection as it is accepted and hands its slot over to the gate (see
:meth:`ConnectionLimit.hand_over`). Otherwise clients that never send a
header would each hold a descriptor, uncounted, for the header timeout.

:class:`BoundedFactory` applies a limit of its own, and an idle timeout,
and a deadline for each request, to a listener whose clients must never
crowd out the others: ``--status``.
"""

from __future__ import annotations

import mmap
from collections.abc import Callable, Iterable
from typing import Any, cast

from twisted.internet.interfaces import (
    IDelayedCall,
    IListeningPort,
    IProtocolFactory,
    IReactorTime,
    ITransport,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure

from txschannel.haproxy import ProxyHeaderFactory

__all__ = [
    "STATUS_IDLE_TIMEOUT",
    "STATUS_MAX_CONNECTIONS",
    "STATUS_REQUEST_TIMEOUT",
    "BoundedFactory",
    "ConnectionLimit",
    "LimitBoard",
]

_log = Logger(namespace="txschannel")

#: The most connections the ``--status`` listener holds at once: far more
#: than scrapers need, and few next to the usual open-files limit (1024).
STATUS_MAX_CONNECTIONS = 64
#: Seconds without a byte either way before a ``--status`` connection is
#: aborted: a scrape takes milliseconds; keep-alives between scrapes (every
#: 15 s or more) are not worth a descriptor.
STATUS_IDLE_TIMEOUT = 10.0
#: Seconds a ``--status`` connection has to send a whole request, from its
#: accept and again from each answer, before it is aborted. A scraper's
#: request takes milliseconds; without this bound 64 clients each sending
#: a header byte every few seconds (inside the idle timeout) would hold
#: every slot for as long as they liked, and health checks would wait in
#: the kernel's queue forever.
STATUS_REQUEST_TIMEOUT = 5.0


class LimitBoard:
    """Which workers of a ``--workers`` service are at ``--max-connections``.

    One byte per worker, in anonymous shared memory made by the supervisor
    before it forks: every worker it starts inherits the same pages. The
    supervisor gives each worker a cell of its own (:meth:`take`) and takes
    it back once the worker is gone (:meth:`give_back`, which clears it, so
    a worker that died at its limit leaves no trace); a worker writes only
    its own cell (:meth:`mark`), and anyone reads them all
    (:meth:`any_at_limit`). One-byte writes need no lock.

    :param cells: the most workers alive at once that get a cell (old
        generations that still drain count); a worker started beyond it
        gets none and is never reported at its limit.
    """

    def __init__(self, cells: int = mmap.PAGESIZE) -> None:
        self._memory = mmap.mmap(-1, cells)
        self._taken: set[int] = set()

    def take(self) -> int | None:
        """A free cell for a worker about to start (in the supervisor), or None."""
        for cell in range(len(self._memory)):
            if cell not in self._taken:
                self._taken.add(cell)
                self._memory[cell] = 0
                return cell
        return None

    def give_back(self, cell: int | None) -> None:
        """Clear and free the cell of a worker that is gone (in the supervisor)."""
        if cell is not None:
            self._memory[cell] = 0
            self._taken.discard(cell)

    def mark(self, cell: int, at_limit: bool) -> None:
        """Say whether the worker of *cell* is at its limit (in that worker)."""
        self._memory[cell] = 1 if at_limit else 0

    def any_at_limit(self) -> bool:
        """Whether some worker is at its limit now."""
        return self._memory.find(b"\x01") != -1


class ConnectionLimit:
    """Counts the open connections and pauses listening at *maximum*.

    :param maximum: the most connections open at once, or ``None`` for no
        limit (the count is kept all the same).
    :param announce: log each pause and resume (``--max-connections``); a
        limit whose turns are routine, or could be driven by anyone able to
        connect, says nothing.
    :ivar open: connections open now (accepted and not yet closed).
    :ivar refused: connections aborted since the last pause because they
        were accepted over the limit (only by a port that cannot be capped).
    :ivar paused: whether the listening ports are paused.
    :ivar on_turn: called with True when the limit pauses its ports and
        with False when it resumes them, and once with False when its ports
        are forgotten (:meth:`remove_ports`), after which never again (a
        ``--workers`` worker marks its :class:`LimitBoard` cell with it).
    """

    def __init__(self, maximum: int | None = None, *, announce: bool = True) -> None:
        self.maximum = maximum
        self.announce = announce
        self.open = 0
        self.refused = 0
        self.paused = False
        self.on_turn: Callable[[bool], None] | None = None
        self._ports: list[IListeningPort] = []
        #: Slots being handed over (hand_over): the next opened() takes one.
        self._handing_over = 0

    @property
    def free(self) -> int | None:
        """How many more connections may open now (``None``: no limit)."""
        if self.maximum is None:
            return None
        return max(0, self.maximum - self.open)

    def add_port(self, port: IListeningPort) -> None:
        """Pause and resume *port* with the others (paused now if at the limit),
        and let it accept no more clients at a time than there are free slots."""
        self._ports.append(port)
        if self.maximum is not None:
            _cap_accepts(port, self)
        factory = getattr(port, "factory", None)
        if isinstance(factory, ProxyHeaderFactory):
            # Count its connections from accept, not from the end of their
            # PROXY header (see the module's docstring).
            factory.connections = self
        if self.paused:
            _pause(port)

    def remove_ports(self) -> None:
        """Forget every port (they are stopping): never resume them again.

        A process that no longer accepts is no longer at its limit for
        anyone choosing where to send clients, whatever it still holds.
        """
        self._ports = []
        on_turn, self.on_turn = self.on_turn, None
        if on_turn is not None:
            on_turn(False)

    def opened(self) -> bool:
        """A connection was accepted: count it, or return False when it is over the limit.

        The caller aborts a connection that is over the limit and does not
        call :meth:`closed` for it. Inside :meth:`hand_over`, the slot
        handed over is taken instead: the connection was counted already.
        """
        if self._handing_over:
            self._handing_over -= 1
            return True
        if self.maximum is not None and self.open >= self.maximum:
            self.refused += 1
            return False
        self.open += 1
        if self.maximum is not None and self.open >= self.maximum and not self.paused:
            self.paused = True
            for port in self._ports:
                _pause(port)
            if self.on_turn is not None:
                self.on_turn(True)
            if self.announce:
                _log.warn(
                    "at --max-connections {maximum}: stopped accepting until a connection closes",
                    maximum=self.maximum,
                )
        return True

    def hand_over(self, start: Callable[[], object]) -> None:
        """Pass a counted connection's slot on to the protocol that *start* starts.

        For a layer that counts a connection (:meth:`opened`) before the
        protocol that counts connections is started (a PROXY header
        reader before the gate): that protocol's :meth:`opened`, called
        from *start*, takes this slot rather than a second one, and it
        calls :meth:`closed` in the end. If *start* counts nothing, the
        slot is given back once it returns. The caller no longer calls
        :meth:`closed` for the connection, whatever *start* raises.
        """
        self._handing_over += 1
        try:
            start()
        finally:
            if self._handing_over:
                # Not taken: nobody holds the slot any more.
                self._handing_over -= 1
                self.closed()

    def closed(self) -> None:
        """A counted connection closed: resume accepting when below the limit."""
        self.open -= 1
        if self.paused and self.maximum is not None and self.open < self.maximum:
            self.paused = False
            for port in self._ports:
                _resume(port)
            if self.on_turn is not None:
                self.on_turn(False)
            refused, self.refused = self.refused, 0
            if not self.announce:
                return
            _log.info(
                "below --max-connections {maximum} ({open} open): accepting again"
                "{refused_text}",
                maximum=self.maximum,
                open=self.open,
                refused=refused,
                refused_text=(
                    f"; {refused} client(s) accepted over the limit were aborted"
                    if refused else ""
                ),
            )


def _pause(port: IListeningPort) -> None:
    # Twisted's TCP and UNIX ports are file descriptors: not reading the
    # listening socket is not accepting. (IListeningPort has no pause.)
    stop = getattr(port, "stopReading", None)
    if callable(stop):
        stop()


def _resume(port: IListeningPort) -> None:
    start = getattr(port, "startReading", None)
    if callable(start) and getattr(port, "connected", True):
        start()


def _cap_accepts(port: IListeningPort, limit: ConnectionLimit) -> None:
    """Make each of *port*'s accept rounds take at most *limit*'s free slots.

    Twisted's ``Port.doRead`` accepts up to ``numberAccepts`` clients in a
    row (and raises it by 20 whenever it used them all), without a hook to
    stop early: pausing the port from inside the round does not end it. So
    the cap is set just before each round, by a ``doRead`` on the instance,
    which is what the reactor calls. Every client accepted in the round is
    counted (``opened``) before the next is accepted, and each round starts
    from the count as it is then, so several ports sharing the limit cannot
    overshoot it either.
    """
    round_of_accepts: Callable[[], object] | None = getattr(port, "doRead", None)
    if round_of_accepts is None or not isinstance(getattr(port, "numberAccepts", None), int):
        return  # not a Twisted port: opened() turns away what is over the limit

    def capped_round() -> object:
        free = limit.free
        if free is not None:
            if free == 0:
                # Not reached while the pause holds; if it did not, accept
                # nobody rather than somebody to abort.
                _pause(port)
                return None
            port.numberAccepts = min(port.numberAccepts, free)  # type: ignore[attr-defined]
        return round_of_accepts()

    port.doRead = capped_round  # type: ignore[attr-defined]


#: ProtocolWrapper's and WrappingFactory's methods carry no type hints:
#: called through these names, the calls are typed as Any.
_Wrapper: Any = ProtocolWrapper
_WrappingFactory: Any = WrappingFactory


class _BoundedProtocol(ProtocolWrapper):
    """One connection of a :class:`BoundedFactory`: counted, and aborted when
    idle or when a request takes too long.

    :ivar counted: whether the connection holds one of the limit's slots
        (it does not when it was over the limit and aborted at once).
    """

    factory: BoundedFactory

    def __init__(self, factory: BoundedFactory, wrappedProtocol: Protocol) -> None:
        _Wrapper.__init__(self, factory, wrappedProtocol)
        self.counted = False
        self._idle: IDelayedCall | None = None
        self._last_activity = 0.0
        self._deadline: IDelayedCall | None = None
        #: When the connection was accepted or last written to (answered).
        self._answered_at = 0.0

    def makeConnection(self, transport: ITransport) -> None:
        """Count the connection and start its idle clock, or abort it when over the limit."""
        if not self.factory.limit.opened():
            self.transport = transport
            # Only from a port whose accepts could not be capped.
            cast(Any, transport).abortConnection()
            return
        self.counted = True
        clock = self.factory.clock
        self._last_activity = clock.seconds()
        self._idle = clock.callLater(self.factory.idle_timeout, self._idle_check)
        self._answered_at = self._last_activity
        if self.factory.request_timeout is not None:
            self._deadline = clock.callLater(self.factory.request_timeout, self._deadline_check)
        _Wrapper.makeConnection(self, transport)

    def _idle_check(self) -> None:
        # As ConnectionGate's: one timer, moved only when it fires.
        self._idle = None
        quiet = self.factory.clock.seconds() - self._last_activity
        if quiet < self.factory.idle_timeout:
            self._idle = self.factory.clock.callLater(
                self.factory.idle_timeout - quiet, self._idle_check
            )
            return
        # An abort, not a close: a client that reads nothing would hold a
        # closing connection (and its descriptor) as long as it liked.
        cast(Any, self.transport).abortConnection()

    def _deadline_check(self) -> None:
        # Bytes received do not move this clock, only answers do: a client
        # trickling a request one byte at a time keeps the idle timer
        # happy, never this one.
        self._deadline = None
        timeout = self.factory.request_timeout
        assert timeout is not None
        waited = self.factory.clock.seconds() - self._answered_at
        if waited < timeout:
            self._deadline = self.factory.clock.callLater(timeout - waited, self._deadline_check)
            return
        cast(Any, self.transport).abortConnection()

    def dataReceived(self, data: bytes) -> None:
        """Note the activity and pass *data* on."""
        self._last_activity = self.factory.clock.seconds()
        _Wrapper.dataReceived(self, data)

    def write(self, data: bytes) -> None:
        """Note the activity (an answer) and send *data*."""
        self._last_activity = self._answered_at = self.factory.clock.seconds()
        _Wrapper.write(self, data)

    def writeSequence(self, data: Iterable[bytes]) -> None:
        """Note the activity (an answer) and send every item of *data*."""
        self._last_activity = self._answered_at = self.factory.clock.seconds()
        _Wrapper.writeSequence(self, data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Give the slot back (resuming the port if it was paused) and tell the wrapped protocol."""
        for timer in (self._idle, self._deadline):
            if timer is not None and timer.active():
                timer.cancel()
        self._idle = self._deadline = None
        if not self.counted:
            return  # aborted over the limit: the wrapped protocol never started
        self.counted = False
        self.factory.limit.closed()
        _Wrapper.connectionLost(self, reason)


class BoundedFactory(WrappingFactory):
    """Wraps *wrapped* so that its listener can never take more than its share.

    At most *maximum* of its connections are open at once: once the
    listening port is given to :attr:`limit` (``limit.add_port(port)``),
    further clients wait in the kernel's accept queue, holding none of this
    process's file descriptors, and are accepted as connections close. A
    connection with no byte either way for *idle_timeout* seconds is
    aborted, and so is one that is not written to (answered) within
    *request_timeout* seconds of its accept or of the last write: a client
    that sends its request slowly, or sends none, holds its slot no longer
    than that. None of this is logged: anyone able to connect could make
    it happen as often as they liked.

    :param wrapped: the factory serving the connections.
    :param maximum: the most connections open at once (at least 1).
    :param idle_timeout: seconds without a byte in or out before an abort.
    :param clock: for the idle timers.
    :param request_timeout: seconds from the accept, or from the last
        write, to the next write before an abort; None for no such bound.
    :ivar limit: the count of open connections, which pauses the port.
    """

    protocol = _BoundedProtocol
    noisy = False

    def __init__(
        self,
        wrapped: IProtocolFactory,
        maximum: int,
        idle_timeout: float,
        clock: IReactorTime,
        request_timeout: float | None = None,
    ) -> None:
        _WrappingFactory.__init__(self, wrapped)
        self.limit = ConnectionLimit(maximum, announce=False)
        self.idle_timeout = idle_timeout
        self.request_timeout = request_timeout
        self.clock = clock
