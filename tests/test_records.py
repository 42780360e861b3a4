"""TLS record framing: complete records, the partial tail, what it lacks."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tests.support import hellos
from txschannel import SecurityError, Status
from txschannel.records import (
    HEADER_SIZE,
    MAX_RECORD_PAYLOAD,
    ContentType,
    Framing,
    FramingError,
    RecordScanner,
    first_message_missing,
    frame,
)


def record(content_type: int = ContentType.APPLICATION_DATA, body: bytes = b"x") -> bytes:
    return bytes([content_type, 3, 3]) + len(body).to_bytes(2, "big") + body


class FrameTests(SynchronousTestCase):
    def test_nothing(self) -> None:
        self.assertEqual(frame(b""), Framing([], 0))
        self.assertEqual(frame(b"").complete, 0)

    def test_a_partial_header_lacks_the_rest_of_the_header(self) -> None:
        whole = record(body=b"hello")
        for n in range(1, HEADER_SIZE):
            self.assertEqual(frame(whole[:n]), Framing([], HEADER_SIZE - n))

    def test_a_partial_body_lacks_exactly_the_rest(self) -> None:
        whole = record(body=b"hello")
        for n in range(HEADER_SIZE, len(whole)):
            self.assertEqual(frame(whole[:n]), Framing([], len(whole) - n))
        self.assertEqual(frame(whole), Framing([len(whole)], 0))

    def test_several_records_and_a_tail(self) -> None:
        a, b = record(ContentType.HANDSHAKE, b"a" * 10), record(ContentType.ALERT, b"\x01\x00")
        framing = frame(a + b + b[:3])
        self.assertEqual(framing.ends, [len(a), len(a) + len(b)])
        self.assertEqual(framing.complete, len(a) + len(b))
        self.assertEqual(framing.missing, 2)

    def test_an_empty_record_is_a_record(self) -> None:
        self.assertEqual(frame(record(body=b"")), Framing([5], 0))

    def test_accepts_memoryview_and_bytearray(self) -> None:
        data = record(body=b"abc") * 2
        self.assertEqual(frame(memoryview(data)), frame(data))
        self.assertEqual(frame(bytearray(data)), frame(data))

    def test_the_largest_record_is_allowed(self) -> None:
        header = bytes([23, 3, 3]) + MAX_RECORD_PAYLOAD.to_bytes(2, "big")
        self.assertEqual(frame(header).missing, MAX_RECORD_PAYLOAD)

    def check_refused(self, data: bytes, offset: int, words: str) -> None:
        error = self.assertRaises(FramingError, frame, data)
        self.assertIsInstance(error, SecurityError)
        self.assertEqual(error.status, Status.ILLEGAL_MESSAGE)
        self.assertEqual(error.offset, offset)
        self.assertIn(words, error.reason)

    def test_an_unknown_content_type_is_illegal(self) -> None:
        self.check_refused(b"GET / HTTP/1.1\r\n", 0, "unknown content type 71")
        self.check_refused(b"G", 0, "unknown content type")
        good = record()
        self.check_refused(good + b"\x00\x03\x03\x00\x01x", len(good), "content type 0")

    def test_a_wrong_major_version_is_illegal(self) -> None:
        self.check_refused(b"\x16\x02\x00\x00\x01x", 0, "protocol version 2.0")
        self.check_refused(b"\x16\x04", 0, "protocol version 4")
        good = record()
        self.check_refused(good + b"\x17\x00", len(good), "protocol version 0")

    def test_an_absurd_length_is_illegal(self) -> None:
        header = bytes([23, 3, 3]) + (MAX_RECORD_PAYLOAD + 1).to_bytes(2, "big")
        self.check_refused(header, 0, "exceeds")

    def test_nothing_after_a_bad_header_is_looked_at(self) -> None:
        # The bad header is reported even with garbage after it.
        self.check_refused(b"\x99" + bytes(range(256)), 0, "content type 153")

    @settings(max_examples=200, deadline=None)
    @given(
        bodies=st.lists(st.tuples(st.sampled_from([20, 21, 22, 23]),
                                  st.binary(max_size=300)), max_size=6),
        cut=st.integers(min_value=0),
    )
    def test_any_prefix_of_valid_records_frames_consistently(
        self, bodies: list[tuple[int, bytes]], cut: int
    ) -> None:
        records = [record(t, b) for t, b in bodies]
        stream = b"".join(records)
        cut = cut % (len(stream) + 1)
        framing = frame(stream[:cut])
        ends, total = [], 0
        for r in records:
            total += len(r)
            if total <= cut:
                ends.append(total)
        self.assertEqual(framing.ends, ends)
        if framing.complete == cut:
            self.assertEqual(framing.missing, 0)
        else:
            tail = cut - framing.complete
            following = records[len(ends)]
            expected = HEADER_SIZE - tail if tail < HEADER_SIZE else len(following) - tail
            self.assertEqual(framing.missing, expected)


def pieces_of(stream: bytes, cuts: list[int]) -> list[bytes]:
    """*stream* cut at the (sorted, deduplicated) offsets in *cuts*."""
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    return [stream[a:b] for a, b in zip(points, points[1:], strict=False)]


class RecordScannerTests(SynchronousTestCase):
    """RecordScanner must agree with frame() on the joined stream, however cut."""

    def test_a_record_in_three_pieces_ends_in_the_last(self) -> None:
        scanner = RecordScanner()
        whole = record(body=b"hello world")
        self.assertEqual(scanner.feed(whole[:3]), 0)  # a split header
        self.assertEqual(scanner.feed(whole[3:9]), 0)
        self.assertEqual(scanner.feed(whole[9:] + whole), 2)

    def test_a_piece_inside_one_record_ends_nothing(self) -> None:
        scanner = RecordScanner()
        header = bytes([23, 3, 3]) + (1000).to_bytes(2, "big")
        self.assertEqual(scanner.feed(header + bytes(10)), 0)
        self.assertEqual(scanner.feed(bytes(500)), 0)
        self.assertEqual(scanner.feed(bytes(490)), 1)

    def test_a_bad_header_split_across_pieces_has_a_negative_offset(self) -> None:
        scanner = RecordScanner()
        good = record(body=b"ok")
        self.assertEqual(scanner.feed(good + b"\x17\x03"), 1)
        error = self.assertRaises(FramingError, scanner.feed, b"\x03\xff\xffx")
        self.assertEqual(error.offset, -2)
        self.assertEqual(error.whole, 0)
        self.assertIn("record length 65535 exceeds", error.reason)

    def test_records_before_a_bad_header_in_the_same_piece_are_counted(self) -> None:
        scanner = RecordScanner()
        good = record(body=b"ok")
        self.assertEqual(scanner.feed(good[:4]), 0)
        error = self.assertRaises(FramingError, scanner.feed, good[4:] + good + b"GET /")
        self.assertEqual(error.whole, 2)
        self.assertEqual(error.offset, len(good) - 4 + len(good))
        self.assertIn("content type 71", error.reason)

    @settings(max_examples=300, deadline=None)
    @given(
        bodies=st.lists(st.tuples(st.sampled_from([20, 21, 22, 23]),
                                  st.binary(max_size=300)), max_size=8),
        cuts=st.lists(st.integers(min_value=0), max_size=12),
    )
    def test_any_cutting_counts_the_records_frame_finds(
        self, bodies: list[tuple[int, bytes]], cuts: list[int]
    ) -> None:
        stream = b"".join(record(t, b) for t, b in bodies)
        scanner = RecordScanner()
        seen = b""
        total = 0
        for piece in pieces_of(stream, cuts):
            total += scanner.feed(piece)
            seen += piece
            self.assertEqual(total, len(frame(seen).ends))
        self.assertEqual(total, len(bodies))

    @settings(max_examples=300, deadline=None)
    @given(
        bodies=st.lists(st.binary(max_size=100), max_size=5),
        garbage=st.sampled_from([b"\x99", b"\x17\x02", b"\x17\x03\x03\xff\xff", b"GET / HTTP/1.1"]),
        cuts=st.lists(st.integers(min_value=0), max_size=10),
    )
    def test_any_cutting_refuses_where_frame_refuses(
        self, bodies: list[bytes], garbage: bytes, cuts: list[int]
    ) -> None:
        stream = b"".join(record(body=b) for b in bodies) + garbage
        expected = self.assertRaises(FramingError, frame, stream)
        scanner = RecordScanner()
        start = 0
        total = 0
        for piece in pieces_of(stream, cuts):
            try:
                total += scanner.feed(piece)
            except FramingError as e:
                self.assertEqual(start + e.offset, expected.offset)
                self.assertEqual(total + e.whole, expected.whole)
                # The same reason, except that the sample of the bad bytes it
                # quotes stops where the piece does.
                self.assertEqual(e.reason.split(" (first")[0], expected.reason.split(" (first")[0])
                return
            start += len(piece)
        self.fail("the scanner accepted what frame() refused")


class FirstMessageTests(SynchronousTestCase):
    """first_message_missing: when a ClientHello in records is whole, and a
    lower bound on what it still lacks (so a caller wakes up only when it may be)."""

    @settings(max_examples=40, deadline=None)
    @given(
        size=st.integers(min_value=120, max_value=40000),
        fragment=st.sampled_from([1, 7, 100, 1000, 16384]),
        cuts=st.lists(st.floats(min_value=0, max_value=1), min_size=1, max_size=8),
    )
    def test_zero_exactly_when_whole_and_never_more_than_is_missing(
        self, size: int, fragment: int, cuts: list[float]
    ) -> None:
        wire = hellos.client_hello(size, fragment)
        for cut in [int(c * len(wire)) for c in cuts] + [len(wire)]:
            prefix = wire[:cut]
            missing = first_message_missing(prefix, frame(prefix))
            if cut == len(wire):
                self.assertEqual(missing, 0)
            else:
                self.assertGreater(missing, 0, cut)
                self.assertLessEqual(cut + missing, len(wire), cut)

    def test_other_records_and_oversized_hellos_are_for_openssl_to_judge(self) -> None:
        alert = record(ContentType.ALERT, b"\x02\x28")
        self.assertEqual(first_message_missing(alert, frame(alert)), 0)
        huge = hellos.claimed_client_hello(131397, 100)
        self.assertEqual(first_message_missing(huge, frame(huge)), 0)
        stalled = hellos.claimed_client_hello(131396, 100)
        self.assertGreater(first_message_missing(stalled, frame(stalled)), 131396 - 100)
