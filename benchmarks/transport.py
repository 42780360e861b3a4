"""Transport benchmark: txschannel vs Twisted's TLSMemoryBIOProtocol vs plaintext TCP.

Run from the repository root::

    python benchmarks/transport.py            # 3 rounds, about seven minutes
    python benchmarks/transport.py --quick    # 1 short round, about a minute, noisier

Every measurement runs the server and the client in separate processes over
loopback (127.0.0.1). The rows:

* bulk MB/s, 64 KiB writes and 100-byte writes: a client of the same kind
  as the server streams data as fast as flow control allows; the server
  times first to last byte received (MB = 10**6 bytes).
* endpoint strings MB/s, 64 KiB writes: client and server built from
  endpoint strings (``schannel:``, Twisted's ``ssl:``/``tls:``, ``tcp:``)
  as an application writes them; the client writes 64 KiB blocks in a loop
  until flow control pauses it, ``--endpoint-mb`` MB in all, and its wall
  clock from ``connect()`` to the server's answer gives MB/s. Unlike the
  100-byte row below, these writes are larger than txschannel's coalescing
  limit, so how the TCP transport's buffer pauses the writer shows here.
* server CPU per handshake: ``openssl s_time`` connects again and again
  (full TLS 1.3, full TLS 1.2, resumed TLS 1.2: s_time cannot resume
  TLS 1.3) and the server process's user+system CPU time (from
  ``/proc/<pid>/stat``) is divided by the number of connections. The
  servers of a row run together and s_time visits them in turn, a second
  each. ``openssl s_server`` on the same certificate is the reference, and
  a plaintext Twisted server's cost per connection is the floor.
* memory per idle connection: the server's resident set size (VmRSS) with
  2,100 established, idle connections minus that with 100, divided by 2,000.

Each measurement is repeated (``--rounds``, default 3) with the kinds taking
turns, and the median and the best round are reported, since other load on
the machine only makes figures worse. Not a test: nothing here asserts.
Bounded: every phase has a byte and a time limit and every process a
timeout.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# The checkout whose txschannel is measured: this one, unless compare.py
# runs this harness against another build (it sets TXSCHANNEL_TREE, and the
# child processes inherit it).
TREE = Path(os.environ.get("TXSCHANNEL_TREE") or ROOT)
if str(TREE) not in sys.path:
    sys.path.insert(0, str(TREE))

KINDS = ("schannel", "twisted", "plain")
LABELS = {
    "schannel": "txschannel",
    "twisted": "Twisted TLSMemoryBIO",
    "plain": "plaintext TCP",
    "s_server": "openssl s_server",
}
HOST = "127.0.0.1"
TICKS = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------
# Factories for each kind of transport (used inside the child processes)
# ---------------------------------------------------------------------------


def server_factory(kind: str, certificate: str, app: Any) -> Any:
    if kind == "plain":
        return app
    if kind == "twisted":
        from twisted.internet.ssl import PrivateCertificate
        from twisted.protocols.tls import TLSMemoryBIOFactory

        options = PrivateCertificate.loadPEM(Path(certificate).read_bytes()).options()
        return TLSMemoryBIOFactory(options, False, app)
    from txschannel import Credentials
    from txschannel.protocol import SchannelFactory

    return SchannelFactory(Credentials.server(certificate=certificate), False, app)


def client_factory(kind: str, ca: str, app: Any) -> Any:
    if kind == "plain":
        return app
    if kind == "twisted":
        from twisted.internet.ssl import Certificate, optionsForClientTLS
        from twisted.protocols.tls import TLSMemoryBIOFactory

        trust = Certificate.loadPEM(Path(ca).read_bytes())
        return TLSMemoryBIOFactory(optionsForClientTLS("localhost", trustRoot=trust), True, app)
    from txschannel import Credentials
    from txschannel.protocol import SchannelFactory

    return SchannelFactory(
        Credentials.client(trust_roots=ca), True, app, target_name="localhost"
    )


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# ---------------------------------------------------------------------------
# Child process: server
# ---------------------------------------------------------------------------


def run_server(kind: str, certificate: str, port: int) -> None:
    """Accept connections; report each connection's byte count and timing as JSON."""
    raise_fd_limit()
    from twisted.internet import reactor
    from twisted.internet.protocol import Factory, Protocol
    from twisted.logger import globalLogBeginner

    # As `twist` does: without an observer Twisted keeps recent events in a
    # buffer, which would charge per-connection log events as memory.
    globalLogBeginner.beginLoggingTo([], redirectStandardIO=False)

    class Sink(Protocol):
        received = 0
        first = 0.0
        last = 0.0

        def dataReceived(self, data: bytes) -> None:
            now = time.perf_counter()
            if not self.received:
                self.first = now
            self.received += len(data)
            self.last = now

        def connectionLost(self, reason: object = None) -> None:
            if self.received > 1 << 20:
                report = {"bytes": self.received, "seconds": self.last - self.first}
                print(json.dumps(report), flush=True)

    factory = server_factory(kind, certificate, Factory.forProtocol(Sink))
    listening = reactor.listenTCP(port, factory, backlog=4096, interface=HOST)  # type: ignore[attr-defined]
    print(f"READY {listening.getHost().port}", flush=True)
    reactor.run()  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------
# Child process: bulk sender
# ---------------------------------------------------------------------------


def run_bulk(kind: str, ca: str, port: int, size: int, total: int, seconds: float) -> None:
    """Send *total* bytes (or for *seconds*) in writes of *size*, then close cleanly."""
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ClientEndpoint
    from twisted.internet.interfaces import IHandshakeListener, IPushProducer
    from twisted.internet.protocol import Factory, Protocol
    from zope.interface import implementer

    block = os.urandom(size)
    # Writing in turns of about 1 MiB lets the reactor flush between turns.
    per_turn = max(1, (1 << 20) // size)

    @implementer(IHandshakeListener, IPushProducer)
    class Sender(Protocol):
        sent = 0
        pauses = 0
        paused = False
        started = False
        scheduled = False
        finished = False

        def connectionMade(self) -> None:
            assert self.transport is not None
            self.transport.registerProducer(self, True)  # type: ignore[attr-defined]
            if kind == "plain":
                self.start()

        def handshakeCompleted(self) -> None:
            self.start()

        def start(self) -> None:
            self.started = True
            self.deadline = time.monotonic() + seconds
            self.produce()

        def schedule(self) -> None:
            if not self.scheduled and not self.finished:
                self.scheduled = True
                reactor.callLater(0, self.produce)  # type: ignore[attr-defined]

        def produce(self) -> None:
            self.scheduled = False
            if self.finished or self.paused:
                return
            transport: Any = self.transport
            for _ in range(per_turn):
                transport.write(block)
                self.sent += size
                if self.paused or self.sent >= total:
                    break
            if self.sent >= total or time.monotonic() > self.deadline:
                self.finished = True
                transport.unregisterProducer()
                transport.loseConnection()
                return
            if not self.paused:
                self.schedule()

        def pauseProducing(self) -> None:
            self.paused = True
            self.pauses += 1

        def resumeProducing(self) -> None:
            self.paused = False
            if self.started:
                self.schedule()

        def stopProducing(self) -> None:
            self.finished = True

        def connectionLost(self, reason: object = None) -> None:
            print(json.dumps({"sent": self.sent, "pauses": self.pauses}), flush=True)
            reactor.stop()  # type: ignore[attr-defined]

    endpoint = TCP4ClientEndpoint(reactor, HOST, port, timeout=10)
    d = endpoint.connect(client_factory(kind, ca, Factory.forProtocol(Sender)))

    def failed(failure: Any) -> None:
        print(json.dumps({"error": str(failure.value)}), flush=True)
        reactor.stop()  # type: ignore[attr-defined]

    d.addErrback(failed)
    reactor.callLater(seconds + 30, reactor.stop)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------
# Child processes: write until paused, through endpoint strings
# ---------------------------------------------------------------------------


def endpoint_strings(kind: str, folder: str, port: int) -> tuple[str, str]:
    """(server, client) endpoint descriptions of *kind*, as an application writes them."""
    server_pem = f"{folder}/server.pem"
    if kind == "schannel":
        return (f"schannel:tcp:{port}:interface={HOST}:certificate={server_pem}",
                f"schannel:tcp:{HOST}:{port}:hostname=localhost:trustRoots={folder}/ca.pem")
    if kind == "twisted":
        return (f"ssl:{port}:interface={HOST}:privateKey={server_pem}:certKey={server_pem}",
                f"tls:localhost:{port}:endpoint=tcp\\:{HOST}\\:{port}:trustRoots={folder}/roots")
    return f"tcp:{port}:interface={HOST}", f"tcp:{HOST}:{port}"


def run_paused_server(kind: str, folder: str, total: int) -> None:
    """Count what arrives; answer one line once *total* bytes are in."""
    from twisted.internet import reactor
    from twisted.internet.endpoints import serverFromString
    from twisted.internet.protocol import Factory, Protocol
    from twisted.logger import globalLogBeginner

    globalLogBeginner.beginLoggingTo([], redirectStandardIO=False)

    class Counter(Protocol):
        received = 0
        deliveries = 0

        def dataReceived(self, data: bytes) -> None:
            before = self.received
            self.received += len(data)
            self.deliveries += 1
            if before < total <= self.received:
                assert self.transport is not None
                # How many pieces the data came in: the client reports it.
                self.transport.write(b"done %d\n" % self.deliveries)

    port = free_port()
    endpoint = serverFromString(reactor, endpoint_strings(kind, folder, port)[0])
    endpoint.listen(Factory.forProtocol(Counter)).addCallback(
        lambda listening: print(f"READY {listening.getHost().port}", flush=True)
    )
    reactor.run()  # type: ignore[attr-defined]


def run_paused_client(kind: str, folder: str, port: int, size: int, total: int) -> None:
    """Write *size*-byte blocks in a loop until paused, *total* bytes in all.

    Prints, as JSON, the seconds from connect() to the server's answer, the
    client's CPU seconds over the same span, and how long the first
    ``clientFromString`` took (it imports the endpoint's plugin and modules).
    """
    from twisted.internet import reactor
    from twisted.internet.endpoints import clientFromString
    from twisted.internet.interfaces import IPushProducer
    from twisted.internet.protocol import Factory, Protocol
    from zope.interface import implementer

    block = os.urandom(size)
    clock = time.perf_counter

    def cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    @implementer(IPushProducer)
    class Writer(Protocol):
        sent = 0
        paused = False
        pauses = 0

        def connectionMade(self) -> None:
            assert self.transport is not None
            self.transport.registerProducer(self, True)  # type: ignore[attr-defined]
            self.produce()

        def produce(self) -> None:
            write = self.transport.write  # type: ignore[union-attr]
            while not self.paused and self.sent < total:
                write(block)
                self.sent += size
            if self.sent >= total and not self.paused:
                self.transport.unregisterProducer()  # type: ignore[union-attr]

        def pauseProducing(self) -> None:
            self.paused = True
            self.pauses += 1

        def resumeProducing(self) -> None:
            self.paused = False
            if self.sent < total:
                reactor.callLater(0, self.produce)  # type: ignore[attr-defined]
            else:
                self.transport.unregisterProducer()  # type: ignore[union-attr]

        def stopProducing(self) -> None:
            self.paused = True

        def dataReceived(self, data: bytes) -> None:
            report = {"seconds": clock() - started, "cpu": cpu() - cpu_started,
                      "parse": parsed - parse_started, "pauses": self.pauses,
                      "deliveries": int(data.split()[-1])}
            print(json.dumps(report), flush=True)
            reactor.stop()  # type: ignore[attr-defined]

    parse_started = clock()
    endpoint = clientFromString(reactor, endpoint_strings(kind, folder, port)[1])
    parsed = clock()
    cpu_started = cpu()
    started = clock()
    d = endpoint.connect(Factory.forProtocol(Writer))

    def failed(failure: Any) -> None:
        print(json.dumps({"error": str(failure.value)}), flush=True)
        reactor.stop()  # type: ignore[attr-defined]

    d.addErrback(failed)
    reactor.callLater(120, reactor.stop)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------
# Child process: many idle connections
# ---------------------------------------------------------------------------


def run_idle(kind: str, ca: str, port: int, stages: list[int], concurrency: int) -> None:
    """Open connections in stages; print STAGE n when n are established, then
    wait for a line on stdin before the next stage."""
    raise_fd_limit()
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred
    from twisted.internet.endpoints import TCP4ClientEndpoint
    from twisted.internet.interfaces import IHandshakeListener
    from twisted.internet.protocol import Factory, Protocol
    from zope.interface import implementer

    established = 0
    opened: list[Any] = []
    waiters: list[Deferred[None]] = []

    @implementer(IHandshakeListener)
    class Idle(Protocol):
        def connectionMade(self) -> None:
            if kind == "plain":
                self.handshakeCompleted()

        def handshakeCompleted(self) -> None:
            nonlocal established
            established += 1
            if waiters:
                waiters.pop(0).callback(None)

    factory = client_factory(kind, ca, Factory.forProtocol(Idle))
    endpoint = TCP4ClientEndpoint(reactor, HOST, port, timeout=10)

    def open_one() -> Deferred[None]:
        done: Deferred[None] = Deferred()
        waiters.append(done)
        d = endpoint.connect(factory)
        d.addCallback(opened.append)
        d.addErrback(lambda f: (print(f"ERROR {f.value}", flush=True), os._exit(1)))
        return done

    def open_many(count: int) -> Deferred[None]:
        """Open *count* more connections, at most *concurrency* handshaking at once."""
        first = established
        finished: Deferred[None] = Deferred()
        started = 0

        def launch(_: object = None) -> None:
            nonlocal started
            if established - first >= count:
                if not finished.called:
                    finished.callback(None)
                return
            while started < count and started - (established - first) < concurrency:
                started += 1
                open_one().addCallback(launch)

        launch()
        return finished

    def stage(index: int) -> None:
        if index == len(stages):
            return
        count = stages[index] - (stages[index - 1] if index else 0)

        def reached(_: object) -> None:
            print(f"STAGE {established}", flush=True)
            threading.Thread(target=wait_line, args=(index + 1,), daemon=True).start()

        open_many(count).addCallback(reached)

    def wait_line(index: int) -> None:
        sys.stdin.readline()
        reactor.callFromThread(stage, index)  # type: ignore[attr-defined]

    reactor.callWhenRunning(stage, 0)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------
# Child process: plaintext connections, the floor under every handshake row
# ---------------------------------------------------------------------------


def plain_connection(port: int) -> None:
    """Connect, send 300 bytes, wait for the server's close.

    What a Twisted server spends on such a connection (accept, one read,
    close) is the part of every handshake row that is Twisted's own.
    """
    import socket

    with socket.create_connection((HOST, port), timeout=60) as connection:
        connection.sendall(b"x" * 300)
        connection.shutdown(socket.SHUT_WR)
        while connection.recv(4096):
            pass


def run_connect(port: int, seconds: float) -> None:
    """plain_connection() again and again for *seconds*; print the count."""
    count = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        plain_connection(port)
        count += 1
    print(json.dumps({"connections": count}), flush=True)


def aes_gcm_mb_per_second(seconds: float = 1.0) -> float:
    """AES-128-GCM encryption of 16 KiB records in this process (one core).

    ``cryptography`` carries the same OpenSSL as pyOpenSSL, so this is the
    cipher both TLS transports use, without any TLS or Python around it
    beyond one call per record.
    """
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    cipher = AESGCM(bytes(16))
    record = bytes(16384)
    nonce = bytes(12)
    done = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        for _ in range(64):
            cipher.encrypt(nonce, record, None)
        done += 64 * len(record)
    return done / (time.perf_counter() - started) / 1e6


# ---------------------------------------------------------------------------
# Orchestrator
# ---------------------------------------------------------------------------


def child(*args: str, stdin: int | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, *args],
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=TREE,
    )


def read_line(process: subprocess.Popen[str], prefix: str, timeout: float) -> str:
    """The first stdout line starting with *prefix*; fail after *timeout* seconds."""
    assert process.stdout is not None
    result: list[str] = []

    def reader() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            if line.startswith(prefix):
                result.append(line.strip())
                return

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    thread.join(timeout)
    if not result:
        process.kill()
        _, err = process.communicate(timeout=10)
        raise RuntimeError(f"no {prefix!r} line within {timeout}s from {process.args}: {err}")
    return result[0]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 of stat(5); fields[0] is field 3.
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


class Server:
    """A benchmark server process (ours, Twisted's, plaintext or s_server)."""

    def __init__(self, kind: str, certificate: str) -> None:
        self.kind = kind
        if kind == "s_server":
            self.port = free_port()
            self.process = subprocess.Popen(
                [
                    "openssl", "s_server", "-accept", f"{HOST}:{self.port}",
                    "-cert", certificate, "-key", certificate, "-quiet", "-naccept", "10000000",
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            wait_for_port(self.port)
        else:
            self.process = child("serve", kind, certificate, "0")
            self.port = int(read_line(self.process, "READY", 30).split()[1])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 10) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((HOST, port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {HOST}:{port} after {timeout}s")


def bulk(kind: str, files: dict[str, str], size: int, total: int, seconds: float) -> float:
    """MB/s received by the server from one client writing *size*-byte blocks."""
    with Server(kind, files["server"]) as server:
        sender = child("bulk", kind, files["ca"], str(server.port), str(size), str(total),
                       str(seconds))
        try:
            out, err = sender.communicate(timeout=seconds + 60)
        except subprocess.TimeoutExpired:
            sender.kill()
            raise RuntimeError(f"bulk sender for {kind} did not finish") from None
        if '"error"' in out:
            raise RuntimeError(f"bulk sender for {kind} failed: {out} {err}")
        report = json.loads(read_line(server.process, "{", 30))
    sender_report = json.loads(out.strip().splitlines()[-1])
    # How often flow control stopped the sender: context for the 100-byte row.
    print(f" [{sender_report['pauses'] / (report['bytes'] / 2**20):.2f} pauses/MiB]", end="")
    return float(report["bytes"]) / report["seconds"] / 1e6


def until_paused(kind: str, files: dict[str, str], size: int, total: int
                 ) -> tuple[float, float, float, float, int, int]:
    """(MB/s from connect to the server's answer, client CPU seconds, first
    parse seconds, server CPU seconds from listening to its answer, times the
    client was paused, dataReceived calls in the server)."""
    folder = files["folder"]
    server = child("pserve", kind, folder, str(total))
    try:
        port = int(read_line(server, "READY", 30).split()[1])
        server_cpu = cpu_seconds(server.pid)
        client = child("pclient", kind, folder, str(port), str(size), str(total))
        try:
            out, err = client.communicate(timeout=150)
        except subprocess.TimeoutExpired:
            client.kill()
            raise RuntimeError(f"until-paused client for {kind} did not finish") from None
        # The server has answered: all it did for this transfer is done.
        server_cpu = cpu_seconds(server.pid) - server_cpu
    finally:
        server.kill()
        server.communicate(timeout=10)
    lines = out.strip().splitlines()
    if not lines or '"error"' in lines[-1]:
        raise RuntimeError(f"until-paused client for {kind} failed: {out} {err}")
    report = json.loads(lines[-1])
    return (total / report["seconds"] / 1e6, report["cpu"], report["parse"], server_cpu,
            report["pauses"], report["deliveries"])


def handshakes(kinds: list[str], files: dict[str, str], mode: str, version: str,
               seconds: int, turns: int = 3) -> dict[str, tuple[float, int, int]]:
    """Server CPU microseconds per connection from ``openssl s_time``, for each
    of *kinds*; also the connection count and how many were resumed. For
    plaintext TCP, the same figure for connections without TLS (see
    run_connect).

    All the servers run at once and the client visits them in *turns* slices
    of *seconds* / *turns* each, round robin: a slow spell on a shared
    machine (they last seconds) then falls on every kind alike instead of
    on whichever happened to be measured during it.
    """
    servers: dict[str, Server] = {}
    totals = {kind: [0.0, 0, 0] for kind in kinds}
    share = max(1.0, seconds / turns)
    try:
        for kind in kinds:
            # Inside the try: if one fails to start, those already running stop.
            servers[kind] = Server(kind, files["server"])
        for kind, server in servers.items():
            # Connections first, so that lazy imports and first-use setup in
            # the server are not charged to the measured handshakes.
            visit(kind, server, "-new", version, 1)
        for _ in range(turns):
            for kind, server in servers.items():
                before = cpu_seconds(server.process.pid)
                count, resumed = visit(kind, server, mode, version, share)
                after = cpu_seconds(server.process.pid)
                totals[kind][0] += after - before
                totals[kind][1] += count
                totals[kind][2] += resumed
    finally:
        for server in servers.values():
            server.stop()
    return {
        kind: (cpu / max(count, 1) * 1e6, int(count), int(resumed))
        for kind, (cpu, count, resumed) in totals.items()
    }


def visit(kind: str, server: Server, mode: str, version: str, seconds: float
          ) -> tuple[int, int]:
    """Connect to *server* again and again for *seconds*: (connections, resumed)."""
    if kind == "plain":
        client = child("connect", "plain", str(server.port), str(seconds))
        out, err = client.communicate(timeout=seconds + 60)
        if '"connections"' not in out:
            raise RuntimeError(f"plaintext connection loop failed: {out} {err}")
        return int(json.loads(out.strip().splitlines()[-1])["connections"]), 0
    result = subprocess.run(
        ["openssl", "s_time", "-connect", f"{HOST}:{server.port}", mode,
         "-time", str(max(1, round(seconds))), version],
        capture_output=True, text=True, timeout=seconds + 60,
    )
    match = re.search(r"(\d+) connections in [\d.]+ real seconds", result.stdout)
    if match is None:
        raise RuntimeError(f"s_time against {kind}: {result.stdout[-500:]} {result.stderr}")
    # s_time prints one progress mark per connection: 'r' when it was resumed.
    resumed = sum(
        line.count("r")
        for line in result.stdout.splitlines()
        if line and set(line) <= {"r", "*"}
    )
    return int(match.group(1)), resumed


def idle_memory(kind: str, files: dict[str, str], count: int, base: int) -> float:
    """Bytes of server RSS per idle established connection."""
    with Server(kind, files["server"]) as server:
        client = child("idle", kind, files["ca"], str(server.port), str(base),
                       str(base + count), stdin=subprocess.PIPE)
        try:
            read_line(client, "STAGE", 120)
            time.sleep(1)  # let the server finish its side of the last handshakes
            rss_base = rss_bytes(server.process.pid)
            assert client.stdin is not None
            client.stdin.write("go\n")
            client.stdin.flush()
            read_line(client, "STAGE", 300)
            time.sleep(1)
            rss_full = rss_bytes(server.process.pid)
        finally:
            client.kill()
            client.wait(10)
    return (rss_full - rss_base) / count


def make_certificates(folder: str, key_type: str) -> dict[str, str]:
    from txschannel.testing import CertificateAuthority

    ca = CertificateAuthority(key_type=key_type)  # type: ignore[arg-type]
    server = ca.issue("localhost", "127.0.0.1", key_type=key_type)  # type: ignore[arg-type]
    # Twisted's tls: endpoint takes a folder of trusted certificates.
    os.mkdir(os.path.join(folder, "roots"))
    ca.write(os.path.join(folder, "roots", "ca.pem"))
    return {
        "ca": str(ca.write(os.path.join(folder, "ca.pem"))),
        "server": str(server.write(os.path.join(folder, "server.pem"))),
        "folder": folder,
    }


def available(kind: str) -> bool:
    if kind != "schannel":
        return True
    try:
        import txschannel.protocol  # noqa: F401
    except ImportError as e:
        print(f"note: txschannel.protocol cannot be imported ({e}); its row is skipped")
        return False
    return True


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def orchestrate(args: argparse.Namespace) -> None:
    raise_fd_limit()
    if shutil.which("openssl") is None:
        raise SystemExit("openssl is needed (apt-get install openssl)")
    if args.nice:
        # Children (servers, clients, openssl) inherit the niceness.
        os.nice(args.nice)
    load_before = os.getloadavg()
    kinds = [k for k in KINDS if available(k)]
    quick = args.quick
    rounds = 1 if quick else args.rounds
    bulk_seconds = 3.0 if quick else 5.0
    s_time_seconds = 2 if quick else 3
    idle_count = 500 if quick else 2000
    # Every measurement is taken once per round, the kinds taking turns, and
    # the median and the best round are reported: other load on the machine
    # only ever makes a figure worse, so the best is the least disturbed.
    samples: dict[str, dict[str, list[Any]]] = {k: {} for k in [*kinds, "s_server"]}
    handshake_kinds = [*kinds, "s_server"]
    with tempfile.TemporaryDirectory(prefix="txschannel-bench-") as folder:
        files = make_certificates(folder, args.key_type)

        def step(name: str, kind: str, run: Callable[..., Any], *arguments: Any) -> None:
            print(f"  {name:<24} {LABELS[kind]:<22}", end="", flush=True)
            started = time.monotonic()
            try:
                value = run(kind, files, *arguments)
            except Exception as e:  # one broken row must not hide the others
                print(f" FAILED: {e}")
                return
            print(f" {value!r}  ({time.monotonic() - started:.0f}s)")
            samples[kind].setdefault(name, []).append(value)

        for number in range(1, rounds + 1):
            print(f"round {number} of {rounds}")
            for kind in kinds if not args.paused_only else ():
                step("bulk 64KiB", kind, bulk, 65536, 4 << 30, bulk_seconds)
            for kind in kinds if not args.paused_only else ():
                step("bulk 100B", kind, bulk, 100, 1 << 30, bulk_seconds)
            for kind in kinds if not args.paused_only else ():
                step("endpoint 64KiB", kind, until_paused, 65536, args.endpoint_mb * 10**6)
            for kind in kinds:
                step("until paused 100B", kind, until_paused, 100, args.paused_mb * 10**6)
            if args.paused_only:
                continue
            for mode, version, name in (("-new", "-tls1_3", "full TLS1.3"),
                                        ("-new", "-tls1_2", "full TLS1.2"),
                                        ("-reuse", "-tls1_2", "resumed TLS1.2")):
                # No TLS in plaintext: one row measures its floor for all.
                visited = [k for k in handshake_kinds if k != "plain" or name == "full TLS1.3"]
                started = time.monotonic()
                try:
                    row = handshakes(visited, files, mode, version, s_time_seconds)
                except Exception as e:  # one broken row must not hide the others
                    print(f"  {name:<24} FAILED: {e}")
                    continue
                for kind, value in row.items():
                    print(f"  {name:<24} {LABELS[kind]:<22} {value!r}")
                    samples[kind].setdefault(name, []).append(value)
                print(f"  ({time.monotonic() - started:.0f}s for the row, kinds taking turns)")
            for kind in kinds:
                step("idle memory", kind, idle_memory, idle_count, 100)
            aes = aes_gcm_mb_per_second()
            print(f"  {'AES-128-GCM, 16 KiB':<24} {'(in this process)':<22} {aes!r}")
            samples["plain"].setdefault("aes", []).append(aes)

    best: dict[str, dict[str, Any]] = {k: {} for k in samples}
    median: dict[str, dict[str, Any]] = {k: {} for k in samples}
    for kind, by_name in samples.items():
        for name, values in by_name.items():
            # Throughput: higher is better; CPU (microseconds, count,
            # resumed) and memory: lower is better.
            ordered = sorted(values, key=lambda v: v[0] if isinstance(v, tuple) else v)
            if name.startswith(("bulk", "until paused", "endpoint")) or name == "aes":
                ordered.reverse()
            best[kind][name] = ordered[0]
            median[kind][name] = ordered[(len(ordered) - 1) // 2]
    if rounds > 1:
        print_table(median, kinds, idle_count, args.key_type, f"median of {rounds} rounds")
    print_table(best, kinds, idle_count, args.key_type, f"best of {rounds} round(s)")
    nice = f" --nice {args.nice}" if args.nice else ""
    paused = (f" --paused-mb {args.paused_mb} --endpoint-mb {args.endpoint_mb}"
              + (" --paused-only" if args.paused_only else ""))
    print(f"the command: python benchmarks/transport.py "
          f"--rounds {rounds} --key-type {args.key_type}{nice}{' --quick' if quick else ''}"
          f"{paused}")
    load_after = os.getloadavg()
    print(f"load average (1, 5, 15 min) before: {' '.join(f'{v:.2f}' for v in load_before)}; "
          f"after: {' '.join(f'{v:.2f}' for v in load_after)}; CPUs: {os.cpu_count()}")


def ratio(ours: float | None, other: float | None, better: str) -> str:
    """*ours* against *other*, written so that higher is better for txschannel."""
    if ours is None or other is None or ours == 0 or other == 0:
        return "-"
    return f"{(ours / other if better == 'up' else other / ours):.2f}"


def print_table(results: dict[str, dict[str, Any]], kinds: list[str], idle_count: int,
                key_type: str, title: str) -> None:
    columns = [*kinds, "s_server"]

    def cell(kind: str, name: str) -> Any:
        return results.get(kind, {}).get(name)

    def cpu(kind: str, name: str) -> float | None:
        value = cell(kind, name)
        if value is None and kind == "plain" and "TLS" in name:
            value = cell(kind, "full TLS1.3")  # measured once: there is no TLS
        if value is None:
            return None
        microseconds, count, resumed = value
        return float(microseconds)

    def part(kind: str, name: str, index: int) -> float | None:
        value = cell(kind, name)
        return None if value is None else float(value[index])

    def scaled(value: float | None, factor: float) -> float | None:
        return None if value is None else value * factor

    rows: list[tuple[str, dict[str, float | None], str]] = [
        ("bulk MB/s, 64 KiB writes", {k: cell(k, "bulk 64KiB") for k in columns}, "up"),
        ("bulk MB/s, 100 B writes", {k: cell(k, "bulk 100B") for k in columns}, "up"),
        ("endpoint strings MB/s, 64 KiB (client clock)",
         {k: part(k, "endpoint 64KiB", 0) for k in columns}, "up"),
        ("until paused MB/s, 100 B (client clock)",
         {k: part(k, "until paused 100B", 0) for k in columns}, "up"),
        ("  client CPU ms for the transfer",
         {k: scaled(part(k, "until paused 100B", 1), 1000) for k in columns}, "down"),
        ("  first clientFromString ms",
         {k: scaled(part(k, "until paused 100B", 2), 1000) for k in columns}, "down"),
        ("server CPU us/full handshake TLS1.3",
         {k: cpu(k, "full TLS1.3") for k in columns}, "down"),
        ("server CPU us/full handshake TLS1.2",
         {k: cpu(k, "full TLS1.2") for k in columns}, "down"),
        ("server CPU us/resumed handshake TLS1.2",
         {k: cpu(k, "resumed TLS1.2") for k in columns}, "down"),
        (f"server KiB/idle connection ({idle_count})",
         {k: (None if cell(k, "idle memory") is None else cell(k, "idle memory") / 1024)
          for k in columns}, "down"),
    ]
    width = 40
    print()
    print(f"{title}; key: {key_type}; loopback; server and client in separate processes")
    header = f"{'':<{width}}" + "".join(f"{LABELS[k]:>22}" for k in columns)
    header += f"{'vs Twisted':>12}{'vs plain':>10}{'vs s_server':>13}{'TLS part':>10}"
    print(header)
    for name, values, better in rows:
        line = f"{name:<{width}}" + "".join(f"{fmt(values.get(k)):>22}" for k in columns)
        ours = values.get("schannel")
        line += f"{ratio(ours, values.get('twisted'), better):>12}"
        line += f"{ratio(ours, values.get('plain'), better) if better == 'up' else '-':>10}"
        s_server = ratio(ours, values.get("s_server"), better) if "handshake" in name else "-"
        line += f"{s_server:>13}"
        floor = values.get("plain")
        tls_part = "-"
        if "handshake" in name and ours is not None and floor is not None and ours > floor:
            tls_part = ratio(ours - floor, values.get("s_server"), better)
        line += f"{tls_part:>10}"
        print(line)
    print()
    print("ratios: higher is better for txschannel (throughput ours/theirs, CPU and")
    print("memory theirs/ours); '-' = not applicable or not measured.")
    print("handshake rows, plaintext TCP column: a Twisted server's CPU per connection")
    print("with no TLS (accept, one read, close), the floor under any Twisted transport;")
    print("'TLS part' = s_server / (txschannel - that floor).")
    aes = results.get("plain", {}).get("aes")
    if aes is not None:
        print(f"AES-128-GCM alone, 16 KiB records, one core, same OpenSSL: {aes:,.0f} MB/s")
        plain = cell("plain", "bulk 64KiB")
        if plain:
            # A sender that does all a plaintext sender does and also
            # encrypts every byte on the same core, with nothing else added.
            ceiling = 1 / (1 / plain + 1 / aes)
            print(f"  so a TLS sender that costs plaintext TCP plus AES-GCM and nothing more "
                  f"tops out at {ceiling:,.0f} MB/s ({ceiling / plain:.2f} of plaintext)")
    print("resumed row: what a client asking to resume costs. Twisted's server has")
    print("resumption off, so for it that is a full handshake (see the counts below).")
    for kind in [*kinds, "s_server"]:
        value = cell(kind, "resumed TLS1.2")
        if value is not None:
            print(f"  {LABELS[kind]}: s_time -reuse resumed {value[2]} of {value[1]} connections")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("serve", "bulk", "idle", "connect", "pserve",
                                             "pclient"):
        role, kind, *rest = sys.argv[1:]
        if role == "pserve":
            run_paused_server(kind, rest[0], int(rest[1]))
        elif role == "pclient":
            run_paused_client(kind, rest[0], int(rest[1]), int(rest[2]), int(rest[3]))
        elif role == "connect":
            run_connect(int(rest[0]), float(rest[1]))
        elif role == "serve":
            run_server(kind, rest[0], int(rest[1]))
        elif role == "bulk":
            run_bulk(kind, rest[0], int(rest[1]), int(rest[2]), int(rest[3]), float(rest[4]))
        else:
            base, full = int(rest[2]), int(rest[3])
            run_idle(kind, rest[0], int(rest[1]), [base, full], concurrency=64)
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="one short round, 500 idle connections (noisier)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of every measurement; the best is reported (default 3)")
    parser.add_argument("--nice", type=int, default=0,
                        help="niceness change for every benchmark process, e.g. -5 "
                        "(needs root) to suffer less from other load")
    parser.add_argument("--key-type", choices=("ecdsa", "rsa"), default="ecdsa",
                        help="server certificate key (default: ECDSA P-256)")
    parser.add_argument("--paused-mb", type=int, default=300,
                        help="MB the until-paused client writes (default 300; 30 takes about "
                             "0.2 s, where the first connection's costs and noise dominate)")
    parser.add_argument("--endpoint-mb", type=int, default=1000,
                        help="MB the endpoint-strings client writes in 64 KiB blocks "
                             "(default 1000, about a second)")
    parser.add_argument("--paused-only", action="store_true",
                        help="measure only the until-paused row")
    orchestrate(parser.parse_args())


if __name__ == "__main__":
    main()
