"""Real TLS peers for the tests: OpenSSL, GnuTLS and curl as subprocesses.

A missing tool is a test *failure*, never a silent skip: the suite's
promise is that it talked to real peers. `.ci/run` installs them.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from twisted.trial.unittest import FailTest, TestCase

__all__ = ["LISTENER", "require", "free_port", "wait_for_port", "Peer", "start_backend"]

#: The start of a backend script run as ``python script.py PORT ...``: the
#: modules backends use, and ``server`` listening on 127.0.0.1:PORT. A
#: script is this followed by its accept loop.
LISTENER = """
import hashlib, socket, struct, sys, threading
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", int(sys.argv[1])))
server.listen(512)
"""


def require(tool: str) -> str:
    """The path of *tool*; fails the test (not skips) when it is missing."""
    path = shutil.which(tool)
    if path is None:
        raise FailTest(
            f"{tool} is not installed: this test needs the real peer "
            "(apt-get install openssl gnutls-bin curl; .ci/run does it)"
        )
    return path


#: The lowest port free_port() hands out: below the kernel's ephemeral range
#: there is room for several thousand, and nothing the system runs listens
#: there on a test machine.
_LOWEST_PORT = 10000
#: The next port free_port() tries; each process starts at a random place,
#: so that two trial workers (-j) walk different parts of the range.
_next_port: int | None = None


def _unassigned_ports() -> range:
    """Ports the kernel never hands out itself (for bind() to port 0 or an
    outgoing connection): those below its ephemeral range."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return range(_LOWEST_PORT, low)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on loopback that is free right now.

    Taken below the kernel's ephemeral range: a port the kernel gave out
    for port 0 is one it may give again, to another test process listening
    on port 0 before this one's server starts (seen under ``trial -j2``:
    an example connected to another worker's silent server). A port found
    free is not handed out twice by one process.
    """
    global _next_port
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    ports = _unassigned_ports()
    if len(ports) < 1000:  # an unusual ephemeral range: let the kernel choose
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            return int(s.getsockname()[1])
    if _next_port is None:
        _next_port = random.choice(ports)
    for _ in range(len(ports)):
        port = _next_port
        _next_port = ports.start + (port + 1 - ports.start) % len(ports)
        with socket.socket(family, socket.SOCK_STREAM) as s:
            try:
                # No SO_REUSEADDR: a port with connections in TIME_WAIT is
                # passed over too.
                s.bind((host, port))
            except OSError:
                continue
            return port
    raise OSError(f"no free port on {host} between {ports.start} and {ports.stop - 1}")


def wait_for_port(port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> None:
    """Block until something accepts on *host*:*port*, or fail after *timeout*."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise FailTest(f"nothing listened on {host}:{port} within {timeout}s")


class Peer:
    """A peer process (e.g. ``openssl s_server``) run for one test.

    Use as a context manager; it is killed on exit and its output kept in
    :attr:`output` for assertions and failure messages.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        stdin: int | None = subprocess.PIPE,
        env: dict[str, str] | None = None,
    ) -> None:
        require(argv[0])
        self.argv = list(argv)
        self.output = b""
        self.process = subprocess.Popen(
            self.argv,
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )

    def __enter__(self) -> Peer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> bytes:
        if self.process.poll() is None:
            self.process.kill()
        out, _ = self.process.communicate(timeout=10)
        self.output += out or b""
        return self.output


def start_backend(test: TestCase, script: str, path: Path) -> int:
    """Run backend *script* (:data:`LISTENER` and its accept loop), saved at
    *path*, for the length of *test*; return its port once it listens."""
    path.write_text(script)
    port = free_port()
    backend = Peer([sys.executable, str(path), str(port)])
    test.addCleanup(backend.stop)
    wait_for_port(port)
    return port
