"""Cutting a serial byte stream into frames: FrameSplitter."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.messaging import (
    DELIM,
    MAX_ENCODING_SIZE,
    ErrorCode,
    FrameSplitter,
    Message,
    MessageError,
    MessageType,
    make_dev_read,
    make_hb_req,
    make_ping,
    make_sub_res,
)

frames_without_zero = st.binary(min_size=1, max_size=MAX_ENCODING_SIZE).map(
    lambda b: b.replace(b"\x00", b"\xaa")
)


def chunked(stream: bytes, cuts: list[int]) -> list[bytes]:
    """Cut the stream at the given positions (any order, duplicates allowed)."""
    points = sorted({0, len(stream), *(cut % (len(stream) + 1) for cut in cuts)})
    return [stream[a:b] for a, b in zip(points, points[1:], strict=False)]


def feed_all(splitter: FrameSplitter, chunks: list[bytes]) -> list[bytes]:
    out: list[bytes] = []
    for chunk in chunks:
        out += splitter.feed(chunk)
        assert splitter.pending <= splitter.max_frame
    return out


def test_docstring_example() -> None:
    splitter = FrameSplitter()
    assert splitter.feed(b"\x01\x02\x00\x03") == [b"\x01\x02"]
    assert splitter.pending == 1
    assert splitter.feed(b"\x04\x00") == [b"\x03\x04"]
    assert splitter.pending == 0
    assert splitter.overflows == 0


def test_default_max_frame() -> None:
    assert FrameSplitter().max_frame == MAX_ENCODING_SIZE


def test_empty_frames_are_skipped() -> None:
    splitter = FrameSplitter()
    assert splitter.feed(b"\x00\x00\x01\x00\x00\x00\x02\x00") == [b"\x01", b"\x02"]
    assert splitter.feed(b"") == []
    assert splitter.feed(DELIM) == []


def test_accepts_buffers() -> None:
    splitter = FrameSplitter()
    assert splitter.feed(bytearray(b"\x01\x00")) == [b"\x01"]
    assert splitter.feed(memoryview(b"\x02\x00")) == [b"\x02"]
    assert all(type(frame) is bytes for frame in splitter.feed(bytearray(b"\x03\x00\x04\x00")))


@settings(max_examples=500)
@given(
    st.lists(frames_without_zero, max_size=12), st.lists(st.integers(0, 10_000), max_size=40), st.booleans()
)
@pytest.mark.slow  # hypothesis: many examples (near a second; over it on a busy machine)
def test_arbitrary_chunking_gives_back_the_frames(frames: list[bytes], cuts: list[int], lead: bool) -> None:
    stream = (DELIM if lead else b"") + b"".join(frame + DELIM for frame in frames)
    splitter = FrameSplitter()
    assert feed_all(splitter, chunked(stream, cuts)) == frames
    assert splitter.pending == 0
    assert splitter.overflows == 0


@settings(max_examples=300)
@given(
    st.lists(frames_without_zero, max_size=6),
    frames_without_zero,
    st.lists(st.integers(0, 10_000), max_size=20),
)
def test_unfinished_frame_stays_pending(frames: list[bytes], tail: bytes, cuts: list[int]) -> None:
    stream = b"".join(frame + DELIM for frame in frames) + tail
    splitter = FrameSplitter()
    assert feed_all(splitter, chunked(stream, cuts)) == frames
    assert splitter.pending == len(tail)
    assert splitter.feed(DELIM) == [tail]


@settings(max_examples=500)
@given(
    st.integers(4, 40),
    st.lists(st.binary(min_size=1, max_size=80).map(lambda b: b.replace(b"\x00", b"\x55")), max_size=12),
    st.lists(st.integers(0, 10_000), max_size=40),
)
@pytest.mark.slow  # hypothesis: many examples (near a second; over it on a busy machine)
def test_oversize_frames_dropped_and_counted(max_frame: int, frames: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(frame + DELIM for frame in frames)
    splitter = FrameSplitter(max_frame)
    assert feed_all(splitter, chunked(stream, cuts)) == [frame for frame in frames if len(frame) <= max_frame]
    assert splitter.overflows == sum(len(frame) > max_frame for frame in frames)
    assert splitter.pending == 0


@pytest.mark.parametrize("chunk_size", [1, 7, 260, 261, 4096])
def test_bounded_memory_without_delimiter(chunk_size: int) -> None:
    splitter = FrameSplitter()
    garbage = bytes(range(1, 256)) * 80  # 20 400 bytes, no delimiter
    for start in range(0, len(garbage), chunk_size):
        assert splitter.feed(garbage[start : start + chunk_size]) == []
        assert splitter.pending <= MAX_ENCODING_SIZE
    assert splitter.overflows == 1  # one oversize frame, counted once
    # The next delimiter ends the junk; the stream is in sync again.
    good = make_dev_read(0b110).encode()
    assert splitter.feed(DELIM + good[:3]) == []
    assert splitter.feed(good[3:] + DELIM) == [good]
    assert Message.decode(good) == make_dev_read(0b110)
    assert splitter.overflows == 1
    assert splitter.pending == 0


def test_frame_of_exactly_max_frame_passes() -> None:
    for max_frame in (1, 5, MAX_ENCODING_SIZE):
        splitter = FrameSplitter(max_frame)
        fits, too_long = b"\x07" * max_frame, b"\x08" * (max_frame + 1)
        assert splitter.feed(fits + DELIM + too_long + DELIM + fits + DELIM) == [fits, fits]
        assert splitter.overflows == 1
        # Same, one byte at a time.
        stream = fits + DELIM + too_long + DELIM + fits
        assert feed_all(splitter, [bytes([b]) for b in stream]) == [fits]
        assert splitter.overflows == 2
        assert splitter.pending == max_frame
        assert splitter.feed(DELIM) == [fits]


def test_overflow_then_delimiter_in_the_next_chunk() -> None:
    splitter = FrameSplitter(4)
    assert splitter.feed(b"\x01" * 10) == []
    assert splitter.pending == 0
    assert splitter.feed(b"\x01\x01") == []  # still the same oversize frame
    assert splitter.feed(b"\x00\x02\x00") == [b"\x02"]
    assert splitter.overflows == 1


def test_reset_forgets_the_partial_frame() -> None:
    splitter = FrameSplitter(4)
    splitter.feed(b"\x01\x02")
    splitter.reset()
    assert splitter.pending == 0
    assert splitter.feed(b"\x03\x00") == [b"\x03"]
    # A reset also ends discarding an oversize frame.
    splitter.feed(b"\x01" * 10)
    splitter.reset()
    assert splitter.feed(b"\x04\x00") == [b"\x04"]
    assert splitter.overflows == 1


MESSAGES = [
    make_ping(),
    make_dev_read(0b110),
    make_hb_req(0),
    make_sub_res(0xFFFF, 40, 0x0102, 9, 2**64 - 1),
    Message(MessageType.DEV_DATA, bytes(255)),
    Message(MessageType.DEV_WRITE, b"\xff" * 255),
]


@settings(max_examples=200)
@given(st.lists(st.sampled_from(MESSAGES), max_size=10), st.lists(st.integers(0, 10_000), max_size=30))
def test_encoded_messages_through_the_splitter(messages: list[Message], cuts: list[int]) -> None:
    stream = b"".join(DELIM + msg.encode() for msg in messages) + DELIM
    splitter = FrameSplitter()
    assert [Message.decode(frame) for frame in feed_all(splitter, chunked(stream, cuts))] == messages


def test_resync_after_garbage_between_messages() -> None:
    good = [msg.encode() for msg in MESSAGES]
    stream = (
        b"\x13\x99" + DELIM + good[0] + DELIM + b"\x01" * 1000 + DELIM + good[1] + DELIM + b"\x02\x10" + DELIM
    )
    splitter = FrameSplitter()
    decoded, codes = [], []
    for frame in feed_all(splitter, chunked(stream, list(range(0, len(stream), 33)))):
        try:
            decoded.append(Message.decode(frame))
        except MessageError as error:
            codes.append(error.error_code)
    assert decoded == MESSAGES[:2]
    assert codes == [ErrorCode.UNEXPECTED_DELIMITER, ErrorCode.UNEXPECTED_DELIMITER]
    assert splitter.overflows == 1
