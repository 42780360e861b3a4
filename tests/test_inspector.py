"""The inspector ``twist schannel`` serves without ``--connect``, fetched with curl."""

from __future__ import annotations

import json
import os
import socket
import tempfile
from pathlib import Path

from twisted.trial.unittest import FailTest, SynchronousTestCase, TestCase

from tests.support.peers import free_port, require, wait_for_port
from tests.support.probe import run_probe
from tests.support.twist import Twist, curl, served_fingerprint
from txschannel.terminator.inspector import render_html, render_text
from txschannel.terminator.inspector.site import _choose
from txschannel.terminator.options import DEFAULT_PORT
from txschannel.terminator.selfsigned import default_state_dir
from txschannel.testing import CertificateAuthority


class NoArgumentsTests(TestCase):
    """``twist schannel`` alone on a fresh machine, then curl with the printed file."""

    def test_no_arguments_serves_the_inspector_with_a_new_self_signed_certificate(self) -> None:
        require("curl")
        try:
            with socket.socket() as probe:
                probe.bind(("0.0.0.0", DEFAULT_PORT))
        except OSError as e:
            raise FailTest(
                f"port {DEFAULT_PORT} is taken on this machine ({e}); this test runs "
                "`twist schannel` with no arguments, which listens there"
            ) from None
        home = Path(tempfile.mkdtemp(prefix="txschannel-fresh-"))
        twist = Twist(self, home=home)
        path = twist.wait_for(r"created the self-signed certificate .*: (\S+)").group(1)
        printed = twist.wait_for(r"SHA-256 fingerprint: ([0-9A-F:]+)").group(1)
        twist.wait_for("listening on")
        wait_for_port(DEFAULT_PORT)
        self.assertEqual(Path(path), home / ".local/state/txschannel/localhost.crt")
        twist.wait_for(rf"open https://localhost:{DEFAULT_PORT}/ \(the certificate is "
                       rf"self-signed: trust {path}, SHA-256 {printed}\)")
        twist.wait_for(rf"try: curl --cacert {path} https://localhost:{DEFAULT_PORT}/")
        # A demo listens on this machine only.
        twist.wait_for(rf"listening on schannel:tcp:{DEFAULT_PORT}:interface=127\.0\.0\.1\S* "
                       rf"at 127\.0\.0\.1:{DEFAULT_PORT}")
        self.assertEqual(served_fingerprint(DEFAULT_PORT), printed)

        text = curl("--cacert", path, f"https://localhost:{DEFAULT_PORT}/")
        self.assertEqual(text.returncode, 0, text.stderr)
        self.assertIn(b"protocol:           TLSv1.3", text.stdout)
        self.assertIn(b"server name (SNI):  localhost", text.stdout)
        self.assertIn(b"ALPN:               http/1.1", text.stdout)

        answer = curl("--cacert", path, "-H", "Accept: application/json",
                      f"https://localhost:{DEFAULT_PORT}/anything?at=all")
        self.assertEqual(answer.returncode, 0, answer.stderr)
        page = json.loads(answer.stdout)
        self.assertEqual(page["protocol"], "TLSv1.3")
        self.assertEqual(page["http"]["path"], "/anything?at=all")
        self.assertEqual(page["handshake"][-1]["status"], "OK")
        self.assertTrue(page["group"])
        twist.wait_for(r"connection closed peer=127\.0\.0\.1:\d+ server_name=localhost "
                       r"protocol=TLSv1\.3 .*bytes_in=\d+ bytes_out=\d+ duration=")


class InspectorTests(TestCase):
    """The page's formats and contents, on a free port with the default certificate."""

    def setUp(self) -> None:
        require("curl")
        self.home = Path(tempfile.mkdtemp(prefix="txschannel-inspect-"))
        self.state = self.home / "state"
        self.port = free_port()
        self.twist = Twist(
            self, "--listen", f"schannel:tcp:{self.port}:interface=127.0.0.1",
            "--state-dir", str(self.state), home=self.home,
        )
        self.twist.wait_for("listening on")
        self.cacert = str(self.state / "localhost.crt")
        self.url = f"https://localhost:{self.port}/"

    def test_json_names_the_negotiated_parameters_and_the_ladder(self) -> None:
        result = curl("--cacert", self.cacert, "--tls-max", "1.2",
                      "-H", "Accept: application/json", self.url)
        self.assertEqual(result.returncode, 0, result.stderr)
        page = json.loads(result.stdout)
        self.assertEqual(page["protocol"], "TLSv1.2")
        self.assertRegex(page["cipher"], "^ECDHE-ECDSA-.*(GCM|CHACHA20)")
        self.assertEqual(page["alpn"], "http/1.1")
        self.assertEqual(page["server_name"], "localhost")
        self.assertIsNone(page["client_certificate"])
        self.assertFalse(page["session_reused"])
        statuses = [step["status"] for step in page["handshake"]]
        self.assertEqual(statuses[0], "CONTINUE_NEEDED")
        self.assertEqual(statuses[-1], "OK")
        self.assertTrue(all(step["call"].startswith("accept #") for step in page["handshake"]))

    def test_twist_schannel_shows_what_the_client_offered(self) -> None:
        result = curl("--cacert", self.cacert, "-H", "Accept: application/json", self.url)
        self.assertEqual(result.returncode, 0, result.stderr)
        hello = json.loads(result.stdout)["client_hello"]
        self.assertEqual(hello["server_name"], "localhost")
        self.assertEqual(hello["alpn"], ["h2", "http/1.1"])
        self.assertRegex(hello["ja4"], r"^t13d\d{4}h2_[0-9a-f]{12}_[0-9a-f]{12}$")

    def test_a_resumed_session_is_reported(self) -> None:
        # HTTP/1.0: the server closes after each answer, so curl's second
        # request needs a new connection and offers the session it kept.
        url = self.url + "?format=json"
        result = curl("--cacert", self.cacert, "--http1.0", url, url)
        self.assertEqual(result.returncode, 0, result.stderr)
        decoder, text, pages = json.JSONDecoder(), result.stdout.decode(), []
        position = 0
        while position < len(text.rstrip()):
            page, position = decoder.raw_decode(text, position)
            pages.append(page)
            while position < len(text) and text[position].isspace():
                position += 1
        self.assertEqual([p["session_reused"] for p in pages], [False, True])
        self.assertNotEqual(pages[0]["peer"], pages[1]["peer"])

    def test_html_by_accept(self) -> None:
        result = curl("--cacert", self.cacert, "-H", "Accept: text/html,*/*;q=0.8", self.url,
                      "-w", "%{content_type}")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn(b'<div class="k">protocol</div><div class="v">TLSv1.3</div>',
                      result.stdout)
        self.assertIn(b"<title>txschannel inspector</title>", result.stdout)
        self.assertTrue(result.stdout.endswith(b"text/html; charset=utf-8"))

    def test_http_1_0_and_other_methods(self) -> None:
        result = curl("--cacert", self.cacert, "--http1.0", "-X", "DELETE", self.url,
                      "-w", "%{http_code}")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn(b"protocol:           TLSv1.3", result.stdout)
        self.assertTrue(result.stdout.endswith(b"200"))

    def test_probe_against_twist_shows_the_self_signed_certificate(self) -> None:
        fingerprint = self.twist.wait_for(r"SHA-256 fingerprint: ([0-9A-F:]+)").group(1)
        result = run_probe(f"127.0.0.1:{self.port}", "--servername", "localhost",
                           "--cacert", self.cacert, "--alpn", "http/1.1")
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("ALPN:               http/1.1", result.stdout)
        self.assertIn("0 subject: O=txschannel self-signed,CN=localhost", result.stdout)
        self.assertIn(f"sha256:  {fingerprint}", result.stdout)

    def test_a_client_that_distrusts_us_is_logged_with_the_status(self) -> None:
        other = Path(tempfile.mkdtemp()) / "other-ca.pem"
        CertificateAuthority().write(other)
        result = curl("--cacert", str(other), self.url)
        self.assertNotEqual(result.returncode, 0)
        self.twist.wait_for(r'connection closed .* reason="TLS error UNTRUSTED_ROOT: ')

    def test_second_run_keeps_the_certificate(self) -> None:
        first = self.twist.wait_for(r"SHA-256 fingerprint: ([0-9A-F:]+)").group(1)
        port = free_port()
        again = Twist(self, "--listen", f"schannel:tcp:{port}:interface=127.0.0.1",
                      "--state-dir", str(self.state), home=self.home)
        self.assertEqual(again.wait_for(r"SHA-256 fingerprint: ([0-9A-F:]+)").group(1), first)
        again.wait_for("using the self-signed certificate")
        again.wait_for("listening on")
        self.assertEqual(served_fingerprint(port), first)


class PlainInspectorTests(TestCase):
    """A plain listen endpoint: the page says there is no TLS."""

    def test_plain_connection_reports_no_tls(self) -> None:
        require("curl")
        port = free_port()
        twist = Twist(self, "--listen", f"tcp:{port}:interface=127.0.0.1")
        twist.wait_for("listening on")
        result = curl("-H", "Accept: application/json", f"http://127.0.0.1:{port}/")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertFalse(json.loads(result.stdout)["tls"])
        twist.wait_for(r"connection closed peer=127\.0\.0\.1:\d+ server_name=- protocol=plain")


class FormatTests(SynchronousTestCase):
    """Content negotiation and the renderers, without a connection."""

    def test_accept_header_choices(self) -> None:
        self.assertEqual(_choose(None, None), "text/plain")
        self.assertEqual(_choose("*/*", None), "text/plain")
        self.assertEqual(_choose("application/json", None), "application/json")
        self.assertEqual(_choose("text/html,application/xhtml+xml,*/*;q=0.8", None),
                         "text/html")
        self.assertEqual(_choose("text/plain;q=0.1, application/json", None), "application/json")
        self.assertEqual(_choose("text/*", "json"), "application/json")

    def test_renderers_escape_and_describe_plain_connections(self) -> None:
        description = {"peer": "<script>", "tls": False}
        self.assertIn("&lt;script&gt;", render_html(description))
        self.assertIn("TLS:                no (plain connection)", render_text(description))

    def test_state_dir_follows_xdg_state_home(self) -> None:
        self.patch(os, "environ", {**os.environ, "XDG_STATE_HOME": "/srv/state"})
        self.assertEqual(default_state_dir(), Path("/srv/state/txschannel"))
        self.patch(os, "environ", {k: v for k, v in os.environ.items()
                                   if k != "XDG_STATE_HOME"})
        self.assertEqual(default_state_dir(), Path.home() / ".local/state/txschannel")
