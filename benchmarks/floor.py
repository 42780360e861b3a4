"""What a Twisted relay costs before any TLS: the floor under ``twist schannel``.

Not a test: it measures and prints, nothing asserts, and CI does not run it.

``benchmarks/relay.py`` shows ``twist schannel`` behind hitch, per
connection and per byte. This asks how much of that is TLS and how much is
being a Twisted process at all, by measuring the same relay with and
without TLS next to Twisted's own relay and the C terminators:

- ``twist portforward``: Twisted's own port forwarder, plain TCP. No TLS,
  no log line: what accepting a connection, connecting to the backend and
  passing bytes both ways costs any Twisted relay. While ``twist
  schannel`` is a Twisted process it cannot do better than this plus the
  cost of TLS itself;
- ``twist schannel`` on a plain ``tcp:`` listener: the same with our
  connection gate (admission, byte counts, one log line per connection);
- ``twist schannel`` with TLS (``schannel:tcp:``);
- what a Python user could pick instead, with TLS: Twisted's own
  ``twist portforward`` on an ``ssl:`` listener (Twisted's
  TLSMemoryBIOProtocol), and ``asyncio_relay.py``, a short relay on asyncio
  and the standard library's ``ssl`` (64 KiB reads, ``drain()`` after each
  write), on asyncio's own event loop and on uvloop (``pip install
  '.[bench]'``; the row is left out without it);
- the C terminators ``hitch`` (one worker) and ``stunnel4``, with TLS.

Twisted's ``ssl:`` server answers a ClientHello that offers ALPN, as curl's
does, with an ``internal_error`` alert when the application names no ALPN
protocols (``twist portforward`` cannot name any): Twisted's ALPN callback
then picks the empty protocol, which OpenSSL 3 refuses. So every TLS
download here runs ``curl --no-alpn``; ALPN changes nothing else about a
download, and ``s_time`` offers no ALPN anyway.

Two figures per row:

- server CPU per connection: connections opened and closed one after
  another, each one small request and response; the user plus system CPU
  time of the server's process group during the run, divided by its
  connections (Linux ``/proc``). The client's speed changes the rate, not
  this figure. Plain rows are driven by a Python client, TLS rows by
  ``openssl s_time -new`` (a full handshake each, as in ``relay.py``);
- MB/s: one ``curl`` download of a large body (``http://`` or ``https://``),
  body bytes / curl's total time (MB = 10^6 bytes);
- KB per idle connection (``--idle N``, default 2,000; 0 leaves it out):
  idle_memory.py's measurement, once per row on a fresh server before the
  rounds: 100 connections (TLS ones with the handshake done) held idle,
  the server's VmRSS read, N more opened, VmRSS read again; KB (10^3
  bytes) = the difference / N. The soft RLIMIT_NOFILE is raised to the
  hard limit first (the servers inherit it): each connection takes two
  descriptors in the server.

The rows take turns within each round; the best figure of the rounds is
kept (the lowest CPU, the highest MB/s). Run from the repository root::

    python benchmarks/floor.py               # 3 rounds, about two minutes
    python benchmarks/floor.py --rounds 5 --size-mib 512
    python benchmarks/floor.py --rounds 0 --idle 5000   # idle memory only
    python benchmarks/floor.py --rounds 0 --idle 1000 --idle-burst 262144 --idle-quiet 12
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from idle_memory import idle_kb, raise_fd_limit  # noqa: E402

# The terminator processes, the backend and the helpers are relay.py's.
from relay import (  # noqa: E402
    Terminator,
    free_port,
    group_cpu_seconds,
    hitch_terminator,
    s_time,
    s_time_count,
    start_backend,
    stunnel_terminator,
    throughput,
)


def plain_connections(port: int, count: int) -> int:
    """*count* plain connections, one after another, each one small request."""
    for _ in range(count):
        with socket.create_connection(("127.0.0.1", port)) as connection:
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            connection.sendall(b"GET /small HTTP/1.0\r\n\r\n")
            while connection.recv(65536):
                pass
    return count


def twist_tls_terminator(folder: Path, port: int, backend_port: int) -> Terminator:
    """``twist schannel`` with TLS on *port*, relaying to the backend."""
    return Terminator(
        "twist schannel (TLS)",
        [sys.executable, "-m", "twisted", "--log-format=text",
         f"--log-file={folder / f'tls-{port}.log'}", "schannel",
         "--listen", f"schannel:tcp:{port}:interface=127.0.0.1:certificate={folder}/server.pem",
         "--connect", f"tcp:127.0.0.1:{backend_port}"],
        port, folder / f"tls-{port}.out",
    )


def asyncio_terminator(name: str, folder: Path, port: int, backend_port: int,
                       uvloop: bool) -> Terminator:
    """asyncio_relay.py on *port*, on asyncio's event loop or on uvloop's."""
    return Terminator(
        name,
        [sys.executable, str(HERE / "asyncio_relay.py"), "--listen", f"127.0.0.1:{port}",
         "--connect", f"127.0.0.1:{backend_port}", "--certificate", str(folder / "server.pem"),
         *(["--uvloop"] if uvloop else [])],
        port, folder / f"asyncio-{port}.out",
    )


def has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def tls_connections(port: int, ca: Path, seconds: int) -> int:
    result = subprocess.run(s_time(port, ca, seconds), capture_output=True, text=True,
                            timeout=seconds + 60)
    return s_time_count(result.stdout, result.stderr)


class Row:
    """A server under measurement, and the best figures it reached."""

    def __init__(self, terminator: Terminator, tls: bool) -> None:
        self.terminator = terminator
        self.tls = tls
        self.cpu: float | None = None
        self.speed: float | None = None
        self.idle: float | None = None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=1500,
                        help="plain connections per row and round")
    parser.add_argument("--seconds", type=int, default=4, help="s_time run length (TLS rows)")
    parser.add_argument("--size-mib", type=int, default=256, help="download size")
    parser.add_argument("--idle", type=int, default=2000,
                        help="idle connections for KB/idle conn (0: not measured)")
    parser.add_argument("--idle-burst", type=int, default=0, metavar="BYTES",
                        help="each idle connection first downloads BYTES (idle_memory.py --burst)")
    parser.add_argument("--idle-quiet", type=float, default=0.0, metavar="SECONDS",
                        help="seconds more before each idle reading (idle_memory.py --quiet)")
    arguments = parser.parse_args()
    if arguments.idle:
        raise_fd_limit(2 * (arguments.idle + 100))
    for tool in ("curl", "openssl"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is needed on the PATH")
    size = arguments.size_mib * 1024 * 1024

    folder, backend, backend_port = start_backend("txschannel-bench-floor-", size)

    twist = [sys.executable, "-m", "twisted", "--log-format=text"]
    rows: list[Row] = []

    def add(name: str, argv: list[str], port: int, stem: str, tls: bool) -> None:
        rows.append(Row(Terminator(name, argv, port, folder / f"{stem}.out"), tls))

    port = free_port()
    add("twist portforward (plain, Twisted's own)",
        [*twist, "--log-file=/dev/null", "portforward", "-p",
         f"tcp:{port}:interface=127.0.0.1", "-h", "127.0.0.1", "-d", str(backend_port)],
        port, "portforward", False)
    port = free_port()
    add("twist schannel (plain tcp: listener)",
        [*twist, f"--log-file={folder / 'plain.log'}", "schannel",
         "--listen", f"tcp:{port}:interface=127.0.0.1",
         "--connect", f"tcp:127.0.0.1:{backend_port}"],
        port, "plain", False)
    port = free_port()
    rows.append(Row(twist_tls_terminator(folder, port, backend_port), True))
    port = free_port()
    add("twist portforward (TLS, Twisted's ssl:)",
        [*twist, "--log-file=/dev/null", "portforward", "-p",
         f"ssl:{port}:interface=127.0.0.1:privateKey={folder}/server.pem"
         f":certKey={folder}/server.pem",
         "-h", "127.0.0.1", "-d", str(backend_port)],
        port, "portforward-tls", True)
    port = free_port()
    rows.append(Row(asyncio_terminator("asyncio + ssl (TLS)", folder, port, backend_port,
                                       False), True))
    if has_uvloop():
        port = free_port()
        rows.append(Row(asyncio_terminator("asyncio + ssl on uvloop (TLS)", folder, port,
                                           backend_port, True), True))
    else:
        print("uvloop is not installed (pip install '.[bench]'): its row is left out",
              file=sys.stderr)
    hitch = shutil.which("hitch")
    if hitch:
        port = free_port()
        rows.append(Row(hitch_terminator("hitch, 1 worker (TLS)", hitch, folder, port,
                                         backend_port, 1), True))
    stunnel = shutil.which("stunnel4") or shutil.which("stunnel")
    if stunnel:
        port = free_port()
        rows.append(Row(stunnel_terminator("stunnel4 (TLS)", stunnel, folder, port,
                                           backend_port), True))

    load_before = os.getloadavg()[0]
    try:
        for row in rows if arguments.idle else ():
            # A fresh server each: the rounds' downloads would leave memory
            # in its allocator that the new connections could reuse.
            row.terminator.start()
            try:
                assert row.terminator.process is not None
                row.idle = idle_kb(row.terminator.process.pid, row.terminator.port,
                                   folder / "ca.pem" if row.tls else None, arguments.idle,
                                   burst=arguments.idle_burst, quiet=arguments.idle_quiet)
            except (OSError, RuntimeError) as e:
                print(f"idle memory: {row.terminator.name}: {e}", file=sys.stderr)
            finally:
                row.terminator.stop()
        print("idle memory done", file=sys.stderr)
        for row in rows if arguments.rounds else ():
            row.terminator.start()
        for round_number in range(arguments.rounds):
            for row in rows:
                terminator = row.terminator
                assert terminator.process is not None
                time.sleep(0.5)  # let the previous row's closing connections settle
                try:
                    before = group_cpu_seconds(terminator.process.pid)
                    if row.tls:
                        count = tls_connections(terminator.port, folder / "ca.pem",
                                                arguments.seconds)
                    else:
                        count = plain_connections(terminator.port, arguments.connections)
                    spent = group_cpu_seconds(terminator.process.pid) - before
                    cpu = spent * 1000 / count
                    row.cpu = cpu if row.cpu is None else min(row.cpu, cpu)
                    speed = throughput(terminator.port, folder / "ca.pem", size, row.tls,
                                       alpn=False)
                    row.speed = speed if row.speed is None else max(row.speed, speed)
                except (OSError, RuntimeError, subprocess.TimeoutExpired) as e:
                    print(f"round {round_number + 1}: {terminator.name}: {e}", file=sys.stderr)
            print(f"round {round_number + 1} of {arguments.rounds} done", file=sys.stderr)
    finally:
        for row in rows:
            row.terminator.stop()
        backend.kill()
        backend.wait(timeout=10)

    floor = rows[0]
    print(f"\nA relay's floor, loopback, {os.cpu_count()} CPUs, body {arguments.size_mib} MiB, "
          f"best of {arguments.rounds} round(s); load average {load_before:.2f} before, "
          f"{os.getloadavg()[0]:.2f} after. Ratios are against twist portforward; "
          f"KB/idle conn over {arguments.idle} connections"
          + (f", each after a {arguments.idle_burst:,}-byte download"
             if arguments.idle_burst else "")
          + (f", {arguments.idle_quiet:g} s quiet" if arguments.idle_quiet else "") + ".")
    width = max(len(row.terminator.name) for row in rows) + 2
    print(f"{'server':<{width}}{'CPU ms/conn':>13}{'ratio':>8}{'MB/s':>8}{'ratio':>8}"
          f"{'KB/idle conn':>14}")
    for row in rows:
        print(f"{row.terminator.name:<{width}}{_cell(row.cpu, 2):>13}"
              f"{_ratio(row.cpu, floor.cpu):>8}{_cell(row.speed, 0):>8}"
              f"{_ratio(row.speed, floor.speed):>8}{_cell(row.idle, 1):>14}")
    print(f"\n(logs and configuration in {folder})")


def _cell(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _ratio(value: float | None, reference: float | None) -> str:
    return f"{value / reference:.2f}" if value and reference else "-"


if __name__ == "__main__":
    main()
