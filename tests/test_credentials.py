"""Credentials: every bad input is a ValueError naming the file and the
problem, at construction; Twisted's TLS objects work as credentials; SNI and
key-exchange groups behave as documented."""

from __future__ import annotations

import datetime
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

from tests.support.contexts import NAME, authority, client_credentials, server_credentials
from tests.support.handshake import (
    OpenSSLClient,
    Side,
    converse,
    fails,
    failure,
    handshake,
    peer_error,
)
from tests.support.pyssl import PythonSide
from txschannel import ClientContext, Credentials, SecurityError, ServerContext, Status, _openssl
from txschannel.credentials import read_passphrase, sni_default, validity_warnings
from txschannel.testing import CertificateAuthority, IssuedCertificate


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

    def test_an_sni_folder_file_named_with_an_empty_label(self) -> None:
        # example.com..pem would serve the name "example.com."; no client
        # may ask for it (a name ends in one dot at most), so the file is a
        # mistake to name, not to skip in silence.
        pem = authority().ca.issue_cert("example.com", key_type=trustme.KeyType.ECDSA)
        for name in ("example.com..pem", "example..com.pem", ".example.com.pem"):
            folder = os.path.join(self.folder, f"sni-{name}")
            os.makedirs(folder)
            pem.private_key_and_cert_chain_pem.write_to_path(os.path.join(folder, name))
            message = self.error(certificate=authority().server_pem, sni=folder)
            self.assertIn(f"sni folder {folder!r}: {name!r}", message)
            self.assertIn("empty label", message)
            self.assertNotIn("\n", message)

    def test_an_sni_name_with_two_trailing_dots(self) -> None:
        pem = authority().ca.issue_cert("example.com", key_type=trustme.KeyType.ECDSA)
        message = self.error(certificate=authority().server_pem,
                             sni={"example.com..": pem.private_key_and_cert_chain_pem.bytes()})
        self.assertIn("sni name 'example.com..'", message)
        self.assertIn("empty label", message)

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
        # What the terminator's routing and metrics read.
        self.assertEqual(list(server.sni_contexts), ["other.example"])
        with self.assertRaises(TypeError):
            server.sni_contexts["x"] = server.openssl_context  # type: ignore[index]
        leaves = [identity.leaf for identity in server.identities]
        self.assertEqual(len(leaves), 2)
        names = leaves[1].extensions.get_extension_for_class(x509.SubjectAlternativeName)
        self.assertEqual(names.value.get_values_for_type(x509.DNSName), ["other.example"])
        self.assertEqual(client_credentials().identities, ())

    def test_sni_serves_a_name_with_an_empty_label_the_default(self) -> None:
        # "example.com.." is not example.com written absolutely (one dot),
        # so it gets the default certificate, as routing treats it.
        other = authority().ca.issue_cert("example.com", key_type=trustme.KeyType.ECDSA)
        server = server_credentials(
            sni={"example.com": other.private_key_and_cert_chain_pem.bytes()})
        for offered, expected in ((b"example.com", "example.com"),
                                  (b"Example.COM.", "example.com"),
                                  (b"example.com..", NAME), (b"example..com", NAME)):
            client = OpenSSLClient(offered)
            converse(client, Side(ServerContext(server)), client.start())
            peer = client.connection.get_peer_certificate()
            assert peer is not None
            names = peer.to_cryptography().extensions.get_extension_for_class(
                x509.SubjectAlternativeName).value
            self.assertEqual(names.get_values_for_type(x509.DNSName)[0], expected, offered)

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
        # The server is told bad_certificate (not internal_error); the public
        # path cannot choose the alert (docs/context.rst).
        if _openssl.FAST:
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

        ours = Side(ServerContext(server_credentials()))
        speaker, error, _ = fails(theirs, ours, theirs.start())
        self.assertIs(speaker, ours)
        assert isinstance(error, SecurityError)
        self.assertEqual(error.status, Status.ALGORITHM_MISMATCH, error.reason)

    def test_a_python_client_gets_an_allowed_group(self) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(cadata=authority().roots.decode())
        theirs = PythonSide(context, server_side=False)

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


# -- encrypted keys, the sni folder's default, validity periods ---------------------


def _encrypted(issued: IssuedCertificate, passphrase: bytes, *, traditional: bool = False) -> bytes:
    """*issued*'s key encrypted with *passphrase* (PKCS#8, or OpenSSL's
    traditional ``Proc-Type: 4,ENCRYPTED`` form), then its certificate."""
    key_format = (
        serialization.PrivateFormat.TraditionalOpenSSL
        if traditional
        else serialization.PrivateFormat.PKCS8
    )
    key = issued.private_key.private_bytes(
        serialization.Encoding.PEM, key_format,
        serialization.BestAvailableEncryption(passphrase))
    return key + issued.certificate_pem


class PassphraseTests(SynchronousTestCase):
    """An encrypted private key loads with its passphrase, and only with it."""

    def setUp(self) -> None:
        self.folder = self.mktemp()
        os.makedirs(self.folder)
        self.ca = CertificateAuthority()
        self.issued = self.ca.issue(NAME)

    def path(self, name: str, data: bytes) -> str:
        path = os.path.join(self.folder, name)
        with open(path, "wb") as handle:
            handle.write(data)
        return path

    def works(self, server: Credentials) -> None:
        client = Credentials.client(trust_roots=self.ca.certificate_pem)
        pair = handshake(ClientContext(client, NAME), ServerContext(server))
        self.assertEqual(pair.client_to_server(b"decrypted"), b"decrypted")

    def test_pkcs8_and_traditional_encrypted_keys_load_with_their_passphrase(self) -> None:
        for traditional in (False, True):
            pem = _encrypted(self.issued, b"s3cret", traditional=traditional)
            path = self.path(f"server-{traditional}.pem", pem)
            self.works(Credentials.server(certificate=path, passphrase=b"s3cret"))
            self.works(Credentials.server(certificate=path, passphrase="s3cret"))

    def test_an_encrypted_key_in_its_own_file(self) -> None:
        key = self.path("key.pem", _encrypted(self.issued, b"k").split(b"-----BEGIN CERT")[0])
        certificate = self.path("cert.pem", self.issued.certificate_pem)
        self.works(Credentials.server(certificate=certificate, private_key=key, passphrase=b"k"))

    def test_a_wrong_passphrase_names_the_file_and_never_the_passphrase(self) -> None:
        path = self.path("server.pem", _encrypted(self.issued, b"right horse"))
        error = self.assertRaises(ValueError, Credentials.server, certificate=path,
                                  passphrase=b"wrong battery")
        self.assertIn(repr(path), str(error))
        self.assertIn("passphrase given does not decrypt", str(error))
        self.assertNotIn("wrong battery", str(error))
        self.assertNotIn("right horse", str(error))

    def test_an_encrypted_key_without_a_passphrase_says_how_to_give_one(self) -> None:
        path = self.path("server.pem", _encrypted(self.issued, b"k"))
        error = str(self.assertRaises(ValueError, Credentials.server, certificate=path))
        self.assertIn(repr(path), error)
        self.assertIn("encrypted and no passphrase was given", error)
        self.assertIn("passphraseFile=", error)

    def test_a_passphrase_for_a_key_that_is_not_encrypted_is_not_needed(self) -> None:
        path = self.path("server.pem", self.issued.pem)
        self.works(Credentials.server(certificate=path, passphrase=b"unused"))

    def test_sni_files_use_the_same_passphrase(self) -> None:
        sni = os.path.join(self.folder, "sni")
        os.makedirs(sni)
        other = self.ca.issue("other.example")
        with open(os.path.join(sni, "other.example.pem"), "wb") as handle:
            handle.write(_encrypted(other, b"k"))
        server = Credentials.server(certificate=_encrypted(self.issued, b"k"), sni=sni,
                                    passphrase=b"k")
        client = Credentials.client(trust_roots=self.ca.certificate_pem)
        pair = handshake(ClientContext(client, "other.example"), ServerContext(server))
        self.assertEqual(pair.client.context.attributes.server_name, "other.example")

    def test_a_client_certificate_with_an_encrypted_key(self) -> None:
        alice = self.ca.issue(common_name="alice")
        path = self.path("alice.pem", _encrypted(alice, b"k"))
        client = Credentials.client(trust_roots=self.ca.certificate_pem, certificate=path,
                                    passphrase=b"k")
        server = self.ca.server_credentials(NAME, client_ca=self.ca.certificate_pem,
                                            require_client_certificate=True)
        pair = handshake(ClientContext(client, NAME), ServerContext(server))
        peer = pair.server.context.attributes.peer_certificate
        assert peer is not None
        self.assertIn("CN=alice", peer.subject.rfc4514_string())
        self.assertRaises(ValueError, Credentials.client, trust_roots=self.ca.certificate_pem,
                          certificate=path, passphrase=b"nope")

    def test_read_passphrase_strips_one_trailing_newline(self) -> None:
        for written, read in ((b"pw\n", b"pw"), (b"pw\r\n", b"pw"), (b"pw", b"pw"),
                              (b"pw\n\n", b"pw\n"), (b" pw ", b" pw ")):
            self.assertEqual(read_passphrase(self.path("pass.txt", written)), read, written)

    def test_read_passphrase_errors_name_the_file(self) -> None:
        missing = os.path.join(self.folder, "missing.txt")
        self.assertIn(f"passphrase file {missing!r} does not exist",
                      str(self.assertRaises(ValueError, read_passphrase, missing)))
        empty = self.path("empty.txt", b"\n")
        self.assertIn(f"passphrase file {empty!r} is empty",
                      str(self.assertRaises(ValueError, read_passphrase, empty)))
        self.assertIn("is a folder",
                      str(self.assertRaises(ValueError, read_passphrase, self.folder)))


class SniDefaultTests(SynchronousTestCase):
    """An sni folder's default file: txsni's DEFAULT.pem, or default.pem."""

    def folder(self, *names: str) -> str:
        folder = self.mktemp()
        os.makedirs(folder)
        for name in names:
            with open(os.path.join(folder, name), "wb") as handle:
                handle.write(b"")
        return folder

    def test_txsni_spelling_and_lower_case(self) -> None:
        for name in ("DEFAULT.pem", "default.pem", "Default.pem"):
            folder = self.folder(name, "alpha.test.pem")
            self.assertEqual(sni_default(folder), os.path.join(folder, name))

    def test_none_when_absent(self) -> None:
        self.assertIsNone(sni_default(self.folder("alpha.test.pem")))

    def test_two_spellings_at_once_are_an_error(self) -> None:
        folder = self.folder("DEFAULT.pem", "default.pem")
        if len(os.listdir(folder)) < 2:  # a case-insensitive file system
            return
        error = str(self.assertRaises(ValueError, sni_default, folder))
        self.assertIn("DEFAULT.pem and default.pem", error)
        self.assertIn(repr(folder), error)

    def test_missing_folder(self) -> None:
        missing = os.path.join(self.folder(), "nope")
        self.assertIn(repr(missing), str(self.assertRaises(ValueError, sni_default, missing)))


class ValidityWarningTests(SynchronousTestCase):
    """validity_warnings() names the file, subject and dates of a certificate
    that is out of date or nearly so, and says nothing about a good one."""

    def setUp(self) -> None:
        self.folder = self.mktemp()
        os.makedirs(self.folder)
        self.ca = CertificateAuthority()
        self.now = datetime.datetime.now(datetime.timezone.utc)

    def file(self, name: str, **dates: datetime.datetime) -> str:
        path = os.path.join(self.folder, name)
        self.ca.issue(NAME, **dates).write(path)  # type: ignore[arg-type]
        return path

    def test_an_expired_certificate(self) -> None:
        path = self.file("old.pem", not_before=self.now - 30 * DAY,
                         not_after=self.now - 3 * DAY - HOUR)
        (warning,) = validity_warnings(Credentials.server(certificate=path))
        self.assertIn(f"certificate file {path!r}", warning)
        self.assertIn("(subject CN=localhost,O=txschannel testing)", warning)
        self.assertIn("has expired (3 days ago)", warning)
        start = (self.now - 30 * DAY).strftime("%Y-%m-%d %H:%M:%S")
        end = (self.now - 3 * DAY - HOUR).strftime("%Y-%m-%d %H:%M:%S")
        self.assertIn(f"valid from {start} to {end} UTC", warning)

    def test_a_certificate_not_valid_yet(self) -> None:
        path = self.file("early.pem", not_before=self.now + DAY, not_after=self.now + 90 * DAY)
        (warning,) = validity_warnings(Credentials.server(certificate=path))
        self.assertIn("is not valid yet", warning)
        self.assertIn(path, warning)

    def test_fourteen_days_before_expiry(self) -> None:
        path = self.file("soon.pem", not_after=self.now + 5 * DAY + HOUR)
        (warning,) = validity_warnings(Credentials.server(certificate=path))
        self.assertIn("expires in 5 days", warning)
        path = self.file("today.pem", not_after=self.now + HOUR)
        (warning,) = validity_warnings(Credentials.server(certificate=path))
        self.assertIn("expires in less than a day", warning)
        path = self.file("later.pem", not_after=self.now + 15 * DAY)
        self.assertEqual(validity_warnings(Credentials.server(certificate=path)), [])
        self.assertEqual(len(validity_warnings(Credentials.server(certificate=path),
                                               warn_within=30 * DAY)), 1)
        self.assertEqual(len(validity_warnings(Credentials.server(certificate=path),
                                               now=self.now + 16 * DAY)), 1)

    def test_sni_files_and_client_certificates_are_checked_too(self) -> None:
        sni = os.path.join(self.folder, "sni")
        os.makedirs(sni)
        good = self.file("good.pem")
        expired = os.path.join(sni, "old.example.pem")
        self.ca.issue("old.example", not_before=self.now - 9 * DAY,
                      not_after=self.now - DAY).write(expired)
        (warning,) = validity_warnings(Credentials.server(certificate=good, sni=sni))
        self.assertIn(expired, warning)
        client = Credentials.client(trust_roots=self.ca.certificate_pem, certificate=expired)
        (warning,) = validity_warnings(client)
        self.assertIn(expired, warning)

    def test_certificates_given_in_memory(self) -> None:
        issued = self.ca.issue(NAME, not_after=self.now + DAY + HOUR)
        (warning,) = validity_warnings(Credentials.server(certificate=issued.pem))
        self.assertTrue(warning.startswith("certificate (given in memory) "), warning)
        self.assertIn("expires in 1 day", warning)
        self.assertEqual(validity_warnings(Credentials.client(trust_roots=self.ca.certificate_pem)),
                         [])


DAY = datetime.timedelta(days=1)
HOUR = datetime.timedelta(hours=1)
