"""``python -m txschannel probe`` against a real ``openssl s_server``."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import trustme
from twisted.trial.unittest import TestCase

from tests.peers import Peer, free_port, require, wait_for_port

REPO = Path(__file__).resolve().parent.parent


def run_probe(*arguments: str) -> subprocess.CompletedProcess[str]:
    """Run the probe as a user would, from the repository checkout."""
    path = f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    environment = {**os.environ, "PYTHONPATH": path}
    return subprocess.run(
        [sys.executable, "-m", "txschannel", "probe", *arguments],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
        env=environment,
    )


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
