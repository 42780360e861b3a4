"""``txschannel.web``: Agent and treq over txschannel, against real HTTPS servers.

The servers are ``openssl s_server -www`` (its page says ``New, `` or
``Reused, `` for the session of the connection that asked, which is how
resumption is proved from the server's side), ``twist web --listen
schannel:...`` with a resource that describes the connection it arrived on,
and ``twist schannel`` for the documentation's programs. Failures are
checked as the caller sees them: the Deferred that ``Agent.request`` or
treq returned.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import treq
from OpenSSL import SSL
from treq.client import HTTPClient
from twisted.internet import reactor as _reactor
from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks
from twisted.internet.endpoints import HostnameEndpoint, TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import optionsForClientTLS
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import (
    URI,
    Agent,
    HTTPConnectionPool,
    PartialDownloadError,
    ResponseNeverReceived,
    readBody,
)
from twisted.web.error import SchemeNotSupported
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface.verify import verifyObject

from tests.support.peers import Peer, free_port, require, wait_for_port
from txschannel import Credentials, SecurityError, Status
from txschannel.protocol import HandshakeTimeout
from txschannel.testing import CertificateAuthority
from txschannel.web import SchannelEndpointFactory

reactor: Any = _reactor

REPO = Path(__file__).resolve().parent.parent

# -- certificates and the server-side resource ----------------------------------------

ECHO_RPY = '''\
import json

from twisted.web.resource import Resource


class Echo(Resource):
    """Answer with what this request's connection negotiated, as JSON."""

    isLeaf = True

    def getChild(self, name, request):
        # twist web's --resource-script wrapper asks for children even of
        # a leaf: every path is this resource.
        return self

    def render(self, request):
        attributes = request.transport.securityContext.attributes
        client = attributes.peer_certificate
        answer = {
            "method": request.method.decode(),
            "body": request.content.read().decode(),
            "secure": request.isSecure(),
            "protocol": attributes.protocol,
            "alpn": attributes.alpn,
            "server_name": attributes.server_name,
            "session_reused": attributes.session_reused,
            "client": None if client is None else client.subject.rfc4514_string(),
        }
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(answer).encode()


resource = Echo()
'''


class PKI:
    """The certificate files (and the resource script) the tests serve, in one folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        ca = CertificateAuthority()
        self.ca = str(ca.write(folder / "ca.pem"))
        self.server = self._issue(ca, "server.pem", "localhost", "127.0.0.1", "::1")
        self.localhost_only = self._issue(ca, "localhost-only.pem", "localhost")
        self.other_host = self._issue(ca, "other-host.pem", "other.test")
        self.stranger_server = self._issue(CertificateAuthority(), "stranger.pem", "localhost")
        clients = CertificateAuthority(name="txschannel testing client CA")
        self.client_ca = str(clients.write(folder / "client-ca.pem"))
        self.client = str(clients.issue(common_name="alice").write(folder / "client.pem"))
        self.not_pem = str(folder / "not-pem.pem")
        Path(self.not_pem).write_text("this is not a certificate\n")
        self.echo = str(folder / "echo.rpy")
        Path(self.echo).write_text(ECHO_RPY)

    def _issue(self, ca: CertificateAuthority, name: str, *hosts: str) -> str:
        return str(ca.issue(*hosts).write(self.folder / name))


_pki: PKI | None = None


def pki() -> PKI:
    """The module's certificates, made on first use."""
    global _pki
    if _pki is None:
        folder = Path(tempfile.mkdtemp(prefix="txschannel-web-"))
        atexit.register(shutil.rmtree, folder, True)
        _pki = PKI(folder)
    return _pki


def q(path: str) -> str:
    """A path quoted for an endpoint string."""
    for special in ("\\", ":", "="):
        path = path.replace(special, "\\" + special)
    return path


# -- servers ------------------------------------------------------------------------


def s_server(test: TestCase, certificate: str, *options: str, host: str = "127.0.0.1") -> int:
    """Run ``openssl s_server -www`` for *test* on a free port of *host*; its port."""
    port = free_port(host)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    peer = Peer(
        ["openssl", "s_server", "-www", "-accept", address, "-cert", certificate, *options]
    )
    test.addCleanup(peer.stop)
    wait_for_port(port, host)
    return port


def environment(home: Path) -> dict[str, str]:
    """The environment of a ``twist`` process: the checkout importable, its own HOME."""
    env = dict(os.environ)
    env.pop("XDG_STATE_HOME", None)
    env["HOME"] = str(home)
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    return env


def twist(test: TestCase | SynchronousTestCase, *arguments: str) -> subprocess.Popen[bytes]:
    """Run ``python -m twisted <arguments>`` for *test* (from the checkout, so the
    ``schannel:`` plugin is found); stopped at the end of the test."""
    home = Path(tempfile.mkdtemp(prefix="txschannel-web-home-"))
    log = open(home / "twist.log", "wb")  # noqa: SIM115 - closed by the cleanup
    process = subprocess.Popen(
        [sys.executable, "-m", "twisted", "--log-format=text", *arguments],
        stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=environment(home),
    )  # fmt: skip

    def stop() -> None:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        log.close()
        shutil.rmtree(home, ignore_errors=True)

    test.addCleanup(stop)
    return process


def twist_web(test: TestCase, *options: str) -> int:
    """Run ``twist web --listen schannel:...`` serving the echo resource; its port."""
    port = free_port()
    listen = ":".join(
        ["schannel:tcp", str(port), "interface=127.0.0.1", f"certificate={q(pki().server)}",
         *options]
    )  # fmt: skip
    twist(test, "web", "--listen", listen, "--resource-script", pki().echo)
    wait_for_port(port, timeout=30)
    return port


# -- the client side -------------------------------------------------------------------


def agent_for(test: TestCase, factory: SchannelEndpointFactory) -> Agent:
    """An Agent over *factory* with a persistent pool, emptied at the end of *test*."""
    pool = HTTPConnectionPool(reactor, persistent=True)
    test.addCleanup(pool.closeCachedConnections)
    return Agent.usingEndpointFactory(reactor, factory, pool)


@inlineCallbacks
def get(agent: Agent, url: str) -> Any:
    """GET *url*; the status and the page.

    ``s_server -www`` answers HTTP/1.0 without a length and ends the page by
    closing, which Twisted always reports as a possibly partial download.
    """
    response = yield agent.request(b"GET", url.encode("ascii"))
    try:
        body = yield readBody(response)
    except PartialDownloadError as e:
        body = e.response
    return response.code, body.decode("utf-8", "replace")


def session_line(page: str) -> str:
    """The line of ``s_server -www``'s page that says whether the session was reused."""
    match = re.search(r"^(New|Reused), (TLSv[\d.]+), Cipher is (\S+)$", page, re.MULTILINE)
    if match is None:
        raise AssertionError(f"no 'New, '/'Reused, ' line in the page:\n{page}")
    return match.group(0)


def check_security_error(
    test: SynchronousTestCase, error: BaseException, status: Status
) -> SecurityError:
    """*error*, which must be a SecurityError with *status*."""
    test.assertIsInstance(error, SecurityError)
    assert isinstance(error, SecurityError)
    test.assertIs(error.status, status, error.reason)
    return error


# -- construction ------------------------------------------------------------------------


class ConstructionTests(SynchronousTestCase):
    """What SchannelEndpointFactory builds, and what it refuses at construction."""

    def test_provides_agent_endpoint_factory(self) -> None:
        self.assertTrue(verifyObject(IAgentEndpointFactory, SchannelEndpointFactory(reactor)))

    def test_default_credentials_are_a_client_offering_http11(self) -> None:
        factory = SchannelEndpointFactory(reactor)
        self.assertTrue(factory.credentials.is_client)
        self.assertFalse(factory.credentials.manual_validation)
        self.assertEqual(factory.credentials.alpn, (b"http/1.1",))

    def test_given_credentials_are_used_as_they_are(self) -> None:
        credentials = Credentials.client(trust_roots=pki().ca)
        factory = SchannelEndpointFactory(reactor, credentials)
        self.assertIs(factory.credentials, credentials)

    def test_missing_trust_roots_file_is_named(self) -> None:
        missing = str(pki().folder / "no-such-ca.pem")
        e = self.assertRaises(ValueError, SchannelEndpointFactory, reactor, trust_roots=missing)
        self.assertIn("SchannelEndpointFactory", str(e))
        self.assertIn(missing, str(e))
        self.assertIn("does not exist", str(e))

    def test_certificate_that_is_not_pem_is_named(self) -> None:
        e = self.assertRaises(
            ValueError, SchannelEndpointFactory, reactor, certificate=pki().not_pem
        )
        self.assertIn(pki().not_pem, str(e))
        self.assertIn("not PEM", str(e))

    def test_private_key_of_another_certificate_is_refused(self) -> None:
        e = self.assertRaises(
            ValueError,
            SchannelEndpointFactory,
            reactor,
            certificate=pki().client,
            private_key=pki().server,
        )
        self.assertIn("does not match", str(e))
        self.assertIn(pki().server, str(e))

    def test_private_key_without_certificate_is_refused(self) -> None:
        e = self.assertRaises(
            ValueError, SchannelEndpointFactory, reactor, private_key=pki().client
        )
        self.assertIn("without a certificate", str(e))

    def test_old_tls_version_is_refused(self) -> None:
        e = self.assertRaises(
            ValueError, SchannelEndpointFactory, reactor, minimum_version="TLSv1.1"
        )
        self.assertIn("minimum_version='TLSv1.1'", str(e))

    def test_credentials_and_options_together_are_refused(self) -> None:
        credentials = Credentials.client(trust_roots=pki().ca)
        e = self.assertRaises(
            TypeError, SchannelEndpointFactory, reactor, credentials, trust_roots=pki().ca
        )
        self.assertIn("trust_roots", str(e))
        self.assertIn("not both", str(e))

    def test_server_credentials_are_refused(self) -> None:
        credentials = Credentials.server(certificate=pki().server)
        e = self.assertRaises(ValueError, SchannelEndpointFactory, reactor, credentials)
        self.assertIn("server credentials", str(e))

    def test_credentials_that_check_nothing_are_refused(self) -> None:
        credentials = Credentials.client(manual_validation=True)
        e = self.assertRaises(ValueError, SchannelEndpointFactory, reactor, credentials)
        self.assertIn("manual_validation", str(e))

    def test_credentials_offering_h2_are_refused(self) -> None:
        credentials = Credentials.client(alpn=["h2", "http/1.1"])
        e = self.assertRaises(ValueError, SchannelEndpointFactory, reactor, credentials)
        self.assertIn("ALPN h2", str(e))
        self.assertIn("HTTP/1.1 only", str(e))

    def test_twisted_creator_is_not_credentials(self) -> None:
        creator = optionsForClientTLS("localhost")
        e = self.assertRaises(TypeError, SchannelEndpointFactory, reactor, creator)
        self.assertIn("Credentials.client", str(e))

    def test_timeouts_must_be_positive_seconds(self) -> None:
        for name, value in (
            ("connect_timeout", 0),
            ("handshake_timeout", -1.0),
            ("handshake_timeout", "30"),
            ("connect_timeout", float("inf")),
        ):
            e = self.assertRaises(ValueError, SchannelEndpointFactory, reactor, **{name: value})
            self.assertIn(f"{name}={value!r}", str(e))


class EndpointForURITests(SynchronousTestCase):
    """Which endpoint each URI gets, and the URIs refused."""

    def setUp(self) -> None:
        self.factory = SchannelEndpointFactory(reactor, trust_roots=pki().ca)

    def test_unknown_scheme_is_not_supported(self) -> None:
        uri = URI.fromBytes(b"ftp://localhost/file")
        self.assertRaises(SchemeNotSupported, self.factory.endpointForURI, uri)
        # Agent.request turns it into a failed Deferred, as with its own factory.
        agent = Agent.usingEndpointFactory(reactor, self.factory)
        failure = self.failureResultOf(agent.request(b"GET", b"ftp://localhost/file"))
        failure.trap(SchemeNotSupported)

    def test_http_is_plain_tcp_as_with_twisted_agent(self) -> None:
        for url in (b"http://localhost:8080/", b"ws://localhost/"):
            endpoint = self.factory.endpointForURI(URI.fromBytes(url))
            self.assertIsInstance(endpoint, HostnameEndpoint)

    def test_https_is_tls_to_the_uri_host(self) -> None:
        for url, address in (
            (b"https://localhost:8443/", "localhost:8443"),
            (b"https://example.com/", "example.com:443"),
            (b"wss://example.com/", "example.com:443"),
            (b"https://[::1]:8443/", "[::1]:8443"),
        ):
            endpoint = self.factory.endpointForURI(URI.fromBytes(url))
            self.assertNotIsInstance(endpoint, HostnameEndpoint)
            self.assertIn(f"endpoint to {address} ", repr(endpoint))

    def test_non_ascii_host_is_refused_as_twisted_refuses_it(self) -> None:
        # (URI.fromBytes cannot even parse it; another IAgent could build it.)
        host = "bücher.example".encode()
        uri = URI(b"https", host, host, 443, b"/", b"", b"", b"")
        e = self.assertRaises(ValueError, self.factory.endpointForURI, uri)
        self.assertIn("non-ASCII", str(e))

    def test_host_that_cannot_be_a_server_name_fails_the_connection(self) -> None:
        endpoint = self.factory.endpointForURI(URI.fromBytes(b"https://-/"))
        failure = self.failureResultOf(endpoint.connect(Factory.forProtocol(Protocol)))
        failure.trap(ValueError)
        self.assertIn("'-' is not a valid host name", str(failure.value))


# -- against openssl s_server -----------------------------------------------------------


class OpenSSLServerTests(TestCase):
    """Agent over txschannel to ``openssl s_server -www``."""

    timeout = 60

    def setUp(self) -> None:
        require("openssl")
        self.factory = SchannelEndpointFactory(reactor, trust_roots=pki().ca)
        self.agent = agent_for(self, self.factory)

    @inlineCallbacks
    def check_resumption(self, version: str) -> Any:
        port = s_server(self, pki().server, f"-{version.replace('v1.', '1_').lower()}")
        url = f"https://localhost:{port}/"
        code, page = yield get(self.agent, url)
        self.assertEqual(code, 200)
        self.assertTrue(session_line(page).startswith(f"New, {version}, "), session_line(page))
        # s_server closes each connection after its page, so the pool opens
        # a new one: it resumes the session the first one left.
        code, page = yield get(self.agent, url)
        self.assertEqual(code, 200)
        self.assertTrue(
            session_line(page).startswith(f"Reused, {version}, "), session_line(page)
        )

    def test_tls12_next_pooled_connection_resumes_the_session(self) -> Any:
        return self.check_resumption("TLSv1.2")

    def test_tls13_next_pooled_connection_resumes_the_session(self) -> Any:
        return self.check_resumption("TLSv1.3")

    @inlineCallbacks
    def test_sessions_are_kept_per_host_name(self) -> Any:
        port = s_server(self, pki().server)
        yield get(self.agent, f"https://localhost:{port}/")
        # The same server by another name: the session is not offered there.
        _, page = yield get(self.agent, f"https://127.0.0.1:{port}/")
        self.assertTrue(session_line(page).startswith("New, "), session_line(page))

    @inlineCallbacks
    def test_ip_address_host_is_checked_as_an_ip_address(self) -> Any:
        port = s_server(self, pki().server)
        code, page = yield get(self.agent, f"https://127.0.0.1:{port}/")
        self.assertEqual(code, 200)
        session_line(page)

    @inlineCallbacks
    def test_ipv6_literal_host_is_checked_as_an_ip_address(self) -> Any:
        port = s_server(self, pki().server, host="::1")
        code, page = yield get(self.agent, f"https://[::1]:{port}/")
        self.assertEqual(code, 200)
        session_line(page)

    @inlineCallbacks
    def test_ip_address_missing_from_the_certificate_is_wrong_principal(self) -> Any:
        port = s_server(self, pki().localhost_only)
        error = yield self.assertFailure(
            get(self.agent, f"https://127.0.0.1:{port}/"), SecurityError
        )
        check_security_error(self, error, Status.WRONG_PRINCIPAL)
        self.assertIn("127.0.0.1", error.reason)

    @inlineCallbacks
    def test_untrusted_server_fails_with_untrusted_root(self) -> Any:
        port = s_server(self, pki().stranger_server)
        # Caught as OpenSSL.SSL.Error too, as code written for Twisted's TLS does.
        error = yield self.assertFailure(get(self.agent, f"https://localhost:{port}/"), SSL.Error)
        check_security_error(self, error, Status.UNTRUSTED_ROOT)

    @inlineCallbacks
    def test_system_roots_by_default_do_not_trust_a_private_ca(self) -> Any:
        port = s_server(self, pki().server)
        agent = agent_for(self, SchannelEndpointFactory(reactor))
        error = yield self.assertFailure(get(agent, f"https://localhost:{port}/"), SecurityError)
        check_security_error(self, error, Status.UNTRUSTED_ROOT)

    @inlineCallbacks
    def test_wrong_host_name_fails_with_wrong_principal(self) -> Any:
        port = s_server(self, pki().other_host)
        error = yield self.assertFailure(
            get(self.agent, f"https://localhost:{port}/"), SecurityError
        )
        check_security_error(self, error, Status.WRONG_PRINCIPAL)
        self.assertIn("other.test", error.reason)
        self.assertIn("localhost", error.reason)


# -- against twist web --listen schannel: -------------------------------------------------


class TwistWebTests(TestCase):
    """treq and Agent over txschannel to ``twist web --listen schannel:...``."""

    timeout = 90

    def client(self, **options: Any) -> HTTPClient:
        factory = SchannelEndpointFactory(reactor, trust_roots=pki().ca, **options)
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.addCleanup(self.pool.closeCachedConnections)
        return HTTPClient(Agent.usingEndpointFactory(reactor, factory, self.pool))

    @inlineCallbacks
    def test_treq_get_negotiates_http11_by_alpn(self) -> Any:
        port = twist_web(self, "alpn=h2,http/1.1")
        response = yield self.client().get(f"https://localhost:{port}/")
        self.assertEqual(response.code, 200)
        answer = yield response.json()
        self.assertEqual(answer["method"], "GET")
        self.assertTrue(answer["secure"])
        self.assertEqual(answer["alpn"], "http/1.1")
        self.assertEqual(answer["server_name"], "localhost")

    @inlineCallbacks
    def test_treq_post_sends_the_body(self) -> Any:
        port = twist_web(self)
        response = yield self.client().post(
            f"https://localhost:{port}/things", data=b"hello over schannel"
        )
        answer = yield treq.json_content(response)
        self.assertEqual(answer["method"], "POST")
        self.assertEqual(answer["body"], "hello over schannel")

    @inlineCallbacks
    def test_new_pooled_connection_resumes_the_session(self) -> Any:
        port = twist_web(self)
        client = self.client()
        url = f"https://localhost:{port}/"
        answer = yield (yield client.get(url)).json()
        self.assertFalse(answer["session_reused"])
        # The server keeps the connection alive: drop it so that the next
        # request needs a new one.
        yield self.pool.closeCachedConnections()
        answer = yield (yield client.get(url)).json()
        self.assertTrue(answer["session_reused"])

    @inlineCallbacks
    def test_agent_without_a_pool_resumes_the_session(self) -> Any:
        port = twist_web(self)
        # Agent's default pool is not persistent: each request asks for
        # "Connection: close", so the server's TLS 1.3 tickets, the response
        # and its close_notify arrive together.
        factory = SchannelEndpointFactory(reactor, trust_roots=pki().ca)
        client = HTTPClient(Agent.usingEndpointFactory(reactor, factory))
        url = f"https://localhost:{port}/"
        first = yield (yield client.get(url)).json()
        second = yield (yield client.get(url)).json()
        self.assertEqual(
            [(first["protocol"], first["session_reused"]),
             (second["protocol"], second["session_reused"])],
            [("TLSv1.3", False), ("TLSv1.3", True)],
        )  # fmt: skip

    @inlineCallbacks
    def test_client_certificate_reaches_a_server_that_requires_one(self) -> Any:
        port = twist_web(
            self, f"clientCA={q(pki().client_ca)}", "requireClientCertificate=yes"
        )
        client = self.client(certificate=pki().client)
        answer = yield (yield client.get(f"https://localhost:{port}/")).json()
        self.assertIn("CN=alice", answer["client"])

    @inlineCallbacks
    def test_server_refuses_a_client_without_a_certificate(self) -> Any:
        port = twist_web(
            self, f"clientCA={q(pki().client_ca)}", "requireClientCertificate=yes"
        )
        # TLS 1.3: the client's side of the handshake is complete before
        # the server judges it, so the refusal arrives with the response.
        failure = yield self.assertFailure(
            self.client().get(f"https://localhost:{port}/"), ResponseNeverReceived
        )
        (reason,) = failure.reasons
        check_security_error(self, reason.value, Status.NO_CREDENTIALS)


# -- timeouts and cancellation ---------------------------------------------------------------


class Silent(Protocol):
    """A server that accepts TCP connections, reads, and never says a word."""

    def connectionMade(self) -> None:
        self.lost: Deferred[None] = Deferred()
        self.hello: Deferred[None] = Deferred()
        self.factory.made.callback(self)  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        if not self.hello.called:
            self.hello.callback(None)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.lost.callback(None)


class HandshakeTimeoutTests(TestCase):
    """A server that never answers the ClientHello."""

    timeout = 30

    @inlineCallbacks
    def setUp(self) -> Any:
        factory = Factory.forProtocol(Silent)
        factory.made = Deferred()  # type: ignore[attr-defined]
        self.made: Deferred[Silent] = factory.made  # type: ignore[attr-defined]
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        self.url = f"https://localhost:{port.getHost().port}/".encode()

    @inlineCallbacks
    def test_silent_server_fails_with_handshake_timeout(self) -> Any:
        factory = SchannelEndpointFactory(reactor, trust_roots=pki().ca, handshake_timeout=0.3)
        agent = Agent.usingEndpointFactory(reactor, factory)
        error = yield self.assertFailure(agent.request(b"GET", self.url), HandshakeTimeout)
        self.assertIn("did not complete within 0.3 s", str(error))
        self.assertIn("localhost:", str(error))
        server = yield self.made
        yield server.lost

    @inlineCallbacks
    def test_cancelling_during_the_handshake_aborts_the_connection(self) -> Any:
        factory = SchannelEndpointFactory(reactor, trust_roots=pki().ca)
        agent = Agent.usingEndpointFactory(reactor, factory)
        request = agent.request(b"GET", self.url)
        server = yield self.made
        yield server.hello  # the ClientHello: the handshake is under way
        request.cancel()
        yield self.assertFailure(request, CancelledError)
        yield server.lost


# -- the documentation's programs ---------------------------------------------------------------


class DocumentationTests(TestCase):
    """The complete programs in docs/web.rst run against ``twist schannel`` and
    print what the page says they print."""

    timeout = 120

    def programs(self) -> list[tuple[str, str]]:
        page = (REPO / "docs" / "web.rst").read_text()
        pattern = (
            r"\.\. code-block:: python\n\n((?:    .*\n|\n)+?)"
            r"It prints:\n\n\.\. code-block:: text\n\n((?:    .*\n)+)"
        )
        found = []
        for code, printed in re.findall(pattern, page):
            code = textwrap.dedent(code)
            if code.startswith("# A complete program"):
                found.append((code, textwrap.dedent(printed)))
        return found

    def test_complete_programs_print_what_the_page_says(self) -> Any:
        programs = self.programs()
        self.assertEqual(len(programs), 2)
        port = free_port()
        twist(
            self, "schannel", "--listen",
            f"schannel:tcp:{port}:interface=127.0.0.1:certificate={q(pki().server)}"
            ":alpn=http/1.1,http/1.0",
        )  # fmt: skip
        wait_for_port(port, timeout=30)
        # Where the page says twist schannel keeps its certificate.
        home = Path(self.mktemp()).resolve()
        state = home / ".local" / "state" / "txschannel"
        state.mkdir(parents=True)
        shutil.copy(pki().ca, state / "localhost.crt")

        def run(code: str) -> Deferred[subprocess.CompletedProcess[str]]:
            from twisted.internet.threads import deferToThread

            return deferToThread(
                subprocess.run,
                [sys.executable, "-c", code.replace("8443", str(port))],
                capture_output=True, text=True, timeout=60, cwd=home, env=environment(home),
            )  # fmt: skip

        @inlineCallbacks
        def check() -> Any:
            for code, printed in programs:
                result = yield run(code)
                self.assertEqual(result.returncode, 0, result.stderr)
                self.assertEqual(result.stdout, printed, result.stderr)

        return check()

