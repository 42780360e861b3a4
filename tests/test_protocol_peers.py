"""SchannelProtocol against other TLS stacks, over real loopback sockets.

Our server (a :class:`SchannelFactory` listening with the reactor) is visited
by ``openssl s_client``, ``gnutls-cli``, ``curl``, Python's ``ssl`` and
asyncio; our client visits ``openssl s_server`` and ``gnutls-serv``. Each
test checks what both ends saw: the bytes, the negotiated version and ALPN
protocol, and how the connection ended (close_notify, truncation, or a
SecurityError with its status).
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
from collections.abc import Callable, Sequence
from typing import Any

import trustme
from cryptography import x509
from twisted.internet import defer, reactor
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHandshakeListener, IPushProducer
from twisted.internet.protocol import ClientFactory, Factory, ProcessProtocol, Protocol
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from tests.support.peers import free_port, require, wait_for_port
from txschannel import Credentials, SecurityError, Status
from txschannel.protocol import ConnectionTruncated, SchannelFactory, SchannelProtocol

#: Every process and socket in this module gives up after this long.
TIMEOUT = 20.0
VERSIONS = ("TLSv1.2", "TLSv1.3")
_OPENSSL_FLAG = {"TLSv1.2": "-tls1_2", "TLSv1.3": "-tls1_3"}
_GNUTLS_PRIORITY = {
    "TLSv1.2": "NORMAL:-VERS-ALL:+VERS-TLS1.2",
    "TLSv1.3": "NORMAL:-VERS-ALL:+VERS-TLS1.3",
}


class Files:
    """A throw-away CA with server and client certificates, as PEM files."""

    def __init__(self, folder: str) -> None:
        os.makedirs(folder, exist_ok=True)
        self.ca = trustme.CA()
        self.other_ca = trustme.CA()
        self.folder = folder
        self.ca_pem = self._write("ca.pem", self.ca.cert_pem.bytes())
        server = self.ca.issue_cert("localhost", "127.0.0.1")
        self.server_cert = self._write("server.pem", server.cert_chain_pems[0].bytes())
        self.server_key = self._write("server.key", server.private_key_pem.bytes())
        self.server_both = self._write(
            "server-both.pem", server.private_key_and_cert_chain_pem.bytes()
        )
        client = self.ca.issue_cert("client.example")
        self.client_cert = self._write("client.pem", client.cert_chain_pems[0].bytes())
        self.client_key = self._write("client.key", client.private_key_pem.bytes())
        stranger = self.other_ca.issue_cert("stranger.example")
        self.stranger_cert = self._write("stranger.pem", stranger.cert_chain_pems[0].bytes())
        self.stranger_key = self._write("stranger.key", stranger.private_key_pem.bytes())

    def _write(self, name: str, data: bytes) -> str:
        path = os.path.join(self.folder, name)
        with open(path, "wb") as handle:
            handle.write(data)
        return path


# -- our server's application ---------------------------------------------


class Reporter(Protocol):
    """An application protocol that tells its :class:`Outcome` how its connection ended."""

    def __init__(self, outcome: Outcome) -> None:
        self.outcome = outcome

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        self.outcome.reason = reason
        self.outcome.lost.callback(None)


@implementer(IHandshakeListener)
class Greeter(Reporter):
    """Answers the first line with what was negotiated, then closes politely."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome)
        self.received = b""

    def handshakeCompleted(self) -> None:
        self.outcome.handshakes += 1

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if b"\n" not in self.received:
            return
        transport: SchannelProtocol = self.transport  # type: ignore[assignment]
        attributes = transport.securityContext.attributes
        self.outcome.protocol = attributes.protocol
        self.outcome.alpn = transport.negotiatedProtocol
        certificate = transport.getPeerCertificate()
        if certificate is not None:
            names = certificate.to_cryptography().extensions.get_extension_for_class(
                x509.SubjectAlternativeName
            )
            self.outcome.peer = ",".join(names.value.get_values_for_type(x509.DNSName))
        line = self.received.split(b"\n", 1)[0]
        transport.write(b"pong " + line + b" " + attributes.protocol.encode() + b"\n")
        transport.loseConnection()


class HTTPResponder(Reporter):
    """A one-request HTTP/1.1 server: says which ALPN protocol was agreed."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome)
        self.received = b""

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if b"\r\n\r\n" not in self.received:
            return
        transport: SchannelProtocol = self.transport  # type: ignore[assignment]
        self.outcome.alpn = transport.negotiatedProtocol
        self.outcome.protocol = transport.securityContext.attributes.protocol
        body = b"alpn=%s\n" % (transport.negotiatedProtocol or b"none")
        transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
            % (len(body), body)
        )
        transport.loseConnection()


class Outcome:
    """What our side of one connection saw."""

    def __init__(self) -> None:
        self.lost: defer.Deferred[None] = defer.Deferred()
        self.reason: Failure | None = None
        self.protocol: str | None = None
        self.alpn: bytes | None = None
        self.peer: str | None = None
        self.handshakes = 0


class OneShotFactory(Factory):
    """Builds one application protocol and keeps its :class:`Outcome`."""

    def __init__(self, make: Callable[[Outcome], Protocol]) -> None:
        self.outcome = Outcome()
        self.make = make

    def buildProtocol(self, addr: Any) -> Protocol:
        protocol = self.make(self.outcome)
        protocol.factory = self
        return protocol


# -- peer processes ---------------------------------------------------------


class PeerProcess(ProcessProtocol):
    """A peer process whose output is collected; killed after TIMEOUT."""

    def __init__(self) -> None:
        self.output = b""
        self.ended: defer.Deferred[int] = defer.Deferred()
        self._markers: list[tuple[bytes, defer.Deferred[None]]] = []

    def outReceived(self, data: bytes) -> None:
        self.output += data
        for marker, waiter in list(self._markers):
            if marker in self.output:
                self._markers.remove((marker, waiter))
                waiter.callback(None)

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        for marker, waiter in self._markers:
            waiter.errback(AssertionError(f"ended before printing {marker!r}: {self.output!r}"))
        self._markers = []
        self.ended.callback(getattr(reason.value, "exitCode", -1))

    def printed(self, marker: bytes) -> defer.Deferred[None]:
        waiter: defer.Deferred[None] = defer.Deferred()
        if marker in self.output:
            waiter.callback(None)
        else:
            self._markers.append((marker, waiter))
        return waiter


def spawn(test: TestCase, argv: Sequence[str], stdin: bytes = b"") -> PeerProcess:
    """Start *argv* (the tool must exist: a missing one fails the test)."""
    executable = require(argv[0])
    peer = PeerProcess()
    transport = reactor.spawnProcess(  # type: ignore[attr-defined]
        peer, executable, list(argv), env=dict(os.environ)
    )
    if stdin:
        transport.write(stdin)
    killer = reactor.callLater(TIMEOUT, _kill, transport)  # type: ignore[attr-defined]

    def cleanup() -> defer.Deferred[int] | None:
        if killer.active():
            killer.cancel()
        if peer.ended.called:
            return None
        _kill(transport)
        return peer.ended

    test.addCleanup(cleanup)
    return peer


def _kill(transport: Any) -> None:
    try:
        transport.signalProcess("KILL")
    except Exception:
        pass


def within(d: defer.Deferred[Any], what: str) -> defer.Deferred[Any]:
    """Fail *d* with a readable message if it has not fired within TIMEOUT."""
    return d.addTimeout(TIMEOUT, reactor, onTimeoutCancel=lambda *a: _timeout(what))  # type: ignore[arg-type]


def _timeout(what: str) -> None:
    raise AssertionError(f"timed out waiting for {what}")


# -- our server, visited by other clients -----------------------------------


class ServerTestsMixin:
    """Starts our server on a free loopback port for each test."""

    files: Files

    def setUp(self) -> None:
        self.files = Files(self.mktemp())  # type: ignore[attr-defined]

    def serve(
        self,
        make: Callable[[Outcome], Protocol] = Greeter,
        credentials: Credentials | None = None,
        alpn: Sequence[str] = ("h2", "http/1.1"),
        interface: str = "127.0.0.1",
    ) -> tuple[int, OneShotFactory]:
        if credentials is None:
            credentials = Credentials.server(certificate=self.files.server_both, alpn=alpn)
        app = OneShotFactory(make)
        port = reactor.listenTCP(  # type: ignore[attr-defined]
            0, SchannelFactory(credentials, False, app), interface=interface
        )
        self.addCleanup(port.stopListening)  # type: ignore[attr-defined]
        return port.getHost().port, app


class OurServerTests(ServerTestsMixin, TestCase):
    """Other stacks' clients against SchannelFactory(isClient=False)."""

    timeout = 60

    @defer.inlineCallbacks
    def _openssl_client(self, version: str, alpn: str) -> Any:
        port, app = self.serve()
        peer = spawn(
            self,
            [
                "openssl", "s_client", "-connect", f"127.0.0.1:{port}",
                "-servername", "localhost", "-verify_return_error",
                "-CAfile", self.files.ca_pem, _OPENSSL_FLAG[version], "-alpn", alpn, "-quiet",
            ],
            stdin=b"ping\n",
        )
        code = yield within(peer.ended, "openssl s_client to finish")
        yield within(app.outcome.lost, "our server's connectionLost")
        reason = app.outcome.reason
        self.assertEqual(code, 0, peer.output)
        self.assertIn(f"pong ping {version}".encode(), peer.output)
        self.assertEqual(app.outcome.protocol, version)
        self.assertEqual(app.outcome.alpn, alpn.encode())
        self.assertEqual(app.outcome.handshakes, 1)
        # We closed first; the peer's answer (or plain EOF) after our
        # close_notify is a clean end, not a truncation.
        self.assertTrue(reason.check(ConnectionDone), reason)

    def test_openssl_client_tls12_alpn_h2(self) -> defer.Deferred[Any]:
        return self._openssl_client("TLSv1.2", "h2")

    def test_openssl_client_tls13_alpn_http11(self) -> defer.Deferred[Any]:
        return self._openssl_client("TLSv1.3", "http/1.1")

    @defer.inlineCallbacks
    def _gnutls_client(self, version: str) -> Any:
        port, app = self.serve()
        peer = spawn(
            self,
            [
                "gnutls-cli", "--x509cafile", self.files.ca_pem, "--port", str(port),
                "--verify-hostname", "localhost", "--sni-hostname", "localhost",
                "--priority", _GNUTLS_PRIORITY[version], "--alpn", "h2", "127.0.0.1",
            ],
            stdin=b"ping\n",
        )
        yield within(peer.ended, "gnutls-cli to finish")
        yield within(app.outcome.lost, "our server's connectionLost")
        reason = app.outcome.reason
        self.assertIn(f"pong ping {version}".encode(), peer.output)
        self.assertEqual(app.outcome.protocol, version)
        self.assertEqual(app.outcome.alpn, b"h2")
        self.assertTrue(reason.check(ConnectionDone), reason)

    def test_gnutls_client_tls12(self) -> defer.Deferred[Any]:
        return self._gnutls_client("TLSv1.2")

    def test_gnutls_client_tls13(self) -> defer.Deferred[Any]:
        return self._gnutls_client("TLSv1.3")

    @defer.inlineCallbacks
    def _curl(self, version: str) -> Any:
        port, app = self.serve(HTTPResponder)
        flags = {"TLSv1.2": ["--tlsv1.2", "--tls-max", "1.2"], "TLSv1.3": ["--tlsv1.3"]}
        peer = spawn(
            self,
            [
                "curl", "-sS", "--max-time", str(int(TIMEOUT)), "--cacert", self.files.ca_pem,
                "--resolve", f"localhost:{port}:127.0.0.1", "--http1.1", *flags[version],
                f"https://localhost:{port}/",
            ],
        )
        code = yield within(peer.ended, "curl to finish")
        yield within(app.outcome.lost, "our server's connectionLost")
        self.assertEqual(code, 0, peer.output)
        self.assertIn(b"alpn=http/1.1", peer.output)
        self.assertEqual(app.outcome.protocol, version)

    def test_curl_tls12(self) -> defer.Deferred[Any]:
        return self._curl("TLSv1.2")

    def test_curl_tls13(self) -> defer.Deferred[Any]:
        return self._curl("TLSv1.3")

    @defer.inlineCallbacks
    def test_python_ssl_client_sees_close_notify_after_all_data(self) -> Any:
        """Data written just before loseConnection arrives, then close_notify."""
        size = 4 * 1024 * 1024

        class Bulk(Reporter):
            def dataReceived(self, data: bytes) -> None:
                self.transport.write(b"x" * size)  # type: ignore[union-attr]
                self.transport.loseConnection()  # type: ignore[union-attr]

        port, app = self.serve(Bulk)

        def client() -> tuple[int, str | None, str | None]:
            context = ssl.create_default_context(cafile=self.files.ca_pem)
            context.set_alpn_protocols(["http/1.1"])
            with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw:
                # suppress_ragged_eofs=False: an EOF without close_notify raises.
                with context.wrap_socket(
                    raw, server_hostname="localhost", suppress_ragged_eofs=False
                ) as tls:
                    tls.sendall(b"go\n")
                    total = 0
                    while True:
                        chunk = tls.recv(65536)
                        if not chunk:
                            break
                        total += len(chunk)
                    return total, tls.selected_alpn_protocol(), tls.version()

        total, alpn, version = yield within(deferToThread(client), "the Python client")
        yield within(app.outcome.lost, "our server's connectionLost")
        reason = app.outcome.reason
        self.assertEqual((total, alpn, version), (size, "http/1.1", "TLSv1.3"))
        self.assertTrue(reason.check(ConnectionDone), reason)

    @defer.inlineCallbacks
    def test_a_64_kib_write_does_not_pause_the_producer(self) -> Any:
        """A relay writes what it reads, 64 KiB at a time; framed as records that
        is more than Twisted's 64 KiB TCP buffer, which used to pause the
        producer after every chunk. The TCP transport under TLS has room for it."""
        pauses: list[str] = []

        @implementer(IHandshakeListener)
        class Chunk(Reporter):
            def handshakeCompleted(self) -> None:
                # Sent with the session tickets: once the client has it, the
                # TCP buffer is empty again, as between two chunks of a relay.
                assert self.transport is not None
                self.transport.write(b"ready\n")

            def dataReceived(self, data: bytes) -> None:
                assert self.transport is not None
                self.transport.registerProducer(self, True)  # type: ignore[attr-defined]
                self.transport.write(b"x" * 65536)
                self.transport.unregisterProducer()  # type: ignore[attr-defined]
                self.transport.loseConnection()

            def pauseProducing(self) -> None:
                pauses.append("pause")

            def resumeProducing(self) -> None:
                pauses.append("resume")

            def stopProducing(self) -> None:
                pauses.append("stop")

        port, app = self.serve(Chunk)

        def client() -> bytes:
            context = ssl.create_default_context(cafile=self.files.ca_pem)
            with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw:
                with context.wrap_socket(raw, server_hostname="localhost") as tls:
                    received = b""
                    while b"\n" not in received:
                        received += tls.recv(100)
                    tls.sendall(b"go\n")
                    while chunk := tls.recv(65536):
                        received += chunk
                    return received

        received = yield within(deferToThread(client), "the Python client")
        yield within(app.outcome.lost, "our server's connectionLost")
        self.assertEqual(received, b"ready\n" + b"x" * 65536)
        self.assertEqual(pauses, [])

    def test_a_producer_writing_until_paused_gives_the_reactor_turns(self) -> Any:
        """A push producer that writes 100-byte blocks until it is paused is
        paused within each reactor turn even when the peer reads everything
        at once: the TCP transport sends what the kernel takes and queues
        nothing, so it never pauses the producer itself, and without a pause
        the loop would keep the reactor (other connections, timers) until
        it ran out of data."""
        return self.until_paused(100, 1_000_000)

    def test_a_producer_writing_large_blocks_until_paused_gives_the_reactor_turns(
        self,
    ) -> Any:
        """The same with 64 KiB blocks, each large enough to be encrypted
        and sent in its own write(): the TCP transport's budget of bytes
        sent at once (1 MiB, txschannel._sendnow) makes it queue, and so
        pause the producer, before the loop has written 2 MB."""
        return self.until_paused(65536, 2_000_000)

    @defer.inlineCallbacks
    def until_paused(self, size: int, bound: int) -> Any:
        """A producer writing *size*-byte blocks until paused, 8 MB in all,
        to an ``openssl s_client`` that reads as fast as it can: the reactor
        must run again before *bound* bytes are out."""
        block = b"x" * size
        total = 8_000_000
        # How much the producer had written when the reactor next ran.
        at_first_turn: list[int] = []

        @implementer(IPushProducer, IHandshakeListener)
        class Loop(Reporter):
            sent = 0
            paused = False
            started = False

            def connectionMade(self) -> None:
                assert self.transport is not None
                self.transport.registerProducer(self, True)  # type: ignore[attr-defined]

            def handshakeCompleted(self) -> None:
                self.produce()

            def produce(self) -> None:
                if not self.started:
                    self.started = True
                    reactor.callLater(0, lambda: at_first_turn.append(self.sent))  # type: ignore[attr-defined]
                write = self.transport.write  # type: ignore[union-attr]
                while not self.paused and self.sent < total:
                    write(block)
                    self.sent += len(block)
                if self.sent >= total:
                    self.transport.unregisterProducer()  # type: ignore[union-attr]
                    self.transport.loseConnection()  # type: ignore[union-attr]

            def pauseProducing(self) -> None:
                self.paused = True

            def resumeProducing(self) -> None:
                self.paused = False
                if self.sent < total:
                    reactor.callLater(0, self.produce)  # type: ignore[attr-defined]

            def stopProducing(self) -> None:
                self.paused = True

        port, app = self.serve(Loop)
        # openssl reads as fast as the socket delivers; what it prints is
        # thrown away in its own process, not collected in this reactor.
        openssl = require("openssl")
        spawn(
            self,
            [
                "sh", "-c", f'exec "{openssl}" s_client -connect 127.0.0.1:{port} '
                f"-servername localhost -CAfile {self.files.ca_pem} -quiet >/dev/null",
            ],
        )
        yield within(app.outcome.lost, "our server's connectionLost")
        self.assertEqual(len(at_first_turn), 1, "the producer never started")
        # Twisted's TCP transport, when it queued every write, paused such a
        # producer once it held 64 KiB. Small writes: two gathered flushes
        # of 64,000 bytes pause it, the reactor runs after 128,000 bytes.
        # Large ones: 1 MiB sent at once, then 64 KiB queued. The bounds
        # leave room; without either rule the loop ran 5.5 to 8 MB.
        self.assertLessEqual(at_first_turn[0], bound)

    @defer.inlineCallbacks
    def test_a_write_leaves_for_the_socket_in_write_itself(self) -> Any:
        """With nothing queued before it, a 64 KiB write is in the socket when
        write() returns: Twisted's TCP transport alone would queue its records
        for the reactor's next turn (two epoll_ctl calls and a turn more per
        chunk of a transfer)."""
        queued: list[int] = []

        class Chunk(Reporter):
            def dataReceived(self, data: bytes) -> None:
                assert self.transport is not None
                self.transport.write(b"x" * 65536)
                tcp = self.transport.transport  # type: ignore[attr-defined]
                queued.append(len(tcp.dataBuffer) - tcp.offset + tcp._tempDataLen)
                self.transport.loseConnection()

        port, app = self.serve(Chunk)

        def client() -> bytes:
            context = ssl.create_default_context(cafile=self.files.ca_pem)
            with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw:
                with context.wrap_socket(raw, server_hostname="localhost") as tls:
                    tls.sendall(b"go\n")
                    received = b""
                    while chunk := tls.recv(65536):
                        received += chunk
                    return received

        received = yield within(deferToThread(client), "the Python client")
        yield within(app.outcome.lost, "our server's connectionLost")
        self.assertEqual(received, b"x" * 65536)
        self.assertEqual(queued, [0])

    @defer.inlineCallbacks
    def test_openssl_client_over_ipv6_loopback(self) -> Any:
        port, app = self.serve(interface="::1")
        peer = spawn(
            self,
            [
                "openssl", "s_client", "-connect", f"[::1]:{port}", "-servername", "localhost",
                "-verify_return_error", "-CAfile", self.files.ca_pem, "-quiet",
            ],
            stdin=b"ping6\n",
        )
        yield within(peer.ended, "openssl s_client to finish")
        yield within(app.outcome.lost, "our server's connectionLost")
        self.assertIn(b"pong ping6 TLSv1.3", peer.output)
        reason = app.outcome.reason
        assert reason is not None
        self.assertTrue(reason.check(ConnectionDone), reason)

    @defer.inlineCallbacks
    def test_asyncio_client_tls12(self) -> Any:
        port, app = self.serve()

        async def client() -> tuple[bytes, str | None]:
            context = ssl.create_default_context(cafile=self.files.ca_pem)
            context.maximum_version = ssl.TLSVersion.TLSv1_2
            context.set_alpn_protocols(["h2"])
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    "127.0.0.1", port, ssl=context, server_hostname="localhost"
                ),
                TIMEOUT,
            )
            writer.write(b"ping\n")
            data = await asyncio.wait_for(reader.read(), TIMEOUT)
            alpn = writer.get_extra_info("ssl_object").selected_alpn_protocol()
            writer.close()
            return data, alpn

        data, alpn = yield within(deferToThread(asyncio.run, client()), "the asyncio client")
        yield within(app.outcome.lost, "our server's connectionLost")
        self.assertEqual(data, b"pong ping TLSv1.2\n")
        self.assertEqual(alpn, "h2")

    @defer.inlineCallbacks
    def test_truncated_stream_is_reported_as_truncation(self) -> Any:
        """An EOF without close_notify after the handshake is not a clean close."""

        class Sink(Protocol):
            def __init__(self, outcome: Outcome) -> None:
                self.outcome = outcome
                self.received = b""

            def dataReceived(self, data: bytes) -> None:
                self.received += data

            def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
                self.outcome.peer = self.received.decode()
                self.outcome.reason = reason
                self.outcome.lost.callback(None)

        port, app = self.serve(Sink)

        def client(clean: bool) -> None:
            context = ssl.create_default_context(cafile=self.files.ca_pem)
            raw = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
            tls = context.wrap_socket(raw, server_hostname="localhost")
            tls.sendall(b"partial data")
            if clean:
                tls.unwrap().close()
            else:
                # Close the TCP socket under TLS: no close_notify is sent.
                socket.socket(fileno=tls.detach()).close()

        yield within(deferToThread(client, False), "the Python client")
        yield within(app.outcome.lost, "our server's connectionLost")
        reason = app.outcome.reason
        self.assertTrue(reason.check(ConnectionTruncated), reason)
        self.assertEqual(app.outcome.peer, "partial data")

        port, app = self.serve(Sink)
        yield within(deferToThread(client, True), "the Python client")
        yield within(app.outcome.lost, "our server's connectionLost")
        reason = app.outcome.reason
        self.assertIsNone(reason.check(ConnectionTruncated))
        self.assertTrue(reason.check(ConnectionDone), reason)
        self.assertEqual(app.outcome.peer, "partial data")


class MutualTLSTests(ServerTestsMixin, TestCase):
    """Client certificates: required by our server, checked against its CA."""

    timeout = 60

    def mutual(self) -> tuple[int, OneShotFactory]:
        credentials = Credentials.server(
            certificate=self.files.server_both,
            client_ca=self.files.ca_pem,
            require_client_certificate=True,
        )
        return self.serve(credentials=credentials)

    def client(self, port: int, version: str, *cert: str) -> PeerProcess:
        argv = [
            "openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost",
            "-CAfile", self.files.ca_pem, _OPENSSL_FLAG[version], "-quiet",
        ]
        if cert:
            argv += ["-cert", cert[0], "-key", cert[1]]
        return spawn(self, argv, stdin=b"ping\n")

    @defer.inlineCallbacks
    def test_client_certificate_from_trusted_ca_is_accepted(self) -> Any:
        for version in VERSIONS:
            port, app = self.mutual()
            peer = self.client(port, version, self.files.client_cert, self.files.client_key)
            yield within(peer.ended, "openssl s_client")
            yield within(app.outcome.lost, "our server's connectionLost")
            reason = app.outcome.reason
            self.assertIn(b"pong ping", peer.output)
            self.assertEqual(app.outcome.peer, "client.example")
            self.assertTrue(reason.check(ConnectionDone), reason)

    @defer.inlineCallbacks
    def test_missing_client_certificate_is_rejected(self) -> Any:
        for version in VERSIONS:
            port, app = self.mutual()
            peer = self.client(port, version)
            yield within(peer.ended, "openssl s_client")
            yield within(app.outcome.lost, "our server's connectionLost")
            reason = app.outcome.reason
            self.assertNotIn(b"pong", peer.output)
            self.assertTrue(reason.check(SecurityError), reason)
            self.assertEqual(reason.value.status, Status.NO_CREDENTIALS, (version, reason.value))
            self.assertEqual(app.outcome.handshakes, 0)

    @defer.inlineCallbacks
    def test_client_certificate_from_unknown_ca_is_rejected(self) -> Any:
        for version in VERSIONS:
            port, app = self.mutual()
            peer = self.client(port, version, self.files.stranger_cert, self.files.stranger_key)
            yield within(peer.ended, "openssl s_client")
            yield within(app.outcome.lost, "our server's connectionLost")
            reason = app.outcome.reason
            self.assertNotIn(b"pong", peer.output)
            self.assertTrue(reason.check(SecurityError), reason)
            self.assertEqual(reason.value.status, Status.UNTRUSTED_ROOT, (version, reason.value))
            # The alert went out before the close: the peer names it.
            self.assertIn(b"unknown ca", peer.output.lower(), peer.output)


# -- our client, visiting other servers --------------------------------------


class Asker(Protocol):
    """Sends one line after the handshake, collects the answer, closes."""

    def __init__(self, line: bytes, expect: bytes) -> None:
        self.line = line
        self.expect = expect
        self.received = b""
        self.handshakes = 0
        self.lost: defer.Deferred[None] = defer.Deferred()
        self.reason: Failure | None = None
        self.negotiated: tuple[str, bytes | None] | None = None

    def connectionMade(self) -> None:
        # Written before the handshake completes: held, then sent.
        self.transport.write(self.line)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self.expect in self.received:
            transport: SchannelProtocol = self.transport  # type: ignore[assignment]
            self.negotiated = (
                transport.securityContext.attributes.protocol,
                transport.negotiatedProtocol,
            )
            transport.loseConnection()

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        self.reason = reason
        self.lost.callback(None)


class OurClientTests(TestCase):
    """SchannelFactory(isClient=True) against openssl s_server and gnutls-serv."""

    timeout = 60

    def setUp(self) -> None:
        self.files = Files(self.mktemp())

    def credentials(self, **extra: Any) -> Credentials:
        return Credentials.client(trust_roots=self.files.ca_pem, alpn=["h2", "http/1.1"], **extra)

    @defer.inlineCallbacks
    def connect(self, port: int, protocol: Asker, **extra: Any) -> Any:
        factory = SchannelFactory(
            self.credentials(**extra), True, ClientFactory.forProtocol(lambda: protocol),
            target_name="localhost",
        )
        connector = reactor.connectTCP("127.0.0.1", port, factory, timeout=TIMEOUT)  # type: ignore[attr-defined]
        self.addCleanup(connector.disconnect)
        yield within(protocol.lost, "our client's connectionLost")

    @defer.inlineCallbacks
    def _openssl_server(self, version: str, alpn: str) -> Any:
        port = free_port()
        peer = spawn(
            self,
            [
                "openssl", "s_server", "-accept", f"127.0.0.1:{port}",
                "-cert", self.files.server_cert, "-key", self.files.server_key,
                _OPENSSL_FLAG[version], "-alpn", alpn, "-rev",
            ],
        )
        yield within(peer.printed(b"ACCEPT"), "openssl s_server to listen")
        asker = Asker(b"hello\n", b"olleh")
        yield self.connect(port, asker)
        reason = asker.reason
        self.assertIn(b"olleh", asker.received)
        self.assertEqual(asker.negotiated, (version, alpn.encode()))
        self.assertTrue(reason.check(ConnectionDone), reason)

    def test_openssl_server_tls12_alpn_http11(self) -> defer.Deferred[Any]:
        return self._openssl_server("TLSv1.2", "http/1.1")

    def test_openssl_server_tls13_alpn_h2(self) -> defer.Deferred[Any]:
        return self._openssl_server("TLSv1.3", "h2")

    @defer.inlineCallbacks
    def _gnutls_server(self, version: str) -> Any:
        port = free_port()
        spawn(
            self,
            [
                "gnutls-serv", "--echo", "--port", str(port),
                "--x509certfile", self.files.server_cert, "--x509keyfile", self.files.server_key,
                "--priority", _GNUTLS_PRIORITY[version], "--alpn", "http/1.1",
            ],
        )
        yield within(deferToThread(wait_for_port, port, "127.0.0.1", TIMEOUT), "gnutls-serv")
        asker = Asker(b"echo me\n", b"echo me\n")
        yield self.connect(port, asker)
        reason = asker.reason
        self.assertEqual(asker.negotiated, (version, b"http/1.1"))
        self.assertTrue(reason.check(ConnectionDone), reason)

    def test_gnutls_server_tls12(self) -> defer.Deferred[Any]:
        return self._gnutls_server("TLSv1.2")

    def test_gnutls_server_tls13(self) -> defer.Deferred[Any]:
        return self._gnutls_server("TLSv1.3")

    @defer.inlineCallbacks
    def test_client_certificate_sent_to_openssl_server(self) -> Any:
        for version, verify in (("TLSv1.2", "-Verify"), ("TLSv1.3", "-Verify")):
            port = free_port()
            peer = spawn(
                self,
                [
                    "openssl", "s_server", "-accept", f"127.0.0.1:{port}",
                    "-cert", self.files.server_cert, "-key", self.files.server_key,
                    "-CAfile", self.files.ca_pem, verify, "1", "-verify_return_error",
                    _OPENSSL_FLAG[version], "-rev",
                ],
            )
            yield within(peer.printed(b"ACCEPT"), "openssl s_server to listen")
            asker = Asker(b"mutual\n", b"lautum")
            yield self.connect(
                port, asker, certificate=self.files.client_cert,
                private_key=self.files.client_key,
            )
            reason = asker.reason
            self.assertIn(b"lautum", asker.received)
            self.assertTrue(reason.check(ConnectionDone), reason)

    @defer.inlineCallbacks
    def test_server_certificate_from_unknown_ca_fails_with_untrusted_root(self) -> Any:
        port = free_port()
        spawn(
            self,
            [
                "openssl", "s_server", "-accept", f"127.0.0.1:{port}",
                "-cert", self.files.stranger_cert, "-key", self.files.stranger_key, "-rev",
            ],
        )
        yield within(deferToThread(wait_for_port, port, "127.0.0.1", TIMEOUT), "s_server")
        asker = Asker(b"hello\n", b"olleh")
        yield self.connect(port, asker)
        reason = asker.reason
        self.assertTrue(reason.check(SecurityError), reason)
        self.assertEqual(reason.value.status, Status.UNTRUSTED_ROOT)
        self.assertEqual(asker.received, b"")
