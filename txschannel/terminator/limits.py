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
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger

__all__ = ["ConnectionLimit"]

_log = Logger(namespace="txschannel")


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
    """

    def __init__(self, maximum: int | None = None, *, announce: bool = True) -> None:
        self.maximum = maximum
        self.announce = announce
        self.open = 0
        self.refused = 0
        self.paused = False
        self._ports: list[IListeningPort] = []

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
        if self.paused:
            _pause(port)

    def remove_ports(self) -> None:
        """Forget every port (they are stopping): never resume them again."""
        self._ports = []

    def opened(self) -> bool:
        """A connection was accepted: count it, or return False when it is over the limit.

        The caller aborts a connection that is over the limit and does not
        call :meth:`closed` for it.
        """
        if self.maximum is not None and self.open >= self.maximum:
            self.refused += 1
            return False
        self.open += 1
        if self.maximum is not None and self.open >= self.maximum and not self.paused:
            self.paused = True
            for port in self._ports:
                _pause(port)
            if self.announce:
                _log.warn(
                    "at --max-connections {maximum}: stopped accepting until a connection closes",
                    maximum=self.maximum,
                )
        return True

    def closed(self) -> None:
        """A counted connection closed: resume accepting when below the limit."""
        self.open -= 1
        if self.paused and self.maximum is not None and self.open < self.maximum:
            self.paused = False
            for port in self._ports:
                _resume(port)
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
