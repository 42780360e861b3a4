"""A CA, server certificates naming an OCSP responder on loopback, the
responder's index, OCSP responses about them, and a responder that answers
them (or dribbles).
"""

from __future__ import annotations

import datetime
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

NOW = datetime.datetime.now(datetime.timezone.utc)


class PKI:
    """A CA and a server certificate for localhost whose AIA names a responder on *port*.

    :meth:`issue` makes more, for an sni folder; the responder's index
    (``openssl ocsp -index``) lists them all.
    """

    def __init__(self, folder: Path, port: int, url: str | None = None) -> None:
        self.folder = folder
        self.port = port
        self.url = url or f"http://127.0.0.1:{port}/"
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "txschannel OCSP test CA")])
        self.ca = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(self.ca_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(NOW - datetime.timedelta(hours=1))
            .not_valid_after(NOW + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.ca_key.public_key()),
                           critical=False)
            .sign(self.ca_key, hashes.SHA256())
        )
        pem = serialization.Encoding.PEM
        self.ca_file = folder / "ca.pem"
        self.ca_file.write_bytes(self.ca.public_bytes(pem))
        self.ca_key_file = folder / "ca.key"
        self.ca_key_file.write_bytes(self.ca_key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        self.index = folder / "index.txt"
        self.index.write_text("")
        self.server_file = folder / "server.pem"
        self.leaf = self.issue("localhost", self.server_file)

    def issue(self, host: str, file: Path) -> x509.Certificate:
        """A certificate for *host*, written to *file* with its key and the CA, and indexed."""
        key = ec.generate_private_key(ec.SECP256R1())
        leaf = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
            .issuer_name(self.ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - datetime.timedelta(hours=1))
            .not_valid_after(NOW + datetime.timedelta(days=20))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityInformationAccess([x509.AccessDescription(
                AuthorityInformationAccessOID.OCSP,
                x509.UniformResourceIdentifier(self.url))]),
                critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self.ca_key.public_key()), critical=False)
            .sign(self.ca_key, hashes.SHA256())
        )
        pem = serialization.Encoding.PEM
        key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        file.write_bytes(key_pem + leaf.public_bytes(pem) + self.ca.public_bytes(pem))
        serial = f"{leaf.serial_number:X}"
        serial = "0" * (len(serial) % 2) + serial
        expiry = leaf.not_valid_after_utc.strftime("%y%m%d%H%M%SZ")
        with self.index.open("a") as index:
            index.write(f"V\t{expiry}\t\t{serial}\tunknown\t/CN={host}\n")
        return leaf

    def response(
        self,
        status: ocsp.OCSPCertStatus = ocsp.OCSPCertStatus.GOOD,
        certificate: x509.Certificate | None = None,
        *,
        issuer: x509.Certificate | None = None,
        key: Any = None,
        responder: x509.Certificate | None = None,
        by_name: bool = False,
        this_update: datetime.datetime | None = None,
        next_update: datetime.datetime | None = None,
    ) -> bytes:
        """A DER response about *certificate* (the leaf by default), signed by the CA.

        The rest forge it: the *issuer* its hashes are of, the *key* that
        signs it, the *responder* its responder ID names (carried in it
        unless it is the CA or has its name), its validity.
        """
        revoked = status == ocsp.OCSPCertStatus.REVOKED
        responder = responder or self.ca
        builder = ocsp.OCSPResponseBuilder().add_response(
            cert=certificate or self.leaf, issuer=issuer or self.ca, algorithm=hashes.SHA1(),
            cert_status=status,
            this_update=this_update or NOW - datetime.timedelta(minutes=5),
            next_update=next_update or NOW + datetime.timedelta(days=1),
            revocation_time=NOW - datetime.timedelta(minutes=10) if revoked else None,
            revocation_reason=None,
        ).responder_id(
            ocsp.OCSPResponderEncoding.NAME if by_name else ocsp.OCSPResponderEncoding.HASH,
            responder,
        )
        if responder.subject != self.ca.subject:
            builder = builder.certificates([responder])
        return builder.sign(key or self.ca_key, hashes.SHA256()).public_bytes(
            serialization.Encoding.DER)

    def delegate(self, *, ocsp_signing: bool = True, by: Any = None
                 ) -> tuple[x509.Certificate, Any]:
        """A delegated responder certificate and its key, issued by the CA (or signed by *by*)."""
        key = ec.generate_private_key(ec.SECP256R1())
        usages = [ExtendedKeyUsageOID.OCSP_SIGNING if ocsp_signing
                  else ExtendedKeyUsageOID.SERVER_AUTH]
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "OCSP signer")]))
            .issuer_name(self.ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - datetime.timedelta(hours=1))
            .not_valid_after(NOW + datetime.timedelta(days=20))
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .sign(by or self.ca_key, hashes.SHA256())
        )
        return certificate, key

    def impostor(self) -> tuple[x509.Certificate, Any]:
        """A CA certificate with the CA's name and another key, and that key."""
        key = ec.generate_private_key(ec.SECP256R1())
        return (
            x509.CertificateBuilder().subject_name(self.ca.subject)
            .issuer_name(self.ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - datetime.timedelta(hours=1))
            .not_valid_after(NOW + datetime.timedelta(days=30))
            .sign(key, hashes.SHA256())
        ), key

    def forged(self) -> bytes:
        """A response naming the CA as its responder, signed with another key."""
        impostor, key = self.impostor()
        return self.response(responder=impostor, key=key, by_name=True)


class Responder:
    """An HTTP OCSP responder on loopback answering every POST with :attr:`body`.

    It counts the connections made to it, those still open and the
    requests. With :attr:`dribble` it sends its headers (a 60000-byte
    body announced) and then one byte every 0.1 s until the client goes.
    Call :meth:`stop` when done.
    """

    def __init__(self) -> None:
        self.body = b""
        self.dribble = False
        self.connections = 0
        self.open = 0
        self.requests = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def setup(self) -> None:
                with outer._lock:
                    outer.connections += 1
                    outer.open += 1
                super().setup()

            def finish(self) -> None:
                try:
                    super().finish()
                except OSError:
                    pass
                finally:
                    with outer._lock:
                        outer.open -= 1

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", "0")))
                with outer._lock:
                    outer.requests += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/ocsp-response")
                if not outer.dribble:
                    self.send_header("Content-Length", str(len(outer.body)))
                    self.end_headers()
                    self.wfile.write(outer.body)
                    return
                self.send_header("Content-Length", "60000")
                self.end_headers()
                while not outer._stopping.wait(0.1):
                    try:
                        self.wfile.write(b"0")
                        self.wfile.flush()
                    except OSError:
                        return  # the client went

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._stopping.set()
        self.server.shutdown()
        self.server.server_close()
