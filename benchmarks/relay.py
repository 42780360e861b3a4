"""TLS-terminating relay: ``twist schannel`` next to stunnel4 and hitch.

Not a test: it measures and prints, nothing asserts, and CI does not run it.

Each terminator listens with TLS on loopback and relays to the same plain
backend (a small threaded HTTP/1.0 responder in a child process). Clients
are C programs, so that the terminator is what is measured:

- throughput: ``curl`` downloads a large body (default 256 MiB) through the
  terminator; MB/s = body bytes / curl's total time (MB = 10^6 bytes);
- connections per second: ``openssl s_time -new -www /small`` opens
  connections one after another for a few seconds, each with a full
  handshake and one small request and response.

The terminators take turns within each round and the best round is kept, so
that other load on the machine hurts every row alike. Ratios are against
stunnel4. Run from the repository root::

    python benchmarks/relay.py            # 3 rounds, about 2 minutes
    python benchmarks/relay.py --quick    # 1 round, smaller body

Needs ``curl``, ``openssl``, ``stunnel4`` and ``hitch`` on the PATH
(Debian: ``apt-get install stunnel4 hitch``); a missing terminator is shown
as ``-``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from txschannel.testing import CertificateAuthority  # noqa: E402

BACKEND = r"""
import socket, sys, threading
big = int(sys.argv[2])
block = b"x" * (1 << 20)
small = b"HTTP/1.0 200 OK\r\nContent-Length: 13\r\n\r\nhello, world\n"

def serve(connection):
    with connection:
        request = b""
        while b"\r\n\r\n" not in request:
            data = connection.recv(65536)
            if not data:
                return
            request += data
        if request.startswith(b"GET /big"):
            connection.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % big)
            left = big
            view = memoryview(block)
            while left:
                n = min(left, len(block))
                connection.sendall(view[:n])
                left -= n
        else:
            connection.sendall(small)

server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", int(sys.argv[1])))
server.listen(512)
while True:
    connection, _ = server.accept()
    threading.Thread(target=serve, args=(connection,), daemon=True).start()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listened on 127.0.0.1:{port} within {timeout}s")


class Terminator:
    """One TLS terminator process configured for the benchmark."""

    def __init__(self, name: str, argv: list[str], port: int, log: Path) -> None:
        self.name = name
        self.argv = argv
        self.port = port
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        environment = {**os.environ, "PYTHONPATH": str(REPO)}
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=environment
            )
        wait_for_port(self.port)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def throughput(port: int, ca: Path, size: int) -> float:
    """MB/s of one curl download of the big body through *port*."""
    result = subprocess.run(
        ["curl", "-sS", "--max-time", "120", "--cacert", str(ca), "-o", "/dev/null",
         "-w", "%{size_download} %{time_total}", f"https://localhost:{port}/big"],
        capture_output=True, text=True, timeout=150,
    )
    if result.returncode != 0:
        raise RuntimeError(f"curl failed: {result.stderr.strip()}")
    downloaded, seconds = result.stdout.split()
    if int(downloaded) != size:
        raise RuntimeError(f"curl got {downloaded} bytes, expected {size}")
    return size / float(seconds) / 1e6


def connections_per_second(port: int, ca: Path, seconds: int) -> float:
    """Full handshakes plus one small request per second, one connection at a time."""
    started = time.monotonic()
    result = subprocess.run(
        ["openssl", "s_time", "-connect", f"127.0.0.1:{port}", "-new", "-time", str(seconds),
         "-www", "/small", "-CAfile", str(ca), "-verify", "1"],
        capture_output=True, text=True, timeout=seconds + 60,
    )
    elapsed = time.monotonic() - started
    # s_time's own "connections in N.NNs" is its *CPU* time; count against
    # the wall clock instead.
    match = re.search(r"(\d+) connections in \d+ real seconds", result.stdout)
    if match is None:
        raise RuntimeError(
            f"s_time printed no count: {result.stdout[-300:]} {result.stderr[-300:]}"
        )
    return int(match.group(1)) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--seconds", type=int, default=5, help="s_time run length")
    parser.add_argument("--quick", action="store_true", help="1 round, 64 MiB, 3 s")
    arguments = parser.parse_args()
    if arguments.quick:
        arguments.rounds, arguments.size_mib, arguments.seconds = 1, 64, 3
    for tool in ("curl", "openssl"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is needed on the PATH")
    size = arguments.size_mib * 1024 * 1024

    folder = Path(tempfile.mkdtemp(prefix="txschannel-bench-relay-"))
    ca = CertificateAuthority()
    ca.write(folder / "ca.pem")
    leaf = ca.issue("localhost", "127.0.0.1")
    leaf.write(folder / "server.pem")  # key + certificate, for twist and hitch
    (folder / "cert.pem").write_bytes(leaf.certificate_pem)
    (folder / "key.pem").write_bytes(leaf.private_key_pem)

    backend_port = free_port()
    (folder / "backend.py").write_text(BACKEND)
    backend = subprocess.Popen([sys.executable, str(folder / "backend.py"),
                                str(backend_port), str(size)])
    wait_for_port(backend_port)

    terminators: list[Terminator] = []
    port = free_port()
    terminators.append(Terminator(
        "twist schannel",
        [sys.executable, "-m", "twisted", "--log-format=text",
         f"--log-file={folder / 'twist.log'}", "schannel",
         "--listen", f"schannel:tcp:{port}:interface=127.0.0.1:certificate={folder}/server.pem",
         "--connect", f"tcp:127.0.0.1:{backend_port}"],
        port, folder / "twist.out",
    ))
    stunnel = shutil.which("stunnel4") or shutil.which("stunnel")
    if stunnel:
        port = free_port()
        (folder / "stunnel.conf").write_text(
            f"foreground = yes\npid =\noutput = {folder}/stunnel.log\n"
            f"[relay]\naccept = 127.0.0.1:{port}\nconnect = 127.0.0.1:{backend_port}\n"
            f"cert = {folder}/cert.pem\nkey = {folder}/key.pem\n"
            # As twist schannel and hitch do: no Nagle delay on either side.
            "socket = l:TCP_NODELAY=1\nsocket = r:TCP_NODELAY=1\n"
        )
        terminators.append(Terminator("stunnel4", [stunnel, str(folder / "stunnel.conf")],
                                      port, folder / "stunnel.out"))
    hitch = shutil.which("hitch")
    if hitch:
        port = free_port()
        terminators.append(Terminator(
            "hitch",
            [hitch, f"--frontend=[127.0.0.1]:{port}", f"--backend=[127.0.0.1]:{backend_port}",
             "--user=nobody" if os.geteuid() == 0 else "--quiet",
             f"--ocsp-dir={folder}", str(folder / "server.pem")],
            port, folder / "hitch.out",
        ))

    best: dict[str, dict[str, float]] = {t.name: {} for t in terminators}
    measures: list[tuple[str, Callable[[Terminator], float]]] = [
        ("MB/s", lambda t: throughput(t.port, folder / "ca.pem", size)),
        ("conn/s", lambda t: connections_per_second(t.port, folder / "ca.pem",
                                                    arguments.seconds)),
    ]
    try:
        for terminator in terminators:
            terminator.start()
        for round_number in range(arguments.rounds):
            for terminator in terminators:
                for label, measure in measures:
                    try:
                        value = measure(terminator)
                    except (RuntimeError, subprocess.TimeoutExpired) as e:
                        print(f"round {round_number + 1}: {terminator.name} {label}: {e}",
                              file=sys.stderr)
                        continue
                    best[terminator.name][label] = max(best[terminator.name].get(label, 0.0),
                                                       value)
            print(f"round {round_number + 1} of {arguments.rounds} done", file=sys.stderr)
    finally:
        for terminator in terminators:
            terminator.stop()
        backend.kill()
        backend.wait(timeout=10)

    reference = best.get("stunnel4", {})
    print(f"\nTLS termination on loopback, {os.cpu_count()} CPUs, body {arguments.size_mib} MiB, "
          f"best of {arguments.rounds} round(s)")
    print(f"{'terminator':<16}{'MB/s':>10}{'vs stunnel':>12}{'conn/s':>10}{'vs stunnel':>12}")
    for terminator in terminators:
        row = best[terminator.name]
        cells = []
        for label in ("MB/s", "conn/s"):
            value = row.get(label)
            ratio = (
                f"{value / reference[label]:.2f}" if value and reference.get(label) else "-"
            )
            cells.append((f"{value:.0f}" if value else "-", ratio))
        print(f"{terminator.name:<16}{cells[0][0]:>10}{cells[0][1]:>12}"
              f"{cells[1][0]:>10}{cells[1][1]:>12}")
    print(f"\n(logs and configuration in {folder})")


if __name__ == "__main__":
    main()
