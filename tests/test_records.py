"""TLS record framing: complete records, the partial tail, what it lacks."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from txschannel import SecurityError, Status
from txschannel.records import (
    HEADER_SIZE,
    MAX_RECORD_PAYLOAD,
    ContentType,
    Framing,
    FramingError,
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
