"""``twist schannel --idle-timeout``: idle means that nothing moved.

A peer that reads slowly keeps a connection alive even when the relay has
nothing new to write for longer than the timeout (the bytes are queued in
the kernel and drain as the peer reads); a peer that reads nothing is
still ended once its buffers are full. Real ``twist schannel`` processes,
real backend processes (over TCP and over a Unix socket), and Python's
``ssl`` as a client with a small receive buffer, reading in small steps.
"""

from __future__ import annotations

import os
import socket
import ssl
import sys
import time

from twisted.trial.unittest import SynchronousTestCase

from tests.support.edges import Edge, read_to_end
from tests.support.peers import LISTENER, Peer, free_port
from tests.support.twist import Twist
from txschannel.terminator.relay import probe_window, send_progress

#: Answers each connection's first bytes with argv[2] bytes of "x", then closes.
BODY = LISTENER + """
size = int(sys.argv[2])
while True:
    connection, _ = server.accept()
    try:
        connection.settimeout(120)
        if connection.recv(65536):
            connection.sendall(b"x" * size)
    except OSError:
        pass  # (the readiness probe sends nothing)
    connection.close()
"""

#: Answers each connection's first bytes with argv[2] bytes of "x", then
#: keeps it open until the client ends it (as a keep-alive HTTP server).
BODY_THEN_WAIT = LISTENER + """
size = int(sys.argv[2])
def serve(connection):
    with connection:
        try:
            connection.settimeout(120)
            if connection.recv(65536):
                connection.sendall(b"x" * size)
                while connection.recv(65536):
                    pass
        except OSError:
            pass
while True:
    connection, _ = server.accept()
    threading.Thread(target=serve, args=(connection,), daemon=True).start()
"""

#: Listens on the Unix socket argv[1]; reads argv[2] bytes of each
#: connection slowly (4 KiB every 50 ms, through a small receive buffer),
#: then answers with the number of bytes it read.
SLOW_UNIX_SINK = """
import os, socket, sys, time
path, expected = sys.argv[1], int(sys.argv[2])
server = socket.socket(socket.AF_UNIX)
server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
server.bind(path + ".tmp")
os.rename(path + ".tmp", path)
server.listen(16)
while True:
    connection, _ = server.accept()
    size = 0
    try:
        connection.settimeout(120)
        while size < expected and (data := connection.recv(4096)):
            size += len(data)
            time.sleep(0.05)
        connection.sendall(b"got %d" % size)
    except OSError:
        pass
    connection.close()
"""

#: Bytes each slow test moves: at the pace below, several seconds' worth,
#: several times the idle timeout of 1 s.
SLOW_SIZE = 1_000_000


class SlowPeerTests(Edge):
    """Bytes drained from the socket queues by a slow peer are progress."""

    def start(self, connect: str, timeout: str = "1") -> tuple[Twist, int]:
        port = free_port()
        twist = Twist(
            self,
            "--listen",
            f"schannel:tcp:{port}:interface=127.0.0.1:certificate={self.folder}/server.pem",
            "--connect", connect, "--idle-timeout", timeout,
        )
        twist.wait_for("listening on")
        return twist, port

    def small_buffer_client(self, port: int) -> ssl.SSLSocket:
        raw = socket.socket()
        # Small, so that what the client has not read waits in our queues
        # (where the gate can see it drain) rather than in its own.
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        raw.settimeout(60)
        raw.connect(("127.0.0.1", port))
        return self.client_context().wrap_socket(
            raw, server_hostname="localhost", suppress_ragged_eofs=False
        )

    def test_a_slow_reader_gets_the_whole_body(self) -> None:
        backend = self.backend(BODY, str(SLOW_SIZE))
        twist, port = self.start(f"tcp:127.0.0.1:{backend}")
        with self.small_buffer_client(port) as client:
            client.sendall(b"GET")
            size, how = 0, "no close_notify"
            deadline = time.monotonic() + 120  # (a bound, not a measure)
            try:
                while time.monotonic() < deadline:
                    data = client.recv(8192)
                    if not data:
                        how = "close_notify"
                        break
                    size += len(data)
                    # About 160 KiB/s: the relay's queues toward the client
                    # hold seconds' worth, so it writes nothing for seconds.
                    time.sleep(0.05)
            except (ssl.SSLError, OSError) as e:
                how = repr(e)
        self.assertEqual((size, how), (SLOW_SIZE, "close_notify"), twist.output)
        twist.wait_for(rf"connection closed .*bytes_out={SLOW_SIZE} ")
        self.assertNotIn("idle timeout", twist.output)

    def test_a_slow_reader_of_its_own_receive_buffer_is_not_idle(self) -> None:
        # The whole response fits in the client's receive buffer: the
        # relay's queues are empty at once, and only the window the client
        # announces shows it reading. Unasked, it announces a new one only
        # when the window doubles (seconds apart here); keep-alive probes
        # ask for it every second.
        size = 1_600_000
        backend = self.backend(BODY_THEN_WAIT, str(size))
        twist, port = self.start(f"tcp:127.0.0.1:{backend}", timeout="3")
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024 * 1024)
        raw.settimeout(60)
        raw.connect(("127.0.0.1", port))
        with self.client_context().wrap_socket(
            raw, server_hostname="localhost", suppress_ragged_eofs=False
        ) as client:
            client.sendall(b"GET")
            got, error = 0, ""
            deadline = time.monotonic() + 120  # (a bound, not a measure)
            try:
                while got < size and time.monotonic() < deadline:
                    data = client.recv(20480)
                    if not data:
                        break
                    got += len(data)
                    time.sleep(0.1)  # about 200 KB/s: 8 s for the whole body
            except (ssl.SSLError, OSError) as e:
                error = repr(e)
            self.assertEqual((got, error), (size, ""), twist.output)
            client.unwrap()
        twist.wait_for(r'connection closed .*reason="client closed"')
        self.assertNotIn("idle timeout", twist.output)

    def test_a_client_that_reads_nothing_is_still_ended(self) -> None:
        # More than every buffer on the way holds: the client's, ours, Twisted's.
        size = 64_000_000
        backend = self.backend(BODY, str(size))
        twist, port = self.start(f"tcp:127.0.0.1:{backend}")
        with self.small_buffer_client(port) as client:
            client.sendall(b"GET")
            # Nothing read until the gate gave up (waits are bounds).
            line = twist.wait_for(
                r"connection closed .*bytes_out=(\d+) .*"
                r'reason="idle timeout: no bytes either way for 1 s"',
                timeout=60,
            )
            got, how = read_to_end(client)
        self.assertLess(int(line.group(1)), size)
        self.assertLess(got, size)
        self.assertNotEqual(how, "close_notify")

    def test_a_slow_backend_draining_an_upload_over_a_unix_socket(self) -> None:
        path = self.folder / "sink.sock"
        sink = Peer([sys.executable, "-c", SLOW_UNIX_SINK, str(path), str(SLOW_SIZE)])
        self.addCleanup(sink.stop)
        deadline = time.monotonic() + 20
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        twist, port = self.start(f"unix:{path}")
        with self.tls(port, timeout=120) as client:
            # Blocks while the backend reads (about 80 KiB/s): the relay
            # stops reading the client, so no byte comes in for seconds.
            client.sendall(b"u" * SLOW_SIZE)
            answer = b""
            try:
                while len(answer) < len(b"got %d" % SLOW_SIZE):
                    data = client.recv(100)
                    if not data:
                        break
                    answer += data
            except (ssl.SSLError, OSError) as e:
                answer += repr(e).encode()
        self.assertEqual(answer, b"got %d" % SLOW_SIZE, twist.output)
        twist.wait_for(rf"connection closed .*bytes_in={SLOW_SIZE} ")
        self.assertNotIn("idle timeout", twist.output)


class _Transport:
    """Whatever a transport is to send_progress: something with getHandle()."""

    def __init__(self, handle: object) -> None:
        self.handle = handle

    def getHandle(self) -> object:
        return self.handle


class SendProgressTests(SynchronousTestCase):
    """send_progress() changes when a real peer reads, and only then."""

    def pair(self, family: int) -> tuple[socket.socket, socket.socket]:
        if family == socket.AF_UNIX:
            ours, peer = socket.socketpair(socket.AF_UNIX)
        else:
            with socket.socket() as listener:
                listener.bind(("127.0.0.1", 0))
                listener.listen(1)
                peer = socket.socket()
                peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
                peer.connect(listener.getsockname())
                ours, _ = listener.accept()
        self.addCleanup(ours.close)
        self.addCleanup(peer.close)
        ours.setblocking(False)
        return ours, peer

    def fill(self, ours: socket.socket) -> None:
        for _ in range(10000):  # (a bound: the buffers are far smaller)
            try:
                ours.send(b"z" * 65536)
            except BlockingIOError:
                return
        self.fail("the peer's buffers never filled")

    def check(self, family: int) -> None:
        ours, peer = self.pair(family)
        transport = _Transport(ours)
        self.fill(ours)
        time.sleep(0.2)  # (whatever was in flight has landed)
        stalled = send_progress(transport)
        time.sleep(0.2)
        self.assertEqual(send_progress(transport), stalled)
        self.assertGreater(stalled[2], 0)  # bytes queued in the kernel
        peer.settimeout(10)
        taken = 0
        while taken < 64 * 1024:
            taken += len(peer.recv(65536))
        time.sleep(0.2)
        self.assertNotEqual(send_progress(transport), stalled)

    def test_tcp(self) -> None:
        self.check(socket.AF_INET)

    def test_unix(self) -> None:
        self.check(socket.AF_UNIX)

    def test_a_transport_without_a_socket(self) -> None:
        read, write = os.pipe()
        self.addCleanup(os.close, read)
        self.addCleanup(os.close, write)
        self.assertEqual(send_progress(_Transport(write)), (-1, -1, -1, 0))
        self.assertEqual(send_progress(object()), (-1, -1, -1, 0))
        probe_window(_Transport(write), 1.0)  # (nothing to do, and no error)

    def test_a_closed_socket(self) -> None:
        ours, _ = self.pair(socket.AF_INET)
        ours.close()
        self.assertEqual(send_progress(_Transport(ours)), (-1, -1, -1, 0))
        probe_window(_Transport(ours), 1.0)
