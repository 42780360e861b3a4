"""One request over a real socket with a txschannel ClientContext driving the
TLS: handshake, send, read until the server closes (the interop matrix and
the hostile-peer figures both fetch this way).
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from twisted.trial.unittest import FailTest

from txschannel import ClientContext, Credentials, Status

#: What a client sends by default: the smallest HTTP request.
REQUEST = b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n"
#: Every socket and process in a cell gives up after this long.
TIMEOUT = 20.0


@dataclass
class Fetched:
    """What :func:`context_request` got back."""

    protocol: str
    cipher: str
    alpn: str | None
    response: bytes
    peer_certificate_der: bytes = b""


def context_request(
    credentials: Credentials,
    port: int,
    target: str = "localhost",
    host: str = "127.0.0.1",
    request: bytes = REQUEST,
    timeout: float = TIMEOUT,
) -> Fetched:
    """Connect with a :class:`ClientContext`, send *request*, read until the
    server closes; raises :class:`SecurityError` as the context does."""
    client = ClientContext(credentials, target)
    with socket.create_connection((host, port), timeout=timeout) as sock:
        step = client.initialize()
        sock.sendall(step.token)
        buffer = b""
        while step.status is not Status.OK:
            data = sock.recv(65536)
            if not data:
                raise FailTest(f"the server closed during the handshake ({step.status})")
            step = client.initialize(buffer + data)
            if step.token:
                sock.sendall(step.token)
            buffer = step.extra
        sock.sendall(client.encrypt(request))
        response = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if buffer:
                unwrapped = client.decrypt(buffer)
                if unwrapped.token:
                    sock.sendall(unwrapped.token)
                response += unwrapped.data
                buffer = unwrapped.extra
                if unwrapped.status is Status.CONTEXT_EXPIRED:
                    break
            try:
                data = sock.recv(65536)
            except ConnectionError:
                break
            if not data:
                break
            buffer += data
        attributes = client.attributes
        try:
            sock.sendall(client.shutdown())
        except OSError:
            pass
        peer = attributes.peer_certificate
        der = peer.public_bytes(serialization.Encoding.DER) if peer is not None else b""
        return Fetched(attributes.protocol, attributes.cipher, attributes.alpn, response, der)
