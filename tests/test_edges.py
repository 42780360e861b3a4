"""``twist schannel`` at its hostile edges: bounded buffers, aborts passed on as
aborts, peer text that cannot forge log lines, and running out of descriptors.

Each test runs a real ``twist schannel`` process on loopback with a real
backend process (or none), and real TLS clients (Python's ``ssl``, curl).
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

from OpenSSL import SSL
from twisted.trial.unittest import TestCase

from tests.support import hellos
from tests.support.edges import ECHO, RECORDER, Edge, read_to_end
from tests.support.peers import LISTENER, free_port, require
from tests.support.twist import Twist, curl

#: Accepts connections one after another; waits for the first bytes from
#: the client (so that the relay is surely connected), sends argv[2] bytes,
#: then resets.
RESET_AFTER = LISTENER + """
while True:
    connection, _ = server.accept()
    try:
        connection.settimeout(10)
        connection.recv(1)
        connection.sendall(b"r" * int(sys.argv[2]))
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass  # (the readiness probe does not read)
    connection.close()
"""


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


class AbortTests(Edge):
    """An abort on one side reaches the other side as an abort, never as a clean end."""

    def test_a_backend_reset_after_a_million_bytes_is_not_a_clean_end_for_the_client(self) -> None:
        backend = self.backend(RESET_AFTER, "1000000")
        twist, port = self.twist(backend)
        with self.tls(port) as tls:
            tls.sendall(b"?")
            size, how = read_to_end(tls)
        self.assertNotEqual(how, "close_notify", f"{size} bytes, then a clean close_notify")
        self.assertLessEqual(size, 1000000)
        twist.wait_for(r'connection closed .*reason="backend lost: ')

    def test_a_client_that_ends_without_close_notify_resets_the_backend(self) -> None:
        record = self.folder / "record.txt"
        backend = self.backend(RECORDER, str(record))
        twist, port = self.twist(backend)
        tls = self.tls(port)
        tls.sendall(b"q" * 5000)
        time.sleep(0.3)
        # The TCP connection ends (FIN) with no TLS close_notify before it.
        socket.socket(fileno=tls.detach()).close()
        self.waitForLine(record)
        # (The first line is wait_for_port's own connection.)
        self.assertEqual(record.read_text().split()[-2], "RESET", record.read_text())
        twist.wait_for(r'connection closed .*reason="client lost: ')

    def test_a_clean_client_close_is_a_clean_backend_close(self) -> None:
        record = self.folder / "record.txt"
        backend = self.backend(RECORDER, str(record))
        twist, port = self.twist(backend)
        tls = self.tls(port)
        tls.sendall(b"q" * 5000)
        raw = tls.unwrap()  # close_notify, then the TCP close
        raw.close()
        self.waitForLine(record)
        self.assertEqual(record.read_text().split()[-2:], ["EOF", "5000"])

    def test_an_unreachable_backend_aborts_the_client(self) -> None:
        require("curl")
        twist, port = self.twist(free_port())
        result = curl("--cacert", str(self.folder / "ca.pem"), f"https://localhost:{port}/")
        # 52 is curl's "Empty reply from server": what a clean close looked like.
        self.assertNotIn(result.returncode, (0, 52), result.stderr)
        with self.tls(port) as tls:
            try:
                tls.sendall(b"GET / HTTP/1.0\r\n\r\n")
            except (ssl.SSLEOFError, ConnectionResetError, BrokenPipeError):
                pass  # the abort came first
            else:
                self.assertNotEqual(read_to_end(tls)[1], "close_notify")
        twist.wait_for(r'reason="connect endpoint failed: .*refused')

    def waitForLine(self, path: Path) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if path.exists() and path.read_text().count("\n") >= 2:
                return
            time.sleep(0.05)
        self.fail(f"the backend recorded nothing in {path}")


class BufferTests(Edge):
    """A client that sends without end, and never reads, is not buffered."""

    def flood(self, port: int, seconds: float) -> int:
        """Complete a handshake, then send 16 KiB writes for *seconds* or until refused."""
        sent = 0
        with self.tls(port, timeout=1.0) as tls:
            chunk = os.urandom(16384)
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                try:
                    sent += tls.send(chunk)
                except (TimeoutError, ssl.SSLWantWriteError):
                    continue
                except (OSError, ssl.SSLError):
                    break
        return sent

    def test_a_client_flooding_an_unreachable_backend_is_not_buffered(self) -> None:
        twist, port = self.twist(free_port())
        before = rss_kib(twist.process.pid)
        sent = self.flood(port, 3.0)
        after = rss_kib(twist.process.pid)
        # Before the fix, every byte was kept for the backend: about 1 GB here.
        self.assertLess(after - before, 20 * 1024, f"sent {sent} bytes")
        twist.wait_for(r'reason="connect endpoint failed: ')

    def test_a_client_flooding_after_the_backend_closed_is_not_buffered(self) -> None:
        backend = self.backend(RESET_AFTER, "10")
        twist, port = self.twist(backend)
        before = rss_kib(twist.process.pid)
        sent = self.flood(port, 3.0)
        after = rss_kib(twist.process.pid)
        self.assertLess(after - before, 20 * 1024, f"sent {sent} bytes")


class LogLineTests(Edge):
    """Peer-supplied text is escaped in text logs: one connection, one line."""

    def test_a_server_name_with_a_newline_cannot_forge_a_line(self) -> None:
        twist, port = self.twist(self.backend(ECHO))
        forged = "localhost\n2026-12-01T00:00:00+0000 [txschannel#info] forged"
        # Python's ssl refuses such a server name itself; pyOpenSSL sends
        # whatever bytes it is given, as a hostile client would.
        openssl = SSL.Context(SSL.TLS_CLIENT_METHOD)
        connection = SSL.Connection(openssl, socket.create_connection(("127.0.0.1", port)))
        connection.set_tlsext_host_name(forged.encode("ascii"))
        connection.set_connect_state()
        connection.do_handshake()
        connection.sendall(b"ping")
        connection.recv(4)
        connection.shutdown()
        connection.sock_shutdown(socket.SHUT_RDWR)
        connection.close()
        line = twist.wait_for(r"connection closed [^\n]*")
        self.assertIn('server_name="localhost\\\\x0a2026-12-01T00:00:00', line.group(0))
        self.assertNotIn("\n2026-12-01T00:00:00+0000 [txschannel#info] forged", twist.output)


class DescriptorTests(Edge):
    """Out of file descriptors: one warning naming the limit, and aborts."""

    def test_running_out_of_descriptors_is_said_once_and_aborts_clients(self) -> None:
        backend = self.backend(ECHO)
        limit = 48
        twist, port = self.twist(backend, limit_files=limit)
        outcomes: list[str] = []
        lock = threading.Lock()
        held: list[ssl.SSLSocket] = []

        def client() -> None:
            try:
                tls = self.tls(port, timeout=5.0)
            except (OSError, ssl.SSLError) as e:
                outcome = f"no handshake: {type(e).__name__}"
            else:
                try:
                    tls.sendall(b"ping")
                    data = tls.recv(4)
                    outcome = "served" if data == b"ping" else "clean close" if not data else "?"
                except TimeoutError:
                    outcome = "waiting"
                except (ssl.SSLEOFError, ConnectionResetError, ssl.SSLError) as e:
                    outcome = f"aborted: {type(e).__name__}"
                with lock:
                    held.append(tls)
            with lock:
                outcomes.append(outcome)

        threads = [threading.Thread(target=client) for _ in range(60)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        for tls in held:
            tls.close()
        summary = {o: outcomes.count(o) for o in set(outcomes)}
        self.assertNotIn("clean close", summary, summary)
        self.assertGreater(summary.get("served", 0), 0, summary)
        self.assertGreater(sum(n for o, n in summary.items() if o.startswith("aborted")), 0,
                           summary)
        warning = twist.wait_for(r"out of file descriptors \(the open-files limit, "
                                 r"ulimit -n, is (\d+)\)")
        self.assertEqual(int(warning.group(1)), limit)
        self.assertEqual(twist.output.count("out of file descriptors"), 1, twist.output)
        self.assertNotIn("cannot reach", twist.output)


class PeerTextTests(TestCase):
    """What PeerText and the logfmt line make of hostile strings."""

    def test_control_and_format_characters_are_escaped_in_text_not_in_json(self) -> None:
        from twisted.logger import eventAsJSON, formatEvent

        from txschannel.peertext import PeerText, printable
        from txschannel.terminator.gate import _logfmt

        hostile = "a\nb\x00c\x1b[31m\u202ed\\e"
        self.assertEqual(printable(hostile), "a\\x0ab\\x00c\\x1b[31m\\u202ed\\\\e")
        event = {"log_format": "refused {why}", "why": PeerText(hostile)}
        self.assertEqual(formatEvent(event), "refused " + printable(hostile))
        self.assertIn('"why": "a\\nb\\u0000c', eventAsJSON(event))
        self.assertNotIn("\n", _logfmt(hostile))
        self.assertNotIn("\x00", _logfmt("CN=x\x00y"))


class InspectorBodyTests(Edge):
    """The inspector answers a POST without keeping its body (memory or disk)."""

    def test_a_large_body_is_counted_not_kept(self) -> None:
        require("curl")
        port = free_port()
        # No file the process writes may grow past 4 MiB (twisted.web puts
        # bodies over 100 KB in a temporary file; the kernel would stop it).
        twist = Twist(
            self, "--listen",
            f"schannel:tcp:{port}:interface=127.0.0.1:certificate={self.folder}/server.pem",
            python_wrapper=self.limited({"RLIMIT_FSIZE": 4 * 1024 * 1024}),
        )
        twist.wait_for("listening on")
        before = rss_kib(twist.process.pid)
        body = self.folder / "body.bin"
        body.write_bytes(os.urandom(64 * 1024 * 1024))
        result = curl("--cacert", str(self.folder / "ca.pem"), "--data-binary", f"@{body}",
                      "-H", "Content-Type: application/octet-stream",
                      f"https://localhost:{port}/?format=json")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn(b'"method": "POST"', result.stdout)
        self.assertTrue(twist.process.poll() is None, twist.output)
        self.assertLess(rss_kib(twist.process.pid) - before, 8 * 1024)
        body.unlink()


class StalledHandshakeTests(Edge):
    """Clients that send most of a large ClientHello and go silent: each costs
    about what it sent, the listener's budget refuses the rest with a log
    line, and the memory is given back when they leave."""

    def test_stalled_hellos_are_bounded_refused_past_the_budget_and_given_back(self) -> None:
        port = free_port()
        twist = Twist(
            self, "--listen",
            f"schannel:tcp:{port}:interface=127.0.0.1:certificate={self.folder}/server.pem"
            ":handshakeTimeout=60:handshakeMemory=8M",
        )
        twist.wait_for("listening on")
        time.sleep(0.5)
        baseline = rss_kib(twist.process.pid)
        stalled = hellos.claimed_client_hello(130816, 64000)
        sockets = []
        for _ in range(300):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            try:
                sock.sendall(stalled)
            except OSError:
                pass  # refused (reset) while sending
            sockets.append(sock)
        time.sleep(1.5)
        peak = rss_kib(twist.process.pid)
        refusals = twist.wait_for(r"refused (\d+) new handshake\(s\)")
        self.assertGreater(int(refusals.group(1)), 0)
        # 8 MiB of budget admits about 131 of them; before the fix every one
        # was admitted and cost about 200 KB (60 MB here).
        self.assertLess(peak - baseline, 20 * 1024, (baseline, peak))
        for sock in sockets:
            sock.close()
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            after = rss_kib(twist.process.pid)
            if after - baseline < 6 * 1024:
                break
            time.sleep(0.5)
        self.assertLess(after - baseline, 6 * 1024, (baseline, peak, after))


class LargeHelloTests(Edge):
    """A real client's large ClientHello completes the handshake."""

    def test_openssl_s_client_with_a_65_kb_hello_is_served(self) -> None:
        port = free_port()
        twist = Twist(
            self, "--listen",
            f"schannel:tcp:{port}:interface=127.0.0.1:certificate={self.folder}/server.pem",
        )
        twist.wait_for("listening on")
        # 300 protocol names of 215 bytes, then one the inspector speaks: an
        # ALPN extension of 64,813 bytes, which makes s_client's hello 65,127
        # bytes on the wire, about as large as OpenSSL 3.0's s_client can make
        # one (all extensions together may hold 65,535 bytes). Hellos past
        # 64 KiB, up to OpenSSL's limit, are built byte by byte and answered
        # by OpenSSL in tests/test_protocol.py (LimitTests).
        names = [f"x{index:03d}" + "y" * 211 for index in range(300)] + ["http/1.1"]
        result = subprocess.run(
            [require("openssl"), "s_client", "-connect", f"127.0.0.1:{port}",
             "-servername", "localhost", "-CAfile", str(self.folder / "ca.pem"),
             "-alpn", ",".join(names), "-ign_eof"],
            input=b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n", capture_output=True,
            timeout=60,
        )
        output = result.stdout.decode(errors="replace")
        self.assertIn("ALPN protocol: http/1.1", output, result.stderr[-2000:])
        self.assertIn("HTTP/1.0 200", output)
        self.assertIn("Verify return code: 0 (ok)", output)
        line = twist.wait_for(r"connection closed [^\n]*")
        self.assertNotIn("exceeded", line.group(0))
