"""The relay: TLS termination and origination with real peers, half-close, flow control."""

from __future__ import annotations

import hashlib
import os
import select
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP4ServerEndpoint,
    clientFromString,
    serverFromString,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import FailTest, TestCase

from tests.support.edges import DIGEST_SERVER
from tests.support.peers import Peer, free_port, require, start_backend, wait_for_port
from tests.support.twist import Twist, curl
from txschannel import ClientContext, Credentials, Status
from txschannel.terminator.relay import Inbound, RelayFactory, send_at_once
from txschannel.testing import CertificateAuthority

BIG = 100 * 1024 * 1024


def start_digest_server(test: TestCase, folder: Path) -> int:
    return start_backend(test, DIGEST_SERVER, folder / "digest_server.py")


def tls_half_close_exchange(port: int, trust: str, payload: bytes) -> bytes:
    """Send *payload* over TLS, then close_notify, and read the answer until the
    server's close_notify: a TLS half-close, driven with the sans-IO context."""
    context = ClientContext(Credentials.client(trust_roots=trust), "localhost")
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        step = context.initialize()
        while True:
            sock.sendall(step.token)
            if step.status is Status.OK:
                break
            data = sock.recv(65536)
            if not data:
                raise FailTest("the relay closed during the handshake")
            step = context.initialize(step.extra + data)
        buffer = step.extra
        for start in range(0, len(payload), 1 << 20):
            sock.sendall(context.encrypt(payload[start:start + (1 << 20)]))
        sock.sendall(context.shutdown())
        answer = b""
        while True:
            unwrapped = context.decrypt(buffer)
            answer += unwrapped.data
            if unwrapped.token:
                sock.sendall(unwrapped.token)
            if unwrapped.status is Status.CONTEXT_EXPIRED:
                return answer
            data = sock.recv(65536)
            if not data:
                raise FailTest(f"end of stream without close_notify after {answer!r}")
            buffer = unwrapped.extra + data


def _recording(relay_factory: RelayFactory) -> list[Inbound]:
    """The relays *relay_factory* builds, in the order it builds them."""
    relays: list[Inbound] = []
    build = relay_factory.buildProtocol

    def recording(addr):  # type: ignore[no-untyped-def]
        relays.append(build(addr))
        return relays[-1]

    relay_factory.buildProtocol = recording  # type: ignore[method-assign]
    return relays


class TerminationTests(TestCase):
    """curl (TLS) -> twist schannel -> a plaintext backend."""

    def setUp(self) -> None:
        require("curl")
        self.folder = Path(tempfile.mkdtemp(prefix="txschannel-relay-"))
        # Hundreds of MiB of bodies: do not leave them in /tmp.
        self.addCleanup(shutil.rmtree, self.folder, True)

    def start_twist(self, backend: int) -> tuple[Twist, int]:
        port = free_port()
        twist = Twist(
            self, "--listen", f"schannel:tcp:{port}:interface=127.0.0.1",
            "--connect", f"tcp:127.0.0.1:{backend}", "--state-dir", str(self.folder / "state"),
        )
        twist.wait_for("listening on")
        return twist, port

    def test_100_mib_download_is_byte_exact(self) -> None:
        body = os.urandom(BIG)
        (self.folder / "big.bin").write_bytes(body)
        backend = free_port()
        server = Peer([sys.executable, "-m", "http.server", "--bind", "127.0.0.1",
                       "--directory", str(self.folder), str(backend)])
        self.addCleanup(server.stop)
        wait_for_port(backend)
        twist, port = self.start_twist(backend)
        result = curl("--cacert", str(self.folder / "state/localhost.crt"),
                      f"https://localhost:{port}/big.bin", "-o", str(self.folder / "got.bin"))
        self.assertEqual(result.returncode, 0, result.stderr)
        got = (self.folder / "got.bin").read_bytes()
        self.assertEqual(len(got), BIG)
        self.assertEqual(hashlib.sha256(got).digest(), hashlib.sha256(body).digest())
        line = twist.wait_for(r"connection closed .*bytes_in=(\d+) bytes_out=(\d+) .*reason=")
        self.assertGreater(int(line.group(2)), BIG)

    def test_tls_half_close_reaches_the_backend_and_the_answer_comes_back(self) -> None:
        backend = start_digest_server(self, self.folder)
        twist, port = self.start_twist(backend)
        payload = os.urandom(5 * 1024 * 1024 + 7)
        answer = tls_half_close_exchange(port, str(self.folder / "state/localhost.crt"), payload)
        self.assertEqual(answer, f"{len(payload)} {hashlib.sha256(payload).hexdigest()}\n".encode())
        line = twist.wait_for(r"connection closed .*bytes_in=(\d+) bytes_out=(\d+) .*reason=(.*)")
        self.assertEqual(int(line.group(1)), len(payload))
        self.assertEqual(int(line.group(2)), len(answer))

    def test_unreachable_backend_closes_the_client_and_says_why(self) -> None:
        twist, port = self.start_twist(free_port())
        result = curl("--cacert", str(self.folder / "state/localhost.crt"),
                      f"https://localhost:{port}/")
        self.assertNotEqual(result.returncode, 0)
        twist.wait_for(r'connection closed .*reason="connect endpoint failed: .*refused')


class OriginationTests(TestCase):
    """A plaintext client -> twist schannel -> TLS to ``openssl s_server``."""

    def test_plain_in_tls_out_to_openssl_is_byte_exact(self) -> None:
        require("openssl")
        require("curl")
        folder = Path(tempfile.mkdtemp(prefix="txschannel-origin-"))
        self.addCleanup(shutil.rmtree, folder, True)
        ca = CertificateAuthority()
        ca.write(folder / "ca.pem")
        leaf = ca.issue("localhost")
        (folder / "cert.pem").write_bytes(leaf.certificate_pem)
        (folder / "key.pem").write_bytes(leaf.private_key_pem)
        body = os.urandom(8 * 1024 * 1024)
        (folder / "file.bin").write_bytes(body)
        tls_port = free_port()
        # s_server -WWW serves files relative to its working folder.
        server = Peer(["sh", "-c", f"cd {folder} && exec openssl s_server -quiet -WWW "
                       f"-accept 127.0.0.1:{tls_port} -cert cert.pem -key key.pem"])
        self.addCleanup(server.stop)
        wait_for_port(tls_port)
        port = free_port()
        twist = Twist(
            self, "--listen", f"tcp:{port}:interface=127.0.0.1",
            "--connect",
            f"schannel:tcp:127.0.0.1:{tls_port}:hostname=localhost:trustRoots={folder}/ca.pem",
        )
        twist.wait_for("listening on")
        result = curl("--http1.0", f"http://127.0.0.1:{port}/file.bin",
                      "-o", str(folder / "got.bin"))
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(hashlib.sha256((folder / "got.bin").read_bytes()).digest(),
                         hashlib.sha256(body).digest())
        twist.wait_for(r"connection closed peer=127\.0\.0\.1:\d+ server_name=- protocol=plain")

    def test_untrusted_tls_backend_aborts_the_client_and_says_why(self) -> None:
        require("openssl")
        folder = Path(tempfile.mkdtemp(prefix="txschannel-distrust-"))
        self.addCleanup(shutil.rmtree, folder, True)
        served, trusted = CertificateAuthority(), CertificateAuthority()
        trusted.write(folder / "ca.pem")
        leaf = served.issue("localhost")
        (folder / "cert.pem").write_bytes(leaf.certificate_pem)
        (folder / "key.pem").write_bytes(leaf.private_key_pem)
        tls_port = free_port()
        server = Peer(["openssl", "s_server", "-quiet", "-accept", f"127.0.0.1:{tls_port}",
                       "-cert", str(folder / "cert.pem"), "-key", str(folder / "key.pem")])
        self.addCleanup(server.stop)
        wait_for_port(tls_port)
        port = free_port()
        twist = Twist(
            self, "--listen", f"tcp:{port}:interface=127.0.0.1",
            "--connect",
            f"schannel:tcp:127.0.0.1:{tls_port}:hostname=localhost:trustRoots={folder}/ca.pem",
        )
        twist.wait_for("listening on")
        with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
            sock.sendall(b"hello\n")
            # A reset, not an empty clean close: the client must not take
            # "no answer" for the backend's answer.
            self.assertRaises(ConnectionResetError, sock.recv, 100)
        twist.wait_for(r'reason="backend TLS error UNTRUSTED_ROOT: ')

    def test_plain_half_close_passes_through(self) -> None:
        folder = Path(tempfile.mkdtemp(prefix="txschannel-plain-"))
        backend = start_digest_server(self, folder)
        port = free_port()
        twist = Twist(self, "--listen", f"tcp:{port}:interface=127.0.0.1",
                      "--connect", f"tcp:127.0.0.1:{backend}")
        twist.wait_for("listening on")
        payload = os.urandom(3 * 1024 * 1024)
        with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        self.assertEqual(answer, f"{len(payload)} {hashlib.sha256(payload).hexdigest()}\n".encode())
        # The client finished first (its FIN), the backend's close followed.
        twist.wait_for(r'reason="client closed"')


class _Stalled(Protocol):
    """A backend that reads nothing until told to, then hashes everything."""

    def __init__(self) -> None:
        self.digest = hashlib.sha256()
        self.size = 0
        self.done: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.transport.pauseProducing()  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.digest.update(data)
        self.size += len(data)

    def connectionLost(self, reason: object = None) -> None:
        self.done.callback(None)


class _Sender(Protocol):
    """A client that writes its whole payload at once, then closes."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload

    def connectionMade(self) -> None:
        self.transport.write(self.payload)  # type: ignore[union-attr]
        self.transport.loseConnection()  # type: ignore[union-attr]


class FlowControlTests(TestCase):
    """A backend that does not read makes the relay stop reading, not buffer."""

    @inlineCallbacks
    def stall(self, listen, connect_to):  # type: ignore[no-untyped-def]
        """Send 64 MiB through a relay on *listen* (a server endpoint) from a
        client made by *connect_to(port)*, to a backend that reads nothing
        until the relay has paused; then let it read and check every byte."""
        backends: list[_Stalled] = []

        def backend() -> _Stalled:
            protocol = _Stalled()
            backends.append(protocol)
            return protocol

        backend_port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Factory.forProtocol(backend)
        )
        self.addCleanup(backend_port.stopListening)
        relay_factory = RelayFactory(
            TCP4ClientEndpoint(reactor, "127.0.0.1", backend_port.getHost().port, timeout=10)
        )
        relays = _recording(relay_factory)
        relay_port = yield listen.listen(relay_factory)
        self.addCleanup(relay_port.stopListening)

        payload = os.urandom(64 * 1024 * 1024)
        yield connect_to(relay_port.getHost().port).connect(
            Factory.forProtocol(lambda: _Sender(payload))
        )
        # Wait (bounded) until the relay's write buffer toward the backend
        # is full and the client side is paused.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if relays and relays[0].partner is not None:
                outbound = relays[0].partner.transport
                if outbound is not None and outbound.producerPaused:  # type: ignore[attr-defined]
                    break
            yield deferLater(reactor, 0.01, lambda: None)
        else:
            self.fail("the relay never paused the client side")
        # Let the kernel buffers settle, then see how much the relay holds.
        yield deferLater(reactor, 0.3, lambda: None)
        outbound = relays[0].partner.transport  # type: ignore[union-attr]
        held = len(outbound.dataBuffer) + sum(  # type: ignore[union-attr]
            map(len, outbound._tempDataBuffer)  # type: ignore[union-attr]
        )
        self.assertLess(held, 1024 * 1024, "the relay buffered instead of pausing its reader")
        # A TLS transport counts what it delivered: far less than was sent.
        delivered = getattr(relays[0].transport, "bytesReceived", None)
        if delivered is not None:
            self.assertLess(delivered, len(payload) // 2)
        # Now let the backend read: everything arrives, in order, once.
        backends[0].transport.resumeProducing()  # type: ignore[union-attr]
        yield backends[0].done
        self.assertEqual(backends[0].size, len(payload))
        self.assertEqual(backends[0].digest.digest(), hashlib.sha256(payload).digest())
        # The client half-closed first; the backend's close followed.
        deadline = time.monotonic() + 10
        while not relays[0].lost and time.monotonic() < deadline:
            yield deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(relays[0].close_reason, "client closed")

    def test_a_stalled_backend_pauses_the_tcp_client_side(self):  # type: ignore[no-untyped-def]
        return self.stall(
            TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"),
            lambda port: TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=10),
        )

    def test_a_stalled_backend_pauses_the_tls_client_side(self):  # type: ignore[no-untyped-def]
        folder = Path(tempfile.mkdtemp(prefix="txschannel-flow-"))
        ca = CertificateAuthority()
        ca.write(folder / "ca.pem")
        ca.issue("localhost").write(folder / "server.pem")
        listen = serverFromString(
            reactor, f"schannel:tcp:0:interface=127.0.0.1:certificate={folder}/server.pem"
        )
        return self.stall(
            listen,
            lambda port: clientFromString(
                reactor,
                f"schannel:tcp:127.0.0.1:{port}:hostname=localhost:trustRoots={folder}/ca.pem",
            ),
        )


class _Watched(Protocol):
    """Records how its connection ended."""

    def __init__(self) -> None:
        self.lost: Deferred[str] = Deferred()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost.callback(type(reason.value).__name__)


class JoinFailureTests(TestCase):
    """An error while the two sides are joined ends both, and says why."""

    @inlineCallbacks
    def test_an_error_building_the_proxy_header_aborts_both_sides(self):  # type: ignore[no-untyped-def]
        backends: list[_Watched] = []

        def backend() -> _Watched:
            backends.append(_Watched())
            return backends[-1]

        backend_port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Factory.forProtocol(backend)
        )
        self.addCleanup(backend_port.stopListening)

        def broken(transport: object) -> bytes:
            raise ValueError("no header\nFAKE")

        relay_factory = RelayFactory(
            TCP4ClientEndpoint(reactor, "127.0.0.1", backend_port.getHost().port, timeout=10),
            proxy_header=broken,
        )
        relays = _recording(relay_factory)
        relay_port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            relay_factory
        )
        self.addCleanup(relay_port.stopListening)
        client = _Watched()
        yield TCP4ClientEndpoint(
            reactor, "127.0.0.1", relay_port.getHost().port, timeout=10
        ).connect(Factory.forProtocol(lambda: client))
        # Before, the error only failed the connect Deferred: the client
        # stayed paused and the backend connected, both for good.
        how = yield client.lost.addTimeout(10, reactor)
        self.assertEqual(how, "ConnectionLost")  # a reset, not a clean end
        self.assertEqual(len(backends), 1)
        yield backends[0].lost.addTimeout(10, reactor)
        self.assertEqual(relays[0].close_reason, "relay error: ValueError: no header\nFAKE")


class SendAtOnceTests(TestCase):
    """A relayed write leaves for the socket at once, not in the reactor's next turn."""

    @inlineCallbacks
    def test_a_relayed_write_is_in_the_peer_socket_when_write_returns(self):  # type: ignore[no-untyped-def]
        # Plain Python sockets at both ends, so that nothing but the relay
        # runs in the reactor; the test reads them without turning it.
        backend = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(backend.close)
        relay_factory = RelayFactory(
            TCP4ClientEndpoint(reactor, "127.0.0.1", backend.getsockname()[1], timeout=10)
        )
        relays = _recording(relay_factory)
        relay_port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            relay_factory
        )
        self.addCleanup(relay_port.stopListening)
        client = socket.create_connection(("127.0.0.1", relay_port.getHost().port), timeout=10)
        self.addCleanup(client.close)
        deadline = time.monotonic() + 10
        while not (relays and relays[0].partner is not None) and time.monotonic() < deadline:
            yield deferLater(reactor, 0.01, lambda: None)
        self.assertIsNotNone(relays and relays[0].partner, "the relay never joined")
        served, _ = backend.accept()
        self.addCleanup(served.close)
        inbound = relays[0]
        outbound = inbound.partner
        assert outbound is not None

        def arrives(sock: socket.socket, data: bytes) -> bytes:
            # Blocks the reactor: bytes left for its next turn never come,
            # and the bounded wait ends with nothing read.
            received = b""
            while len(received) < len(data) and select.select([sock], [], [], 5)[0]:
                received += sock.recv(65536)
            return received

        # Toward the backend (a request), then toward the client (an answer
        # as large as a chunk of a download).
        inbound.dataReceived(b"GET / HTTP/1.0\r\n\r\n")
        self.assertEqual(arrives(served, b"GET / HTTP/1.0\r\n\r\n"), b"GET / HTTP/1.0\r\n\r\n")
        chunk = os.urandom(65536)
        outbound.dataReceived(chunk)
        self.assertEqual(arrives(client, chunk), chunk)
        # Nothing was queued: no turn of the reactor is owed a write.
        for transport in (outbound.transport, inbound.transport):
            self.assertEqual(transport.dataBuffer, b"")  # type: ignore[union-attr]
            self.assertEqual(transport._tempDataBuffer, [])  # type: ignore[union-attr]

    @inlineCallbacks
    def test_a_write_after_an_abort_is_dropped(self):  # type: ignore[no-untyped-def]
        """As with Twisted's own queue: bytes written between abortConnection()
        and the connection's end never reach the peer."""
        backend = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(backend.close)
        outbound: list[Protocol] = []

        class Backend(Protocol):
            def connectionMade(self) -> None:
                outbound.append(self)

        yield TCP4ClientEndpoint(
            reactor, "127.0.0.1", backend.getsockname()[1], timeout=10
        ).connect(Factory.forProtocol(Backend))
        served, _ = backend.accept()
        self.addCleanup(served.close)
        transport = outbound[0].transport
        send_at_once(transport)
        transport.write(b"early")  # type: ignore[union-attr]
        transport.abortConnection()  # type: ignore[union-attr]
        transport.write(b"late")  # type: ignore[union-attr]
        yield deferLater(reactor, 0.05, lambda: None)  # connectionLost runs
        received = b""
        while select.select([served], [], [], 5)[0]:
            try:
                chunk = served.recv(65536)
            except ConnectionResetError:  # Twisted's abort ends in a reset
                break
            if not chunk:
                break
            received += chunk
        self.assertNotIn(b"late", received)


class SendAtOnceGuardTests(TestCase):
    """The switch reads Twisted internals; a Twisted without one of them keeps
    its own write instead of failing every write."""

    @inlineCallbacks
    def test_a_transport_lacking_a_name_the_switch_reads_is_left_alone(self):  # type: ignore[no-untyped-def]
        from txschannel import _sendnow

        self.patch(_sendnow, "_READS", _sendnow._READS + ("_not_in_any_twisted",))
        self.patch(_sendnow, "_checked", False)
        self.patch(_sendnow, "_SWITCHED", dict(_sendnow._SWITCHED))
        accepted: Deferred[Protocol] = Deferred()

        class Accepting(Factory):
            def buildProtocol(self, addr):  # type: ignore[no-untyped-def]
                protocol = Protocol()
                reactor.callLater(0, accepted.callback, protocol)
                return protocol

        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Accepting())
        self.addCleanup(port.stopListening)
        client = socket.create_connection(("127.0.0.1", port.getHost().port), timeout=10)
        self.addCleanup(client.close)
        protocol = yield accepted
        transport = protocol.transport
        self.addCleanup(transport.loseConnection)  # type: ignore[union-attr]
        original = type(transport)
        send_at_once(transport)
        self.assertIs(type(transport), original)
        self.assertEqual(_sendnow._SWITCHED, {})
        # Writes still reach the peer, through Twisted's own queue.
        transport.write(b"queued")  # type: ignore[union-attr]
        self.assertEqual(transport._tempDataBuffer, [b"queued"])  # type: ignore[union-attr]
