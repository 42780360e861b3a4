"""What ``twist schannel`` logs when a connection ends: who ended it, and how.

Real ``twist schannel`` processes on loopback, real backends (Python
processes), and real clients: ``openssl s_client``, curl and Python's
``ssl``. Each test reads the process's log.
"""

from __future__ import annotations

import re
import socket
import ssl
import struct
import subprocess

from tests.support.edges import Edge
from tests.support.peers import LISTENER, free_port, require
from tests.support.twist import Twist, curl

#: Answers a connection's first bytes with a short HTTP response, then
#: reads until the client ends its side, and only then closes.
ANSWER_THEN_WAIT = LISTENER + """
def serve(connection):
    with connection:
        try:
            connection.settimeout(30)
            if not connection.recv(65536):
                return
            connection.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: 5\\r\\n\\r\\nhello")
            while connection.recv(65536):
                pass
        except OSError:
            pass
while True:
    connection, _ = server.accept()
    threading.Thread(target=serve, args=(connection,), daemon=True).start()
"""

#: Answers a connection's first bytes with argv[2] bytes, then closes.
BIG_ANSWER = LISTENER + """
while True:
    connection, _ = server.accept()
    try:
        connection.settimeout(30)
        if connection.recv(65536):
            connection.sendall(b"x" * int(sys.argv[2]))
    except OSError:
        pass
    connection.close()
"""


class CloseLineTests(Edge):
    """The close line names who ended first, and words an ordinary close as one."""

    def start(self, backend: int, *extra: str) -> tuple[Twist, int]:
        port = free_port()
        twist = Twist(
            self, "--listen",
            f"schannel:tcp:{port}:interface=127.0.0.1:certificate={self.folder}/server.pem",
            "--connect", f"tcp:127.0.0.1:{backend}", *extra,
        )
        twist.wait_for("listening on")
        return twist, port

    def test_a_client_close_notify_first_is_the_client_ending(self) -> None:
        twist, port = self.start(self.backend(ANSWER_THEN_WAIT))
        # s_client sends its request, then close_notify at the end of its
        # input; the backend answers and closes only after that.
        result = subprocess.run(
            [require("openssl"), "s_client", "-connect", f"127.0.0.1:{port}",
             "-CAfile", str(self.folder / "ca.pem"), "-servername", "localhost"],
            input=b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n", capture_output=True, timeout=30,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        twist.wait_for(r'connection closed .*reason="client closed"')
        self.assertNotIn("backend closed", twist.output)

    def test_a_backend_that_closes_first_is_the_backend_ending(self) -> None:
        twist, port = self.start(self.backend(BIG_ANSWER, "10"))
        result = curl("--cacert", str(self.folder / "ca.pem"), "--http0.9",
                      f"https://localhost:{port}/", "--resolve", f"localhost:{port}:127.0.0.1")
        self.assertEqual(result.stdout, b"x" * 10, result.stderr)
        twist.wait_for(r'connection closed .*bytes_out=10 .*reason="backend closed')

    def test_a_client_closing_without_close_notify_after_its_exchange_is_ordinary(self) -> None:
        twist, port = self.start(self.backend(ANSWER_THEN_WAIT))
        # As a browser ends a connection it no longer needs: TCP FIN, no
        # close_notify, after the whole response.
        with self.tls(port) as client:
            client.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            answer = b""
            while not answer.endswith(b"hello"):
                answer += client.recv(100)
            client.shutdown(socket.SHUT_RDWR)
        line = twist.wait_for(r"\[txschannel#(\w+)\] connection closed .*")
        self.assertIn('reason="client closed without close_notify"', line.group(0))
        self.assertEqual(line.group(1), "info", line.group(0))
        self.assertNotIn("truncated", twist.output)

    def test_a_stream_cut_by_a_reset_mid_response_stays_a_warning(self) -> None:
        twist, port = self.start(self.backend(BIG_ANSWER, "20000000"))
        client = self.tls(port)
        client.sendall(b"GET")
        client.recv(100)
        # A reset with most of the response still on its way.
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
        line = twist.wait_for(r"\[txschannel#(\w+)\] connection closed .*")
        self.assertEqual(line.group(1), "warn", line.group(0))
        self.assertIn("client lost", line.group(0))
        self.assertIn("its data may be incomplete", line.group(0))


class RouteRefusalLogTests(Edge):
    """Every refused --route name is logged, escaped, in the connection's own lines."""

    def test_every_refusal_names_the_server_name(self) -> None:
        backend = self.backend(BIG_ANSWER, "1")
        port = free_port()
        twist = Twist(
            self, "--listen",
            f"schannel:tcp:{port}:interface=127.0.0.1:certificate={self.folder}/server.pem",
            "--route", f"localhost=tcp:127.0.0.1:{backend}",
        )
        twist.wait_for("listening on")
        context = self.client_context()
        names = ["one.localhost", "two.localhost", "three.localhost"]
        for name in names[:2]:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
                with self.assertRaises(ssl.SSLError):
                    context.wrap_socket(raw, server_hostname=name)
        # A name no client library would send: quotes, and a new line.
        odd = 'three.localhost"\nforged=1'
        subprocess.run(
            [require("openssl"), "s_client", "-connect", f"127.0.0.1:{port}",
             "-servername", odd],
            input=b"", capture_output=True, timeout=30,
        )
        for name in names[:2]:
            twist.wait_for(
                rf"TLS handshake with \S+ failed: .*refused server name '{re.escape(name)}'"
            )
            twist.wait_for(
                rf"connection closed .*reason=\".*refused server name '{re.escape(name)}'"
            )
        # The odd name is escaped: one line, its quote and new line shown.
        twist.wait_for(r"refused server name 'three\.localhost\\+\"\\+n")
        self.assertNotIn("\nforged=1", twist.output)
        self.assertEqual(twist.output.count("connection closed"), 3, twist.output)


class HandshakeDebugLineTests(Edge):
    """The completed handshake's debug line: written with --log-level=debug,
    as it always was, and not even built at twist's default level."""

    def start(self, backend: int, *twist_options: str) -> tuple[Twist, int]:
        port = free_port()
        twist = Twist(
            self, "--listen",
            f"schannel:tcp:{port}:interface=127.0.0.1:certificate={self.folder}/server.pem",
            "--connect", f"tcp:127.0.0.1:{backend}", twist_options=twist_options,
        )
        twist.wait_for("listening on")
        return twist, port

    def handshake(self, port: int) -> None:
        context = ssl.create_default_context(cafile=str(self.folder / "ca.pem"))
        with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
                tls.recv(65536)

    def test_debug_level_writes_the_handshake_line(self) -> None:
        twist, port = self.start(self.backend(ANSWER_THEN_WAIT), "--log-level=debug")
        self.handshake(port)
        twist.wait_for(
            r"TLS handshake with 127\.0\.0\.1:\d+ done: TLSv1\.3 \S+, ALPN None, "
            r"server name localhost"
        )

    def test_default_level_writes_none(self) -> None:
        twist, port = self.start(self.backend(ANSWER_THEN_WAIT))
        self.handshake(port)
        twist.wait_for("connection closed")
        self.assertNotIn("TLS handshake with", twist.output)
