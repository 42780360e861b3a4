"""The security context against other TLS stacks.

In process: Python's ``ssl`` module (``SSLObject`` over ``MemoryBIO``, linked
against the system OpenSSL, not pyOpenSSL's) as client and as server, and
as the judge of every alert we send: it must name the alert we meant.
Over loopback sockets: ``openssl s_server`` (which can send a TLS 1.3
KeyUpdate, something neither pyOpenSSL nor ``ssl`` can) and
``openssl s_client``.
"""

from __future__ import annotations

import os
import select
import socket
import ssl
import subprocess
from collections.abc import Callable

from cryptography import x509
from twisted.trial.unittest import SynchronousTestCase

from tests.support.contexts import (
    NAME,
    authority,
    client_credentials,
    expired_pem,
    server_credentials,
)
from tests.support.handshake import Side, Speaker, converse, fails
from tests.support.peers import Peer, free_port, require
from tests.support.pyssl import (
    PythonSide,
    load_chain,
    python_client,
    python_server,
)
from txschannel import ClientContext, Credentials, SecurityError, ServerContext, Status, _openssl

_CERTIFICATE_STATUSES = (
    Status.WRONG_PRINCIPAL, Status.CERT_EXPIRED, Status.CERT_UNKNOWN, Status.UNTRUSTED_ROOT
)

TIMEOUT = 10.0


# -- interop -------------------------------------------------------------------


class PythonServerTests(SynchronousTestCase):
    """Our ClientContext against Python's ssl as the server."""

    def check(self, version: ssl.TLSVersion, name: str) -> None:
        ours = Side(ClientContext(client_credentials(alpn=["h2", "http/1.1"]), NAME))
        theirs = python_server(version, alpn=["http/1.1"])
        to_server, to_client = converse(ours, theirs, ours.start())
        attributes = ours.context.attributes
        self.assertEqual(attributes.protocol, name)
        self.assertEqual(theirs.obj.version(), name)
        self.assertEqual(attributes.cipher, theirs.obj.cipher()[0])  # type: ignore[index]
        self.assertEqual((attributes.alpn, theirs.obj.selected_alpn_protocol()),
                         ("http/1.1", "http/1.1"))
        # Data both ways.
        theirs.feed(to_server + ours.context.encrypt(b"request"))
        self.assertEqual(theirs.read(), b"request")
        reply = ours.context.decrypt(ours.extra + to_client + theirs.write(b"response"))
        self.assertEqual(reply.data, b"response")
        # Our close_notify, as Python reads it, and Python's answer.
        theirs.feed(reply.token + ours.context.shutdown())
        self.assertEqual(theirs.read(), b"")
        self.assertTrue(theirs.closed)
        theirs.obj.unwrap()
        end = ours.context.decrypt(reply.extra + theirs.outgoing.read())
        self.assertEqual(end.status, Status.CONTEXT_EXPIRED)

    def test_tls13_to_python_ssl_server(self) -> None:
        self.check(ssl.TLSVersion.TLSv1_3, "TLSv1.3")

    def test_tls12_to_python_ssl_server(self) -> None:
        self.check(ssl.TLSVersion.TLSv1_2, "TLSv1.2")

    def test_resumption_against_python_ssl_server(self) -> None:
        for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            load_chain(context, authority().server_pem)
            context.maximum_version = version
            credentials = client_credentials()
            for attempt in range(2):
                ours = Side(ClientContext(credentials, NAME))
                theirs = PythonSide(context, server_side=True)
                to_server, to_client = converse(ours, theirs, ours.start())
                # Let the TLS 1.3 tickets arrive before the next connection.
                ours.context.decrypt(ours.extra + to_client + theirs.write(b"x"))
                self.assertEqual(ours.context.attributes.session_reused, attempt == 1)
                self.assertEqual(theirs.obj.session_reused, attempt == 1)

    def test_tls_unique_matches_python_ssl(self) -> None:
        ours = Side(ClientContext(client_credentials(), NAME))
        theirs = python_server(ssl.TLSVersion.TLSv1_2)
        converse(ours, theirs, ours.start())
        self.assertEqual(ours.context.channel_binding("tls-unique"),
                         theirs.obj.get_channel_binding("tls-unique"))

    def test_client_certificate_to_python_ssl_server(self) -> None:
        ours = Side(ClientContext(client_credentials(certificate=authority().client_pem), NAME))
        theirs = python_server(client_ca=authority().roots)
        converse(ours, theirs, ours.start())
        peer = theirs.obj.getpeercert()
        assert peer is not None
        self.assertIn(("email", "client@example.com"), peer["subjectAltName"])


class PythonClientTests(SynchronousTestCase):
    """Our ServerContext against Python's ssl as the client."""

    def check(self, version: ssl.TLSVersion, name: str) -> None:
        theirs = python_client(version, alpn=["h2"])
        ours = Side(ServerContext(server_credentials(alpn=["http/1.1", "h2"])))
        to_server, to_client = converse(theirs, ours, theirs.start())
        attributes = ours.context.attributes
        self.assertEqual(attributes.protocol, name)
        self.assertEqual(attributes.alpn, "h2")
        self.assertEqual(attributes.server_name, NAME)
        theirs.feed(to_client)
        up = ours.context.decrypt(ours.extra + to_server + theirs.write(b"hello server"))
        self.assertEqual(up.data, b"hello server")
        theirs.feed(up.token + ours.context.encrypt(b"hello client"))
        self.assertEqual(theirs.read(), b"hello client")
        # Python closes first; we see CONTEXT_EXPIRED and answer.
        try:
            theirs.obj.unwrap()
        except ssl.SSLWantReadError:
            pass
        down = ours.context.decrypt(up.extra + theirs.outgoing.read())
        self.assertEqual(down.status, Status.CONTEXT_EXPIRED)
        theirs.feed(ours.context.shutdown())
        theirs.obj.unwrap()  # completes: Python got our close_notify

    def test_tls13_from_python_ssl_client(self) -> None:
        self.check(ssl.TLSVersion.TLSv1_3, "TLSv1.3")

    def test_tls12_client_to_our_server(self) -> None:
        self.check(ssl.TLSVersion.TLSv1_2, "TLSv1.2")

    def test_python_client_certificate_seen_by_our_server(self) -> None:
        for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            theirs = python_client(version, certificate=authority().client_pem)
            ours = Side(ServerContext(server_credentials(
                client_ca=authority().roots, require_client_certificate=True)))
            converse(theirs, ours, theirs.start())
            peer = ours.context.attributes.peer_certificate
            assert peer is not None
            names = peer.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            self.assertEqual(names.get_values_for_type(x509.RFC822Name), ["client@example.com"])


# -- alerts, both ways -----------------------------------------------------------


class AlertTests(SynchronousTestCase):
    """Every error token is an alert Python's ssl names as we meant it, and
    every alert Python sends maps to its status here."""

    def our_client_fails(self, ours: ClientContext, theirs: PythonSide,
                         status: Status, reason: str) -> SecurityError:
        side = Side(ours)
        speaker, error, token = fails(side, theirs, side.start())
        self.assertIs(speaker, side, f"Python failed first: {error}")
        assert isinstance(error, SecurityError)
        self.assertEqual(error.status, status, error.reason)
        if _openssl.FAST or status not in _CERTIFICATE_STATUSES:
            # (The public path cannot choose the alert for a certificate it
            # refuses: docs/context.rst.)
            self.assertIn(reason, theirs.alert_reason(token))
        return error

    def our_server_fails(self, theirs: PythonSide, ours: ServerContext,
                         status: Status, reason: str) -> SecurityError:
        side = Side(ours)
        speaker, error, token = fails(theirs, side, theirs.start())
        self.assertIs(speaker, side, f"Python failed first: {error}")
        assert isinstance(error, SecurityError)
        self.assertEqual(error.status, status, error.reason)
        self.assertIn(reason, theirs.alert_reason(token))
        return error

    def python_fails(self, client: Speaker, server: Speaker, first: bytes,
                     status: Status) -> SecurityError:
        """Python raises first; its alert must raise *status* here."""
        speaker, error, token = fails(client, server, first)
        self.assertIsInstance(speaker, PythonSide, f"we failed first: {error}")
        self.assertTrue(token, "Python sent no alert")
        ours = server if speaker is client else client
        assert isinstance(ours, Side)
        try:
            ours.feed(token) if not ours.done else ours.context.decrypt(ours.extra + token)
        except SecurityError as e:
            self.assertEqual(e.status, status, e.reason)
            return e
        raise AssertionError(f"the alert {token.hex()} was not an error here")

    # Our client judges Python's server.

    def test_wrong_host_sends_bad_certificate(self) -> None:
        for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            self.our_client_fails(ClientContext(client_credentials(), "example.com"),
                                  python_server(version), Status.WRONG_PRINCIPAL,
                                  "SSLV3_ALERT_BAD_CERTIFICATE")

    def test_unknown_ca_sends_unknown_ca(self) -> None:
        self.our_client_fails(ClientContext(client_credentials("RSA"), NAME), python_server(),
                              Status.UNTRUSTED_ROOT, "TLSV1_ALERT_UNKNOWN_CA")

    def test_expired_certificate_sends_certificate_expired(self) -> None:
        self.our_client_fails(ClientContext(client_credentials(), NAME),
                              python_server(pem=expired_pem()),
                              Status.CERT_EXPIRED, "SSLV3_ALERT_CERTIFICATE_EXPIRED")

    def test_tampered_record_from_python_sends_bad_record_mac(self) -> None:
        for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            ours = Side(ClientContext(client_credentials(), NAME))
            theirs = python_server(version)
            to_server, to_client = converse(ours, theirs, ours.start())
            theirs.feed(to_server)
            record = bytearray(theirs.write(b"tamper with me"))
            record[-2] ^= 0x80
            error = self.assertRaises(SecurityError, ours.context.decrypt,
                                      ours.extra + to_client + bytes(record))
            self.assertEqual(error.status, Status.MESSAGE_ALTERED, error.reason)
            self.assertEqual(theirs.alert_reason(error.token), "SSLV3_ALERT_BAD_RECORD_MAC")

    # Our server judges Python's client.

    def test_plaintext_http_gets_unexpected_message(self) -> None:
        error = self.assertRaises(SecurityError, ServerContext(server_credentials()).accept,
                                  b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        self.assertEqual(error.status, Status.ILLEGAL_MESSAGE)
        client = python_client()
        client.start()
        self.assertEqual(client.alert_reason(error.token), "SSLV3_ALERT_UNEXPECTED_MESSAGE")

    def test_no_common_version_sends_protocol_version(self) -> None:
        self.our_server_fails(python_client(ssl.TLSVersion.TLSv1_2),
                              ServerContext(server_credentials(minimum_version="TLSv1.3")),
                              Status.ALGORITHM_MISMATCH, "TLSV1_ALERT_PROTOCOL_VERSION")

    def test_no_common_cipher_sends_handshake_failure(self) -> None:
        self.our_server_fails(python_client(ssl.TLSVersion.TLSv1_2, ciphers="AES128-SHA"),
                              ServerContext(server_credentials("RSA")),
                              Status.ALGORITHM_MISMATCH, "SSLV3_ALERT_HANDSHAKE_FAILURE")

    def test_no_common_alpn_sends_no_application_protocol(self) -> None:
        self.our_server_fails(python_client(alpn=["h2"]),
                              ServerContext(server_credentials(alpn=["http/1.1"])),
                              Status.APPLICATION_PROTOCOL_MISMATCH,
                              "tlsv1 alert no application protocol")

    def test_missing_client_certificate_sends_certificate_required(self) -> None:
        server = ServerContext(server_credentials(client_ca=authority().roots,
                                                  require_client_certificate=True))
        theirs = python_client(ssl.TLSVersion.TLSv1_3)
        side = Side(server)
        speaker, error, token = fails(theirs, side, theirs.start())
        self.assertIs(speaker, side)
        assert isinstance(error, SecurityError)
        self.assertEqual(error.status, Status.NO_CREDENTIALS)
        self.assertEqual(theirs.alert_reason(token), "TLSV13_ALERT_CERTIFICATE_REQUIRED")

    def test_tampered_record_to_our_server_sends_bad_record_mac(self) -> None:
        theirs = python_client()
        ours = Side(ServerContext(server_credentials()))
        to_server, to_client = converse(theirs, ours, theirs.start())
        theirs.feed(to_client)
        record = bytearray(theirs.write(b"tamper with me"))
        record[10] ^= 0x01
        error = self.assertRaises(SecurityError, ours.context.decrypt,
                                  ours.extra + to_server + bytes(record))
        self.assertEqual(error.status, Status.MESSAGE_ALTERED)
        self.assertEqual(theirs.alert_reason(error.token), "SSLV3_ALERT_BAD_RECORD_MAC")

    # Python's alerts, mapped here.

    def test_python_client_distrusting_us_maps_to_untrusted_root(self) -> None:
        theirs = python_client(roots=authority("RSA").roots)
        self.python_fails(theirs, Side(ServerContext(server_credentials())), theirs.start(),
                          Status.UNTRUSTED_ROOT)

    def test_python_client_on_expired_certificate_maps_to_cert_expired(self) -> None:
        theirs = python_client()
        server = ServerContext(Credentials.server(certificate=expired_pem()))
        self.python_fails(theirs, Side(server), theirs.start(), Status.CERT_EXPIRED)

    def test_python_client_on_wrong_host_maps_to_cert_unknown(self) -> None:
        theirs = python_client(hostname="example.com")
        self.python_fails(theirs, Side(ServerContext(server_credentials())), theirs.start(),
                          Status.CERT_UNKNOWN)

    def test_python_server_without_our_version_maps_to_algorithm_mismatch(self) -> None:
        ours = Side(ClientContext(client_credentials(minimum_version="TLSv1.3"), NAME))
        self.python_fails(ours, python_server(ssl.TLSVersion.TLSv1_2), ours.start(),
                          Status.ALGORITHM_MISMATCH)

    def test_python_server_without_our_cipher_maps_to_algorithm_mismatch(self) -> None:
        ours = Side(ClientContext(client_credentials(maximum_version="TLSv1.2"), NAME))
        self.python_fails(ours, python_server(ssl.TLSVersion.TLSv1_2, ciphers="AES128-SHA"),
                          ours.start(), Status.ALGORITHM_MISMATCH)

    def test_python_server_requiring_a_certificate_maps_to_no_credentials(self) -> None:
        ours = Side(ClientContext(client_credentials(), NAME))
        theirs = python_server(ssl.TLSVersion.TLSv1_2, client_ca=authority().roots)
        self.python_fails(ours, theirs, ours.start(), Status.NO_CREDENTIALS)


# -- real processes over loopback ---------------------------------------------


def _write(folder: str, name: str, data: bytes) -> str:
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name)
    with open(path, "wb") as handle:
        handle.write(data)
    return path


def _connect(port: int) -> socket.socket:
    """Connect to a peer process that may still be starting up."""
    import time

    deadline = time.monotonic() + TIMEOUT
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _handshake_over(sock: socket.socket, side: Side, first: bytes) -> None:
    sock.sendall(first)
    while not side.done:
        data = sock.recv(1 << 16)
        if not data:
            raise AssertionError("the peer closed during the handshake")
        token = side.feed(data)
        if token:
            sock.sendall(token)


def _read_until(sock: socket.socket, side: Side, wanted: bytes,
                check: Callable[[], None] | None = None) -> bytes:
    """Decrypt from *sock* until *wanted* appears; send every token back."""
    received = b""
    result = side.context.decrypt(side.extra)
    side.extra = result.extra
    received += result.data
    while wanted not in received:
        data = sock.recv(1 << 16)
        if not data:
            raise AssertionError(f"closed before {wanted!r}; got {received!r}")
        result = side.context.decrypt(side.extra + data)
        side.extra = result.extra
        received += result.data
        if result.token:
            sock.sendall(result.token)
    return received


def _read_token(sock: socket.socket, side: Side) -> bytes:
    """Decrypt from *sock* until a decrypt call gives a token to send back."""
    while True:
        data = sock.recv(1 << 16)
        if not data:
            raise AssertionError("closed before a token was due")
        result = side.context.decrypt(side.extra + data)
        side.extra = result.extra
        if result.token:
            return result.token


class OpenSSLProcessTests(SynchronousTestCase):
    def test_key_update_from_openssl_s_server_is_handled(self) -> None:
        """openssl s_server sends KeyUpdate ('K': update_requested, 'k': not);
        we keep decrypting, and what we send afterwards is still read."""
        openssl = require("openssl")
        folder = self.mktemp()
        certificate = _write(folder, "server.pem", authority().server_pem)
        port = free_port()
        argv = [openssl, "s_server", "-accept", f"127.0.0.1:{port}", "-cert", certificate,
                "-tls1_3", "-naccept", "1"]
        with Peer(argv) as peer:
            assert peer.process.stdin is not None
            with _connect(port) as sock:
                side = Side(ClientContext(client_credentials(), NAME))
                _handshake_over(sock, side, side.start())
                self.assertEqual(side.context.attributes.protocol, "TLSv1.3")

                def say(line: bytes) -> None:
                    peer.process.stdin.write(line)  # type: ignore[union-attr]
                    peer.process.stdin.flush()  # type: ignore[union-attr]

                say(b"before\n")
                _read_until(sock, side, b"before\n")
                # KeyUpdate, no answer requested. s_server reports each
                # KeyUpdate it sends; wait for that so that "k" is read as
                # a command, not together with the next line as data.
                say(b"k\n")
                output = _drain_process(peer.process, b"SSL_do_handshake -> 1")
                say(b"after-k\n")  # encrypted under s_server's new keys
                _read_until(sock, side, b"after-k\n")
                sock.sendall(side.context.encrypt(b"client-after-k\n"))
                output += _drain_process(peer.process, b"client-after-k", seen=output)
                # KeyUpdate with update_requested: our answer must come back
                # as a decrypt token at once (s_server waits for it).
                say(b"K\n")
                answer = _read_token(sock, side)
                self.assertEqual(answer[:1], b"\x17")
                sock.sendall(answer + side.context.encrypt(b"client-after-K\n"))
                output += _drain_process(peer.process, b"client-after-K", seen=output)
                say(b"after-K\n")  # encrypted under s_server's newer keys
                _read_until(sock, side, b"after-K\n")
                sock.sendall(side.context.shutdown())
        self.assertIn(b"client-after-K", output)
        self.assertIn(b"client-after-k", output)
        self.assertEqual(output.count(b"SSL_do_handshake -> 1"), 2, output)

    def test_openssl_s_client_talks_to_our_server(self) -> None:
        openssl = require("openssl")
        folder = self.mktemp()
        roots = _write(folder, "ca.pem", authority().roots)
        listener = socket.create_server(("127.0.0.1", 0))
        listener.settimeout(TIMEOUT)
        port = listener.getsockname()[1]
        argv = [openssl, "s_client", "-connect", f"127.0.0.1:{port}", "-servername", NAME,
                "-CAfile", roots, "-verify_return_error", "-alpn", "h2"]
        with listener, Peer(argv) as peer:
            sock, _ = listener.accept()
            with sock:
                sock.settimeout(TIMEOUT)
                side = Side(ServerContext(server_credentials(alpn=["h2"])))
                data = sock.recv(1 << 16)
                _handshake_over(sock, side, side.feed(data))
                self.assertEqual(side.context.attributes.alpn, "h2")
                self.assertEqual(side.context.attributes.server_name, NAME)
                assert peer.process.stdin is not None
                peer.process.stdin.write(b"ping from s_client\n")
                peer.process.stdin.flush()
                _read_until(sock, side, b"ping from s_client\n")
                sock.sendall(side.context.encrypt(b"pong from txschannel\n") +
                             side.context.shutdown())
                output = _drain_process(peer.process, b"pong from txschannel")
        self.assertIn(b"pong from txschannel", output)
        self.assertIn(b"Verification: OK", output)


    def test_key_update_from_openssl_s_client_to_our_server(self) -> None:
        """The server side of KeyUpdate: s_client's "K" asks for our answer."""
        openssl = require("openssl")
        folder = self.mktemp()
        roots = _write(folder, "ca.pem", authority().roots)
        listener = socket.create_server(("127.0.0.1", 0))
        listener.settimeout(TIMEOUT)
        port = listener.getsockname()[1]
        argv = [openssl, "s_client", "-connect", f"127.0.0.1:{port}", "-servername", NAME,
                "-CAfile", roots, "-verify_return_error", "-tls1_3"]
        with listener, Peer(argv) as peer:
            sock, _ = listener.accept()
            with sock:
                sock.settimeout(TIMEOUT)
                side = Side(ServerContext(server_credentials()))
                _handshake_over(sock, side, side.feed(sock.recv(1 << 16)))
                stdin = peer.process.stdin
                assert stdin is not None
                stdin.write(b"K\n")  # KeyUpdate, update_requested
                stdin.flush()
                output = _drain_process(peer.process, b"KEYUPDATE")
                answer = _read_token(sock, side)
                sock.sendall(answer + side.context.encrypt(b"server-after-K\n"))
                output += _drain_process(peer.process, b"server-after-K", seen=output)
                stdin.write(b"client-after-K\n")  # under s_client's new keys
                stdin.flush()
                _read_until(sock, side, b"client-after-K\n")
                sock.sendall(side.context.shutdown())
        self.assertIn(b"KEYUPDATE", output)
        self.assertIn(b"server-after-K", output)


class GnuTLSProcessTests(SynchronousTestCase):
    """A TLS stack that shares no code with OpenSSL: gnutls-serv --echo."""

    def check(self, priority: str, version: str) -> None:
        gnutls = require("gnutls-serv")
        folder = self.mktemp()
        leaf = authority().server
        certificate = _write(folder, "cert.pem",
                             b"".join(p.bytes() for p in leaf.cert_chain_pems))
        key = _write(folder, "key.pem", leaf.private_key_pem.bytes())
        port = free_port()
        argv = [gnutls, "--echo", "--port", str(port), "--x509certfile", certificate,
                "--x509keyfile", key, "--priority", priority]
        with Peer(argv, stdin=subprocess.DEVNULL) as peer:
            with _connect(port) as sock:
                side = Side(ClientContext(client_credentials(alpn=["h2"]), NAME))
                _handshake_over(sock, side, side.start())
                self.assertEqual(side.context.attributes.protocol, version)
                # Lines: gnutls-serv --echo answers line by line, with a
                # line buffer of its own (one 40 KB line never comes back).
                message = b"".join(os.urandom(200).hex().encode() + b"\n" for _ in range(20))
                sock.sendall(side.context.encrypt(message))
                self.assertEqual(_read_until(sock, side, message), message)
                sock.sendall(side.context.shutdown())
            self.assertTrue(peer.process.poll() is None, peer.output)

    def test_tls13_to_gnutls_serv(self) -> None:
        self.check("NORMAL", "TLSv1.3")

    def test_tls12_to_gnutls_serv(self) -> None:
        self.check("NORMAL:-VERS-TLS1.3", "TLSv1.2")


def _drain_process(process: subprocess.Popen[bytes], wanted: bytes, *, count: int = 1,
                   seen: bytes = b"") -> bytes:
    """Read a peer's stdout until *wanted* has shown up *count* times,
    counting what was *seen* before (or it exits, or time runs out)."""
    import time

    assert process.stdout is not None
    output = b""
    deadline = time.monotonic() + TIMEOUT
    fd = process.stdout.fileno()
    while (seen + output).count(wanted) < count and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            output += chunk
    return output
