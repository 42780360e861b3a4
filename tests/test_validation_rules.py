"""The rules a client applies beyond cryptography's verifier, and the verdicts
it remembers (issue 20).

Each rule has a certificate built here that it refuses and a near twin (one
field different) that it accepts, judged by :func:`verify_server_chain` as
a client's handshake judges it. The remembered verdicts are checked for
what must never be answered from memory: another chain, another name,
another trust store, a certificate out of its period, a refusal.
"""

from __future__ import annotations

import datetime
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.trial.unittest import SynchronousTestCase

from tests.support.handshake import judged_handshake
from txschannel import Credentials, SecurityError, Status, TrustStore, validation
from txschannel.validation import verify_server_chain

NOW = datetime.datetime.now(datetime.timezone.utc)
DAY = datetime.timedelta(days=1)


def ec_key(curve: type[ec.EllipticCurve] = ec.SECP256R1) -> Any:
    return ec.generate_private_key(curve())


@cache
def rsa_key(bits: int) -> Any:  # (RSA keys are slow to make: one of each size)
    return rsa.generate_private_key(65537, bits)


def name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


@dataclass
class Spec:
    """One certificate to build; every field a rule looks at can be changed."""

    subject: str
    key: Any = field(default_factory=ec_key)
    ca: bool = False
    serial: int = 1000
    ski: bool = True
    aki: bool = True
    eku: Sequence[x509.ObjectIdentifier] | None = None
    san: Sequence[x509.GeneralName] = ()
    common_name: str | None = None
    policy_constraints: bool | None = None  # None: absent; else its criticality
    not_after: datetime.datetime = NOW + 30 * DAY


def build(spec: Spec, issuer: tuple[x509.Name, Any] | None = None) -> x509.Certificate:
    """*spec* signed by *issuer* (its name and key), or self-signed."""
    subject = name(spec.common_name if spec.common_name is not None else spec.subject)
    issuer_name, signer = issuer if issuer is not None else (subject, spec.key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(spec.key.public_key())
        .serial_number(spec.serial if spec.serial >= 1 else 1)
        .not_valid_before(NOW - DAY)
        .not_valid_after(spec.not_after)
        .add_extension(x509.BasicConstraints(ca=spec.ca, path_length=None), critical=True)
    )
    if spec.ca:
        usage = dict.fromkeys(
            (
                "digital_signature content_commitment key_encipherment data_encipherment "
                "key_agreement encipher_only decipher_only"
            ).split(),
            False,
        )
        builder = builder.add_extension(
            x509.KeyUsage(key_cert_sign=True, crl_sign=True, **usage), critical=True
        )
    if spec.ski:
        builder = builder.add_extension(
            x509.SubjectKeyIdentifier.from_public_key(spec.key.public_key()), critical=False
        )
    if spec.aki and issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()),
            critical=False,
        )
    if spec.eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(spec.eku)), critical=False)
    if spec.san:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(spec.san)), False)
    if spec.policy_constraints is not None:
        builder = builder.add_extension(
            x509.PolicyConstraints(require_explicit_policy=None, inhibit_policy_mapping=0),
            critical=spec.policy_constraints,
        )
    certificate = builder.sign(signer, hashes.SHA256())
    if spec.serial < 1:
        certificate = with_serial(certificate, spec.serial, signer)
    return certificate


def with_serial(certificate: x509.Certificate, serial: int, signer: Any) -> x509.Certificate:
    """*certificate* (serial number 1) with another one-octet serial number,
    signed again: the builder refuses 0 and below, as RFC 5280 does."""
    der = certificate.public_bytes(serialization.Encoding.DER)
    start = _element(der, 0)[0]
    tbs_end = _element(der, start)[1]
    algorithm_end = _element(der, tbs_end)[1]
    tbs, algorithm = der[start:tbs_end], der[tbs_end:algorithm_end]
    at = _element(tbs, 0)[0]
    if tbs[at] == 0xA0:  # the version
        at = _element(tbs, at)[1]
    old, new = x509_integer(certificate.serial_number), x509_integer(serial)
    assert tbs[at : at + len(old)] == old and len(old) == len(new)
    tbs = tbs[:at] + new + tbs[at + len(old) :]
    signature = signer.sign(tbs, ec.ECDSA(hashes.SHA256()))
    with _quiet():
        return x509.load_der_x509_certificate(
            wrapped(0x30, tbs + algorithm + wrapped(0x03, b"\x00" + signature))
        )


def _element(data: bytes, at: int) -> tuple[int, int]:
    """(start of the value, end) of the DER element at *at*."""
    length, start = data[at + 1], at + 2
    if length & 0x80:
        count = length & 0x7F
        length, start = int.from_bytes(data[start : start + count], "big"), start + count
    return start, start + length


def x509_integer(value: int) -> bytes:
    return wrapped(0x02, value.to_bytes((value.bit_length() + 8) // 8, "big", signed=True))


def wrapped(tag: int, body: bytes) -> bytes:
    size = len(body)
    if size < 0x80:
        return bytes([tag, size]) + body
    octets = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(octets)]) + octets + body


class _quiet:
    """Silences cryptography's warning about serial numbers below 1."""

    def __enter__(self) -> None:
        import warnings

        self._context = warnings.catch_warnings()
        self._context.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *exc: object) -> None:
        self._context.__exit__(*exc)


def server_leaf(**changes: Any) -> Spec:
    values: dict[str, Any] = {
        "subject": "www.example.com",
        "eku": [ExtendedKeyUsageOID.SERVER_AUTH],
        "san": [x509.DNSName("www.example.com")],
    }
    values.update(changes)
    return Spec(**values)


@dataclass
class Chain:
    leaf: x509.Certificate
    intermediates: list[x509.Certificate]
    root: x509.Certificate
    leaf_key: Any
    intermediate_key: Any

    def issue(self, leaf: Spec) -> list[x509.Certificate]:
        """*leaf* issued by this chain's intermediate, with the intermediate."""
        issuer = (self.intermediates[0].subject, self.intermediate_key)
        return [build(leaf, issuer), *self.intermediates]

    def verify(self, target: str = "www.example.com", **options: Any) -> list[x509.Certificate]:
        return verify_server_chain(
            [self.leaf, *self.intermediates], target, trust_roots=[self.root], **options
        )


def chain(
    leaf: Spec | None = None,
    intermediate: Spec | None = None,
    root: Spec | None = None,
    root_name: str = "rules root",
) -> Chain:
    """Root, intermediate and leaf, each as *root*, *intermediate*, *leaf* say."""
    root = root or Spec(root_name, ca=True, key=ec_key(ec.SECP384R1), aki=False)
    intermediate = intermediate or Spec("rules intermediate", ca=True)
    leaf = leaf or server_leaf()
    root_certificate = build(root)
    intermediate_certificate = build(intermediate, (root_certificate.subject, root.key))
    leaf_certificate = build(leaf, (intermediate_certificate.subject, intermediate.key))
    return Chain(
        leaf_certificate, [intermediate_certificate], root_certificate, leaf.key, intermediate.key
    )


class RuleTests(SynchronousTestCase):
    """Each rule: a certificate it refuses, and its twin that it accepts."""

    def assertRefused(
        self, built: Chain, words: str, status: Status = Status.CERT_UNKNOWN, **options: Any
    ) -> None:
        with self.assertRaises(SecurityError) as raised:
            built.verify(**options)
        self.assertEqual(raised.exception.status, status, raised.exception.reason)
        self.assertIn(words, raised.exception.reason)

    def test_the_twin_of_every_case_is_accepted(self) -> None:
        built = chain()
        self.assertEqual(built.verify(), [built.leaf, *built.intermediates, built.root])

    # -- key strength, on every certificate of the path ---------------------

    def test_rsa_leaf_below_2048_bits_is_refused(self) -> None:
        self.assertRefused(chain(server_leaf(key=rsa_key(1024))), "RSA key of 1024 bits")
        chain(server_leaf(key=rsa_key(2048))).verify()

    def test_rsa_key_not_a_whole_number_of_bytes_is_refused_in_a_leaf_and_a_root(self) -> None:
        self.assertRefused(chain(server_leaf(key=rsa_key(2052))), "not a whole number of bytes")
        chain(server_leaf(key=rsa_key(2056))).verify()
        odd_root = Spec("odd root", ca=True, key=rsa_key(2052), aki=False)
        self.assertRefused(chain(root=odd_root), "RSA key of 2052 bits")
        chain(root=Spec("even root", ca=True, key=rsa_key(2056), aki=False)).verify()

    def test_dsa_leaf_is_refused(self) -> None:
        self.assertRefused(chain(server_leaf(key=dsa_key())), "a DSA key")

    def test_curve_below_p256_is_refused(self) -> None:
        self.assertRefused(
            chain(server_leaf(key=ec_key(ec.SECP192R1))), "elliptic-curve key on secp192r1"
        )
        chain(server_leaf(key=ec_key(ec.SECP256R1))).verify()

    # -- extended key usage ---------------------------------------------------

    def test_any_extended_key_usage_in_a_leaf_is_refused(self) -> None:
        anything = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE]
        self.assertRefused(chain(server_leaf(eku=anything)), "anyExtendedKeyUsage")
        chain(server_leaf(eku=[ExtendedKeyUsageOID.SERVER_AUTH])).verify()

    def test_extended_key_usage_in_a_root_is_refused(self) -> None:
        root = Spec(
            "root with usages", ca=True, aki=False, eku=[ExtendedKeyUsageOID.SERVER_AUTH]
        )
        self.assertRefused(chain(root=root), "extendedKeyUsage in a root certificate")
        chain(root=Spec("root without usages", ca=True, aki=False)).verify()

    def test_extended_key_usage_in_an_intermediate_given_as_trust_root_is_accepted(
        self,
    ) -> None:
        # Only a root proper (self-issued) is held to it: an intermediate
        # pinned as a trust root keeps the usages its CA gave it.
        built = chain(
            intermediate=Spec("pinned", ca=True, eku=[ExtendedKeyUsageOID.SERVER_AUTH])
        )
        verify_server_chain([built.leaf], "www.example.com", trust_roots=built.intermediates)

    # -- RFC 5280 profile -------------------------------------------------------

    def test_serial_number_zero_or_negative_is_refused(self) -> None:
        self.assertRefused(chain(server_leaf(serial=0)), "serial number 0")
        # (cryptography refuses a negative one itself.)
        self.assertRefused(chain(server_leaf(serial=-1)), "serial number")
        chain(server_leaf(serial=1)).verify()

    def test_ca_certificate_without_subject_key_identifier_is_refused(self) -> None:
        self.assertRefused(
            chain(intermediate=Spec("no ski", ca=True, ski=False)), "without subjectKeyIdentifier"
        )
        self.assertRefused(
            chain(root=Spec("root no ski", ca=True, ski=False, aki=False)),
            "without subjectKeyIdentifier",
        )
        chain(intermediate=Spec("ski", ca=True, ski=True)).verify()
        # A leaf needs none.
        chain(server_leaf(ski=False)).verify()

    def test_issued_certificate_without_authority_key_identifier_is_refused(self) -> None:
        self.assertRefused(
            chain(intermediate=Spec("no aki", ca=True, aki=False)), "no authorityKeyIdentifier"
        )
        chain(intermediate=Spec("aki", ca=True, aki=True)).verify()

    def test_non_critical_policy_constraints_are_refused(self) -> None:
        self.assertRefused(
            chain(intermediate=Spec("pc", ca=True, policy_constraints=False)),
            "policyConstraints extension that is not critical",
        )
        # The twin: none. (A critical one, which RFC 5280 asks for,
        # cryptography refuses as a critical extension it does not process.)
        chain(intermediate=Spec("no pc", ca=True, policy_constraints=None)).verify()

    # -- CABF 7.1.4.3: the CN ---------------------------------------------------

    def test_common_name_differing_from_its_san_only_in_case_is_refused(self) -> None:
        self.assertRefused(chain(server_leaf(common_name="WWW.Example.com")), "in case")
        chain(server_leaf(common_name="www.example.com")).verify()

    def test_common_name_naming_an_address_not_canonically_is_refused(self) -> None:
        for spelling in ("192.168.001.001", "0xC0A80101"):
            built = chain(server_leaf(common_name=spelling, san=[ip("192.168.1.1")]))
            self.assertRefused(built, "not written canonically", target="192.168.1.1")
        built = chain(server_leaf(common_name="192.168.1.1", san=[ip("192.168.1.1")]))
        built.verify("192.168.1.1")
        for spelling in ("2001:DB8::1", "2001:db8:0:0:0:0:0:1"):
            built = chain(server_leaf(common_name=spelling, san=[ip("2001:db8::1")]))
            self.assertRefused(built, "not written canonically", target="2001:db8::1")
        chain(server_leaf(common_name="2001:db8::1", san=[ip("2001:db8::1")])).verify(
            "2001:db8::1"
        )

    def test_internationalised_common_name_must_be_a_copy_of_its_san(self) -> None:
        san = [x509.DNSName("xn--bcher-kva.example")]
        target = "xn--bcher-kva.example"
        self.assertRefused(
            chain(server_leaf(common_name="bücher.example", san=san)), "written in Unicode",
            target=target,
        )
        self.assertRefused(
            chain(server_leaf(common_name="xn--nxasmq6b.example", san=san)),
            "internationalised name not in its subjectAltName",
            target=target,
        )
        chain(server_leaf(common_name="xn--bcher-kva.example", san=san)).verify(target)

    def test_common_name_naming_no_san_entry_is_not_refused(self) -> None:
        # The narrow reading: "the CN must be in the SAN" refuses certificates
        # RFC 5280 and x509-limbo hold valid (a CN that is a label, not a name).
        chain(server_leaf(common_name="My Server")).verify()
        chain(server_leaf(common_name="example.com")).verify()

    # -- wildcards on public suffixes -------------------------------------------

    def test_wildcard_on_a_public_suffix_is_refused(self) -> None:
        built = chain(server_leaf(san=[x509.DNSName("*.co.uk")]))
        self.assertRefused(built, "public suffix", Status.WRONG_PRINCIPAL, target="example.co.uk")
        chain(server_leaf(san=[x509.DNSName("*.example.co.uk")])).verify("www.example.co.uk")

    def test_wildcard_under_a_private_suffix_is_accepted(self) -> None:
        # The private section of the list is left out: amazonaws.com's own
        # names are Amazon's to certify.
        built = chain(server_leaf(san=[x509.DNSName("*.s3.amazonaws.com")]))
        built.verify("bucket.s3.amazonaws.com")

    def test_a_name_given_exactly_beside_a_public_suffix_wildcard_is_accepted(self) -> None:
        san = [x509.DNSName("*.co.uk"), x509.DNSName("example.co.uk")]
        chain(server_leaf(san=san)).verify("example.co.uk")
        self.assertRefused(
            chain(server_leaf(san=san)), "public suffix", Status.WRONG_PRINCIPAL,
            target="other.co.uk",
        )


def dsa_key() -> Any:
    return _dsa_key()


@cache
def _dsa_key() -> Any:
    return dsa.generate_private_key(2048)


def ip(text: str) -> x509.IPAddress:
    import ipaddress

    return x509.IPAddress(ipaddress.ip_address(text))


def host_a_label(name: str) -> str:
    return validation.host_a_label(name)  # type: ignore[no-any-return]


class TargetNameTests(SynchronousTestCase):
    """IDNA: a name a certificate can carry is a name the client can check."""

    def test_a_labels_idna_2008_would_not_register_are_taken_as_written(self) -> None:
        for label in ("xn--n3h.com", "xn--test--wg5h0h.com"):
            self.assertEqual(host_a_label(label), label)
            built = chain(server_leaf(san=[x509.DNSName(label)]))
            built.verify(label)
            built.verify(label.upper() + ".")

    def test_unicode_names_go_through_uts46_nontransitional(self) -> None:
        self.assertEqual(host_a_label("☃.com"), "xn--n3h.com")
        self.assertEqual(host_a_label("Bücher.Example."), "xn--bcher-kva.example")
        self.assertEqual(host_a_label("faß.de"), "xn--fa-hia.de")  # not "fass.de"

    def test_names_that_are_not_host_names_are_refused_with_the_reason(self) -> None:
        for bad, why in (
            ("-bad.example", "starts or ends with a hyphen"),
            ("a..example", "empty label"),
            ("under_score.example", "other than a letter"),
            ("a\u200db.example", "joiner"),
            ("x" * 64 + ".example", "longer than 63"),
        ):
            with self.assertRaises(ValueError) as raised:
                host_a_label(bad)
            self.assertIn(why, str(raised.exception))

    def test_a_client_reaches_a_server_named_by_such_an_a_label(self) -> None:
        for target in ("xn--n3h.com", "☃.com"):
            outcome = judged_handshake(*pair("xn--n3h.com"), target)
            self.assertIsNone(outcome.client_error, target)
            self.assertIsNone(outcome.server_error, target)


def pair(*names: str, root_name: str = "rules root") -> tuple[Credentials, Credentials]:
    """(client, server) credentials for a server certified for *names*."""
    built = chain(server_leaf(san=[x509.DNSName(n) for n in names]), root_name=root_name)
    key = built.leaf_key
    pem = b"".join(
        c.public_bytes(serialization.Encoding.PEM) for c in (built.leaf, *built.intermediates)
    ) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    server = Credentials.server(certificate=pem, maximum_version="TLSv1.3")
    client = Credentials.client(trust_roots=[built.root], minimum_version="TLSv1.3")
    return client, server


class RememberedVerdictTests(SynchronousTestCase):
    """What the client remembers of the chains it accepted, and when it
    must judge again."""

    def setUp(self) -> None:
        self.built = chain(server_leaf(san=[x509.DNSName("*.example.com")]))
        self.store = TrustStore([self.built.root])
        self.presented = [self.built.leaf, *self.built.intermediates]

    def judge(
        self, presented: Sequence[x509.Certificate] | None = None, target: str = "a.example.com"
    ) -> list[x509.Certificate]:
        chosen = presented if presented is not None else self.presented
        return verify_server_chain(chosen, target, trust_roots=self.store)

    def forbid_judging(self) -> None:
        """From now on, only a remembered verdict can accept."""

        def judged(*arguments: object) -> object:
            raise AssertionError("judged again")

        self.patch(validation, "_judge", judged)

    def test_a_chain_seen_before_is_answered_from_memory(self) -> None:
        path = self.judge()
        self.forbid_judging()
        self.assertEqual(self.judge(), path)
        self.assertEqual(self.judge(target="A.Example.com."), path)  # the same name

    def test_another_chain_is_judged_again(self) -> None:
        self.judge()
        # The same names, another key: nothing vouches for it.
        forged = chain(server_leaf(san=[x509.DNSName("*.example.com")]), root_name="forger")
        with self.assertRaises(SecurityError) as raised:
            self.judge([forged.leaf, *forged.intermediates])
        self.assertEqual(raised.exception.status, Status.UNTRUSTED_ROOT)
        # The same certificates sent with one more: another chain's bytes.
        self.judge([*self.presented, forged.leaf])
        self.assertEqual(len(self.store._verdicts), 2)

    def test_another_name_is_judged_again(self) -> None:
        self.judge()
        with self.assertRaises(SecurityError) as raised:
            self.judge(target="a.example.org")
        self.assertEqual(raised.exception.status, Status.WRONG_PRINCIPAL)

    def test_a_reloaded_trust_store_judges_again(self) -> None:
        self.judge()
        other = chain(root_name="the new root")
        with self.assertRaises(SecurityError) as raised:
            verify_server_chain(
                self.presented, "a.example.com", trust_roots=TrustStore([other.root])
            )
        self.assertEqual(raised.exception.status, Status.UNTRUSTED_ROOT)
        # The same roots read again are a new store, with nothing remembered.
        again = TrustStore([self.built.root])
        self.assertEqual(len(again._verdicts), 0)

    def test_the_system_store_read_again_after_its_bundle_changed_judges_again(self) -> None:
        folder = Path(tempfile.mkdtemp())
        bundle = folder / "bundle.pem"
        bundle.write_bytes(self.built.root.public_bytes(serialization.Encoding.PEM))
        self.patch(os, "environ", {**os.environ, "SSL_CERT_FILE": str(bundle)})
        verify_server_chain(self.presented, "a.example.com", trust_roots=TrustStore.system())
        other = chain(root_name="the new root").root.public_bytes(serialization.Encoding.PEM)
        bundle.write_bytes(other + b"\n")  # another size: the bundle changed
        with self.assertRaises(SecurityError) as raised:
            verify_server_chain(
                self.presented, "a.example.com", trust_roots=TrustStore.system()
            )
        self.assertEqual(raised.exception.status, Status.UNTRUSTED_ROOT)

    def test_a_certificate_past_its_period_is_judged_again(self) -> None:
        presented = self.built.issue(
            server_leaf(san=[x509.DNSName("*.example.com")], not_after=NOW + DAY)
        )
        self.judge(presented)
        later = NOW + 2 * DAY
        self.patch(validation, "_now", lambda: later)
        with self.assertRaises(SecurityError) as raised:
            self.judge(presented)
        self.assertEqual(raised.exception.status, Status.CERT_EXPIRED)
        self.assertEqual(len(self.store._verdicts), 0)

    def test_a_clock_gone_back_before_a_certificate_judges_again(self) -> None:
        self.judge()
        earlier = NOW - 2 * DAY
        self.patch(validation, "_now", lambda: earlier)
        with self.assertRaises(SecurityError) as raised:
            self.judge()
        self.assertEqual(raised.exception.status, Status.CERT_EXPIRED)

    def test_a_refusal_is_never_remembered(self) -> None:
        with self.assertRaises(SecurityError):
            self.judge(target="a.example.org")
        self.assertEqual(len(self.store._verdicts), 0)

    def test_a_judgement_at_another_time_is_not_remembered(self) -> None:
        verify_server_chain(self.presented, "a.example.com", trust_roots=self.store, at=NOW)
        self.assertEqual(len(self.store._verdicts), 0)

    def test_memory_is_bounded_and_forgets_the_least_recently_used(self) -> None:
        self.store._verdicts.size = 4
        for number in range(10):
            self.judge(target=f"h{number}.example.com")
            self.judge(target="h0.example.com")  # kept in use
        self.assertEqual(len(self.store._verdicts), 4)
        self.forbid_judging()
        self.judge(target="h0.example.com")
        self.judge(target="h9.example.com")
        with self.assertRaises(AssertionError):
            self.judge(target="h1.example.com")

    def test_the_default_bound(self) -> None:
        self.assertEqual(self.store._verdicts.size, validation.VERDICT_CACHE_SIZE)
        self.assertEqual(validation.VERDICT_CACHE_SIZE, 1024)

    def test_a_handshake_to_a_server_seen_before_is_answered_from_memory(self) -> None:
        client, server = pair("www.example.com")
        first = judged_handshake(client, server, "www.example.com")
        self.assertIsNone(first.client_error)
        self.forbid_judging()
        # A new full handshake (no session offered: another ClientContext on
        # credentials that forgot it).
        client.sessions.clear()
        second = judged_handshake(client, server, "www.example.com")
        self.assertIsNone(second.client_error)
        self.assertFalse(second.client.attributes.session_reused)

    def test_a_handshake_with_another_chain_for_the_same_name_is_judged_again(self) -> None:
        client, server = pair("www.example.com")
        self.assertIsNone(judged_handshake(client, server, "www.example.com").client_error)
        _, impostor = pair("www.example.com", root_name="impostor")  # same name
        outcome = judged_handshake(client, impostor, "www.example.com")
        assert outcome.client_error is not None
        self.assertEqual(outcome.client_error.status, Status.UNTRUSTED_ROOT)


class AddressSpelledAsNameTests(SynchronousTestCase):
    """An IP address is checked only against iPAddress entries: never as a
    DNS name, whatever its spelling, and a verdict reached for one kind of
    name is never answered for the other."""

    def test_target_names_that_read_as_an_address_are_refused(self) -> None:
        for spelling in (
            "127.0.0.1.",
            "\uff11\uff12\uff17\uff0e\uff10\uff0e\uff10\uff0e\uff11",  # full-width
            "127\u30020\u30020\u30021",  # ideographic full stops
            "127.1",
            "0x7f.1",
            "2130706433",
            "127.000.0.1",
        ):
            with self.assertRaises(ValueError) as raised:
                host_a_label(spelling)
            self.assertIn("reads as the IP address 127.0.0.1", str(raised.exception), spelling)
        with self.assertRaises(ValueError) as raised:
            host_a_label("www.example.999")
        self.assertIn("last label '999' is a number", str(raised.exception))
        # A label of digits that is not the last is a host name.
        self.assertEqual(host_a_label("1.2.3.example"), "1.2.3.example")

    def test_a_dns_entry_for_an_address_does_not_vouch_for_the_address(self) -> None:
        built = chain(server_leaf(subject="dns entry only", san=[x509.DNSName("127.0.0.1")]))
        store = TrustStore([built.root])
        presented = [built.leaf, *built.intermediates]
        with self.assertRaises(ValueError):
            verify_server_chain(presented, "127.0.0.1.", trust_roots=store)
        with self.assertRaises(SecurityError) as raised:
            verify_server_chain(presented, "127.0.0.1", trust_roots=store)
        self.assertEqual(raised.exception.status, Status.WRONG_PRINCIPAL)
        self.assertEqual(len(store._verdicts), 0)

    def test_a_dns_entry_shaped_like_an_address_matches_no_dns_name(self) -> None:
        for entry in ("127.0.0.1", "*.0.0.1", "*.0x1"):
            for host in ("127.0.0.1", "a.0.0.1", "a.0x1"):
                self.assertFalse(
                    validation._alt_name_matches(x509.DNSName(entry), x509.DNSName(host)),
                    (entry, host),
                )

    def test_a_handshake_to_the_address_after_its_full_width_spelling_is_refused(self) -> None:
        client, server = pair("127.0.0.1")  # DNS:127.0.0.1, no iPAddress entry
        with self.assertRaises(ValueError) as raised:
            judged_handshake(
                client, server, "\uff11\uff12\uff17\uff0e\uff10\uff0e\uff10\uff0e\uff11"
            )
        self.assertIn("target_name", str(raised.exception))
        outcome = judged_handshake(client, server, "127.0.0.1")
        assert outcome.client_error is not None
        self.assertEqual(outcome.client_error.status, Status.WRONG_PRINCIPAL)

    def test_a_full_width_trailing_dot_is_dropped_after_mapping(self) -> None:
        spelling = "\uff45xample\uff0ecom\uff0e"  # ｅxample．com．
        self.assertEqual(host_a_label(spelling), "example.com")
        chain(server_leaf(san=[x509.DNSName("example.com")])).verify(spelling)


class VerdictMemorySizeTests(SynchronousTestCase):
    """A remembered verdict holds a digest of the chain, not the chain: a
    server padding its chain with certificates no path uses cannot make
    each entry as large as what it sends."""

    def test_the_memory_holds_a_digest_of_the_chain(self) -> None:
        built = chain(server_leaf(san=[x509.DNSName("www.example.com")]))
        store = TrustStore([built.root])
        presented = [built.leaf, *built.intermediates]
        unrelated = [chain(root_name=f"unrelated {n}").root for n in range(20)]
        path = verify_server_chain(presented, "www.example.com", trust_roots=store)
        verify_server_chain([*presented, *unrelated], "www.example.com", trust_roots=store)
        self.assertEqual(len(store._verdicts), 2)
        for key in store._verdicts._entries:
            # One SHA-256 digest, whatever the chain's size; no certificate bytes.
            self.assertEqual([len(p) for p in key if isinstance(p, bytes)], [32])
            self.assertFalse(any(isinstance(p, tuple) and p and isinstance(p[0], bytes)
                                 for p in key))
            self.assertIn("dns", key)
        # The same chain is still answered from memory; the padded one is
        # another chain, never answered by the first one's verdict.
        judged: list[object] = []
        original = validation._judge

        def counting(*arguments: Any) -> Any:
            judged.append(arguments)
            return original(*arguments)

        self.patch(validation, "_judge", counting)
        self.assertEqual(verify_server_chain(presented, "www.example.com", trust_roots=store), path)
        self.assertEqual(judged, [])
        verify_server_chain([*presented, *unrelated[:19]], "www.example.com", trust_roots=store)
        self.assertEqual(len(judged), 1)


def _drain(connection: Any) -> bytes:
    from OpenSSL import SSL

    out = b""
    while True:
        try:
            chunk = connection.bio_read(65536)
        except SSL.WantReadError:
            return out
        if not chunk:
            return out
        out += chunk


class SecondChainTests(SynchronousTestCase):
    """A second chain on a connection whose first one was accepted is
    judged on its own (defence in depth: the credentials refuse TLS 1.2
    renegotiation, the only way a server sends one)."""

    def renegotiate_to(self, validation_kind: str) -> SecurityError | None:
        """A TLS 1.2 handshake to a trusted server, which then renegotiates
        with a certificate from an untrusted root; the client's refusal, or
        None if it went on."""
        from OpenSSL import SSL, crypto

        from txschannel import ClientContext

        good = chain()
        evil = chain(root_name="untrusted root")
        # Client credentials as a context changed after they were built
        # would be: without OP_NO_RENEGOTIATION (pyOpenSSL cannot clear it).
        self.patch(SSL, "OP_NO_RENEGOTIATION", 0)
        client_credentials = Credentials.client(
            trust_roots=[good.root], validation=validation_kind
        )
        server_context = SSL.Context(SSL.TLS_METHOD)
        server_context.set_max_proto_version(SSL.TLS1_2_VERSION)
        server_context.set_session_cache_mode(SSL.SESS_CACHE_OFF)  # a full handshake again
        server_context.set_options(SSL.OP_NO_TICKET)
        server_context.use_certificate(crypto.X509.from_cryptography(good.leaf))
        server_context.use_privatekey(crypto.PKey.from_cryptography_key(good.leaf_key))
        for certificate in good.intermediates:
            server_context.add_extra_chain_cert(crypto.X509.from_cryptography(certificate))
        server = SSL.Connection(server_context, None)
        server.set_accept_state()
        client = ClientContext(client_credentials, "www.example.com")
        token = client.initialize().token
        for _ in range(10):  # a TLS 1.2 handshake is two round trips
            server.bio_write(token)
            try:
                server.do_handshake()
            except SSL.WantReadError:
                pass
            step = client.initialize(_drain(server))
            token = step.token
            if step.status is Status.OK:
                break
        self.assertIs(step.status, Status.OK)
        self.assertEqual(client.attributes.peer_certificate, good.leaf)
        if token:
            server.bio_write(token)
        server.use_certificate(crypto.X509.from_cryptography(evil.leaf))
        server.use_privatekey(crypto.PKey.from_cryptography_key(evil.leaf_key))
        server.renegotiate()
        try:
            server.do_handshake()
        except SSL.WantReadError:
            pass
        to_client = _drain(server)
        for _ in range(10):
            if not to_client:
                break
            try:
                unwrapped = client.decrypt(to_client)
            except SecurityError as e:
                return e
            if not unwrapped.token:
                break
            server.bio_write(unwrapped.token)
            try:
                server.recv(65536)
            except SSL.WantReadError:
                pass
            to_client = _drain(server)
        self.assertNotEqual(client.attributes.peer_certificate, evil.leaf)
        return None

    def test_an_untrusted_chain_after_an_accepted_one_is_refused(self) -> None:
        refusal = self.renegotiate_to("cryptography")
        assert refusal is not None
        self.assertEqual(refusal.status, Status.UNTRUSTED_ROOT)

    def test_validation_openssl_refuses_it_too(self) -> None:
        refusal = self.renegotiate_to("openssl")
        assert refusal is not None
        self.assertEqual(refusal.status, Status.UNTRUSTED_ROOT)
