"""``twist schannel`` as a real process: command line, mutual TLS, reload.

Every test runs ``python -m twisted schannel ...`` from the repository
checkout (Twisted finds ``twisted/plugins/txschannel_tap.py`` on sys.path),
with a throw-away HOME and state folder, on loopback, and kills it after.
"""

from __future__ import annotations

import datetime
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase
from zope.interface import implementer

from tests.support.certs import encrypted_pem
from tests.support.peers import free_port, require, wait_for_port
from tests.support.twist import (
    Twist,
    assert_one_line,
    curl,
    run_twist,
    served_fingerprint,
)
from txschannel import Credentials
from txschannel.terminator.access import AccessPolicy
from txschannel.terminator.options import Options, _has_option
from txschannel.terminator.selfsigned import ensure_self_signed
from txschannel.terminator.service import SchannelService
from txschannel.testing import CertificateAuthority


class BadCommandLineTests(SynchronousTestCase):
    """A bad command line exits non-zero with one line that names the problem."""

    def assertOneLine(self, result: subprocess.CompletedProcess[str], needle: str) -> None:
        assert_one_line(self, result, needle)

    def test_unknown_option(self) -> None:
        self.assertOneLine(run_twist("--bogus"), "bogus")

    def test_unknown_endpoint_type(self) -> None:
        self.assertOneLine(run_twist("--listen", "nosuch:8443"), "--listen 'nosuch:8443'")

    def test_incomplete_endpoint(self) -> None:
        self.assertOneLine(run_twist("--connect", "tcp:127.0.0.1"), "--connect 'tcp:127.0.0.1'")

    def test_unreadable_certificate_is_named(self) -> None:
        result = run_twist("--listen", "schannel:tcp:0:certificate=/nonexistent/server.pem")
        self.assertOneLine(result, "/nonexistent/server.pem")

    def test_two_connects_are_refused(self) -> None:
        # Not the last one silently: a backend the operator named would be dropped.
        result = run_twist("--connect", "tcp:127.0.0.1:8080", "-c", "tcp:127.0.0.1:8081")
        self.assertOneLine(
            result,
            "--connect 'tcp:127.0.0.1:8081': --connect 'tcp:127.0.0.1:8080' was given already",
        )
        self.assertEqual(result.returncode, 64)

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
        (folder / "localhost.pem").chmod(0o600)
        error = self.assertRaises(ValueError, ensure_self_signed, folder)
        self.assertIn(str(folder / "localhost.pem"), str(error))
        self.assertIn("cannot be read", str(error))

    def _refused_without_hanging(self, folder: Path) -> str:
        """ensure_self_signed(*folder*) raises within 10 s; its message."""

        def hung(number: int, frame: object) -> None:
            raise AssertionError("ensure_self_signed hung on the planted file")

        previous = signal.signal(signal.SIGALRM, hung)
        signal.alarm(10)
        try:
            error = self.assertRaises(ValueError, ensure_self_signed, folder)
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)
        self.assertIn(str(folder / "localhost.pem"), str(error))
        return str(error)

    def test_a_named_pipe_in_place_of_the_key_is_refused_not_waited_on(self) -> None:
        folder = Path(tempfile.mkdtemp())
        os.mkfifo(folder / "localhost.pem", 0o600)
        self.assertIn("not a regular file", self._refused_without_hanging(folder))

    def test_a_link_to_a_device_in_place_of_the_key_is_refused_not_read(self) -> None:
        folder = Path(tempfile.mkdtemp())
        (folder / "localhost.pem").symlink_to("/dev/zero")
        self.assertIn("symbolic link", self._refused_without_hanging(folder))

    def test_an_oversized_kept_file_is_refused(self) -> None:
        folder = Path(tempfile.mkdtemp())
        with open(folder / "localhost.pem", "wb") as handle:
            handle.truncate(10 * 1024 * 1024)
        (folder / "localhost.pem").chmod(0o600)
        self.assertIn("larger than", self._refused_without_hanging(folder))

    def test_the_certificate_to_trust_is_the_one_served(self) -> None:
        folder = Path(tempfile.mkdtemp()) / "state"
        first = ensure_self_signed(folder)
        other = ensure_self_signed(Path(tempfile.mkdtemp()) / "other")
        shutil.copyfile(other.certificate_file, first.certificate_file)
        again = ensure_self_signed(folder)
        served = x509.load_pem_x509_certificate(again.server_file.read_bytes())
        self.assertEqual(
            again.certificate_file.read_bytes(),
            served.public_bytes(serialization.Encoding.PEM),
        )

    def test_option_detection_ignores_escaped_colons(self) -> None:
        self.assertTrue(_has_option("schannel:tcp:1:certificate=a.pem", "certificate"))
        self.assertFalse(_has_option("schannel:unix:/x\\:certificate=y", "certificate"))


class KeptKeyPermissionTests(SynchronousTestCase):
    """A kept key others could read or replace is refused, as ssh refuses one."""

    def setUp(self) -> None:
        self.folder = Path(tempfile.mkdtemp()) / "state"
        self.kept = ensure_self_signed(self.folder)

    def assertRefused(self, needle: str) -> None:
        error = self.assertRaises(ValueError, ensure_self_signed, self.folder)
        self.assertIn(needle, str(error))

    def test_a_world_readable_key_in_a_world_writable_folder(self) -> None:
        self.folder.chmod(0o777)
        self.kept.server_file.chmod(0o666)
        self.assertRefused(
            f"the kept private key '{self.kept.server_file}' is open to other users "
            f"(mode 0666): chmod 600 {self.kept.server_file}"
        )

    def test_a_group_readable_key(self) -> None:
        self.kept.server_file.chmod(0o640)
        self.assertRefused("(mode 0640): chmod 600")

    def test_a_folder_others_can_write(self) -> None:
        self.folder.chmod(0o777)
        self.assertRefused(
            f"the state folder '{self.folder}' can be written by other users (mode 0777): "
            f"chmod 700 {self.folder}"
        )

    def test_a_sticky_shared_folder_is_accepted(self) -> None:
        # As /tmp: others may add files there but not replace ours.
        self.folder.chmod(0o1777)
        self.assertEqual(ensure_self_signed(self.folder).fingerprint, self.kept.fingerprint)

    def test_a_key_that_belongs_to_another_user(self) -> None:
        if os.geteuid() != 0:
            raise SkipTest("needs root to give the file away")
        os.chown(self.kept.server_file, 65534, -1)
        self.assertRefused("belongs to another user (uid 65534): remove it")

    def test_twist_schannel_refuses_it_in_one_line(self) -> None:
        self.kept.server_file.chmod(0o644)
        result = run_twist("--state-dir", str(self.folder), "--listen",
                           f"schannel:tcp:{free_port()}:interface=127.0.0.1")
        assert_one_line(self, result, f"'{self.kept.server_file}' is open to other users "
                                      f"(mode 0644): chmod 600 {self.kept.server_file}")
        self.assertEqual(result.returncode, 64)


class ReadableKeyWarningTests(TestCase):
    """A key file given in an endpoint string that any user can read is logged, once."""

    def setUp(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="txschannel-keymode-"))
        self.folder.chmod(0o755)  # others can reach the files in it
        self.issued = CertificateAuthority().issue("localhost")

    def start(self, endpoint: str) -> Twist:
        port = free_port()
        twist = Twist(self, "--listen",
                      f"schannel:tcp:{port}:interface=127.0.0.1:{endpoint}",
                      "--reload-interval", "0.2")
        twist.wait_for("listening on")
        served_fingerprint(port)
        return twist

    def warning(self, path: Path, mode: str) -> str:
        return (f"[txschannel#warn] the private key in '{path}' can be read by any user of "
                f"this machine (mode {mode}): chmod 600 {path} (or 640 if a group must read it)")

    def test_a_world_readable_combined_file_is_named_once(self) -> None:
        combined = self.issued.write(self.folder / "server.pem")
        combined.chmod(0o644)
        twist = self.start(f"certificate={combined}")
        time.sleep(1.0)  # some timer reloads: still one line
        self.assertEqual(twist.output.count(self.warning(combined, "0644")), 1, twist.output)

    def test_a_world_readable_private_key_file_is_named(self) -> None:
        certificate = self.folder / "server.crt"
        certificate.write_bytes(self.issued.certificate_pem)  # 0644: no secret in it
        key = self.folder / "server.key"
        key.write_bytes(self.issued.private_key_pem)
        key.chmod(0o604)
        twist = self.start(f"certificate={certificate}:privateKey={key}")
        self.assertIn(self.warning(key, "0604"), twist.output)
        self.assertNotIn(f"'{certificate}' can be read", twist.output)

    def test_a_private_or_group_readable_key_says_nothing(self) -> None:
        key = self.issued.write(self.folder / "server.pem")
        key.chmod(0o640)
        twist = self.start(f"certificate={key}")
        self.assertNotIn("can be read by any user", twist.output)


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


# -- named certificates, --allow-* forms, validity warnings, passphraseFile ----------


def fingerprint_of(certificate: x509.Certificate) -> str:
    return certificate.fingerprint(hashes.SHA256()).hex(":").upper()


class NamedCertificateTests(TestCase):
    """An endpoint that names its certificates never gets the self-signed one."""

    def setUp(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="txschannel-named-"))
        self.ca = CertificateAuthority()
        self.port = free_port()

    def test_an_sni_folder_with_only_txsni_default_pem_serves_it(self) -> None:
        default = self.ca.issue("localhost", common_name="the default")
        (self.folder / "sni").mkdir()
        default.write(self.folder / "sni" / "DEFAULT.pem")
        twist = Twist(self, "--listen",
                      f"schannel:tcp:{self.port}:interface=127.0.0.1:sni={self.folder}/sni",
                      "--state-dir", str(self.folder / "state"))
        twist.wait_for("listening on")
        self.assertEqual(served_fingerprint(self.port, "unknown.example"),
                         fingerprint_of(default.certificate))
        self.assertEqual(served_fingerprint(self.port), fingerprint_of(default.certificate))
        self.assertNotIn("self-signed", twist.output)
        self.assertFalse((self.folder / "state").exists())

    def test_an_sni_folder_without_a_default_is_one_line_naming_it(self) -> None:
        (self.folder / "sni").mkdir()
        self.ca.issue("alpha.test").write(self.folder / "sni" / "alpha.test.pem")
        result = run_twist("--listen", f"schannel:tcp:{self.port}:sni={self.folder}/sni",
                           "--state-dir", str(self.folder / "state"))
        assert_one_line(self, result, f"sni folder '{self.folder}/sni' holds no DEFAULT.pem")
        self.assertEqual(result.returncode, 64)

    def test_an_sni_folder_file_with_an_empty_label_is_one_line_naming_it(self) -> None:
        (self.folder / "sni").mkdir()
        self.ca.issue("localhost").write(self.folder / "sni" / "DEFAULT.pem")
        self.ca.issue("example.com").write(self.folder / "sni" / "example.com..pem")
        result = run_twist("--listen", f"schannel:tcp:{self.port}:sni={self.folder}/sni",
                           "--state-dir", str(self.folder / "state"))
        assert_one_line(self, result, f"sni folder '{self.folder}/sni': 'example.com..pem' "
                        "names no host ('example.com.' has an empty label")
        self.assertEqual(result.returncode, 64)

    def test_a_private_key_without_certificate_is_the_parsers_error(self) -> None:
        key = self.folder / "key.pem"
        key.write_bytes(self.ca.issue("localhost").private_key_pem)
        result = run_twist("--listen", f"schannel:tcp:{self.port}:privateKey={key}",
                           "--state-dir", str(self.folder / "state"))
        assert_one_line(self, result, "a server needs certificate=")


class AllowFormTests(SynchronousTestCase):
    """--allow-cn and --allow-san values that could never match are refused."""

    def assertRefused(self, option: str, value: str, needle: str) -> None:
        result = run_twist(option, value)
        assert_one_line(self, result, needle)
        self.assertEqual(result.returncode, 64)

    def test_an_empty_common_name(self) -> None:
        self.assertRefused("--allow-cn", "", "--allow-cn '': expected a certificate's common name")

    def test_a_distinguished_name_for_a_common_name(self) -> None:
        self.assertRefused("--allow-cn", "CN=alice",
                           "--allow-cn 'CN=alice': give the common name alone, "
                           "such as --allow-cn alice")

    def test_openssl_prefixes_on_alt_names(self) -> None:
        # DNS:, URI: and email: are --allow-san's own types (any case);
        # OpenSSL's "IP Address:" is not.
        self.assertRefused("--allow-san", "IP Address:10.0.0.1",
                           "--allow-san 'IP Address:10.0.0.1': OpenSSL's IP Address: prefix; "
                           "write ip:10.0.0.1")
        self.assertRefused("--allow-san", " ", "expected TYPE:VALUE")

    def test_ip_addresses_are_compared_in_their_short_form(self) -> None:
        options = Options()
        options.opt_allow_san("ip:0:0:0:0:0:0:0:1")
        options.opt_allow_san("DNS:svc.example")
        self.assertEqual([str(n) for n in options["allow-san"]], ["ip:::1", "dns:svc.example"])
        client = CertificateAuthority().issue("::1", common_name="svc").certificate
        self.assertIsNone(AccessPolicy((), tuple(options["allow-san"])).refusal(client))


class ValidityWarningProcessTests(TestCase):
    """A certificate out of date is logged at start and on every SIGHUP; timer
    reloads log a warning only when it is new. It is served all the same."""

    def test_expired_certificate_is_logged_at_start_and_on_every_reload(self) -> None:
        folder = Path(tempfile.mkdtemp(prefix="txschannel-expired-"))
        now = datetime.datetime.now(datetime.timezone.utc)
        ca = CertificateAuthority()
        certificate = folder / "server.pem"
        ca.issue("localhost", not_before=now - 40 * DAY,
                 not_after=now - 3 * DAY - HOUR).write(certificate)
        port = free_port()
        twist = Twist(self, "--listen",
                      f"schannel:tcp:{port}:interface=127.0.0.1:certificate={certificate}",
                      "--reload-interval", "0.2")
        line = (rf"\[txschannel#warn\] {{}}certificate file '{re.escape(str(certificate))}' "
                r"\(subject CN=localhost,O=txschannel testing\) {}: "
                r"valid from \S+ \S+ to \S+ \S+ UTC")
        expired = re.escape("has expired (3 days ago)")
        twist.wait_for(line.format("", expired))
        twist.wait_for("listening on")
        served_fingerprint(port)
        # Timer reloads of the same file say nothing new.
        time.sleep(1.0)
        self.assertNotIn("--reload-interval:", twist.output)

        soon = ca.issue("localhost", not_after=now + 5 * DAY + HOUR)
        replacement = folder / "server.pem.new"
        soon.write(replacement)
        replacement.replace(certificate)
        expiring = line.format("--reload-interval: ", re.escape("expires in 5 days"))
        twist.wait_for(expiring)
        time.sleep(1.0)
        self.assertEqual(len(re.findall(expiring, twist.output)), 1, twist.output)

        mark = len(twist.output)
        twist.send_signal(signal.SIGHUP)
        sighup = line.format("SIGHUP: ", re.escape("expires in 5 days"))
        twist.wait_for(sighup, start=mark)
        twist.send_signal(signal.SIGHUP)
        twist.wait_for(sighup + r"[\s\S]*" + sighup, start=mark)


class ValidityCheckTests(SynchronousTestCase):
    """The daily check warns about a certificate that runs out while nobody reloads."""

    def test_daily_check(self) -> None:
        now = datetime.datetime.now(datetime.timezone.utc)
        issued = CertificateAuthority().issue("localhost", not_after=now + 20 * DAY)
        endpoint = _ListeningEndpoint(Credentials.server(certificate=issued.pem))
        clock = Clock()
        service = SchannelService([("schannel:test", endpoint)], Factory(), clock)
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        service.startService()
        self.addCleanup(service.stopService)
        clock.advance(24 * 3600)
        self.assertEqual([e for e in events if e.get("log_level") == LogLevel.warn], [])
        # The certificate in use now ends in ten days (the check reads no
        # file: it looks at the credentials being served).
        issued = CertificateAuthority().issue("localhost", not_after=now + 10 * DAY + HOUR)
        endpoint.credentials = Credentials.server(certificate=issued.pem)
        clock.advance(24 * 3600)
        (warning,) = [formatEvent(e) for e in events if e.get("log_level") == LogLevel.warn]
        self.assertTrue(warning.startswith("validity check: certificate (given in memory) "),
                        warning)
        self.assertIn("expires in 10 days", warning)


@implementer(IListeningPort)
class _Port:
    def getHost(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", 1)

    def startListening(self) -> None:
        pass

    def stopListening(self) -> None:
        pass


class _ListeningEndpoint:
    """Listens nowhere; holds credentials as SchannelServerEndpoint does."""

    def __init__(self, credentials: Credentials) -> None:
        self.credentials = credentials

    def listen(self, factory: object) -> Deferred[IListeningPort]:
        return succeed(_Port())


class PassphraseFileProcessTests(TestCase):
    """twist schannel --listen ...:passphraseFile= serves an encrypted key."""

    def setUp(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="txschannel-passphrase-"))
        self.issued = CertificateAuthority().issue("localhost")
        self.certificate = self.folder / "server.pem"
        self.certificate.write_bytes(encrypted_pem(self.issued, b"twist-and-shout"))
        self.passphrase = self.folder / "server.pass"
        self.passphrase.write_bytes(b"twist-and-shout\n")
        self.passphrase.chmod(0o400)

    def test_served_with_its_passphrase(self) -> None:
        port = free_port()
        twist = Twist(self, "--listen",
                      f"schannel:tcp:{port}:interface=127.0.0.1:certificate={self.certificate}"
                      f":passphraseFile={self.passphrase}")
        twist.wait_for("listening on")
        self.assertEqual(served_fingerprint(port), fingerprint_of(self.issued.certificate))
        self.assertNotIn("twist-and-shout", twist.output)

    def test_a_wrong_passphrase_is_one_line_naming_the_key_file(self) -> None:
        wrong = self.folder / "wrong.pass"
        wrong.write_bytes(b"hey-jude\n")
        result = run_twist("--listen",
                           f"schannel:tcp:{free_port()}:certificate={self.certificate}"
                           f":passphraseFile={wrong}")
        assert_one_line(
            self, result,
            f"certificate file '{self.certificate}': the passphrase given does not decrypt",
        )
        self.assertNotIn("hey-jude", result.stderr)
        self.assertNotIn("twist-and-shout", result.stderr)

    def test_a_missing_passphrase_file_is_one_line_naming_it(self) -> None:
        result = run_twist("--listen",
                           f"schannel:tcp:{free_port()}:certificate={self.certificate}"
                           f":passphraseFile={self.folder}/nope.pass")
        assert_one_line(self, result, f"passphrase file '{self.folder}/nope.pass' does not")


DAY = datetime.timedelta(days=1)
HOUR = datetime.timedelta(hours=1)
