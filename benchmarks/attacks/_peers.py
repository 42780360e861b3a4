"""What every attack script needs: a ``twist schannel`` from this checkout,
loopback backends, throw-away certificates and a TLS client.

Everything listens on 127.0.0.1, every wait is bounded, and the processes
and threads started here end with the script (``Twist.stop``, daemon
threads).
"""

from __future__ import annotations

import os
import re
import resource
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from txschannel.testing import CertificateAuthority, IssuedCertificate  # noqa: E402

__all__ = [
    "REPO", "Answerer", "CertificateAuthority", "Certificates", "IssuedCertificate", "Twist",
    "free_port", "raise_nofile",
]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def raise_nofile() -> None:
    """Let this (attacking) process open as many descriptors as it may."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Certificates:
    """A throw-away CA (``ca.pem``) and a server certificate for localhost
    and 127.0.0.1 (``server.pem``, key included) in a fresh folder."""

    def __init__(self, *names: str) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="txschannel-attack-"))
        self.ca = CertificateAuthority()
        self.ca_file = self.ca.write(self.folder / "ca.pem")
        self.server_file = self.ca.issue(*(names or ("localhost", "127.0.0.1"))).write(
            self.folder / "server.pem")

    def client_context(self) -> ssl.SSLContext:
        """A client context trusting only this CA."""
        return ssl.create_default_context(cafile=str(self.ca_file))

    def listen(self, port: int, extra: str = "", kind: str = "schannel:tcp") -> str:
        """The ``--listen`` endpoint serving ``server.pem`` on 127.0.0.1:*port*."""
        return f"{kind}:{port}:interface=127.0.0.1:certificate={self.server_file}{extra}"


class Twist:
    """One ``twist schannel`` process run from this checkout, in a process
    group of its own, its log (text format) in a file read as it grows.

    :param nofile: lower RLIMIT_NOFILE (soft and hard) of the process to
        this, for attacks about descriptors.
    """

    def __init__(self, *arguments: str, nofile: int | None = None) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="txschannel-attack-home-"))
        self.log_path = self.home / "twist.log"
        env = {k: v for k, v in os.environ.items() if k != "XDG_STATE_HOME"}
        env["HOME"] = str(self.home)
        env["PYTHONPATH"] = f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"

        def limit() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "twisted", "--log-format=text", "schannel", *arguments],
                stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env,
                start_new_session=True, preexec_fn=limit,
            )

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        """The first match of *pattern* in the log; exits the script if none comes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(pattern, self.output)
            if match:
                return match
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        sys.exit(f"twist schannel never logged {pattern!r}:\n{self.output}")

    def descriptors(self) -> int:
        """How many descriptors the process has open."""
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    def rss_kib(self) -> int:
        """The process's resident set size in KiB."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def close_reasons(self) -> dict[str, int]:
        """How many 'connection closed' lines give each reason."""
        counts: dict[str, int] = {}
        for reason in re.findall(r'reason="([^"]*)"', self.output):
            counts[reason] = counts.get(reason, 0) + 1
        return counts

    def stop(self) -> None:
        try:
            os.killpg(self.process.pid, 9)
        except ProcessLookupError:
            pass
        self.process.wait(10)

    def __enter__(self) -> Twist:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Answerer:
    """A plain TCP backend on 127.0.0.1 in daemon threads.

    ``echo``: sends back what it reads. ``http``: reads one request head
    and answers *body* as an HTTP/1.0 response, then closes.
    """

    def __init__(self, mode: str = "http", body: bytes = b"hello\n") -> None:
        self.mode = mode
        self.body = body
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(512)
        self.port = int(self.sock.getsockname()[1])
        self.requests = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

    def _serve(self, connection: socket.socket) -> None:
        with connection:
            try:
                if self.mode == "echo":
                    while data := connection.recv(65536):
                        connection.sendall(data)
                    return
                connection.settimeout(10)
                head = b""
                while b"\r\n\r\n" not in head and len(head) < 65536:
                    data = connection.recv(65536)
                    if not data:
                        return
                    head += data
                self.requests += 1
                connection.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n"
                                   % len(self.body) + self.body)
            except OSError:
                pass
