"""``haproxy:`` listeners: a PROXY header before TLS, from a client that may lie.

Every test runs a real ``twist schannel`` process with a
``schannel:haproxy:`` listener on loopback, a real backend process, and
raw sockets that send the header (hostile or not) before a Python ``ssl``
handshake.
"""

from __future__ import annotations

import hashlib
import os
import select
import socket
import ssl
import struct
import threading
import time
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, serverFromString
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IDelayedCall, IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import Clock, deferLater
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.trial.unittest import FailTest, SynchronousTestCase, TestCase
from zope.interface import implementer

from tests.support.edges import DIGEST_SERVER, ECHO, RECORD_BYTES, Edge, wait_for_record
from tests.support.peers import free_port
from tests.support.twist import Twist
from txschannel.haproxy import (
    HEADER_TIMEOUT,
    MAX_HEADER,
    HeaderReader,
    ProxyHeaderFactory,
    ProxyHeaderRefused,
    server_from_string,
)
from txschannel.terminator.proxyheader import V2_SIGNATURE
from txschannel.testing import CertificateAuthority


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

    def test_a_fin_before_the_header_is_complete_is_the_connections_reason(self) -> None:
        twist, port, record = self.start(listen_options=":handshakeTimeout=120")
        # Refused at once: the 10 s read would time out if it waited for
        # the 120 s handshake timeout.
        send_and_finish(port, b"PROXY TCP4 1.2")
        # Before, the reason was "client closed before the TLS handshake
        # completed", without a word of the header.
        twist.wait_for(
            r"reason=.*PROXY header refused: the connection ended after 'PROXY TCP4 1\.2', "
            r"before the header was complete"
        )
        self.assertFalse(record.exists())

    def test_a_connection_that_sends_nothing_ends_as_on_a_tls_listener(self) -> None:
        # A balancer's connect-and-close check (HAProxy's plain "check"
        # sends no PROXY header): it ends as it did before half-close passed
        # through, and as on a schannel:tcp: listener, a clean close before
        # the handshake, not a refused header.
        twist, port, record = self.start()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            raw.shutdown(socket.SHUT_WR)
            # Closed (a FIN), not reset (the abort of a refusal).
            self.assertEqual(raw.recv(1), b"")
        line = twist.wait_for(r"connection closed peer=127\.0\.0\.1:\d+ .*\n")
        self.assertIn('reason="client closed before the TLS handshake completed"', line.group())
        self.assertNotIn("PROXY header refused", twist.output)
        self.assertFalse(record.exists())

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


#: What a balancer sends first on every connection of the half-close tests.
HEADER = b"PROXY TCP4 192.0.2.7 198.51.100.1 51234 443\r\n"


def digest_line(data: bytes) -> bytes:
    """The answer of a protocol that read *data* to its end: "<length> <sha256>\\n"."""
    return f"{len(data)} {hashlib.sha256(data).hexdigest()}\n".encode()


@implementer(IHalfCloseableProtocol)
class _AnswerAtEnd(Protocol):
    """Reads until the client has finished sending, then answers
    :func:`digest_line` of what it read and closes.

    The answer follows a moment after the client's end of stream, as a
    backend's would: by then a transport that took the FIN for the end of
    the whole connection has closed it, whatever order the reactor runs in.
    """

    def __init__(self) -> None:
        self.received = b""
        self.ended = False
        self.reason: Failure | None = None
        self.lost: Deferred[None] = Deferred()
        self._answer: IDelayedCall | None = None

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def readConnectionLost(self) -> None:
        self.ended = True
        self._answer = reactor.callLater(0.2, self.answer)  # type: ignore[attr-defined]

    def writeConnectionLost(self) -> None:
        pass

    def answer(self) -> None:
        self._answer = None
        assert self.transport is not None
        self.transport.write(digest_line(self.received))
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._answer is not None:
            self._answer.cancel()
        self.reason = reason
        self.lost.callback(None)


class _Collect(Protocol):
    """A protocol that cannot half-close: it collects, and says how it ended."""

    def __init__(self) -> None:
        self.received = b""
        self.reason: Failure | None = None
        self.lost: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.reason = reason
        self.lost.callback(None)


def send_and_finish(port: int, data: bytes) -> None:
    """Connect, send *data*, half-close, and see the server end the
    connection (a FIN or a reset) within the socket's 10 s timeout."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        if data:
            raw.sendall(data)
        raw.shutdown(socket.SHUT_WR)
        try:
            assert raw.recv(1) == b"", "the server sent bytes instead of ending"
        except ConnectionResetError:
            pass


def half_close_plain(port: int, request: bytes) -> bytes:
    """Send the header and *request*, shut down writing, read to the end (blocking)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(HEADER + request)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
        return answer


def half_close_tls(port: int, cafile: str, request: bytes) -> tuple[bytes, bool]:
    """The header, a TLS handshake with Python's ``ssl``, *request*, then
    close_notify and a FIN (blocking): what came back, and whether it ended
    with the server's close_notify."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ssl.create_default_context(cafile=cafile).wrap_bio(
        incoming, outgoing, server_hostname="localhost"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(HEADER)
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                sock.sendall(outgoing.read())
                data = sock.recv(65536)
                if not data:
                    raise FailTest("the server closed during the handshake") from None
                incoming.write(data)
        tls.write(request)
        try:
            tls.unwrap()  # our close_notify; the server's comes later
        except ssl.SSLWantReadError:
            pass
        sock.sendall(outgoing.read())
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while True:
            try:
                chunk = tls.read(65536)
                if not chunk:
                    return answer, True
                answer += chunk
                continue
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLZeroReturnError:
                return answer, True
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                data = b""
            if not data:
                return answer, False
            incoming.write(data)


class HalfCloseTests(TestCase):
    """A client that shuts down its sending side after its request still gets
    the answer through a ``haproxy:`` listener, as through ``tcp:``."""

    timeout = 60

    @inlineCallbacks
    def listen(self, description: str, protocol: type[Protocol]):  # type: ignore[no-untyped-def]
        servers: list[Protocol] = []

        def server() -> Protocol:
            servers.append(protocol())
            return servers[-1]

        endpoint = (
            serverFromString(reactor, description)
            if description.startswith("schannel:")
            else server_from_string(reactor, description)
        )
        port = yield endpoint.listen(Factory.forProtocol(server))
        self.addCleanup(port.stopListening)
        return port.getHost().port, servers

    @inlineCallbacks
    def test_plain_listener_half_close_reaches_the_protocol_and_the_answer_comes_back(self):  # type: ignore[no-untyped-def]
        port, servers = yield self.listen("haproxy:tcp:0:interface=127.0.0.1", _AnswerAtEnd)
        request = os.urandom(200_000)
        answer = yield deferToThread(half_close_plain, port, request)
        # Before, the FIN closed the whole connection: the protocol never
        # heard of the end of the request, and the client read nothing.
        self.assertEqual(answer, digest_line(request))
        (server,) = servers
        yield server.lost.addTimeout(10, reactor)
        self.assertTrue(server.ended)
        self.assertIsInstance(server.reason.value, ConnectionDone)
        self.assertEqual(server.transport.getPeer().host, "192.0.2.7")  # type: ignore[union-attr]

    @inlineCallbacks
    def test_tls_listener_answers_after_close_notify_and_fin(self):  # type: ignore[no-untyped-def]
        folder = Path(self.mktemp())
        folder.mkdir()
        ca = CertificateAuthority()
        ca.write(folder / "ca.pem")
        ca.issue("localhost", "127.0.0.1").write(folder / "server.pem")
        port, servers = yield self.listen(
            f"schannel:haproxy:tcp:0:interface=127.0.0.1:certificate={folder}/server.pem",
            _AnswerAtEnd,
        )
        request = os.urandom(100_000)
        answer, clean = yield deferToThread(half_close_tls, port, str(folder / "ca.pem"), request)
        # Before, the close_notify reached the protocol, but the FIN right
        # behind it closed the TCP connection under the TLS layer: no answer
        # (one written in the same reactor turn as the close_notify got out;
        # a backend's, a round trip later, did not).
        self.assertEqual((answer, clean), (digest_line(request), True))
        (server,) = servers
        yield server.lost.addTimeout(10, reactor)
        self.assertTrue(server.ended)

    @inlineCallbacks
    def test_a_protocol_that_cannot_half_close_still_ends_at_the_fin(self):  # type: ignore[no-untyped-def]
        port, servers = yield self.listen("haproxy:tcp:0:interface=127.0.0.1", _Collect)
        answer = yield deferToThread(half_close_plain, port, b"request")
        # As on a bare TCP listener: the connection ends, cleanly, at the FIN.
        self.assertEqual(answer, b"")
        (server,) = servers
        yield server.lost.addTimeout(10, reactor)
        self.assertIsInstance(server.reason.value, ConnectionDone)
        self.assertEqual(server.received, b"request")


class HalfCloseRelayTests(Edge):
    """``twist schannel --listen haproxy:...``: the relay passes the half-close on."""

    def test_half_close_passes_through_to_the_backend_and_back(self) -> None:
        backend = self.backend(DIGEST_SERVER)
        port = free_port()
        twist = Twist(
            self, "--listen", f"haproxy:tcp:{port}:interface=127.0.0.1",
            "--connect", f"tcp:127.0.0.1:{backend}",
        )
        twist.wait_for("listening on")
        payload = os.urandom(3 * 1024 * 1024)
        # Before, the client's FIN closed both connections: no answer.
        self.assertEqual(half_close_plain(port, payload), digest_line(payload))
        # The client finished first (its FIN), the backend's close followed.
        twist.wait_for(r'connection closed peer=192\.0\.2\.7:51234 .*reason="client closed"')

    def one_slot_relay(self) -> tuple[Twist, int]:
        """A relay behind a plain haproxy: listener, with one connection slot."""
        backend = self.backend(ECHO)
        port = free_port()
        twist = Twist(
            self, "--listen", f"haproxy:tcp:{port}:interface=127.0.0.1",
            "--connect", f"tcp:127.0.0.1:{backend}", "--max-connections", "1",
        )  # fmt: skip
        twist.wait_for("listening on")
        return twist, port

    def assert_served(self, port: int) -> None:
        """The next connection is served (the one slot was given back)."""
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            raw.sendall(HEADER + b"hello")
            self.assertEqual(raw.recv(5), b"hello")

    def test_a_fin_before_the_header_is_complete_refuses_it_at_once(self) -> None:
        twist, port = self.one_slot_relay()
        send_and_finish(port, b"PROXY TCP4 1.2")
        # Refused for its FIN, not later for the header timeout; before, it
        # left without a word.
        twist.wait_for(
            r"127\.0\.0\.1:\d+: PROXY header refused: the connection ended after "
            r"'PROXY TCP4 1\.2', before the header was complete"
        )
        self.assert_served(port)
        self.assertEqual(twist.output.count("PROXY header refused"), 1, twist.output)
        self.assertNotIn("not complete within", twist.output)
        self.assertNotIn("Traceback", twist.output)

    def test_a_connection_that_sends_nothing_ends_quietly_at_its_fin(self) -> None:
        # A balancer's connect-and-close health check: no line for it (one per
        # check would fill the log), and its slot is given back.
        twist, port = self.one_slot_relay()
        for _ in range(3):
            send_and_finish(port, b"")
        self.assert_served(port)
        self.assertNotIn("PROXY header refused", twist.output)
        self.assertNotIn("Traceback", twist.output)
