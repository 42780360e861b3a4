"""``--proxy-protocol v1|v2``: tell the backend who the client is, in HAProxy's PROXY header.

The header is the first thing written on each backend connection, before
any byte from the client (the `PROXY protocol
<https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt>`_, versions 1
and 2). It carries the client's address and port and the address and port
the client connected to; behind a ``haproxy:`` listener, the addresses
that listener was told.

Version 2 also carries what the TLS handshake established, in TLVs as
hitch and ghostunnel send them:

- ``PP2_TYPE_ALPN`` (0x01): the negotiated application protocol;
- ``PP2_TYPE_AUTHORITY`` (0x02): the server name the client asked for;
- ``PP2_TYPE_SSL`` (0x20): the ``client`` flags (``PP2_CLIENT_SSL``, and
  ``PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS`` when the client presented
  a certificate), ``verify`` (0 when the client presented a certificate
  and it was verified, 1 otherwise, as the specification says), then the
  sub-TLVs ``PP2_SUBTYPE_SSL_VERSION`` (0x21, e.g. ``TLSv1.3``),
  ``PP2_SUBTYPE_SSL_CN`` (0x22, the client certificate's subject common
  name) and ``PP2_SUBTYPE_SSL_CIPHER`` (0x23, OpenSSL's name of the
  cipher).

A client certificate with no common name, or with more than one (which of
them would the backend trust?), gets no CN sub-TLV; nor does one whose
name is longer than :data:`MAX_CN`, or holds a control character (a NUL,
CR, LF, ...): a backend in C would read ``alice\x00.evil`` as ``alice``,
and no legitimate identity holds one. Such a name is logged once per
connection, escaped. The same goes for a server name (``PP2_TYPE_AUTHORITY``)
that is not a host name of letters, digits, ``-``, ``_`` and dots, of at
most 255 characters: it is left out, not cut. Plain listeners send no TLS
TLVs.

The header is never invalid: an address that cannot be written in it (a
UNIX socket, two different families, a port outside 0..65535) gives
``PROXY UNKNOWN`` in version 1, and in version 2 the ``LOCAL`` command with
the ``UNSPEC`` family, the TLVs still following. Both tell the backend to
use the connection's own addresses; ``LOCAL`` is what HAProxy itself sends
then, and the one the specification obliges every receiver to accept (with
``PROXY`` and ``UNSPEC`` a receiver "is free to ... reject" the connection).
"""

from __future__ import annotations

import ipaddress
import re
import struct
from dataclasses import dataclass

from cryptography.x509.oid import NameOID
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.logger import Logger

from txschannel.peertext import PeerText

__all__ = [
    "MAX_CN",
    "V2_SIGNATURE",
    "TLSFacts",
    "header_v1",
    "header_v2",
    "tls_facts",
]

#: The 12 bytes every version 2 header starts with.
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
#: The longest common name passed on: RFC 5280's upper bound is 64
#: characters; a longer one is not passed on rather than cut.
MAX_CN = 256

_log = Logger(namespace="txschannel")

#: A server name that can be passed on: a host name (underscores allowed,
#: as some DNS labels have them), at most 255 characters.
_HOST_NAME = re.compile(r"[A-Za-z0-9_.-]{1,255}")

PP2_TYPE_ALPN = 0x01
PP2_TYPE_AUTHORITY = 0x02
PP2_TYPE_SSL = 0x20
PP2_SUBTYPE_SSL_VERSION = 0x21
PP2_SUBTYPE_SSL_CN = 0x22
PP2_SUBTYPE_SSL_CIPHER = 0x23
PP2_CLIENT_SSL = 0x01
PP2_CLIENT_CERT_CONN = 0x02
PP2_CLIENT_CERT_SESS = 0x04


@dataclass(frozen=True)
class TLSFacts:
    """What the handshake established, for the version 2 TLVs.

    :ivar alpn: the negotiated protocol, or None.
    :ivar server_name: the server name the client sent, or None.
    :ivar version: ``TLSv1.3``, ...
    :ivar cipher: OpenSSL's name of the cipher.
    :ivar client_certificate: whether the client presented a (verified) certificate.
    :ivar common_name: its one subject common name, or None.
    """

    alpn: str | None
    server_name: str | None
    version: str
    cipher: str
    client_certificate: bool
    common_name: str | None


def tls_facts(transport: object) -> TLSFacts | None:
    """The :class:`TLSFacts` of an accepted connection, or None when it is not TLS."""
    context = getattr(transport, "securityContext", None)
    if context is None or not getattr(context, "established", False):
        return None
    attributes = context.attributes
    certificate = attributes.peer_certificate
    common_name = None
    if certificate is not None:
        names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if len(names) == 1:
            value = str(names[0].value)
            if _has_control(value):
                _log.warn(
                    "client certificate common name {name} holds control characters: "
                    "not passed on in the PROXY header",
                    name=PeerText(value),
                )
            elif len(value.encode("utf-8")) <= MAX_CN:
                common_name = value
    server_name = attributes.server_name
    if server_name is not None and not _HOST_NAME.fullmatch(server_name):
        _log.warn(
            "server name {name} is not a host name: not passed on in the PROXY header",
            name=PeerText(server_name),
        )
        server_name = None
    return TLSFacts(
        alpn=attributes.alpn,
        server_name=server_name,
        version=attributes.protocol,
        cipher=attributes.cipher,
        # The handshake fails on a certificate that does not verify: one
        # that is here was verified.
        client_certificate=certificate is not None,
        common_name=common_name,
    )


def _has_control(text: str) -> bool:
    """Whether *text* holds a C0 or C1 control character or DEL (NUL, CR, LF, ESC, ...)."""
    return any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in text)


def _ip_pair(
    source: object, destination: object
) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int,
           ipaddress.IPv4Address | ipaddress.IPv6Address, int] | None:
    """Both addresses as IP addresses of one family, or None (UNIX sockets, mixed)."""
    if not isinstance(source, (IPv4Address, IPv6Address)) or not isinstance(
        destination, (IPv4Address, IPv6Address)
    ):
        return None
    try:
        # (Twisted's IPv6 hosts may carry a %scope: the header has no room for it.)
        src = ipaddress.ip_address(source.host.split("%")[0])
        dst = ipaddress.ip_address(destination.host.split("%")[0])
    except ValueError:
        return None
    if src.version != dst.version:
        return None
    ports = (source.port, destination.port)
    if not all(type(port) is int and 0 <= port <= 65535 for port in ports):
        # (Twisted's own haproxy: parser let any integer through.)
        return None
    return src, source.port, dst, destination.port


def header_v1(source: object, destination: object) -> bytes:
    """A version 1 (text) header for a client at *source* that connected to *destination*.

    Addresses that are not both TCP over IPv4 or both over IPv6 give
    ``PROXY UNKNOWN``, which tells the backend to use the connection's own.
    """
    pair = _ip_pair(source, destination)
    if pair is None:
        return b"PROXY UNKNOWN\r\n"
    src, sport, dst, dport = pair
    family = "TCP4" if src.version == 4 else "TCP6"
    return f"PROXY {family} {src} {dst} {sport} {dport}\r\n".encode("ascii")


def _tlv(kind: int, value: bytes) -> bytes:
    return struct.pack("!BH", kind, len(value)) + value


def header_v2(source: object, destination: object, tls: TLSFacts | None) -> bytes:
    """A version 2 (binary) header, with the TLS TLVs when *tls* is given.

    Addresses that cannot be written (not both IPv4 or both IPv6, a port
    outside 0..65535) are sent as the ``LOCAL`` command with the
    ``AF_UNSPEC`` family (the backend uses the connection's own), TLVs
    still following.
    """
    pair = _ip_pair(source, destination)
    if pair is None:
        command, family, addresses = 0x20, 0x00, b""  # version 2, LOCAL
    else:
        src, sport, dst, dport = pair
        command = 0x21  # version 2, PROXY
        family = 0x11 if src.version == 4 else 0x21  # TCP over IPv4 / IPv6
        addresses = src.packed + dst.packed + struct.pack("!HH", sport, dport)
    tlvs = b""
    if tls is not None:
        if tls.alpn:
            tlvs += _tlv(PP2_TYPE_ALPN, tls.alpn.encode("ascii", "replace")[:255])
        if tls.server_name:
            tlvs += _tlv(PP2_TYPE_AUTHORITY, tls.server_name.encode("ascii"))
        client = PP2_CLIENT_SSL
        if tls.client_certificate:
            client |= PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS
        sub = _tlv(PP2_SUBTYPE_SSL_VERSION, tls.version.encode("ascii"))
        if tls.common_name is not None:
            sub += _tlv(PP2_SUBTYPE_SSL_CN, tls.common_name.encode("utf-8"))
        sub += _tlv(PP2_SUBTYPE_SSL_CIPHER, tls.cipher.encode("ascii"))
        verify = 0 if tls.client_certificate else 1
        tlvs += _tlv(PP2_TYPE_SSL, struct.pack("!BI", client, verify) + sub)
    body = addresses + tlvs
    # Version and command; then the family, then the length of the rest.
    return V2_SIGNATURE + struct.pack("!BBH", command, family, len(body)) + body
