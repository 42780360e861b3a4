"""HTTP/2 end to end: ``twist web`` over ``schannel:`` with curl and Chromium,
and the same server without the ``h2`` package, where ALPN must not offer h2.

The site answers every request with the HTTP version it was made in
(``HTTP/2`` or ``HTTP/1.1``), so the client's side and the server's side
of the negotiation are both checked.
"""

from __future__ import annotations

import base64
import hashlib
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from twisted.trial.unittest import FailTest, TestCase

from tests.support.peers import free_port, require
from tests.support.twist import REPO, environment
from txschannel.testing import CertificateAuthority

SITE = """
from twisted.web import resource


class ProtocolEcho(resource.Resource):
    isLeaf = True

    def render(self, request):
        return request.clientproto + b"\\n"
"""

#: Put first on the path of a process, it makes ``import h2`` fail there, as
#: on a machine without the package (Twisted then has no HTTP/2).
WITHOUT_H2 = """
import sys
sys.modules["h2"] = None
"""


class TwistWeb:
    """A ``twist web --listen schannel:...`` process serving the echo site."""

    def __init__(self, test: TestCase, folder: Path, *, h2: bool) -> None:
        self.port = free_port()
        site = folder / "site"
        site.mkdir(exist_ok=True)
        (site / "echo_site.py").write_text(SITE)
        path = [str(site)]
        if not h2:
            blocker = folder / "without_h2"
            blocker.mkdir(exist_ok=True)
            (blocker / "sitecustomize.py").write_text(WITHOUT_H2)
            path.insert(0, str(blocker))
        env = environment(folder)
        env["PYTHONPATH"] = ":".join([*path, env["PYTHONPATH"]])
        self.log = folder / f"twist-web-{self.port}.log"
        endpoint = (
            f"schannel:tcp:{self.port}:interface=127.0.0.1:certificate={folder}/server.pem"
            ":alpn=h2,http/1.1"
        )
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "twisted", "--log-format=text", "web",
                 "--listen", endpoint, "--class", "echo_site.ProtocolEcho"],
                stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env,
            )
        test.addCleanup(self.stop)
        deadline = time.monotonic() + 30
        while not re.search(r"starting on \d+", self.output):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise FailTest(f"twist web did not start:\n{self.output}")
            time.sleep(0.05)

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)


class HTTP2Tests(TestCase):
    def setUp(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="txschannel-h2-"))
        ca = CertificateAuthority()
        ca.write(self.folder / "ca.pem")
        self.issued = ca.issue("localhost", "127.0.0.1")
        self.issued.write(self.folder / "server.pem")

    def curl(self, port: int, *options: str) -> tuple[str, str]:
        """(body, HTTP version curl used) of a GET with *options*."""
        result = subprocess.run(
            [require("curl"), "-sS", "--max-time", "20", "--cacert", str(self.folder / "ca.pem"),
             "-w", "\n%{http_version}", *options, f"https://localhost:{port}/"],
            capture_output=True, text=True, timeout=30,
        )
        if result.returncode != 0:
            raise FailTest(f"curl failed ({result.returncode}): {result.stderr}")
        body, _, version = result.stdout.rpartition("\n")
        return body.strip(), version.strip()

    def test_curl_speaks_http2_through_schannel(self) -> None:
        web = TwistWeb(self, self.folder, h2=True)
        self.assertEqual(self.curl(web.port, "--http2"), ("HTTP/2", "2"))
        self.assertEqual(self.curl(web.port, "--http1.1"), ("HTTP/1.1", "1.1"))

    def test_chromium_speaks_http2_through_schannel(self) -> None:
        chromium = require("chromium")
        web = TwistWeb(self, self.folder, h2=True)
        # The certificate is pinned by its key (no CA to install in a
        # headless profile); certificate checks stay on for everything else.
        spki = self.issued.certificate.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        pin = base64.b64encode(hashlib.sha256(spki).digest()).decode("ascii")
        result = subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu",
             f"--user-data-dir={self.folder / 'chromium'}",
             f"--ignore-certificate-errors-spki-list={pin}",
             "--dump-dom", f"https://localhost:{web.port}/"],
            capture_output=True, text=True, timeout=90,
        )
        self.assertIn("<body>HTTP/2", result.stdout, result.stderr[-2000:])

    def test_without_h2_alpn_offers_only_http11(self) -> None:
        web = TwistWeb(self, self.folder, h2=False)
        # curl offers h2 and http/1.1: the server picks what it can speak.
        self.assertEqual(self.curl(web.port, "--http2"), ("HTTP/1.1", "1.1"))
        # A client offering only h2 is refused with no_application_protocol,
        # instead of negotiating h2 and failing inside twisted.web.
        result = subprocess.run(
            [require("openssl"), "s_client", "-connect", f"127.0.0.1:{web.port}",
             "-servername", "localhost", "-alpn", "h2", "-CAfile", str(self.folder / "ca.pem")],
            input="", capture_output=True, text=True, timeout=30,
        )
        self.assertIn("no application protocol", (result.stdout + result.stderr).lower())
        deadline = time.monotonic() + 10
        while "APPLICATION_PROTOCOL_MISMATCH" not in web.output and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertIn("APPLICATION_PROTOCOL_MISMATCH", web.output)
        # And the start of it all is said once: h2 is configured, not spoken.
        self.assertEqual(web.output.count("ALPN: h2 (configured) is not offered"), 1)
        self.assertNotIn("Negotiated HTTP/2 without support", web.output)
        self.assertNotIn("Traceback", web.output)
