"""The in-memory handshake: a client and a server context fed each other's
tokens until both are done (:func:`handshake`), or until one fails
(:func:`failure`, which runs :func:`fails`), with the pieces the data is delivered in chosen
(:func:`whole`, :func:`bytewise`, :func:`random_chunks`).

:func:`converse` and :func:`fails` run the same loop between any two
speakers (a txschannel :class:`Side`, or Python's ``ssl`` as a
:class:`~tests.support.pyssl.PythonSide`).

:func:`judged_handshake` runs a handshake from credentials until both sides
finish or fail, delivering every alert, and says how each side ended (the
certificate validation tests).
"""

from __future__ import annotations

import random
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from OpenSSL import SSL

from tests.support.contexts import NAME, client_credentials, server_credentials
from tests.support.pyssl import PythonSide
from txschannel import (
    ClientContext,
    Credentials,
    SecurityContext,
    SecurityError,
    ServerContext,
    Status,
    Step,
)


def whole(data: bytes) -> Iterator[bytes]:
    """Deliver *data* in one piece."""
    if data:
        yield data


def bytewise(data: bytes) -> Iterator[bytes]:
    """Deliver *data* one byte at a time."""
    for i in range(len(data)):
        yield data[i : i + 1]


def random_chunks(seed: int, largest: int = 700) -> Callable[[bytes], Iterator[bytes]]:
    """Deliver data in pseudo-random pieces of 1 to *largest* bytes."""
    rng = random.Random(seed)

    def split(data: bytes) -> Iterator[bytes]:
        i = 0
        while i < len(data):
            n = rng.randint(1, largest)
            yield data[i : i + n]
            i += n

    return split


@dataclass
class Side:
    """One of our contexts with its receive buffer, as a transport would keep it."""

    context: SecurityContext
    extra: bytes = b""
    done: bool = False
    steps: list[Step] = field(default_factory=list)

    def start(self) -> bytes:
        assert isinstance(self.context, ClientContext)
        step = self.context.initialize()
        self.steps.append(step)
        self.extra = step.extra
        return step.token

    def feed(self, data: bytes, split: Callable[[bytes], Iterator[bytes]] = whole) -> bytes:
        """Give *data* to the handshake in pieces; return what to send back."""
        tokens = []
        for piece in split(data):
            if self.done:
                self.extra += piece
                continue
            buffer = self.extra + piece
            if isinstance(self.context, ClientContext):
                step = self.context.initialize(buffer)
            else:
                assert isinstance(self.context, ServerContext)
                step = self.context.accept(buffer)
            self.steps.append(step)
            tokens.append(step.token)
            self.extra = step.extra
            self.done = step.status is Status.OK
        return b"".join(tokens)


@dataclass
class Pair:
    """A handshake's outcome: both sides, and bytes still in flight."""

    client: Side
    server: Side
    to_server: bytes = b""
    to_client: bytes = b""

    def client_to_server(self, data: bytes) -> bytes:
        """Encrypt at the client, decrypt at the server (with what was in flight)."""
        result = self.server.context.decrypt(self.server.extra + self.to_server +
                                             self.client.context.encrypt(data))
        self.server.extra, self.to_server = result.extra, b""
        self.to_client += result.token
        return result.data

    def server_to_client(self, data: bytes) -> bytes:
        result = self.client.context.decrypt(self.client.extra + self.to_client +
                                             self.server.context.encrypt(data))
        self.client.extra, self.to_client = result.extra, b""
        self.to_server += result.token
        return result.data


def handshake(
    client: ClientContext,
    server: ServerContext,
    split: Callable[[bytes], Iterator[bytes]] = whole,
    rounds: int = 20,
) -> Pair:
    """Run the SSPI loop on both sides until both return OK (or raise)."""
    pair = Pair(Side(client), Side(server))
    first = pair.client.start()
    pair.to_server, pair.to_client = converse(
        _InPieces(pair.client, split), _InPieces(pair.server, split), first, rounds
    )
    return pair


@dataclass
class _InPieces:
    """A :class:`Side` that is fed each delivery in the pieces *split* makes."""

    side: Side
    split: Callable[[bytes], Iterator[bytes]]

    @property
    def done(self) -> bool:
        return self.side.done

    def feed(self, data: bytes) -> bytes:
        return self.side.feed(data, self.split)


def connected(key_type: str = "ECDSA", version: str | None = None) -> Pair:
    """A client and server context that have finished their handshake."""
    client = ClientContext(client_credentials(key_type, maximum_version=version), NAME)
    server = ServerContext(server_credentials(key_type, maximum_version=version))
    return handshake(client, server)


def failure(client: ClientContext, server: ServerContext) -> tuple[str, SecurityError, Pair]:
    """Run a handshake that must fail (:func:`fails`): which side raised,
    the error, and both sides, for :func:`peer_error` to give the other
    side the alert."""
    pair = Pair(Side(client), Side(server))
    raised, error, _ = fails(pair.client, pair.server, pair.client.start())
    assert isinstance(error, SecurityError)
    return ("server" if raised is pair.server else "client"), error, pair


def peer_error(side: Side, token: bytes) -> SecurityError:
    """What *side* raises on reading the alert *token*."""
    try:
        if side.done:
            side.context.decrypt(side.extra + token)
        else:
            side.feed(token)
    except SecurityError as e:
        return e
    raise AssertionError(f"{side.context!r} accepted the alert {token.hex()}")


class Speaker(Protocol):
    done: bool

    def feed(self, data: bytes) -> bytes: ...


class OpenSSLClient:
    """pyOpenSSL's own ``Connection`` (no txschannel) as a client
    :class:`Speaker`: it sends any server name, even one such as
    ``example.com..`` that Python's ``ssl`` will not encode, and checks no
    certificate (the test reads the one it was sent)."""

    def __init__(self, server_name: bytes) -> None:
        self.connection = SSL.Connection(SSL.Context(SSL.TLS_CLIENT_METHOD), None)
        self.connection.set_tlsext_host_name(server_name)
        self.connection.set_connect_state()
        self.done = False

    def start(self) -> bytes:
        return self.feed(b"")

    def feed(self, data: bytes) -> bytes:
        if data:
            self.connection.bio_write(data)
        if not self.done:
            try:
                self.connection.do_handshake()
                self.done = True
            except SSL.WantReadError:
                pass
        out = []
        while True:
            try:
                out.append(self.connection.bio_read(65536))
            except SSL.WantReadError:
                return b"".join(out)


def converse(
    client: Speaker, server: Speaker, first: bytes, rounds: int = 20
) -> tuple[bytes, bytes]:
    """Run both handshakes, *first* being the client's first flight, until
    both are done; return the bytes in flight (to server, to client).

    The one handshake loop of the tests: :func:`handshake` runs it between
    two txschannel contexts. A SecurityError (or ssl.SSLError) comes out.
    """
    to_server, to_client = first, b""
    for _ in range(rounds):
        if client.done and server.done:
            return to_server, to_client
        if to_server and not server.done:
            data, to_server = to_server, b""
            to_client += server.feed(data)
        if to_client and not client.done:
            data, to_client = to_client, b""
            to_server += client.feed(data)
    raise AssertionError(f"no handshake after {rounds} rounds")


class _Failed(Exception):
    """A speaker raised: which, its error, and the alert it leaves."""

    def __init__(self, speaker: Speaker, error: Exception, alert: bytes) -> None:
        super().__init__(speaker, error, alert)
        self.speaker, self.error, self.alert = speaker, error, alert


def _feed_or_fail(speaker: Speaker, data: bytes) -> bytes:
    """What *speaker* answers *data*.

    :raises _Failed: it raised a SecurityError (or ssl.SSLError).
    """
    try:
        return speaker.feed(data)
    except SecurityError as e:
        raise _Failed(speaker, e, e.token) from e
    except ssl.SSLError as e:
        assert isinstance(speaker, PythonSide)
        raise _Failed(speaker, e, speaker.outgoing.read()) from e


def fails(client: Speaker, server: Speaker, first: bytes) -> tuple[Speaker, Exception, bytes]:
    """Run a handshake that must fail: the side that raised, its error, and
    the bytes (the alert) it leaves for the other side."""
    to_server, to_client = first, b""
    try:
        for _ in range(20):
            if to_server:
                data, to_server = to_server, b""
                to_client += _feed_or_fail(server, data)
            if to_client:
                data, to_client = to_client, b""
                to_server += _feed_or_fail(client, data)
            if client.done and server.done:
                break
    except _Failed as failed:
        return failed.speaker, failed.error, failed.alert
    raise AssertionError("the handshake did not fail")


@dataclass
class Outcome:
    """How one in-memory handshake ended, on each side."""

    client_error: SecurityError | None
    server_error: SecurityError | None
    client: ClientContext
    server: ServerContext


def judged_handshake(
    client_credentials: Credentials, server_credentials: Credentials, target: str | None
) -> Outcome:
    """Run a handshake through memory until both sides finish or fail.

    Every token either side produces (including the alert carried by a
    SecurityError) is delivered to the other side, so the receiving side's
    reaction to the alert is observed too.
    """
    client = ClientContext(client_credentials, target)
    server = ServerContext(server_credentials)
    judged_client, judged_server = _Judged(client.initialize), _Judged(server.accept)
    to_server = client.initialize().token
    to_client = b""
    for _ in range(20):  # a TLS handshake needs at most a handful of flights
        if to_server and judged_server.error is None:
            to_client += judged_server.take(to_server)
            to_server = b""
        if judged_server.done and to_client and judged_client.done:
            break
        if to_client and judged_client.error is None:
            to_server += judged_client.take(to_client)
            to_client = b""
        if not to_server and not to_client:
            break
    if judged_client.done and judged_server.error is None and to_server:
        # The server may still judge the client's last flight (client certificates).
        judged_server.take(to_server)
    return Outcome(judged_client.error, judged_server.error, client, server)


@dataclass
class _Judged:
    """One side of :func:`judged_handshake`: its buffer, and how it ended."""

    step: Callable[[bytes], Step]
    buffer: bytes = b""
    done: bool = False
    error: SecurityError | None = None

    def take(self, data: bytes) -> bytes:
        """Give *data* (after what is buffered) to the side; what it sends
        back, the alert of a SecurityError included."""
        try:
            step = self.step(self.buffer + data)
        except SecurityError as e:
            self.error = e
            return e.token
        self.buffer = step.extra if step.status is not Status.OK else b""
        self.done = step.status is Status.OK
        return step.token

