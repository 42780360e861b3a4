"""TLS record framing: which bytes of a buffer form complete records.

Pure functions over bytes, no OpenSSL. The security context uses them to
hand OpenSSL exactly the complete records and to give the caller back the
partial tail (``extra``) and how much it lacks (``missing``), which is what
Schannel's SECBUFFER_EXTRA and SECBUFFER_MISSING describe.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from txschannel.status import SecurityError, Status

__all__ = [
    "HEADER_SIZE",
    "MAX_RECORD_PAYLOAD",
    "MAX_PLAINTEXT",
    "MAX_CLIENT_HELLO",
    "MAX_CLIENT_HELLO_WIRE",
    "Framing",
    "FramingError",
    "ContentType",
    "RecordScanner",
    "frame",
    "first_message_missing",
    "handshake_message",
]

HEADER_SIZE = 5
#: Largest plaintext fragment of one record (RFC 8446 section 5.1).
MAX_PLAINTEXT = 2**14
#: Largest payload a record may declare: 2^14 plus the 2048 bytes of
#: expansion that TLS 1.2 allows (RFC 5246 section 6.2.3); TLS 1.3 is tighter.
MAX_RECORD_PAYLOAD = 2**14 + 2048
#: The largest ClientHello body OpenSSL accepts (its CLIENT_HELLO_MAX_LENGTH).
MAX_CLIENT_HELLO = 131396
#: The most bytes the largest ClientHello takes on the wire: its body and
#: 4-byte message header, in records of :data:`MAX_PLAINTEXT` bytes, each
#: with its 5-byte header (131,445 bytes).
MAX_CLIENT_HELLO_WIRE = (
    MAX_CLIENT_HELLO + 4 + HEADER_SIZE * -(-(MAX_CLIENT_HELLO + 4) // MAX_PLAINTEXT)
)


class ContentType:
    """The record content types that TLS 1.2 and 1.3 define."""

    CHANGE_CIPHER_SPEC = 20
    ALERT = 21
    HANDSHAKE = 22
    APPLICATION_DATA = 23


_KNOWN_TYPES = frozenset({20, 21, 22, 23})


class FramingError(SecurityError):
    """A header that cannot start a TLS record (status ILLEGAL_MESSAGE).

    :ivar offset: where the bad record header starts in the buffer; the
        records before it are whole and well formed.
    """

    def __init__(self, reason: str, offset: int) -> None:
        super().__init__(Status.ILLEGAL_MESSAGE, reason)
        self.offset = offset
        #: How many whole records came before the bad header (in the
        #: piece given to :meth:`RecordScanner.feed`).
        self.whole = 0


class Framing(NamedTuple):
    """Where the complete records of a buffer end.

    :ivar ends: the offset just past each complete record, in order.
    :ivar missing: bytes still needed to finish the record that starts at
        ``ends[-1]`` (or 0); when even that record's header is incomplete,
        the bytes needed to finish the header.
    """

    ends: list[int]
    missing: int

    @property
    def complete(self) -> int:
        """How many leading bytes are whole records."""
        return self.ends[-1] if self.ends else 0


def frame(buffer: bytes | bytearray | memoryview) -> Framing:
    """Find the complete TLS records at the start of *buffer*.

    :raises FramingError: (a :class:`SecurityError` with
        :attr:`Status.ILLEGAL_MESSAGE`) when a header
        cannot start a TLS record (unknown content type, a major version
        other than 3, or a length above :data:`MAX_RECORD_PAYLOAD`). Nothing
        after a bad header is looked at.
    """
    ends: list[int] = []
    try:
        missing = _scan(buffer, ends)
    except FramingError as e:
        e.whole = len(ends)
        raise
    return Framing(ends, missing)


def _scan(buffer: bytes | bytearray | memoryview, ends: list[int]) -> int:
    """frame()'s loop: append each record's end to *ends*; return ``missing``."""
    size = len(buffer)
    offset = 0
    while size - offset >= HEADER_SIZE:
        content_type = buffer[offset]
        major = buffer[offset + 1]
        length = (buffer[offset + 3] << 8) | buffer[offset + 4]
        if content_type not in _KNOWN_TYPES:
            raise FramingError(
                f"not a TLS record: unknown content type {content_type} "
                f"(first bytes {bytes(buffer[offset:offset + 8])!r})",
                offset,
            )
        if major != 3:
            raise FramingError(
                f"not a TLS record: protocol version {major}.{buffer[offset + 2]}",
                offset,
            )
        if length > MAX_RECORD_PAYLOAD:
            raise FramingError(
                f"record length {length} exceeds the TLS maximum of {MAX_RECORD_PAYLOAD}",
                offset,
            )
        end = offset + HEADER_SIZE + length
        if end > size:
            return end - size
        ends.append(end)
        offset = end
    if offset < size:
        # Judge a partial header as far as it goes, so that garbage such as
        # "GET / HTTP/1.1" fails on its first byte instead of waiting.
        if buffer[offset] not in _KNOWN_TYPES:
            raise FramingError(
                f"not a TLS record: unknown content type {buffer[offset]} "
                f"(first bytes {bytes(buffer[offset:offset + 8])!r})",
                offset,
            )
        if size - offset >= 2 and buffer[offset + 1] != 3:
            raise FramingError(
                f"not a TLS record: protocol version {buffer[offset + 1]}",
                offset,
            )
        return HEADER_SIZE - (size - offset)
    return 0


class RecordScanner:
    """:func:`frame` for a stream that arrives in pieces.

    A transport hands every piece to OpenSSL as it comes, partial record
    and all, instead of keeping the partial record back and joining it to
    the next piece (a copy of the whole piece, each time). This tells it how
    many records end in each piece; it keeps only the position inside the
    record in progress, and at most four bytes of a split header.
    """

    __slots__ = ("_owed", "_head")

    def __init__(self) -> None:
        #: Bytes of the record in progress not seen yet (0 at a boundary).
        self._owed = 0
        #: The start of a header split across pieces (0 to 4 bytes).
        self._head = b""

    def feed(self, piece: bytes | bytearray | memoryview) -> int:
        """How many records end in *piece* (the next bytes of the stream).

        :raises FramingError: as :func:`frame` does. Its ``offset`` is where
            the bad header starts in *piece*, negative when the header began
            in an earlier piece; ``whole`` counts the records that ended in
            *piece* before it. The scanner is of no further use.
        """
        size = len(piece)
        # Where the record in progress (if any) ends in this piece.
        offset = self._owed
        in_progress = offset > 0
        if self._head:
            head = self._head
            joined = head + bytes(piece[: HEADER_SIZE - len(head)])
            try:
                frame(joined)
            except FramingError as e:
                e.offset -= len(head)
                raise
            if len(joined) < HEADER_SIZE:
                self._head = joined
                return 0
            self._head = b""
            offset = HEADER_SIZE - len(head) + ((joined[3] << 8) | joined[4])
            in_progress = True
        if offset > size:
            self._owed = offset - size
            return 0
        self._owed = 0
        count = 1 if in_progress else 0
        try:
            framing = frame(memoryview(piece)[offset:])
        except FramingError as e:
            e.offset += offset
            e.whole += count
            raise
        count += len(framing.ends)
        tail = size - offset - framing.complete
        if tail >= HEADER_SIZE:
            self._owed = framing.missing
        elif tail:
            self._head = bytes(piece[size - tail :])
        return count


def first_message_missing(buffer: bytes | bytearray | memoryview, framing: Framing) -> int:
    """How many more bytes, at least, before the first handshake message is whole.

    *buffer* starts a TLS stream in the clear (a server's input before the
    ClientHello) and *framing* is :func:`frame` of it. Returns 0 when the
    complete records hold the whole first handshake message, and also when
    they cannot be a handshake message in the making (a record of another
    type, or a message longer than :data:`MAX_CLIENT_HELLO`): OpenSSL is
    the one to judge those, at once. Otherwise the result is a lower bound
    on the bytes still to come, so that a caller waiting for that many
    looks at the buffer again only when it may be whole.
    """
    need = -1  # the message's bytes with its header, once the header is known
    have = 0
    header = b""
    start = 0
    for end in framing.ends:
        if buffer[start] != ContentType.HANDSHAKE:
            return 0
        fragment = bytes(buffer[start + HEADER_SIZE : min(end, start + HEADER_SIZE + 4)])
        if need < 0:
            header += fragment[: 4 - len(header)]
            if len(header) == 4:
                length = int.from_bytes(header[1:4], "big")
                if length > MAX_CLIENT_HELLO:
                    return 0
                need = 4 + length
        have += end - start - HEADER_SIZE
        if 0 <= need <= have:
            return 0
        start = end
    tail = len(buffer) - start
    if need < 0:
        # Not even the message header yet: at least the rest of this record.
        return framing.missing if tail else HEADER_SIZE + 1
    if tail >= HEADER_SIZE:
        declared = (buffer[start + 3] << 8) | buffer[start + 4]
        if have + declared >= need:
            return framing.missing
        return framing.missing + HEADER_SIZE + (need - have - declared)
    return HEADER_SIZE - tail + (need - have)


def handshake_message(
    buffer: bytes | bytearray | memoryview, ends: Sequence[int], limit: int = MAX_CLIENT_HELLO + 4
) -> bytes:
    """The first handshake message in the whole records of *buffer*, reassembled.

    *ends* are the offsets just past each complete record (``frame(buffer).ends``).
    The fragments of the leading handshake records are joined up to the
    length the message header declares (at most *limit* bytes): the message
    as the peer sent it, type and length included. Records of another type
    end it early; a message not complete yet comes back as far as it goes.
    """
    parts: list[bytes] = []
    have = 0
    need = limit
    start = 0
    for end in ends:
        if buffer[start] != ContentType.HANDSHAKE or have >= need:
            break
        fragment = bytes(buffer[start + HEADER_SIZE : end])
        if have < 4 <= have + len(fragment):
            header = (b"".join(parts) + fragment)[:4]
            need = min(limit, 4 + int.from_bytes(header[1:4], "big"))
        parts.append(fragment)
        have += len(fragment)
        start = end
    return b"".join(parts)[:need]
