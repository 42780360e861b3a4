"""``GET /healthz`` on the ``--status`` listener: whether to send this process clients.

A load balancer in front of several terminators (haproxy's ``option
httpchk``, nginx's health checks, a Kubernetes readiness probe) asks every
second or so whether each one takes connections. :class:`Health` answers
from two flags it reads (with ``--workers``, a flag and one search of the
workers' bytes), and nothing else: no certificate is parsed and no
metric is rendered per check, so checks every few milliseconds cost next
to nothing.

``200 ok``
    the process accepts connections.
``503 draining``
    it is stopping (``SIGTERM``): during ``--drain-delay`` its listeners
    still accept, so that the balancer has time to notice and send no one
    new, and then they close.
``503 at limit``
    it holds ``--max-connections`` connections, and new clients wait in the
    kernel's queue until one closes. With ``--workers``: some worker that
    still accepts holds its ``--max-connections`` (the kernel goes on
    handing that worker its share of new clients, who wait), whichever
    worker answers the check (see :class:`~txschannel.terminator.limits.LimitBoard`).
"""

from __future__ import annotations

from twisted.web.resource import Resource
from twisted.web.server import Request

from txschannel.terminator.limits import ConnectionLimit, LimitBoard

__all__ = ["Health", "HealthResource"]


class Health:
    """What ``/healthz`` says about the process that serves it.

    :param limit: the ``--max-connections`` count (paused: at the limit),
        or ``None``.
    :param board: for a ``--workers`` worker, its supervisor's board: then
        the answer is at limit while any worker is (this one's own count
        is on the board too).
    :ivar draining: set once the process is stopping; never cleared.
    """

    def __init__(
        self, limit: ConnectionLimit | None = None, board: LimitBoard | None = None
    ) -> None:
        self.limit = limit
        self.board = board
        self.draining = False

    def answer(self) -> tuple[int, bytes]:
        """The HTTP status code and body that a health check gets now."""
        if self.draining:
            return 503, b"draining\n"
        if self.board is not None:
            if self.board.any_at_limit():
                return 503, b"at limit\n"
        elif self.limit is not None and self.limit.paused:
            return 503, b"at limit\n"
        return 200, b"ok\n"


class HealthResource(Resource):
    """``/healthz``: :meth:`Health.answer` as plain text, never cached.

    Only ``GET`` and ``HEAD`` are served (405 otherwise).
    """

    isLeaf = True

    def __init__(self, health: Health) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.health = health

    def render_GET(self, request: Request) -> bytes:
        """The answer of :attr:`health`, with its status code."""
        code, body = self.health.answer()
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")  # type: ignore[no-untyped-call]
        request.setHeader(b"cache-control", b"no-store")  # type: ignore[no-untyped-call]
        return body
