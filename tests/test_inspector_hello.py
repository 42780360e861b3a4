"""The inspector explains the client: real clients' ClientHellos, the handshake
ladder, and the page as Chromium draws it.

Each test runs the inspector in this process, on loopback, behind a
``SchannelFactory`` that keeps ClientHellos, and fetches the page with a
real client: curl, ``openssl s_client``, Python's ``ssl``, ``gnutls-cli``
and headless Chromium (in a thread, so the reactor keeps serving). A
missing tool fails the test.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import socket
import ssl
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.interfaces import IReactorTCP
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.support.hellos import JA4_FORMAT, build_hello
from tests.support.peers import require
from tests.support.png import Image, read_png
from txschannel import Credentials
from txschannel.protocol import SchannelFactory
from txschannel.terminator.inspector import (
    InspectorSite,
    describe_client_hello,
    render_html,
    render_text,
)
from txschannel.testing import CertificateAuthority

REQUEST = "GET /?format={format} HTTP/1.0\r\nHost: localhost\r\n\r\n"


def names(items: Sequence[dict[str, Any]]) -> list[str]:
    return [item["name"] for item in items]


def body_of(response: bytes) -> bytes:
    """The body of the HTTP response in a client's output (after the first blank line)."""
    head, separator, body = response.partition(b"\r\n\r\n")
    if not separator:
        raise AssertionError(f"no HTTP response in the output: {response[-2000:]!r}")
    return body


def json_of(output: bytes) -> dict[str, Any]:
    """The JSON page in a client's output, ignoring what the client printed after it."""
    body = body_of(output).decode("utf-8")
    page, _ = json.JSONDecoder().raw_decode(body)
    assert isinstance(page, dict)
    return page


class InspectorServer:
    """The inspector on an ephemeral loopback port, keeping ClientHellos."""

    def __init__(self, test: TestCase) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="txschannel-hello-"))
        test.addCleanup(shutil.rmtree, self.folder, ignore_errors=True)
        authority = CertificateAuthority()
        self.cafile = str(authority.write(self.folder / "ca.pem"))
        self.issued = authority.issue("localhost", "127.0.0.1")
        credentials = Credentials.server(
            certificate=[self.issued.certificate],
            private_key=self.issued.private_key,
            alpn=["http/1.1", "http/1.0"],
        )
        factory = SchannelFactory(credentials, False, InspectorSite(), keep_client_hello=True)
        tcp: IReactorTCP = reactor  # type: ignore[assignment]
        self.listening = tcp.listenTCP(0, factory, interface="127.0.0.1")
        test.addCleanup(self.listening.stopListening)
        self.port: int = self.listening.getHost().port  # type: ignore[attr-defined]
        self.url = f"https://localhost:{self.port}/"

    @property
    def pin(self) -> str:
        """The server key's pin for Chromium's --ignore-certificate-errors-spki-list."""
        spki = self.issued.certificate.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return base64.b64encode(hashlib.sha256(spki).digest()).decode("ascii")


def run(argv: Sequence[str], data: bytes = b"", timeout: float = 60) -> Any:
    """A Deferred for *argv*'s CompletedProcess, run in a thread."""
    return deferToThread(
        subprocess.run, list(argv), input=data, capture_output=True, timeout=timeout
    )


class RenderingTests(SynchronousTestCase):
    """The pages made from hellos that are hostile, cut short or corrupted."""

    def page(self, message: bytes) -> dict[str, Any]:
        return {"tls": True, "established": False, "peer": "127.0.0.1:1",
                "client_hello": describe_client_hello(message)}

    def test_a_hostile_server_name_cannot_forge_markup(self) -> None:
        hostile = b'</td><script>alert(1)</script><svg onload="x">\x1b[2J'
        description = self.page(build_hello([0x1301], [0x0000, 0x0010], server_name=hostile,
                                            alpn=(b"<i>", b"\n")))
        page = render_html(description)
        self.assertNotIn("<script>", page)
        self.assertNotIn("<svg onload", page)
        self.assertNotIn("<i>", page)
        self.assertNotIn("\x1b", page)
        self.assertIn("&lt;script&gt;alert(1)&lt;/script&gt;", page)
        self.assertIn("\\x1b[2J", page)
        text = render_text(description)
        self.assertNotIn("\x1b", text)
        self.assertIn("\\x1b[2J", text)
        self.assertIn("ALPN offered:           <i>, \\x0a", text)

    def test_cut_short_and_corrupted_hellos_still_make_pages(self) -> None:
        message = build_hello(
            [0x0A0A, 0x1301, 0x1302, 0xC02B],
            [0x0A0A, 0x0000, 0x0010, 0x000A, 0x000D, 0x002B, 0x0033, 0x002D, 0x0029],
        )
        broken = [message[:size] for size in range(0, len(message), 7)]
        broken.append(message[:60] + b"\xff" * 40 + message[100:])
        for data in broken:
            description = self.page(data)
            self.assertTrue(description["client_hello"]["errors"])
            self.assertIn("could not be read whole:", render_text(description))
            page = render_html(description)
            self.assertIn("<h3>Could not be read whole</h3>", page)
            self.assertTrue(page.endswith("</html>\n"))
            json.dumps(description)

    def test_a_listener_that_keeps_no_hellos_says_so(self) -> None:
        description = {"tls": True, "established": False, "peer": "p", "client_hello": None}
        self.assertIn("client hello: not kept by this listener", render_text(description))
        self.assertIn("does not keep ClientHellos", render_html(description))


class CommandLineClientTests(TestCase):
    """curl, openssl s_client and gnutls-cli: what each offered, as the page says."""

    def setUp(self) -> None:
        self.server = InspectorServer(self)

    @inlineCallbacks
    def test_curl_shows_its_server_name_and_alpn_list(self) -> Any:
        curl = require("curl")
        result = yield run([curl, "-sS", "--cacert", self.server.cafile,
                            "-H", "Accept: application/json", self.server.url])
        self.assertEqual(result.returncode, 0, result.stderr)
        page = json.loads(result.stdout)
        hello = page["client_hello"]
        self.assertEqual(hello["server_name"], "localhost")
        self.assertEqual(hello["alpn"], ["h2", "http/1.1"])
        self.assertEqual(page["alpn"], "http/1.1")
        self.assertEqual(hello["errors"], [])
        self.assertEqual(hello["size"] + 5, page["handshake"][0]["bytes_in"])
        self.assertRegex(hello["ja4"], JA4_FORMAT)
        self.assertTrue(hello["ja4"].startswith("t13d"), hello["ja4"])
        self.assertEqual(hello["ja4"][8:10], "h2")
        self.assertIn("TLS_AES_256_GCM_SHA384", names(hello["cipher_suites"]))
        self.assertEqual(names(hello["extensions"])[0], "server_name")
        # The text view, curl's default, carries the same facts.
        text = yield run([curl, "-sS", "--cacert", self.server.cafile, self.server.url])
        self.assertEqual(text.returncode, 0, text.stderr)
        page_text = text.stdout.decode()
        self.assertIn("ALPN offered:           h2, http/1.1", page_text)
        self.assertIn("    0x1302  TLS_AES_256_GCM_SHA384", page_text)
        self.assertRegex(page_text, r"JA4:    t13d\d{4}h2_[0-9a-f]{12}_[0-9a-f]{12}\n")
        self.assertIn("client --> ClientHello (", page_text)
        self.assertIn("server: accept #2 returned OK", page_text)

    @inlineCallbacks
    def test_openssl_offers_the_tls13_suites_and_one_key_share(self) -> Any:
        openssl = require("openssl")
        result = yield run(
            [openssl, "s_client", "-connect", f"127.0.0.1:{self.server.port}",
             "-servername", "localhost", "-CAfile", self.server.cafile,
             "-verify_return_error", "-alpn", "http/1.1", "-quiet"],
            REQUEST.format(format="json").encode(),
        )
        page = json_of(result.stdout)
        hello = page["client_hello"]
        self.assertEqual(names(hello["cipher_suites"])[:3], [
            "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256", "TLS_AES_128_GCM_SHA256",
        ])
        self.assertEqual(names(hello["supported_versions"])[0], "TLS 1.3")
        self.assertEqual(names(hello["key_shares"]), ["x25519"])
        self.assertEqual(hello["key_shares"][0]["size"], 32)
        self.assertEqual(hello["alpn"], ["http/1.1"])
        self.assertEqual(hello["version"]["name"], "TLS 1.2")
        self.assertFalse(page["hello_retry_request"])
        self.assertEqual([f["status"] for f in page["flights"]], ["CONTINUE_NEEDED", "OK"])
        self.assertEqual(page["flights"][0]["server"][:2], ["ServerHello", "ChangeCipherSpec"])
        self.assertIn("Certificate", page["flights"][0]["server"])

    @inlineCallbacks
    def test_a_hello_retry_request_is_drawn(self) -> Any:
        # OpenSSL sends a key share for the first group only: P-521, which
        # the server does not take, so it asks again for P-256.
        openssl = require("openssl")
        argv = [openssl, "s_client", "-connect", f"127.0.0.1:{self.server.port}",
                "-servername", "localhost", "-CAfile", self.server.cafile,
                "-verify_return_error", "-groups", "P-521:P-256", "-quiet"]
        result = yield run(argv, REQUEST.format(format="json").encode())
        page = json_of(result.stdout)
        self.assertEqual(names(page["client_hello"]["key_shares"]), ["secp521r1"])
        self.assertEqual(page["group"], "secp256r1")
        self.assertTrue(page["hello_retry_request"])
        flights = page["flights"]
        self.assertEqual([f["status"] for f in flights],
                         ["CONTINUE_NEEDED", "CONTINUE_NEEDED", "OK"])
        self.assertEqual(flights[0]["server"], ["HelloRetryRequest", "ChangeCipherSpec"])
        self.assertEqual(flights[1]["client"], ["ChangeCipherSpec", "ClientHello"])
        html = yield run(argv, REQUEST.format(format="html").encode())
        svg = re.search(rb"<svg .*?</svg>", body_of(html.stdout), re.S)
        assert svg is not None
        self.assertIn(b">HelloRetryRequest</text>", svg.group(0))
        self.assertIn(b"accept #2 \xe2\x86\x92 CONTINUE_NEEDED", svg.group(0))
        self.assertIn(b"accept #3 \xe2\x86\x92 OK", svg.group(0))

    @inlineCallbacks
    def test_gnutls_offers_ccm_and_its_groups(self) -> Any:
        gnutls = require("gnutls-cli")
        result = yield run(
            [gnutls, "--x509cafile", self.server.cafile, "--port", str(self.server.port),
             "--alpn", "http/1.1", "localhost"],
            REQUEST.format(format="json").encode(),
        )
        page = json_of(result.stdout)
        hello = page["client_hello"]
        self.assertEqual(hello["server_name"], "localhost")
        self.assertEqual(hello["alpn"], ["http/1.1"])
        self.assertIn("TLS_AES_128_CCM_SHA256", names(hello["cipher_suites"]))
        self.assertIn("ffdhe2048", names(hello["groups"]))
        self.assertEqual(hello["ja4"][8:10], "h1")
        self.assertEqual(page["flights"][-1]["status"], "OK")
        self.assertEqual(page["flights"][-1]["client"][-1], "Finished")

    @inlineCallbacks
    def test_a_hostile_server_name_is_shown_not_obeyed(self) -> Any:
        openssl = require("openssl")
        hostile = '"><svg onload=alert(1)><script>x</script>'
        result = yield run(
            [openssl, "s_client", "-connect", f"127.0.0.1:{self.server.port}",
             "-servername", hostile, "-CAfile", self.server.cafile, "-quiet"],
            REQUEST.format(format="html").encode(),
        )
        page = body_of(result.stdout).decode()
        self.assertIn("&quot;&gt;&lt;svg onload=alert(1)&gt;&lt;script&gt;x&lt;/script&gt;", page)
        self.assertNotIn("<script", page)
        self.assertEqual(page.count("<svg "), 1)


class PythonClientTests(TestCase):
    """Python's ssl module, including resumed sessions of TLS 1.3 and 1.2."""

    def setUp(self) -> None:
        self.server = InspectorServer(self)

    def fetch(self, context: ssl.SSLContext, session: ssl.SSLSession | None = None,
              kind: str = "json") -> tuple[Any, ssl.SSLSession | None]:
        """GET the page (in a thread): the JSON page (or the HTML text) and
        the session to resume."""
        with socket.create_connection(("127.0.0.1", self.server.port), timeout=30) as raw:
            with context.wrap_socket(raw, server_hostname="localhost",
                                     session=session) as tls:
                tls.sendall(REQUEST.format(format=kind).encode())
                output = b""
                while chunk := tls.recv(65536):
                    output += chunk
                if kind == "html":
                    return body_of(output).decode(), tls.session
                return json_of(output), tls.session

    def context(self, maximum: ssl.TLSVersion | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.server.cafile)
        context.set_alpn_protocols(["http/1.1"])
        if maximum is not None:
            context.maximum_version = maximum
        return context

    @inlineCallbacks
    def test_python_offers_its_groups_and_resumes_with_a_psk(self) -> Any:
        context = self.context()
        first, session = yield deferToThread(self.fetch, context)
        hello = first["client_hello"]
        self.assertIn("x25519", names(hello["groups"]))
        self.assertIn("secp256r1", names(hello["groups"]))
        self.assertEqual(hello["alpn"], ["http/1.1"])
        self.assertEqual(hello["server_name"], "localhost")
        self.assertIsNone(hello["resumption"])
        self.assertFalse(first["session_reused"])
        again, session = yield deferToThread(self.fetch, context, session)
        self.assertTrue(again["session_reused"])
        self.assertEqual(again["client_hello"]["resumption"], "TLS 1.3 PSK")
        self.assertEqual(names(again["client_hello"]["extensions"])[-1], "pre_shared_key")
        flights = again["flights"]
        self.assertEqual(flights[0]["server"],
                         ["ServerHello", "ChangeCipherSpec", "EncryptedExtensions", "Finished"])
        # No certificate on a resumed session: the server's flight is smaller.
        self.assertLess(flights[0]["bytes_out"], first["flights"][0]["bytes_out"])
        page, _ = yield deferToThread(self.fetch, context, session, "html")
        svg = re.search(r"<svg .*?</svg>", page, re.S)
        assert svg is not None
        self.assertIn(">resumed session (TLS 1.3 PSK)</text>", svg.group(0))
        self.assertNotIn(">Certificate</text>", svg.group(0))

    @inlineCallbacks
    def test_a_resumed_tls12_session_is_drawn(self) -> Any:
        context = self.context(ssl.TLSVersion.TLSv1_2)
        first, session = yield deferToThread(self.fetch, context)
        self.assertEqual(first["protocol"], "TLSv1.2")
        self.assertEqual(first["flights"][0]["server"][-1], "ServerHelloDone")
        again, _ = yield deferToThread(self.fetch, context, session)
        self.assertTrue(again["session_reused"])
        self.assertEqual(again["client_hello"]["resumption"], "TLS 1.2 session ticket")
        self.assertEqual([(f["client"], f["server"], f["status"]) for f in again["flights"]], [
            (["ClientHello"], ["ServerHello", "ChangeCipherSpec", "Finished"], "CONTINUE_NEEDED"),
            (["ChangeCipherSpec", "Finished"], [], "OK"),
        ])


class ChromiumTests(TestCase):
    """Headless Chromium: its hello, and the page as it draws it."""

    def setUp(self) -> None:
        self.server = InspectorServer(self)
        self.chromium = require("chromium")

    def chromium_argv(self, *arguments: str) -> list[str]:
        profile = tempfile.mkdtemp(prefix="txschannel-chromium-")
        self.addCleanup(shutil.rmtree, profile, ignore_errors=True)
        return [self.chromium, "--headless", "--no-sandbox", "--disable-gpu",
                f"--user-data-dir={profile}", "--hide-scrollbars",
                f"--ignore-certificate-errors-spki-list={self.server.pin}", *arguments]

    @inlineCallbacks
    def screenshot(self, url: str, width: int, height: int, *arguments: str) -> Any:
        folder = tempfile.mkdtemp(prefix="txschannel-shot-")
        self.addCleanup(shutil.rmtree, folder, ignore_errors=True)
        path = Path(folder) / "page.png"
        result = yield run(self.chromium_argv(
            f"--screenshot={path}", f"--window-size={width},{height}", *arguments, url,
        ), timeout=120)
        if not path.exists():
            self.fail(f"Chromium wrote no screenshot: {result.stderr[-2000:]!r}")
        return read_png(path.read_bytes())

    @inlineCallbacks
    def test_chromium_hello_has_grease_and_the_page_shows_it(self) -> Any:
        result = yield run(self.chromium_argv("--dump-dom", self.server.url), timeout=120)
        dom = result.stdout.decode("utf-8", "replace")
        self.assertIn('<p class="product">txschannel inspector</p>', dom, result.stderr[-2000:])
        self.assertIn("What the client offered", dom)
        self.assertIn('<span class="grease">GREASE</span>', dom)
        self.assertIn("<svg", dom)
        ja4 = re.search(r'<div class="ja4">([^<]+)</div>', dom)
        assert ja4 is not None
        self.assertRegex(ja4.group(1), JA4_FORMAT)
        self.assertTrue(ja4.group(1).startswith("t13d"), ja4.group(1))
        self.assertEqual(ja4.group(1)[8:10], "h2")

    def fetch_html(self) -> str:
        """The HTML page of one connection from Python's ssl (a thread: blocking)."""
        context = ssl.create_default_context(cafile=self.server.cafile)
        with socket.create_connection(("127.0.0.1", self.server.port), timeout=30) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(b"GET / HTTP/1.0\r\nHost: localhost\r\nAccept: text/html\r\n\r\n")
                reply = b""
                while chunk := tls.recv(65536):
                    reply += chunk
        return body_of(reply).decode("utf-8")

    @inlineCallbacks
    def test_summary_cards_fill_every_row(self) -> Any:
        # Chromium lays out the page of a real connection, at phone to desktop
        # widths; a script added to it reports where each row of the
        # "This connection" cards ends. No card may sit alone on a row.
        page = yield deferToThread(self.fetch_html)
        measure = (
            "<script>const grid=document.querySelector('.summary');"
            "const rows={};for(const card of grid.children){const box=card.getBoundingClientRect();"
            "(rows[Math.round(box.top)]||=[]).push(Math.round(box.right));}"
            "const out=document.createElement('pre');out.id='layout';"
            "out.textContent=JSON.stringify({right:Math.round(grid.getBoundingClientRect().right),"
            "rows:Object.values(rows).map(r=>Math.max(...r))});"
            "document.body.appendChild(out);</script>"
        )
        folder = Path(tempfile.mkdtemp(prefix="txschannel-layout-"))
        self.addCleanup(shutil.rmtree, folder, ignore_errors=True)
        path = folder / "page.html"
        path.write_text(page.replace("</body>", measure + "</body>"))
        for width in (400, 700, 1024, 1400):
            result = yield run(
                self.chromium_argv("--dump-dom", f"--window-size={width},900", path.as_uri()),
                timeout=120,
            )
            dom = result.stdout.decode("utf-8", "replace")
            found = re.search(r'<pre id="layout">(.*?)</pre>', dom)
            assert found is not None, result.stderr[-2000:]
            layout = json.loads(found.group(1))
            self.assertGreaterEqual(len(layout["rows"]), 3, (width, layout))
            for right in layout["rows"]:
                self.assertAlmostEqual(right, layout["right"], delta=2, msg=(width, layout))

    @inlineCallbacks
    def test_the_page_renders_in_light_and_dark(self) -> Any:
        width, height = 640, 900
        blank: Image = yield self.screenshot("about:blank", width, height)
        light: Image = yield self.screenshot(self.server.url, width, height)
        dark: Image = yield self.screenshot(self.server.url, width, height,
                                            "--force-dark-mode")
        for image in (blank, light, dark):
            self.assertEqual((image.width, image.height), (width, height))
        self.assertLessEqual(len(blank.colours(step=8)), 2)
        for image in (light, dark):
            # Text, cards, badges and the ladder: many colours, all the way down.
            self.assertGreater(len(image.colours(step=3)), 40)
            for band in range(0, height, height // 6):
                rows = image.rows[band : band + height // 6]
                self.assertGreater(len({row for row in rows}), 5,
                                   f"rows {band}.. of the page are blank")
        # The page background (the margin left of the centred cards).
        self.assertGreater(sum(light.pixel(2, height - 40)[:3]), 600)
        self.assertLess(sum(dark.pixel(2, height - 40)[:3]), 120)
