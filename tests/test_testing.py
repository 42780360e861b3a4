"""Tests for txschannel.testing: the throw-away CA and in-memory connected pairs."""

from __future__ import annotations

import datetime
import ipaddress
import os
import stat
import subprocess

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from twisted.internet.error import ConnectionDone, TimeoutError
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from tests.support.handshake import handshake
from tests.support.peers import require
from txschannel import ClientContext, Credentials, SecurityError, ServerContext, Status
from txschannel.testing import CertificateAuthority, ConnectedPair, connected_pair


def alt_names(certificate: x509.Certificate) -> list[str]:
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(v) for v in san.get_values_for_type(x509.DNSName)] + [
        str(v) for v in san.get_values_for_type(x509.IPAddress)
    ]


class CertificateAuthorityTests(SynchronousTestCase):
    """The CA issues certificates that real TLS stacks accept, and only where they should."""

    def test_issued_certificate_names_every_host_and_address(self) -> None:
        issued = CertificateAuthority().issue("localhost", "*.example.com", "127.0.0.1", "::1")
        self.assertEqual(
            alt_names(issued.certificate), ["localhost", "*.example.com", "127.0.0.1", "::1"]
        )
        san = issued.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        self.assertIn(
            ipaddress.ip_address("::1"), san.value.get_values_for_type(x509.IPAddress)
        )

    def test_internationalised_host_name_is_idna_encoded(self) -> None:
        issued = CertificateAuthority().issue("bücher.example")
        self.assertEqual(alt_names(issued.certificate), ["xn--bcher-kva.example"])

    def test_key_types_are_ecdsa_by_default_and_rsa_on_request(self) -> None:
        ca = CertificateAuthority(key_type="rsa")
        self.assertIsInstance(ca.private_key, rsa.RSAPrivateKey)
        self.assertIsInstance(ca.issue("a.test").private_key, ec.EllipticCurvePrivateKey)
        self.assertIsInstance(ca.issue("a.test", key_type="rsa").private_key, rsa.RSAPrivateKey)

    def test_bad_input_raises_value_error_naming_it(self) -> None:
        ca = CertificateAuthority()
        with self.assertRaises(ValueError) as caught:
            ca.issue("bad name with spaces")
        self.assertIn("'bad name with spaces'", str(caught.exception))
        with self.assertRaises(ValueError) as caught:
            ca.issue("a.test", key_type="dsa")  # type: ignore[arg-type]
        self.assertIn("'dsa'", str(caught.exception))
        with self.assertRaises(ValueError) as caught:
            CertificateAuthority(key_type="ed448")  # type: ignore[arg-type]
        self.assertIn("'ed448'", str(caught.exception))
        now = datetime.datetime.now(datetime.timezone.utc)
        with self.assertRaises(ValueError) as caught:
            ca.issue("a.test", not_before=now, not_after=now - datetime.timedelta(days=1))
        self.assertIn("not_after", str(caught.exception))

    def test_server_and_client_credentials_complete_a_handshake(self) -> None:
        ca = CertificateAuthority()
        client = ClientContext(ca.client_credentials(), "localhost")
        server = ServerContext(ca.server_credentials("localhost"))
        handshake(client, server)
        attributes = client.attributes
        self.assertEqual(attributes.protocol, "TLSv1.3")
        assert attributes.peer_certificate is not None
        self.assertEqual(alt_names(attributes.peer_certificate), ["localhost"])
        self.assertEqual(attributes.peer_certificate.issuer, ca.certificate.subject)

    def test_ip_address_target_is_accepted(self) -> None:
        ca = CertificateAuthority()
        client = ClientContext(ca.client_credentials(), "127.0.0.1")
        handshake(client, ServerContext(ca.server_credentials("127.0.0.1")))
        self.assertTrue(client.established)

    def test_wrong_name_is_refused_as_wrong_principal(self) -> None:
        ca = CertificateAuthority()
        client = ClientContext(ca.client_credentials(), "other.test")
        with self.assertRaises(SecurityError) as caught:
            handshake(client, ServerContext(ca.server_credentials("localhost")))
        self.assertIs(caught.exception.status, Status.WRONG_PRINCIPAL)

    def test_another_ca_is_refused_as_untrusted_root(self) -> None:
        client = ClientContext(CertificateAuthority().client_credentials(), "localhost")
        server = ServerContext(CertificateAuthority().server_credentials("localhost"))
        with self.assertRaises(SecurityError) as caught:
            handshake(client, server)
        self.assertIs(caught.exception.status, Status.UNTRUSTED_ROOT)

    def test_expired_certificate_is_refused_as_cert_expired(self) -> None:
        ca = CertificateAuthority()
        now = datetime.datetime.now(datetime.timezone.utc)
        issued = ca.issue(
            "localhost",
            not_before=now - datetime.timedelta(days=30),
            not_after=now - datetime.timedelta(days=1),
        )
        server = ServerContext(Credentials.server(certificate=issued.pem))
        client = ClientContext(ca.client_credentials(), "localhost")
        with self.assertRaises(SecurityError) as caught:
            handshake(client, server)
        self.assertIs(caught.exception.status, Status.CERT_EXPIRED)

    def test_intermediate_is_sent_in_the_chain_and_verified_up_to_the_root(self) -> None:
        root = CertificateAuthority()
        intermediate = root.intermediate()
        self.assertEqual(intermediate.root, root.certificate)
        client = ClientContext(root.client_credentials(), "localhost")
        handshake(client, ServerContext(intermediate.server_credentials("localhost")))
        chain = client.attributes.peer_chain
        self.assertEqual([c.subject for c in chain[1:]], [intermediate.certificate.subject])

    def test_client_certificate_is_accepted_when_the_server_trusts_the_ca(self) -> None:
        ca = CertificateAuthority()
        server = ServerContext(
            ca.server_credentials(
                "localhost", trust_client_certificates=True, require_client_certificate=True
            )
        )
        identity = ca.issue(common_name="alice")
        client = ClientContext(ca.client_credentials(certificate=identity), "localhost")
        handshake(client, server)
        peer = server.attributes.peer_certificate
        assert peer is not None
        self.assertEqual(peer.serial_number, identity.certificate.serial_number)

    def test_client_without_certificate_is_refused_when_one_is_required(self) -> None:
        ca = CertificateAuthority()
        server = ServerContext(
            ca.server_credentials(
                "localhost", trust_client_certificates=True, require_client_certificate=True
            )
        )
        client = ClientContext(ca.client_credentials(), "localhost")
        with self.assertRaises(SecurityError) as caught:
            handshake(client, server)
        self.assertIs(caught.exception.status, Status.NO_CREDENTIALS)

    def test_written_files_are_private_and_load_as_credentials(self) -> None:
        ca = CertificateAuthority()
        folder = self.mktemp()
        os.mkdir(folder)
        key_file = ca.issue("localhost").write(os.path.join(folder, "server.pem"))
        ca_file = ca.write(os.path.join(folder, "ca.pem"))
        self.assertEqual(stat.S_IMODE(os.stat(key_file).st_mode), 0o600)
        client = ClientContext(Credentials.client(trust_roots=str(ca_file)), "localhost")
        handshake(client, ServerContext(Credentials.server(certificate=str(key_file))))
        self.assertTrue(client.established)

    def test_openssl_verifies_a_leaf_issued_through_an_intermediate(self) -> None:
        openssl = require("openssl")
        root = CertificateAuthority(key_type="rsa")
        intermediate = root.intermediate()
        folder = self.mktemp()
        os.mkdir(folder)
        leaf = intermediate.issue("localhost", key_type="rsa")
        root_file = root.write(os.path.join(folder, "root.pem"))
        leaf_file = leaf.write(os.path.join(folder, "leaf.pem"))
        argv = [openssl, "verify", "-CAfile", str(root_file), "-untrusted", str(leaf_file)]
        result = subprocess.run(
            [*argv, "-purpose", "sslserver", "-verify_hostname", "localhost", str(leaf_file)],
            capture_output=True,
            timeout=30,
        )
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn(b"OK", result.stdout)
        # The same check with the wrong name must fail: OpenSSL really looked.
        wrong = subprocess.run(
            [*argv, "-verify_hostname", "other.test", str(leaf_file)],
            capture_output=True,
            timeout=30,
        )
        self.assertNotEqual(wrong.returncode, 0)


class KeptCertificateAuthorityTests(SynchronousTestCase):
    """write_key() and load(): a CA kept in a file issues a renewal its clients trust."""

    def test_loaded_ca_issues_what_the_old_roots_trust(self) -> None:
        folder = self.mktemp()
        os.makedirs(folder)
        ca = CertificateAuthority().intermediate()
        kept = ca.write_key(os.path.join(folder, "ca-key.pem"))
        self.assertEqual(stat.S_IMODE(os.stat(kept).st_mode), 0o600)
        loaded = CertificateAuthority.load(kept)
        self.assertEqual((loaded.certificate, loaded.chain), (ca.certificate, ca.chain))
        client, server, pump = connected_pair(
            Recorder, Recorder,
            server_credentials=loaded.server_credentials("localhost"),
            client_credentials=ca.client_credentials(),
        )  # fmt: skip
        self.assertIsNone(client.lost)

    def test_a_file_without_a_key_is_named(self) -> None:
        path = os.path.join(self.mktemp())
        CertificateAuthority().write(path)
        with self.assertRaises(ValueError) as caught:
            CertificateAuthority.load(path)
        self.assertIn(repr(path), str(caught.exception))


class Recorder(Protocol):
    """An application protocol that remembers what happened to it."""

    def __init__(self) -> None:
        self.received = b""
        self.lost: Failure | None = None
        self.handshakes = 0

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = ConnectionDone()) -> None:  # noqa: B008
        self.lost = reason


@implementer(IHandshakeListener)
class HandshakeRecorder(Recorder):
    def handshakeCompleted(self) -> None:
        self.handshakes += 1


class Echo(Recorder):
    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        assert self.transport is not None
        self.transport.write(data)


class ConnectedPairTests(SynchronousTestCase):
    """connected_pair joins two applications through SchannelFactory in memory."""

    def test_application_protocols_stay_reachable_after_the_connection_is_lost(
        self,
    ) -> None:
        pair = connected_pair(Recorder, Recorder)
        pair.client.transport.loseConnection()
        pair.pump.flush()
        self.assertIsNotNone(pair.server.lost)
        self.assertIs(pair.client_tls, pair.client.transport)
        self.assertEqual(pair.server_tls.securityContext, pair.server.transport.securityContext)

    def test_refusing_factory_raises_value_error(self) -> None:
        refusing = Factory.forProtocol(Recorder)
        refusing.buildProtocol = lambda addr: None  # type: ignore[method-assign]
        with self.assertRaises(ValueError) as caught:
            connected_pair(Recorder, refusing)
        self.assertIn("server", str(caught.exception))

    def test_credentials_for_the_wrong_side_raise_value_error(self) -> None:
        ca = CertificateAuthority()
        with self.assertRaises(ValueError):
            connected_pair(Recorder, Recorder, client_credentials=ca.server_credentials())

    def test_handshake_completes_without_sockets(self) -> None:
        client, server, pump = connected_pair(HandshakeRecorder, HandshakeRecorder)
        self.assertEqual((client.handshakes, server.handshakes), (1, 1))
        self.assertEqual(client.transport.securityContext.attributes.server_name, "localhost")

    def test_application_data_goes_both_ways(self) -> None:
        pair = connected_pair(Recorder, Echo)
        self.assertIsInstance(pair, ConnectedPair)
        assert pair.client.transport is not None
        pair.client.transport.write(b"ping " * 10000)
        pair.pump.flush()
        self.assertEqual(pair.server.received, b"ping " * 10000)
        self.assertEqual(pair.client.received, b"ping " * 10000)

    def test_bytes_on_the_wire_are_encrypted(self) -> None:
        client, server, pump = connected_pair(Recorder, Recorder)
        secret = b"the secret is 42"
        client.transport.write(secret)  # type: ignore[union-attr]
        # Writes are gathered until the end of the reactor turn: end it,
        # then look at what the client put on the wire before it moves.
        pump.clock.advance(0)
        wire = b"".join(pump.clientIO.stream)
        self.assertGreater(len(wire), len(secret))
        self.assertNotIn(secret, wire)
        pump.flush()
        self.assertEqual(server.received, secret)

    def test_handshake_false_leaves_the_pair_unpumped(self) -> None:
        client, server, pump = connected_pair(
            HandshakeRecorder, HandshakeRecorder, handshake=False
        )
        self.assertEqual(client.handshakes, 0)
        pump.flush()
        self.assertEqual(client.handshakes, 1)

    def test_factories_are_accepted_as_well_as_classes(self) -> None:
        factory = Factory.forProtocol(Echo)
        client, server, pump = connected_pair(Recorder, factory)
        self.assertIs(server.factory, factory)
        self.assertIsInstance(server, Echo)

    def test_not_a_factory_raises_type_error(self) -> None:
        with self.assertRaises(TypeError) as caught:
            connected_pair(Recorder, 42)  # type: ignore[arg-type]
        self.assertIn("server", str(caught.exception))

    def test_untrusted_server_reaches_the_application_as_security_error(self) -> None:
        client, server, pump = connected_pair(
            Recorder,
            Recorder,
            server_credentials=CertificateAuthority().server_credentials("localhost"),
        )
        lost = client.lost
        assert lost is not None
        self.assertIsInstance(lost.value, SecurityError)
        self.assertIs(lost.value.status, Status.UNTRUSTED_ROOT)
        self.assertIsNotNone(server.lost)

    def test_given_ca_issues_the_missing_credentials(self) -> None:
        ca = CertificateAuthority()
        identity = ca.issue(common_name="bob")
        client, server, pump = connected_pair(
            Recorder,
            Recorder,
            ca=ca,
            client_credentials=ca.client_credentials(certificate=identity),
            server_credentials=ca.server_credentials(
                "db.internal", trust_client_certificates=True, require_client_certificate=True
            ),
            target_name="db.internal",
        )
        peer = server.transport.securityContext.attributes.peer_certificate
        self.assertEqual(peer.serial_number, identity.certificate.serial_number)

    def test_alpn_is_negotiated_through_the_pair(self) -> None:
        ca = CertificateAuthority()
        pair = connected_pair(
            Recorder,
            Recorder,
            client_credentials=ca.client_credentials(alpn=["h2", "http/1.1"]),
            server_credentials=ca.server_credentials("localhost", alpn=["http/1.1"]),
        )
        self.assertEqual(pair.client_tls.negotiatedProtocol, b"http/1.1")
        self.assertEqual(pair.server_tls.negotiatedProtocol, b"http/1.1")

    def test_lose_connection_closes_both_sides_cleanly(self) -> None:
        client, server, pump = connected_pair(Recorder, Recorder)
        client.transport.write(b"last words")  # type: ignore[union-attr]
        client.transport.loseConnection()  # type: ignore[union-attr]
        pump.flush()
        self.assertEqual(server.received, b"last words")
        for side in (client, server):
            lost = side.lost
            assert lost is not None
            self.assertTrue(lost.check(ConnectionDone), lost)

    def test_clock_is_shared_so_the_handshake_timeout_can_be_tested(self) -> None:
        client, server, pump = connected_pair(Recorder, Recorder, handshake=False)
        # Nothing was pumped: the server never saw a ClientHello.
        pump.clock.advance(29)
        self.assertIsNone(server.lost)
        pump.clock.advance(2)
        pump.flush(advanceClock=False)
        lost = server.lost
        assert lost is not None
        self.assertTrue(lost.check(TimeoutError), lost)
