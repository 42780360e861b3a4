"""Certificate validation corpus: each bad certificate gets its exact Status.

Client and server are real OpenSSL connections (txschannel contexts) talking
through memory: no sockets are needed to judge a certificate, and none of the
TLS is faked. Every case runs over TLS 1.2 and TLS 1.3, because the two
protocols verify at different points of the handshake and send the alert
differently (in the clear, or encrypted).

Each case checks three things: the status the client raises, that its
reason names the problem, and the status the *server* raises on receiving
the client's alert (the design maps received alerts the same way).
"""

from __future__ import annotations

import datetime
from functools import cache

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.support import certs
from tests.support.handshake import Outcome, judged_handshake
from txschannel import (
    Credentials,
    SecurityError,
    Status,
    TrustStore,
    _openssl,
    verify_server_chain,
)

VERSIONS = ("TLSv1.2", "TLSv1.3")
NOW = datetime.datetime.now(datetime.timezone.utc)
DAY = datetime.timedelta(days=1)


@cache
def pki() -> dict[str, certs.Issued]:
    """One root, an intermediate below it, and a name-constrained intermediate."""
    root = certs.authority("corpus root")
    intermediate = certs.authority("corpus intermediate", issuer=root)
    constrained = certs.authority(
        "constrained intermediate",
        issuer=root,
        permitted=["example.com", "127.0.0.0/8"],
        excluded=["forbidden.example.com"],
    )
    stranger = certs.authority("a root nobody trusts")
    return {
        "root": root,
        "intermediate": intermediate,
        "constrained": constrained,
        "stranger": stranger,
    }


def client_credentials(version: str, **options: object) -> Credentials:
    return Credentials.client(
        trust_roots=[pki()["root"].certificate],
        minimum_version=version,
        maximum_version=version,
        **options,  # type: ignore[arg-type]
    )


def server_credentials(identity: certs.Issued, **options: object) -> Credentials:
    return Credentials.server(certificate=identity.chain_pem, **options)  # type: ignore[arg-type]


class ServerCertificateTests(SynchronousTestCase):
    """The client judges the server's certificate (``validation="cryptography"``,
    the default; :class:`OpenSSLValidationTests` runs the same with
    ``"openssl"``)."""

    validation = "cryptography"

    def client_credentials(self, version: str, **options: object) -> Credentials:
        return client_credentials(version, validation=self.validation, **options)

    def assertAccepted(self, identity: certs.Issued, target: str) -> None:
        for version in VERSIONS:
            outcome = judged_handshake(
                self.client_credentials(version), server_credentials(identity), target
            )
            self.assertIsNone(outcome.client_error, f"{version}: {outcome.client_error!r}")
            self.assertIsNone(outcome.server_error, f"{version}: {outcome.server_error!r}")
            self.assertTrue(outcome.client.established, version)
            self.assertEqual(outcome.client.attributes.protocol, version)

    def assertRejected(
        self,
        identity: certs.Issued,
        target: str,
        status: Status,
        words: str,
        server_status: Status,
    ) -> None:
        """The client fails with *status* and a reason containing *words*,
        and the server, on the client's alert, fails with *server_status*."""
        for version in VERSIONS:
            outcome = judged_handshake(
                self.client_credentials(version), server_credentials(identity), target
            )
            error = outcome.client_error
            self.assertIsNotNone(error, f"{version}: the client accepted the certificate")
            assert error is not None
            self.assertEqual(error.status, status, f"{version}: {error!r}")
            self.assertIn(words, error.reason, f"{version}: {error!r}")
            self.assertTrue(error.token, f"{version}: no alert for the server")
            self.assertFalse(outcome.client.established)
            server_error = outcome.server_error
            self.assertIsNotNone(server_error, f"{version}: the server ignored the alert")
            assert server_error is not None
            if _openssl.FAST:
                # (The public path cannot choose the alert: docs/context.rst.)
                self.assertEqual(
                    server_error.status, server_status, f"{version}: {server_error!r}"
                )
            # A dead context says so, instead of carrying on.
            with self.assertRaises(SecurityError) as raised:
                outcome.client.initialize(b"")
            self.assertEqual(raised.exception.status, Status.INVALID_HANDLE)

    # -- the control ----------------------------------------------------

    def test_valid_chain_through_an_intermediate_is_accepted(self) -> None:
        self.assertAccepted(certs.leaf(pki()["intermediate"], ["localhost"]), "localhost")

    def test_peer_chain_is_reported_leaf_first(self) -> None:
        identity = certs.leaf(pki()["intermediate"], ["localhost"])
        outcome = judged_handshake(
            self.client_credentials("TLSv1.3"), server_credentials(identity), "localhost"
        )
        attributes = outcome.client.attributes
        self.assertEqual(attributes.peer_certificate, identity.certificate)
        self.assertEqual(
            attributes.peer_chain[:2], (identity.certificate, pki()["intermediate"].certificate)
        )

    # -- validity period ------------------------------------------------

    def test_expired_leaf_is_cert_expired(self) -> None:
        identity = certs.leaf(
            pki()["intermediate"], ["localhost"], not_before=NOW - 10 * DAY, not_after=NOW - DAY
        )
        self.assertRejected(identity, "localhost", Status.CERT_EXPIRED, "expired",
                            Status.CERT_EXPIRED)

    def test_not_yet_valid_leaf_is_cert_expired(self) -> None:
        # SSPI has one status for "outside its validity period" (CERT_E_EXPIRED).
        identity = certs.leaf(
            pki()["intermediate"], ["localhost"], not_before=NOW + DAY, not_after=NOW + 10 * DAY
        )
        self.assertRejected(identity, "localhost", Status.CERT_EXPIRED, "not yet valid",
                            Status.CERT_UNKNOWN)

    def test_expired_intermediate_is_cert_expired(self) -> None:
        stale = certs.authority(
            "expired intermediate", issuer=pki()["root"],
            not_before=NOW - 10 * DAY, not_after=NOW - DAY,
        )
        self.assertRejected(certs.leaf(stale, ["localhost"]), "localhost", Status.CERT_EXPIRED,
                            "expired", Status.CERT_EXPIRED)

    def test_expired_root_is_cert_expired(self) -> None:
        old = certs.authority("expired root", not_before=NOW - 10 * DAY, not_after=NOW - DAY)
        identity = certs.leaf(certs.authority("under an expired root", issuer=old),
                              ["localhost"])
        for version in VERSIONS:
            credentials = Credentials.client(
                trust_roots=[old.certificate], minimum_version=version, maximum_version=version,
                validation=self.validation,
            )
            outcome = judged_handshake(credentials, server_credentials(identity), "localhost")
            error = outcome.client_error
            self.assertIsNotNone(error, version)
            assert error is not None
            self.assertEqual(error.status, Status.CERT_EXPIRED, f"{version}: {error!r}")
            self.assertIn("expired root", error.reason)

    # -- names ----------------------------------------------------------

    def test_wrong_host_is_wrong_principal(self) -> None:
        identity = certs.leaf(pki()["intermediate"], ["www.example.org"])
        self.assertRejected(identity, "localhost", Status.WRONG_PRINCIPAL, "localhost",
                            Status.CERT_UNKNOWN)

    def test_common_name_without_san_is_wrong_principal(self) -> None:
        # RFC 6125: the subject CN is not consulted once SANs are the rule.
        identity = certs.leaf(pki()["intermediate"], [], common_name="localhost")
        self.assertRejected(identity, "localhost", Status.WRONG_PRINCIPAL, "localhost",
                            Status.CERT_UNKNOWN)

    def test_wildcard_matches_one_label(self) -> None:
        self.assertAccepted(certs.leaf(pki()["intermediate"], ["*.example.com"]), "a.example.com")

    def test_wildcard_does_not_match_two_labels(self) -> None:
        identity = certs.leaf(pki()["intermediate"], ["*.example.com"])
        self.assertRejected(identity, "a.b.example.com", Status.WRONG_PRINCIPAL,
                            "a.b.example.com", Status.CERT_UNKNOWN)

    def test_wildcard_does_not_match_the_bare_domain(self) -> None:
        identity = certs.leaf(pki()["intermediate"], ["*.example.com"])
        self.assertRejected(identity, "example.com", Status.WRONG_PRINCIPAL, "example.com",
                            Status.CERT_UNKNOWN)

    def test_host_name_match_ignores_case(self) -> None:
        self.assertAccepted(certs.leaf(pki()["intermediate"], ["www.example.com"]),
                            "WWW.Example.COM")

    def test_partial_wildcard_matches_nothing(self) -> None:
        # RFC 6125 allows refusing "w*.example.com"; browsers and OpenSSL's
        # X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS do.
        identity = certs.leaf(pki()["intermediate"], ["w*.example.com"])
        self.assertRejected(identity, "www.example.com", Status.WRONG_PRINCIPAL,
                            "www.example.com", Status.CERT_UNKNOWN)

    def test_internationalised_name_matches_its_a_label(self) -> None:
        self.assertAccepted(certs.leaf(pki()["intermediate"], ["xn--bcher-kva.example"]),
                            "bücher.example")

    def test_internationalised_name_match_ignores_case(self) -> None:
        self.assertAccepted(certs.leaf(pki()["intermediate"], ["xn--bcher-kva.example"]),
                            "BÜCHER.example")

    def test_fully_qualified_target_with_trailing_dot_matches(self) -> None:
        # "localhost." and "localhost" are the same name (RFC 6125 section 6.2.1).
        self.assertAccepted(certs.leaf(pki()["intermediate"], ["localhost"]), "localhost.")

    def test_ipv4_san_matches_its_address(self) -> None:
        self.assertAccepted(certs.leaf(pki()["intermediate"], ["127.0.0.1"]), "127.0.0.1")

    def test_ipv6_san_matches_its_address(self) -> None:
        self.assertAccepted(certs.leaf(pki()["intermediate"], ["::1"]), "::1")

    def test_ipv6_san_matches_any_spelling_of_its_address(self) -> None:
        self.assertAccepted(certs.leaf(pki()["intermediate"], ["::1"]), "0:0:0:0:0:0:0:1")

    def test_ipv4_san_does_not_match_another_address(self) -> None:
        identity = certs.leaf(pki()["intermediate"], ["127.0.0.1"])
        self.assertRejected(identity, "127.0.0.2", Status.WRONG_PRINCIPAL, "127.0.0.2",
                            Status.CERT_UNKNOWN)

    def test_ipv6_san_does_not_match_another_address(self) -> None:
        identity = certs.leaf(pki()["intermediate"], ["::1"])
        self.assertRejected(identity, "::2", Status.WRONG_PRINCIPAL, "::2", Status.CERT_UNKNOWN)

    def test_address_written_as_dns_name_does_not_match_an_ip_target(self) -> None:
        # A dNSName of "127.0.0.1" is not an iPAddress SAN; RFC 6125 forbids the match.
        identity = certs.leaf(pki()["intermediate"], ["localhost"], common_name="127.0.0.1")
        self.assertRejected(identity, "127.0.0.1", Status.WRONG_PRINCIPAL, "127.0.0.1",
                            Status.CERT_UNKNOWN)

    def test_ip_san_does_not_match_a_host_name_target(self) -> None:
        identity = certs.leaf(pki()["intermediate"], ["127.0.0.1"])
        self.assertRejected(identity, "localhost", Status.WRONG_PRINCIPAL, "localhost",
                            Status.CERT_UNKNOWN)

    # -- chains and trust -----------------------------------------------

    def test_missing_intermediate_is_untrusted_root(self) -> None:
        identity = certs.leaf(pki()["intermediate"], ["localhost"])
        identity.chain = []  # the server forgets to send its intermediate
        self.assertRejected(identity, "localhost", Status.UNTRUSTED_ROOT, "issuer",
                            Status.UNTRUSTED_ROOT)

    def test_untrusted_root_is_untrusted_root(self) -> None:
        identity = certs.leaf(pki()["stranger"], ["localhost"])
        self.assertRejected(identity, "localhost", Status.UNTRUSTED_ROOT, "issuer",
                            Status.UNTRUSTED_ROOT)

    def test_untrusted_root_sent_in_the_chain_is_untrusted_root(self) -> None:
        identity = certs.leaf(pki()["stranger"], ["localhost"])
        identity.chain = [pki()["stranger"].certificate]
        self.assertRejected(identity, "localhost", Status.UNTRUSTED_ROOT, "self-signed",
                            Status.UNTRUSTED_ROOT)

    def test_self_signed_leaf_is_untrusted_root(self) -> None:
        self.assertRejected(certs.leaf(None, ["localhost"]), "localhost", Status.UNTRUSTED_ROOT,
                            "self-signed", Status.UNTRUSTED_ROOT)

    def test_self_signed_leaf_that_is_trusted_is_accepted(self) -> None:
        # The way `twist schannel`'s own certificate is used with --cacert.
        identity = certs.leaf(None, ["localhost"])
        credentials = Credentials.client(
            trust_roots=[identity.certificate], validation=self.validation
        )
        outcome = judged_handshake(credentials, server_credentials(identity), "localhost")
        self.assertIsNone(outcome.client_error)
        self.assertTrue(outcome.client.established)

    def test_ca_certificate_as_leaf_is_cert_unknown(self) -> None:
        identity = certs.leaf(pki()["intermediate"], ["localhost"], ca=True)
        self.assertRejected(identity, "localhost", Status.CERT_UNKNOWN, "CA",
                            Status.CERT_UNKNOWN)

    def test_leaf_issued_by_a_leaf_is_cert_unknown(self) -> None:
        # An end-entity certificate (cA=FALSE) cannot sign another certificate.
        middle = certs.leaf(pki()["intermediate"], ["middle.example.com"])
        identity = certs.leaf(middle, ["localhost"])
        # OpenSSL tells the server "unknown_ca" for an invalid CA, hence its status.
        self.assertRejected(identity, "localhost", Status.CERT_UNKNOWN, "CA",
                            Status.UNTRUSTED_ROOT)

    def test_certificate_for_clients_only_is_cert_unknown(self) -> None:
        identity = certs.leaf(pki()["intermediate"], ["localhost"], usages=("client",))
        self.assertRejected(identity, "localhost", Status.CERT_UNKNOWN, "purpose",
                            Status.CERT_UNKNOWN)

    # -- name constraints -----------------------------------------------

    def test_constrained_intermediate_may_issue_inside_its_subtree(self) -> None:
        self.assertAccepted(certs.leaf(pki()["constrained"], ["www.example.com"]),
                            "www.example.com")

    def test_constrained_intermediate_issuing_outside_its_subtree_is_cert_unknown(self) -> None:
        identity = certs.leaf(pki()["constrained"], ["www.example.org"])
        self.assertRejected(identity, "www.example.org", Status.CERT_UNKNOWN, "subtree violation",
                            Status.CERT_UNKNOWN)

    def test_constrained_intermediate_issuing_in_an_excluded_subtree_is_cert_unknown(
        self,
    ) -> None:
        identity = certs.leaf(pki()["constrained"], ["www.forbidden.example.com"])
        self.assertRejected(identity, "www.forbidden.example.com", Status.CERT_UNKNOWN,
                            "subtree violation", Status.CERT_UNKNOWN)

    def test_constrained_intermediate_issuing_outside_its_address_range_is_cert_unknown(
        self,
    ) -> None:
        identity = certs.leaf(pki()["constrained"], ["www.example.com", "10.0.0.1"])
        self.assertRejected(identity, "www.example.com", Status.CERT_UNKNOWN, "subtree violation",
                            Status.CERT_UNKNOWN)

    # -- the escape hatch -----------------------------------------------

    def test_manual_validation_leaves_every_judgement_to_the_application(self) -> None:
        bad = certs.leaf(
            pki()["stranger"], ["www.example.org"], not_before=NOW - 10 * DAY, not_after=NOW - DAY
        )
        for version in VERSIONS:
            credentials = self.client_credentials(version, manual_validation=True)
            outcome = judged_handshake(credentials, server_credentials(bad), "localhost")
            self.assertIsNone(outcome.client_error, version)
            self.assertEqual(outcome.client.attributes.peer_certificate, bad.certificate)


class OpenSSLValidationTests(ServerCertificateTests):
    """The same certificates, judged with ``validation="openssl"`` (OpenSSL's
    verification and service_identity): the same statuses."""

    validation = "openssl"


class CryptographyValidationTests(SynchronousTestCase):
    """What ``validation="cryptography"`` refuses or accepts that OpenSSL did not."""

    def outcome(
        self, identity: certs.Issued, target: str, validation: str, roots: object = None
    ) -> Outcome:
        credentials = Credentials.client(
            trust_roots=roots or [pki()["root"].certificate], validation=validation
        )
        return judged_handshake(credentials, server_credentials(identity), target)

    def test_wildcard_overlapping_an_excluded_name_is_cert_unknown(self) -> None:
        # CVE-2025-61727: *.example.com covers bar.example.com, which the
        # intermediate may not issue for; OpenSSL compares names, not sets.
        constrained = certs.authority(
            "excludes bar", issuer=pki()["root"], excluded=["bar.example.com"]
        )
        identity = certs.leaf(constrained, ["*.example.com"])
        self.assertIsNone(self.outcome(identity, "foo.example.com", "openssl").client_error)
        outcome = self.outcome(identity, "foo.example.com", "cryptography")
        error = outcome.client_error
        assert error is not None
        self.assertEqual(error.status, Status.CERT_UNKNOWN)
        self.assertIn("excluded subtree violation", error.reason)
        self.assertIn("excluded name constraint matched SAN", error.reason)
        server_error = outcome.server_error
        assert server_error is not None
        if _openssl.FAST:  # (the public path cannot choose the alert)
            self.assertEqual(server_error.status, Status.CERT_UNKNOWN)

    def test_intermediate_given_as_trust_root_anchors_the_chain(self) -> None:
        # OpenSSL insists on a self-signed root; cryptography ends the path
        # at any trust root, here one that names its issuer (authorityKeyIdentifier).
        identity = certs.leaf(pki()["intermediate"], ["localhost"])
        roots = [pki()["intermediate"].certificate]
        before = self.outcome(identity, "localhost", "openssl", roots).client_error
        assert before is not None
        self.assertEqual(before.status, Status.UNTRUSTED_ROOT)
        outcome = self.outcome(identity, "localhost", "cryptography", roots)
        self.assertIsNone(outcome.client_error)
        self.assertTrue(outcome.client.established)

    def test_root_whose_key_identifier_names_another_key_is_not_used(self) -> None:
        # A self-issued root that does not sign itself cannot end a path
        # (OpenSSL looks for its issuer and finds none).
        key = certs.new_key()
        other = certs.new_key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "odd root")])
        root = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - DAY)
            .not_valid_after(NOW + 30 * DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(other.public_key()), False
            )
            .sign(key, hashes.SHA256())
        )
        store = TrustStore([root])
        self.assertEqual(len(store.unusable), 1)
        self.assertIn("another key", store.unusable[0][1])
        identity = certs.leaf(certs.Issued(root, key), ["localhost"])
        for validation in ("openssl", "cryptography"):
            error = self.outcome(identity, "localhost", validation, [root]).client_error
            assert error is not None, validation
            self.assertEqual(error.status, Status.UNTRUSTED_ROOT, validation)

    def test_the_default_is_cryptography_and_a_typo_is_refused(self) -> None:
        self.assertEqual(Credentials.client().validation, "cryptography")
        self.assertEqual(Credentials.client(validation="openssl").validation, "openssl")
        with self.assertRaises(ValueError) as raised:
            Credentials.client(validation="gnutls")
        self.assertIn("cryptography, openssl", str(raised.exception))


class OfflineVerificationTests(SynchronousTestCase):
    """:func:`txschannel.verify_server_chain`: the handshake's rules, offline."""

    def chain(self) -> list[x509.Certificate]:
        identity = certs.leaf(pki()["intermediate"], ["www.example.com"])
        return [identity.certificate, *identity.chain]

    def test_returns_the_path_it_built(self) -> None:
        chain = self.chain()
        stray = pki()["stranger"].certificate  # sent, not needed
        path = verify_server_chain(
            [*chain, stray], "WWW.Example.com.", trust_roots=[pki()["root"].certificate]
        )
        self.assertEqual(path, [*chain, pki()["root"].certificate])

    def test_a_trust_store_is_built_once_and_reused(self) -> None:
        store = TrustStore([pki()["root"].certificate, pki()["stranger"].certificate])
        for _ in range(3):
            self.assertEqual(len(verify_server_chain(self.chain(), "www.example.com",
                                                     trust_roots=store)), 3)

    def test_judges_at_the_time_given(self) -> None:
        identity = certs.leaf(
            pki()["intermediate"], ["www.example.com"], not_after=NOW + 10 * DAY
        )
        chain, roots = [identity.certificate, *identity.chain], [pki()["root"].certificate]
        verify_server_chain(chain, "www.example.com", trust_roots=roots, at=NOW + 9 * DAY)
        later = (NOW + 20 * DAY).replace(tzinfo=None)  # naive: taken as UTC
        with self.assertRaises(SecurityError) as raised:
            verify_server_chain(chain, "www.example.com", trust_roots=roots, at=later)
        self.assertEqual(raised.exception.status, Status.CERT_EXPIRED)
        self.assertIn("CN=www.example.com", raised.exception.reason)  # names the certificate

    def test_wrong_name_is_wrong_principal(self) -> None:
        with self.assertRaises(SecurityError) as raised:
            verify_server_chain(
                self.chain(), "mail.example.com", trust_roots=[pki()["root"].certificate]
            )
        self.assertEqual(raised.exception.status, Status.WRONG_PRINCIPAL)
        self.assertIn("does not match 'mail.example.com'", raised.exception.reason)

    def test_unknown_root_is_untrusted_root(self) -> None:
        with self.assertRaises(SecurityError) as raised:
            verify_server_chain(
                self.chain(), "www.example.com", trust_roots=[pki()["stranger"].certificate]
            )
        self.assertEqual(raised.exception.status, Status.UNTRUSTED_ROOT)
        self.assertIn("corpus intermediate", raised.exception.reason)

    def test_max_depth_counts_intermediates(self) -> None:
        roots = [pki()["root"].certificate]
        self.assertEqual(
            len(verify_server_chain(self.chain(), "www.example.com", trust_roots=roots,
                                    max_depth=1)), 3
        )
        with self.assertRaises(SecurityError) as raised:
            verify_server_chain(self.chain(), "www.example.com", trust_roots=roots, max_depth=0)
        self.assertEqual(raised.exception.status, Status.CERT_UNKNOWN)
        self.assertIn("max depth", raised.exception.reason)

    def test_bad_input_is_a_value_error(self) -> None:
        roots = [pki()["root"].certificate]
        with self.assertRaises(ValueError):
            verify_server_chain([], "www.example.com", trust_roots=roots)
        with self.assertRaises(ValueError):
            verify_server_chain(self.chain(), "foo_bar.example.com", trust_roots=roots)


class ClientCertificateTests(SynchronousTestCase):
    """The server judges the client's certificate."""

    def outcome(self, identity: certs.Issued | None, version: str) -> Outcome:
        server_identity = certs.leaf(pki()["intermediate"], ["localhost"])
        server = server_credentials(
            server_identity, client_ca=[pki()["root"].certificate],
            require_client_certificate=True,
        )
        options = {} if identity is None else {"certificate": identity.chain_pem}
        return judged_handshake(client_credentials(version, **options), server, "localhost")

    def test_valid_client_certificate_is_accepted(self) -> None:
        identity = certs.leaf(pki()["intermediate"], ["client.example.com"], usages=("client",))
        for version in VERSIONS:
            outcome = self.outcome(identity, version)
            self.assertIsNone(outcome.server_error, f"{version}: {outcome.server_error!r}")
            self.assertIsNone(outcome.client_error, f"{version}: {outcome.client_error!r}")
            self.assertEqual(
                outcome.server.attributes.peer_certificate, identity.certificate, version
            )

    def test_client_certificate_with_only_a_common_name_is_accepted(self) -> None:
        # Client certificates stay OpenSSL's to judge: no subjectAltName is
        # needed (twist schannel's --allow-cn matches the subject's CN).
        identity = certs.leaf(
            pki()["intermediate"], [], common_name="alice", usages=("client",)
        )
        for version in VERSIONS:
            outcome = self.outcome(identity, version)
            self.assertIsNone(outcome.server_error, f"{version}: {outcome.server_error!r}")
            self.assertEqual(
                outcome.server.attributes.peer_certificate, identity.certificate, version
            )

    def test_expired_client_certificate_is_cert_expired(self) -> None:
        identity = certs.leaf(
            pki()["intermediate"], ["client.example.com"], usages=("client",),
            not_before=NOW - 10 * DAY, not_after=NOW - DAY,
        )
        for version in VERSIONS:
            error = self.outcome(identity, version).server_error
            self.assertIsNotNone(error, version)
            assert error is not None
            self.assertEqual(error.status, Status.CERT_EXPIRED, f"{version}: {error!r}")

    def test_client_certificate_from_an_untrusted_root_is_untrusted_root(self) -> None:
        identity = certs.leaf(pki()["stranger"], ["client.example.com"], usages=("client",))
        for version in VERSIONS:
            error = self.outcome(identity, version).server_error
            self.assertIsNotNone(error, version)
            assert error is not None
            self.assertEqual(error.status, Status.UNTRUSTED_ROOT, f"{version}: {error!r}")

    def test_missing_required_client_certificate_is_no_credentials(self) -> None:
        for version in VERSIONS:
            error = self.outcome(None, version).server_error
            self.assertIsNotNone(error, version)
            assert error is not None
            self.assertEqual(error.status, Status.NO_CREDENTIALS, f"{version}: {error!r}")


class DocumentationTests(SynchronousTestCase):
    """The example on docs/reliability.rst runs as written."""

    def test_reliability_page_example_runs(self) -> None:
        if not _openssl.FAST:
            raise SkipTest("the example shows the alert the fast path sends (docs/context.rst)")
        import contextlib
        import io
        import os
        import textwrap

        page = os.path.join(os.path.dirname(os.path.dirname(__file__)), "docs", "reliability.rst")
        with open(page) as handle:
            text = handle.read()
        block = text.split(".. code-block:: python\n\n", 1)[1]
        lines = []
        for line in block.splitlines():
            if line and not line.startswith("    "):
                break
            lines.append(line)
        code = textwrap.dedent("\n".join(lines))
        self.assertIn("WRONG_PRINCIPAL", code)
        output = io.StringIO()
        with contextlib.redirect_stdout(output):
            exec(compile(code, page, "exec"), {})
        self.assertIn("does not match 'mail.example.com'", output.getvalue())
