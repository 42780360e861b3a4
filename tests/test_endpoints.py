"""``schannel:`` endpoint strings: parsing, every option, every error, real peers.

The parse tests build endpoints from strings and check what came out or
which message was raised; nothing listens. The connection tests listen on
loopback (TCP and UNIX sockets) and talk TLS to ``openssl s_client``,
``curl`` and txschannel's own client made from a ``schannel:`` string. The
server application answers each request with a line describing the
connection (ALPN, client certificate, peer address), so that every
assertion is made on what actually crossed the wire.
"""

from __future__ import annotations

import atexit
import datetime
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trustme
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP4ServerEndpoint,
    clientFromString,
    connectProtocol,
    serverFromString,
)
from twisted.internet.interfaces import IStreamClientEndpoint, IStreamServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.threads import deferToThread
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.support.certs import encrypted_pem
from tests.support.endpoints import ReplyFactory
from tests.support.peers import require
from txschannel import Credentials
from txschannel.endpoints import (
    CLIENT_OPTIONS,
    SERVER_OPTIONS,
    SchannelClientEndpoint,
    SchannelServerEndpoint,
    unparse,
)
from txschannel.testing import CertificateAuthority

reactor: Any = _reactor


# -- certificates ------------------------------------------------------------------


class PKI:
    """Every certificate and key file the tests use, in one folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        ca = trustme.CA()
        self.ca = self._write("ca.pem", ca.cert_pem.bytes())
        server = ca.issue_cert("localhost", "127.0.0.1")
        self.server = self._write("server.pem", server.private_key_and_cert_chain_pem.bytes())
        self.server_certificate = self._write("server-cert.pem", server.cert_chain_pems[0].bytes())
        self.server_key = self._write("server-key.pem", server.private_key_pem.bytes())
        other = ca.issue_cert("localhost")
        self.other_key = self._write("other-key.pem", other.private_key_pem.bytes())
        self.not_pem = self._write("not-pem.pem", b"this is not a certificate\n")

        # A leaf under an intermediate, to show that chain= is sent.
        intermediate = ca.create_child_ca()
        chained = intermediate.issue_cert("localhost", "127.0.0.1")
        self.chained_leaf = self._write(
            "chained-leaf.pem",
            chained.private_key_pem.bytes() + chained.cert_chain_pems[0].bytes(),
        )
        self.intermediate = self._write("intermediate.pem", intermediate.cert_pem.bytes())

        # Client certificates come from their own CA.
        client_ca = trustme.CA()
        self.client_ca = self._write("client-ca.pem", client_ca.cert_pem.bytes())
        client = client_ca.issue_cert("alice@example.com", common_name="alice")
        self.client = self._write("client.pem", client.private_key_and_cert_chain_pem.bytes())
        self.client_certificate = self._write("client-cert.pem", client.cert_chain_pems[0].bytes())
        self.client_key = self._write("client-key.pem", client.private_key_pem.bytes())

        # One PEM per host name, and default.pem for every other name.
        self.sni = folder / "sni"
        self.sni.mkdir()
        for name in ("alpha.test", "beta.test"):
            issued = ca.issue_cert(name)
            (self.sni / f"{name}.pem").write_bytes(issued.private_key_and_cert_chain_pem.bytes())
        default = ca.issue_cert("localhost", "127.0.0.1")
        (self.sni / "default.pem").write_bytes(default.private_key_and_cert_chain_pem.bytes())

        # A trust-roots folder holding the CA.
        self.ca_folder = folder / "roots"
        self.ca_folder.mkdir()
        shutil.copy(self.ca, self.ca_folder / "ca.pem")

        # An unrelated CA, for "untrusted" cases and for reload().
        self.stranger_ca = trustme.CA()

    def _write(self, name: str, data: bytes) -> str:
        path = self.folder / name
        path.write_bytes(data)
        return str(path)


_pki: PKI | None = None


def pki() -> PKI:
    """The module's certificates, made on first use (a few milliseconds)."""
    global _pki
    if _pki is None:
        folder = Path(tempfile.mkdtemp(prefix="txschannel-endpoints-"))
        atexit.register(shutil.rmtree, folder, True)
        _pki = PKI(folder)
    return _pki


def q(path: str | os.PathLike[str]) -> str:
    """A path quoted for an endpoint string (backslash, colon, equals escaped)."""
    text = str(path)
    for special in ("\\", ":", "="):
        text = text.replace(special, "\\" + special)
    return text


# -- the application on both ends --------------------------------------------------


class Ask(Protocol):
    """Client side: send one line, collect everything until the close."""

    def __init__(self, line: bytes = b"hello\n") -> None:
        self.line = line
        self.received = b""
        self.done: Deferred[tuple[bytes, Failure]] = Deferred()

    def connectionMade(self) -> None:
        # Written before the handshake ends: the transport holds it until then.
        assert self.transport is not None
        self.transport.write(self.line)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.done.callback((self.received, reason or Failure(ConnectionError("closed"))))


def run(argv: Sequence[str], stdin: bytes = b"") -> Deferred[subprocess.CompletedProcess[bytes]]:
    """Run a peer process in a thread (the reactor keeps serving meanwhile)."""
    require(argv[0])
    return deferToThread(
        subprocess.run, list(argv), input=stdin, capture_output=True, timeout=30, check=False
    )


class LiveTestCase(TestCase):
    """Listen on a ``schannel:`` server string, connect to it, clean up fully."""

    timeout = 60

    @inlineCallbacks
    def serve(self, endpoint: IStreamServerEndpoint) -> Any:
        """Listen; return (port, factory). Stops listening at the end."""
        factory = ReplyFactory()
        port = yield endpoint.listen(factory)
        self.addCleanup(self._stop, port, factory)
        return port, factory

    @inlineCallbacks
    def _stop(self, port: Any, factory: ReplyFactory) -> Any:
        # Wait for the server side of every connection to finish, so that
        # no handshake timer or socket outlives the test.
        for protocol in factory.protocols:
            yield protocol.lost
        yield port.stopListening()

    def listen(self, description: str) -> Any:
        return self.serve(serverFromString(reactor, description))

    @inlineCallbacks
    def ask(self, endpoint: IStreamClientEndpoint, line: bytes = b"hello\n") -> Any:
        """Connect, send *line*; return (reply, reason for the close)."""
        protocol = Ask(line)
        yield connectProtocol(endpoint, protocol)
        result = yield protocol.done
        return result

    def ask_string(self, description: str, line: bytes = b"hello\n") -> Any:
        return self.ask(clientFromString(reactor, description), line)


# -- parsing: what comes out -------------------------------------------------------


class ServerStringTests(SynchronousTestCase):
    """Server strings build a SchannelServerEndpoint over the right inner endpoint."""

    def parse(self, description: str) -> SchannelServerEndpoint:
        endpoint = serverFromString(reactor, description)
        self.assertIsInstance(endpoint, SchannelServerEndpoint)
        assert isinstance(endpoint, SchannelServerEndpoint)
        return endpoint

    def test_certificate_file_holding_its_key(self) -> None:
        endpoint = self.parse(f"schannel:tcp:8443:certificate={q(pki().server)}")
        self.assertIsInstance(endpoint.inner, TCP4ServerEndpoint)
        self.assertFalse(endpoint.credentials.is_client)

    def test_port_and_interface_keywords_reach_the_tcp_endpoint(self) -> None:
        endpoint = self.parse(
            "schannel:tcp:port=8443:interface=127.0.0.1:"
            f"certificate={q(pki().server_certificate)}:privateKey={q(pki().server_key)}"
        )
        inner: Any = endpoint.inner
        self.assertEqual((inner._port, inner._interface), (8443, "127.0.0.1"))

    def test_unix_socket_inner_endpoint(self) -> None:
        endpoint = self.parse(f"schannel:unix:/tmp/x.sock:certificate={q(pki().server)}")
        self.assertEqual(type(endpoint.inner).__name__, "UNIXServerEndpoint")

    def test_haproxy_nesting_puts_proxy_protocol_in_front_of_tls(self) -> None:
        endpoint = self.parse(f"schannel:haproxy:tcp:8443:certificate={q(pki().server)}")
        self.assertEqual(type(endpoint.inner).__name__, "HAProxyServerEndpoint")

    def test_escaped_colon_in_a_path_option(self) -> None:
        folder = pki().folder / "with:colon"
        folder.mkdir(exist_ok=True)
        shutil.copy(pki().server, folder / "server.pem")
        endpoint = self.parse(f"schannel:tcp:8443:certificate={q(folder / 'server.pem')}")
        self.assertFalse(endpoint.credentials.is_client)

    def test_escaped_colon_in_the_inner_description_stays_escaped(self) -> None:
        endpoint = self.parse(f"schannel:unix:/tmp/a\\:b\\=c.sock:certificate={q(pki().server)}")
        inner: Any = endpoint.inner
        self.assertEqual(inner._address, "/tmp/a:b=c.sock")

    def test_handshake_timeout(self) -> None:
        endpoint = self.parse(
            f"schannel:tcp:8443:certificate={q(pki().server)}:handshakeTimeout=2.5"
        )
        self.assertEqual(endpoint.handshake_timeout, 2.5)

    def test_handshake_timeout_defaults_to_thirty_seconds(self) -> None:
        endpoint = self.parse(f"schannel:tcp:8443:certificate={q(pki().server)}")
        self.assertEqual(endpoint.handshake_timeout, 30.0)

    def test_handshake_memory(self) -> None:
        for text, size in (("1048576", 1 << 20), ("64M", 64 << 20), ("2g", 2 << 30),
                           ("512KiB", 512 << 10)):
            endpoint = self.parse(
                f"schannel:tcp:8443:certificate={q(pki().server)}:handshakeMemory={text}"
            )
            self.assertEqual(endpoint.handshake_memory, size, text)

    def test_handshake_memory_defaults_to_64_mib_and_reaches_the_factory(self) -> None:
        endpoint = self.parse(f"schannel:tcp:8443:certificate={q(pki().server)}")
        self.assertEqual(endpoint.handshake_memory, 64 * 1024 * 1024)
        endpoint = self.parse(
            f"schannel:tcp:0:interface=127.0.0.1:certificate={q(pki().server)}"
            ":handshakeMemory=1M"
        )
        port = self.successResultOf(endpoint.listen(Factory.forProtocol(Protocol)))
        self.addCleanup(port.stopListening)
        self.assertEqual(port.factory.handshake_memory, 1 << 20)

    def test_alpn_comma_list(self) -> None:
        endpoint = self.parse(f"schannel:tcp:8443:certificate={q(pki().server)}:alpn=h2,http/1.1")
        self.assertEqual(endpoint.credentials.alpn, (b"h2", b"http/1.1"))

    def test_require_client_certificate_accepts_yes_and_no_spellings(self) -> None:
        for spelling in ("yes", "true", "1", "on", "no", "false", "0", "off"):
            self.parse(
                f"schannel:tcp:8443:certificate={q(pki().server)}:clientCA={q(pki().client_ca)}:"
                f"requireClientCertificate={spelling}"
            )

    def test_sni_folder_without_certificate_uses_its_default_pem(self) -> None:
        endpoint = self.parse(f"schannel:tcp:8443:sni={q(pki().sni)}")
        self.assertFalse(endpoint.credentials.is_client)

    def test_bytes_description(self) -> None:
        endpoint = serverFromString(
            reactor, f"schannel:tcp:8443:certificate={q(pki().server)}".encode()
        )
        self.assertIsInstance(endpoint, SchannelServerEndpoint)

    def test_options_listed_in_the_design(self) -> None:
        self.assertEqual(
            set(SERVER_OPTIONS),
            {
                "certificate", "privateKey", "chain", "clientCA", "requireClientCertificate",
                "alpn", "minimumVersion", "maximumVersion", "sni", "handshakeTimeout",
                "handshakeMemory", "passphraseFile", "ocspResponse", "ocsp", "ocspAllowPrivate",
                "keyLogFile",
            },
        )  # fmt: skip


class ClientStringTests(SynchronousTestCase):
    """Client strings build a SchannelClientEndpoint with the right target name."""

    def parse(self, description: str) -> SchannelClientEndpoint:
        endpoint = clientFromString(reactor, description)
        self.assertIsInstance(endpoint, SchannelClientEndpoint)
        assert isinstance(endpoint, SchannelClientEndpoint)
        return endpoint

    def test_host_and_port_keywords(self) -> None:
        endpoint = self.parse(f"schannel:tcp:host=localhost:port=8443:trustRoots={q(pki().ca)}")
        inner: Any = endpoint.inner
        self.assertIsInstance(inner, TCP4ClientEndpoint)
        self.assertEqual((inner._host, inner._port), ("localhost", 8443))
        self.assertEqual(endpoint.target_name, "localhost")

    def test_positional_host_and_port(self) -> None:
        endpoint = self.parse(f"schannel:tcp:example.test:8443:trustRoots={q(pki().ca)}")
        inner: Any = endpoint.inner
        self.assertEqual((inner._host, inner._port), ("example.test", 8443))
        self.assertEqual(endpoint.target_name, "example.test")

    def test_positional_host_with_port_keyword(self) -> None:
        endpoint = self.parse(f"schannel:tcp:example.test:port=8443:trustRoots={q(pki().ca)}")
        self.assertEqual(endpoint.target_name, "example.test")

    def test_host_keyword_with_positional_port(self) -> None:
        endpoint = self.parse(f"schannel:tcp:host=example.test:8443:trustRoots={q(pki().ca)}")
        self.assertEqual(endpoint.target_name, "example.test")

    def test_hostname_overrides_the_inner_host(self) -> None:
        endpoint = self.parse(
            f"schannel:tcp:127.0.0.1:8443:hostname=service.test:trustRoots={q(pki().ca)}"
        )
        inner: Any = endpoint.inner
        self.assertEqual(inner._host, "127.0.0.1")
        self.assertEqual(endpoint.target_name, "service.test")

    def test_unix_socket_with_hostname(self) -> None:
        endpoint = self.parse(
            f"schannel:unix:/tmp/x.sock:hostname=localhost:trustRoots={q(pki().ca)}"
        )
        self.assertEqual(type(endpoint.inner).__name__, "UNIXClientEndpoint")
        self.assertEqual(endpoint.target_name, "localhost")

    def test_trust_roots_default_to_the_system_store(self) -> None:
        endpoint = self.parse("schannel:tcp:example.test:443")
        self.assertTrue(endpoint.credentials.is_client)

    def test_trust_roots_folder(self) -> None:
        self.parse(f"schannel:tcp:example.test:443:trustRoots={q(pki().ca_folder)}")

    def test_alpn_comma_list(self) -> None:
        endpoint = self.parse("schannel:tcp:example.test:443:alpn=h2,http/1.1")
        self.assertEqual(endpoint.credentials.alpn, (b"h2", b"http/1.1"))

    def test_inner_options_pass_through(self) -> None:
        endpoint = self.parse("schannel:tcp:example.test:443:timeout=7:bindAddress=127.0.0.1")
        inner: Any = endpoint.inner
        self.assertEqual((inner._timeout, inner._bindAddress), (7, ("127.0.0.1", 0)))

    def test_options_listed_in_the_design(self) -> None:
        self.assertEqual(
            set(CLIENT_OPTIONS),
            {
                "hostname", "trustRoots", "certificate", "privateKey", "alpn",
                "minimumVersion", "maximumVersion", "passphraseFile", "validation",
                "keyLogFile",
            },
        )  # fmt: skip


class UnparseTests(SynchronousTestCase):
    """unparse() writes arguments so that Twisted's parser reads them back exactly."""

    def test_round_trip_through_twisted_parser(self) -> None:
        from twisted.internet.endpoints import _parse  # the parser Twisted itself uses

        args = ["unix", "C:\\dir:x=y\\z.sock"]
        kwargs = {"mode": "600", "odd=key": "va:lue=with\\stuff"}
        self.assertEqual(_parse(unparse(args, kwargs)), (args, kwargs))


# -- parsing: the errors -----------------------------------------------------------


class ServerErrorTests(SynchronousTestCase):
    """Each bad server string is refused at parse time with a message naming the problem."""

    def error(self, description: str) -> str:
        e = self.assertRaises(ValueError, serverFromString, reactor, description)
        return str(e)

    def test_unknown_option_lists_the_valid_ones(self) -> None:
        message = self.error(f"schannel:tcp:8443:certificate={q(pki().server)}:colour=blue")
        self.assertIn("unknown option 'colour'", message)
        for option in SERVER_OPTIONS + ("port", "interface", "backlog"):
            self.assertIn(option, message)

    def test_unknown_option_behind_haproxy_lists_the_tcp_options(self) -> None:
        message = self.error(
            f"schannel:haproxy:tcp:8443:certificate={q(pki().server)}:intrface=127.0.0.1"
        )
        self.assertIn("unknown option 'intrface' (did you mean interface?)", message)
        self.assertIn("tcp options: port, interface, backlog", message)

    def test_misspelt_option_suggests_the_right_one(self) -> None:
        message = self.error(f"schannel:tcp:8443:certficate={q(pki().server)}")
        self.assertIn("unknown option 'certficate'", message)
        self.assertIn("did you mean certificate?", message)

    def test_twisted_ssl_spelling_points_to_ours(self) -> None:
        message = self.error(f"schannel:tcp:8443:certKey={q(pki().server)}")
        self.assertIn("'certKey'", message)
        self.assertIn("here it is certificate", message)

    def test_missing_certificate_file(self) -> None:
        message = self.error("schannel:tcp:8443:certificate=/nonexistent/server.pem")
        self.assertIn("/nonexistent/server.pem", message)
        self.assertIn("does not exist", message)

    def test_unreadable_certificate_file(self) -> None:
        # A path through a regular file cannot be opened, even by root (for
        # whom a chmod 000 file stays readable).
        path = f"{pki().server}/server.pem"
        message = self.error(f"schannel:tcp:8443:certificate={q(path)}")
        self.assertIn(path, message)
        self.assertIn("cannot be read", message)

    def test_certificate_is_a_folder(self) -> None:
        message = self.error(f"schannel:tcp:8443:certificate={q(pki().sni)}")
        self.assertIn("is a folder", message)

    def test_certificate_not_pem(self) -> None:
        message = self.error(f"schannel:tcp:8443:certificate={q(pki().not_pem)}")
        self.assertIn(pki().not_pem, message)
        self.assertIn("not PEM", message)

    def test_private_key_not_pem(self) -> None:
        message = self.error(
            f"schannel:tcp:8443:certificate={q(pki().server_certificate)}:"
            f"privateKey={q(pki().not_pem)}"
        )
        self.assertIn(pki().not_pem, message)
        self.assertIn("not PEM", message)

    def test_key_does_not_match_certificate(self) -> None:
        message = self.error(
            f"schannel:tcp:8443:certificate={q(pki().server_certificate)}:"
            f"privateKey={q(pki().other_key)}"
        )
        self.assertIn(pki().other_key, message)
        self.assertIn("does not match", message)

    def test_certificate_without_key_and_no_private_key_option(self) -> None:
        message = self.error(f"schannel:tcp:8443:certificate={q(pki().server_certificate)}")
        self.assertIn("holds no private key", message)

    def test_missing_chain_file(self) -> None:
        message = self.error(
            f"schannel:tcp:8443:certificate={q(pki().server)}:chain=/nonexistent/chain.pem"
        )
        self.assertIn("chain file '/nonexistent/chain.pem' does not exist", message)

    def test_missing_client_ca_file(self) -> None:
        message = self.error(
            f"schannel:tcp:8443:certificate={q(pki().server)}:clientCA=/nonexistent/ca.pem"
        )
        self.assertIn("/nonexistent/ca.pem", message)

    def test_unknown_minimum_version(self) -> None:
        message = self.error(
            f"schannel:tcp:8443:certificate={q(pki().server)}:minimumVersion=TLSv9"
        )
        self.assertIn("minimumVersion=TLSv9: unknown TLS version", message)
        self.assertIn("TLSv1.2 or TLSv1.3", message)

    def test_old_maximum_version_is_refused(self) -> None:
        message = self.error(
            f"schannel:tcp:8443:certificate={q(pki().server)}:maximumVersion=TLSv1.1"
        )
        self.assertIn("maximumVersion=TLSv1.1: versions below TLS 1.2 are not supported", message)

    def test_maximum_below_minimum(self) -> None:
        message = self.error(
            f"schannel:tcp:8443:certificate={q(pki().server)}:"
            "minimumVersion=TLSv1.3:maximumVersion=TLSv1.2"
        )
        self.assertIn("maximumVersion=TLSv1.2 is below minimumVersion=TLSv1.3", message)

    def test_require_client_certificate_without_client_ca(self) -> None:
        message = self.error(
            f"schannel:tcp:8443:certificate={q(pki().server)}:requireClientCertificate=yes"
        )
        self.assertIn("requireClientCertificate needs clientCA", message)

    def test_require_client_certificate_not_a_boolean(self) -> None:
        message = self.error(
            f"schannel:tcp:8443:certificate={q(pki().server)}:clientCA={q(pki().client_ca)}:"
            "requireClientCertificate=maybe"
        )
        self.assertIn("requireClientCertificate=maybe: expected yes or no", message)

    def test_handshake_timeout_not_a_number(self) -> None:
        for value in ("soon", "0", "-1", "inf", "nan"):
            message = self.error(
                f"schannel:tcp:8443:certificate={q(pki().server)}:handshakeTimeout={value}"
            )
            self.assertIn(f"handshakeTimeout={value}: expected a positive number", message)

    def test_handshake_memory_not_a_size(self) -> None:
        for value in ("lots", "0", "-5", "1.5M", "64T"):
            message = self.error(
                f"schannel:tcp:8443:certificate={q(pki().server)}:handshakeMemory={value}"
            )
            self.assertIn(f"handshakeMemory={value}: expected a positive number of bytes",
                          message)
        message = self.error(
            f"schannel:tcp:8443:certificate={q(pki().server)}:handshakeMemory=64K"
        )
        self.assertIn("handshakeMemory=64K: at least 131445 bytes", message)

    def test_empty_alpn_name(self) -> None:
        message = self.error(f"schannel:tcp:8443:certificate={q(pki().server)}:alpn=h2,,x")
        self.assertIn("alpn=h2,,x: an empty protocol name", message)

    def test_no_certificate(self) -> None:
        message = self.error("schannel:tcp:8443")
        self.assertIn("needs certificate=", message)

    def test_sni_folder_missing(self) -> None:
        message = self.error(
            f"schannel:tcp:8443:certificate={q(pki().server)}:sni=/nonexistent/certs"
        )
        self.assertIn("sni folder '/nonexistent/certs' does not exist", message)

    def test_sni_folder_without_default_and_no_certificate(self) -> None:
        folder = Path(self.mktemp())
        folder.mkdir()
        shutil.copy(pki().sni / "alpha.test.pem", folder)
        message = self.error(f"schannel:tcp:8443:sni={q(folder)}")
        self.assertIn(f"sni folder {str(folder.resolve())!r} holds no DEFAULT.pem or default.pem",
                      message)
        self.assertIn("no certificate= was given", message)

    def test_sni_file_not_pem(self) -> None:
        folder = Path(self.mktemp())
        folder.mkdir()
        shutil.copy(pki().not_pem, folder / "alpha.test.pem")
        message = self.error(f"schannel:tcp:8443:certificate={q(pki().server)}:sni={q(folder)}")
        self.assertIn("alpha.test.pem", message)
        self.assertIn("not PEM", message)

    def test_no_inner_endpoint(self) -> None:
        message = self.error(f"schannel:certificate={q(pki().server)}")
        self.assertIn("no inner endpoint", message)

    def test_unknown_inner_endpoint_type(self) -> None:
        message = self.error(f"schannel:carrier-pigeon:8443:certificate={q(pki().server)}")
        self.assertIn("carrier-pigeon", message)
        self.assertIn("Unknown endpoint type", message)

    def test_incomplete_inner_endpoint(self) -> None:
        message = self.error(f"schannel:tcp:certificate={q(pki().server)}")
        self.assertIn("inner endpoint 'tcp' is incomplete", message)
        self.assertIn("port", message)

    def test_bad_inner_port(self) -> None:
        message = self.error(f"schannel:tcp:https:certificate={q(pki().server)}")
        self.assertIn("inner endpoint 'tcp:https' is not valid", message)


class ClientErrorTests(SynchronousTestCase):
    """Each bad client string is refused at parse time with a message naming the problem."""

    def error(self, description: str) -> str:
        e = self.assertRaises(ValueError, clientFromString, reactor, description)
        return str(e)

    def test_unknown_option_lists_the_valid_ones(self) -> None:
        message = self.error("schannel:tcp:localhost:443:verify=no")
        self.assertIn("unknown option 'verify'", message)
        for option in CLIENT_OPTIONS + ("host", "port", "timeout", "bindAddress"):
            self.assertIn(option, message)

    def test_twisted_tls_spelling_points_to_ours(self) -> None:
        message = self.error(f"schannel:tcp:localhost:443:caCertsDir={q(pki().ca_folder)}")
        self.assertIn("here it is trustRoots", message)

    def test_no_hostname_over_a_unix_socket(self) -> None:
        message = self.error(f"schannel:unix:/tmp/x.sock:trustRoots={q(pki().ca)}")
        self.assertIn("a client over 'unix' needs hostname=", message)

    def test_missing_trust_roots_file(self) -> None:
        message = self.error("schannel:tcp:localhost:443:trustRoots=/nonexistent/ca.pem")
        self.assertIn("/nonexistent/ca.pem", message)

    def test_trust_roots_not_pem(self) -> None:
        message = self.error(f"schannel:tcp:localhost:443:trustRoots={q(pki().not_pem)}")
        self.assertIn("not PEM", message)

    def test_client_key_does_not_match_certificate(self) -> None:
        message = self.error(
            f"schannel:tcp:localhost:443:certificate={q(pki().client_certificate)}:"
            f"privateKey={q(pki().other_key)}"
        )
        self.assertIn("does not match", message)

    def test_private_key_without_certificate(self) -> None:
        message = self.error(f"schannel:tcp:localhost:443:privateKey={q(pki().client_key)}")
        self.assertIn("privateKey needs certificate=", message)

    def test_unknown_version(self) -> None:
        message = self.error("schannel:tcp:localhost:443:minimumVersion=SSLv3")
        self.assertIn("minimumVersion=SSLv3: versions below TLS 1.2 are not supported", message)
        message = self.error("schannel:tcp:localhost:443:maximumVersion=1.4")
        self.assertIn("maximumVersion=1.4: unknown TLS version", message)

    def test_incomplete_inner_endpoint(self) -> None:
        message = self.error("schannel:tcp:trustRoots=system")
        self.assertIn("incomplete", message)


# -- connections: real peers -------------------------------------------------------


def server_string(inner: str = "tcp:0:interface=127.0.0.1", **options: str | None) -> str:
    """A server string; ``certificate`` is the test server's unless given (None: left out)."""
    options.setdefault("certificate", q(pki().server))
    return f"schannel:{inner}:" + ":".join(
        f"{key}={value}" for key, value in options.items() if value is not None
    )


class OpenSSLPeerTests(LiveTestCase):
    """``openssl s_client`` talks TLS to a server made from a schannel: string."""

    @inlineCallbacks
    def s_client(self, port: int, *extra: str) -> Any:
        result = yield run(
            [
                "openssl", "s_client", "-connect", f"127.0.0.1:{port}",
                "-CAfile", pki().ca, "-verify_return_error", "-ign_eof", *extra,
            ],
            stdin=b"hello\n",
        )  # fmt: skip
        return result.stdout.decode(errors="replace") + result.stderr.decode(errors="replace")

    @inlineCallbacks
    def test_openssl_s_client(self) -> Any:
        port, _ = yield self.listen(server_string())
        output = yield self.s_client(port.getHost().port, "-servername", "localhost")
        self.assertIn("you said hello; alpn=none; peer=none", output)
        self.assertIn("Verify return code: 0 (ok)", output)

    @inlineCallbacks
    def test_openssl_alpn(self) -> Any:
        port, _ = yield self.listen(server_string(alpn="h2,http/1.1"))
        output = yield self.s_client(port.getHost().port, "-alpn", "http/1.1,h2")
        self.assertIn("ALPN protocol: h2", output)
        self.assertIn("you said hello; alpn=h2", output)

    @inlineCallbacks
    def test_openssl_minimum_version_tls13_refuses_tls12(self) -> Any:
        port, _ = yield self.listen(server_string(minimumVersion="TLSv1.3"))
        output = yield self.s_client(port.getHost().port, "-tls1_2")
        self.assertNotIn("you said", output)
        output = yield self.s_client(port.getHost().port, "-tls1_3")
        self.assertIn("Protocol  : TLSv1.3", output)
        self.assertIn("you said hello", output)

    @inlineCallbacks
    def test_openssl_maximum_version_tls12(self) -> Any:
        port, _ = yield self.listen(server_string(maximumVersion="TLSv1.2"))
        output = yield self.s_client(port.getHost().port)
        self.assertIn("Protocol  : TLSv1.2", output)
        self.assertIn("you said hello", output)

    @inlineCallbacks
    def test_openssl_client_certificate(self) -> Any:
        port, _ = yield self.listen(
            server_string(clientCA=q(pki().client_ca), requireClientCertificate="yes")
        )
        output = yield self.s_client(
            port.getHost().port, "-cert", pki().client_certificate, "-key", pki().client_key
        )
        self.assertIn("peer=CN=alice", output)

    @inlineCallbacks
    def test_openssl_sni_picks_the_certificate_for_the_name(self) -> Any:
        port, _ = yield self.listen(server_string(sni=q(pki().sni)))
        for name in ("alpha.test", "beta.test"):
            output = yield self.s_client(
                port.getHost().port, "-servername", name, "-verify_hostname", name
            )
            self.assertIn("Verify return code: 0 (ok)", output)
            self.assertIn("you said hello", output)


class CurlPeerTests(LiveTestCase):
    """``curl`` downloads over HTTPS from a server made from a schannel: string."""

    @inlineCallbacks
    def curl(self, port: int, *extra: str) -> Any:
        result = yield run(
            [
                "curl", "--silent", "--show-error", "--max-time", "20", "--cacert", pki().ca,
                "--resolve", f"localhost:{port}:127.0.0.1", *extra,
                f"https://localhost:{port}/",
            ]
        )  # fmt: skip
        return result

    @inlineCallbacks
    def test_curl_https(self) -> Any:
        port, _ = yield self.listen(server_string())
        result = yield self.curl(port.getHost().port)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn(b"you said GET / HTTP/1.1; alpn=none", result.stdout)

    @inlineCallbacks
    def test_curl_alpn_http11(self) -> Any:
        port, _ = yield self.listen(server_string(alpn="http/1.1"))
        result = yield self.curl(port.getHost().port)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn(b"alpn=http/1.1", result.stdout)

    @inlineCallbacks
    def test_curl_refuses_a_certificate_from_another_ca(self) -> Any:
        port, _ = yield self.listen(server_string())
        result = yield run(
            [
                "curl", "--silent", "--max-time", "20",
                "--resolve", f"localhost:{port.getHost().port}:127.0.0.1",
                f"https://localhost:{port.getHost().port}/",
            ]
        )  # fmt: skip
        self.assertEqual(result.returncode, 60, result.stderr)  # peer certificate not trusted

    @inlineCallbacks
    def test_haproxy_nesting_reads_the_proxy_header_before_tls(self) -> Any:
        port, _ = yield self.listen(server_string(inner="haproxy:tcp:0:interface=127.0.0.1"))
        # curl sends a PROXY v1 header, then the ClientHello: the handshake
        # only works if the haproxy layer takes the header off first.
        result = yield self.curl(port.getHost().port, "--haproxy-protocol")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn(b"you said GET / HTTP/1.1", result.stdout)
        # Without the header the haproxy layer refuses the connection.
        result = yield self.curl(port.getHost().port)
        self.assertNotEqual(result.returncode, 0)
        self.assertEqual(result.stdout, b"")


class OwnClientTests(LiveTestCase):
    """txschannel's client from a schannel: string against its server from a string."""

    @inlineCallbacks
    def test_client_string_over_tcp(self) -> Any:
        port, _ = yield self.listen(server_string())
        reply, _ = yield self.ask_string(
            f"schannel:tcp:localhost:{port.getHost().port}:trustRoots={q(pki().ca)}"
        )
        self.assertEqual(reply, b"you said hello; alpn=none; peer=none; from=127.0.0.1\n")

    @inlineCallbacks
    def test_client_string_with_host_and_port_keywords(self) -> Any:
        port, _ = yield self.listen(server_string())
        reply, _ = yield self.ask_string(
            f"schannel:tcp:host=127.0.0.1:port={port.getHost().port}:trustRoots={q(pki().ca)}"
        )
        self.assertIn(b"you said hello", reply)

    @inlineCallbacks
    def test_separate_certificate_and_private_key_files(self) -> Any:
        port, _ = yield self.listen(
            server_string(
                certificate=q(pki().server_certificate), privateKey=q(pki().server_key)
            )
        )
        reply, _ = yield self.ask_string(
            f"schannel:tcp:localhost:{port.getHost().port}:trustRoots={q(pki().ca)}"
        )
        self.assertIn(b"you said hello", reply)

    @inlineCallbacks
    def test_ipv6_loopback(self) -> Any:
        port, _ = yield self.listen(server_string(inner="tcp6:0:interface=\\:\\:1"))
        reply, _ = yield self.ask_string(
            f"schannel:tcp:host=\\:\\:1:port={port.getHost().port}:hostname=localhost:"
            f"trustRoots={q(pki().ca)}"
        )
        self.assertEqual(reply, b"you said hello; alpn=none; peer=none; from=::1\n")

    @inlineCallbacks
    def test_trust_roots_folder(self) -> Any:
        port, _ = yield self.listen(server_string())
        reply, _ = yield self.ask_string(
            f"schannel:tcp:localhost:{port.getHost().port}:trustRoots={q(pki().ca_folder)}"
        )
        self.assertIn(b"you said hello", reply)

    @inlineCallbacks
    def test_system_trust_roots_refuse_a_private_ca(self) -> Any:
        port, _ = yield self.listen(server_string())
        reply, reason = yield self.ask_string(f"schannel:tcp:localhost:{port.getHost().port}")
        self.assertEqual(reply, b"")
        self.assertIn("UNTRUSTED_ROOT", str(reason.value))

    @inlineCallbacks
    def test_hostname_is_checked_against_the_certificate(self) -> Any:
        port, _ = yield self.listen(server_string())
        reply, reason = yield self.ask_string(
            f"schannel:tcp:127.0.0.1:{port.getHost().port}:hostname=elsewhere.test:"
            f"trustRoots={q(pki().ca)}"
        )
        self.assertEqual(reply, b"")
        self.assertIn("WRONG_PRINCIPAL", str(reason.value))

    @inlineCallbacks
    def test_unix_socket_with_escaped_path(self) -> Any:
        folder = Path(tempfile.mkdtemp(prefix="txs-"))  # short: AF_UNIX paths are limited
        self.addCleanup(shutil.rmtree, folder, True)
        path = folder / "a:b=c.sock"
        yield self.listen(server_string(inner=f"unix:{q(path)}"))
        reply, _ = yield self.ask_string(
            f"schannel:unix:{q(path)}:hostname=localhost:trustRoots={q(pki().ca)}"
        )
        self.assertIn(b"you said hello", reply)

    @inlineCallbacks
    def test_chain_option_sends_the_intermediate(self) -> Any:
        without, _ = yield self.listen(server_string(certificate=q(pki().chained_leaf)))
        reply, reason = yield self.ask_string(
            f"schannel:tcp:localhost:{without.getHost().port}:trustRoots={q(pki().ca)}"
        )
        self.assertEqual(reply, b"")
        self.assertIn("UNTRUSTED_ROOT", str(reason.value))
        port, _ = yield self.listen(
            server_string(certificate=q(pki().chained_leaf), chain=q(pki().intermediate))
        )
        reply, _ = yield self.ask_string(
            f"schannel:tcp:localhost:{port.getHost().port}:trustRoots={q(pki().ca)}"
        )
        self.assertIn(b"you said hello", reply)

    @inlineCallbacks
    def test_mutual_tls_with_client_certificate(self) -> Any:
        port, _ = yield self.listen(
            server_string(clientCA=q(pki().client_ca), requireClientCertificate="yes")
        )
        reply, _ = yield self.ask_string(
            f"schannel:tcp:localhost:{port.getHost().port}:trustRoots={q(pki().ca)}:"
            f"certificate={q(pki().client_certificate)}:privateKey={q(pki().client_key)}"
        )
        self.assertIn(b"peer=CN=alice", reply)

    @inlineCallbacks
    def test_mutual_tls_refuses_a_client_without_certificate(self) -> Any:
        port, _ = yield self.listen(
            server_string(clientCA=q(pki().client_ca), requireClientCertificate="yes")
        )
        reply, _ = yield self.ask_string(
            f"schannel:tcp:localhost:{port.getHost().port}:trustRoots={q(pki().ca)}"
        )
        self.assertEqual(reply, b"")

    @inlineCallbacks
    def test_client_certificate_is_optional_with_client_ca_alone(self) -> Any:
        port, _ = yield self.listen(server_string(clientCA=q(pki().client_ca)))
        reply, _ = yield self.ask_string(
            f"schannel:tcp:localhost:{port.getHost().port}:trustRoots={q(pki().ca)}"
        )
        self.assertIn(b"peer=none", reply)
        reply, _ = yield self.ask_string(
            f"schannel:tcp:localhost:{port.getHost().port}:trustRoots={q(pki().ca)}:"
            f"certificate={q(pki().client)}"
        )
        self.assertIn(b"peer=CN=alice", reply)

    @inlineCallbacks
    def test_alpn_both_sides(self) -> Any:
        port, _ = yield self.listen(server_string(alpn="h2,http/1.1"))
        reply, _ = yield self.ask_string(
            f"schannel:tcp:localhost:{port.getHost().port}:trustRoots={q(pki().ca)}:"
            "alpn=http/1.1"
        )
        self.assertIn(b"alpn=http/1.1", reply)

    @inlineCallbacks
    def test_client_maximum_version_below_server_minimum_fails(self) -> Any:
        port, _ = yield self.listen(server_string(minimumVersion="TLSv1.3"))
        reply, reason = yield self.ask_string(
            f"schannel:tcp:localhost:{port.getHost().port}:trustRoots={q(pki().ca)}:"
            "maximumVersion=TLSv1.2"
        )
        self.assertEqual(reply, b"")
        self.assertIn("ALGORITHM_MISMATCH", str(reason.value))

    @inlineCallbacks
    def test_client_minimum_version_above_server_maximum_fails(self) -> Any:
        port, _ = yield self.listen(server_string(maximumVersion="TLSv1.2"))
        reply, reason = yield self.ask_string(
            f"schannel:tcp:localhost:{port.getHost().port}:trustRoots={q(pki().ca)}:"
            "minimumVersion=TLSv1.3"
        )
        self.assertEqual(reply, b"")
        self.assertIn("ALGORITHM_MISMATCH", str(reason.value))

    @inlineCallbacks
    def test_sni_folder_serves_each_name_and_a_default(self) -> Any:
        port, _ = yield self.listen(server_string(sni=q(pki().sni)))
        number = port.getHost().port
        for name in ("alpha.test", "beta.test", "localhost"):
            reply, _ = yield self.ask_string(
                f"schannel:tcp:127.0.0.1:{number}:hostname={name}:trustRoots={q(pki().ca)}"
            )
            self.assertIn(b"you said hello", reply, name)
        reply, reason = yield self.ask_string(
            f"schannel:tcp:127.0.0.1:{number}:hostname=gamma.test:trustRoots={q(pki().ca)}"
        )
        self.assertEqual(reply, b"")
        self.assertIn("WRONG_PRINCIPAL", str(reason.value))

    @inlineCallbacks
    def test_handshake_timeout_drops_a_silent_client(self) -> Any:
        port, factory = yield self.listen(server_string(handshakeTimeout="0.2"))
        silent = Ask(line=b"")
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), silent)
        received, _ = yield silent.done
        self.assertEqual(received, b"")
        # The application never saw a request.
        self.assertEqual({protocol.buffer for protocol in factory.protocols} - {b""}, set())

    # Far above 0.2 s and far below the 30 s default: a handshakeTimeout that
    # was not applied makes this test time out.
    test_handshake_timeout_drops_a_silent_client.timeout = 10  # type: ignore[attr-defined]


class EndpointObjectTests(LiveTestCase):
    """The endpoint classes used directly from Python, and reload()."""

    @inlineCallbacks
    def test_python_constructed_endpoints(self) -> Any:
        server = SchannelServerEndpoint(
            TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"),
            Credentials.server(certificate=pki().server),
        )
        port, _ = yield self.serve(server)
        client = SchannelClientEndpoint(
            TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port),
            Credentials.client(trust_roots=pki().ca),
            "localhost",
        )
        reply, _ = yield self.ask(client)
        self.assertIn(b"you said hello", reply)

    def test_reload_without_files_to_read_is_a_value_error(self) -> None:
        server = SchannelServerEndpoint(
            TCP4ServerEndpoint(reactor, 0), Credentials.server(certificate=pki().server)
        )
        e = self.assertRaises(ValueError, server.reload)
        self.assertIn("ready-made credentials", str(e))

    @inlineCallbacks
    def test_reload_reads_renewed_files_for_new_connections(self) -> Any:
        folder = Path(self.mktemp())
        folder.mkdir()
        certificate = folder / "server.pem"
        shutil.copy(pki().server, certificate)
        endpoint = serverFromString(reactor, server_string(certificate=q(certificate)))
        assert isinstance(endpoint, SchannelServerEndpoint)
        port, _ = yield self.serve(endpoint)
        number = port.getHost().port
        stranger = folder / "stranger-ca.pem"
        pki().stranger_ca.cert_pem.write_to_path(str(stranger))
        to_old = f"schannel:tcp:localhost:{number}:trustRoots={q(pki().ca)}"
        to_new = f"schannel:tcp:localhost:{number}:trustRoots={q(stranger)}"

        # A renewed certificate from another CA: new connections get it.
        renewed = pki().stranger_ca.issue_cert("localhost")
        renewed.private_key_and_cert_chain_pem.write_to_path(str(certificate))
        old = endpoint.credentials
        new = endpoint.reload()
        self.assertIsNot(new, old)
        self.assertIs(endpoint.credentials, new)
        reply, _ = yield self.ask_string(to_new)
        self.assertIn(b"you said hello", reply)
        reply, _ = yield self.ask_string(to_old)
        self.assertEqual(reply, b"")

        # A broken file: reload() says so and the renewed credentials stay.
        certificate.write_bytes(b"half-written")
        e = self.assertRaises(ValueError, endpoint.reload)
        self.assertIn(str(certificate), str(e))
        self.assertIn("not PEM", str(e))
        self.assertIs(endpoint.credentials, new)
        reply, _ = yield self.ask_string(to_new)
        self.assertIn(b"you said hello", reply)


class DocumentationTests(SynchronousTestCase):
    """Every schannel: string in docs/endpoints.rst's examples parses as shown."""

    def test_documented_examples_parse(self) -> None:
        import re

        page = (Path(__file__).resolve().parent.parent / "docs" / "endpoints.rst").read_text()
        calls = re.findall(r'(server|client)FromString\(reactor, "(schannel:[^"]+)"\)', page)
        self.assertGreater(len(calls), 10)
        # The files the examples name, in a working folder of their own.
        folder = Path(self.mktemp()).resolve()
        folder.mkdir()
        for name, source in (
            ("server.pem", pki().server),
            ("server-cert.pem", pki().server_certificate),
            ("server-key.pem", pki().server_key),
            ("ca.pem", pki().ca),
            ("client.pem", pki().client),
        ):
            shutil.copy(source, folder / name)
        shutil.copytree(pki().sni, folder / "certs")
        # The example's key is not encrypted: a passphrase for it is not needed.
        (folder / "server.pass").write_text("unused\n")
        # The OCSP examples need a certificate that names its responder and
        # comes with its issuer, and a response about it: tests.support.ocsp's
        # PKI makes them.
        from cryptography.x509 import ocsp

        from tests.support.ocsp import PKI

        stapled = folder / "stapled"
        stapled.mkdir()
        (stapled / "server.ocsp").write_bytes(
            PKI(stapled, 1).response(ocsp.OCSPCertStatus.GOOD)
        )
        previous = os.getcwd()
        self.addCleanup(os.chdir, previous)
        for kind, description in calls:
            if description.startswith("schannel:systemd:"):
                continue  # needs an inherited socket: see SystemdTests
            os.chdir(stapled if ":ocsp" in description else folder)
            parse = serverFromString if kind == "server" else clientFromString
            endpoint = parse(reactor, description)
            expected = SchannelServerEndpoint if kind == "server" else SchannelClientEndpoint
            self.assertIsInstance(endpoint, expected, description)


# What systemd does for a socket-activated service: the socket as fd 3, and
# LISTEN_PID (the service's own pid: exec keeps this one's), LISTEN_FDS and
# LISTEN_FDNAMES describing it. In Python rather than sh: dash's "3<&$FD"
# takes only one-digit descriptors, and trial may hold more than nine.
_HAND_OVER = """
import os, sys
socket = int(os.environ.pop("FD"))
if socket != 3:
    os.dup2(socket, 3)
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="1", LISTEN_FDNAMES="https")
os.execv(sys.argv[1], sys.argv[1:])
"""

_SYSTEMD_SERVICE = """
import sys
sys.path.insert(0, sys.argv[1])  # the repository, for txschannel and its plugin
from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory, Protocol

class Reply(Protocol):
    def dataReceived(self, data):
        self.transport.write(b"systemd socket says " + data)
        self.transport.loseConnection()

endpoint = serverFromString(reactor, sys.argv[2])
endpoint.listen(Factory.forProtocol(Reply))
reactor.callLater(30, reactor.stop)
reactor.run()
"""


class SystemdTests(TestCase):
    """``schannel:systemd:`` adopts a socket handed over the way systemd does it."""

    timeout = 60

    @inlineCallbacks
    def test_socket_activation(self) -> Any:
        import socket
        import sys

        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(listener.close)
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        # Handed over from a two-digit descriptor, as from a test runner
        # holding many: the hand-over must not depend on the number.
        handed = fcntl.fcntl(listener.fileno(), fcntl.F_DUPFD_CLOEXEC, 10)
        repo = str(Path(__file__).resolve().parent.parent)
        description = f"schannel:systemd:domain=INET:index=0:certificate={q(pki().server)}"
        try:
            service = subprocess.Popen(
                [
                    sys.executable, "-c", _HAND_OVER,
                    sys.executable, "-c", _SYSTEMD_SERVICE, repo, description,
                ],
                env={**os.environ, "FD": str(handed)},
                pass_fds=[handed],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        finally:
            os.close(handed)

        # Only the service holds the socket now: if it died, connecting fails
        # at once instead of waiting in the backlog.
        listener.close()

        def stop() -> bytes:
            if service.poll() is None:
                service.kill()
            return service.communicate(timeout=10)[0] or b""

        self.addCleanup(stop)
        result = yield run(
            [
                "openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername",
                "localhost", "-CAfile", pki().ca, "-verify_return_error", "-quiet",
            ],
            stdin=b"hello\n",
        )  # fmt: skip
        if b"systemd socket says hello" not in result.stdout:
            self.fail(f"openssl: {result.stdout!r} {result.stderr!r}; service: {stop()!r}")


# -- an sni folder's DEFAULT.pem, passphraseFile, validity warnings --------------------


class Files:
    """A folder for one test's files, with a CA of its own."""

    def __init__(self, test: SynchronousTestCase) -> None:
        self.folder = Path(test.mktemp()).resolve()
        self.folder.mkdir()
        self.ca = CertificateAuthority()
        self.ca_file = str(self.ca.write(self.folder / "ca.pem"))

    def write(self, name: str, data: bytes) -> Path:
        path = self.folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path


class SniDefaultTests(LiveTestCase):
    """An sni folder's default certificate, spelt DEFAULT.pem as txsni does."""

    @inlineCallbacks
    def test_a_folder_with_only_txsni_default_pem_serves_it(self) -> Any:
        files = Files(self)
        files.write("sni/DEFAULT.pem", files.ca.issue("localhost", common_name="the default").pem)
        port, _ = yield self.listen(server_string(certificate=None, sni=q(files.folder / "sni")))
        result = yield run(
            [
                "openssl", "s_client", "-connect", f"127.0.0.1:{port.getHost().port}",
                "-servername", "unknown.test", "-CAfile", files.ca_file, "-ign_eof",
            ],
            stdin=b"hello\n",
        )  # fmt: skip
        output = result.stdout.decode(errors="replace")
        self.assertIn("CN = the default", output)
        self.assertIn("you said hello", output)

    def test_both_spellings_at_once_are_refused(self) -> None:
        files = Files(self)
        pem = files.ca.issue("localhost").pem
        files.write("sni/DEFAULT.pem", pem)
        files.write("sni/default.pem", pem)
        if len(os.listdir(files.folder / "sni")) < 2:  # a case-insensitive file system
            return
        e = self.assertRaises(ValueError, serverFromString, reactor,
                              f"schannel:tcp:0:sni={q(files.folder / 'sni')}")
        self.assertIn("holds DEFAULT.pem and default.pem", str(e))

    def test_certificate_wins_over_the_folders_default(self) -> None:
        files = Files(self)
        files.write("sni/DEFAULT.pem", files.ca.issue("localhost", common_name="default").pem)
        named = files.write("named.pem", files.ca.issue("localhost", common_name="named").pem)
        endpoint = serverFromString(
            reactor, f"schannel:tcp:0:certificate={q(named)}:sni={q(files.folder / 'sni')}"
        )
        assert isinstance(endpoint, SchannelServerEndpoint)
        (served,) = endpoint.credentials._identities[:1]  # type: ignore[union-attr]
        self.assertIn("CN=named", served.leaf.subject.rfc4514_string())


class PassphraseFileTests(LiveTestCase):
    """passphraseFile= decrypts an encrypted key, on servers and clients."""

    def setUp(self) -> None:
        self.files = Files(self)
        issued = self.files.ca.issue("localhost", "127.0.0.1")
        self.server = self.files.write("server.pem", encrypted_pem(issued, b"corr3ct-h0rse"))
        self.passphrase = self.files.write("server.pass", b"corr3ct-h0rse\n")
        self.files.folder.joinpath("server.pass").chmod(0o400)

    def error(self, description: str, parse: Any = serverFromString) -> str:
        return str(self.assertRaises(ValueError, parse, reactor, description))

    @inlineCallbacks
    def test_openssl_talks_to_a_server_whose_key_is_encrypted(self) -> Any:
        port, _ = yield self.listen(
            server_string(certificate=q(self.server), passphraseFile=q(self.passphrase))
        )
        result = yield run(
            [
                "openssl", "s_client", "-connect", f"127.0.0.1:{port.getHost().port}",
                "-servername", "localhost", "-CAfile", self.files.ca_file,
                "-verify_return_error", "-ign_eof",
            ],
            stdin=b"hello\n",
        )  # fmt: skip
        self.assertIn(b"you said hello", result.stdout)

    @inlineCallbacks
    def test_a_client_certificate_whose_key_is_encrypted(self) -> Any:
        alice = self.files.write(
            "alice.pem", encrypted_pem(self.files.ca.issue(common_name="alice"), b"alice's")
        )
        alice_pass = self.files.write("alice.pass", b"alice's")
        port, _ = yield self.listen(
            server_string(
                certificate=q(self.server), passphraseFile=q(self.passphrase),
                clientCA=q(self.files.ca_file), requireClientCertificate="yes",
            )
        )  # fmt: skip
        reply, _ = yield self.ask_string(
            f"schannel:tcp:localhost:{port.getHost().port}:trustRoots={q(self.files.ca_file)}:"
            f"certificate={q(alice)}:passphraseFile={q(alice_pass)}"
        )
        self.assertIn(b"peer=CN=alice", reply)

    def test_a_wrong_passphrase_names_the_key_file_not_the_passphrase(self) -> None:
        wrong = self.files.write("wrong.pass", b"closed-sesame\n")
        message = self.error(
            f"schannel:tcp:0:certificate={q(self.server)}:passphraseFile={q(wrong)}"
        )
        self.assertIn(f"certificate file {str(self.server)!r}", message)
        self.assertIn("the passphrase given does not decrypt the private key", message)
        self.assertNotIn("closed-sesame", message)
        self.assertNotIn("corr3ct-h0rse", message)

    def test_a_missing_passphrase_file_is_named(self) -> None:
        missing = self.files.folder / "nope.pass"
        message = self.error(
            f"schannel:tcp:0:certificate={q(self.server)}:passphraseFile={q(missing)}"
        )
        self.assertIn(f"schannel: passphrase file {str(missing)!r} does not exist", message)

    def test_an_empty_passphrase_file_is_named(self) -> None:
        empty = self.files.write("empty.pass", b"")
        message = self.error(
            f"schannel:tcp:0:certificate={q(self.server)}:passphraseFile={q(empty)}"
        )
        self.assertIn(f"passphrase file {str(empty)!r} is empty", message)

    def test_an_encrypted_key_without_passphrase_file_says_how(self) -> None:
        message = self.error(f"schannel:tcp:0:certificate={q(self.server)}")
        self.assertIn("is encrypted and no passphrase was given", message)
        self.assertIn("passphraseFile=", message)

    def test_a_passphrase_file_for_a_plain_key_is_accepted(self) -> None:
        endpoint = serverFromString(
            reactor, f"schannel:tcp:0:certificate={q(pki().server)}:"
            f"passphraseFile={q(self.passphrase)}"
        )
        self.assertIsInstance(endpoint, SchannelServerEndpoint)

    def test_a_client_passphrase_file_needs_a_certificate(self) -> None:
        message = self.error(
            f"schannel:tcp:localhost:443:passphraseFile={q(self.passphrase)}", clientFromString
        )
        self.assertIn("passphraseFile decrypts a client certificate's key", message)

    def test_reload_reads_a_new_key_and_a_new_passphrase(self) -> None:
        endpoint = serverFromString(
            reactor, f"schannel:tcp:0:certificate={q(self.server)}:"
            f"passphraseFile={q(self.passphrase)}"
        )
        assert isinstance(endpoint, SchannelServerEndpoint)
        renewed = self.files.ca.issue("localhost", common_name="renewed")
        self.server.write_bytes(encrypted_pem(renewed, b"rotated"))
        e = self.assertRaises(ValueError, endpoint.reload)
        self.assertIn("does not decrypt", str(e))
        self.passphrase.chmod(0o600)
        self.passphrase.write_bytes(b"rotated\n")
        credentials = endpoint.reload()
        self.assertEqual(credentials._identities[0].leaf, renewed.certificate)


class ValidityWarningTests(SynchronousTestCase):
    """A certificate out of its validity period, or nearly, is logged when
    the string is parsed and when the endpoint reloads: it starts anyway."""

    def setUp(self) -> None:
        self.files = Files(self)
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.now = datetime.datetime.now(datetime.timezone.utc)

    def warnings(self) -> list[str]:
        found = [formatEvent(e) for e in self.events if e.get("log_level") == LogLevel.warn
                 and e.get("log_namespace") == "txschannel"]
        self.events.clear()
        return found

    def test_expired_server_certificate_at_parse_and_reload(self) -> None:
        path = self.files.write("old.pem", self.files.ca.issue(
            "localhost", not_before=self.now - 60 * DAY, not_after=self.now - 2 * DAY - HOUR).pem)
        endpoint = serverFromString(reactor, f"schannel:tcp:0:certificate={q(path)}")
        assert isinstance(endpoint, SchannelServerEndpoint)
        (warning,) = self.warnings()
        self.assertIn(f"certificate file {str(path)!r}", warning)
        self.assertIn("subject CN=localhost", warning)
        self.assertIn("has expired (2 days ago)", warning)
        self.assertIn((self.now - 60 * DAY).strftime("valid from %Y-%m-%d"), warning)
        endpoint.reload()
        self.assertEqual(len(self.warnings()), 1)
        endpoint.reload(warn=False)
        self.assertEqual(self.warnings(), [])

    def test_not_yet_valid_and_soon_expiring_certificates(self) -> None:
        early = self.files.write("early.pem", self.files.ca.issue(
            "localhost", not_before=self.now + DAY, not_after=self.now + 90 * DAY).pem)
        serverFromString(reactor, f"schannel:tcp:0:certificate={q(early)}")
        (warning,) = self.warnings()
        self.assertIn("is not valid yet", warning)
        soon = self.files.write("soon.pem", self.files.ca.issue(
            "localhost", not_after=self.now + 13 * DAY + HOUR).pem)
        serverFromString(reactor, f"schannel:tcp:0:certificate={q(soon)}")
        (warning,) = self.warnings()
        self.assertIn("expires in 13 days", warning)

    def test_an_sni_folders_default_is_named_once(self) -> None:
        old = self.files.write("sni/DEFAULT.pem", self.files.ca.issue(
            "localhost", not_before=self.now - 9 * DAY, not_after=self.now - DAY).pem)
        serverFromString(reactor, f"schannel:tcp:0:sni={q(old.parent)}")
        (warning,) = self.warnings()
        self.assertIn(f"certificate file {str(old)!r}", warning)

    def test_good_certificates_say_nothing(self) -> None:
        good = self.files.write("good.pem", self.files.ca.issue("localhost").pem)
        serverFromString(reactor, f"schannel:tcp:0:certificate={q(good)}")
        self.assertEqual(self.warnings(), [])

    def test_an_expired_client_certificate(self) -> None:
        old = self.files.write("client.pem", self.files.ca.issue(
            common_name="alice", not_before=self.now - 9 * DAY, not_after=self.now - DAY).pem)
        clientFromString(reactor, f"schannel:tcp:localhost:443:trustRoots={q(self.files.ca_file)}"
                         f":certificate={q(old)}")
        (warning,) = self.warnings()
        self.assertIn("subject CN=alice", warning)


DAY = datetime.timedelta(days=1)
HOUR = datetime.timedelta(hours=1)


# -- quiet connections give back their buffers: nothing lost ----------------------


class Echo(Protocol):
    """Server side: send back everything, keep it all to compare."""

    def connectionMade(self) -> None:
        self.received = b""
        self.lost: Deferred[None] = Deferred()
        self.factory.protocols.append(self)  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        assert self.transport is not None
        self.transport.write(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.lost.callback(None)


class EchoFactory(ReplyFactory):
    protocol = Echo  # type: ignore[assignment]


def _bursts(port: int, version: str, seed: int, pause: float) -> tuple[bytes, bytes]:
    """Python's ``ssl`` client: bursts of 1 B to 1 MiB with pauses around
    *pause*, reading the echo all along (one thread: an ``ssl`` socket is
    not safe to read and write from two). (what was sent, what came back)."""
    import random
    import select
    import socket
    import ssl

    rng = random.Random(seed)
    context = ssl.create_default_context(cafile=pki().ca)
    context.minimum_version = context.maximum_version = ssl.TLSVersion[version.replace(".", "_")]
    sent = bytearray()
    back = bytearray()
    deadline = time.monotonic() + 30
    with context.wrap_socket(
        socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="localhost"
    ) as tls:
        tls.setblocking(False)

        def pump(data: bytes, until: float) -> None:
            # Send *data* while reading, then keep reading until *until*.
            view = memoryview(data)
            done = 0
            while (done < len(view) or time.monotonic() < until) and time.monotonic() < deadline:
                try:
                    chunk = tls.recv(1 << 20)
                    if not chunk:
                        raise ConnectionError("closed by the server")
                    back.extend(chunk)
                    continue
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    pass
                if done < len(view):
                    try:
                        done += tls.send(view[done : done + 65536])
                        continue
                    except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                        pass
                select.select([tls], [tls] if done < len(view) else [], [], 0.01)

        for _ in range(8):
            size = rng.choice([1, 4096, 4097, 65536, 300_000, rng.randint(1, 1 << 20)])
            data = rng.randbytes(size)
            sent += data
            pump(data, time.monotonic() + rng.choice([0, pause / 2, pause * 1.5, pause * 3]))
        while len(back) < len(sent) and time.monotonic() < deadline:
            pump(b"", time.monotonic() + 0.05)
    return bytes(sent), bytes(back)


def _key_updates(port: int, pause: float, folder: str) -> tuple[list[bytes], bytes]:
    """``openssl s_client`` (TLS 1.3) sends 6 KB lines and a KeyUpdate
    (``K`` asks for one back, ``k`` does not) between them, pausing long
    enough for the server to release its buffers. (lines sent, its output)."""
    output = Path(folder) / "s_client.out"
    lines: list[bytes] = []
    with output.open("wb") as out:
        process = subprocess.Popen(
            [
                "openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_3",
                "-CAfile", pki().ca, "-servername", "localhost",
            ],
            stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        assert process.stdin is not None
        try:
            for i in range(6):
                for line in (f"L{i}-".encode() + b"x" * 6000 + b"\n", b"K\n" if i % 2 else b"k\n"):
                    if line[:1] == b"L":
                        lines.append(line)
                    process.stdin.write(line)
                    process.stdin.flush()
                    time.sleep(pause * 3)
            process.stdin.close()
            process.wait(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    return lines, output.read_bytes()


class QuietReleasePeerTests(LiveTestCase):
    """A ``schannel:`` server gives back quiet connections' buffers (every
    0.05 s here, not 5 s): real peers' bytes still arrive whole and in order,
    both ways, across the releases and KeyUpdates."""

    def setUp(self) -> None:
        from txschannel import protocol as protocol_module
        from txschannel.context import SecurityContext

        self.patch(protocol_module, "_QUIET_PERIOD", 0.05)
        self.released = 0
        release = SecurityContext.release_buffers

        def counting(context: SecurityContext) -> bool:
            done = release(context)
            self.released += done
            return done

        self.patch(SecurityContext, "release_buffers", counting)

    def assert_released(self) -> None:
        from txschannel import _openssl

        if _openssl.FAST:
            self.assertGreater(self.released, 0)
        else:  # the public path keeps its buffers
            self.assertEqual(self.released, 0)

    @inlineCallbacks
    def test_bursts_both_ways_across_releases(self) -> Any:
        factory = EchoFactory()
        port = yield serverFromString(reactor, server_string()).listen(factory)
        self.addCleanup(self._stop, port, factory)
        for seed, version in enumerate(("TLSv1.2", "TLSv1.3") * 2):
            sent, back = yield deferToThread(_bursts, port.getHost().port, version, seed, 0.05)
            yield factory.protocols[-1].lost
            self.assertEqual(len(back), len(sent), version)
            self.assertEqual(hashlib.sha256(back).digest(), hashlib.sha256(sent).digest(), version)
            self.assertEqual(factory.protocols[-1].received, sent, version)  # type: ignore[attr-defined]
        self.assert_released()

    @inlineCallbacks
    def test_key_updates_between_releases(self) -> Any:
        require("openssl")
        factory = EchoFactory()
        port = yield serverFromString(reactor, server_string()).listen(factory)
        self.addCleanup(self._stop, port, factory)
        folder = self.mktemp()
        os.makedirs(folder)
        lines, output = yield deferToThread(_key_updates, port.getHost().port, 0.05, folder)
        yield factory.protocols[-1].lost
        self.assertEqual(factory.protocols[-1].received, b"".join(lines))  # type: ignore[attr-defined]
        # (Only our lines: the output also holds the certificate in PEM.)
        echoed = [line + b"\n" for line in output.split(b"\n") if re.fullmatch(rb"L\d-x+", line)]
        self.assertEqual(echoed, lines)
        self.assertEqual(output.count(b"KEYUPDATE"), 6)
        self.assert_released()
