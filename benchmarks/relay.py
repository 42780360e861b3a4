"""TLS-terminating relay: ``twist schannel`` next to stunnel4 and hitch.

Not a test: it measures and prints, nothing asserts, and CI does not run it.

Each terminator listens with TLS on loopback and relays to the same plain
backend (a small threaded HTTP/1.0 responder in a child process). The rows:
``twist schannel`` with one process and with ``--workers 2`` (a supervisor
and two forked workers sharing the socket), stunnel4, and hitch with
``--workers=1`` and ``--workers=2``. Clients are C programs, so that the
terminator is what is measured:

- throughput: ``curl`` downloads a large body (default 256 MiB) through the
  terminator; MB/s = body bytes / curl's total time (MB = 10^6 bytes). One
  download is one connection, so it runs in one worker whatever the count;
- sequential connections per second: ``openssl s_time -new -www /small``
  opens connections one after another for a few seconds, each with a full
  handshake and one small request and response. One connection at a time
  cannot use a second worker;
- concurrent connections per second: ``--clients`` (default 2) such
  ``s_time`` processes at once; all their connections / the wall time from
  starting the first to the end of the last;
- server CPU per connection: the user and system CPU time that the
  terminator's processes (its whole process group, workers included) used
  during the sequential run, divided by its connections (Linux ``/proc``).
  It is the steadiest figure here: it does not depend on how much CPU the
  clients left over.

The terminators take turns within each round and the best round is kept, so
that other load on the machine hurts every row alike; the load average
before and after is printed with the table. Ratios are against stunnel4.
After the table come the two ratios the multi-worker issue set as targets:
``twist schannel --workers 2`` against ``hitch (1 worker)`` in connections
per second (at least 1.0) and against ``hitch (2 workers)`` in MB/s (at
least 0.9). The clients, the backend and the terminators share the
machine's CPUs: on a 2-CPU machine a second worker has little CPU to spare.
Run from the repository root::

    python benchmarks/relay.py              # 3 rounds, about 3 minutes
    python benchmarks/relay.py --quick      # 1 round, smaller body, 3 s
    python benchmarks/relay.py --clients 4  # 4 s_time processes at once

Needs ``curl``, ``openssl``, ``stunnel4`` and ``hitch`` on the PATH
(Debian: ``apt-get install stunnel4 hitch``); a missing terminator is shown
as ``-``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# The checkout whose txschannel (and `twist schannel`) is measured: this one,
# unless compare.py runs this harness against another build.
TREE = Path(os.environ.get("TXSCHANNEL_TREE") or REPO)
sys.path.insert(0, str(TREE))

from txschannel.testing import CertificateAuthority  # noqa: E402

BACKEND = r"""
import socket, sys, threading
big = int(sys.argv[2])
block = b"x" * (1 << 20)
small = b"HTTP/1.0 200 OK\r\nContent-Length: 13\r\n\r\nhello, world\n"

def serve(connection):
    # A client that is killed (floor.py's idle clients are) resets its
    # connection: that ends the thread quietly instead of with a traceback.
    try:
        answer(connection)
    except OSError:
        pass

def answer(connection):
    with connection:
        request = b""
        while b"\r\n\r\n" not in request:
            data = connection.recv(65536)
            if not data:
                return
            request += data
        if request.startswith(b"GET /hold/"):
            # N bytes, then the connection stays open until the client ends
            # it (idle_memory.py --burst: a connection idle after a burst).
            size = int(request.split(b" ")[1].rsplit(b"/", 1)[1])
            connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
            connection.sendall(b"x" * size)
            while connection.recv(65536):
                pass
            return
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
        environment = {**os.environ, "PYTHONPATH": str(TREE)}
        with open(self.log, "ab") as log:
            # A session (and process group) of its own, so that stop() reaches
            # every process it forks: twist's and hitch's workers.
            self.process = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, cwd=TREE, env=environment,
                start_new_session=True,
            )
        wait_for_port(self.port)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the whole process group, then SIGKILL what is left after *timeout*."""
        if self.process is None:
            return
        group = self.process.pid  # the session leader's pid is the group's id
        for signal_number in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(group, signal_number)
            except ProcessLookupError:
                break  # nobody left in the group
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                self.process.poll()  # reap the leader, so that it leaves the group
                try:
                    os.killpg(group, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)
            else:
                if signal_number == signal.SIGTERM:
                    print(f"{self.name}: still running {timeout:.0f} s after SIGTERM, "
                          "sending SIGKILL", file=sys.stderr)
                    continue
                print(f"{self.name}: process group {group} survived SIGKILL",
                      file=sys.stderr)
            break
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass


def start_backend(prefix: str, size: int) -> tuple[Path, subprocess.Popen[bytes], int]:
    """A folder with a throw-away CA (ca.pem) and a localhost certificate
    (server.pem with its key, and cert.pem and key.pem apart), and the
    backend started with a *size*-byte big body: (folder, process, port)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    ca = CertificateAuthority()
    ca.write(folder / "ca.pem")
    leaf = ca.issue("localhost", "127.0.0.1")
    leaf.write(folder / "server.pem")  # key + certificate, for twist and hitch
    (folder / "cert.pem").write_bytes(leaf.certificate_pem)
    (folder / "key.pem").write_bytes(leaf.private_key_pem)
    port = free_port()
    (folder / "backend.py").write_text(BACKEND)
    backend = subprocess.Popen([sys.executable, str(folder / "backend.py"), str(port),
                                str(size)])
    wait_for_port(port)
    return folder, backend, port


def stunnel_terminator(name: str, stunnel: str, folder: Path, port: int,
                       backend_port: int) -> Terminator:
    """stunnel4 on *port*, relaying to the backend, with folder's cert.pem and key.pem."""
    config = folder / f"stunnel-{port}.conf"
    config.write_text(
        f"foreground = yes\npid =\noutput = {folder}/stunnel-{port}.log\n"
        f"[relay]\naccept = 127.0.0.1:{port}\nconnect = 127.0.0.1:{backend_port}\n"
        f"cert = {folder}/cert.pem\nkey = {folder}/key.pem\n"
        # As twist schannel and hitch do: no Nagle delay on either side.
        "socket = l:TCP_NODELAY=1\nsocket = r:TCP_NODELAY=1\n"
    )
    return Terminator(name, [stunnel, str(config)], port, folder / f"stunnel-{port}.out")


def hitch_terminator(name: str, hitch: str, folder: Path, port: int, backend_port: int,
                     workers: int) -> Terminator:
    """hitch with *workers* workers on *port*, with folder's server.pem (key and certificate)."""
    ocsp = folder / f"hitch-ocsp-{port}"
    ocsp.mkdir()
    return Terminator(
        name,
        [hitch, f"--frontend=[127.0.0.1]:{port}", f"--backend=[127.0.0.1]:{backend_port}",
         f"--workers={workers}", "--user=nobody" if os.geteuid() == 0 else "--quiet",
         f"--ocsp-dir={ocsp}", str(folder / "server.pem")],
        port, folder / f"hitch-{port}.out",
    )


def throughput(port: int, ca: Path, size: int, tls: bool = True, alpn: bool = True) -> float:
    """MB/s of one curl download of the big body through *port* (plain HTTP
    when not *tls*; no ALPN offered when not *alpn*)."""
    url = f"https://localhost:{port}/big" if tls else f"http://127.0.0.1:{port}/big"
    result = subprocess.run(
        ["curl", "-sS", "--max-time", "120", "--cacert", str(ca), "-o", "/dev/null",
         *([] if alpn else ["--no-alpn"]),
         "-w", "%{size_download} %{time_total}", url],
        capture_output=True, text=True, timeout=150,
    )
    if result.returncode != 0:
        raise RuntimeError(f"curl failed: {result.stderr.strip()}")
    downloaded, seconds = result.stdout.split()
    if int(downloaded) != size:
        raise RuntimeError(f"curl got {downloaded} bytes, expected {size}")
    return size / float(seconds) / 1e6


def s_time(port: int, ca: Path, seconds: int) -> list[str]:
    return ["openssl", "s_time", "-connect", f"127.0.0.1:{port}", "-new",
            "-time", str(seconds), "-www", "/small", "-CAfile", str(ca), "-verify", "1"]


def s_time_count(stdout: str, stderr: str) -> int:
    # s_time's own "connections in N.NNs" is its *CPU* time; the caller
    # counts against the wall clock instead.
    match = re.search(r"(\d+) connections in \d+ real seconds", stdout)
    if match is None:
        raise RuntimeError(f"s_time printed no count: {stdout[-300:]} {stderr[-300:]}")
    return int(match.group(1))


def group_cpu_seconds(group: int) -> float:
    """User plus system CPU time of every process in process group *group* (Linux)."""
    ticks = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path("/proc", entry, "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        # After the command name in parentheses: state, ppid, pgrp, ... with
        # utime and stime the 12th and 13th fields.
        fields = stat.rpartition(")")[2].split()
        if int(fields[2]) == group:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def connections_per_second(port: int, ca: Path, seconds: int,
                           group: int) -> tuple[float, float]:
    """Full handshakes plus one small request per second, one connection at a time,
    and the CPU milliseconds process group *group* spent per connection."""
    cpu_before = group_cpu_seconds(group)
    started = time.monotonic()
    result = subprocess.run(s_time(port, ca, seconds), capture_output=True, text=True,
                            timeout=seconds + 60)
    elapsed = time.monotonic() - started
    count = s_time_count(result.stdout, result.stderr)
    milliseconds = (group_cpu_seconds(group) - cpu_before) * 1000 / count
    return count / elapsed, milliseconds


def concurrent_connections_per_second(port: int, ca: Path, seconds: int,
                                      clients: int) -> float:
    """The same with *clients* s_time processes at once: all connections / wall time."""
    started = time.monotonic()
    processes = [
        subprocess.Popen(s_time(port, ca, seconds), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for _ in range(clients)
    ]
    outputs: list[tuple[str, str]] = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=seconds + 60))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    elapsed = time.monotonic() - started
    return sum(s_time_count(out, err) for out, err in outputs) / elapsed


def ratio(numerator: float | None, denominator: float | None) -> str:
    return f"{numerator / denominator:.2f}" if numerator and denominator else "-"


def figure(row: dict[str, float], label: str) -> str:
    return f"{row[label]:.0f}" if row.get(label) else "-"


TWIST_1 = "twist schannel"
TWIST_2 = "twist schannel --workers 2"
HITCH_1 = "hitch (1 worker)"
HITCH_2 = "hitch (2 workers)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--seconds", type=int, default=5, help="s_time run length")
    parser.add_argument("--clients", type=int, default=2,
                        help="s_time processes at once for the concurrent conn/s column")
    parser.add_argument("--quick", action="store_true", help="1 round, 64 MiB, 3 s")
    arguments = parser.parse_args()
    if arguments.quick:
        arguments.rounds, arguments.size_mib, arguments.seconds = 1, 64, 3
    for tool in ("curl", "openssl"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is needed on the PATH")
    size = arguments.size_mib * 1024 * 1024
    clients = arguments.clients

    folder, backend, backend_port = start_backend("txschannel-bench-relay-", size)

    terminators: list[Terminator] = []
    for name, workers, stem in ((TWIST_1, 1, "twist"), (TWIST_2, 2, "twist-workers2")):
        port = free_port()
        terminators.append(Terminator(
            name,
            [sys.executable, "-m", "twisted", "--log-format=text",
             f"--log-file={folder / (stem + '.log')}", "schannel",
             "--listen",
             f"schannel:tcp:{port}:interface=127.0.0.1:certificate={folder}/server.pem",
             "--connect", f"tcp:127.0.0.1:{backend_port}", f"--workers={workers}"],
            port, folder / f"{stem}.out",
        ))
    stunnel = shutil.which("stunnel4") or shutil.which("stunnel")
    if stunnel:
        port = free_port()
        terminators.append(stunnel_terminator("stunnel4", stunnel, folder, port,
                                              backend_port))
    hitch = shutil.which("hitch")
    if hitch:
        for name, workers in ((HITCH_1, 1), (HITCH_2, 2)):
            port = free_port()
            terminators.append(hitch_terminator(name, hitch, folder, port, backend_port,
                                                workers))

    concurrent = f"conn/s x{clients}"
    labels = ("MB/s", "conn/s", concurrent)
    best: dict[str, dict[str, float]] = {t.name: {} for t in terminators}
    # Lowest of the rounds, as the best round is kept for the rest.
    cpu_per_connection: dict[str, float] = {}

    def sequential(terminator: Terminator) -> float:
        assert terminator.process is not None
        rate, milliseconds = connections_per_second(
            terminator.port, folder / "ca.pem", arguments.seconds, terminator.process.pid
        )
        cpu_per_connection[terminator.name] = min(
            cpu_per_connection.get(terminator.name, milliseconds), milliseconds
        )
        return rate

    measures: list[tuple[str, Callable[[Terminator], float]]] = [
        ("MB/s", lambda t: throughput(t.port, folder / "ca.pem", size)),
        ("conn/s", sequential),
        (concurrent, lambda t: concurrent_connections_per_second(
            t.port, folder / "ca.pem", arguments.seconds, clients)),
    ]
    load_before = os.getloadavg()[0]
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
          f"best of {arguments.rounds} round(s); conn/s: one s_time, "
          f"{concurrent}: {clients} s_time at once; load average {load_before:.2f} before, "
          f"{os.getloadavg()[0]:.2f} after")
    width = max(len(t.name) for t in terminators) + 2
    print(f"{'terminator':<{width}}"
          + "".join(f"{label:>13}{'vs stunnel':>12}" for label in labels)
          + f"{'CPU ms/conn':>13}")
    for terminator in terminators:
        row = best[terminator.name]
        cells = "".join(
            f"{figure(row, label):>13}{ratio(row.get(label), reference.get(label)):>12}"
            for label in labels
        )
        milliseconds = cpu_per_connection.get(terminator.name)
        cpu = f"{milliseconds:.2f}" if milliseconds is not None else "-"
        print(f"{terminator.name:<{width}}{cells}{cpu:>13}")

    twist, hitch_1, hitch_2 = best.get(TWIST_2, {}), best.get(HITCH_1, {}), best.get(HITCH_2, {})
    print("\nTargets:")
    print(f"(a) {TWIST_2} / {HITCH_1}, conn/s (target >= 1.0):")
    for what, ours, theirs in (
        (f"{concurrent} / conn/s", concurrent, "conn/s"),
        (f"{concurrent} / {concurrent}", concurrent, concurrent),
        ("conn/s / conn/s", "conn/s", "conn/s"),
    ):
        print(f"    {what:<26}{figure(twist, ours):>7} / {figure(hitch_1, theirs):<7}"
              f"= {ratio(twist.get(ours), hitch_1.get(theirs))}")
    print(f"(b) {TWIST_2} / {HITCH_2}, MB/s (target >= 0.9):")
    print(f"    {'MB/s / MB/s':<26}{figure(twist, 'MB/s'):>7} / {figure(hitch_2, 'MB/s'):<7}"
          f"= {ratio(twist.get('MB/s'), hitch_2.get('MB/s'))}")
    print(f"\n(logs and configuration in {folder})")


if __name__ == "__main__":
    main()
