"""OCSP stapling: the ``schannel:`` server options ``ocspResponse=FILE`` and ``ocsp=auto``.

In ``twist schannel``, in ``twist web`` (any Twisted program reading
endpoint strings) and in process. ``openssl ocsp`` runs as the responder on
loopback; ``openssl s_client -status`` is the client that asks for the
staple and prints it.
"""

from __future__ import annotations

import datetime
import os
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import FailTest, SynchronousTestCase, TestCase

from tests.peers import Peer, free_port, require
from tests.test_endpoints import ReplyFactory
from tests.test_tap import Twist, assert_one_line, run_twist
from tests.test_workers import wait_listening, workers_started
from txschannel.endpoints import SchannelServerEndpoint
from txschannel.ocsp import Stapler
from txschannel.testing import CertificateAuthority

NOW = datetime.datetime.now(datetime.timezone.utc)


class PKI:
    """A CA and a server certificate for localhost whose AIA names a responder on *port*.

    :meth:`issue` makes more, for an sni folder; the responder's index
    (``openssl ocsp -index``) lists them all.
    """

    def __init__(self, folder: Path, port: int) -> None:
        self.folder = folder
        self.port = port
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
                x509.UniformResourceIdentifier(f"http://127.0.0.1:{self.port}/"))]),
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

    def response(self, status: ocsp.OCSPCertStatus, certificate: x509.Certificate | None = None
                 ) -> bytes:
        """A DER response signed by the CA about *certificate* (the leaf by default)."""
        revoked = status == ocsp.OCSPCertStatus.REVOKED
        builder = ocsp.OCSPResponseBuilder().add_response(
            cert=certificate or self.leaf, issuer=self.ca, algorithm=hashes.SHA1(),
            cert_status=status, this_update=NOW - datetime.timedelta(minutes=5),
            next_update=NOW + datetime.timedelta(days=1),
            revocation_time=NOW - datetime.timedelta(minutes=10) if revoked else None,
            revocation_reason=None,
        ).responder_id(ocsp.OCSPResponderEncoding.HASH, self.ca)
        return builder.sign(self.ca_key, hashes.SHA256()).public_bytes(
            serialization.Encoding.DER)


def staple(port: int, ca: Path, server_name: str = "localhost",
           certificate: x509.Certificate | None = None) -> str:
    """What ``openssl s_client -status`` says about the staple of the server on *port*.

    With *certificate*: "other" when the staple is about another one.
    """
    result = subprocess.run(
        [require("openssl"), "s_client", "-connect", f"127.0.0.1:{port}",
         "-servername", server_name, "-status", "-CAfile", str(ca)],
        input=b"", capture_output=True, timeout=30,
    )
    output = result.stdout.decode(errors="replace")
    if "OCSP response: no response sent" in output:
        return "none"
    if "OCSP Response Status: successful" not in output:
        return "unreadable:\n" + output + result.stderr.decode(errors="replace")
    if certificate is not None:
        serial = f"{certificate.serial_number:X}"
        if f"Serial Number: {'0' * (len(serial) % 2)}{serial}" not in output:
            return "other:\n" + output
    for state in ("good", "revoked", "unknown"):
        if f"Cert Status: {state}" in output:
            return state
    return "no status:\n" + output


class StaplingTests(TestCase):
    def setUp(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="txschannel-ocsp-"))
        self.responder_port = free_port()
        self.pki = PKI(self.folder, self.responder_port)

    def start_responder(self) -> Peer:
        responder = Peer([
            require("openssl"), "ocsp", "-index", str(self.pki.index),
            # (openssl ocsp takes a port only; it is only ever reached on loopback.)
            "-port", str(self.responder_port), "-rsigner", str(self.pki.ca_file),
            "-rkey", str(self.pki.ca_key_file), "-CA", str(self.pki.ca_file), "-ndays", "1",
        ], stdin=subprocess.DEVNULL)
        self.addCleanup(responder.stop)
        # A bare connection (wait_for_port) wedges openssl ocsp: ask it a
        # real question instead, until it answers.
        request = ocsp.OCSPRequestBuilder().add_certificate(
            self.pki.leaf, self.pki.ca, hashes.SHA1()
        ).build().public_bytes(serialization.Encoding.DER)
        deadline = time.monotonic() + 10
        while True:
            try:
                with urllib.request.urlopen(urllib.request.Request(
                    f"http://127.0.0.1:{self.responder_port}/", data=request,
                    headers={"Content-Type": "application/ocsp-request"},
                ), timeout=2) as answer:
                    if answer.status == 200:
                        return responder
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def twist(self, option: str, command: str = "schannel") -> tuple[Twist, int]:
        """``twist COMMAND --listen`` a schannel: endpoint with *option*, listening."""
        port = free_port()
        listen = (
            f"schannel:tcp:{port}:interface=127.0.0.1:certificate={self.pki.server_file}:{option}"
        )
        if command == "web":
            twist = Twist(self, "--listen", listen, "--path", str(self.folder), command="web")
            twist.wait_for(rf"starting on {port}")
        else:
            twist = Twist(self, "--listen", listen)
            twist.wait_for("listening on")
        return twist, port

    def endpoint(self, option: str) -> tuple[SchannelServerEndpoint, Stapler]:
        """A schannel: server endpoint with *option*, from serverFromString, and its stapler."""
        endpoint = serverFromString(
            reactor,
            f"schannel:tcp:0:interface=127.0.0.1:certificate={self.pki.server_file}:{option}",
        )
        assert isinstance(endpoint, SchannelServerEndpoint)
        assert endpoint.stapler is not None
        return endpoint, endpoint.stapler

    def write_response(self, status: ocsp.OCSPCertStatus = ocsp.OCSPCertStatus.GOOD) -> Path:
        response = self.folder / "server.ocsp"
        response.write_bytes(self.pki.response(status))
        return response

    def test_auto_fetches_from_the_responder_and_keeps_it_when_the_responder_fails(self) -> None:
        responder = self.start_responder()
        twist, port = self.twist("ocsp=auto")
        twist.wait_for(
            rf"OCSP \(start\): fetched from http://127\.0\.0\.1:{self.responder_port}/ for "
            r"schannel:tcp:\d+.*: good, this update .*; refreshing in \d+ s"
        )
        self.assertEqual(staple(port, self.pki.ca_file), "good")
        responder.stop()
        mark = len(twist.output)
        twist.send_signal(signal.SIGHUP)
        twist.wait_for(r"OCSP \(SIGHUP\): fetching from .* failed: .*; keeping the last good "
                       r"response \(valid until .*\); retrying in 30 s", start=mark)
        self.assertEqual(staple(port, self.pki.ca_file), "good")

    def test_a_response_file_is_stapled_and_reloaded_with_the_certificates(self) -> None:
        response = self.write_response()
        twist, port = self.twist(f"ocspResponse={response}")
        self.assertEqual(staple(port, self.pki.ca_file), "good")
        # Replaced by renaming, as for certificates; then SIGHUP.
        fresh = self.folder / "fresh.ocsp"
        fresh.write_bytes(self.pki.response(ocsp.OCSPCertStatus.REVOKED))
        os.replace(fresh, response)
        twist.send_signal(signal.SIGHUP)
        twist.wait_for(rf"SIGHUP: stapling {response} for ")
        self.assertEqual(staple(port, self.pki.ca_file), "revoked")
        # A file that no longer fits is logged; the previous response stays.
        response.write_bytes(b"not DER")
        mark = len(twist.output)
        twist.send_signal(signal.SIGHUP)
        twist.wait_for(r"is not a DER OCSP response .*; keeping the previous response",
                       start=mark)
        self.assertEqual(staple(port, self.pki.ca_file), "revoked")

    def test_workers_staple_and_the_next_generation_staples_the_reloaded_file(self) -> None:
        # The supervisor reloads the credentials the next workers serve:
        # they must still take the stapler (an OpenSSL context that made a
        # connection cannot take a new callback).
        response = self.write_response()
        port = free_port()
        twist = Twist(
            self, "--workers", "2", "--listen",
            f"schannel:tcp:{port}:interface=127.0.0.1:certificate={self.pki.server_file}:"
            f"ocspResponse={response}",
            group=True,
        )
        old = workers_started(twist, 2)
        wait_listening(twist, 2)
        self.assertEqual(staple(port, self.pki.ca_file), "good")
        fresh = self.folder / "fresh.ocsp"
        fresh.write_bytes(self.pki.response(ocsp.OCSPCertStatus.REVOKED))
        os.replace(fresh, response)
        twist.send_signal(signal.SIGHUP)
        workers_started(twist, 2, generation=2)
        wait_listening(twist, 4)
        for pid in old:
            twist.wait_for(rf"worker {pid} stopped")
        self.assertEqual(staple(port, self.pki.ca_file), "revoked")

    def test_auto_staples_each_certificate_of_an_sni_folder_and_new_ones_after_a_reload(
        self,
    ) -> None:
        folder = self.folder / "sni"
        folder.mkdir()
        alpha = self.pki.issue("alpha.test", folder / "alpha.test.pem")
        beta = self.pki.issue("beta.test", folder / "beta.test.pem")
        # Indexed now, before the responder reads the index; served after a reload.
        gamma = self.pki.issue("gamma.test", self.folder / "gamma.test.pem")
        self.start_responder()
        twist, port = self.twist(f"sni={folder}:ocsp=auto")
        for host in ("", r" \(alpha\.test\)", r" \(beta\.test\)"):
            twist.wait_for(rf"OCSP \(start\): fetched from \S+ for schannel:\S+{host}: good")
        for name, leaf in (("localhost", self.pki.leaf), ("alpha.test", alpha),
                           ("beta.test", beta), ("unknown.test", self.pki.leaf)):
            self.assertEqual(staple(port, self.pki.ca_file, name, leaf), "good", name)
        os.replace(self.folder / "gamma.test.pem", folder / "gamma.test.pem")
        twist.send_signal(signal.SIGHUP)
        twist.wait_for(r"OCSP \(start\): fetched from \S+ for schannel:\S+ \(gamma\.test\): good")
        self.assertEqual(staple(port, self.pki.ca_file, "gamma.test", gamma), "good")
        self.assertEqual(staple(port, self.pki.ca_file, "alpha.test", alpha), "good")

    def test_twist_web_staples_the_response_file_of_its_listen_string(self) -> None:
        response = self.write_response()
        _, port = self.twist(f"ocspResponse={response}", command="web")
        self.assertEqual(staple(port, self.pki.ca_file), "good")

    def test_twist_web_fetches_with_ocsp_auto(self) -> None:
        self.start_responder()
        twist, port = self.twist("ocsp=auto", command="web")
        twist.wait_for(
            rf"OCSP \(start\): fetched from http://127\.0\.0\.1:{self.responder_port}/ for "
            rf"schannel:tcp:{port}:interface=127\.0\.0\.1:certificate=\S+: good"
        )
        self.assertEqual(staple(port, self.pki.ca_file), "good")

    @inlineCallbacks
    def test_an_endpoint_staples_while_any_of_its_ports_listens(self) -> Any:
        endpoint, stapler = self.endpoint(f"ocspResponse={self.write_response()}")
        self.assertFalse(stapler.running)
        factory = ReplyFactory()
        first = yield endpoint.listen(factory)
        second = yield endpoint.listen(factory)
        self.assertTrue(stapler.running)
        for port in (first, second):
            said = yield deferToThread(staple, port.getHost().port, self.pki.ca_file)
            self.assertEqual(said, "good")
        for protocol in factory.protocols:
            yield protocol.lost
        yield first.stopListening()
        self.assertTrue(stapler.running, "the second port still listens")
        yield second.stopListening()
        self.assertFalse(stapler.running)

    @inlineCallbacks
    def test_an_endpoint_with_ocsp_auto_fetches_and_its_port_stopping_ends_the_refresh(
        self,
    ) -> Any:
        self.start_responder()
        endpoint, stapler = self.endpoint("ocsp=auto")
        factory = ReplyFactory()
        port = yield endpoint.listen(factory)
        deadline = reactor.seconds() + 15
        while not stapler.response:
            if reactor.seconds() > deadline:
                raise FailTest("no OCSP response fetched within 15 s")
            yield deferLater(reactor, 0.05, lambda: None)
        said = yield deferToThread(staple, port.getHost().port, self.pki.ca_file)
        self.assertEqual(said, "good")
        for protocol in factory.protocols:
            yield protocol.lost

        def refreshes() -> list[Any]:
            return [call for call in reactor.getDelayedCalls()
                    if getattr(call.func, "__self__", None) is stapler]

        self.assertEqual(len(refreshes()), 1)
        yield port.stopListening()
        self.assertFalse(stapler.running)
        self.assertEqual(refreshes(), [])


class BadStaplingTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="txschannel-ocsp-"))
        self.pki = PKI(self.folder, free_port())

    def refused(self, listen: str, needle: str) -> None:
        result = run_twist("--listen", listen)
        assert_one_line(self, result, needle)
        self.assertEqual(result.returncode, 64)

    def test_a_response_about_another_certificate(self) -> None:
        (self.folder / "other").mkdir()
        other = PKI(self.folder / "other", 1)
        response = self.folder / "other.ocsp"
        response.write_bytes(other.response(ocsp.OCSPCertStatus.GOOD))
        self.refused(
            f"schannel:tcp:0:certificate={self.pki.server_file}:ocspResponse={response}",
            f"ocspResponse file '{response}' is about serial number",
        )

    def test_forms(self) -> None:
        server = self.pki.server_file
        self.refused(f"schannel:tcp:0:certificate={server}:ocsp=yes", "the only value is auto")
        self.refused("tcp:0:ocsp=auto", "need a schannel: endpoint")
        self.refused(
            f"schannel:tcp:0:certificate={server}:ocsp=auto:ocspResponse={server}",
            "not both",
        )
        self.refused(f"schannel:tcp:0:certificate={server}:ocspResponse=/nonexistent.der",
                     "/nonexistent.der")
        state = tempfile.mkdtemp()
        result = run_twist("--listen", "schannel:tcp:0:ocsp=auto", "--state-dir", state)
        assert_one_line(self, result, "names no OCSP responder")

    def sni_without_responder(self) -> Path:
        """An sni folder whose certificate names no OCSP responder."""
        folder = self.folder / "sni"
        folder.mkdir()
        CertificateAuthority().issue("nohost.test").write(folder / "nohost.test.pem")
        return folder

    def test_the_endpoint_parser_names_the_option(self) -> None:
        server = self.pki.server_file
        for option, needle in [
            ("ocsp=yes", "schannel: ocsp='yes': the only value is auto"),
            (f"ocsp=auto:ocspResponse={server}", "schannel: give ocspResponse=FILE or ocsp=auto"),
            ("ocspResponse=/nonexistent.der", "ocspResponse file '/nonexistent.der'"),
            (f"sni={self.folder}:ocspResponse={server}", "with an sni= folder use ocsp=auto"),
            (f"sni={self.sni_without_responder()}:ocsp=auto",
             "nohost.test.pem' names no OCSP responder"),
        ]:
            with self.assertRaises(ValueError) as caught:
                serverFromString(reactor, f"schannel:tcp:0:certificate={server}:{option}")
            self.assertIn(needle, str(caught.exception))
