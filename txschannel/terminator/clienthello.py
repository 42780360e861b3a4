"""What a TLS client offered: its ClientHello, parsed, and its JA4 fingerprint.

Pure functions over bytes, no OpenSSL. A server context that is asked to
keep the ClientHello (``ServerContext(..., keep_client_hello=True)``) keeps
the handshake message as it arrived; :func:`parse_client_hello` reads it
into a :class:`ClientHello`: versions, cipher suites, groups, signature
schemes, ALPN, server name, key shares and every extension in order, each
code with its IANA name and GREASE values (RFC 8701) marked.

The parser never raises on bad input: a truncated or malformed hello gives
what could be read, with the problems listed in :attr:`ClientHello.errors`,
because what it reads was written by whoever is on the other end.

:func:`ja4` computes FoxIO's JA4 fingerprint of the hello (and its raw and
original-order forms), as the JA4 technical details define it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

# handshake_message (the record-level reassembly) lives with the framing it
# reads, so that the library's context need not import this module.
from txschannel.records import handshake_message

__all__ = [
    "ClientHello",
    "Extension",
    "KeyShare",
    "parse_client_hello",
    "handshake_message",
    "ja4",
    "is_grease",
    "cipher_suite_name",
    "group_name",
    "signature_scheme_name",
    "extension_name",
    "version_name",
    "psk_mode_name",
    "compression_name",
    "cipher_suite_code",
    "group_code",
]

#: The handshake message type of a ClientHello (RFC 8446 section 4).
CLIENT_HELLO = 1

# -- names (IANA's TLS registries) ---------------------------------------------

_VERSIONS: dict[int, str] = {
    0x0002: "SSL 2.0",
    0x0300: "SSL 3.0",
    0x0301: "TLS 1.0",
    0x0302: "TLS 1.1",
    0x0303: "TLS 1.2",
    0x0304: "TLS 1.3",
    0xFEFF: "DTLS 1.0",
    0xFEFD: "DTLS 1.2",
    0xFEFC: "DTLS 1.3",
}


def _suites(prefix: str, names: dict[int, str]) -> dict[int, str]:
    return {code: prefix + name for code, name in names.items()}


#: TLS Cipher Suites: the ones clients of the last twenty years offer.
_CIPHER_SUITES: dict[int, str] = {
    0x0000: "TLS_NULL_WITH_NULL_NULL",
    0x00FF: "TLS_EMPTY_RENEGOTIATION_INFO_SCSV",
    0x5600: "TLS_FALLBACK_SCSV",
    0x1301: "TLS_AES_128_GCM_SHA256",
    0x1302: "TLS_AES_256_GCM_SHA384",
    0x1303: "TLS_CHACHA20_POLY1305_SHA256",
    0x1304: "TLS_AES_128_CCM_SHA256",
    0x1305: "TLS_AES_128_CCM_8_SHA256",
    **_suites("TLS_RSA_WITH_", {
        0x0001: "NULL_MD5", 0x0002: "NULL_SHA", 0x003B: "NULL_SHA256",
        0x0004: "RC4_128_MD5", 0x0005: "RC4_128_SHA", 0x0007: "IDEA_CBC_SHA",
        0x0009: "DES_CBC_SHA", 0x000A: "3DES_EDE_CBC_SHA",
        0x002F: "AES_128_CBC_SHA", 0x0035: "AES_256_CBC_SHA",
        0x003C: "AES_128_CBC_SHA256", 0x003D: "AES_256_CBC_SHA256",
        0x009C: "AES_128_GCM_SHA256", 0x009D: "AES_256_GCM_SHA384",
        0xC09C: "AES_128_CCM", 0xC09D: "AES_256_CCM",
        0xC0A0: "AES_128_CCM_8", 0xC0A1: "AES_256_CCM_8",
        0x0041: "CAMELLIA_128_CBC_SHA", 0x0084: "CAMELLIA_256_CBC_SHA",
        0x00BA: "CAMELLIA_128_CBC_SHA256", 0x00C0: "CAMELLIA_256_CBC_SHA256",
        0xC07A: "CAMELLIA_128_GCM_SHA256", 0xC07B: "CAMELLIA_256_GCM_SHA384",
        0x0096: "SEED_CBC_SHA",
        0xC03C: "ARIA_128_CBC_SHA256", 0xC03D: "ARIA_256_CBC_SHA384",
        0xC050: "ARIA_128_GCM_SHA256", 0xC051: "ARIA_256_GCM_SHA384",
    }),
    **_suites("TLS_DHE_RSA_WITH_", {
        0x0015: "DES_CBC_SHA", 0x0016: "3DES_EDE_CBC_SHA",
        0x0033: "AES_128_CBC_SHA", 0x0039: "AES_256_CBC_SHA",
        0x0067: "AES_128_CBC_SHA256", 0x006B: "AES_256_CBC_SHA256",
        0x009E: "AES_128_GCM_SHA256", 0x009F: "AES_256_GCM_SHA384",
        0xC09E: "AES_128_CCM", 0xC09F: "AES_256_CCM",
        0xC0A2: "AES_128_CCM_8", 0xC0A3: "AES_256_CCM_8",
        0xCCAA: "CHACHA20_POLY1305_SHA256",
        0x0045: "CAMELLIA_128_CBC_SHA", 0x0088: "CAMELLIA_256_CBC_SHA",
        0x00BE: "CAMELLIA_128_CBC_SHA256", 0x00C4: "CAMELLIA_256_CBC_SHA256",
        0xC07C: "CAMELLIA_128_GCM_SHA256", 0xC07D: "CAMELLIA_256_GCM_SHA384",
        0x009A: "SEED_CBC_SHA",
        0xC044: "ARIA_128_CBC_SHA256", 0xC045: "ARIA_256_CBC_SHA384",
        0xC052: "ARIA_128_GCM_SHA256", 0xC053: "ARIA_256_GCM_SHA384",
    }),
    **_suites("TLS_DHE_DSS_WITH_", {
        0x0013: "3DES_EDE_CBC_SHA",
        0x0032: "AES_128_CBC_SHA", 0x0038: "AES_256_CBC_SHA",
        0x0040: "AES_128_CBC_SHA256", 0x006A: "AES_256_CBC_SHA256",
        0x00A2: "AES_128_GCM_SHA256", 0x00A3: "AES_256_GCM_SHA384",
        0x0044: "CAMELLIA_128_CBC_SHA", 0x0087: "CAMELLIA_256_CBC_SHA",
    }),
    **_suites("TLS_ECDHE_ECDSA_WITH_", {
        0xC006: "NULL_SHA", 0xC007: "RC4_128_SHA", 0xC008: "3DES_EDE_CBC_SHA",
        0xC009: "AES_128_CBC_SHA", 0xC00A: "AES_256_CBC_SHA",
        0xC023: "AES_128_CBC_SHA256", 0xC024: "AES_256_CBC_SHA384",
        0xC02B: "AES_128_GCM_SHA256", 0xC02C: "AES_256_GCM_SHA384",
        0xC0AC: "AES_128_CCM", 0xC0AD: "AES_256_CCM",
        0xC0AE: "AES_128_CCM_8", 0xC0AF: "AES_256_CCM_8",
        0xCCA9: "CHACHA20_POLY1305_SHA256",
        0xC072: "CAMELLIA_128_CBC_SHA256", 0xC073: "CAMELLIA_256_CBC_SHA384",
        0xC086: "CAMELLIA_128_GCM_SHA256", 0xC087: "CAMELLIA_256_GCM_SHA384",
        0xC048: "ARIA_128_CBC_SHA256", 0xC049: "ARIA_256_CBC_SHA384",
        0xC05C: "ARIA_128_GCM_SHA256", 0xC05D: "ARIA_256_GCM_SHA384",
    }),
    **_suites("TLS_ECDHE_RSA_WITH_", {
        0xC010: "NULL_SHA", 0xC011: "RC4_128_SHA", 0xC012: "3DES_EDE_CBC_SHA",
        0xC013: "AES_128_CBC_SHA", 0xC014: "AES_256_CBC_SHA",
        0xC027: "AES_128_CBC_SHA256", 0xC028: "AES_256_CBC_SHA384",
        0xC02F: "AES_128_GCM_SHA256", 0xC030: "AES_256_GCM_SHA384",
        0xCCA8: "CHACHA20_POLY1305_SHA256",
        0xC076: "CAMELLIA_128_CBC_SHA256", 0xC077: "CAMELLIA_256_CBC_SHA384",
        0xC08A: "CAMELLIA_128_GCM_SHA256", 0xC08B: "CAMELLIA_256_GCM_SHA384",
        0xC04C: "ARIA_128_CBC_SHA256", 0xC04D: "ARIA_256_CBC_SHA384",
        0xC060: "ARIA_128_GCM_SHA256", 0xC061: "ARIA_256_GCM_SHA384",
    }),
    **_suites("TLS_ECDH_ECDSA_WITH_", {
        0xC004: "AES_128_CBC_SHA", 0xC005: "AES_256_CBC_SHA",
        0xC025: "AES_128_CBC_SHA256", 0xC026: "AES_256_CBC_SHA384",
        0xC02D: "AES_128_GCM_SHA256", 0xC02E: "AES_256_GCM_SHA384",
    }),
    **_suites("TLS_ECDH_RSA_WITH_", {
        0xC00E: "AES_128_CBC_SHA", 0xC00F: "AES_256_CBC_SHA",
        0xC029: "AES_128_CBC_SHA256", 0xC02A: "AES_256_CBC_SHA384",
        0xC031: "AES_128_GCM_SHA256", 0xC032: "AES_256_GCM_SHA384",
    }),
    **_suites("TLS_PSK_WITH_", {
        0x008C: "AES_128_CBC_SHA", 0x008D: "AES_256_CBC_SHA",
        0x00AE: "AES_128_CBC_SHA256", 0x00AF: "AES_256_CBC_SHA384",
        0x00A8: "AES_128_GCM_SHA256", 0x00A9: "AES_256_GCM_SHA384",
        0xC0A4: "AES_128_CCM", 0xC0A5: "AES_256_CCM",
        0xC0A8: "AES_128_CCM_8", 0xC0A9: "AES_256_CCM_8",
        0xCCAB: "CHACHA20_POLY1305_SHA256",
    }),
    **_suites("TLS_DHE_PSK_WITH_", {
        0x0090: "AES_128_CBC_SHA", 0x0091: "AES_256_CBC_SHA",
        0x00B2: "AES_128_CBC_SHA256", 0x00B3: "AES_256_CBC_SHA384",
        0x00AA: "AES_128_GCM_SHA256", 0x00AB: "AES_256_GCM_SHA384",
        0xC0A6: "AES_128_CCM", 0xC0A7: "AES_256_CCM",
        0xCCAD: "CHACHA20_POLY1305_SHA256",
    }),
    **_suites("TLS_RSA_PSK_WITH_", {
        0x0094: "AES_128_CBC_SHA", 0x0095: "AES_256_CBC_SHA",
        0x00B6: "AES_128_CBC_SHA256", 0x00B7: "AES_256_CBC_SHA384",
        0x00AC: "AES_128_GCM_SHA256", 0x00AD: "AES_256_GCM_SHA384",
        0xCCAE: "CHACHA20_POLY1305_SHA256",
    }),
    **_suites("TLS_ECDHE_PSK_WITH_", {
        0xC035: "AES_128_CBC_SHA", 0xC036: "AES_256_CBC_SHA",
        0xC037: "AES_128_CBC_SHA256", 0xC038: "AES_256_CBC_SHA384",
        0xCCAC: "CHACHA20_POLY1305_SHA256",
        0xD001: "AES_128_GCM_SHA256", 0xD002: "AES_256_GCM_SHA384",
        0xD003: "AES_128_CCM_8_SHA256", 0xD005: "AES_128_CCM_SHA256",
    }),
    **_suites("TLS_SRP_SHA_", {
        0xC01A: "WITH_3DES_EDE_CBC_SHA", 0xC01B: "RSA_WITH_3DES_EDE_CBC_SHA",
        0xC01C: "DSS_WITH_3DES_EDE_CBC_SHA", 0xC01D: "WITH_AES_128_CBC_SHA",
        0xC01E: "RSA_WITH_AES_128_CBC_SHA", 0xC01F: "DSS_WITH_AES_128_CBC_SHA",
        0xC020: "WITH_AES_256_CBC_SHA", 0xC021: "RSA_WITH_AES_256_CBC_SHA",
        0xC022: "DSS_WITH_AES_256_CBC_SHA",
    }),
}

#: TLS Supported Groups. Refreshed on 2026-12-07 against IANA's "TLS
#: Supported Groups" registry (https://www.iana.org/assignments/tls-parameters/,
#: tls-parameters-8), from what is known for certain of its contents, after
#: OpenSSL 4's default ClientHello offered 0x11EE. Codes not listed (other
#: drafts, private use) print as "unknown (0x....)".
_GROUPS: dict[int, str] = {
    # RFC 4492's curves, deprecated by RFC 8422 (but still seen in old hellos).
    0x0001: "sect163k1",
    0x0002: "sect163r1",
    0x0003: "sect163r2",
    0x0004: "sect193r1",
    0x0005: "sect193r2",
    0x0006: "sect233k1",
    0x0007: "sect233r1",
    0x0008: "sect239k1",
    0x0009: "sect283k1",
    0x000A: "sect283r1",
    0x000B: "sect409k1",
    0x000C: "sect409r1",
    0x000D: "sect571k1",
    0x000E: "sect571r1",
    0x000F: "secp160k1",
    0x0010: "secp160r1",
    0x0011: "secp160r2",
    0x0012: "secp192k1",
    0x0013: "secp192r1",
    0x0014: "secp224k1",
    0x0015: "secp224r1",
    0x0016: "secp256k1",
    0x0017: "secp256r1",
    0x0018: "secp384r1",
    0x0019: "secp521r1",
    0x001A: "brainpoolP256r1",
    0x001B: "brainpoolP384r1",
    0x001C: "brainpoolP512r1",
    0x001D: "x25519",
    0x001E: "x448",
    0x001F: "brainpoolP256r1tls13",
    0x0020: "brainpoolP384r1tls13",
    0x0021: "brainpoolP512r1tls13",
    0x0022: "GC256A",
    0x0023: "GC256B",
    0x0024: "GC256C",
    0x0025: "GC256D",
    0x0026: "GC512A",
    0x0027: "GC512B",
    0x0028: "GC512C",
    0x0029: "curveSM2",
    0x0100: "ffdhe2048",
    0x0101: "ffdhe3072",
    0x0102: "ffdhe4096",
    0x0103: "ffdhe6144",
    0x0104: "ffdhe8192",
    0x0200: "MLKEM512",
    0x0201: "MLKEM768",
    0x0202: "MLKEM1024",
    0x11EB: "SecP256r1MLKEM768",
    0x11EC: "X25519MLKEM768",
    0x11ED: "SecP384r1MLKEM1024",
    0x11EE: "curveSM2MLKEM768",
    0x6399: "X25519Kyber768Draft00",
    0x639A: "SecP256r1Kyber768Draft00",
    0xFF01: "arbitrary_explicit_prime_curves",
    0xFF02: "arbitrary_explicit_char2_curves",
}

#: Other spellings of the groups, as OpenSSL names the negotiated one.
_GROUP_ALIASES: dict[str, int] = {
    "prime256v1": 0x0017,
    "p-256": 0x0017,
    "p-384": 0x0018,
    "p-521": 0x0019,
}

#: TLS SignatureScheme, and the TLS 1.2 (hash, signature) pairs before it.
_SIGNATURE_SCHEMES: dict[int, str] = {
    0x0201: "rsa_pkcs1_sha1",
    0x0202: "dsa_sha1",
    0x0203: "ecdsa_sha1",
    0x0301: "rsa_sha224",
    0x0302: "dsa_sha224",
    0x0303: "ecdsa_sha224",
    0x0401: "rsa_pkcs1_sha256",
    0x0402: "dsa_sha256",
    0x0403: "ecdsa_secp256r1_sha256",
    0x0420: "rsa_pkcs1_sha256_legacy",
    0x0501: "rsa_pkcs1_sha384",
    0x0502: "dsa_sha384",
    0x0503: "ecdsa_secp384r1_sha384",
    0x0520: "rsa_pkcs1_sha384_legacy",
    0x0601: "rsa_pkcs1_sha512",
    0x0602: "dsa_sha512",
    0x0603: "ecdsa_secp521r1_sha512",
    0x0620: "rsa_pkcs1_sha512_legacy",
    0x0704: "eccsi_sha256",
    0x0708: "sm2sig_sm3",
    0x0804: "rsa_pss_rsae_sha256",
    0x0805: "rsa_pss_rsae_sha384",
    0x0806: "rsa_pss_rsae_sha512",
    0x0807: "ed25519",
    0x0808: "ed448",
    0x0809: "rsa_pss_pss_sha256",
    0x080A: "rsa_pss_pss_sha384",
    0x080B: "rsa_pss_pss_sha512",
    0x081A: "ecdsa_brainpoolP256r1tls13_sha256",
    0x081B: "ecdsa_brainpoolP384r1tls13_sha384",
    0x081C: "ecdsa_brainpoolP512r1tls13_sha512",
    0x0904: "mldsa44",
    0x0905: "mldsa65",
    0x0906: "mldsa87",
}

#: TLS ExtensionType Values.
_EXTENSIONS: dict[int, str] = {
    0: "server_name",
    1: "max_fragment_length",
    2: "client_certificate_url",
    3: "trusted_ca_keys",
    4: "truncated_hmac",
    5: "status_request",
    6: "user_mapping",
    7: "client_authz",
    8: "server_authz",
    9: "cert_type",
    10: "supported_groups",
    11: "ec_point_formats",
    12: "srp",
    13: "signature_algorithms",
    14: "use_srtp",
    15: "heartbeat",
    16: "application_layer_protocol_negotiation",
    17: "status_request_v2",
    18: "signed_certificate_timestamp",
    19: "client_certificate_type",
    20: "server_certificate_type",
    21: "padding",
    22: "encrypt_then_mac",
    23: "extended_master_secret",
    24: "token_binding",
    25: "cached_info",
    26: "tls_lts",
    27: "compress_certificate",
    28: "record_size_limit",
    29: "pwd_protect",
    30: "pwd_clear",
    31: "password_salt",
    32: "ticket_pinning",
    33: "tls_cert_with_extern_psk",
    34: "delegated_credential",
    35: "session_ticket",
    36: "TLMSP",
    37: "TLMSP_proxying",
    38: "TLMSP_delegate",
    39: "supported_ekt_ciphers",
    41: "pre_shared_key",
    42: "early_data",
    43: "supported_versions",
    44: "cookie",
    45: "psk_key_exchange_modes",
    47: "certificate_authorities",
    48: "oid_filters",
    49: "post_handshake_auth",
    50: "signature_algorithms_cert",
    51: "key_share",
    52: "transparency_info",
    53: "connection_id (deprecated)",
    54: "connection_id",
    55: "external_id_hash",
    56: "external_session_id",
    57: "quic_transport_parameters",
    58: "ticket_request",
    59: "dnssec_chain",
    60: "sequence_number_encryption_algorithms",
    61: "rrc",
    0x3374: "next_protocol_negotiation",
    0x4469: "application_settings (old)",
    0x44CD: "application_settings",
    0xFD00: "encrypted_client_hello (draft)",
    0xFE0D: "encrypted_client_hello",
    0xFF01: "renegotiation_info",
}

_PSK_MODES: dict[int, str] = {0: "psk_ke", 1: "psk_dhe_ke"}
_POINT_FORMATS: dict[int, str] = {
    0: "uncompressed",
    1: "ansiX962_compressed_prime",
    2: "ansiX962_compressed_char2",
}
_COMPRESSION: dict[int, str] = {0: "null", 1: "DEFLATE", 64: "LZS"}
_CERTIFICATE_COMPRESSION: dict[int, str] = {1: "zlib", 2: "brotli", 3: "zstd"}


def is_grease(value: int) -> bool:
    """Whether a 16-bit code is one of RFC 8701's GREASE values (0x0A0A, 0x1A1A, ... 0xFAFA).

    Clients put these in their lists so that servers learn to ignore codes
    they do not know; they mean nothing.
    """
    return (value & 0x0F0F) == 0x0A0A and (value >> 8) == (value & 0xFF)


def _is_grease_mode(value: int) -> bool:
    """RFC 8701's GREASE values for one-byte PSK key exchange modes (0x0B, 0x2A, ...)."""
    return value % 0x1F == 0x0B


def _name(table: dict[int, str], value: int, width: int = 4) -> str:
    if width == 4 and is_grease(value):
        return "GREASE"
    name = table.get(value)
    return name if name is not None else f"unknown (0x{value:0{width}x})"


def cipher_suite_name(code: int) -> str:
    """The IANA name of cipher suite *code*, ``"GREASE"``, or ``"unknown (0x....)"``."""
    return _name(_CIPHER_SUITES, code)


def group_name(code: int) -> str:
    """The IANA name of supported group *code*, ``"GREASE"``, or ``"unknown (0x....)"``."""
    return _name(_GROUPS, code)


def group_code(name: str) -> int | None:
    """The code of the group OpenSSL calls *name* (``x25519``, ``prime256v1``, ...), if known."""
    lowered = name.lower()
    if lowered in _GROUP_ALIASES:
        return _GROUP_ALIASES[lowered]
    for code, known in _GROUPS.items():
        if known.lower() == lowered:
            return code
    return None


def signature_scheme_name(code: int) -> str:
    """The IANA name of signature scheme *code*, ``"GREASE"``, or ``"unknown (0x....)"``."""
    return _name(_SIGNATURE_SCHEMES, code)


def extension_name(code: int) -> str:
    """The IANA name of extension type *code*, ``"GREASE"``, or ``"unknown (0x....)"``."""
    return _name(_EXTENSIONS, code)


def psk_mode_name(code: int) -> str:
    """The name of PSK key exchange mode *code* (one byte), ``"GREASE"``, or
    ``"unknown (0x..)"``."""
    if _is_grease_mode(code):
        return "GREASE"
    return _name(_PSK_MODES, code, 2)


def compression_name(code: int) -> str:
    """The name of compression method *code* (one byte), or ``"unknown (0x..)"``."""
    return _name(_COMPRESSION, code, 2)


def _openssl_spelling(name: str) -> str | None:
    """OpenSSL's name for the TLS 1.2 suite IANA calls *name* (e.g.
    ``ECDHE-RSA-AES128-GCM-SHA256``); None for names OpenSSL keeps as IANA's."""
    exchange, separator, rest = name.removeprefix("TLS_").partition("_WITH_")
    if not separator:
        return None
    for long, short in (("AES_128", "AES128"), ("AES_256", "AES256"),
                        ("CAMELLIA_128", "CAMELLIA128"), ("CAMELLIA_256", "CAMELLIA256"),
                        ("CHACHA20_POLY1305_SHA256", "CHACHA20_POLY1305"),
                        ("3DES_EDE_CBC", "DES_CBC3"), ("CCM_8", "CCM8"), ("_CBC_", "_")):
        rest = rest.replace(long, short)
    prefix = "" if exchange == "RSA" else exchange + "_"
    return (prefix + rest).replace("_", "-")


_SUITE_CODES: dict[str, int] = {}


def cipher_suite_code(name: str) -> int | None:
    """The code of the cipher suite called *name*, by IANA's name or OpenSSL's
    (``ECDHE-ECDSA-AES256-GCM-SHA384``), or None if it is not known."""
    if not _SUITE_CODES:
        for code, iana in _CIPHER_SUITES.items():
            _SUITE_CODES[iana] = code
            spelling = _openssl_spelling(iana)
            if spelling is not None:
                _SUITE_CODES.setdefault(spelling, code)
    return _SUITE_CODES.get(name)


def version_name(code: int) -> str:
    """``"TLS 1.3"`` for 0x0304 and so on, ``"GREASE"``, or ``"unknown (0x....)"``."""
    if (code >> 8) == 0x7F:
        return f"TLS 1.3 draft {code & 0xFF}"
    return _name(_VERSIONS, code)


# -- the parsed hello -------------------------------------------------------------


@dataclass(frozen=True)
class Extension:
    """One extension as the client sent it: its type code and its bytes."""

    type: int
    data: bytes

    @property
    def name(self) -> str:
        """The IANA name of the type (see :func:`extension_name`)."""
        return extension_name(self.type)

    @property
    def grease(self) -> bool:
        """Whether the type is a GREASE value."""
        return is_grease(self.type)


@dataclass(frozen=True)
class KeyShare:
    """One key_share entry: the group and the size of the public key offered for it."""

    group: int
    size: int


@dataclass(frozen=True)
class ClientHello:
    """A ClientHello as far as it could be read.

    Lists keep the client's order and its GREASE values. An extension that
    was not sent leaves its field empty (``supported_versions`` is ``None``
    then, because an empty list means something else); :attr:`errors` says
    what could not be read, and when it is not empty the fields after the
    problem may be missing.

    :ivar size: how many bytes of the message were given (header included).
    :ivar declared: the body length the message header claims.
    :ivar legacy_version: ``client_version`` (0x0303 in TLS 1.2 and 1.3).
    :ivar session_id: the legacy session id (TLS 1.2 resumption, or 32
        random bytes for middlebox compatibility in TLS 1.3).
    :ivar server_name: the host_name of the server_name extension (SNI).
    :ivar alpn: the protocol names offered by ALPN, in order.
    :ivar supported_versions: the supported_versions extension's list.
    :ivar key_shares: the key_share extension's entries.
    :ivar psk_identities: how many identities pre_shared_key offers
        (a TLS 1.3 resumption attempt).
    :ivar session_ticket: the size of the ticket in session_ticket (a TLS
        1.2 resumption attempt when above 0), ``None`` without the extension.
    """

    size: int = 0
    declared: int = 0
    legacy_version: int | None = None
    random: bytes = b""
    session_id: bytes = b""
    cipher_suites: tuple[int, ...] = ()
    compression_methods: tuple[int, ...] = ()
    extensions: tuple[Extension, ...] = ()
    server_name: str | None = None
    alpn: tuple[bytes, ...] = ()
    supported_versions: tuple[int, ...] | None = None
    groups: tuple[int, ...] = ()
    signature_algorithms: tuple[int, ...] = ()
    signature_algorithms_cert: tuple[int, ...] = ()
    key_shares: tuple[KeyShare, ...] = ()
    psk_key_exchange_modes: tuple[int, ...] = ()
    ec_point_formats: tuple[int, ...] = ()
    certificate_compression: tuple[int, ...] = ()
    psk_identities: int = 0
    session_ticket: int | None = None
    early_data: bool = False
    errors: tuple[str, ...] = ()

    @property
    def extension_types(self) -> tuple[int, ...]:
        """The extension type codes in the order they were sent."""
        return tuple(extension.type for extension in self.extensions)

    @property
    def highest_version(self) -> int | None:
        """The highest version offered, GREASE aside: from supported_versions
        when the client sent it, else ``legacy_version``."""
        offered = [v for v in self.supported_versions or () if not is_grease(v)]
        return max(offered) if offered else self.legacy_version

    @property
    def resumption(self) -> str | None:
        """What the client offered to resume, if anything: ``"TLS 1.3 PSK"``,
        ``"TLS 1.2 session ticket"`` or ``"TLS 1.2 session id"``."""
        if self.psk_identities:
            return "TLS 1.3 PSK"
        if self.session_ticket:
            return "TLS 1.2 session ticket"
        tls13 = self.highest_version == 0x0304
        if self.session_id and not tls13:
            return "TLS 1.2 session id"
        return None


#: The ClientHello fields read so far, by name (internal).
_Fields = dict[str, Any]


class _Short(Exception):
    """The input ended before the field being read (internal)."""


class _Reader:
    """Reads big-endian fields and length-prefixed vectors from a slice of bytes."""

    __slots__ = ("data", "position", "end")

    def __init__(self, data: bytes, position: int = 0, end: int | None = None) -> None:
        self.data = data
        self.position = position
        self.end = len(data) if end is None else end

    @property
    def left(self) -> int:
        return self.end - self.position

    def take(self, count: int, what: str) -> bytes:
        if count > self.left:
            raise _Short(f"{what}: needs {count} bytes, {self.left} left")
        start = self.position
        self.position += count
        return self.data[start : self.position]

    def rest(self) -> bytes:
        """Every byte left."""
        return self.take(self.left, "")

    def number(self, size: int, what: str) -> int:
        return int.from_bytes(self.take(size, what), "big")

    def vector(self, length_size: int, what: str) -> _Reader:
        """The vector that starts here (its length prefix, then its bytes)."""
        length = self.number(length_size, f"{what} length")
        if length > self.left:
            raise _Short(f"{what}: declares {length} bytes, {self.left} left")
        inner = _Reader(self.data, self.position, self.position + length)
        self.position += length
        return inner

    def numbers(self, size: int, what: str) -> tuple[int, ...]:
        """Every *size*-byte number to the end (a trailing odd byte is an error)."""
        if self.left % size:
            raise _Short(f"{what}: {self.left} bytes is not a whole number of "
                         f"{size}-byte values")
        values = tuple(
            int.from_bytes(self.data[i : i + size], "big")
            for i in range(self.position, self.end, size)
        )
        self.position = self.end
        return values


def _server_name(reader: _Reader, fields: _Fields) -> None:
    names = reader.vector(2, "server_name list")
    while names.left:
        kind = names.number(1, "server_name type")
        name = names.vector(2, "server_name").rest()
        if kind == 0 and "server_name" not in fields:
            fields["server_name"] = name.decode("utf-8", "backslashreplace")


def _alpn(reader: _Reader, fields: _Fields) -> None:
    protocols = reader.vector(2, "ALPN list")
    names: list[bytes] = []
    while protocols.left:
        names.append(protocols.vector(1, "ALPN protocol").rest())
    fields["alpn"] = tuple(names)


def _number_list(name: str, length_size: int, size: int) -> Callable[[_Reader, _Fields], None]:
    def parse(reader: _Reader, fields: _Fields) -> None:
        fields[name] = reader.vector(length_size, name).numbers(size, name)

    return parse


def _key_share(reader: _Reader, fields: _Fields) -> None:
    entries = reader.vector(2, "key_share list")
    shares: list[KeyShare] = []
    while entries.left:
        group = entries.number(2, "key_share group")
        shares.append(KeyShare(group, entries.vector(2, "key_exchange").left))
    fields["key_shares"] = tuple(shares)


def _pre_shared_key(reader: _Reader, fields: _Fields) -> None:
    identities = reader.vector(2, "PSK identities")
    count = 0
    while identities.left:
        identities.vector(2, "PSK identity")
        identities.take(4, "obfuscated_ticket_age")
        count += 1
    binders = reader.vector(2, "PSK binders")
    while binders.left:
        binders.vector(1, "PSK binder")
    fields["psk_identities"] = count


def _session_ticket(reader: _Reader, fields: _Fields) -> None:
    fields["session_ticket"] = reader.left
    reader.position = reader.end


def _early_data(reader: _Reader, fields: _Fields) -> None:
    fields["early_data"] = True


_EXTENSION_PARSERS: dict[int, Callable[[_Reader, _Fields], None]] = {
    0: _server_name,
    10: _number_list("groups", 2, 2),
    11: _number_list("ec_point_formats", 1, 1),
    13: _number_list("signature_algorithms", 2, 2),
    16: _alpn,
    27: _number_list("certificate_compression", 1, 2),
    35: _session_ticket,
    41: _pre_shared_key,
    42: _early_data,
    43: _number_list("supported_versions", 1, 2),
    45: _number_list("psk_key_exchange_modes", 1, 1),
    50: _number_list("signature_algorithms_cert", 2, 2),
    51: _key_share,
}


def parse_client_hello(message: bytes | bytearray | memoryview) -> ClientHello:
    """Read a ClientHello handshake message (its 4-byte header, then the body).

    Never raises for bad input: whatever could not be read is described in
    the result's ``errors``, and the fields read before it are filled in.
    """
    data = bytes(message)
    fields: _Fields = {"size": len(data)}
    errors: list[str] = []
    try:
        _parse(data, fields, errors)
    except _Short as e:
        errors.append(f"truncated: {e}")
    return ClientHello(**fields, errors=tuple(errors))


def _parse(data: bytes, fields: _Fields, errors: list[str]) -> None:
    reader = _Reader(data)
    kind = reader.number(1, "handshake type")
    if kind != CLIENT_HELLO:
        errors.append(f"not a ClientHello: handshake message type {kind}")
        return
    declared = reader.number(3, "handshake length")
    fields["declared"] = declared
    if declared > reader.left:
        errors.append(f"truncated: the message declares {declared} bytes, {reader.left} present")
    elif declared < reader.left:
        errors.append(f"{reader.left - declared} bytes after the end of the message ignored")
        reader.end = reader.position + declared
    fields["legacy_version"] = reader.number(2, "client_version")
    fields["random"] = reader.take(32, "random")
    fields["session_id"] = reader.vector(1, "session_id").rest()
    fields["cipher_suites"] = reader.vector(2, "cipher_suites").numbers(2, "cipher_suites")
    fields["compression_methods"] = reader.vector(1, "compression_methods").numbers(
        1, "compression_methods"
    )
    if not reader.left:
        return  # (a hello without extensions: SSL 3.0 style)
    block = reader.vector(2, "extensions")
    if reader.left:
        errors.append(f"{reader.left} bytes after the extensions ignored")
    extensions: list[Extension] = []
    seen: set[int] = set()
    try:
        while block.left:
            kind = block.number(2, "extension type")
            body = block.vector(2, f"extension {extension_name(kind)}")
            extensions.append(Extension(kind, body.data[body.position : body.end]))
            if kind in seen:
                errors.append(f"extension {extension_name(kind)} sent twice")
                continue
            seen.add(kind)
            parser = _EXTENSION_PARSERS.get(kind)
            if parser is None:
                continue
            try:
                parser(body, fields)
                if body.left:
                    errors.append(f"extension {extension_name(kind)}: {body.left} bytes "
                                  "after its contents ignored")
            except _Short as e:
                errors.append(f"extension {extension_name(kind)} is malformed: {e}")
    finally:
        fields["extensions"] = tuple(extensions)


# -- JA4 ------------------------------------------------------------------------

_JA4_VERSIONS: dict[int, str] = {
    0x0304: "13",
    0x0303: "12",
    0x0302: "11",
    0x0301: "10",
    0x0300: "s3",
    0x0002: "s2",
    0xFEFF: "d1",
    0xFEFD: "d2",
    0xFEFC: "d3",
}
_EMPTY_HASH = "000000000000"


def _alphanumeric(byte: int) -> bool:
    return 0x30 <= byte <= 0x39 or 0x41 <= byte <= 0x5A or 0x61 <= byte <= 0x7A


def _ja4_alpn(alpn: Sequence[bytes]) -> str:
    offered = [p for p in alpn if not (len(p) == 2 and is_grease(int.from_bytes(p, "big")))]
    if not offered or not offered[0]:
        return "00"
    first = offered[0]
    if _alphanumeric(first[0]) and _alphanumeric(first[-1]):
        return chr(first[0]) + chr(first[-1])
    digits = first.hex()
    return digits[0] + digits[-1]


def _hash12(text: str) -> str:
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:12]


def ja4(hello: ClientHello, *, raw: bool = False, original: bool = False,
        transport: str = "t") -> str:
    """FoxIO's JA4 fingerprint of *hello*, e.g. ``t13d1516h2_8daaf6152771_e5627efa2ab1``.

    As the JA4 technical details define it: GREASE ignored everywhere; the
    version from supported_versions (its highest value) or else the
    hello's version; ``d`` with SNI, ``i`` without; the counts of cipher
    suites and extensions (at most 99); the first and last characters of
    the first ALPN value; then 12 hex digits of SHA-256 over the cipher
    suites sorted, and over the extensions sorted (SNI and ALPN left out)
    followed by the signature algorithms in their order.

    :param raw: JA4_r: the lists themselves instead of their hashes.
    :param original: JA4_o: the lists in the order the client sent them,
        SNI and ALPN included in the extensions.
    :param transport: ``"t"`` (TLS over TCP), ``"q"`` (QUIC) or ``"d"`` (DTLS).
    """
    ciphers = [c for c in hello.cipher_suites if not is_grease(c)]
    extensions = [e for e in hello.extension_types if not is_grease(e)]
    algorithms = [a for a in hello.signature_algorithms if not is_grease(a)]
    version = hello.highest_version
    part_a = (
        transport
        + (_JA4_VERSIONS.get(version, "00") if version is not None else "00")
        + ("d" if 0 in extensions else "i")
        + f"{min(len(ciphers), 99):02d}"
        + f"{min(len(extensions), 99):02d}"
        + _ja4_alpn(hello.alpn)
    )
    if not original:
        ciphers = sorted(ciphers)
        extensions = sorted(e for e in extensions if e not in (0x0000, 0x0010))
    cipher_text = ",".join(f"{c:04x}" for c in ciphers)
    extension_text = ",".join(f"{e:04x}" for e in extensions)
    if algorithms:
        extension_text += "_" + ",".join(f"{a:04x}" for a in algorithms)
    if raw:
        return f"{part_a}_{cipher_text}_{extension_text}"
    part_b = _hash12(cipher_text) if ciphers else _EMPTY_HASH
    part_c = _hash12(extension_text) if extensions else _EMPTY_HASH
    return f"{part_a}_{part_b}_{part_c}"
