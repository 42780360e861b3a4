"""A server protocol for endpoint tests: it answers one request (a line or an
HTTP request) with what the connection negotiated, then closes.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure


class Reply(Protocol):
    """Server side: answer one request with a description of the connection.

    A line ``hello\\n`` gets ``you said hello; alpn=...; peer=...; from=...``
    and the connection is closed; an HTTP request gets the same text as an
    HTTP/1.0 response, so curl can be the client.
    """

    factory: ReplyFactory

    def connectionMade(self) -> None:
        self.buffer = b""
        self.lost: Deferred[None] = Deferred()
        self.factory.protocols.append(self)

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        http = self.buffer.startswith(b"GET ")
        if (http and b"\r\n\r\n" not in self.buffer) or (not http and b"\n" not in self.buffer):
            return
        transport: Any = self.transport
        alpn = transport.negotiatedProtocol
        peer_certificate = transport.securityContext.attributes.peer_certificate
        peer = "none" if peer_certificate is None else peer_certificate.subject.rfc4514_string()
        said = self.buffer.split(b"\n", 1)[0].strip().decode()
        body = (
            f"you said {said}; alpn={alpn.decode() if alpn else 'none'}; "
            f"peer={peer}; from={getattr(transport.getPeer(), 'host', 'unix')}\n"
        ).encode()
        if http:
            body = (
                b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
        transport.write(body)
        transport.loseConnection()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.lost.callback(None)


class ReplyFactory(Factory):
    protocol = Reply

    def __init__(self) -> None:
        self.protocols: list[Reply] = []
