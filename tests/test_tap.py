"""``twist schannel`` as a real process: command line, mutual TLS, reload.

Every test runs ``python -m twisted schannel ...`` from the repository
checkout (Twisted finds ``twisted/plugins/txschannel_tap.py`` on sys.path),
with a throw-away HOME and state folder, on loopback, and kills it after.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from twisted.trial.unittest import FailTest, SynchronousTestCase, TestCase

from tests.peers import free_port, require, wait_for_port
from txschannel.tap import AccessPolicy, _has_option, ensure_self_signed
from txschannel.testing import CertificateAuthority

REPO = Path(__file__).resolve().parent.parent


def environment(home: Path) -> dict[str, str]:
    """The environment of a fresh machine: an empty HOME, the checkout importable."""
    env = {k: v for k, v in os.environ.items() if k != "XDG_STATE_HOME"}
    env["HOME"] = str(home)
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    return env


class Twist:
    """One ``twist schannel`` process for a test; its log is read as it grows."""

    def __init__(self, test: TestCase | SynchronousTestCase, *arguments: str,
                 home: Path | None = None, python_wrapper: str | None = None) -> None:
        self.home = home or Path(tempfile.mkdtemp(prefix="txschannel-home-"))
        self.log_path = self.home / "twist.log"
        # python_wrapper: a script that prepares the process (say, lowers a
        # resource limit) and then runs Python with the arguments after it.
        wrapper = [python_wrapper] if python_wrapper else []
        self.argv = [sys.executable, *wrapper, "-m", "twisted", "--log-format=text",
                     "schannel", *arguments]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                env=environment(self.home),
            )
        test.addCleanup(self.stop)

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float = 20.0, start: int = 0) -> re.Match[str]:
        """The first match of *pattern* in the log after offset *start*."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.compile(pattern).search(self.output, start)
            if match:
                return match
            if self.process.poll() is not None:
                match = re.compile(pattern).search(self.output, start)
                if match:
                    return match
                raise FailTest(
                    f"twist exited ({self.process.returncode}) before logging {pattern!r}:\n"
                    + self.output
                )
            time.sleep(0.05)
        raise FailTest(f"twist did not log {pattern!r} within {timeout}s:\n{self.output}")

    def send_signal(self, number: int) -> None:
        self.process.send_signal(number)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)


def run_twist(*arguments: str, home: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``twist schannel`` expecting it to exit by itself (bad command lines)."""
    home = home or Path(tempfile.mkdtemp(prefix="txschannel-home-"))
    return subprocess.run(
        [sys.executable, "-m", "twisted", "--log-format=text", "schannel", *arguments],
        capture_output=True, text=True, timeout=60, cwd=REPO, env=environment(home),
    )


def served_fingerprint(port: int, server_name: str = "localhost") -> str:
    """SHA-256 of the certificate a TLS server on loopback presents."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=server_name) as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha256(der).digest().hex(":").upper()


def curl(*arguments: str, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [require("curl"), "-sS", "--max-time", str(int(timeout)), *arguments],
        capture_output=True, timeout=timeout + 10,
    )


class BadCommandLineTests(SynchronousTestCase):
    """A bad command line exits non-zero with one line that names the problem."""

    def assertOneLine(self, result: subprocess.CompletedProcess[str], needle: str) -> None:
        self.assertNotEqual(result.returncode, 0, result.stderr)
        self.assertNotIn("Traceback", result.stdout + result.stderr)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        self.assertEqual(len(lines), 1, result.stderr)
        self.assertIn(needle, lines[0])
        self.assertTrue(lines[0].startswith("twist schannel: "), lines[0])

    def test_unknown_option(self) -> None:
        self.assertOneLine(run_twist("--bogus"), "bogus")

    def test_unknown_endpoint_type(self) -> None:
        self.assertOneLine(run_twist("--listen", "nosuch:8443"), "--listen 'nosuch:8443'")

    def test_incomplete_endpoint(self) -> None:
        self.assertOneLine(run_twist("--connect", "tcp:127.0.0.1"), "--connect 'tcp:127.0.0.1'")

    def test_unreadable_certificate_is_named(self) -> None:
        result = run_twist("--listen", "schannel:tcp:0:certificate=/nonexistent/server.pem")
        self.assertOneLine(result, "/nonexistent/server.pem")

    def test_unknown_schannel_option_is_named(self) -> None:
        state = tempfile.mkdtemp()
        result = run_twist("--listen", "schannel:tcp:0:certifcate=x.pem", "--state-dir", state)
        self.assertOneLine(result, "certifcate")

    def test_bad_reload_interval(self) -> None:
        self.assertOneLine(run_twist("--reload-interval", "soon"), "--reload-interval")

    def test_allow_cn_without_client_certificates(self) -> None:
        state = tempfile.mkdtemp()
        result = run_twist(
            "--listen", f"schannel:tcp:{free_port()}:interface=127.0.0.1",
            "--state-dir", state, "--allow-cn", "alice",
        )
        self.assertOneLine(result, "clientCA")

    def test_port_in_use_is_one_line(self) -> None:
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            result = run_twist("--listen", f"tcp:{port}:interface=127.0.0.1",
                               "--connect", "tcp:127.0.0.1:9")
        self.assertNotEqual(result.returncode, 0)
        self.assertNotIn("Traceback", result.stdout + result.stderr)
        self.assertIn(f"cannot listen on tcp:{port}:interface=127.0.0.1", result.stderr)


class SelfSignedTests(SynchronousTestCase):
    """The default certificate is made once, kept, and good for localhost."""

    def test_made_once_and_kept(self) -> None:
        folder = Path(tempfile.mkdtemp()) / "state"
        first = ensure_self_signed(folder)
        second = ensure_self_signed(folder)
        self.assertTrue(first.created)
        self.assertFalse(second.created)
        self.assertEqual(first.fingerprint, second.fingerprint)
        self.assertEqual(first.server_file.stat().st_mode & 0o777, 0o600)
        self.assertNotIn(b"PRIVATE KEY", first.certificate_file.read_bytes())

    def test_damaged_file_is_an_error_naming_it(self) -> None:
        folder = Path(tempfile.mkdtemp())
        (folder / "localhost.pem").write_text("not a certificate")
        error = self.assertRaises(ValueError, ensure_self_signed, folder)
        self.assertIn(str(folder / "localhost.pem"), str(error))

    def test_option_detection_ignores_escaped_colons(self) -> None:
        self.assertTrue(_has_option("schannel:tcp:1:certificate=a.pem", "certificate"))
        self.assertFalse(_has_option("schannel:unix:/x\\:certificate=y", "certificate"))


class AccessPolicyTests(SynchronousTestCase):
    """--allow-cn / --allow-san decisions, with the reason for a refusal."""

    def setUp(self) -> None:
        self.ca = CertificateAuthority()

    def test_common_name_admitted(self) -> None:
        alice = self.ca.issue(common_name="alice").certificate
        self.assertIsNone(AccessPolicy(("alice",)).refusal(alice))

    def test_other_common_name_refused_with_reason(self) -> None:
        bob = self.ca.issue(common_name="bob").certificate
        why = AccessPolicy(("alice",)).refusal(bob)
        assert why is not None
        self.assertIn("CN bob", why)
        self.assertIn("--allow-cn alice", why)

    def test_subject_alt_name_admitted(self) -> None:
        service = self.ca.issue("svc.internal", common_name="service").certificate
        self.assertIsNone(AccessPolicy((), ("SVC.internal",)).refusal(service))

    def test_a_subject_with_two_common_names_is_refused_under_allow_cn(self) -> None:
        ca = CertificateAuthority()
        issued = ca.issue(common_name="alice")
        from cryptography import x509 as _x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.x509.oid import NameOID

        subject = _x509.Name([
            _x509.NameAttribute(NameOID.COMMON_NAME, "bob"),
            _x509.NameAttribute(NameOID.COMMON_NAME, "alice"),
        ])
        certificate = (
            _x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issued.certificate.issuer)
            .public_key(issued.private_key.public_key())
            .serial_number(_x509.random_serial_number())
            .not_valid_before(issued.certificate.not_valid_before_utc)
            .not_valid_after(issued.certificate.not_valid_after_utc)
            .sign(issued.private_key, hashes.SHA256())
        )
        refusal = AccessPolicy(common_names=("alice",)).refusal(certificate)
        self.assertIsNotNone(refusal)
        self.assertIn("2 common names (bob, alice)", refusal or "")
        # Without --allow-cn the rule does not apply (SAN rules decide).
        self.assertIn("matches none", AccessPolicy(alt_names=("x",)).refusal(certificate) or "")

    def test_no_certificate_refused(self) -> None:
        why = AccessPolicy(("alice",)).refusal(None)
        assert why is not None
        self.assertIn("no client certificate", why)


class MutualTLSTests(TestCase):
    """--allow-cn admits the named client and refuses another, logging why."""

    def setUp(self) -> None:
        require("curl")
        self.folder = Path(tempfile.mkdtemp(prefix="txschannel-mtls-"))
        ca = CertificateAuthority()
        ca.write(self.folder / "ca.pem")
        ca.issue("localhost", "127.0.0.1").write(self.folder / "server.pem")
        for name in ("alice", "bob"):
            issued = ca.issue(common_name=name)
            issued.write(self.folder / f"{name}.pem")
        self.port = free_port()
        self.twist = Twist(
            self,
            "--listen",
            f"schannel:tcp:{self.port}:interface=127.0.0.1:certificate={self.folder}/server.pem"
            f":clientCA={self.folder}/ca.pem:requireClientCertificate=yes",
            "--allow-cn", "alice",
        )
        self.twist.wait_for("listening on")

    def fetch(self, name: str) -> subprocess.CompletedProcess[bytes]:
        pem = str(self.folder / f"{name}.pem")
        return curl("--cacert", str(self.folder / "ca.pem"), "--cert", pem, "--key", pem,
                    "-H", "Accept: application/json", f"https://localhost:{self.port}/")

    def test_allowed_client_passes(self) -> None:
        result = self.fetch("alice")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn(b'"subject": "CN=alice', result.stdout)
        self.twist.wait_for(r'connection closed .*client="CN=alice,')

    def test_other_client_is_refused_and_logged(self) -> None:
        result = self.fetch("bob")
        self.assertNotEqual(result.returncode, 0)
        self.assertNotIn(b"CN=bob", result.stdout)
        self.twist.wait_for(
            r"refused 127\.0\.0\.1:\d+: client certificate CN=bob.*--allow-cn alice"
        )
        self.twist.wait_for(r'connection closed .*client="CN=bob,.*reason="refused: ')


    def test_client_without_certificate_fails_the_handshake_and_is_logged(self) -> None:
        result = curl("--cacert", str(self.folder / "ca.pem"), f"https://localhost:{self.port}/")
        self.assertNotEqual(result.returncode, 0)
        self.twist.wait_for(r'connection closed .*client=- .*reason="TLS error NO_CREDENTIALS: ')


class ReloadTests(TestCase):
    """SIGHUP re-reads certificate files; a bad file keeps the old certificate."""

    def setUp(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="txschannel-reload-"))
        self.ca = CertificateAuthority()
        self.certificate = self.folder / "server.pem"
        self.ca.issue("localhost").write(self.certificate)
        self.port = free_port()

    def start(self, *extra: str) -> Twist:
        twist = Twist(
            self, "--listen",
            f"schannel:tcp:{self.port}:interface=127.0.0.1:certificate={self.certificate}",
            *extra,
        )
        twist.wait_for("listening on")
        wait_for_port(self.port)
        return twist

    def replace(self, data: bytes) -> None:
        # Write beside and rename, as deployment tools do, so that no reload
        # ever sees half a file.
        temporary = self.folder / "server.pem.new"
        temporary.write_bytes(data)
        temporary.replace(self.certificate)

    def test_sighup_serves_the_new_certificate_and_keeps_it_over_a_bad_one(self) -> None:
        twist = self.start()
        old = served_fingerprint(self.port)
        self.replace(self.ca.issue("localhost").pem)
        mark = len(twist.output)
        twist.send_signal(signal.SIGHUP)
        reloaded = twist.wait_for(r"SIGHUP: reloaded .*certificate sha256 ([0-9A-F:]+)", start=mark)
        new = served_fingerprint(self.port)
        self.assertNotEqual(new, old)
        self.assertEqual(reloaded.group(1), new)

        self.replace(b"-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n")
        mark = len(twist.output)
        twist.send_signal(signal.SIGHUP)
        twist.wait_for(r"SIGHUP: reloading .* failed, keeping the old certificate", start=mark)
        self.assertEqual(served_fingerprint(self.port), new)
        self.assertIsNone(twist.process.poll())

    def test_reload_interval_picks_up_a_new_certificate(self) -> None:
        twist = self.start("--reload-interval", "0.2")
        old = served_fingerprint(self.port)
        self.replace(self.ca.issue("localhost").pem)
        changed = twist.wait_for(r"--reload-interval: reloaded .*certificate sha256 ([0-9A-F:]+)")
        self.assertNotEqual(changed.group(1), old)
        self.assertEqual(served_fingerprint(self.port), changed.group(1))


class PortZeroTests(TestCase):
    """With port 0 the log says which port was given."""

    def test_listening_line_names_the_real_port(self) -> None:
        home = Path(tempfile.mkdtemp(prefix="txschannel-zero-"))
        twist = Twist(self, "--listen", "schannel:tcp:0:interface=127.0.0.1",
                      "--state-dir", str(home / "state"), home=home)
        port = int(twist.wait_for(r"listening on schannel:tcp:0:\S+ at 127\.0\.0\.1:(\d+)")
                   .group(1))
        self.assertNotEqual(port, 0)
        self.assertEqual(len(served_fingerprint(port)), 95)


class SeveralListenersTests(TestCase):
    """--listen repeats: every endpoint accepts, plain and TLS side by side."""

    def test_two_listeners_serve_the_same_inspector(self) -> None:
        require("curl")
        home = Path(tempfile.mkdtemp(prefix="txschannel-two-"))
        tls, plain = free_port(), free_port()
        twist = Twist(
            self, "-l", f"schannel:tcp:{tls}:interface=127.0.0.1",
            "--listen", f"tcp:{plain}:interface=127.0.0.1",
            "--state-dir", str(home / "state"), home=home,
        )
        twist.wait_for(f"listening on tcp:{plain}")
        twist.wait_for(f"listening on schannel:tcp:{tls}")
        secure = curl("--cacert", str(home / "state/localhost.crt"),
                      f"https://localhost:{tls}/?format=json")
        self.assertIn(b'"tls": true', secure.stdout)
        clear = curl(f"http://127.0.0.1:{plain}/?format=json")
        self.assertIn(b'"tls": false', clear.stdout)
