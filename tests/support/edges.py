"""The base class of the tests that run ``twist schannel`` in front of a real
backend process (:class:`Edge`: a folder, a CA-signed server certificate,
starting backends and the terminator), the backends themselves (echo,
recorder, the first-bytes recorder with waiting for its record, the
digest server that answers only at end of stream), and
reading a TLS stream to its end.
"""

from __future__ import annotations

import socket
import ssl
import sys
import tempfile
import time
from pathlib import Path

from twisted.trial.unittest import TestCase

from tests.support.peers import LISTENER, Peer, free_port, wait_for_port
from tests.support.twist import Twist
from txschannel.testing import CertificateAuthority

#: Reads each connection to its end and appends "EOF <bytes>" (a FIN) or
#: "RESET <bytes>" to the file argv[2].
RECORDER = LISTENER + """
while True:
    connection, _ = server.accept()
    size, how = 0, "EOF"
    try:
        while True:
            data = connection.recv(65536)
            if not data:
                break
            size += len(data)
    except ConnectionResetError:
        how = "RESET"
    with open(sys.argv[2], "a") as out:
        out.write(f"{how} {size}\\n")
    connection.close()
"""


#: Echoes every connection, each in a thread of its own.
ECHO = LISTENER + """
def echo(connection):
    with connection:
        try:
            while data := connection.recv(65536):
                connection.sendall(data)
        except OSError:
            pass
while True:
    connection, _ = server.accept()
    threading.Thread(target=echo, args=(connection,), daemon=True).start()
"""


#: Reads until end of stream, then answers "<length> <sha256>\n" and closes:
#: it only answers if the half-close reached it.
DIGEST_SERVER = LISTENER + """
while True:
    connection, _ = server.accept()
    with connection:
        digest, size = hashlib.sha256(), 0
        while True:
            data = connection.recv(65536)
            if not data:
                break
            digest.update(data)
            size += len(data)
        connection.sendall(f"{size} {digest.hexdigest()}\\n".encode())
"""


class Edge(TestCase):
    """A folder, a CA-signed server certificate, and helpers to start processes."""

    def setUp(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="txschannel-edges-"))
        self.ca = CertificateAuthority()
        self.ca.write(self.folder / "ca.pem")
        self.ca.issue("localhost", "127.0.0.1").write(self.folder / "server.pem")

    def backend(self, script: str, *arguments: str) -> int:
        path = self.folder / f"backend{len(list(self.folder.iterdir()))}.py"
        path.write_text(script)
        port = free_port()
        peer = Peer([sys.executable, str(path), str(port), *arguments])
        self.addCleanup(peer.stop)
        wait_for_port(port)
        return port

    def twist(self, backend: int, *extra: str, limit_files: int | None = None) -> tuple[Twist, int]:
        port = free_port()
        arguments = (
            "--listen",
            f"schannel:tcp:{port}:interface=127.0.0.1:certificate={self.folder}/server.pem",
            "--connect", f"tcp:127.0.0.1:{backend}", *extra,
        )
        limits = {} if limit_files is None else {"RLIMIT_NOFILE": limit_files}
        twist = Twist(self, *arguments, python_wrapper=self.limited(limits))
        # (No test connection: it would be a log line of its own.)
        twist.wait_for("listening on")
        return twist, port

    def limited(self, limits: dict[str, int]) -> str | None:
        """A wrapper script that sets resource *limits* for the twist process
        alone, then runs Python with the arguments after it (or None)."""
        if not limits:
            return None
        wrapper = self.folder / "limited.py"
        wrapper.write_text(
            "import os, resource, sys\n"
            + "".join(
                f"resource.setrlimit(resource.{name}, ({value}, {value}))\n"
                for name, value in limits.items()
            )
            + "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])\n"
        )
        return str(wrapper)

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.folder / "ca.pem"))
        return context

    def tls(self, port: int, timeout: float = 10.0) -> ssl.SSLSocket:
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        # suppress_ragged_eofs=False: an end without close_notify is an
        # error (SSLEOFError), and a clean close_notify reads as b"".
        return self.client_context().wrap_socket(
            raw, server_hostname="localhost", suppress_ragged_eofs=False
        )

    def open_idle(self, port: int, count: int) -> list[socket.socket]:
        """*count* connections to *port* that send nothing, closed at cleanup.

        Opened in batches smaller than the listen backlog (50), so that the
        kernel queue does not refuse them before the server gets to them.
        """
        sockets: list[socket.socket] = []
        for number in range(count):
            idle = socket.socket()
            self.addCleanup(idle.close)
            idle.setblocking(False)
            idle.connect_ex(("127.0.0.1", port))
            sockets.append(idle)
            if number % 40 == 39:
                time.sleep(0.1)
        return sockets

    def assert_relays(self, twist: Twist, port: int) -> None:
        """Three TLS clients of *port* each get their byte echoed, and the
        process never ran out of descriptors."""
        for number in range(3):
            with self.tls(port) as client:
                client.sendall(bytes([number]))
                self.assertEqual(client.recv(1), bytes([number]), twist.output)
        self.assertNotIn("out of file descriptors", twist.output)


def read_to_end(tls: ssl.SSLSocket) -> tuple[int, str]:
    """Read until the stream ends: (bytes read, "close_notify" / "no close_notify" / "reset")."""
    size = 0
    try:
        while True:
            data = tls.recv(65536)
            if not data:
                return size, "close_notify"
            size += len(data)
    except ssl.SSLEOFError:
        return size, "no close_notify"
    except ConnectionResetError:
        return size, "reset"


#: Writes the first bytes of each connection (all that arrive within a
#: moment of the first) to argv[2], hex-encoded, one line per connection.
RECORD_BYTES = LISTENER + """
import binascii
while True:
    connection, _ = server.accept()
    with connection:
        connection.settimeout(2)
        data = b""
        try:
            while len(data) < 4096:
                chunk = connection.recv(4096)
                if not chunk:
                    break
                data += chunk
                if data.endswith(b"hello"):
                    break
        except OSError:
            pass
        if data:
            with open(sys.argv[2], "a") as out:
                out.write(binascii.hexlify(data).decode() + "\\n")
        connection.sendall(b"ok")
"""


def wait_for_record(path: Path, count: int = 1) -> list[str]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        # (The first line may be a readiness probe's; it sent nothing.)
        lines = path.read_text().split() if path.exists() else []
        if len(lines) >= count:
            return lines
        time.sleep(0.05)
    raise AssertionError(f"the backend recorded nothing in {path}")
