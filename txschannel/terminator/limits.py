"""``--max-connections``: how many connections ``twist schannel`` holds open at once.

At the limit every listening port is paused: the kernel keeps new clients
in its accept queue (they wait, nothing is read from them) until a
connection closes, and then accepting resumes. Both turns are logged once.

A port accepts several clients per reactor turn, so a few may be accepted
after the limit was reached and before the pause took effect; they are
aborted at once (a reset, nothing read) and counted, so the limit is never
exceeded. A port that cannot be paused (an endpoint whose listening port is
not a Twisted file descriptor) is protected the same way.
"""

from __future__ import annotations

from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger

__all__ = ["ConnectionLimit"]

_log = Logger(namespace="txschannel")


class ConnectionLimit:
    """Counts the open connections and pauses listening at *maximum*.

    :param maximum: the most connections open at once, or ``None`` for no
        limit (the count is kept all the same).
    :ivar open: connections open now (accepted and not yet closed).
    :ivar refused: connections aborted since the last pause because they
        were accepted over the limit.
    :ivar paused: whether the listening ports are paused.
    """

    def __init__(self, maximum: int | None = None) -> None:
        self.maximum = maximum
        self.open = 0
        self.refused = 0
        self.paused = False
        self._ports: list[IListeningPort] = []

    def add_port(self, port: IListeningPort) -> None:
        """Pause and resume *port* with the others (paused now if at the limit)."""
        self._ports.append(port)
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
