"""Handshake cost in instructions: the server's user-space instruction count
per connection, counted by valgrind's callgrind.

Run from the repository root (needs valgrind and openssl)::

    python benchmarks/instructions.py              # 100 connections per row, about 4 minutes
    python benchmarks/instructions.py --connections 300

CPU time (``transport.py``) is what a deployment pays, but on a shared or
virtual machine it moves by 10-25% from run to run. An instruction count is
the same on every run of the same code, whatever else the machine does, so
this is the figure to compare two versions of txschannel with. It leaves
out the kernel (system calls, TCP) and says nothing about cache misses or
how many instructions a cycle retires, so it is not a substitute for the
CPU-time table.

Each server (txschannel, Twisted's TLSMemoryBIOProtocol, plaintext TCP and
``openssl s_server``) runs under ``valgrind --tool=callgrind``. A Python
``ssl`` client in this process makes a few warm-up connections, the counters
are zeroed, it makes N more, and the counters are dumped; the count is
divided by N. Rows: a full TLS 1.3 handshake, a full TLS 1.2 handshake and a
resumed TLS 1.2 handshake (the client offers the previous session); for
plaintext TCP, a connection that sends 300 bytes and closes, which is the
part of every row that is Twisted's own. Everything is on loopback.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from transport import (  # noqa: E402
    HOST,
    LABELS,
    free_port,
    make_certificates,
    plain_connection,
    wait_for_port,
)

KINDS = ("schannel", "twisted", "plain", "s_server")
MODES = ("full TLS1.3", "full TLS1.2", "resumed TLS1.2")


class CountedServer:
    """A server process under callgrind, its counters zeroed and dumped on demand."""

    def __init__(self, kind: str, certificate: str, folder: str) -> None:
        self.kind = kind
        self.out = os.path.join(folder, f"callgrind.{kind}")
        valgrind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={self.out}"]
        if kind == "s_server":
            self.port = free_port()
            command = [
                "openssl", "s_server", "-accept", f"{HOST}:{self.port}",
                "-cert", certificate, "-key", certificate, "-quiet", "-naccept", "10000000",
            ]
            self.process = subprocess.Popen(
                valgrind + command, stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            wait_for_port(self.port, timeout=120)
        else:
            script = str(Path(__file__).resolve().parent / "transport.py")
            self.process = subprocess.Popen(
                valgrind + [sys.executable, script, "serve", kind, certificate, "0"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                cwd=Path(__file__).resolve().parent.parent,
            )
            assert self.process.stdout is not None
            line = self.process.stdout.readline()
            if not line.startswith("READY"):
                self.stop()
                raise RuntimeError(f"{kind} server under valgrind did not start: {line!r}")
            self.port = int(line.split()[1])
        self.dumps = 0

    def control(self, option: str) -> None:
        subprocess.run(["callgrind_control", option, str(self.process.pid)],
                       check=True, capture_output=True, timeout=120)

    def instructions(self) -> int:
        """Dump the counters; the instructions since the last zeroing."""
        self.control("-d")
        self.dumps += 1
        deadline = time.monotonic() + 60
        pattern = f"{self.out}.*{self.dumps}"
        while time.monotonic() < deadline:
            for name in glob.glob(pattern):
                text = Path(name).read_text(errors="replace")
                match = re.search(r"^(?:summary|totals): (\d+)", text, re.MULTILINE)
                if match:
                    return int(match.group(1))
            time.sleep(0.2)
        raise RuntimeError(f"no callgrind dump {pattern}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(30)


_CONTEXTS: dict[tuple[str, str], ssl.SSLContext] = {}


def client_context(ca: str, mode: str) -> ssl.SSLContext:
    """One per mode: a session can only be offered through the context it came from."""
    if (ca, mode) in _CONTEXTS:
        return _CONTEXTS[ca, mode]
    context = _CONTEXTS[ca, mode] = ssl.create_default_context(cafile=ca)
    version = ssl.TLSVersion.TLSv1_3 if mode.endswith("1.3") else ssl.TLSVersion.TLSv1_2
    context.minimum_version = context.maximum_version = version
    return context


def connect(port: int, ca: str, mode: str, count: int, session: ssl.SSLSession | None = None
            ) -> tuple[int, ssl.SSLSession | None]:
    """*count* connections in *mode*, the first offering *session* if resuming;
    how many resumed, and the last session."""
    if mode == "plain":
        for _ in range(count):
            plain_connection(port)
        return 0, None
    context = client_context(ca, mode)
    resumed = 0
    for _ in range(count):
        with socket.create_connection((HOST, port), timeout=60) as raw:
            with context.wrap_socket(
                raw, server_hostname="localhost",
                session=session if mode.startswith("resumed") else None,
            ) as connection:
                resumed += connection.session_reused
                session = connection.session
    return resumed, session


def measure(kind: str, files: dict[str, str], folder: str, count: int
            ) -> dict[str, tuple[float, int]]:
    """Instructions per connection for each mode, and how many resumed."""
    server = CountedServer(kind, files["server"], folder)
    results: dict[str, tuple[float, int]] = {}
    try:
        modes = ["plain"] if kind == "plain" else list(MODES)
        for mode in modes:
            # Warm-up, not counted (its last session is offered first after).
            _, session = connect(server.port, files["ca"], mode, 5)
            time.sleep(1)
            server.control("-z")
            resumed, _ = connect(server.port, files["ca"], mode, count, session)
            time.sleep(2)  # let the server finish closing the last connections
            results[mode] = (server.instructions() / count, resumed)
            print(f"  {LABELS[kind]:<22} {mode:<16} {results[mode][0]:>12,.0f} "
                  f"instructions/connection (resumed {resumed} of {count})", flush=True)
    finally:
        server.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=100,
                        help="counted connections per row (default 100)")
    parser.add_argument("--key-type", choices=("ecdsa", "rsa"), default="ecdsa")
    args = parser.parse_args()
    for tool in ("valgrind", "callgrind_control", "openssl"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is needed (apt-get install valgrind openssl)")
    results: dict[str, dict[str, tuple[float, int]]] = {}
    with tempfile.TemporaryDirectory(prefix="txschannel-instructions-") as folder:
        files = make_certificates(folder, args.key_type)
        for kind in KINDS:
            results[kind] = measure(kind, files, folder, args.connections)
    floor = results["plain"]["plain"][0]
    print()
    print(f"server instructions per connection (callgrind, user space only); "
          f"key: {args.key_type}; {args.connections} connections per row")
    header = f"{'':<18}" + "".join(f"{LABELS[k]:>22}" for k in KINDS)
    print(header + f"{'vs Twisted':>12}{'vs s_server':>13}{'TLS part':>10}")
    for mode in MODES:
        ours = results["schannel"][mode][0]
        twisted = results["twisted"][mode][0]
        s_server = results["s_server"][mode][0]
        cells = [ours, twisted, floor, s_server]
        line = f"{mode:<18}" + "".join(f"{value:>22,.0f}" for value in cells)
        line += f"{twisted / ours:>12.2f}{s_server / ours:>13.2f}"
        line += f"{s_server / (ours - floor):>10.2f}"
        print(line)
    print()
    print("ratios: theirs / ours, higher is better for txschannel; 'TLS part' =")
    print("s_server / (txschannel - plaintext TCP), the plaintext figure being a")
    print("Twisted server's connection with no TLS at all.")
    for kind in ("schannel", "twisted", "s_server"):
        count = results[kind]["resumed TLS1.2"][1]
        print(f"  {LABELS[kind]}: {count} of {args.connections} resumed")
    print(f"the command: python benchmarks/instructions.py --connections {args.connections} "
          f"--key-type {args.key_type}")


if __name__ == "__main__":
    main()
