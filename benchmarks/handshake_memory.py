"""What stalled TLS handshakes cost ``twist schannel`` in memory.

Not a test: it measures and prints, nothing asserts, and CI does not run it.

A client that sends most of a large ClientHello and then goes silent makes
the server keep what it has received until the handshake times out: the
bytes waiting for the rest of the record or message, and OpenSSL's own
buffers, which grow to hold the message the handshake header announces.
Many such clients at once make that a memory cost an attacker chooses. This
benchmark measures it from outside, on the real ``twist schannel`` process:

1. ``twist schannel`` (the inspector, no ``--connect``) listens on
   127.0.0.1 with a handshake timeout longer than the measurement
   (``--handshake-timeout``, default 60 s), so that no connection is
   closed by the timeout; ``--handshake-memory BYTES`` adds
   ``:handshakeMemory=BYTES`` to its listen endpoint;
2. a few real handshakes with Python's ``ssl`` module warm it up, then its
   resident set size (VmRSS in ``/proc/PID/status``) is read: the baseline;
3. ``--connections`` TCP connections (non-blocking sockets, a bounded
   number connecting and sending at a time) each send ``--bytes`` bytes of
   a ClientHello whose handshake header claims a ``--claimed``-byte body:
   records of type 22 (handshake), version 0x0301, up to 16384 bytes each;
   the first starts with handshake type 1 (ClientHello), the claimed
   length, legacy_version 0x0303, 32 random bytes, a session id, cipher
   suites and then padding. The connection then goes silent, its socket
   kept open. The message is never complete, so the server never parses
   it; a connection the server closes or resets meanwhile (as a memory
   budget refuses one) is counted as refused;
4. once everything is sent, VmRSS is sampled every 0.25 s for at least
   ``--hold`` seconds and until the server's CPU time stops moving (it has
   read everything): the largest sample is the peak. Then every client
   socket is closed and VmRSS is sampled every 0.5 s for ``--settle``
   seconds, to see how much the server gives back and how fast.

Per connection = (peak - baseline) / connections. MB = 10^6 bytes and KB =
10^3 bytes (VmRSS is read in KiB and converted). Run from the repository
root::

    python benchmarks/handshake_memory.py                      # 1000 connections
    python benchmarks/handshake_memory.py --connections 200 --json
    python benchmarks/handshake_memory.py --handshake-memory 16000000

All traffic is to 127.0.0.1. The run ends by itself (``--deadline``,
default 120 s) and always stops the server. Each connection needs a file
descriptor here and one in the server (which inherits this process's
limit): the soft RLIMIT_NOFILE is raised to the hard limit at start, and a
``--connections`` that does not fit is refused with a message saying so.
The server's log and certificates are left in a temporary folder, printed
at the end.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import re
import resource
import selectors
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support import certs  # noqa: E402

#: The most handshake bytes one TLS record may carry.
RECORD_MAX = 16384
RECORD_HEADER = 5
#: The most connections --connections accepts.
MAX_CONNECTIONS = 20000
#: File descriptors this process (and the server) need besides the connections.
FD_MARGIN = 64
#: Server log lines worth showing: what a handshake memory budget says.
INTERESTING = re.compile(r"refus|budget|handshake", re.IGNORECASE)
#: The server's log line for each connection's end, and the reason it gives.
CLOSE_REASON = re.compile(r'connection closed .*reason=(".*"|\S+)\s*$')


class DeadlineReached(Exception):
    """The overall deadline passed; *args[0]* says during what."""


class Deadline:
    """The moment by which the whole run must be over."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def remaining(self) -> float:
        return self.end - time.monotonic()

    def check(self, during: str) -> None:
        if self.remaining() <= 0:
            raise DeadlineReached(during)


# -- the server -----------------------------------------------------------------


class TwistServer:
    """``twist schannel`` (the inspector) in a subprocess, its log read continuously."""

    def __init__(self, folder: Path, endpoint: str, deadline: Deadline) -> None:
        self.argv = [
            sys.executable, "-m", "twisted", "--log-format=text", "--log-file=-",
            "schannel", "--listen", endpoint, "--state-dir", str(folder / "state"),
        ]
        # The repository goes on the path so that its twisted/plugins (and
        # this checkout's txschannel) are found even from an editable install.
        path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
        self.process = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=folder,
            env={**os.environ, "PYTHONPATH": path},
        )
        self.lines: list[str] = []
        self._port: int | None = None
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._ready.wait(max(0.0, min(30.0, deadline.remaining())))
        if self._port is None:
            self.stop()
            why = (
                f"exited with status {self.process.returncode}"
                if self.process.returncode is not None and self._ready.is_set()
                else "did not start listening in time"
            )
            raise SystemExit(
                f"twist schannel {why}; its command line:\n  {' '.join(self.argv)}\n"
                f"its output:\n{self.log[-4000:]}"
            )
        self.port: int = self._port

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            line = raw.decode("utf-8", "replace")
            self.lines.append(line)
            match = re.search(r"starting on (\d+)", line)
            if match and self._port is None:
                self._port = int(match.group(1))
                self._ready.set()
        self.process.wait()
        self._ready.set()

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def alive(self) -> bool:
        return self.process.poll() is None

    def rss_kib(self) -> int:
        """The server's resident set size, in KiB, from /proc."""
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise RuntimeError("no VmRSS in /proc status")

    def cpu_ticks(self) -> int:
        """The server's user + system CPU time, in clock ticks, from /proc."""
        with open(f"/proc/{self.process.pid}/stat") as stat:
            # The command name (field 2) may hold spaces: count from its ")".
            fields = stat.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime, stime

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._reader.join(5)


def warm_up(port: int, ca_file: str, count: int, deadline: Deadline) -> None:
    """*count* complete handshakes and inspector requests with Python's ssl."""
    context = ssl.create_default_context(cafile=ca_file)
    for _ in range(count):
        deadline.check("the warm-up")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
                while tls.recv(65536):
                    pass


# -- the stalled ClientHello ----------------------------------------------------


def stalled_hello(total: int, claimed: int) -> bytes:
    """*total* bytes of records carrying the start of a *claimed*-byte ClientHello."""
    records = -(-total // (RECORD_HEADER + RECORD_MAX))
    carried = total - RECORD_HEADER * records
    sizes = [RECORD_MAX] * (records - 1) + [carried - RECORD_MAX * (records - 1)]
    if sizes[-1] < 1:  # the last record would be a bare header: borrow from the one before
        sizes[-2] -= 1 - sizes[-1]
        sizes[-1] = 1
    body = (
        b"\x03\x03" + os.urandom(32)                           # legacy_version, random
        + b"\x20" + os.urandom(32)                             # legacy_session_id
        + b"\x00\x08\x13\x01\x13\x02\x13\x03\xc0\x2f"          # cipher_suites
        + b"\x01\x00"                                          # compression: null
    )
    rest = claimed - len(body) - 2
    extensions = min(max(rest, 0), 0xFFFF)
    padding = min(max(extensions - 4, 0), 0xFFFF)
    body += extensions.to_bytes(2, "big") + b"\x00\x15" + padding.to_bytes(2, "big")
    message = (b"\x01" + claimed.to_bytes(3, "big") + body).ljust(carried, b"\x00")[:carried]
    out = bytearray()
    offset = 0
    for size in sizes:
        out += b"\x16\x03\x01" + size.to_bytes(2, "big") + message[offset:offset + size]
        offset += size
    assert len(out) == total
    return bytes(out)


# -- the stalled connections ----------------------------------------------------


@dataclass
class Connection:
    sock: socket.socket
    payload: bytes
    sent: int = 0
    connected: bool = False
    done: bool = False  # everything sent; now silent


@dataclass
class Tally:
    opened: int = 0
    sent_all: int = 0
    closed: int = 0  # the server closed (end of stream)
    reset: int = 0  # the server reset, or a send failed
    answered: int = 0  # the server sent something (an alert?) before closing
    connect_failed: int = 0
    first_connect: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def refused(self) -> int:
        return self.closed + self.reset


class Flood:
    """The stalled connections, on non-blocking sockets and one selector."""

    def __init__(self, port: int, connections: int, size: int, claimed: int,
                 parallel: int) -> None:
        self.port = port
        self.connections = connections
        self.size = size
        self.claimed = claimed
        self.parallel = parallel
        self.selector = selectors.DefaultSelector()
        self.open: dict[int, Connection] = {}
        self.tally = Tally()
        self._busy = 0  # connecting or still sending

    def _start_one(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        if not self.tally.opened:
            self.tally.first_connect = time.monotonic()
        self.tally.opened += 1
        code = sock.connect_ex(("127.0.0.1", self.port))
        if code not in (0, errno.EINPROGRESS):
            self._count_error("connect", code)
            self.tally.connect_failed += 1
            sock.close()
            return
        connection = Connection(sock, stalled_hello(self.size, self.claimed))
        self.open[sock.fileno()] = connection
        self.selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, connection)
        self._busy += 1

    def _count_error(self, where: str, code: int) -> None:
        key = f"{where}: {errno.errorcode.get(code, code)}"
        self.tally.errors[key] = self.tally.errors.get(key, 0) + 1

    def _drop(self, connection: Connection) -> None:
        if not connection.done:
            self._busy -= 1
        self.selector.unregister(connection.sock)
        del self.open[connection.sock.fileno()]
        connection.sock.close()

    def _readable(self, connection: Connection) -> None:
        try:
            data = connection.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError as e:
            if not connection.connected:
                self.tally.connect_failed += 1
                self._count_error("connect", e.errno or 0)
            else:
                self.tally.reset += 1
                self._count_error("recv", e.errno or 0)
            self._drop(connection)
            return
        if data:
            self.tally.answered += 1  # wait on for the close
            return
        self.tally.closed += 1
        self._drop(connection)

    def _writable(self, connection: Connection) -> None:
        sock = connection.sock
        if not connection.connected:
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                self.tally.connect_failed += 1
                self._count_error("connect", code)
                self._drop(connection)
                return
            connection.connected = True
        try:
            payload = memoryview(connection.payload)
            while connection.sent < len(payload):
                connection.sent += sock.send(payload[connection.sent:])
        except BlockingIOError:
            return
        except OSError as e:
            self.tally.reset += 1
            self._count_error("send", e.errno or 0)
            self._drop(connection)
            return
        connection.done = True
        connection.payload = b""
        self._busy -= 1
        self.tally.sent_all += 1
        self.selector.modify(sock, selectors.EVENT_READ, connection)

    def poll(self, timeout: float) -> None:
        """Handle what the sockets have to say, for up to *timeout* seconds."""
        for key, events in self.selector.select(max(0.0, timeout)):
            connection: Connection = key.data
            if events & selectors.EVENT_READ:
                self._readable(connection)
                if connection.sock.fileno() not in self.open:
                    continue
            if events & selectors.EVENT_WRITE:
                self._writable(connection)

    def send_all(self, deadline: Deadline) -> None:
        """Open every connection and send every payload; the sockets stay open."""
        while self.tally.opened < self.connections or self._busy:
            deadline.check("sending")
            while self.tally.opened < self.connections and self._busy < self.parallel:
                self._start_one()
            self.poll(min(0.5, deadline.remaining()))

    def close_all(self) -> None:
        for connection in list(self.open.values()):
            self.selector.unregister(connection.sock)
            connection.sock.close()
        self.open.clear()
        self.selector.close()


# -- the run --------------------------------------------------------------------


@dataclass
class Figures:
    connections: int
    bytes_each: int
    claimed: int
    handshake_memory: int | None
    refused_by_server: int = 0
    server_answered: int = 0
    connect_failed: int = 0
    rss_baseline_kib: int = 0
    rss_peak_kib: int = 0
    per_connection_kb: float = 0.0
    settle_samples_kib: list[tuple[float, int]] = field(default_factory=list)
    send_seconds: float = 0.0
    held_seconds: float = 0.0

    def after(self, seconds: float) -> int | None:
        """The RSS sample taken *seconds* after the clients closed, if there is one."""
        for at, kib in self.settle_samples_kib:
            if abs(at - seconds) < 0.01:
                return kib
        return None


def megabytes(kib: int | None) -> str:
    return "-" if kib is None else f"{kib * 1024 / 1e6:.1f}"


def table(figures: Figures, settle: float) -> list[str]:
    end = figures.settle_samples_kib[-1] if figures.settle_samples_kib else (settle, None)
    columns = [
        ("connections", str(figures.connections)),
        ("bytes each", str(figures.bytes_each)),
        ("claimed", str(figures.claimed)),
        ("handshakeMemory",
         "default" if figures.handshake_memory is None else str(figures.handshake_memory)),
        ("refused", str(figures.refused_by_server)),
        ("baseline MB", megabytes(figures.rss_baseline_kib)),
        ("peak MB", megabytes(figures.rss_peak_kib)),
        ("KB/conn", f"{figures.per_connection_kb:.1f}"),
    ]
    for at in (1.0, 5.0):
        if at < end[0]:
            columns.append((f"after {at:g}s MB", megabytes(figures.after(at))))
    columns.append((f"after {end[0]:g}s MB", megabytes(end[1])))
    widths = [max(len(name), len(value)) + 2 for name, value in columns]
    return [
        "".join(f"{name:>{w}}" for (name, _), w in zip(columns, widths, strict=True)),
        "".join(f"{value:>{w}}" for (_, value), w in zip(columns, widths, strict=True)),
    ]


def log_summary(lines: list[str], last: int, everything: bool = False) -> list[str]:
    """The server's connection closes counted by reason, then its *last* other lines
    that mention refusals, the budget or handshakes (all other lines if *everything*).

    One "connection closed" line per connection would crowd out the rest
    (the budget's own line above all): those are counted instead.
    """
    closes: dict[str, int] = {}
    mentions = []
    for line in lines:
        close = CLOSE_REASON.search(line)
        if close:
            closes[close.group(1)] = closes.get(close.group(1), 0) + 1
        elif everything or INTERESTING.search(line):
            mentions.append(line.rstrip("\n"))
    out = ["server's connection closes, by reason:"]
    for reason, count in sorted(closes.items(), key=lambda item: -item[1]):
        out.append(f"  {count:6}  {reason}")
    what = "lines" if everything else "lines mentioning refus/budget/handshake"
    out.append(f"server log {what} (closes aside): {len(mentions)}"
               + (f", the last {min(last, len(mentions))}:" if mentions else ""))
    out += ["  " + line for line in mentions[-last:]]
    return out


def raise_file_limit(connections: int) -> int:
    """Raise the soft RLIMIT_NOFILE to the hard one; exit if *connections* do not fit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if wanted > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError) as e:
            print(f"could not raise RLIMIT_NOFILE from {soft} to {wanted}: {e}",
                  file=sys.stderr)
    needed = connections + FD_MARGIN
    if needed > soft:
        raise SystemExit(
            f"{connections} connections need about {needed} file descriptors, in this "
            f"process and in the server (which inherits the limit), but RLIMIT_NOFILE "
            f"is {soft} (hard limit {hard}). Use --connections {max(soft - FD_MARGIN, 1)} "
            f"or less, or raise the hard limit (ulimit -Hn, as root)."
        )
    return soft


def measure(arguments: argparse.Namespace, server: TwistServer, ca_file: str,
            deadline: Deadline) -> Figures:
    figures = Figures(arguments.connections, arguments.bytes, arguments.claimed,
                      arguments.handshake_memory)
    warm_up(server.port, ca_file, arguments.warm_up, deadline)
    time.sleep(0.5)
    figures.rss_baseline_kib = server.rss_kib()

    flood = Flood(server.port, arguments.connections, arguments.bytes, arguments.claimed,
                  arguments.parallel)
    try:
        started = time.monotonic()
        flood.send_all(deadline)
        figures.send_seconds = time.monotonic() - started
        print(f"sent {arguments.bytes} bytes on {flood.tally.sent_all} of "
              f"{arguments.connections} connections in {figures.send_seconds:.1f} s; "
              "holding", file=sys.stderr)
        # Hold: sample until --hold has passed and the server has stopped
        # working (it has read and handled everything), within limits.
        held_from = time.monotonic()
        limit = held_from + max(arguments.hold, 15.0)
        previous_cpu = server.cpu_ticks()
        peak = server.rss_kib()
        while True:
            deadline.check("holding the connections")
            next_sample = time.monotonic() + 0.25
            while (left := next_sample - time.monotonic()) > 0:
                flood.poll(left)
            if not server.alive():
                raise RuntimeError("the server exited while the connections were held")
            peak = max(peak, server.rss_kib())
            cpu = server.cpu_ticks()
            idle = cpu - previous_cpu <= 1
            previous_cpu = cpu
            now = time.monotonic()
            if (now - held_from >= arguments.hold and idle) or now >= limit:
                break
        figures.held_seconds = time.monotonic() - held_from
        if time.monotonic() - flood.tally.first_connect >= arguments.handshake_timeout:
            print(f"warning: the connections were held past handshakeTimeout="
                  f"{arguments.handshake_timeout:g}: closes by the timeout are counted as "
                  "refused; use a longer --handshake-timeout", file=sys.stderr)
    finally:
        tally = flood.tally
        flood.close_all()
    figures.rss_peak_kib = peak
    figures.refused_by_server = tally.refused
    figures.server_answered = tally.answered
    figures.connect_failed = tally.connect_failed
    figures.per_connection_kb = (
        (peak - figures.rss_baseline_kib) * 1024 / 1e3 / arguments.connections
    )
    if tally.errors:
        print("socket errors: " + ", ".join(f"{k} x{n}" for k, n in sorted(tally.errors.items())),
              file=sys.stderr)

    # Settle: the clients are gone; how much does the server give back?
    closed_at = time.monotonic()
    steps = round(arguments.settle / 0.5)
    for step in range(1, steps + 1):
        at = step * 0.5
        time.sleep(max(0.0, closed_at + at - time.monotonic()))
        if deadline.remaining() <= 0:
            print(f"deadline reached {at - 0.5:g} s into the settling", file=sys.stderr)
            break
        if not server.alive():
            raise RuntimeError("the server exited after the connections were closed")
        figures.settle_samples_kib.append((at, server.rss_kib()))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=1000,
                        help=f"stalled connections to open (at most {MAX_CONNECTIONS})")
    parser.add_argument("--bytes", type=int, default=64020,
                        help="bytes each connection sends, record headers included")
    parser.add_argument("--claimed", type=int, default=130816,
                        help="ClientHello body length the handshake header claims")
    parser.add_argument("--handshake-memory", type=int, metavar="BYTES",
                        help="add :handshakeMemory=BYTES to the listen endpoint")
    parser.add_argument("--handshake-timeout", type=float, default=60.0, metavar="SECONDS",
                        help="the server's handshakeTimeout (keep it above the run's length)")
    parser.add_argument("--parallel", type=int, default=32,
                        help="connections connecting or sending at a time")
    parser.add_argument("--warm-up", type=int, default=5,
                        help="complete handshakes before the baseline")
    parser.add_argument("--hold", type=float, default=2.0,
                        help="least seconds to sample RSS once everything is sent")
    parser.add_argument("--settle", type=float, default=10.0,
                        help="seconds to sample RSS after the clients close")
    parser.add_argument("--deadline", type=float, default=120.0,
                        help="seconds the whole run may take")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    arguments = parser.parse_args()
    if not 1 <= arguments.connections <= MAX_CONNECTIONS:
        parser.error(f"--connections must be between 1 and {MAX_CONNECTIONS}")
    if arguments.bytes < RECORD_HEADER + 4:
        parser.error(f"--bytes must be at least {RECORD_HEADER + 4} (a header of each)")
    records = -(-arguments.bytes // (RECORD_HEADER + RECORD_MAX))
    carried = arguments.bytes - RECORD_HEADER * records
    if not carried - 4 <= arguments.claimed < 1 << 24:
        parser.error(f"--claimed must be at least {carried - 4} (what --bytes carries, so "
                     "that the message stays unfinished) and below 2**24")
    if arguments.parallel < 1 or arguments.settle < 0 or arguments.hold < 0:
        parser.error("--parallel must be positive, --hold and --settle not negative")
    if arguments.handshake_timeout <= 0 or arguments.deadline <= 0:
        parser.error("--handshake-timeout and --deadline must be positive")
    raise_file_limit(arguments.connections)
    deadline = Deadline(arguments.deadline)

    folder = Path(tempfile.mkdtemp(prefix="txschannel-bench-handshake-memory-"))
    root = certs.authority("handshake-memory benchmark root")
    identity = certs.leaf(root, ["localhost", "127.0.0.1"])
    ca_file = certs.write(str(folder), "ca.pem", certs.pem(root.certificate))
    server_file = certs.write(str(folder), "server.pem", identity.chain_pem)
    endpoint = (
        f"schannel:tcp:0:interface=127.0.0.1:certificate={server_file}"
        f":handshakeTimeout={arguments.handshake_timeout:g}"
    )
    if arguments.handshake_memory is not None:
        endpoint += f":handshakeMemory={arguments.handshake_memory}"

    server = TwistServer(folder, endpoint, deadline)
    failed: str | None = None
    figures: Figures | None = None
    try:
        figures = measure(arguments, server, ca_file, deadline)
    except DeadlineReached as e:
        failed = f"the --deadline of {arguments.deadline:g} s passed during {e.args[0]}"
    except (RuntimeError, OSError) as e:
        failed = str(e)
    finally:
        server.stop()
        (folder / "twist.log").write_text(server.log)

    lines = server.lines
    if failed is not None or figures is None:
        print(f"failed: {failed}", file=sys.stderr)
        for line in log_summary(lines, 30, everything=True):
            print(line, file=sys.stderr)
        print(f"(log and certificates in {folder})", file=sys.stderr)
        raise SystemExit(1)

    print(f"\nstalled TLS handshakes against twist schannel on 127.0.0.1 "
          f"({os.cpu_count()} CPUs), handshakeTimeout {arguments.handshake_timeout:g} s; "
          "MB = 10^6 bytes, KB = 10^3 bytes")
    for line in table(figures, arguments.settle):
        print(line)
    notes = []
    if figures.connect_failed:
        notes.append(f"{figures.connect_failed} connection(s) could not connect")
    if figures.server_answered:
        notes.append(f"the server sent bytes on {figures.server_answered} connection(s)")
    notes.append(f"sending took {figures.send_seconds:.1f} s, held {figures.held_seconds:.1f} s")
    print("(" + "; ".join(notes) + ")")

    print()
    for line in log_summary(server.lines, 20):
        print(line)
    if arguments.json:
        document: dict[str, Any] = {
            "connections": figures.connections,
            "bytes_each": figures.bytes_each,
            "claimed": figures.claimed,
            "handshake_memory": figures.handshake_memory,
            "refused_by_server": figures.refused_by_server,
            "server_answered": figures.server_answered,
            "connect_failed": figures.connect_failed,
            "rss_baseline_mb": figures.rss_baseline_kib * 1024 / 1e6,
            "rss_peak_mb": figures.rss_peak_kib * 1024 / 1e6,
            "per_connection_kb": figures.per_connection_kb,
            "rss_after_mb": {
                f"{at:g}": kib * 1024 / 1e6 for at, kib in figures.settle_samples_kib
            },
            "send_seconds": figures.send_seconds,
            "held_seconds": figures.held_seconds,
            "handshake_timeout": arguments.handshake_timeout,
        }
        print(json.dumps(document, indent=2))
    print(f"\n(log and certificates in {folder})")


if __name__ == "__main__":
    main()
