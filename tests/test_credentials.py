"""Credentials: every bad input is a ValueError naming the file and the
problem, at construction; Twisted's TLS objects work as credentials; SNI and
key-exchange groups behave as documented."""

from __future__ import annotations

import os
import ssl

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.internet import ssl as twisted_ssl
from twisted.internet.interfaces import IProtocolNegotiationFactory
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from tests.test_context import (
    NAME,
    authority,
    client_credentials,
    failure,
    handshake,
    peer_error,
    server_credentials,
)
from tests.test_context_peers import PythonSide, converse, fails
from txschannel import ClientContext, Credentials, SecurityError, ServerContext, Status


class BadInputTests(SynchronousTestCase):
    """What an operator gets wrong, and the message that says so."""

    def setUp(self) -> None:
        self.folder = self.mktemp()
        os.makedirs(self.folder)

    def path(self, name: str, data: bytes | None = None) -> str:
        path = os.path.join(self.folder, name)
        if data is not None:
            with open(path, "wb") as handle:
                handle.write(data)
        return path

    def error(self, **options: object) -> str:
        builder = Credentials.client if "trust_roots" in options else Credentials.server
        error = self.assertRaises(ValueError, builder, **options)
        return str(error)

    def test_missing_file(self) -> None:
        path = self.path("nowhere.pem")
        message = self.error(certificate=path)
        self.assertIn(repr(path), message)
        self.assertIn("does not exist", message)

    def test_unreadable_file_a_symlink_loop(self) -> None:
        # Tests run as root, for whom chmod 000 changes nothing: a symlink
        # loop is a path that no user can read (ELOOP).
        path = self.path("loop.pem")
        os.symlink("loop.pem", path)
        message = self.error(certificate=path)
        self.assertIn(repr(path), message)
        self.assertIn("cannot be read", message)
        self.assertIn("symbolic links", message)

    def test_unreadable_file_a_named_pipe_does_not_hang(self) -> None:
        # Opening a FIFO blocks until a writer comes: it must be refused
        # before it is opened.
        path = self.path("pipe.pem")
        os.mkfifo(path)
        message = self.error(certificate=authority().server_pem, private_key=path)
        self.assertIn(repr(path), message)
        self.assertIn("named pipe", message)

    def test_a_folder_where_a_key_is_expected(self) -> None:
        message = self.error(certificate=authority().server_pem, private_key=self.folder)
        self.assertIn(repr(self.folder), message)
        self.assertIn("is a folder", message)

    def test_not_pem(self) -> None:
        der = authority().ca.cert_pem.bytes()
        der = x509.load_pem_x509_certificate(der).public_bytes(serialization.Encoding.DER)
        path = self.path("server.der", der)
        message = self.error(certificate=path)
        self.assertIn(repr(path), message)
        self.assertIn("not PEM", message)
        message = self.error(trust_roots=self.path("roots.txt", b"hello\n"))
        self.assertIn("roots.txt", message)
        self.assertIn("not PEM", message)

    def test_key_not_matching_the_certificate(self) -> None:
        certificate = self.path("cert.pem", authority().server.cert_chain_pems[0].bytes())
        other = ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption())
        key = self.path("key.pem", other)
        message = self.error(certificate=certificate, private_key=key)
        self.assertIn(repr(key), message)
        self.assertIn(repr(certificate), message)
        self.assertIn("does not match", message)

    def test_a_ca_bundle_where_a_key_is_expected(self) -> None:
        certificate = self.path("cert.pem", authority().server.cert_chain_pems[0].bytes())
        bundle = self.path("ca-bundle.pem", authority().roots)
        message = self.error(certificate=certificate, private_key=bundle)
        self.assertIn(repr(bundle), message)
        self.assertIn("holds no private key", message)
        self.assertIn("CERTIFICATE", message)

    def test_a_certificate_without_its_key(self) -> None:
        certificate = self.path("cert.pem", authority().server.cert_chain_pems[0].bytes())
        message = self.error(certificate=certificate)
        self.assertIn(repr(certificate), message)
        self.assertIn("no private key", message)

    def test_a_key_file_where_the_certificate_is_expected(self) -> None:
        key = self.path("key.pem", authority().server.private_key_pem.bytes())
        message = self.error(certificate=key)
        self.assertIn(repr(key), message)
        self.assertIn("no certificate", message)

    def test_an_encrypted_key(self) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        encrypted = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"))
        path = self.path("encrypted.pem", encrypted)
        message = self.error(certificate=authority().server_pem, private_key=path)
        self.assertIn(repr(path), message)
        self.assertIn("encrypted", message)

    def test_a_damaged_certificate(self) -> None:
        pem = authority().roots
        damaged = pem.replace(pem[100:110], b"AAAAAAAAAA")
        message = self.error(trust_roots=self.path("damaged.pem", damaged))
        self.assertIn("damaged.pem", message)
        self.assertIn("damaged", message)

    def test_an_empty_trust_folder(self) -> None:
        message = self.error(trust_roots=self.folder)
        self.assertIn(repr(self.folder), message)

    def test_versions(self) -> None:
        self.assertIn("below 1.2", self.error(trust_roots=authority().roots,
                                              minimum_version="TLSv1.1"))
        self.assertIn("unknown TLS version", self.error(trust_roots=authority().roots,
                                                        maximum_version="TLS1.3"))
        self.assertIn("below", self.error(trust_roots=authority().roots,
                                          minimum_version="TLSv1.3",
                                          maximum_version="TLSv1.2"))

    def test_alpn_names(self) -> None:
        self.assertRaises(TypeError, Credentials.client, trust_roots=authority().roots,
                          alpn="h2")
        self.assertIn("1 to 255", self.error(trust_roots=authority().roots, alpn=[""]))

    def test_require_client_certificate_needs_client_ca(self) -> None:
        self.assertIn("client_ca", self.error(certificate=authority().server_pem,
                                              require_client_certificate=True))

    def test_sni_folder_missing(self) -> None:
        missing = self.path("nope")
        message = self.error(certificate=authority().server_pem, sni=missing)
        self.assertIn(repr(missing), message)

    def test_a_key_without_a_certificate_on_a_client(self) -> None:
        self.assertIn("without a certificate", self.error(
            trust_roots=authority().roots, private_key=authority().server_pem))


class SourceTests(SynchronousTestCase):
    """Certificates and keys as paths, PEM bytes or cryptography objects."""

    def test_separate_files_and_objects_work_alike(self) -> None:
        folder = self.mktemp()
        os.makedirs(folder)
        leaf = authority().server
        certificate = os.path.join(folder, "cert.pem")
        key = os.path.join(folder, "key.pem")
        with open(certificate, "wb") as handle:
            handle.write(b"".join(p.bytes() for p in leaf.cert_chain_pems))
        with open(key, "wb") as handle:
            handle.write(leaf.private_key_pem.bytes())
        objects = Credentials.server(
            certificate=x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes()),
            private_key=serialization.load_pem_private_key(leaf.private_key_pem.bytes(), None),
        )
        roots_folder = os.path.join(folder, "roots")
        os.makedirs(roots_folder)
        with open(os.path.join(roots_folder, "ca.crt"), "wb") as handle:
            handle.write(authority().roots)
        for server in (Credentials.server(certificate=certificate, private_key=key), objects):
            for roots in (roots_folder, authority().roots,
                          [x509.load_pem_x509_certificate(authority().roots)]):
                pair = handshake(ClientContext(Credentials.client(trust_roots=roots), NAME),
                                 ServerContext(server))
                self.assertEqual(pair.client_to_server(b"ok"), b"ok")

    def test_sni_chooses_the_certificate_by_server_name(self) -> None:
        other = authority().ca.issue_cert("other.example", key_type=trustme.KeyType.ECDSA)
        server = server_credentials(
            sni={"Other.Example.": other.private_key_and_cert_chain_pem.bytes()})
        for name, expected in (("other.example", "other.example"), (NAME, NAME)):
            pair = handshake(ClientContext(client_credentials(), name), ServerContext(server))
            peer = pair.client.context.attributes.peer_certificate
            assert peer is not None
            names = peer.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            self.assertIn(expected, names.get_values_for_type(x509.DNSName))
            self.assertEqual(pair.server.context.attributes.server_name, name)

    def test_sni_folder_of_hostname_files(self) -> None:
        folder = self.mktemp()
        os.makedirs(folder)
        other = authority().ca.issue_cert("other.example", key_type=trustme.KeyType.ECDSA)
        other.private_key_and_cert_chain_pem.write_to_path(
            os.path.join(folder, "other.example.pem"))
        server = server_credentials(sni=folder)
        pair = handshake(ClientContext(client_credentials(), "other.example"),
                         ServerContext(server))
        self.assertEqual(pair.client_to_server(b"sni"), b"sni")

    def test_a_ca_certificate_as_the_servers_own_is_refused(self) -> None:
        # A trusted intermediate CA's certificate with the right name is
        # still not a server certificate.
        pem = _ca_certificate_for(NAME)
        side, error, pair = failure(ClientContext(client_credentials(), NAME),
                                    ServerContext(Credentials.server(certificate=pem)))
        self.assertEqual((side, error.status), ("client", Status.CERT_UNKNOWN))
        self.assertIn("CA certificate", error.reason)
        # The server is told bad_certificate (not internal_error).
        self.assertEqual(peer_error(pair.server, error.token).status, Status.CERT_UNKNOWN)


def _ca_certificate_for(name: str) -> bytes:
    """A CA certificate (cA=TRUE) with *name* in its subjectAltName, issued by
    the test authority, with its key: the leaf a careless CA might issue."""
    import datetime

    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    issuer_cert = x509.load_pem_x509_certificate(authority().roots)
    issuer_key = serialization.load_pem_private_key(
        authority().ca.private_key_pem.bytes(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "a CA as a leaf")]))
        .issuer_name(issuer_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(issuer_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    return certificate.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())


class GroupTests(SynchronousTestCase):
    def test_a_client_offering_only_p521_is_refused(self) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(cadata=authority().roots.decode())
        context.set_ecdh_curve("secp521r1")
        theirs = PythonSide(context, server_side=False)
        from tests.test_context import Side

        ours = Side(ServerContext(server_credentials()))
        speaker, error, _ = fails(theirs, ours, theirs.start())
        self.assertIs(speaker, ours)
        assert isinstance(error, SecurityError)
        self.assertEqual(error.status, Status.ALGORITHM_MISMATCH, error.reason)

    def test_a_python_client_gets_an_allowed_group(self) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(cadata=authority().roots.decode())
        theirs = PythonSide(context, server_side=False)
        from tests.test_context import Side

        ours = Side(ServerContext(server_credentials()))
        converse(theirs, ours, theirs.start())
        group = (ours.context.attributes.group or "").lower()
        self.assertIn(group, {"x25519", "x25519mlkem768", "secp256r1", "prime256v1",
                              "secp384r1", "p-256", "p-384"})


# -- Twisted's TLS objects -----------------------------------------------------


@implementer(IProtocolNegotiationFactory)
class _NegotiatingFactory:
    def __init__(self, protocols: list[bytes]) -> None:
        self.protocols = protocols

    def acceptableProtocols(self) -> list[bytes]:
        return self.protocols


class _Protocol:
    """What a transport passes as app_data: something with .factory.wrappedFactory."""

    def __init__(self, protocols: list[bytes]) -> None:
        self.factory = type("F", (), {"wrappedFactory": _NegotiatingFactory(protocols)})()


class FromTwistedTests(SynchronousTestCase):
    def roots(self) -> twisted_ssl.Certificate:
        return twisted_ssl.Certificate.loadPEM(authority().roots)

    def certificate_options(self, **options: object) -> twisted_ssl.CertificateOptions:
        private = twisted_ssl.PrivateCertificate.loadPEM(authority().server_pem)
        return private.options(**options)  # type: ignore[arg-type]

    def test_options_for_client_tls_against_our_server(self) -> None:
        credentials = Credentials.from_twisted(
            twisted_ssl.optionsForClientTLS(NAME, trustRoot=self.roots()))
        self.assertTrue(credentials.is_client)
        pair = handshake(ClientContext(credentials), ServerContext(server_credentials()))
        self.assertEqual(pair.client.context.target_name, NAME)
        self.assertEqual(pair.client_to_server(b"twisted"), b"twisted")
        self.assertEqual(pair.server.context.attributes.server_name, NAME)

    def test_options_for_client_tls_checks_the_name(self) -> None:
        credentials = Credentials.from_twisted(
            twisted_ssl.optionsForClientTLS("example.com", trustRoot=self.roots()))
        side, error, pair = failure(ClientContext(credentials),
                                    ServerContext(server_credentials()))
        self.assertEqual((side, error.status), ("client", Status.WRONG_PRINCIPAL))
        self.assertIn("example.com", error.reason)

    def test_options_for_client_tls_checks_the_issuer(self) -> None:
        credentials = Credentials.from_twisted(twisted_ssl.optionsForClientTLS(
            NAME, trustRoot=twisted_ssl.Certificate.loadPEM(authority("RSA").roots)))
        side, error, _ = failure(ClientContext(credentials), ServerContext(server_credentials()))
        self.assertEqual((side, error.status), ("client", Status.UNTRUSTED_ROOT))

    def test_certificate_options_as_our_server(self) -> None:
        credentials = Credentials.from_twisted(self.certificate_options())
        self.assertFalse(credentials.is_client)
        pair = handshake(ClientContext(client_credentials(), NAME), ServerContext(credentials))
        self.assertEqual(pair.server_to_client(b"options"), b"options")

    def test_certificate_options_alpn_through_app_data(self) -> None:
        server = Credentials.from_twisted(self.certificate_options())
        client = Credentials.from_twisted(
            twisted_ssl.optionsForClientTLS(NAME, trustRoot=self.roots(),
                                            acceptableProtocols=[b"h2", b"http/1.1"]))
        pair = handshake(ClientContext(client),
                         ServerContext(server, app_data=_Protocol([b"http/1.1"])))
        self.assertEqual(pair.server.context.attributes.alpn, "http/1.1")
        self.assertEqual(pair.client.context.attributes.alpn, "http/1.1")

    def test_certificate_options_for_a_client(self) -> None:
        credentials = Credentials.from_twisted(twisted_ssl.CertificateOptions(), is_client=True)
        self.assertTrue(credentials.is_client)
        self.assertTrue(credentials.manual_validation)
        pair = handshake(ClientContext(credentials), ServerContext(server_credentials()))
        self.assertEqual(pair.client_to_server(b"x"), b"x")
        # Without a key, CertificateOptions can only be a client's.
        self.assertTrue(Credentials.from_twisted(twisted_ssl.CertificateOptions()).is_client)
        self.assertFalse(Credentials.from_twisted(self.certificate_options(),
                                                  is_client=False).is_client)

    def test_a_legacy_context_factory(self) -> None:
        factory = twisted_ssl.ClientContextFactory()
        credentials = Credentials.from_twisted(factory, is_client=True)
        self.assertTrue(credentials.is_client)
        pair = handshake(ClientContext(credentials), ServerContext(server_credentials()))
        self.assertEqual(pair.client_to_server(b"legacy"), b"legacy")

    def test_contexts_from_twisted_creators_are_freed_without_the_gc(self) -> None:
        # The stand-in protocol refers back to its context weakly; a cycle
        # would keep each connection's OpenSSL memory until a GC pass.
        import gc

        from txschannel import SecurityContext

        credentials = Credentials.from_twisted(
            twisted_ssl.optionsForClientTLS(NAME, trustRoot=self.roots()))
        server = server_credentials()
        gc.collect()
        gc.disable()
        self.addCleanup(gc.enable)
        before = sum(1 for o in gc.get_objects() if isinstance(o, SecurityContext))
        for _ in range(3):
            handshake(ClientContext(credentials), ServerContext(server))
        after = sum(1 for o in gc.get_objects() if isinstance(o, SecurityContext))
        self.assertEqual(after, before)

    def test_wrong_objects(self) -> None:
        self.assertRaises(TypeError, Credentials.from_twisted, object())
        self.assertRaises(TypeError, Credentials.from_twisted, client_credentials(),
                          is_client=False)
        self.assertIs(Credentials.from_twisted(client_credentials_cached()),
                      client_credentials_cached())
        self.assertRaises(TypeError, Credentials.from_twisted,
                          twisted_ssl.optionsForClientTLS(NAME), is_client=False)


_cached: list[Credentials] = []


def client_credentials_cached() -> Credentials:
    if not _cached:
        _cached.append(client_credentials())
    return _cached[0]
