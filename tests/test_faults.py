"""Faults: peers that vanish at the worst moment, and a reactor that stops.

The server is :class:`~txschannel.protocol.SchannelFactory` on real loopback
TCP in the test's reactor. The misbehaving peer is a blocking socket in a
thread, driven by a :class:`~txschannel.ClientContext` (real TLS), which
resets the connection (RST, through ``SO_LINGER`` 0) mid-handshake,
mid-record or mid-close. In every case the wrapped protocol must get
exactly one ``connectionLost``, with a reason that says the connection was
not closed cleanly, and nothing may reach the log as an unhandled error
(trial fails a test that logs one).

The reactor-stop case runs in a subprocess, since stopping the test's own
reactor would end the test run.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, reactor, threads
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import ClientFactory, Factory
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from tests.support.faults import Recorder, client_credentials, server_credentials
from txschannel import ClientContext, SecurityError, ServerContext, Status
from txschannel.protocol import ConnectionTruncated, SchannelFactory

TIMEOUT = 15.0
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def reset(sock: socket.socket) -> None:
    """Close with RST instead of FIN: SO_LINGER on, zero seconds."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class Peer:
    """A blocking TLS client for one thread: it can stop anywhere."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.context = ClientContext(client_credentials(), "localhost")
        self.buffer = b""

    def hello(self) -> bytes:
        return self.context.initialize().token

    def first_server_flight(self) -> None:
        """Send the ClientHello and read until the server's first flight is in."""
        step = self.context.initialize()
        self.sock.sendall(step.token)
        while True:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("the server closed during the handshake")
            step = self.context.initialize(self.buffer + data)
            self.buffer = step.extra
            if step.status is not Status.INCOMPLETE_MESSAGE:
                self.pending_token = step.token
                self.done = step.status is Status.OK
                return

    def handshake(self) -> None:
        self.first_server_flight()
        self.sock.sendall(self.pending_token)
        while not self.done:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("the server closed during the handshake")
            step = self.context.initialize(self.buffer + data)
            self.buffer = step.extra
            if step.token:
                self.sock.sendall(step.token)
            self.done = step.status is Status.OK

    def read_until_close_notify(self) -> None:
        while True:
            if self.buffer:
                unwrapped = self.context.decrypt(self.buffer)
                self.buffer = unwrapped.extra
                if unwrapped.status is Status.CONTEXT_EXPIRED:
                    return
            data = self.sock.recv(65536)
            if not data:
                return
            self.buffer += data


class FaultTests(TestCase):
    """Every way a peer can vanish ends in exactly one connectionLost."""

    timeout = 60

    def setUp(self) -> None:
        self.protocols: list[Recorder] = []
        self.on_handshake: Callable[[Recorder], None] | None = None

        def build() -> Recorder:
            protocol = Recorder()
            protocol.on_handshake = self.on_handshake
            self.protocols.append(protocol)
            return protocol

        factory = SchannelFactory(server_credentials(), False, Factory.forProtocol(build))
        self.port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(self.port.stopListening)

    def peer(self) -> Peer:
        return Peer(self.port.getHost().port)

    @defer.inlineCallbacks
    def assertLostOnce(self, *, clean: bool | None = False) -> Any:
        """Wait (bounded) for the one server connection to be lost; check it
        was reported once, and whether as a clean close (None: either, but
        as a connection error, not some other exception)."""
        for _ in range(int(TIMEOUT / 0.05)):
            if self.protocols:
                break
            yield deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(len(self.protocols), 1, "the server saw no connection")
        protocol = self.protocols[0]
        yield defer.DeferredList([protocol.gone]).addTimeout(TIMEOUT, reactor)
        # Let any event already queued run, so a second report would show.
        yield deferLater(reactor, 0.2, lambda: None)
        self.assertEqual(len(protocol.lost), 1, f"connectionLost calls: {protocol.lost}")
        reason = protocol.lost[0]
        if clean is None:
            self.assertTrue(reason.check(ConnectionDone, ConnectionLost), reason)
        elif clean:
            self.assertTrue(reason.check(ConnectionDone), reason)
        else:
            self.assertFalse(
                reason.check(ConnectionDone) and type(reason.value) is ConnectionDone,
                f"an abrupt end was reported as a clean close: {reason}",
            )
        return protocol

    @defer.inlineCallbacks
    def test_reset_after_the_client_hello_is_one_connection_lost(self) -> Any:
        def fault() -> None:
            peer = self.peer()
            peer.sock.sendall(peer.hello()[:60])
            reset(peer.sock)

        yield threads.deferToThread(fault)
        yield self.assertLostOnce()

    @defer.inlineCallbacks
    def test_reset_mid_handshake_is_one_connection_lost(self) -> Any:
        def fault() -> None:
            peer = self.peer()
            peer.first_server_flight()  # the server waits for our Finished
            reset(peer.sock)

        yield threads.deferToThread(fault)
        protocol = yield self.assertLostOnce()
        self.assertEqual(protocol.handshakes, 0)

    @defer.inlineCallbacks
    def test_reset_mid_record_is_one_connection_lost(self) -> Any:
        def fault() -> None:
            peer = self.peer()
            peer.handshake()
            records = peer.context.encrypt(b"x" * 5000)
            peer.sock.sendall(records[: len(records) // 2])
            reset(peer.sock)

        yield threads.deferToThread(fault)
        protocol = yield self.assertLostOnce()
        self.assertEqual(protocol.received, b"", "half a record was delivered")

    @defer.inlineCallbacks
    def test_end_of_stream_mid_record_is_one_truncated_connection_lost(self) -> Any:
        def fault() -> None:
            peer = self.peer()
            peer.handshake()
            whole = peer.context.encrypt(b"whole record")
            partial = peer.context.encrypt(b"y" * 5000)
            peer.sock.sendall(whole + partial[:100])
            peer.sock.close()  # FIN, no close_notify

        yield threads.deferToThread(fault)
        protocol = yield self.assertLostOnce()
        self.assertEqual(protocol.received, b"whole record")
        self.assertTrue(protocol.lost[0].check(ConnectionTruncated), protocol.lost[0])

    @defer.inlineCallbacks
    def test_reset_mid_close_is_one_connection_lost(self) -> Any:
        # The server closes politely once the handshake is done; the peer
        # reads the close_notify and answers with a reset instead of its own.
        self.on_handshake = lambda protocol: protocol.transport.loseConnection()

        def fault() -> None:
            peer = self.peer()
            peer.handshake()
            peer.read_until_close_notify()
            reset(peer.sock)

        yield threads.deferToThread(fault)
        # Our close_notify went out, the peer's never came: a clean end or a
        # lost connection are both honest reports; two reports are not.
        yield self.assertLostOnce(clean=None)

    @defer.inlineCallbacks
    def test_reset_while_the_server_writes_is_one_connection_lost(self) -> Any:
        self.on_handshake = lambda protocol: protocol.transport.write(b"z" * 2_000_000)

        def fault() -> None:
            peer = self.peer()
            peer.handshake()
            peer.sock.recv(1000)
            reset(peer.sock)

        yield threads.deferToThread(fault)
        yield self.assertLostOnce()

    @defer.inlineCallbacks
    def test_clean_close_by_the_peer_is_one_clean_connection_lost(self) -> Any:
        # The control: a peer that says goodbye properly is reported as clean.
        def polite() -> None:
            peer = self.peer()
            peer.handshake()
            peer.sock.sendall(peer.context.encrypt(b"bye") + peer.context.shutdown())
            peer.read_until_close_notify()
            peer.sock.close()

        yield threads.deferToThread(polite)
        protocol = yield self.assertLostOnce(clean=True)
        self.assertEqual(protocol.received, b"bye")


class ServerPeer:
    """A one-connection blocking TLS server in a thread (a ServerContext on
    a socket) that misbehaves on cue, for faults seen by our client."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(TIMEOUT)
        self.port: int = self.listener.getsockname()[1]

    def accept(self) -> socket.socket:
        sock, _ = self.listener.accept()
        sock.settimeout(TIMEOUT)
        self.listener.close()
        return sock


class ClientFaultTests(TestCase):
    """Our client (SchannelFactory, isClient=True) when the server vanishes."""

    timeout = 60

    def connect(self, port: int) -> Recorder:
        recorder = Recorder()
        recorder.reply = b"ack"
        factory = SchannelFactory(
            client_credentials(), True, ClientFactory.forProtocol(lambda: recorder),
            target_name="localhost",
        )
        reactor.connectTCP("127.0.0.1", port, factory, timeout=TIMEOUT)  # type: ignore[attr-defined]
        return recorder

    @defer.inlineCallbacks
    def assertLostOnce(self, recorder: Recorder) -> Any:
        yield defer.DeferredList([recorder.gone]).addTimeout(TIMEOUT, reactor)
        yield deferLater(reactor, 0.2, lambda: None)
        self.assertEqual(recorder.made, 1)
        self.assertEqual(len(recorder.lost), 1, recorder.lost)
        self.assertFalse(type(recorder.lost[0].value) is ConnectionDone, recorder.lost[0])
        # (Returning the Failure itself would fail this Deferred.)
        return [recorder.lost[0]]

    @defer.inlineCallbacks
    def test_server_reset_after_the_client_hello_is_one_connection_lost(self) -> Any:
        server = ServerPeer()

        def fault() -> None:
            sock = server.accept()
            sock.recv(65536)
            reset(sock)

        done = threads.deferToThread(fault)
        recorder = self.connect(server.port)
        yield done
        yield self.assertLostOnce(recorder)
        self.assertEqual(recorder.handshakes, 0)

    @defer.inlineCallbacks
    def test_server_answering_garbage_is_one_connection_lost_with_the_security_error(
        self,
    ) -> Any:
        server = ServerPeer()
        answer: list[bytes] = []

        def fault() -> None:
            sock = server.accept()
            sock.recv(65536)
            sock.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            data = b""
            try:
                while True:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    data += chunk
            except OSError:
                pass
            answer.append(data)
            sock.close()

        done = threads.deferToThread(fault)
        recorder = self.connect(server.port)
        yield done
        [reason] = yield self.assertLostOnce(recorder)
        self.assertTrue(reason.check(SecurityError), reason)
        self.assertEqual(reason.value.status, Status.ILLEGAL_MESSAGE)
        # Our client told the server why before closing: a fatal alert.
        self.assertEqual(answer[0][:1], b"\x15", answer)

    @defer.inlineCallbacks
    def test_server_reset_mid_record_is_one_connection_lost(self) -> Any:
        server = ServerPeer()
        credentials = server_credentials()

        def fault() -> None:
            sock = server.accept()
            context = ServerContext(credentials)
            buffer = b""
            while True:
                data = sock.recv(65536)
                if not data:
                    raise ConnectionError("the client closed during the handshake")
                step = context.accept(buffer + data)
                if step.token:
                    sock.sendall(step.token)
                buffer = step.extra
                if step.status is Status.OK:
                    break
            sock.sendall(context.encrypt(b"first"))
            # Wait for the client's "ack": "first" was delivered, so the
            # reset below cannot overtake it.
            while True:
                unwrapped = context.decrypt(buffer)
                buffer = unwrapped.extra
                if unwrapped.data:
                    break
                buffer += sock.recv(65536)
            records = context.encrypt(b"r" * 5000)
            sock.sendall(records[: len(records) // 2])
            reset(sock)

        done = threads.deferToThread(fault)
        recorder = self.connect(server.port)
        yield done
        yield self.assertLostOnce(recorder)
        self.assertEqual(recorder.handshakes, 1)
        self.assertEqual(recorder.received, b"first")


@implementer(IPushProducer)
class Firehose:
    """A streaming producer that writes until it is paused."""

    def __init__(self, protocol: Recorder) -> None:
        self.protocol = protocol
        self.paused = 0
        self.stopped = 0
        self.producing = True
        protocol.transport.registerProducer(self, True)  # type: ignore[union-attr]
        self.resumeProducing()

    def pauseProducing(self) -> None:
        self.paused += 1
        self.producing = False

    def resumeProducing(self) -> None:
        self.producing = True
        # Bounded: a transport that never pauses would still end the loop.
        for _ in range(1000):
            if not self.producing or self.stopped:
                return
            self.protocol.transport.write(b"p" * 65536)  # type: ignore[union-attr]

    def stopProducing(self) -> None:
        self.stopped += 1


class PausedProducerTests(TestCase):
    """The inner transport is aborted while the application's producer is paused."""

    timeout = 60

    @defer.inlineCallbacks
    def test_abort_with_a_paused_producer_is_one_connection_lost(self) -> Any:
        producers: list[Firehose] = []
        protocols: list[Recorder] = []

        def build() -> Recorder:
            protocol = Recorder()
            protocol.on_handshake = lambda p: producers.append(Firehose(p))
            protocols.append(protocol)
            return protocol

        factory = SchannelFactory(server_credentials(), False, Factory.forProtocol(build))
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        peer = yield threads.deferToThread(Peer, port.getHost().port)
        self.addCleanup(peer.sock.close)
        # The peer finishes the handshake and then reads nothing, so the
        # socket buffers fill and the producer is paused.
        yield threads.deferToThread(peer.handshake)
        for _ in range(int(TIMEOUT / 0.05)):
            if producers and producers[0].paused:
                break
            yield deferLater(reactor, 0.05, lambda: None)
        self.assertTrue(producers and producers[0].paused, "the producer was never paused")
        protocol = protocols[0]
        tls = protocol.transport
        tls.transport.abortConnection()  # type: ignore[union-attr]
        yield defer.DeferredList([protocol.gone]).addTimeout(TIMEOUT, reactor)
        yield deferLater(reactor, 0.2, lambda: None)
        self.assertEqual(len(protocol.lost), 1, protocol.lost)
        self.assertFalse(type(protocol.lost[0].value) is ConnectionDone, protocol.lost[0])
        self.assertLessEqual(producers[0].stopped, 1)


REACTOR_STOP_SCRIPT = textwrap.dedent(
    """
    import sys
    from twisted.internet import reactor
    from twisted.internet.protocol import ClientFactory, Factory
    from twisted.python import log
    from tests.support.faults import Recorder, client_credentials, server_credentials
    from txschannel.protocol import SchannelFactory

    errors = []
    log.addObserver(lambda event: errors.append(event) if event.get("isError") else None)
    servers, clients = [], []

    def build(into, kind=Factory):
        def make():
            protocol = Recorder()
            into.append(protocol)
            return protocol
        return kind.forProtocol(make)

    port = reactor.listenTCP(
        0, SchannelFactory(server_credentials(), False, build(servers)), interface="127.0.0.1"
    )
    client_factory = SchannelFactory(
        client_credentials(), True, build(clients, ClientFactory), target_name="localhost"
    )
    for _ in range(COUNT):
        reactor.connectTCP("127.0.0.1", port.getHost().port, client_factory)

    def check():
        done = [p for p in clients if p.handshakes] + [p for p in servers if p.handshakes]
        if len(done) == 2 * COUNT:
            # Half the connections are mid-write when the reactor stops.
            for protocol in servers[: COUNT // 2]:
                protocol.transport.write(b"w" * 1_000_000)
            reactor.stop()
        else:
            reactor.callLater(0.05, check)

    reactor.callLater(0.05, check)
    reactor.callLater(30, reactor.stop)
    reactor.run()
    for side, protocols in (("server", servers), ("client", clients)):
        print(side, len(protocols), sorted(len(p.lost) for p in protocols))
    print("errors", len(errors))
    for event in errors:
        print(log.textFromEventDict(event))
    """
)


class ReactorStopTests(TestCase):
    """Stopping the reactor with TLS connections open reports each one once."""

    timeout = 60

    def test_reactor_stop_with_open_connections_reports_each_once(self) -> None:
        count = 6
        script = REACTOR_STOP_SCRIPT.replace("COUNT", str(count))
        path = os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p)
        with tempfile.TemporaryDirectory() as folder:
            result = subprocess.run(
                [sys.executable, "-c", script],
                capture_output=True,
                timeout=TIMEOUT * 3,
                cwd=folder,
                env={**os.environ, "PYTHONPATH": path},
            )
        output = result.stdout.decode() + result.stderr.decode()
        self.assertEqual(result.returncode, 0, output)
        lines = result.stdout.decode().splitlines()
        self.assertIn(f"server {count} {[1] * count}", lines, output)
        self.assertIn(f"client {count} {[1] * count}", lines, output)
        self.assertIn("errors 0", lines, output)
        self.assertNotIn("Traceback", output)
