"""The ClientHello parser and JA4 (txschannel.terminator.clienthello), and the server
context that keeps the hello for them.

The parser reads bytes a stranger wrote, so besides hand-built hellos it
is fed every prefix of one and thousands of corrupted copies: it must
describe what it could read and never raise (tests/test_inspector_hello.py
checks the same of the pages made from them). The JA4 tests use the
fingerprints FoxIO publishes for its definition.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from OpenSSL import SSL
from twisted.trial.unittest import SynchronousTestCase

from tests.support.hellos import (
    JA4_FORMAT,
    build_hello,
    client_hello,
    records,
)
from txschannel import ServerContext, Status
from txschannel.records import MAX_CLIENT_HELLO, frame
from txschannel.terminator.clienthello import (
    ClientHello,
    KeyShare,
    cipher_suite_code,
    cipher_suite_name,
    extension_name,
    group_code,
    group_name,
    handshake_message,
    is_grease,
    ja4,
    parse_client_hello,
    signature_scheme_name,
    version_name,
)
from txschannel.testing import CertificateAuthority


def from_raw(raw_original: str, *, alpn: Sequence[bytes] = (b"h2", b"http/1.1"),
             grease: bool = False) -> ClientHello:
    """A hello with the lists of a published JA4_ro string, in its order.

    *grease*: also put GREASE values where browsers put them (first cipher,
    first and last extension, first signature algorithm), which JA4 must
    ignore.
    """
    _, ciphers, extensions, algorithms = raw_original.split("_")
    cipher_codes = [int(c, 16) for c in ciphers.split(",")]
    extension_codes = [int(e, 16) for e in extensions.split(",")]
    algorithm_codes = [int(a, 16) for a in algorithms.split(",")]
    if grease:
        cipher_codes.insert(0, 0x3A3A)
        extension_codes = [0x8A8A, *extension_codes, 0xEAEA]
        algorithm_codes.insert(0, 0x5A5A)
    hello = parse_client_hello(build_hello(
        cipher_codes, extension_codes, alpn=alpn, signature_algorithms=algorithm_codes,
        key_shares=((0x001D, 32),),
    ))
    assert not hello.errors, hello.errors
    return hello


class ParserTests(SynchronousTestCase):
    """Hand-built hellos, read field by field."""

    def test_a_hello_is_read_field_by_field(self) -> None:
        message = build_hello(
            [0x2A2A, 0x1301, 0x1302, 0xC02B],
            [0x0A0A, 0x0000, 0x0010, 0x000A, 0x000D, 0x002B, 0x0033, 0x002D, 0x001B],
            server_name=b"inspector.example",
            alpn=(b"h2", b"http/1.1"),
            groups=(0x4A4A, 0x11EC, 0x001D, 0x0017),
            versions=(0x7A7A, 0x0304, 0x0303),
            key_shares=((0x4A4A, 1), (0x001D, 32)),
            signature_algorithms=(0x0403, 0x0804),
        )
        hello = parse_client_hello(message)
        self.assertEqual(hello.errors, ())
        self.assertEqual(hello.size, len(message))
        self.assertEqual(hello.declared, len(message) - 4)
        self.assertEqual(hello.legacy_version, 0x0303)
        self.assertEqual(hello.random, bytes(range(32)))
        self.assertEqual(hello.session_id, bytes(32))
        self.assertEqual(hello.cipher_suites, (0x2A2A, 0x1301, 0x1302, 0xC02B))
        self.assertEqual(hello.compression_methods, (0,))
        self.assertEqual(hello.extension_types,
                         (0x0A0A, 0x0000, 0x0010, 0x000A, 0x000D, 0x002B, 0x0033, 0x002D, 0x001B))
        self.assertEqual(hello.server_name, "inspector.example")
        self.assertEqual(hello.alpn, (b"h2", b"http/1.1"))
        self.assertEqual(hello.groups, (0x4A4A, 0x11EC, 0x001D, 0x0017))
        self.assertEqual(hello.supported_versions, (0x7A7A, 0x0304, 0x0303))
        self.assertEqual(hello.highest_version, 0x0304)
        self.assertEqual(hello.key_shares, (KeyShare(0x4A4A, 1), KeyShare(0x001D, 32)))
        self.assertEqual(hello.signature_algorithms, (0x0403, 0x0804))
        self.assertEqual(hello.psk_key_exchange_modes, (1,))
        self.assertEqual(hello.certificate_compression, (2,))
        self.assertIsNone(hello.resumption)

    def test_grease_values_are_marked_everywhere(self) -> None:
        greases = [0x0A0A + 0x1010 * i for i in range(16)]
        self.assertEqual(greases[-1], 0xFAFA)
        self.assertTrue(all(is_grease(v) for v in greases))
        self.assertFalse(any(is_grease(v) for v in (0x0A1A, 0x1A0A, 0x0B0B, 0x1301, 0x0000)))
        for name in (cipher_suite_name, group_name, signature_scheme_name, extension_name,
                     version_name):
            self.assertEqual(name(0x9A9A), "GREASE")
        hello = parse_client_hello(build_hello(
            [0xDADA, 0x1301], [0x1A1A, 0x002B, 0x000A], versions=(0x6A6A, 0x0304),
            groups=(0x2A2A, 0x001D),
        ))
        self.assertEqual([is_grease(c) for c in hello.cipher_suites], [True, False])
        self.assertEqual([e.grease for e in hello.extensions], [True, False, False])
        self.assertEqual([e.name for e in hello.extensions],
                         ["GREASE", "supported_versions", "supported_groups"])
        self.assertEqual(hello.highest_version, 0x0304)

    def test_names_are_iana_names(self) -> None:
        self.assertEqual(cipher_suite_name(0x1301), "TLS_AES_128_GCM_SHA256")
        self.assertEqual(cipher_suite_name(0xCCA9),
                         "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256")
        self.assertEqual(cipher_suite_name(0x00FF), "TLS_EMPTY_RENEGOTIATION_INFO_SCSV")
        self.assertEqual(cipher_suite_name(0x5600), "TLS_FALLBACK_SCSV")
        self.assertEqual(cipher_suite_name(0x1337), "unknown (0x1337)")
        self.assertEqual(group_name(0x001D), "x25519")
        self.assertEqual(group_name(0x11EC), "X25519MLKEM768")
        self.assertEqual(signature_scheme_name(0x0804), "rsa_pss_rsae_sha256")
        self.assertEqual(extension_name(0x0033), "key_share")
        self.assertEqual(extension_name(0xFE0D), "encrypted_client_hello")
        self.assertEqual(version_name(0x0304), "TLS 1.3")
        # OpenSSL's names for what was negotiated lead back to the codes.
        self.assertEqual(cipher_suite_code("ECDHE-ECDSA-AES256-GCM-SHA384"), 0xC02C)
        self.assertEqual(cipher_suite_code("ECDHE-RSA-CHACHA20-POLY1305"), 0xCCA8)
        self.assertEqual(cipher_suite_code("TLS_AES_256_GCM_SHA384"), 0x1302)
        self.assertEqual(group_code("prime256v1"), 0x0017)
        self.assertEqual(group_code("x25519"), 0x001D)

    def test_resumption_offers_are_recognised(self) -> None:
        psk = parse_client_hello(build_hello([0x1301], [0x002B, 0x002D, 0x0029]))
        self.assertEqual(psk.psk_identities, 1)
        self.assertEqual(psk.resumption, "TLS 1.3 PSK")
        ticket = parse_client_hello(build_hello([0xC02B], [0x0023], session_id=b"",
                                                ticket=b"opaque"))
        self.assertEqual(ticket.session_ticket, 6)
        self.assertEqual(ticket.resumption, "TLS 1.2 session ticket")
        empty = parse_client_hello(build_hello([0xC02B], [0x0023], session_id=b""))
        self.assertEqual(empty.session_ticket, 0)
        self.assertIsNone(empty.resumption)
        session = parse_client_hello(build_hello([0xC02B], [0x000A], session_id=b"s" * 32))
        self.assertEqual(session.resumption, "TLS 1.2 session id")

    def test_a_message_that_is_no_client_hello_is_said_to_be_one(self) -> None:
        hello = parse_client_hello(b"\x02\x00\x00\x00")
        self.assertEqual(hello.errors, ("not a ClientHello: handshake message type 2",))
        self.assertEqual(parse_client_hello(b"").errors,
                         ("truncated: handshake type: needs 1 bytes, 0 left",))

    def test_a_malformed_extension_is_reported_and_the_rest_still_read(self) -> None:
        good = build_hello([0x1301], [0x000A, 0x0000, 0x0010])
        # The groups list claims 200 bytes inside a 6-byte extension.
        bad = good.replace(b"\x00\x0a\x00\x06\x00\x04", b"\x00\x0a\x00\x06\x00\xc8", 1)
        hello = parse_client_hello(bad)
        self.assertEqual(hello.groups, ())
        self.assertEqual(hello.server_name, "example.com")
        self.assertEqual(hello.alpn, (b"h2", b"http/1.1"))
        self.assertEqual(len(hello.errors), 1)
        self.assertIn("supported_groups is malformed", hello.errors[0])

    def test_trailing_bytes_and_repeated_extensions_are_noted(self) -> None:
        message = build_hello([0x1301], [0x0000, 0x0000])
        hello = parse_client_hello(message + b"junk")
        self.assertIn("extension server_name sent twice", hello.errors)
        self.assertIn("4 bytes after the end of the message ignored", hello.errors)

    def test_every_prefix_is_read_without_raising(self) -> None:
        message = build_hello(
            [0x0A0A, 0x1301, 0x1302, 0x1303, 0xC02B],
            [0x0000, 0x0010, 0x000A, 0x000D, 0x002B, 0x0033, 0x002D, 0x0029],
        )
        whole = parse_client_hello(message)
        self.assertEqual(whole.errors, ())
        for size in range(len(message)):
            hello = parse_client_hello(message[:size])
            self.assertTrue(hello.errors, f"a {size}-byte prefix was taken for a whole hello")
            self.assertEqual(hello.size, size)
            # What was read is what the whole hello says, as far as it goes.
            self.assertEqual(hello.cipher_suites, whole.cipher_suites[: len(hello.cipher_suites)])
            self.assertRegex(ja4(hello), JA4_FORMAT)

    def test_corrupted_hellos_never_raise(self) -> None:
        message = build_hello(
            [0x0A0A, 0x1301, 0x1302, 0xC02B, 0xC02F],
            [0x0A0A, 0x0000, 0x0010, 0x000A, 0x000D, 0x002B, 0x0033, 0x002D, 0x0029, 0x001B],
        )
        rng = random.Random(13)
        for _ in range(3000):
            data = bytearray(message)
            for _ in range(rng.randint(1, 6)):
                choice = rng.random()
                position = rng.randrange(len(data))
                if choice < 0.6:
                    data[position] = rng.randrange(256)
                elif choice < 0.8:
                    del data[position : position + rng.randint(1, 40)]
                else:
                    data[position:position] = rng.randbytes(rng.randint(1, 20))
            hello = parse_client_hello(bytes(data))
            for raw in (False, True):
                for original in (False, True):
                    ja4(hello, raw=raw, original=original)
            self.assertRegex(ja4(hello), JA4_FORMAT)


class JA4Tests(SynchronousTestCase):
    """JA4 against the fingerprints FoxIO publishes.

    Expected values: FoxIO-LLC/ja4, ``technical_details/JA4.md`` (the
    definition, its worked example and its raw forms; the hash of an
    extension list without signature algorithms), and the test data that
    repository keeps next to its Python implementation,
    ``python/test/testdata/tls3.pcapng.json`` (stream 9, a resumed TLS 1.3
    hello with pre_shared_key) and ``sigalg-grease.pcapng.json`` (a
    Chromium hello with ML-DSA signature algorithms). Each hello is built
    with the lists of the published JA4_ro string in their order.
    """

    #: technical_details/JA4.md, "Raw Output" and "Example".
    SPEC_RO = (
        "t13d1516h2_1301,1302,1303,c02b,c02f,c02c,c030,cca9,cca8,c013,c014,009c,009d,002f,"
        "0035_001b,0000,0033,0010,4469,0017,002d,000d,0005,0023,0012,002b,ff01,000b,000a,"
        "0015_0403,0804,0401,0503,0805,0501,0806,0601"
    )

    def test_the_definitions_worked_example(self) -> None:
        hello = from_raw(self.SPEC_RO)
        self.assertEqual(ja4(hello), "t13d1516h2_8daaf6152771_e5627efa2ab1")
        self.assertEqual(
            ja4(hello, raw=True),
            "t13d1516h2_002f,0035,009c,009d,1301,1302,1303,c013,c014,c02b,c02c,c02f,c030,cca8,"
            "cca9_0005,000a,000b,000d,0012,0015,0017,001b,0023,002b,002d,0033,4469,ff01_0403,"
            "0804,0401,0503,0805,0501,0806,0601",
        )
        self.assertEqual(ja4(hello, original=True), "t13d1516h2_acb858a92679_18f69afefd3d")
        self.assertEqual(ja4(hello, raw=True, original=True), self.SPEC_RO)

    def test_grease_is_ignored(self) -> None:
        hello = from_raw(self.SPEC_RO, grease=True)
        self.assertEqual(len(hello.cipher_suites), 16)
        self.assertEqual(ja4(hello), "t13d1516h2_8daaf6152771_e5627efa2ab1")
        self.assertEqual(ja4(hello, raw=True, original=True), self.SPEC_RO)

    def test_a_resumed_tls13_hello(self) -> None:
        # python/test/testdata/tls3.pcapng.json, stream 9.
        raw_original = (
            "t13d1516h2_1301,1302,1303,c02b,c02f,c02c,c030,cca9,cca8,c013,c014,009c,009d,002f,"
            "0035_0033,000a,0005,000d,0012,0000,0010,002b,0023,001b,0017,002d,ff01,4469,000b,"
            "0029_0403,0804,0401,0503,0805,0501,0806,0601"
        )
        hello = from_raw(raw_original)
        self.assertEqual(hello.resumption, "TLS 1.3 PSK")
        self.assertEqual(ja4(hello), "t13d1516h2_8daaf6152771_9b887d9acb53")
        self.assertEqual(ja4(hello, original=True), "t13d1516h2_acb858a92679_01fb3542df69")
        self.assertEqual(
            ja4(hello, raw=True),
            "t13d1516h2_002f,0035,009c,009d,1301,1302,1303,c013,c014,c02b,c02c,c02f,c030,cca8,"
            "cca9_0005,000a,000b,000d,0012,0017,001b,0023,0029,002b,002d,0033,4469,ff01_0403,"
            "0804,0401,0503,0805,0501,0806,0601",
        )

    def test_a_chromium_hello_with_grease_signature_algorithms(self) -> None:
        # python/test/testdata/sigalg-grease.pcapng.json.
        raw_original = (
            "t13d1517h2_1301,1302,1303,c02b,c02f,c02c,c030,cca9,cca8,c013,c014,009c,009d,002f,"
            "0035_fe0d,0010,0017,0033,44cd,ff01,000a,000d,0023,002b,000b,ca34,002d,0000,0005,"
            "001b,0012_0904,0905,0906,0403,0804,0401,0503,0805,0501,0806,0601"
        )
        hello = from_raw(raw_original, grease=True)
        self.assertEqual(ja4(hello), "t13d1517h2_8daaf6152771_cb7bf5808d99")
        self.assertEqual(ja4(hello, original=True), "t13d1517h2_acb858a92679_88bf22a3e888")

    def test_without_signature_algorithms_the_extension_list_is_hashed_alone(self) -> None:
        # technical_details/JA4.md: "... 4469,ff01 = 6d807ffa2a79".
        extensions = [0x0005, 0x000A, 0x000B, 0x000D, 0x0012, 0x0015, 0x0017, 0x001B, 0x0023,
                      0x002B, 0x002D, 0x0033, 0x4469, 0xFF01]
        hello = ClientHello(cipher_suites=(0x1301,), extensions=parse_client_hello(
            build_hello([0x1301], extensions)).extensions, supported_versions=(0x0304,))
        self.assertEqual(ja4(hello).rpartition("_")[2], "6d807ffa2a79")

    def test_the_first_section(self) -> None:
        def first(**changes: object) -> str:
            base: dict[str, object] = {"cipher_suites": (0x1301,), "alpn": (b"h2",),
                                       "supported_versions": (0x0304,)}
            return ja4(ClientHello(**{**base, **changes})).partition("_")[0]  # type: ignore[arg-type]

        self.assertEqual(first(), "t13i0100h2")
        self.assertEqual(first(alpn=(b"http/1.1", b"h2")), "t13i0100h1")
        self.assertEqual(first(alpn=()), "t13i010000")
        self.assertEqual(first(alpn=(b"",)), "t13i010000")
        self.assertEqual(first(alpn=(b"x",)), "t13i0100xx")
        # The definition's examples for values that do not start and end alphanumeric.
        for value, expected in ((b"\xab", "ab"), (b"\xab\xcd", "ad"), (b"\x30\xab", "3b"),
                                (b"\x30\x31\xab\xcd", "3d"), (b"\x30\xab\xcd\x31", "01")):
            self.assertEqual(first(alpn=(value,))[-2:], expected, value)
        self.assertEqual(first(supported_versions=None, legacy_version=0x0303), "t12i0100h2")
        self.assertEqual(first(supported_versions=(0x0A0A, 0x0303, 0x0304)), "t13i0100h2")
        self.assertEqual(first(supported_versions=(0x7F1C,)), "t00i0100h2")
        self.assertEqual(first(cipher_suites=tuple(range(1, 150))), "t13i9900h2")
        self.assertEqual(first(cipher_suites=(0x0A0A, 0x1301)), "t13i0100h2")
        with_sni = parse_client_hello(build_hello([0x1301], [0x0000, 0x002B]))
        self.assertEqual(ja4(with_sni).partition("_")[0], "t13d010200")

    def test_nothing_to_hash_is_written_as_zeros(self) -> None:
        self.assertEqual(ja4(ClientHello(legacy_version=0x0303)),
                         "t12i000000_000000000000_000000000000")
        # SNI and ALPN alone leave nothing in the hashed extension list.
        only = parse_client_hello(build_hello([], [0x0000, 0x0010]))
        self.assertEqual(ja4(only), "t12d0002h2_000000000000_000000000000")


class KeptHelloTests(SynchronousTestCase):
    """ServerContext(keep_client_hello=True) keeps the hello as it arrived."""

    def setUp(self) -> None:
        self.credentials = CertificateAuthority().server_credentials("localhost")

    def test_the_hello_is_kept_whole_from_one_byte_records(self) -> None:
        wire = client_hello(600, fragment=1)
        message = handshake_message(wire, frame(wire).ends)
        self.assertEqual(len(message), 604)
        context = ServerContext(self.credentials, keep_client_hello=True)
        self.assertIsNone(context.client_hello)
        step = context.accept(wire)
        self.assertEqual(step.status, Status.CONTINUE_NEEDED)
        self.assertEqual(context.client_hello, message)
        hello = parse_client_hello(message)
        self.assertEqual(hello.errors, ())
        self.assertEqual(hello.server_name, "localhost")
        context.delete()
        self.assertIsNone(context.client_hello)

    def test_the_hello_is_kept_when_it_arrives_in_pieces(self) -> None:
        wire = client_hello(3000, fragment=700)
        context = ServerContext(self.credentials, keep_client_hello=True)
        extra = b""
        for start in range(0, len(wire), 97):
            step = context.accept(extra + wire[start : start + 97])
            extra = step.extra
            if step.status is not Status.INCOMPLETE_MESSAGE:
                break
        self.assertEqual(step.status, Status.CONTINUE_NEEDED)
        self.assertEqual(context.client_hello, handshake_message(wire, frame(wire).ends))
        self.assertEqual(len(context.client_hello or b""), 3004)

    def test_by_default_nothing_is_kept(self) -> None:
        context = ServerContext(self.credentials)
        context.accept(client_hello(600))
        self.assertIsNone(context.client_hello)
        self.assertNotIn("_client_hello", vars(context))

    def test_the_largest_hello_is_kept_and_no_more(self) -> None:
        wire = client_hello(MAX_CLIENT_HELLO)
        context = ServerContext(self.credentials, keep_client_hello=True)
        self.assertEqual(context.accept(wire).status, Status.CONTINUE_NEEDED)
        self.assertEqual(len(context.client_hello or b""), MAX_CLIENT_HELLO + 4)
        self.assertEqual(parse_client_hello(context.client_hello or b"").errors, ())

    def test_reassembly_stops_at_the_end_of_the_first_message(self) -> None:
        message = build_hello([0x1301], [0x0000])
        after = records(b"\x14\x00\x00\x0c" + bytes(12))
        wire = records(message, fragment=10) + after
        self.assertEqual(handshake_message(wire, frame(wire).ends), message)
        # A record of another type ends it, and so does the limit.
        alert = b"\x15\x03\x03\x00\x02\x02\x28"
        cut = records(message[:30], fragment=10) + alert + records(message[30:])
        self.assertEqual(handshake_message(cut, frame(cut).ends), message[:30])
        self.assertEqual(handshake_message(wire, frame(wire).ends, limit=25), message[:25])


class RegistryNamesTests(SynchronousTestCase):
    """The name tables know every code the linked OpenSSL offers by default."""

    def default_hello(self) -> ClientHello:
        """The ClientHello of a pyOpenSSL client left at OpenSSL's defaults."""
        connection = SSL.Connection(SSL.Context(SSL.TLS_METHOD), None)
        connection.set_connect_state()
        connection.set_tlsext_host_name(b"example.test")
        with self.assertRaises(SSL.WantReadError):
            connection.do_handshake()
        data = connection.bio_read(65536)
        return parse_client_hello(handshake_message(data, frame(data).ends))

    def test_openssl_default_hello_has_no_unknown_code(self) -> None:
        hello = self.default_hello()
        named = {
            "group": [group_name(code) for code in hello.groups],
            "key share": [group_name(share.group) for share in hello.key_shares],
            "cipher suite": [cipher_suite_name(code) for code in hello.cipher_suites],
            "signature scheme": [
                signature_scheme_name(code) for code in hello.signature_algorithms
            ],
            "extension": [extension_name(extension.type) for extension in hello.extensions],
        }
        for kind, names in named.items():
            self.assertEqual([n for n in names if n.startswith("unknown")], [], kind)

    def test_hybrid_and_sm2_groups_are_named(self) -> None:
        self.assertEqual(group_name(0x11EB), "SecP256r1MLKEM768")
        self.assertEqual(group_name(0x11EC), "X25519MLKEM768")
        self.assertEqual(group_name(0x11ED), "SecP384r1MLKEM1024")
        self.assertEqual(group_name(0x11EE), "curveSM2MLKEM768")
        self.assertEqual(group_name(0x0201), "MLKEM768")
        self.assertEqual(group_code("curveSM2MLKEM768"), 0x11EE)
