"""``haproxy:`` listeners: a PROXY header before TLS, from a client that may lie.

Every test runs a real ``twist schannel`` process with a
``schannel:haproxy:`` listener on loopback, a real backend process, and
raw sockets that send the header (hostile or not) before a Python ``ssl``
handshake.
"""

from __future__ import annotations

import select
import socket
import ssl
import struct
import threading
import time
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import Clock, deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import FailTest, SynchronousTestCase, TestCase

from tests.support.edges import ECHO, RECORD_BYTES, Edge, wait_for_record
from tests.support.peers import free_port
from tests.support.twist import Twist
from txschannel.haproxy import (
    HEADER_TIMEOUT,
    MAX_HEADER,
    HeaderReader,
    ProxyHeaderFactory,
    ProxyHeaderRefused,
)
from txschannel.terminator.proxyheader import V2_SIGNATURE


def v2(family: int, body: bytes, command: int = 0x21) -> bytes:
    """A version 2 header: *command* (version and command), *family*, *body*."""
    return V2_SIGNATURE + bytes([command, family]) + struct.pack("!H", len(body)) + body


def wait_count(twist: Twist, text: str, count: int, timeout: float = 20.0) -> None:
    """Wait (bounded) until *text* is in the log *count* times."""
    deadline = time.monotonic() + timeout
    while twist.output.count(text) < count:
        if time.monotonic() > deadline:
            raise FailTest(f"{text!r} not logged {count} times:\n{twist.output}")
        time.sleep(0.05)


class HAProxyListenerTests(Edge):
    def start(self, *extra: str, listen_options: str = "") -> tuple[Twist, int, Path]:
        record = self.folder / "record.txt"
        backend = self.backend(RECORD_BYTES, str(record))
        port = free_port()
        twist = Twist(
            self, "--listen",
            f"schannel:haproxy:tcp:{port}:interface=127.0.0.1:"
            f"certificate={self.folder}/server.pem{listen_options}",
            "--connect", f"tcp:127.0.0.1:{backend}", *extra,
        )
        twist.wait_for("listening on")
        return twist, port, record

    def through(self, port: int, header: bytes) -> str:
        """Send *header*, then a TLS handshake and ``hello``: what came of it.

        ``ok`` (the backend answered), ``refused`` (the connection was
        closed or reset), or ``no answer`` (still open after 10 s).
        """
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            try:
                raw.sendall(header)
                with self.client_context().wrap_socket(raw, server_hostname="localhost") as tls:
                    tls.sendall(b"hello")
                    answer = tls.recv(2)
            except TimeoutError:
                return "no answer"
            except (OSError, ssl.SSLError):
                return "refused"
        return "ok" if answer == b"ok" else "refused"

    def test_a_port_outside_0_to_65535_is_refused_not_relayed(self) -> None:
        for version in ("v1", "v2"):
            twist, port, record = self.start("--proxy-protocol", version)
            for bad in (b"99999", b"-1"):
                header = b"PROXY TCP4 6.6.6.6 10.0.0.1 " + bad + b" 443\r\n"
                # Before: v2 left the client and the backend connected for
                # good (the header could not be built); v1 passed the
                # invalid line on.
                self.assertEqual(self.through(port, header), "refused", (version, bad))
                twist.wait_for(
                    f"reason=.*bad PROXY header: source port '{bad.decode()}' is not a number"
                )
            self.assertFalse(record.exists(), record.read_text() if record.exists() else "")
            # A good header still goes through, with its address.
            self.assertEqual(self.through(port, b"PROXY TCP4 6.6.6.6 10.0.0.1 1111 443\r\n"), "ok")
            self.assertIn(
                b"6.6.6.6" if version == "v1" else bytes([6, 6, 6, 6]),
                bytes.fromhex(wait_for_record(record)[-1]),
            )
            twist.stop()
            record.unlink()

    def test_hostile_headers_cost_one_escaped_line_each_and_no_traceback(self) -> None:
        twist, port, record = self.start("--proxy-protocol", "v1")
        hostile = [
            b"PROXY TCP4 6.6.6.6 10.0.0.1 abc 443\r\n",
            b"PROXY TCP4 \xff\xfe 10.0.0.1 1 443\r\n",
            b"PROXY TCP4 evil\nFAKE LINE 10.0.0.1 1 443\r\n",
            b"PROXY TCP6 6.6.6.6 ::1 1 443\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1_0 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
            v2(0x11, b"\x06\x06"),
            v2(0x11, bytes([6, 6, 6, 6, 10, 0, 0, 1]) + struct.pack("!HH", 1, 443) + b"\x20\xff"),
            v2(0x41, b""),
            b"GET / HTTP/1.1\r\n\r\n",
        ]
        for header in hostile:
            self.assertEqual(self.through(port, header), "refused", header)
        # The process keeps serving.
        self.assertEqual(self.through(port, b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"), "ok")
        twist.wait_for(r"peer=1\.2\.3\.4:1 .*reason=")
        output = twist.output
        self.assertNotIn("Unhandled Error", output)
        self.assertNotIn("Traceback", output)
        self.assertEqual(output.count("bad PROXY header"), len(hostile), output)
        self.assertNotIn("\nFAKE LINE", output)
        # Only the good connection reached the backend.
        self.assertEqual(len(wait_for_record(record)), 1)

    def test_proxy_unknown_keeps_the_connections_own_addresses(self) -> None:
        twist, port, record = self.start("--proxy-protocol", "v1")
        for header in (b"PROXY UNKNOWN\r\n", b"PROXY UNKNOWN ffff:: ffff:: 1 2\r\n"):
            # (Twisted's haproxy: endpoint refused both.)
            self.assertEqual(self.through(port, header), "ok", header)
        for line in wait_for_record(record, count=2):
            self.assertTrue(bytes.fromhex(line).startswith(b"PROXY TCP4 127.0.0.1 127.0.0.1 "))

    def test_a_header_longer_than_the_limit_is_refused_at_once(self) -> None:
        twist, port, _ = self.start(listen_options=":handshakeTimeout=120")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            # Claims 65,535 bytes: before, it was read (and held) until the
            # handshake timeout, here 120 s; the 10 s read would time out.
            raw.sendall(V2_SIGNATURE + b"\x21\x11\xff\xff" + b"x" * 1000)
            try:
                self.assertEqual(raw.recv(1), b"")
            except ConnectionResetError:
                pass
        twist.wait_for(f"bad PROXY header: a version 2 header of 65551 bytes; this listener "
                       f"takes at most {MAX_HEADER}")

    def test_unfinished_headers_are_charged_to_the_handshake_budget(self) -> None:
        budget = 131445  # the smallest handshakeMemory: one largest ClientHello
        twist, port, _ = self.start(
            listen_options=f":handshakeTimeout=120:handshakeMemory={budget}"
        )
        length = MAX_HEADER - 16
        partial = V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", length) + b"x" * 16000
        held = []
        for _ in range(12):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            try:
                sock.sendall(partial)
            except OSError:
                pass  # refused (reset) while sending
            held.append(sock)
        # 8 of them fit in the budget; the rest are refused, in one line.
        refused = twist.wait_for(r"refused (\d+) new handshake\(s\)")
        self.assertGreaterEqual(int(refused.group(1)), 1)
        twist.wait_for(r"reason=.*PROXY header refused: .*handshakeMemory")
        for sock in held:
            sock.close()
        wait_count(twist, "connection closed", 12)
        # Given back when they left: 8 more are held (none refused), and a
        # whole request still goes through.
        again = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(8)]
        for sock in again:
            self.addCleanup(sock.close)
            sock.sendall(partial)
        readable, _, _ = select.select(again, [], [], 2)
        self.assertEqual(readable, [], "a header was refused: the budget was not given back")
        for sock in again:
            sock.close()


class HeaderReaderTests(SynchronousTestCase):
    """The parser alone, on the forms the listener tests do not send."""

    def test_one_byte_at_a_time(self) -> None:
        for header in (b"PROXY TCP6 ::1 2001:db8::1 1 65535\r\n",
                       v2(0x21, bytes(15) + b"\x01" + bytes(16) + struct.pack("!HH", 5, 6))):
            reader = HeaderReader()
            for byte in header[:-1]:
                self.assertIsNone(reader.feed(bytes([byte])))
            result = reader.feed(header[-1:] + b"rest")
            assert result is not None
            addresses, rest = result
            self.assertEqual(rest, b"rest")
            assert addresses is not None
            self.assertEqual(addresses[0].host, "::1")  # type: ignore[attr-defined]

    def test_local_unspec_and_unix(self) -> None:
        self.assertEqual(HeaderReader().feed(v2(0x00, b"", command=0x20)), (None, b""))
        self.assertEqual(HeaderReader().feed(v2(0x00, b"")), (None, b""))
        body = b"/balancer\0junk".ljust(108, b"\0") + b"/here".ljust(108, b"\0")
        result = HeaderReader().feed(v2(0x31, body))
        assert result is not None and result[0] is not None
        self.assertEqual(result[0][0].name, b"/balancer")  # type: ignore[attr-defined]

    def test_refusals_say_why(self) -> None:
        for header, needle in (
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 1\r\n", "source port '65536'"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 +1\r\n", "destination port '+1'"),
            (b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", "'fe80::1%eth0' is not an IP address"),
            (b"PROXY TCP4 " + b"1" * 120, "no CRLF within 107 bytes"),
            (b"PROXY TCP4 1.2.3.4\n", "no CRLF"),
            (v2(0x12, bytes(12)), "family and transport 0x12"),
            (V2_SIGNATURE + b"\x22\x11\x00\x00", "command 2"),
            (V2_SIGNATURE + b"\x11\x11\x00\x00", "version 1 after"),
        ):
            with self.assertRaises(ProxyHeaderRefused) as raised:
                HeaderReader().feed(header)
            self.assertIn(needle, str(raised.exception))


class PlainHAProxyListenerTests(Edge):
    """``--listen haproxy:tcp:...``: no TLS, the header straight before the data."""

    def start(self) -> tuple[Twist, int, Path]:
        record = self.folder / "record.txt"
        backend = self.backend(RECORD_BYTES, str(record))
        port = free_port()
        twist = Twist(
            self, "--listen", f"haproxy:tcp:{port}:interface=127.0.0.1",
            "--connect", f"tcp:127.0.0.1:{backend}", "--proxy-protocol", "v1",
        )
        twist.wait_for("listening on")
        return twist, port, record

    def test_the_address_it_was_told_is_passed_on_and_logged(self) -> None:
        twist, port, record = self.start()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            raw.sendall(b"PROXY TCP4 192.0.2.7 198.51.100.1 51234 443\r\nhello")
            self.assertEqual(raw.recv(2), b"ok")
        # Before, the relay started (and asked for its backend) before the
        # header was read: the backend was told the balancer's address.
        self.assertEqual(
            bytes.fromhex(wait_for_record(record)[-1]),
            b"PROXY TCP4 192.0.2.7 198.51.100.1 51234 443\r\nhello",
        )
        twist.wait_for(r"connection closed peer=192\.0\.2\.7:51234 ")

    def test_a_bad_header_is_one_escaped_line_and_no_traceback(self) -> None:
        twist, port, record = self.start()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            raw.sendall(b"PROXY TCP4 6.6.6.6 10.0.0.1 abc\nFAKE 443\r\nhello")
            try:
                self.assertEqual(raw.recv(2), b"")
            except ConnectionResetError:
                pass
        line = twist.wait_for(r"127\.0\.0\.1:\d+: bad PROXY header: .*abc.*")
        self.assertIn("abc\\x0aFAKE", line.group(0))
        self.assertNotIn("\nFAKE", twist.output)
        self.assertNotIn("Traceback", twist.output)
        self.assertFalse(record.exists())


class PlainHAProxyLimitTests(Edge):
    """``--max-connections`` counts a plain ``haproxy:`` connection from its
    accept, not from the end of its header."""

    def test_silent_connections_wait_in_the_kernel_queue_past_the_limit(self) -> None:
        backend = self.backend(ECHO)
        port = free_port()
        # 64 descriptors: 80 silent connections, all accepted, would take them all.
        twist = Twist(
            self, "--listen", f"haproxy:tcp:{port}:interface=127.0.0.1",
            "--connect", f"tcp:127.0.0.1:{backend}", "--max-connections", "3",
            python_wrapper=self.limited({"RLIMIT_NOFILE": 64}),
        )
        twist.wait_for("listening on")
        silent: list[socket.socket] = []
        for number in range(80):
            raw = socket.socket()
            self.addCleanup(raw.close)
            raw.setblocking(False)
            raw.connect_ex(("127.0.0.1", port))
            silent.append(raw)
            if number % 40 == 39:
                time.sleep(0.1)  # smaller batches than the listen backlog (50)
        # Before, header-less connections were counted only once their header
        # was read: all 80 were accepted and the limit never reached.
        twist.wait_for(r"at --max-connections 3: stopped accepting until a connection closes")

        answers: list[bytes | BaseException] = []

        def balancer() -> None:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=60) as raw:
                    raw.sendall(b"PROXY TCP4 192.0.2.7 198.51.100.1 51234 443\r\nhello")
                    data = b""
                    while len(data) < 5 and (chunk := raw.recv(5 - len(data))):
                        data += chunk
                    answers.append(data)
            except OSError as e:  # reported by the assertion below
                answers.append(e)

        waiting = threading.Thread(target=balancer, daemon=True)
        waiting.start()
        waiting.join(1.0)
        # Three silent connections hold the slots: the balancer's waits in the
        # kernel's queue, holding no descriptor of the process.
        self.assertTrue(waiting.is_alive(), f"served past the limit: {answers}")
        for raw in silent:
            raw.close()
        waiting.join(60)
        self.assertEqual(answers, [b"hello"], twist.output)
        twist.wait_for(r"connection closed peer=192\.0\.2\.7:51234 ")
        self.assertNotIn("EMFILE", twist.output)
        self.assertNotIn("out of file descriptors", twist.output)
        # The PROXY layer's factory says nothing of its own.
        self.assertNotIn("Starting factory", twist.output)


class _Lost(Protocol):
    def __init__(self) -> None:
        self.lost: Deferred[None] = Deferred()
        self.made = False

    def connectionMade(self) -> None:
        self.made = True

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost.callback(None)


class HeaderTimeoutTests(TestCase):
    """Behind a protocol that is not TLS, the header has a time limit of its own."""

    @inlineCallbacks
    def test_a_stalled_header_is_dropped_after_the_timeout_unseen(self):  # type: ignore[no-untyped-def]
        clock = Clock()
        servers: list[_Lost] = []

        def server() -> _Lost:
            servers.append(_Lost())
            return servers[-1]

        factory = ProxyHeaderFactory(Factory.forProtocol(server), clock=clock)
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        client = _Lost()
        yield TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port).connect(
            Factory.forProtocol(lambda: client)
        )
        client.transport.write(b"PROXY TCP4 1.2")  # type: ignore[union-attr]
        deadline = time.monotonic() + 10
        while not clock.getDelayedCalls() and time.monotonic() < deadline:
            yield deferLater(reactor, 0.01, lambda: None)
        self.assertEqual([call.getTime() for call in clock.getDelayedCalls()], [HEADER_TIMEOUT])
        clock.advance(HEADER_TIMEOUT)
        yield client.lost.addTimeout(10, reactor)
        # The protocol behind was never told of the connection.
        self.assertEqual([s.made for s in servers], [False])
        self.assertFalse(servers[0].lost.called)


class HAProxyWorkersTests(Edge):
    """``--workers`` share a ``haproxy:`` listener (the supervisor opens it
    without a reactor)."""

    def test_two_workers_read_the_header(self) -> None:
        record = self.folder / "record.txt"
        backend = self.backend(RECORD_BYTES, str(record))
        port = free_port()
        twist = Twist(
            self, "--workers", "2", "--listen",
            f"schannel:haproxy:tcp:{port}:interface=127.0.0.1:"
            f"certificate={self.folder}/server.pem",
            "--connect", f"tcp:127.0.0.1:{backend}", "--proxy-protocol", "v1", group=True,
        )
        wait_count(twist, "ready: accepting connections", 2, timeout=60)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            raw.sendall(b"PROXY TCP4 192.0.2.7 198.51.100.1 51234 443\r\n")
            with self.client_context().wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(b"hello")
                self.assertEqual(tls.recv(2), b"ok")
        self.assertTrue(
            bytes.fromhex(wait_for_record(record)[-1]).startswith(
                b"PROXY TCP4 192.0.2.7 198.51.100.1 51234 443\r\n"
            )
        )
