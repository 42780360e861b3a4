"""``--allow-san TYPE:VALUE``: each rule matches only a name of its own type.

The comparison is tested on certificates built here (URI, DNS, IP and email
SANs, including the spellings an attacker would choose), then through real
``twist schannel`` processes doing mutual TLS with Python's ``ssl``.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import tempfile
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.support.peers import free_port
from tests.support.twist import Twist, assert_one_line, run_twist
from txschannel.peertext import PeerText
from txschannel.terminator.access import AccessPolicy, AllowedName, parse_allowed_name
from txschannel.terminator.options import Options
from txschannel.testing import CertificateAuthority, IssuedCertificate

SPIFFE = "spiffe://trust.example/ns/prod/sa/Admin"


def client_certificate(
    ca: CertificateAuthority, common_name: str, names: Sequence[x509.GeneralName]
) -> IssuedCertificate:
    """A client certificate signed by *ca* carrying exactly the SANs *names*."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(names)), critical=False)
    return IssuedCertificate(builder.sign(ca.private_key, hashes.SHA256()), key)


def dns(value: str) -> x509.GeneralName:
    return x509.DNSName(value)


def uri(value: str) -> x509.GeneralName:
    return x509.UniformResourceIdentifier(value)


def ip(value: str) -> x509.GeneralName:
    return x509.IPAddress(ipaddress.ip_address(value))


def email(value: str) -> x509.GeneralName:
    return x509.RFC822Name(value)


class ComparisonTests(SynchronousTestCase):
    """Which certificate names a rule matches: by type, as that type's standard compares."""

    def setUp(self) -> None:
        self.ca = CertificateAuthority()

    def admitted(self, rule: str, *names: x509.GeneralName) -> bool:
        certificate = client_certificate(self.ca, "someone", names).certificate
        return AccessPolicy((), (rule,)).refusal(certificate) is None

    def test_a_uri_path_differing_in_case_is_another_identity(self) -> None:
        self.assertTrue(self.admitted(f"uri:{SPIFFE}", uri(SPIFFE)))
        self.assertFalse(self.admitted(f"uri:{SPIFFE}", uri(SPIFFE.replace("Admin", "admin"))))
        self.assertFalse(self.admitted(f"uri:{SPIFFE.lower()}", uri(SPIFFE)))

    def test_a_uris_scheme_and_host_are_compared_without_case(self) -> None:
        self.assertTrue(self.admitted(f"uri:{SPIFFE}", uri("SPIFFE://Trust.EXAMPLE/ns/prod/sa/Admin")))
        self.assertTrue(self.admitted("URI:HTTPS://User@Host.Example:8443/A?B#C",
                                      uri("https://User@host.example:8443/A?B#C")))
        # The userinfo, query and fragment keep their case.
        self.assertFalse(self.admitted("uri:https://User@host.example/A?B",
                                       uri("https://user@host.example/A?B")))
        self.assertFalse(self.admitted("uri:https://host.example/A?B",
                                       uri("https://host.example/A?b")))

    def test_a_unicode_rule_matches_the_a_label_the_client_would_check(self) -> None:
        # xn--n3h is a snowman, which IDNA 2008 would not register but UTS 46
        # maps, as the client does for target names (docs/validation.rst).
        self.assertTrue(self.admitted("dns:\u2603.example", dns("xn--n3h.example")))
        self.assertTrue(self.admitted("dns:xn--n3h.example", dns("xn--n3h.example")))
        self.assertFalse(self.admitted("dns:\u2603.example", dns("xn--n3i.example")))

    def test_a_dns_san_holding_a_uri_matches_no_uri_rule(self) -> None:
        self.assertFalse(self.admitted(f"uri:{SPIFFE}", dns(SPIFFE)))

    def test_a_dns_san_holding_an_ip_matches_no_ip_rule(self) -> None:
        self.assertFalse(self.admitted("ip:10.0.0.7", dns("10.0.0.7")))
        self.assertTrue(self.admitted("ip:10.0.0.7", ip("10.0.0.7")))

    def test_a_uri_or_email_san_holding_a_dns_name_matches_no_dns_rule(self) -> None:
        self.assertFalse(self.admitted("dns:svc.example", uri("svc.example")))
        self.assertFalse(self.admitted("dns:svc.example", email("svc.example")))
        self.assertFalse(self.admitted("email:a@svc.example", dns("a@svc.example")))

    def test_ip_addresses_are_equal_in_any_spelling(self) -> None:
        self.assertTrue(self.admitted("ip:0:0::1", ip("::1")))
        self.assertTrue(self.admitted("ip:::1", ip("0:0:0:0:0:0:0:1")))
        self.assertTrue(self.admitted("ip:2001:DB8::A", ip("2001:db8::a")))
        # An IPv4 address and its IPv4-mapped IPv6 form are different SANs.
        self.assertFalse(self.admitted("ip:::ffff:10.0.0.7", ip("10.0.0.7")))
        self.assertFalse(self.admitted("ip:10.0.0.8", ip("10.0.0.7")))

    def test_email_domain_without_case_local_part_exactly(self) -> None:
        self.assertTrue(self.admitted("email:Alice@example.com", email("Alice@EXAMPLE.com")))
        self.assertTrue(self.admitted("email:Alice@EXAMPLE.COM", email("Alice@example.com")))
        self.assertFalse(self.admitted("email:Alice@example.com", email("alice@example.com")))
        self.assertFalse(self.admitted("email:Alice@example.com", email("example.com")))

    def test_dns_names_without_case_trailing_dot_or_unicode_spelling(self) -> None:
        self.assertTrue(self.admitted("svc.example", dns("SVC.Example")))
        self.assertTrue(self.admitted("dns:SVC.example.", dns("svc.example")))
        self.assertTrue(self.admitted("dns:bücher.example", dns("xn--bcher-kva.example")))
        self.assertTrue(self.admitted("dns:xn--bcher-kva.example", dns("XN--BCHER-KVA.example")))

    def test_a_wildcard_san_never_matches(self) -> None:
        self.assertFalse(self.admitted("dns:x.example", dns("*.example")))
        self.assertFalse(self.admitted("dns:a.x.example", dns("*.x.example")))

    def test_the_refusal_names_each_san_with_its_type_and_quotes_separators(self) -> None:
        certificate = client_certificate(self.ca, "mallory", [
            dns(SPIFFE), dns("10.0.0.7"), uri(SPIFFE.replace("Admin", "admin")),
            ip("::1"), email("alice@example.com"),
            dns("a, uri:x\n"), x509.RegisteredID(x509.ObjectIdentifier("1.2.3")),
        ]).certificate
        why = AccessPolicy((), (f"uri:{SPIFFE}", "ip:10.0.0.7")).refusal(certificate)
        assert why is not None
        self.assertIn(
            f"SAN dns:{SPIFFE}, dns:10.0.0.7, uri:{SPIFFE.replace('Admin', 'admin')}, "
            'ip:::1, email:alice@example.com, dns:"a, uri:x\n", 1 of other types)', why
        )
        self.assertIn(f"matches none of --allow-san uri:{SPIFFE}, ip:10.0.0.7", why)
        # The log line escapes what is not printable: one line, always.
        self.assertIn('dns:"a, uri:x\\x0a"', f"{PeerText(why)}")


class RuleFormTests(SynchronousTestCase):
    """How --allow-san values are read; values no SAN could rightly match are refused."""

    def test_typed_values_in_their_compared_form(self) -> None:
        self.assertEqual(parse_allowed_name("DNS:Svc.Example"), AllowedName("dns", "svc.example"))
        self.assertEqual(parse_allowed_name("svc.example"), AllowedName("dns", "svc.example"))
        self.assertEqual(parse_allowed_name("Ip:0:0::1"), AllowedName("ip", "::1"))
        self.assertEqual(parse_allowed_name("email:Bob@Example.COM"),
                         AllowedName("email", "Bob@example.com"))
        self.assertEqual(parse_allowed_name("uri:urn:uuid:ABC"), AllowedName("uri", "urn:uuid:ABC"))

    def test_untyped_values_that_are_no_dns_name_are_refused_with_the_typed_form(self) -> None:
        for value, hint in [
            (SPIFFE, f"uri:{SPIFFE}"),
            ("10.0.0.7", "ip:10.0.0.7"),
            ("::1", "ip:::1"),
            ("alice@example.com", "email:alice@example.com"),
            ("dns:10.0.0.7", "ip:10.0.0.7"),
            (f"dns:{SPIFFE}", f"uri:{SPIFFE}"),
            ("IP Address:10.0.0.7", "ip:10.0.0.7"),
        ]:
            error = self.assertRaises(ValueError, parse_allowed_name, value)
            self.assertIn(hint, str(error), value)

    def test_bad_values_are_refused(self) -> None:
        for value, needle in [
            ("", "expected TYPE:VALUE"),
            ("ip:notanip", "'notanip' is not an IP address"),
            ("foo:bar", "unknown type 'foo'"),
            ("dns:", "needs a value"),
            ("dns:*.example", "wildcards are not patterns"),
            ("dns:a b.example", "not a valid DNS name"),
            ("uri:no-scheme", "needs a scheme"),
            ("uri:spiffe://x/a b", "not a URI"),
            ("email:nobody", "not an email address"),
            ("dirName:CN=x", "only dns, uri, ip and email"),
        ]:
            error = self.assertRaises(ValueError, parse_allowed_name, value)
            self.assertIn(needle, str(error), value)


class BadRuleProcessTests(SynchronousTestCase):
    """A bad --allow-san stops twist schannel with one line naming the option (status 64)."""

    def assertRefused(self, value: str, needle: str) -> None:
        result = run_twist("--allow-san", value)
        assert_one_line(self, result, f"--allow-san {value!r}: {needle}")
        self.assertEqual(result.returncode, 64)

    def test_an_untyped_uri(self) -> None:
        self.assertRefused(SPIFFE, f"unknown type 'spiffe': expected dns, uri, ip or email "
                                   f"(a URI is written uri:{SPIFFE})")

    def test_an_untyped_ip_address(self) -> None:
        self.assertRefused("10.0.0.7", "an IP address: write ip:10.0.0.7")

    def test_not_an_ip(self) -> None:
        self.assertRefused("ip:notanip", "'notanip' is not an IP address")

    def test_an_unknown_type(self) -> None:
        self.assertRefused("foo:bar", "unknown type 'foo'")

    def test_empty(self) -> None:
        self.assertRefused("", "expected TYPE:VALUE")


def fetch(port: int, folder: Path, client: str) -> bytes | None:
    """The inspector's answer to *client* (a PEM in *folder*), or None when refused."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(folder / "ca.pem")
    context.load_cert_chain(folder / f"{client}.pem")
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=20) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
                answer = b""
                while chunk := tls.recv(65536):
                    answer += chunk
    except (ConnectionError, ssl.SSLError):
        return None
    return answer if answer.startswith(b"HTTP/1.") else None


class TypedRuleProcessTests(TestCase):
    """Mutual TLS through a real twist schannel: the attacks of issue 19 are refused."""

    def setUp(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="txschannel-access-"))
        ca = CertificateAuthority()
        ca.write(self.folder / "ca.pem")
        ca.issue("localhost", "127.0.0.1").write(self.folder / "server.pem")
        clients = {
            "spiffe": [uri(SPIFFE)],
            "spiffe-upper": [uri("SPIFFE://TRUST.example/ns/prod/sa/Admin")],
            "spiffe-lower-path": [uri(SPIFFE.replace("Admin", "admin"))],
            "dns-holding-uri": [dns(SPIFFE)],
            "dns-holding-ip": [dns("10.0.0.7")],
            "ip": [ip("10.0.0.7")],
            "ipv6-long": [ip("0:0:0:0:0:0:0:1")],
            "email-domain-case": [email("Alice@EXAMPLE.COM")],
            "email-local-case": [email("alice@example.com")],
            "wildcard": [dns("*.example")],
        }
        for name, names in clients.items():
            client_certificate(ca, name, names).write(self.folder / f"{name}.pem")
        self.port = free_port()
        self.twist = Twist(
            self,
            "--listen",
            f"schannel:tcp:{self.port}:interface=127.0.0.1:certificate={self.folder}/server.pem"
            f":clientCA={self.folder}/ca.pem:requireClientCertificate=yes",
            "--allow-san", f"uri:{SPIFFE}",
            "--allow-san", "ip:10.0.0.7",
            "--allow-san", "ip:::1",
            "--allow-san", "email:Alice@example.com",
            "--allow-san", "dns:x.example",
        )
        self.twist.wait_for("listening on")

    def assertAdmitted(self, client: str) -> None:
        answer = fetch(self.port, self.folder, client)
        self.assertIsNotNone(answer, client)
        self.assertIn(f"CN={client}".encode(), answer or b"")

    def assertRefused(self, client: str, sans: str) -> None:
        self.assertIsNone(fetch(self.port, self.folder, client), client)
        line = self.twist.wait_for(rf"refused 127\.0\.0\.1:\d+: client certificate CN={client} .*")
        self.assertIn(f"(CN {client}; SAN {sans}) matches none of --allow-san uri:{SPIFFE}, "
                      "ip:10.0.0.7, ip:::1, email:Alice@example.com, dns:x.example", line.group())

    def test_the_named_identities_pass_in_any_equal_spelling(self) -> None:
        for client in ("spiffe", "spiffe-upper", "ip", "ipv6-long", "email-domain-case"):
            self.assertAdmitted(client)

    def test_a_spiffe_id_differing_in_case_is_refused(self) -> None:
        self.assertRefused("spiffe-lower-path", f"uri:{SPIFFE.replace('Admin', 'admin')}")

    def test_a_dns_san_holding_the_uri_is_refused(self) -> None:
        self.assertRefused("dns-holding-uri", f"dns:{SPIFFE}")

    def test_a_dns_san_holding_the_ip_is_refused(self) -> None:
        self.assertRefused("dns-holding-ip", "dns:10.0.0.7")

    def test_an_email_local_part_differing_in_case_is_refused(self) -> None:
        self.assertRefused("email-local-case", "email:alice@example.com")

    def test_a_wildcard_san_is_refused(self) -> None:
        self.assertRefused("wildcard", "dns:*.example")


class UntypedRuleTests(SynchronousTestCase):
    """An untyped value stays a DNS name, so today's --allow-san NAME keeps working."""

    def test_an_untyped_name_is_a_dns_rule(self) -> None:
        options = Options()
        options.opt_allow_san("Client.Example.com")
        self.assertEqual(options["allow-san"], [AllowedName("dns", "client.example.com")])
