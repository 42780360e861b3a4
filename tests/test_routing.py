"""``twist schannel --route NAME=ENDPOINT``: the backend chosen by the server name.

Real ``twist schannel`` processes, real backends (Python processes that
say who they are), and real clients: curl, ``openssl s_client`` and
Python's ``ssl``.
"""

from __future__ import annotations

import signal
import socket
import ssl
import subprocess

from cryptography.hazmat.primitives import serialization
from twisted.trial.unittest import SynchronousTestCase

from tests.support.edges import Edge
from tests.support.peers import LISTENER, free_port, require
from tests.support.twist import Twist, assert_one_line, curl, run_twist
from txschannel.terminator.routing import Route, Router, normalize_route_name

#: A first label of 243 characters: with ".b.localhost", 255 characters,
#: the most a server_name extension may carry (OpenSSL's own limit).
LONG_LABEL = "a" * 243

#: Answers every connection with an HTTP response whose body is argv[2].
NAMED = LISTENER + """
while True:
    connection, _ = server.accept()
    with connection:
        try:
            connection.settimeout(10)
            connection.recv(65536)
            body = sys.argv[2].encode()
            connection.sendall(
                b"HTTP/1.0 200 OK\\r\\nContent-Length: %d\\r\\n\\r\\n%s" % (len(body), body)
            )
        except OSError:
            pass
"""


class RoutingTests(Edge):
    """Each server name reaches its own backend; --connect takes the rest."""

    def setUp(self) -> None:
        super().setUp()
        self.ca.issue(
            "localhost", "a.localhost", "*.b.localhost", "c.localhost", "x.y.b.localhost"
        ).write(self.folder / "server.pem")
        self.backends = {name: self.backend(NAMED, name) for name in ("A", "B", "default")}

    def start(self, *routes: str, connect: bool = True) -> tuple[Twist, int]:
        port = free_port()
        arguments = [
            "--listen",
            f"schannel:tcp:{port}:interface=127.0.0.1:certificate={self.folder}/server.pem",
            *routes,
        ]
        if connect:
            arguments += ["--connect", f"tcp:127.0.0.1:{self.backends['default']}"]
        twist = Twist(self, *arguments)
        twist.wait_for("listening on")
        return twist, port

    def routes(self) -> list[str]:
        return [
            "--route", f"A.localhost.=tcp:127.0.0.1:{self.backends['A']}",
            "--route", f"*.b.localhost=tcp:127.0.0.1:{self.backends['B']}",
        ]

    def fetch(self, port: int, name: str) -> subprocess.CompletedProcess[bytes]:
        return curl(
            "--cacert", str(self.folder / "ca.pem"),
            "--resolve", f"{name}:{port}:127.0.0.1", f"https://{name}:{port}/",
        )

    def test_curl_reaches_the_backend_of_each_name(self) -> None:
        twist, port = self.start(*self.routes())
        answers = {name: self.fetch(port, name) for name in (
            "a.localhost", "one.b.localhost", "x.y.b.localhost", "c.localhost", "localhost"
        )}
        bodies = {name: result.stdout for name, result in answers.items()}
        self.assertEqual(bodies, {
            "a.localhost": b"A",
            "one.b.localhost": b"B",
            # A wildcard is one label, as in certificates.
            "x.y.b.localhost": b"default",
            "c.localhost": b"default",
            "localhost": b"default",
        }, {name: result.stderr for name, result in answers.items()})
        twist.wait_for(r"relaying server name a\.localhost to tcp:127")

    def test_an_unknown_name_without_a_default_gets_unrecognized_name(self) -> None:
        require("openssl")
        twist, port = self.start(*self.routes(), connect=False)
        self.assertEqual(self.fetch(port, "a.localhost").stdout, b"A")
        for server_name in (["-servername", "c.localhost"], ["-noservername"]):
            result = subprocess.run(
                ["openssl", "s_client", "-connect", f"127.0.0.1:{port}",
                 "-CAfile", str(self.folder / "ca.pem"), *server_name],
                input=b"", capture_output=True, timeout=30,
            )
            self.assertIn(b"unrecognized name", result.stdout + result.stderr, server_name)
        # Python's ssl names the alert too.
        context = ssl.create_default_context(cafile=str(self.folder / "ca.pem"))
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with self.assertRaises(ssl.SSLError) as caught:
                context.wrap_socket(raw, server_hostname="c.localhost")
        self.assertIn("UNRECOGNIZED_NAME", str(caught.exception))
        twist.wait_for(r"connection closed .*reason=.*TLS error")
        twist.wait_for(
            r"refused server name 'c\.localhost' with unrecognized_name: no --route matches "
            r"it and there is no --connect \(1 refusal"
        )
        # A refusal is not an error: no traceback per client.
        self.assertNotIn("Traceback", twist.output)
        self.assertNotIn("UnrecognizedName", twist.output)

    def test_the_refusal_survives_a_reload(self) -> None:
        twist, port = self.start(*self.routes(), connect=False)
        twist.send_signal(signal.SIGHUP)
        twist.wait_for("SIGHUP: reloaded")
        self.assertEqual(self.fetch(port, "one.b.localhost").stdout, b"B")
        result = self.fetch(port, "c.localhost")
        self.assertNotEqual(result.returncode, 0)
        self.assertIn(b"unrecognized name", result.stderr.lower())

    def test_an_sni_folder_still_picks_the_certificate(self) -> None:
        sites = self.folder / "sites"
        sites.mkdir()
        other = self.ca.issue("a.localhost")
        other.write(sites / "a.localhost.pem")
        self.ca.issue("localhost").write(sites / "DEFAULT.pem")
        port = free_port()
        twist = Twist(
            self, "--listen", f"schannel:tcp:{port}:interface=127.0.0.1:sni={sites}",
            *self.routes(),
        )
        twist.wait_for("listening on")
        context = ssl.create_default_context(cafile=str(self.folder / "ca.pem"))
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="a.localhost") as tls:
                served = tls.getpeercert(binary_form=True)
                tls.sendall(b"GET / HTTP/1.0\r\n\r\n")
                answer = tls.recv(65536)
        self.assertEqual(served, other.certificate.public_bytes(serialization.Encoding.DER))
        self.assertTrue(answer.endswith(b"A"), answer)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with self.assertRaises(ssl.SSLError):
                context.wrap_socket(raw, server_hostname="c.localhost")

    def test_names_no_certificate_could_carry_are_refused(self) -> None:
        # openssl s_client sends each name as it is given.
        require("openssl")
        twist, port = self.start(*self.routes(), connect=False)
        # The routes themselves work, one trailing dot (the DNS root) included.
        self.assertIn(b"Verify return code", s_client(port, "one.b.localhost"))
        self.assertNotIn(b"unrecognized name", s_client(port, "one.b.localhost"))
        self.assertNotIn(b"unrecognized name", s_client(port, "a.localhost."))
        for name in (
            ".b.localhost",            # an empty first label under the wildcard
            "*.b.localhost",           # the wildcard itself, literally
            f"{LONG_LABEL}.b.localhost",  # a first label of 243 characters
            "a.localhost..",           # two trailing dots: an empty label
            "one..b.localhost",
            "one_x.b.localhost",
        ):
            self.assertIn(b"unrecognized name", s_client(port, name), name)
        # (said once: refusals are logged at most once every 10 seconds)
        twist.wait_for(r"refused .*\.b\.localhost")
        self.assertNotIn("Traceback", twist.output)

    def test_names_no_certificate_could_carry_go_to_the_default(self) -> None:
        require("openssl")
        twist, port = self.start(*self.routes())
        request = b"GET / HTTP/1.0\r\n\r\n"
        for name, body in (
            ("one.b.localhost", b"B"),
            ("a.localhost.", b"A"),
            (".b.localhost", b"default"),
            ("*.b.localhost", b"default"),
            (f"{LONG_LABEL}.b.localhost", b"default"),
            ("a.localhost..", b"default"),
        ):
            self.assertIn(b"\r\n\r\n" + body, s_client(port, name, request), name)
        self.assertNotIn("Traceback", twist.output)


def s_client(port: int, server_name: str, request: bytes = b"") -> bytes:
    """What ``openssl s_client`` prints after offering *server_name* as it is
    (and sending *request*, then waiting for the server to close)."""
    result = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", server_name,
         *(["-ign_eof"] if request else [])],
        input=request, capture_output=True, timeout=30,
    )
    return result.stdout + result.stderr


class MatchingTests(SynchronousTestCase):
    """Router.pick: which route a server name, as a client sent it, gets."""

    def setUp(self) -> None:
        from twisted.internet import reactor
        from twisted.internet.endpoints import clientFromString

        def route(name: str) -> Route:
            return Route(name, name, clientFromString(reactor, "tcp:127.0.0.1:1"))

        self.exact = route("a.example.com")
        self.wildcard = route("*.example.com")
        self.default = route("default")
        self.router = Router([self.exact, self.wildcard], None)
        self.defaulted = Router([self.exact, self.wildcard], self.default)

    def picked(self, name: str | None) -> str | None:
        route = self.router.pick(name)
        # With a default, whatever matches no route gets the default.
        self.assertIs(self.defaulted.pick(name), route or self.default)
        return None if route is None else route.description

    def test_names_a_certificate_would_match(self) -> None:
        self.assertEqual(self.picked("a.example.com"), "a.example.com")
        self.assertEqual(self.picked("A.Example.COM"), "a.example.com")
        self.assertEqual(self.picked("b.example.com"), "*.example.com")
        self.assertEqual(self.picked("xn--bcher-kva.example.com"), "*.example.com")
        self.assertEqual(self.picked("b-1.example.com"), "*.example.com")
        self.assertEqual(self.picked("b" * 63 + ".example.com"), "*.example.com")

    def test_one_trailing_dot_is_the_root(self) -> None:
        self.assertEqual(self.picked("a.example.com."), "a.example.com")
        self.assertEqual(self.picked("b.example.com."), "*.example.com")

    def test_names_no_certificate_would_match(self) -> None:
        for name in (
            None, "", ".",
            "example.com", "x.b.example.com",  # a wildcard is one label
            ".example.com", "*.example.com", "**.example.com", "b*.example.com",
            "b" * 64 + ".example.com", LONG_LABEL + ".example.com",
            "a.example.com..", "b.example.com..", "a..example.com", ".a.example.com",
            "b_c.example.com", "-b.example.com", "b-.example.com", "b c.example.com",
            "b.example.com\n", "b\x00.example.com", "\u212a.example.com", "b\ufffd.example.com",
        ):
            self.assertIsNone(self.picked(name), name)

    def test_length(self) -> None:
        label = "c" * 63
        # 63 + 1 + 63 + 1 + 63 + 1 + 61 = 253 characters: the most there is.
        parent = f"{label}.{label}.{'d' * 61}"
        route = Route(normalize_route_name(f"*.{parent}"), "long", self.default.endpoint)
        router = Router([route], None)
        longest = f"{label}.{parent}"
        self.assertEqual(len(longest), 253)
        self.assertIs(router.pick(longest), route)
        self.assertIs(router.pick(longest + "."), route)
        self.assertIsNone(router.pick("c" + longest))

    def test_an_ip_address_matches_nothing(self) -> None:
        route = Route("*.0.0.1", "numbers", self.default.endpoint)
        router = Router([route], None)
        self.assertIsNone(router.pick("127.0.0.1"))
        self.assertIs(router.pick("a.0.0.1"), route)


class RouteNameTests(SynchronousTestCase):
    """normalize_route_name: the names --route accepts, and in which form."""

    def test_accepted(self) -> None:
        self.assertEqual(normalize_route_name("API.Example.com."), "api.example.com")
        self.assertEqual(normalize_route_name("*.Example.com"), "*.example.com")
        self.assertEqual(normalize_route_name("bücher.example"), "xn--bcher-kva.example")
        label = "c" * 63
        self.assertEqual(len(normalize_route_name(f"{label}.{label}.{label}.{'d' * 61}")), 253)
        self.assertEqual(len(normalize_route_name(f"*.{label}.{label}.{label}.{'d' * 59}")), 253)

    def test_refused(self) -> None:
        label = "c" * 63
        for name, needle in (
            ("", "expected a server name"),
            (".", "expected a server name"),
            ("example.com..", "empty labels"),
            (".example.com", "empty labels"),
            ("a..example.com", "empty labels"),
            ("*..example.com", "empty labels"),
            ("*.", "wildcard"),
            ("*", "wildcard"),
            ("a.*.example.com", "wildcard"),
            ("b*.example.com", "wildcard"),
            ("c" * 64 + ".example.com", "at most 63 characters"),
            (f"{label}.{label}.{label}.{'d' * 62}", "at most 253 characters"),
            (f"*.{label}.{label}.{label}.{'d' * 60}", "at most 253 characters"),
            ("a_b.example.com", "letters, digits and hyphens"),
            ("a\n.example.com", "letters, digits and hyphens"),
            ("-a.example.com", "letters, digits and hyphens"),
            ("10.0.0.1", "IP address"),
            ("::1", "IP address"),
        ):
            with self.assertRaises(ValueError, msg=repr(name)) as caught:
                normalize_route_name(name)
            self.assertIn(needle, str(caught.exception), repr(name))


class BadRouteTests(SynchronousTestCase):
    """A route that can never work is one line naming it, exit status 64."""

    def assertRefused(self, needle: str, *arguments: str) -> None:
        result = run_twist(*arguments)
        assert_one_line(self, result, needle)
        self.assertEqual(result.returncode, 64)

    def test_forms(self) -> None:
        self.assertRefused("--route 'api.example'", "--route", "api.example")
        self.assertRefused("expected a server name", "--route", "=tcp:127.0.0.1:1")
        self.assertRefused("wildcard", "--route", "a.*.example=tcp:127.0.0.1:1")
        self.assertRefused("IP address", "--route", "10.0.0.1=tcp:127.0.0.1:1")
        self.assertRefused("empty labels", "--route", "example.com..=tcp:127.0.0.1:1")
        self.assertRefused("empty labels", "--route", ".example.com=tcp:127.0.0.1:1")
        self.assertRefused("empty labels", "--route", "*..example.com=tcp:127.0.0.1:1")
        self.assertRefused("63 characters", "--route", f"*.{'a' * 64}.example=tcp:127.0.0.1:1")
        self.assertRefused(
            "253 characters", "--route", f"{'.'.join(['a' * 63] * 4)}=tcp:127.0.0.1:1"
        )
        self.assertRefused("--route 'a.example=nosuch:1'", "--route", "a.example=nosuch:1")
        self.assertRefused(
            "a.example has a route already",
            "--route", "a.example=tcp:127.0.0.1:1", "--route", "A.example.=tcp:127.0.0.1:2",
        )

    def test_a_plain_listener_needs_a_default(self) -> None:
        self.assertRefused(
            "add --connect",
            "--listen", f"tcp:{free_port()}:interface=127.0.0.1",
            "--route", "a.example=tcp:127.0.0.1:1",
        )
