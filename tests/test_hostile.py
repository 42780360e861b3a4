"""Hostile clients against ``twist schannel``: it answers each and keeps serving.

The server under test is a real ``twist schannel`` process (the inspector,
on a loopback port, with a 2-second handshake timeout). Many connections of
each hostile kind are opened concurrently; each must be answered with a
fatal TLS alert and a close, or (where no alert is due) a close. Between
and during the rounds, well-behaved clients must be served. The server's
resident memory is read from ``/proc`` after a warm-up and again after two
full rounds; it must come back to its baseline (within allocator slack),
and the second round must not grow it further.

``python -m tests.test_hostile`` runs the same and prints the figures.
"""

from __future__ import annotations

import os
import random
import re
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from OpenSSL import SSL
from twisted.trial.unittest import FailTest, TestCase

from tests.support import certs
from tests.support.fetch import context_request
from txschannel import ClientContext, Credentials

HANDSHAKE_TIMEOUT = 2
#: Connections of each hostile kind per round.
PER_KIND = 40
#: How long any probe waits for an answer (far above HANDSHAKE_TIMEOUT).
PROBE_TIMEOUT = 15.0
WORKERS = 32
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: RSS may end this far above its baseline: allocator arenas are not always
#: returned to the system, but a per-connection leak over hundreds of
#: connections shows up well past it.
RSS_SLACK_KIB = 4 * 1024


class TwistServer:
    """``twist schannel`` in a subprocess, its log read continuously."""

    def __init__(self, folder: str) -> None:
        root = certs.authority("hostile-test root")
        identity = certs.leaf(root, ["localhost", "127.0.0.1"])
        self.ca_file = certs.write(folder, "ca.pem", certs.pem(root.certificate))
        server_file = certs.write(folder, "server.pem", identity.chain_pem)
        endpoint = (
            f"schannel:tcp:0:interface=127.0.0.1:certificate={server_file}"
            f":handshakeTimeout={HANDSHAKE_TIMEOUT}"
        )
        self.argv = [
            sys.executable, "-m", "twisted", "--log-format=text", "--log-file=-",
            "schannel", "--listen", endpoint, "--state-dir", os.path.join(folder, "state"),
        ]
        # The repository goes on the path so that its twisted/plugins are
        # found even from an editable install; a normal install finds them anyway.
        path = os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p)
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
        if not self._ready.wait(30) or self._port is None:
            self.stop()
            raise FailTest("twist schannel did not start listening:\n" + self.log[-3000:])
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
        self._ready.set()

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def rss_kib(self) -> int:
        """The server's resident set size, in KiB, from /proc."""
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise FailTest("no VmRSS in /proc status")

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._reader.join(5)


# -- what the server says back --------------------------------------------


def read_answer(sock: socket.socket) -> str:
    """Read until the server closes and classify what it sent.

    ``"alert NAME"``: a fatal TLS alert record (e.g. ``"alert
    unexpected_message"``), then the close. ``"close"``: the server closed
    (or reset) without sending anything. Anything else is a wrong answer,
    described.
    """
    data = b""
    sock.settimeout(PROBE_TIMEOUT)
    try:
        while len(data) < 1 << 20:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except TimeoutError:
        return f"no answer within {PROBE_TIMEOUT}s (got {data[:16]!r})"
    except ConnectionResetError:
        pass
    if not data:
        return "close"
    if data[0] == 21 and data[1] == 3 and len(data) >= 7 and data[5] == 2:
        return "alert " + ALERTS.get(data[6], str(data[6]))
    if data[0] == 22:
        # A ServerHello flight: the server is still handshaking (the probe
        # sent a valid ClientHello); what matters is what follows it.
        return "handshake, then " + ("close" if _ends_cleanly(data) else "alert")
    return f"unexpected bytes {data[:16]!r}"


#: TLS alert descriptions (RFC 8446 section 6) a server may send here.
ALERTS = {
    10: "unexpected_message",
    20: "bad_record_mac",
    22: "record_overflow",
    40: "handshake_failure",
    47: "illegal_parameter",
    50: "decode_error",
    70: "protocol_version",
    80: "internal_error",
}
ANY_ALERT = "alert *"


def _ends_cleanly(data: bytes) -> bool:
    """True if the records in *data* hold no plaintext alert."""
    offset = 0
    while offset + 5 <= len(data):
        if data[offset] == 21:
            return False
        offset += 5 + int.from_bytes(data[offset + 3:offset + 5], "big")
    return True


def client_hello(version: str = "TLSv1.3") -> bytes:
    """A real ClientHello, from our own client context."""
    credentials = Credentials.client(manual_validation=True, maximum_version=version)
    return ClientContext(credentials, "localhost").initialize().token


# -- the hostile kinds ------------------------------------------------------


@dataclass
class Kind:
    """One kind of hostile connection and the answers that are correct for it."""

    name: str
    probe: Callable[[int, int], str]
    correct: tuple[str, ...]

    def accepts(self, answer: str) -> bool:
        """Whether *answer* is correct for this kind (``"alert *"``: any fatal alert)."""
        if answer in self.correct:
            return True
        return ANY_ALERT in self.correct and answer.startswith("alert ")


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=PROBE_TIMEOUT)


def _send_then_read(payload: bytes, half_close: bool = False) -> Callable[[int, int], str]:
    def probe(port: int, index: int) -> str:
        with _connect(port) as sock:
            try:
                sock.sendall(payload)
                if half_close:
                    sock.shutdown(socket.SHUT_WR)
            except ConnectionError:
                return "close"
            return read_answer(sock)

    return probe


def _random_garbage(port: int, index: int) -> str:
    # Seeded per connection, so a failing case can be replayed.
    chance = random.Random(index)
    payload = bytes(chance.randrange(256) for _ in range(chance.randrange(1, 4096)))
    with _connect(port) as sock:
        try:
            sock.sendall(payload)
            # Random bytes may look like the start of a record: the end of
            # the stream settles it.
            sock.shutdown(socket.SHUT_WR)
        except ConnectionError:
            return "close"
        return read_answer(sock)


def _truncated_hello(port: int, index: int) -> str:
    hello = client_hello()
    cut = 1 + index * 7 % (len(hello) - 1)
    with _connect(port) as sock:
        sock.sendall(hello[:cut])
        sock.shutdown(socket.SHUT_WR)
        return read_answer(sock)


def _truncated_hello_then_silence(port: int, index: int) -> str:
    hello = client_hello()
    with _connect(port) as sock:
        sock.sendall(hello[: 1 + index * 13 % (len(hello) - 1)])
        return read_answer(sock)


def _hello_then_silence(port: int, index: int) -> str:
    with _connect(port) as sock:
        sock.sendall(client_hello())
        return read_answer(sock)


def _oversized_handshake_message(port: int, index: int) -> str:
    # A handshake message claiming 16 MiB, spread over full-size records.
    body = b"\x01\xff\xff\xff" + bytes(2**14 - 4)
    records = [b"\x16\x03\x01\x40\x00" + body] + [b"\x16\x03\x01\x40\x00" + bytes(2**14)] * 7
    with _connect(port) as sock:
        try:
            for record in records:
                sock.sendall(record)
        except ConnectionError:
            return "close"
        return read_answer(sock)


def _renegotiation(port: int, index: int) -> str:
    """A TLS 1.2 client that finishes the handshake, then asks to renegotiate."""
    context = SSL.Context(SSL.TLS_METHOD)
    context.set_max_proto_version(SSL.TLS1_2_VERSION)
    context.set_verify(SSL.VERIFY_NONE, lambda *args: True)
    with _connect(port) as sock:
        # OpenSSL needs a blocking socket; the kernel's timeouts bound it instead.
        sock.setblocking(True)
        limit = struct.pack("ll", int(PROBE_TIMEOUT), 0)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, limit)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, limit)
        connection = SSL.Connection(context, sock)
        connection.set_tlsext_host_name(b"localhost")
        connection.set_connect_state()
        connection.do_handshake()
        if not connection.renegotiate():
            return "the client could not ask (OpenSSL refused locally)"
        try:
            connection.do_handshake()
            connection.send(b"GET / HTTP/1.0\r\n\r\n")
            while connection.recv(65536):
                pass
        except SSL.ZeroReturnError:
            return "renegotiation completed (it must not)"
        except SSL.Error as e:
            text = str(e).lower()
            if "no renegotiation" in text or "alert" in text or "unexpected eof" in text:
                return "refused"
            return f"refused with {e}"
        except ConnectionError:
            return "refused"
        if connection.total_renegotiations():
            return "renegotiation completed (it must not)"
        return "refused"


KINDS = [
    Kind("plain HTTP to the TLS port",
         _send_then_read(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"),
         ("alert unexpected_message",)),
    Kind("random garbage", _random_garbage, (ANY_ALERT, "close")),
    Kind("truncated ClientHello, then end of stream", _truncated_hello, (ANY_ALERT, "close")),
    Kind("truncated ClientHello, then silence", _truncated_hello_then_silence,
         (ANY_ALERT, "close")),
    Kind("malformed ClientHello (message too short)",
         _send_then_read(b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00"),
         ("alert decode_error", "alert illegal_parameter")),
    Kind("record longer than TLS allows",
         _send_then_read(b"\x16\x03\x01\x48\x01" + bytes(64)), ("alert record_overflow",)),
    Kind("handshake message claiming 16 MiB", _oversized_handshake_message, (ANY_ALERT, "close")),
    Kind("record of unknown content type",
         _send_then_read(b"\x63\x03\x03\x00\x04ABCD"), ("alert unexpected_message",)),
    Kind("application data before the handshake",
         _send_then_read(b"\x17\x03\x03\x00\x10" + bytes(16)), ("alert unexpected_message",)),
    Kind("alert record before any handshake",
         _send_then_read(b"\x15\x03\x03\x00\x02\x02\x28"),
         ("close", "alert unexpected_message")),
    Kind("valid ClientHello, then silence (slowloris)", _hello_then_silence,
         ("handshake, then close", "handshake, then alert")),
    Kind("renegotiation request (TLS 1.2)", _renegotiation, ("refused",)),
]


# -- the run ------------------------------------------------------------------


@dataclass
class Figures:
    """What one run measured."""

    tried: Counter[str] = field(default_factory=Counter)
    correct: Counter[str] = field(default_factory=Counter)
    wrong: dict[str, Counter[str]] = field(default_factory=dict)
    answers: dict[str, Counter[str]] = field(default_factory=dict)
    good_served: int = 0
    good_failed: list[str] = field(default_factory=list)
    rss_baseline: int = 0
    rss_after_round: list[int] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"{'kind':50} tried  answered correctly"]
        for kind in KINDS:
            out.append(f"{kind.name:50} {self.tried[kind.name]:5}  {self.correct[kind.name]:5}")
            seen = self.answers.get(kind.name, Counter())
            out.append("    " + ", ".join(f"{a} x{n}" for a, n in sorted(seen.items())))
            for answer, count in self.wrong.get(kind.name, Counter()).items():
                out.append(f"    wrong answer x{count}: {answer}")
        out.append(f"well-behaved clients served: {self.good_served}, "
                   f"failed: {len(self.good_failed)}")
        out.append(f"RSS baseline {self.rss_baseline} KiB, after each round "
                   f"{', '.join(f'{r} KiB' for r in self.rss_after_round)}")
        return out


def good_client(server: TwistServer) -> str | None:
    """One well-behaved HTTPS request; None if served, else what went wrong."""
    credentials = _good_credentials(server.ca_file)
    try:
        fetched = context_request(credentials, server.port, "localhost", timeout=PROBE_TIMEOUT)
    except Exception as e:  # any failure of a good client is a finding
        return repr(e)
    if b"200" not in fetched.response.split(b"\r\n", 1)[0]:
        return f"response {fetched.response[:80]!r}"
    return None


_credentials_cache: dict[str, Credentials] = {}


def _good_credentials(ca_file: str) -> Credentials:
    if ca_file not in _credentials_cache:
        _credentials_cache[ca_file] = Credentials.client(trust_roots=ca_file)
    return _credentials_cache[ca_file]


def run(server: TwistServer, rounds: int = 2, per_kind: int = PER_KIND) -> Figures:
    figures = Figures()

    def good() -> None:
        problem = good_client(server)
        if problem is None:
            figures.good_served += 1
        else:
            figures.good_failed.append(problem)

    for _ in range(20):  # warm-up: imports, caches, first allocations
        good()
    figures.rss_baseline = server.rss_kib()
    with ThreadPoolExecutor(WORKERS) as pool:
        for _ in range(rounds):
            jobs = []
            for kind in KINDS:
                for index in range(per_kind):
                    jobs.append((kind, pool.submit(kind.probe, server.port, index)))
            # Well-behaved clients while the hostile ones are in flight.
            for _ in range(10):
                good()
            for kind, job in jobs:
                figures.tried[kind.name] += 1
                try:
                    answer = job.result(PROBE_TIMEOUT * 4)
                except Exception as e:
                    answer = f"probe failed: {e!r}"
                figures.answers.setdefault(kind.name, Counter())[answer[:80]] += 1
                if kind.accepts(answer):
                    figures.correct[kind.name] += 1
                else:
                    figures.wrong.setdefault(kind.name, Counter())[answer[:200]] += 1
            for _ in range(10):
                good()
            figures.rss_after_round.append(server.rss_kib())
    return figures


class HostileClientTests(TestCase):
    """Hundreds of hostile connections; each answered, good clients served, no leak."""

    timeout = 240

    def setUp(self) -> None:
        self.folder = tempfile.mkdtemp(prefix="txschannel-hostile-")
        self.server = TwistServer(self.folder)
        self.addCleanup(self.server.stop)

    def test_every_hostile_connection_is_answered_and_good_clients_are_served(self) -> None:
        figures = run(self.server)
        report = "\n".join(figures.lines())
        print("\n" + report)
        self.assertTrue(self.server.alive(), "the server died:\n" + self.server.log[-3000:])
        for kind in KINDS:
            self.assertEqual(
                figures.correct[kind.name], figures.tried[kind.name],
                f"{kind.name}: wrong answers\n{report}",
            )
        self.assertEqual(figures.good_failed, [], report)
        self.assertGreater(figures.good_served, 0)
        # Memory: back to the baseline, and the second round no worse than the first.
        first, last = figures.rss_after_round[0], figures.rss_after_round[-1]
        self.assertLessEqual(last, figures.rss_baseline + RSS_SLACK_KIB, report)
        self.assertLessEqual(last, first + RSS_SLACK_KIB // 2, report)
        # Nothing escaped into the log as an unhandled error.
        log = self.server.log
        for marker in ("Unhandled Error", "Traceback (most recent call last)",
                       "Unhandled error in Deferred"):
            self.assertNotIn(marker, log, log[-5000:])


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="txschannel-hostile-") as folder:
        server = TwistServer(folder)
        try:
            started = time.monotonic()
            result = run(server, rounds=int(sys.argv[1]) if len(sys.argv) > 1 else 2)
            print("\n".join(result.lines()))
            print(f"({time.monotonic() - started:.1f} s)")
        finally:
            server.stop()
