"""The transport fault tests' application protocol (:class:`Recorder`, which
records what the transport tells it) and their credentials: one root and a
server certificate for localhost. A module of its own so that the child
process those tests start can import them too.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from tests.support import certs
from txschannel import Credentials

_root = certs.authority("faults root")
_server = certs.leaf(_root, ["localhost", "127.0.0.1"])


def server_credentials() -> Credentials:
    return Credentials.server(certificate=_server.chain_pem)


def client_credentials() -> Credentials:
    return Credentials.client(trust_roots=[_root.certificate])


@implementer(IHandshakeListener)
class Recorder(Protocol):
    """The wrapped (application) protocol: records what the transport tells it."""

    def __init__(self) -> None:
        self.made = 0
        self.handshakes = 0
        self.received = b""
        self.lost: list[Failure] = []
        self.gone: defer.Deferred[None] = defer.Deferred()
        self.on_handshake: Callable[[Recorder], None] | None = None
        #: Written back for each delivery, so a peer can tell it was delivered.
        self.reply: bytes | None = None

    def connectionMade(self) -> None:
        self.made += 1

    def handshakeCompleted(self) -> None:
        self.handshakes += 1
        if self.on_handshake is not None:
            self.on_handshake(self)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self.reply is not None:
            self.transport.write(self.reply)  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        self.lost.append(reason)
        if not self.gone.called:
            self.gone.callback(None)
