"""ClientHellos built byte by byte, for the limits a server puts on them.

No TLS library sends a 130 KB ClientHello on request, but OpenSSL accepts
one (its limit is 131,396 bytes of body), and fuzzing suites send them. These
are well-formed TLS 1.2 hellos that a real OpenSSL server answers with a
ServerHello; their size comes from cipher-suite values and extensions that
no server knows and every server must ignore.

Also: :func:`build_hello`, a ClientHello message with chosen cipher suites
and extensions (for the ClientHello parser and JA4), the pieces it is made
of (:func:`u16`, :func:`vector`, :func:`extension`), and the shape of a JA4
fingerprint (:data:`JA4_FORMAT`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

from txschannel.records import MAX_PLAINTEXT

#: ECDHE with AES-GCM, ECDSA and RSA: what any txschannel server accepts.
_SUITES = bytes.fromhex("c02bc02fc02cc030")
#: Unassigned cipher-suite values, repeated to fill the list.
_UNKNOWN_SUITE = bytes.fromhex("0a0a")


def extension(kind: int, body: bytes) -> bytes:
    """One extension: its type, then its body with a 2-byte length."""
    return kind.to_bytes(2, "big") + len(body).to_bytes(2, "big") + body


def _base_extensions(server_name: str) -> bytes:
    name = server_name.encode("ascii")
    entry = b"\x00" + len(name).to_bytes(2, "big") + name
    groups = bytes.fromhex("001d00170018")
    algorithms = bytes.fromhex("040308040401050308050501")
    return b"".join([
        extension(0, len(entry).to_bytes(2, "big") + entry),
        extension(10, len(groups).to_bytes(2, "big") + groups),
        extension(11, b"\x01\x00"),
        extension(13, len(algorithms).to_bytes(2, "big") + algorithms),
        extension(0xFF01, b"\x00"),
    ])


def client_hello_body(size: int, server_name: str = "localhost") -> bytes:
    """A TLS 1.2 ClientHello body of exactly *size* bytes (at least about 100).

    The extensions block grows first (one or two extensions of unknown
    types, within the 65,535 bytes the block may hold), then the
    cipher-suite list (unknown values, two bytes each).
    """
    fixed = b"\x03\x03" + os.urandom(32) + b"\x00"  # version, random, empty session id
    compression = b"\x01\x00"
    extensions = _base_extensions(server_name)
    # version..session id, suites length, suites, compression, extensions length.
    overhead = len(fixed) + 2 + len(_SUITES) + len(compression) + 2 + len(extensions)
    spare = size - overhead
    if spare < 0:
        raise ValueError(f"a ClientHello cannot be as small as {size} bytes")
    to_extensions = min(spare, 65535 - len(extensions))
    if (spare - to_extensions) % 2:
        to_extensions -= 1  # the suites take two bytes a value
    if to_extensions < 8:
        if spare % 2:
            raise ValueError(f"cannot make a ClientHello of exactly {size} bytes")
        to_extensions = 0
    if to_extensions:
        first = to_extensions // 2
        extensions += extension(0x4A4A, bytes(first - 4))
        extensions += extension(0x5A5A, bytes(to_extensions - first - 4))
    left = spare - to_extensions
    # Past the 65,534 bytes a suite list may hold, a session id of up to 32
    # bytes and up to 254 more compression methods (after "null") take the
    # rest: OpenSSL's own limit is the sum of all these maxima.
    over = max(0, left - (65534 - len(_SUITES)))
    session = min(over, 32)
    methods = over - session
    if methods > 254:
        raise ValueError(f"a ClientHello cannot be as large as {size} bytes")
    if session:
        fixed = fixed[:-1] + bytes([session]) + os.urandom(session)
    if methods:
        compression = bytes([1 + methods, 0]) + bytes(range(1, methods + 1))
    suites = _SUITES + _UNKNOWN_SUITE * ((left - over) // 2)
    body = (
        fixed
        + len(suites).to_bytes(2, "big")
        + suites
        + compression
        + len(extensions).to_bytes(2, "big")
        + extensions
    )
    if len(body) != size:
        raise ValueError(f"made a {len(body)}-byte ClientHello, not {size}")
    return body


def records(message: bytes, fragment: int = MAX_PLAINTEXT) -> bytes:
    """*message* (handshake bytes) as TLS 1.0-versioned handshake records of
    at most *fragment* bytes each, as clients send their first flight."""
    return b"".join(
        b"\x16\x03\x01" + len(chunk).to_bytes(2, "big") + chunk
        for chunk in (message[i : i + fragment] for i in range(0, len(message), fragment))
    )


def client_hello(size: int, fragment: int = MAX_PLAINTEXT, server_name: str = "localhost") -> bytes:
    """A well-formed ClientHello with a *size*-byte body, on the wire in records."""
    body = client_hello_body(size, server_name)
    return records(b"\x01" + len(body).to_bytes(3, "big") + body, fragment)


def claimed_client_hello(claimed: int, sent: int, fragment: int = MAX_PLAINTEXT) -> bytes:
    """The first *sent* body bytes of a ClientHello that claims *claimed*:
    what a peer sends before it stalls (framing valid, the message unfinished)."""
    message = b"\x01" + claimed.to_bytes(3, "big") + b"\x03\x03" + bytes(max(sent - 2, 0))
    return records(message, fragment)


#: What any JA4 fingerprint looks like.
JA4_FORMAT = re.compile(
    r"^[tqd](1[0-3]|s[23]|d[123]|00)[di]\d{4}[0-9a-zA-Z]{2}_[0-9a-f]{12}_[0-9a-f]{12}$"
)


def u16(values: Sequence[int]) -> bytes:
    """*values* as 2-byte big-endian integers."""
    return b"".join(v.to_bytes(2, "big") for v in values)


def vector(body: bytes, size: int = 2) -> bytes:
    """*body* after its length in *size* bytes (a TLS vector)."""
    return len(body).to_bytes(size, "big") + body


def extension_body(
    kind: int,
    *,
    server_name: bytes = b"example.com",
    alpn: Sequence[bytes] = (b"h2", b"http/1.1"),
    signature_algorithms: Sequence[int] = (0x0403, 0x0804, 0x0401),
    versions: Sequence[int] = (0x0304, 0x0303),
    groups: Sequence[int] = (0x001D, 0x0017),
    key_shares: Sequence[tuple[int, int]] = ((0x001D, 32),),
    ticket: bytes = b"",
) -> bytes:
    """A well-formed body for extension *kind* (an empty one for kinds we need not fill)."""
    if kind == 0x0000:
        return vector(b"\x00" + vector(server_name))
    if kind == 0x0010:
        return vector(b"".join(vector(p, 1) for p in alpn))
    if kind == 0x000D:
        return vector(u16(signature_algorithms))
    if kind == 0x002B:
        return vector(u16(versions), 1)
    if kind == 0x000A:
        return vector(u16(groups))
    if kind == 0x0033:
        return vector(b"".join(g.to_bytes(2, "big") + vector(bytes(n)) for g, n in key_shares))
    if kind == 0x002D:
        return vector(b"\x01", 1)
    if kind == 0x000B:
        return vector(b"\x00", 1)
    if kind == 0x001B:
        return vector(u16([2]), 1)
    if kind == 0xFF01:
        return b"\x00"
    if kind == 0x0023:
        return ticket
    if kind == 0x0029:
        identity = vector(b"ticket") + bytes(4)
        return vector(identity) + vector(vector(bytes(32), 1))
    return b""


def build_hello(
    ciphers: Sequence[int],
    extensions: Sequence[int],
    *,
    version: int = 0x0303,
    session_id: bytes = bytes(32),
    **bodies: object,
) -> bytes:
    """A ClientHello handshake message with these cipher suites and
    extensions (in this order, bodies from :func:`extension_body`)."""
    block = b"".join(
        extension(kind, extension_body(kind, **bodies))  # type: ignore[arg-type]
        for kind in extensions
    )
    body = (
        version.to_bytes(2, "big") + bytes(range(32)) + vector(session_id, 1)
        + vector(u16(ciphers)) + b"\x01\x00" + vector(block)
    )
    return b"\x01" + len(body).to_bytes(3, "big") + body
