"""``python -m txschannel probe`` against a real ``openssl s_server``."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import trustme
from twisted.trial.unittest import TestCase

from tests.support.certs import encrypted_pem
from tests.support.peers import Peer, free_port, require, wait_for_port
from tests.support.probe import run_probe
from tests.support.twist import Twist
from txschannel.testing import CertificateAuthority

REPO = Path(__file__).resolve().parent.parent


class ProbeAgainstOpenSSLTests(TestCase):
    """The probe shakes hands with ``openssl s_server`` and prints the ladder."""

    def setUp(self) -> None:
        require("openssl")
        self.folder = Path(tempfile.mkdtemp(prefix="txschannel-probe-"))
        ca = trustme.CA()
        ca.cert_pem.write_to_path(str(self.folder / "ca.pem"))
        leaf = ca.issue_cert("localhost", "127.0.0.1")
        leaf.cert_chain_pems[0].write_to_path(str(self.folder / "cert.pem"))
        leaf.private_key_pem.write_to_path(str(self.folder / "key.pem"))
        self.port = free_port()
        self.server = Peer(
            [
                "openssl", "s_server", "-quiet",
                "-accept", f"127.0.0.1:{self.port}",
                "-cert", str(self.folder / "cert.pem"),
                "-key", str(self.folder / "key.pem"),
                "-alpn", "h2,http/1.1",
            ]
        )
        self.addCleanup(self.server.stop)
        wait_for_port(self.port)

    def test_probe_prints_the_ladder_the_parameters_and_the_chain(self) -> None:
        result = run_probe(
            f"127.0.0.1:{self.port}",
            "--servername", "localhost",
            "--cacert", str(self.folder / "ca.pem"),
            "--alpn", "http/1.1",
        )
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        out = result.stdout
        # The first call takes no input and returns the ClientHello; the
        # last one returns OK. That is the seed's picture.
        self.assertRegex(out, r"initialize #1\s+CONTINUE_NEEDED \(0x00090312\)\s+0\s+[1-9]\d*")
        self.assertRegex(out, r"initialize #\d+\s+OK \(0x00000000\)\s+[1-9]\d*\s+\d+")
        self.assertIn("protocol:           TLSv1.3", out)
        self.assertIn("ALPN:               http/1.1", out)
        self.assertIn("server name:        localhost", out)
        self.assertIn("certificate chain (1 sent by the server)", out)
        self.assertIn("issuer:  OU=Testing CA", out)
        self.assertEqual(result.stderr, "")

    def test_wrong_server_name_exits_non_zero_with_wrong_principal(self) -> None:
        result = run_probe(
            f"127.0.0.1:{self.port}",
            "--servername", "wrong.example",
            "--cacert", str(self.folder / "ca.pem"),
        )
        self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
        self.assertRegex(result.stdout, r"initialize #\d+\s+WRONG_PRINCIPAL \(0x80090322\)")
        self.assertIn("error: WRONG_PRINCIPAL (0x80090322)", result.stderr)
        self.assertIn("wrong.example", result.stderr)

    def test_unknown_issuer_exits_non_zero_with_untrusted_root(self) -> None:
        other = trustme.CA()
        other.cert_pem.write_to_path(str(self.folder / "other-ca.pem"))
        result = run_probe(
            f"127.0.0.1:{self.port}",
            "--servername", "localhost",
            "--cacert", str(self.folder / "other-ca.pem"),
        )
        self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
        self.assertIn("error: UNTRUSTED_ROOT", result.stderr)


class ProbeCommandLineTests(TestCase):
    """Bad command lines and unreachable servers: one line, no traceback."""

    def assertOneLineError(self, result: subprocess.CompletedProcess[str], code: int,
                           needle: str) -> None:
        self.assertEqual(result.returncode, code, result.stdout + result.stderr)
        lines = result.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, result.stderr)
        self.assertIn(needle, lines[0])
        self.assertNotIn("Traceback", result.stderr + result.stdout)

    def test_address_without_port_is_a_usage_error(self) -> None:
        self.assertOneLineError(run_probe("localhost"), 2, "expected HOST:PORT")

    def test_unknown_option_is_a_usage_error(self) -> None:
        self.assertOneLineError(run_probe("localhost:443", "--bogus"), 2, "--bogus")

    def test_missing_trust_roots_file_is_named(self) -> None:
        self.assertOneLineError(
            run_probe("localhost:443", "--cacert", "/nonexistent/ca.pem"), 2, "/nonexistent/ca.pem"
        )

    def test_refused_connection_exits_3(self) -> None:
        port = free_port()
        self.assertOneLineError(run_probe(f"127.0.0.1:{port}"), 3, "Connection refused")


class ClientCertificateFiles:
    """A CA, a server certificate, alice's (from the CA) and mallory's (from another)."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="txschannel-probe-mtls-"))
        ca = CertificateAuthority()
        self.ca = str(ca.write(self.folder / "ca.pem"))
        server = ca.issue("localhost", "127.0.0.1")
        self.server = str(server.write(self.folder / "server.pem"))
        self.server_certificate = self.folder / "server-cert.pem"
        self.server_certificate.write_bytes(server.certificate_pem)
        self.server_key = self.folder / "server-key.pem"
        self.server_key.write_bytes(server.private_key_pem)
        alice = ca.issue(common_name="alice")
        self.alice = str(alice.write(self.folder / "alice.pem"))
        self.alice_encrypted = self.folder / "alice-encrypted.pem"
        self.alice_encrypted.write_bytes(encrypted_pem(alice, b"alice's secret"))
        self.alice_passphrase = self.folder / "alice.pass"
        self.alice_passphrase.write_bytes(b"alice's secret\n")
        self.mallory = str(CertificateAuthority().issue(common_name="mallory")
                           .write(self.folder / "mallory.pem"))


class ProbeClientCertificateTests(TestCase):
    """Against ``openssl s_server -Verify 1``, which requires a client
    certificate: TLS 1.3 refuses after the client's Finished, and the probe
    reads that answer before it reports."""

    def setUp(self) -> None:
        require("openssl")
        self.files = ClientCertificateFiles()

    def start(self, *extra: str) -> int:
        port = free_port()
        server = Peer(
            [
                "openssl", "s_server", "-quiet", "-accept", f"127.0.0.1:{port}",
                "-cert", str(self.files.server_certificate),
                "-key", str(self.files.server_key),
                "-CAfile", self.files.ca, "-Verify", "1", "-verify_return_error", *extra,
            ]
        )  # fmt: skip
        self.addCleanup(server.stop)
        wait_for_port(port)
        return port

    def probe(self, port: int, *arguments: str) -> subprocess.CompletedProcess[str]:
        return run_probe(f"127.0.0.1:{port}", "--servername", "localhost",
                         "--cacert", self.files.ca, *arguments)

    def test_without_a_certificate_the_refusal_after_the_handshake_is_reported(self) -> None:
        result = self.probe(self.start())
        self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
        self.assertRegex(result.stdout, r"initialize #\d+\s+OK \(0x00000000\)")
        self.assertRegex(result.stdout, r"decrypt #1\s+NO_CREDENTIALS \(0x8009030E\)")
        self.assertIn("protocol:           TLSv1.3", result.stdout)
        self.assertIn("error: NO_CREDENTIALS (0x8009030E) after the handshake: ", result.stderr)
        self.assertIn("certificate required", result.stderr)

    def test_with_a_trusted_certificate_the_server_accepts(self) -> None:
        result = self.probe(self.start(), "--certificate", self.files.alice)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn(f"client certificate {self.files.alice}", result.stdout)
        self.assertIn("server's answer:    a session ticket (the server accepted the client)",
                      result.stdout)
        self.assertEqual(result.stderr, "")

    def test_with_an_encrypted_key_and_its_passphrase_file(self) -> None:
        result = self.probe(self.start(), "--certificate", str(self.files.alice_encrypted),
                            "--passphrase-file", str(self.files.alice_passphrase))
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("the server accepted the client", result.stdout)

    def test_with_a_certificate_from_another_ca_the_refusal_is_reported(self) -> None:
        result = self.probe(self.start(), "--certificate", self.files.mallory)
        self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
        self.assertIn("error: UNTRUSTED_ROOT (0x80090325) after the handshake", result.stderr)

    def test_tls12_refuses_during_the_handshake(self) -> None:
        result = self.probe(self.start("-tls1_2"))
        self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
        self.assertNotIn("decrypt #", result.stdout)
        self.assertIn("error: NO_CREDENTIALS (0x8009030E): ", result.stderr)


class ProbeAgainstTwistTests(TestCase):
    """Against txschannel's own server, ``twist schannel`` requiring a client certificate."""

    def setUp(self) -> None:
        self.files = ClientCertificateFiles()
        self.port = free_port()
        twist = Twist(
            self, "--listen",
            f"schannel:tcp:{self.port}:interface=127.0.0.1:certificate={self.files.server}"
            f":clientCA={self.files.ca}:requireClientCertificate=yes",
        )  # fmt: skip
        twist.wait_for("listening on")
        wait_for_port(self.port)

    def probe(self, *arguments: str) -> subprocess.CompletedProcess[str]:
        return run_probe(f"127.0.0.1:{self.port}", "--servername", "localhost",
                         "--cacert", self.files.ca, *arguments)

    def test_refused_without_a_certificate(self) -> None:
        result = self.probe()
        self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
        self.assertIn("error: NO_CREDENTIALS (0x8009030E) after the handshake", result.stderr)

    def test_refused_with_a_certificate_from_another_ca(self) -> None:
        result = self.probe("--certificate", self.files.mallory)
        self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
        self.assertIn("error: UNTRUSTED_ROOT (0x80090325) after the handshake", result.stderr)

    def test_accepted_with_a_trusted_certificate(self) -> None:
        result = self.probe("--certificate", self.files.alice, "--alpn", "http/1.1")
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("the server accepted the client", result.stdout)


class ProbeClientCertificateUsageTests(TestCase):
    """Mistakes with --certificate, --private-key and --passphrase-file: one line, status 2."""

    def setUp(self) -> None:
        self.files = ClientCertificateFiles()

    def assertUsage(self, result: subprocess.CompletedProcess[str], needle: str) -> None:
        self.assertEqual(result.returncode, 2, result.stdout + result.stderr)
        lines = result.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, result.stderr)
        self.assertIn(needle, lines[0])
        self.assertNotIn("Traceback", result.stderr + result.stdout)

    def test_private_key_needs_a_certificate(self) -> None:
        self.assertUsage(run_probe("localhost:443", "--private-key", self.files.alice),
                         "--private-key needs --certificate FILE")

    def test_missing_certificate_file_is_named(self) -> None:
        self.assertUsage(run_probe("localhost:443", "--certificate", "/nonexistent/alice.pem"),
                         "/nonexistent/alice.pem")

    def test_wrong_passphrase_names_the_key_file_not_the_passphrase(self) -> None:
        wrong = self.files.folder / "wrong.pass"
        wrong.write_text("guess-again\n")
        result = run_probe("localhost:443", "--certificate", str(self.files.alice_encrypted),
                           "--passphrase-file", str(wrong))
        self.assertUsage(result, f"{str(self.files.alice_encrypted)!r}")
        self.assertIn("does not decrypt", result.stderr)
        self.assertNotIn("guess-again", result.stderr)

    def test_encrypted_key_without_passphrase(self) -> None:
        self.assertUsage(
            run_probe("localhost:443", "--certificate", str(self.files.alice_encrypted)),
            "is encrypted and no passphrase was given",
        )
