"""Interop matrix: txschannel against other TLS stacks, as real processes over loopback.

Our server (the sans-IO :class:`~txschannel.ServerContext` behind a blocking
socket listener, :class:`ContextServer`) is visited by ``openssl s_client``,
``gnutls-cli``, ``curl``, Python's ``ssl`` and tlslite-ng; our client
(:func:`context_request`) visits ``openssl s_server``, ``gnutls-serv``, a
Python ``ssl`` server and a tlslite-ng server. Every cell runs with TLS 1.2
and with TLS 1.3 (the *peer* is limited to the version, so our side runs
with its defaults), with an RSA and with an ECDSA certificate, and offers
ALPN, which must come out as ``http/1.1`` on both sides.

Each cell is its own test. ``python -m tests.test_interop_matrix`` runs
every cell concurrently and prints the outcome table that
``docs/reliability.rst`` carries.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import serialization
from twisted.trial.unittest import FailTest, TestCase

from tests.support import certs
from tests.support.fetch import REQUEST, TIMEOUT, context_request
from tests.support.peers import free_port, require, wait_for_port
from txschannel import Credentials, SecurityError, ServerContext, Status

VERSIONS = ("TLSv1.2", "TLSv1.3")
KEYS = ("RSA", "ECDSA")
LAYERS = ("context", "transport")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVER_ALPN = ("h2", "http/1.1")
CLIENT_ALPN = ("h2", "http/1.1")


# -- our side, over blocking sockets -------------------------------------


@dataclass
class ServedConnection:
    """What :class:`ContextServer` saw on one accepted connection.

    :ivar kind: ``"established"`` (handshake done and request answered),
        ``"error"`` (a :class:`SecurityError`; ``status`` says which),
        ``"closed"`` (the peer closed before the handshake finished),
        ``"timeout"`` (the peer went silent) or ``"reset"``.
    """

    kind: str
    status: Status | None = None
    reason: str = ""
    protocol: str = ""
    cipher: str = ""
    alpn: str | None = None
    alert_sent: bool = False


def http_answer(server: ServerContext, request: bytes) -> bytes:
    """An HTTP/1.0 response describing the connection, for any request."""
    attributes = server.attributes
    body = (
        f"txschannel protocol={attributes.protocol} cipher={attributes.cipher} "
        f"alpn={attributes.alpn}\n"
    ).encode()
    return b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (
        len(body),
        body,
    )


class ContextServer:
    """txschannel's :class:`ServerContext` behind a threaded TCP listener.

    One thread per connection, blocking sockets with a timeout: no Twisted,
    so that it exercises the context exactly as a non-Twisted program would.
    Each connection is handshaken, one request is read and answered with
    *respond*, then the server sends close_notify and closes. Whatever
    happens is recorded in :attr:`connections`.

    :param handshake_timeout: a peer silent this long is dropped.
    """

    def __init__(
        self,
        credentials: Credentials,
        host: str = "127.0.0.1",
        respond: Callable[[ServerContext, bytes], bytes] = http_answer,
        handshake_timeout: float = TIMEOUT,
    ) -> None:
        self.credentials = credentials
        self.respond = respond
        self.handshake_timeout = handshake_timeout
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.listener = socket.create_server((host, 0), family=family, backlog=256)
        self.listener.settimeout(0.2)
        self.port: int = self.listener.getsockname()[1]
        self.connections: list[ServedConnection] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True)

    def __enter__(self) -> ContextServer:
        self._acceptor.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop accepting and wait (bounded) for connection threads to end."""
        self._stopping.set()
        if self._acceptor.is_alive():
            self._acceptor.join(5)
        self.listener.close()
        for thread in list(self._threads):
            thread.join(self.handshake_timeout + 5)

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                sock, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(sock,), daemon=True)
            with self._lock:
                self._threads = [t for t in self._threads if t.is_alive()]
                self._threads.append(thread)
            thread.start()

    def _record(self, connection: ServedConnection) -> None:
        with self._lock:
            self.connections.append(connection)

    def _serve(self, sock: socket.socket) -> None:
        with sock:
            sock.settimeout(self.handshake_timeout)
            try:
                self._record(self._converse(sock))
            except TimeoutError:
                self._record(ServedConnection("timeout"))
            except ConnectionError:
                self._record(ServedConnection("reset"))

    def _converse(self, sock: socket.socket) -> ServedConnection:
        server = ServerContext(self.credentials)
        buffer = b""
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    return ServedConnection("closed")
                step = server.accept(buffer + data)
                if step.token:
                    sock.sendall(step.token)
                buffer = step.extra
                if step.status is Status.OK:
                    break
            request = b""
            while b"\r\n\r\n" not in request:
                if buffer:
                    unwrapped = server.decrypt(buffer)
                    if unwrapped.token:
                        sock.sendall(unwrapped.token)
                    request += unwrapped.data
                    buffer = unwrapped.extra
                    if unwrapped.status is Status.CONTEXT_EXPIRED:
                        break
                    if b"\r\n\r\n" in request:
                        break
                data = sock.recv(65536)
                if not data:
                    break
                buffer += data
            attributes = server.attributes
            sock.sendall(server.encrypt(self.respond(server, request)) + server.shutdown())
            _linger(sock)
            return ServedConnection(
                "established",
                protocol=attributes.protocol,
                cipher=attributes.cipher,
                alpn=attributes.alpn,
            )
        except SecurityError as e:
            sent = False
            if e.token:
                try:
                    sock.sendall(e.token)
                    sent = True
                except OSError:
                    pass
            return ServedConnection("error", e.status, e.reason, alert_sent=sent)
        finally:
            server.delete()


def _linger(sock: socket.socket) -> None:
    """Half-close and read until the peer closes, so that unread input does
    not turn our close into a reset that destroys the response in flight."""
    try:
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(5)
        for _ in range(1000):
            if not sock.recv(65536):
                break
    except OSError:
        pass


# -- certificates ---------------------------------------------------------


@dataclass
class Pki:
    """A root and a server certificate for localhost / 127.0.0.1, as files."""

    key_kind: str
    folder: str
    root: certs.Issued
    server: certs.Issued
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    chain_file: str = ""
    fingerprint: str = field(default="")

    def __post_init__(self) -> None:
        prefix = self.key_kind.lower()
        self.ca_file = certs.write(
            self.folder, f"{prefix}-ca.pem", certs.pem(self.root.certificate)
        )
        self.cert_file = certs.write(
            self.folder, f"{prefix}-cert.pem", certs.pem(self.server.certificate)
        )
        self.key_file = certs.write(self.folder, f"{prefix}-key.pem", certs.pem(self.server.key))
        self.chain_file = certs.write(self.folder, f"{prefix}-server.pem", self.server.chain_pem)
        der = self.server.certificate.public_bytes(serialization.Encoding.DER)
        self.fingerprint = hashlib.sha256(der).hexdigest()


_folder: tempfile.TemporaryDirectory[str] | None = None
_pki_lock = threading.Lock()
_pkis: dict[str, Pki] = {}


def pki(key: str) -> Pki:
    """The certificates for *key* (``"RSA"`` or ``"ECDSA"``), made once per run."""
    global _folder
    # Cells run concurrently: without the lock two of them could each make
    # and write their own certificates under the same file names.
    with _pki_lock:
        if key not in _pkis:
            if _folder is None:
                _folder = tempfile.TemporaryDirectory(prefix="txschannel-interop-")
            kind = "rsa" if key == "RSA" else "ec"
            root = certs.authority(f"interop {key} root", key_kind=kind)
            server = certs.leaf(root, ["localhost", "127.0.0.1"], key_kind=kind)
            _pkis[key] = Pki(key, _folder.name, root, server)
        return _pkis[key]


# -- peers ----------------------------------------------------------------

PYTHON_SSL_CLIENT = r"""
import socket, ssl, sys
port, cafile, version = int(sys.argv[1]), sys.argv[2], sys.argv[3]
context = ssl.create_default_context(cafile=cafile)
version = getattr(ssl.TLSVersion, version.replace(".", "_"))
context.minimum_version = context.maximum_version = version
context.set_alpn_protocols(["http/1.1"])
with socket.create_connection(("127.0.0.1", port), timeout=20) as raw:
    with context.wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
        data = b""
        while True:
            chunk = tls.recv(65536)
            if not chunk:
                break
            data += chunk
        print("negotiated", tls.version(), tls.selected_alpn_protocol())
        sys.stdout.write(data.decode())
"""

PYTHON_SSL_SERVER = r"""
import socket, ssl, sys
certfile, keyfile, version = sys.argv[1], sys.argv[2], sys.argv[3]
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(certfile, keyfile)
version = getattr(ssl.TLSVersion, version.replace(".", "_"))
context.minimum_version = context.maximum_version = version
context.set_alpn_protocols(["http/1.1"])
listener = socket.create_server(("127.0.0.1", 0))
print(listener.getsockname()[1], flush=True)
while True:
    raw, _ = listener.accept()
    raw.settimeout(20)
    try:
        with context.wrap_socket(raw, server_side=True) as tls:
            request = b""
            while b"\r\n\r\n" not in request:
                chunk = tls.recv(65536)
                if not chunk:
                    break
                request += chunk
            alpn = tls.selected_alpn_protocol()
            body = ("python-ssl protocol=%s alpn=%s\n" % (tls.version(), alpn)).encode()
            tls.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            tls.unwrap()
    except (OSError, ssl.SSLError) as e:
        print("connection failed:", e, flush=True)
"""

TLSLITE_CLIENT = r"""
import hashlib, socket, sys
from tlslite import HandshakeSettings, TLSConnection
port, version, fingerprint = int(sys.argv[1]), sys.argv[2], sys.argv[3]
settings = HandshakeSettings()
settings.minVersion = settings.maxVersion = (3, 3) if version == "TLSv1.2" else (3, 4)
sock = socket.create_connection(("127.0.0.1", port), timeout=20)
tls = TLSConnection(sock)
tls.handshakeClientCert(settings=settings, serverName="localhost", alpn=[bytearray(b"http/1.1")])
der = bytes(tls.session.serverCertChain.x509List[0].bytes)
if hashlib.sha256(der).hexdigest() != fingerprint:
    sys.exit("the server presented the wrong certificate")
tls.write(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
data = b""
while True:
    chunk = tls.read()
    if not chunk:
        break
    data += bytes(chunk)
names = {(3, 3): "TLSv1.2", (3, 4): "TLSv1.3"}
alpn = tls.next_proto.decode() if tls.next_proto else None
print("negotiated", names.get(tls.version, tls.version), alpn)
sys.stdout.write(data.decode())
tls.close()
"""

TLSLITE_SERVER = r"""
import socket, sys
from tlslite import HandshakeSettings, TLSConnection, X509CertChain, parsePEMKey
certfile, keyfile, version = sys.argv[1], sys.argv[2], sys.argv[3]
chain = X509CertChain()
chain.parsePemList(open(certfile).read())
key = parsePEMKey(open(keyfile).read(), private=True)
settings = HandshakeSettings()
settings.minVersion = settings.maxVersion = (3, 3) if version == "TLSv1.2" else (3, 4)
listener = socket.create_server(("127.0.0.1", 0))
print(listener.getsockname()[1], flush=True)
names = {(3, 3): "TLSv1.2", (3, 4): "TLSv1.3"}
while True:
    raw, _ = listener.accept()
    raw.settimeout(20)
    try:
        tls = TLSConnection(raw)
        tls.handshakeServer(certChain=chain, privateKey=key, settings=settings,
                            alpn=[bytearray(b"http/1.1")])
        request = b""
        while b"\r\n\r\n" not in request:
            chunk = tls.read()
            if not chunk:
                break
            request += bytes(chunk)
        alpn = tls.next_proto.decode() if tls.next_proto else None
        body = ("tlslite-ng protocol=%s alpn=%s\n" % (names.get(tls.version), alpn)).encode()
        tls.write(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        tls.close()
    except Exception as e:
        print("connection failed:", repr(e), flush=True)
    finally:
        raw.close()
"""


def _gnutls_priority(version: str) -> str:
    return "NORMAL:-VERS-ALL:+VERS-TLS" + version[4:]


def _openssl_version_flag(version: str) -> str:
    return "-tls1_2" if version == "TLSv1.2" else "-tls1_3"


def peer_client_argv(peer: str, port: int, version: str, certificates: Pki) -> list[str]:
    """The command line with which *peer* visits our server."""
    if peer == "openssl s_client":
        return [
            "openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost",
            "-verify_hostname", "localhost", "-CAfile", certificates.ca_file,
            "-verify_return_error", "-alpn", "http/1.1", _openssl_version_flag(version),
            "-ign_eof",
        ]
    if peer == "gnutls-cli":
        return [
            "gnutls-cli", "--x509cafile", certificates.ca_file, "--port", str(port),
            "--alpn", "http/1.1", "--priority", _gnutls_priority(version), "localhost",
        ]
    if peer == "curl":
        curl_version = "--tlsv1.2" if version == "TLSv1.2" else "--tlsv1.3"
        return [
            "curl", "-sS", "--http1.1", "--max-time", str(int(TIMEOUT)), "--cacert",
            certificates.ca_file, "--resolve", f"localhost:{port}:127.0.0.1", curl_version,
            "--tls-max", version[4:], f"https://localhost:{port}/",
        ]
    if peer == "Python ssl":
        return [sys.executable, "-c", PYTHON_SSL_CLIENT, str(port), certificates.ca_file, version]
    if peer == "tlslite-ng":
        return [sys.executable, "-c", TLSLITE_CLIENT, str(port), version, certificates.fingerprint]
    raise ValueError(peer)


def peer_server_argv(peer: str, port: int, version: str, certificates: Pki) -> list[str]:
    """The command line of *peer* serving our client (port 0: it prints its own)."""
    if peer == "openssl s_server":
        return [
            "openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-cert",
            certificates.cert_file, "-key", certificates.key_file, "-www", "-alpn", "http/1.1",
            _openssl_version_flag(version),
        ]
    if peer == "gnutls-serv":
        return [
            "gnutls-serv", "--http", "--port", str(port), "--x509certfile",
            certificates.cert_file, "--x509keyfile", certificates.key_file, "--alpn", "http/1.1",
            "--priority", _gnutls_priority(version),
        ]
    if peer == "Python ssl":
        return [
            sys.executable, "-c", PYTHON_SSL_SERVER, certificates.cert_file,
            certificates.key_file, version,
        ]
    if peer == "tlslite-ng":
        return [
            sys.executable, "-c", TLSLITE_SERVER, certificates.cert_file,
            certificates.key_file, version,
        ]
    raise ValueError(peer)


PEER_CLIENTS = ("openssl s_client", "gnutls-cli", "curl", "Python ssl", "tlslite-ng")
PEER_SERVERS = ("openssl s_server", "gnutls-serv", "Python ssl", "tlslite-ng")
_PRINTS_PORT = {"Python ssl", "tlslite-ng"}


def _require_peer(argv: list[str]) -> None:
    require(argv[0])
    if argv[0] == sys.executable and "tlslite" in argv[2]:
        try:
            import tlslite  # noqa: F401
        except ImportError:
            raise FailTest(
                "tlslite-ng is not installed: this cell needs it (pip install tlslite-ng; "
                "it is in the test extra)"
            ) from None


@dataclass(frozen=True)
class Cell:
    """One interop cell: which side is ours and how it runs, the peer, the
    version, the key.

    ``layer`` is ``"context"`` (the sans-IO context over a blocking socket)
    or ``"transport"`` (the Twisted transport: ``twist schannel`` as the
    server, a ``schannel:`` client endpoint as the client, in a subprocess).
    """

    our_side: str  # "server" or "client"
    layer: str
    peer: str
    version: str
    key: str

    @property
    def name(self) -> str:
        return f"our {self.our_side} ({self.layer}) x {self.peer}, {self.version}, {self.key}"


CELLS = [
    Cell(side, layer, peer, version, key)
    for side, peers in (("server", PEER_CLIENTS), ("client", PEER_SERVERS))
    for layer in LAYERS
    for peer in peers
    for version in VERSIONS
    for key in KEYS
]


@contextmanager
def _process(argv: list[str], stdin: bytes | None = None) -> Iterator[subprocess.Popen[bytes]]:
    _require_peer(argv)
    process = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)


def run_server_cell(cell: Cell) -> str:
    """Our server, the peer as client. Returns a one-line description or raises FailTest."""
    certificates = pki(cell.key)
    credentials = Credentials.server(certificate=certificates.chain_file, alpn=SERVER_ALPN)
    with ContextServer(credentials) as server:
        argv = peer_client_argv(cell.peer, server.port, cell.version, certificates)
        with _process(argv) as process:
            assert process.stdin is not None
            try:
                output, _ = process.communicate(REQUEST, timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                output, _ = process.communicate()
                raise FailTest(
                    f"{cell.name}: the peer did not finish: {output[-2000:]!r}"
                ) from None
        server.stop()
    text = output.decode("utf-8", "replace")
    seen = server.connections
    if process.returncode != 0 or len(seen) != 1 or seen[0].kind != "established":
        raise FailTest(
            f"{cell.name}: exit {process.returncode}, server saw {seen}; peer said:\n{text[-3000:]}"
        )
    connection = seen[0]
    wanted = f"txschannel protocol={cell.version} cipher={connection.cipher} alpn=http/1.1"
    if wanted not in text:
        raise FailTest(f"{cell.name}: no {wanted!r} in the peer's output:\n{text[-3000:]}")
    if connection.protocol != cell.version or connection.alpn != "http/1.1":
        raise FailTest(f"{cell.name}: negotiated {connection}")
    return f"{connection.protocol} {connection.cipher} alpn={connection.alpn}"


@contextmanager
def _peer_server(
    cell: Cell, certificates: Pki
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """The cell's peer server, running, with the port it listens on.

    Peers in ``_PRINTS_PORT`` bind port 0 and print the port they got;
    the others are given a free port and waited for.
    """
    port = 0 if cell.peer in _PRINTS_PORT else free_port()
    argv = peer_server_argv(cell.peer, port, cell.version, certificates)
    with _process(argv) as process:
        assert process.stdout is not None
        if cell.peer in _PRINTS_PORT:
            line = process.stdout.readline()
            if not line.strip().isdigit():
                raise FailTest(f"{cell.name}: the peer server did not start: {line!r}")
            port = int(line)
        else:
            wait_for_port(port, timeout=TIMEOUT)
        yield process, port


def run_client_cell(cell: Cell) -> str:
    """Our client, the peer as server. Returns a one-line description or raises FailTest."""
    certificates = pki(cell.key)
    credentials = Credentials.client(trust_roots=certificates.ca_file, alpn=CLIENT_ALPN)
    with _peer_server(cell, certificates) as (process, port):
        assert process.stdout is not None
        try:
            fetched = context_request(credentials, port, "localhost")
        except SecurityError as e:
            process.kill()
            output = process.stdout.read().decode("utf-8", "replace")
            raise FailTest(f"{cell.name}: {e!r}; the peer said:\n{output[-3000:]}") from None
    response = fetched.response.decode("utf-8", "replace")
    if not re.match(r"HTTP/1\.[01] 200", response):
        raise FailTest(f"{cell.name}: not a 200 response: {response[:500]!r}")
    if fetched.protocol != cell.version or fetched.alpn != "http/1.1":
        raise FailTest(f"{cell.name}: negotiated {fetched.protocol} alpn={fetched.alpn}")
    if fetched.peer_certificate_der != certificates.server.certificate.public_bytes(
        serialization.Encoding.DER
    ):
        raise FailTest(f"{cell.name}: the peer's certificate is not the one it was given")
    return f"{fetched.protocol} {fetched.cipher} alpn={fetched.alpn}"


def _repo_env() -> dict[str, str]:
    # The repository goes on the path so that its twisted/plugins (the
    # schannel: endpoint, twist schannel) are found from an editable
    # install too; a normal install finds them anyway.
    path = os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path}


@contextmanager
def twist_server(certificates: Pki) -> Iterator[int]:
    """``twist schannel`` (the inspector) on a loopback port; yields the port."""
    with tempfile.TemporaryDirectory(prefix="txschannel-interop-twist-") as state:
        endpoint = f"schannel:tcp:0:interface=127.0.0.1:certificate={certificates.chain_file}"
        argv = [
            sys.executable, "-m", "twisted", "--log-format=text", "--log-file=-", "schannel",
            "--listen", endpoint, "--state-dir", state,
        ]
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env=_repo_env(), cwd=state,
        )
        try:
            assert process.stdout is not None
            seen = []
            for _ in range(200):  # log lines before the port shows up
                line = process.stdout.readline().decode("utf-8", "replace")
                if not line:
                    break
                seen.append(line)
                match = re.search(r"starting on (\d+)", line)
                if match:
                    # Keep draining the log so the server never blocks on it.
                    threading.Thread(target=process.stdout.read, daemon=True).start()
                    yield int(match.group(1))
                    return
            raise FailTest("twist schannel did not start:\n" + "".join(seen)[-3000:])
        finally:
            process.kill()
            process.wait(10)


def run_transport_server_cell(cell: Cell) -> str:
    """``twist schannel`` as the server, the peer as client."""
    certificates = pki(cell.key)
    with twist_server(certificates) as port:
        argv = peer_client_argv(cell.peer, port, cell.version, certificates)
        with _process(argv) as process:
            try:
                output, _ = process.communicate(REQUEST, timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                output, _ = process.communicate()
                raise FailTest(
                    f"{cell.name}: the peer did not finish: {output[-2000:]!r}"
                ) from None
    text = output.decode("utf-8", "replace")
    if process.returncode != 0:
        raise FailTest(f"{cell.name}: exit {process.returncode}; peer said:\n{text[-3000:]}")
    # The inspector page's own lines (the peers print similar words too).
    protocol = re.search(r"^protocol:\s+(\S+)", text, re.MULTILINE)
    cipher = re.search(r"^cipher:\s+(\S+)", text, re.MULTILINE)
    alpn = re.search(r"^ALPN:\s+(\S+)", text, re.MULTILINE)
    if not (protocol and cipher and alpn):
        raise FailTest(f"{cell.name}: no inspector page in the peer's output:\n{text[-3000:]}")
    if protocol.group(1) != cell.version or alpn.group(1) != "http/1.1":
        raise FailTest(f"{cell.name}: the server negotiated {protocol.group(1)} {alpn.group(1)}")
    return f"{protocol.group(1)} {cipher.group(1)} alpn={alpn.group(1)}"


TRANSPORT_CLIENT = r"""
import sys
from twisted.internet import defer, endpoints, protocol, task
from twisted.internet.interfaces import IHandshakeListener
from zope.interface import implementer


@implementer(IHandshakeListener)
class Fetch(protocol.Protocol):
    def __init__(self):
        self.data = b""
        self.done = defer.Deferred()
        self.negotiated = None

    def handshakeCompleted(self):
        attributes = self.transport.securityContext.attributes
        self.negotiated = (attributes.protocol, attributes.cipher, attributes.alpn)

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason):
        self.reason = reason
        self.done.callback(None)


@defer.inlineCallbacks
def main(reactor, port, ca):
    endpoint = endpoints.clientFromString(
        reactor,
        f"schannel:tcp:host=127.0.0.1:port={port}:timeout=20:hostname=localhost"
        f":trustRoots={ca}:alpn=h2,http/1.1",
    )
    fetch = yield endpoints.connectProtocol(endpoint, Fetch())
    fetch.transport.write(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
    yield fetch.done
    if fetch.negotiated is None:
        raise SystemExit(f"no handshake: {fetch.reason.getErrorMessage()}")
    print("negotiated", *fetch.negotiated)
    sys.stdout.write(fetch.data.decode("utf-8", "replace"))


task.react(main, sys.argv[1:])
"""


def run_transport_client_cell(cell: Cell) -> str:
    """A ``schannel:`` client endpoint (the Twisted transport) against the peer server."""
    certificates = pki(cell.key)
    with _peer_server(cell, certificates) as (_, port):
        try:
            result = subprocess.run(
                [sys.executable, "-c", TRANSPORT_CLIENT, str(port), certificates.ca_file],
                capture_output=True, timeout=TIMEOUT * 2, env=_repo_env(),
            )
        except subprocess.TimeoutExpired:
            raise FailTest(f"{cell.name}: our client did not finish") from None
    text = result.stdout.decode("utf-8", "replace")
    if result.returncode != 0:
        raise FailTest(
            f"{cell.name}: exit {result.returncode}:\n{text[-2000:]}"
            f"{result.stderr.decode('utf-8', 'replace')[-2000:]}"
        )
    match = re.search(r"negotiated (\S+) (\S+) (\S+)", text)
    if not match:
        raise FailTest(f"{cell.name}: no handshake report:\n{text[-2000:]}")
    protocol, cipher, alpn = match.groups()
    if protocol != cell.version or alpn != "http/1.1":
        raise FailTest(f"{cell.name}: negotiated {protocol} alpn={alpn}")
    if not re.search(r"^HTTP/1\.[01] 200", text, re.MULTILINE):
        raise FailTest(f"{cell.name}: not a 200 response:\n{text[-2000:]}")
    return f"{protocol} {cipher} alpn={alpn}"


def run_cell(cell: Cell) -> str:
    """Run one cell; a one-line description of what was negotiated, or FailTest."""
    runners = {
        ("server", "context"): run_server_cell,
        ("client", "context"): run_client_cell,
        ("server", "transport"): run_transport_server_cell,
        ("client", "transport"): run_transport_client_cell,
    }
    return runners[cell.our_side, cell.layer](cell)


class InteropMatrixTests(TestCase):
    """One test per cell, generated below."""

    timeout = 60


def _cell_test(cell: Cell) -> Callable[[InteropMatrixTests], None]:
    def test(self: InteropMatrixTests) -> None:
        description = run_cell(cell)
        self.assertIn(cell.version, description)

    return test


def _method_name(cell: Cell) -> str:
    peer = re.sub(r"[^a-z0-9]+", "_", cell.peer.lower()).strip("_")
    version = cell.version.replace("TLSv1.", "tls1")
    return (
        f"test_our_{cell.our_side}_{cell.layer}_with_{peer}_over_{version}"
        f"_{cell.key.lower()}_alpn"
    )


for _cell in CELLS:
    setattr(InteropMatrixTests, _method_name(_cell), _cell_test(_cell))


def matrix(workers: int = 8) -> list[tuple[Cell, bool, str]]:
    """Run every cell concurrently; (cell, passed, description or failure)."""

    def attempt(cell: Cell) -> tuple[Cell, bool, str]:
        try:
            return cell, True, run_cell(cell)
        except FailTest as e:
            return cell, False, str(e).splitlines()[0][:200]

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(attempt, CELLS))


def table(results: list[tuple[Cell, bool, str]]) -> str:
    """The outcomes as an reStructuredText list-table."""
    lines = [
        ".. list-table::",
        "   :header-rows: 1",
        "",
        "   * - our side",
        "     - as",
        "     - peer",
        "     - version",
        "     - key",
        "     - outcome",
    ]
    for cell, passed, detail in results:
        outcome = f"pass: {detail}" if passed else f"FAIL: {detail}"
        lines += [
            f"   * - {cell.our_side}",
            f"     - {cell.layer}",
            f"     - {cell.peer}",
            f"     - {cell.version}",
            f"     - {cell.key}",
            f"     - {outcome}",
        ]
    passed = sum(1 for _, ok, _ in results if ok)
    lines += ["", f"{passed} of {len(results)} cells pass."]
    return "\n".join(lines)


if __name__ == "__main__":
    started = time.monotonic()
    outcome = matrix()
    print(table(outcome))
    print(f"\n({time.monotonic() - started:.1f} s; {os.cpu_count()} CPUs)", file=sys.stderr)
    sys.exit(0 if all(ok for _, ok, _ in outcome) else 1)
