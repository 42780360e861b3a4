"""What ``twist schannel`` and ``python -m txschannel`` say on their own
command lines: ``--version``, ``--help`` and the wording of mistakes."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import cryptography
import OpenSSL
from OpenSSL import SSL
from twisted.internet import reactor
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.trial.unittest import SynchronousTestCase

import txschannel
from tests.support.twist import REPO, assert_one_line, environment, run_twist
from txschannel.testing import CertificateAuthority

# What Python says when Twisted's parsers fail inside: never for a user.
PYTHON_WORDS = ("int()", "__init__", "positional argument", "_parse", "keyword argument")


class VersionTests(SynchronousTestCase):
    """``twist schannel --version`` names every version a bug report needs."""

    def test_version_names_txschannel_pyopenssl_cryptography_and_openssl(self) -> None:
        result = run_twist("--version")
        self.assertEqual(result.returncode, 0, result.stderr)
        lines = result.stdout.splitlines()
        self.assertEqual(lines[0], f"txschannel {txschannel.__version__}")
        self.assertIn(f"pyOpenSSL {OpenSSL.__version__}", lines)
        self.assertTrue(
            any(line.startswith(f"cryptography {cryptography.__version__}") for line in lines),
            lines,
        )
        self.assertIn(SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode(), lines)
        self.assertTrue(any(re.fullmatch(r"Twisted \d+\.\d+\.\d+\S*", line) for line in lines))


class EndpointErrorWordingTests(SynchronousTestCase):
    """A mistake in an endpoint string is said in the words of endpoint strings."""

    def assertWorded(self, arguments: list[str], needle: str) -> None:
        result = run_twist(*arguments)
        assert_one_line(self, result, needle)
        for words in PYTHON_WORDS:
            self.assertNotIn(words, result.stderr)

    def test_port_that_is_not_a_number(self) -> None:
        self.assertWorded(
            ["--listen", "schannel:tcp:abc:certificate=x.pem"],
            "the inner endpoint 'tcp:abc' is not valid: port 'abc' is not a whole number",
        )
        self.assertWorded(
            ["--listen", "tcp:abc", "--connect", "tcp:127.0.0.1:1"],
            "--listen 'tcp:abc': port 'abc' is not a whole number",
        )
        self.assertWorded(
            ["--connect", "tcp:127.0.0.1:abc"],
            "--connect 'tcp:127.0.0.1:abc': port 'abc' is not a whole number",
        )
        self.assertWorded(["--status", "tcp:abc"], "--status 'tcp:abc': port 'abc' is not")

    def test_other_numbers(self) -> None:
        self.assertWorded(
            ["--listen", "tcp:0:backlog=many", "--connect", "tcp:127.0.0.1:1"],
            "backlog 'many' is not a whole number",
        )
        self.assertWorded(
            ["--listen", "unix:/tmp/x.sock:mode=rw", "--connect", "tcp:127.0.0.1:1"],
            "mode 'rw' is not an octal number",
        )

    def test_schannel_prefix_alone(self) -> None:
        self.assertWorded(["--listen", "schannel:"], "schannel: no inner endpoint after the prefix")

    def test_connect_without_a_port_says_it_needs_one(self) -> None:
        self.assertWorded(
            ["--connect", "tcp:127.0.0.1"], "--connect 'tcp:127.0.0.1': incomplete: it needs 'port'"
        )

    def test_unknown_option_of_a_plain_endpoint(self) -> None:
        self.assertWorded(
            ["--listen", "tcp:0:bogus=1", "--connect", "tcp:127.0.0.1:1"],
            "unknown option 'bogus' (a tcp: endpoint takes port, interface, backlog)",
        )

    def test_status_port_in_use_is_named_with_workers(self) -> None:
        taken = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(taken.close)
        port = taken.getsockname()[1]
        for workers in ("1", "2"):
            result = run_twist(
                "--workers", workers, "--listen", "tcp:0:interface=127.0.0.1",
                "--connect", "tcp:127.0.0.1:1", "--status", f"tcp:{port}:interface=127.0.0.1",
            )  # fmt: skip
            self.assertEqual(result.returncode, 1, result.stderr)
            self.assertIn(f"cannot listen on --status tcp:{port}", result.stderr)

    def test_library_parsers_word_it_the_same(self) -> None:
        folder = Path(tempfile.mkdtemp())
        pem = CertificateAuthority().issue("localhost").write(folder / "server.pem")
        with self.assertRaises(ValueError) as caught:
            serverFromString(reactor, f"schannel:tcp:abc:certificate={pem}")
        self.assertIn("port 'abc' is not a whole number", str(caught.exception))
        with self.assertRaises(ValueError) as caught:
            clientFromString(reactor, "schannel:tcp:localhost:port=x")
        self.assertIn("port 'x' is not a whole number", str(caught.exception))


class HelpTests(SynchronousTestCase):
    """``--help`` texts say what is true, in plain text."""

    def test_python_m_txschannel_help_has_no_rest_quoting(self) -> None:
        result = subprocess.run(
            [sys.executable, "-m", "txschannel", "--help"],
            capture_output=True, text=True, timeout=60, cwd=REPO, env=environment(REPO),
        )  # fmt: skip
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("python -m txschannel: command-line tools", result.stdout)
        self.assertNotIn("``", result.stdout)

    def test_twist_schannel_help_says_the_default_listener_is_local(self) -> None:
        result = run_twist("--help")
        text = " ".join(result.stdout.split())
        self.assertIn("Without --listen, listen on schannel:tcp:8443:interface=127.0.0.1", text)
        self.assertIn("default: schannel:tcp:8443 on 127.0.0.1", text)


    def test_twist_schannel_help_gives_the_status_listeners_real_bounds(self) -> None:
        # The status listener aborts a connection that has not sent a whole
        # request within 5 s (limits.STATUS_REQUEST_TIMEOUT), which always
        # comes before its 10 s idle timeout: the help once gave only that.
        result = run_twist("--help")
        text = " ".join(result.stdout.split())
        self.assertIn("at most 64 connections, each aborted when it has not sent a whole "
                      "request within 5 s of its accept or of its previous answer", text)
        self.assertNotIn("s idle", text)
        self.assertIn("--idle-timeout", text)
        self.assertIn("not the --status listener's", text)


class ContinuousIntegrationTests(SynchronousTestCase):
    """``.ci/run`` logs the README's test command as a reader would type it."""

    def test_test_command_is_logged_without_the_markdown_indent(self) -> None:
        script = (REPO / ".ci" / "run").read_text()
        (line,) = [line for line in script.splitlines() if line.startswith("test_command=")]
        result = subprocess.run(
            ["bash", "-c", f'{line}\necho "ci: $test_command"'],
            capture_output=True, text=True, timeout=60, cwd=REPO,
        )  # fmt: skip
        self.assertRegex(result.stdout, r"^ci: python3 -m venv \S")


class ReadmeTests(SynchronousTestCase):
    """The README explains what its test command prints before ``PASSED``."""

    def test_expected_failures_are_explained_with_their_number(self) -> None:
        from tests.support.twisted_suite import KNOWN_DIFFERENCES

        readme = " ".join((REPO / "README.md").read_text().split())
        self.assertIn(
            f"the {len(KNOWN_DIFFERENCES)} `[TODO]` tracebacks just above it are expected",
            readme,
        )


class DamagedFileWordingTests(SynchronousTestCase):
    """A damaged PEM file is described, not answered with cryptography's parser dump."""

    def setUp(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="txschannel-damaged-"))
        self.issued = CertificateAuthority().issue("localhost")

    def refused(self, certificate: bytes, key: bytes | None = None) -> str:
        path = self.folder / "server.pem"
        path.write_bytes(certificate)
        description = f"schannel:tcp:0:certificate={path}"
        if key is not None:
            (self.folder / "key.pem").write_bytes(key)
            description += f":privateKey={self.folder / 'key.pem'}"
        with self.assertRaises(ValueError) as caught:
            serverFromString(reactor, description)
        message = str(caught.exception)
        for words in ("ParseError", "Tag {", "InvalidData", "Could not deserialize"):
            self.assertNotIn(words, message)
        return message

    def test_cut_short_certificate(self) -> None:
        lines = self.issued.certificate_pem.splitlines()
        cut = b"\n".join([*lines[:3], lines[-1]]) + b"\n"
        self.assertRegex(
            self.refused(cut), r"a certificate in it is damaged: it is cut short \(\d+ bytes of"
        )

    def test_corrupted_base64(self) -> None:
        lines = self.issued.certificate_pem.splitlines()
        lines[2] = b"!" + lines[2][1:]
        message = self.refused(b"\n".join(lines) + b"\n")
        self.assertIn("its base64 text is corrupted", message)

    def test_damaged_private_key(self) -> None:
        key = b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
        message = self.refused(self.issued.certificate_pem, key)
        self.assertIn("the private key in it is damaged: its contents are not DER", message)
