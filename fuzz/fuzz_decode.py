#!/usr/bin/env python3
"""Fuzz the compiled Smart Device decoder, factories and readers (runtime._core).

Each input is a COBS frame (without the 0x00 delimiter), as on the serial
link. Checked against a Python model written from
shared/spec/smart-device-protocol.md:

- ``Message.decode(frame)`` returns a Message exactly when the model says the
  frame is valid (same type and payload), and otherwise raises MessageError
  with the model's error code; nothing else ever escapes.
- A decoded message re-encodes to the canonical COBS of its raw bytes, which
  decodes to an equal message; ``encode_into`` fills a large enough buffer and
  refuses a small one with MessageError (BUFFER_OVERFLOW), touching nothing.
- Every reader returns the model's value for its own type and well-sized
  payload and raises MessageError otherwise; ``read_dev_data`` /
  ``read_dev_write`` copy exactly the flagged values to a random ParamLayout
  (bytes outside it unchanged) or raise MessageError (payload vs layout) /
  ValueError (memory smaller than the layout).
- The factories, fed integers and objects in and out of range, build the
  model's message or raise ValueError/TypeError (bad argument) or MessageError
  (values that do not fit one message, parameters not in the layout).
- FrameSplitter cuts the same bytes, fed in chunks, into the model's frames.

Any other exception, an assertion, or a sanitizer report is a finding.
Run through ``make fuzz`` / fuzz/run.py (which builds the instrumented core and
preloads the sanitizer runtime); extra arguments go to libFuzzer.
"""

from __future__ import annotations

import struct
from typing import Any

import _harness  # sys.path and warnings first
import atheris
from _harness import Input, cobs_encode, model_values

with atheris.instrument_imports(include=["runtime"]):
    from runtime import _core
    from runtime.messaging import (
        ErrorCode,
        FrameSplitter,
        Message,
        MessageError,
        MessageType,
        ParamLayout,
    )

MAX_PAYLOAD = 255
MAX_MESSAGE = 258
MAX_ENCODING = 260
MAX_WIDTH = MAX_PAYLOAD - 2
SSIZE_MAX = 2**63 - 1
KNOWN_TYPES = {int(t) for t in MessageType}
KNOWN_ERRORS = {int(c) for c in ErrorCode}
U = ErrorCode.UNEXPECTED_DELIMITER
OVERFLOW = ErrorCode.BUFFER_OVERFLOW

# ---- the protocol, as the spec states it ------------------------------------------------------


def model_decode(frame: bytes) -> tuple[int, bytes] | set[ErrorCode]:
    """(type, payload) of a valid frame, else the error codes it may be rejected with."""
    if len(frame) > MAX_ENCODING:
        return {OVERFLOW}
    raw = bytearray()
    overlong = False  # the decoder may stop at the first byte past a message
    i = 0
    while i < len(frame):
        code = frame[i]
        i += 1
        block = frame[i : i + code - 1]
        if code == 0 or len(block) != code - 1 or 0 in block:
            return {U, OVERFLOW} if overlong or len(raw) + len(block) > MAX_MESSAGE else {U}
        raw += block
        i += code - 1
        if code != 0xFF and i < len(frame):
            raw.append(0)
        overlong = overlong or len(raw) > MAX_MESSAGE
    if overlong:
        return {OVERFLOW}
    if len(raw) < 3 or raw[1] + 3 != len(raw):
        return {U}
    checksum = 0
    for byte in raw[:-1]:
        checksum ^= byte
    if checksum != raw[-1]:
        return {ErrorCode.BAD_CHECKSUM}
    if raw[0] not in KNOWN_TYPES:
        return {ErrorCode.INVALID_TYPE}
    return raw[0], bytes(raw[2:-1])


def raw_message(msg_type: int, payload: bytes) -> bytes:
    raw = bytes([msg_type, len(payload)]) + payload
    checksum = 0
    for byte in raw:
        checksum ^= byte
    return raw + bytes([checksum])


def span_of(entries: list[tuple[int, int]]) -> int:
    return max((offset + width for offset, width in entries), default=0)


# ---- checks --------------------------------------------------------------------------------------


def check_error(exc: MessageError, allowed: set[ErrorCode] | None = None) -> None:
    code = exc.error_code
    assert isinstance(code, ErrorCode), code
    if allowed is not None:
        assert code in allowed, (code, allowed, exc)
    str(exc)
    repr(exc)


def check_frame(frame: bytes) -> Message | None:
    expected = model_decode(frame)
    try:
        msg = Message.decode(frame)
    except MessageError as exc:
        assert isinstance(expected, set), f"valid frame rejected: {exc!r} (model: {expected})"
        check_error(exc, expected)
        return None
    assert isinstance(msg, Message)
    assert not isinstance(expected, set), f"invalid frame accepted as {msg!r} (model: {expected})"
    assert (int(msg.type), msg.payload) == expected, (msg, expected)
    return msg


def check_message(msg: Message, inp: Input) -> None:
    msg_type, payload = int(msg.type), msg.payload
    assert msg_type in KNOWN_TYPES and len(payload) <= MAX_PAYLOAD
    assert len(msg) == 3 + len(payload)
    encoded = msg.encode()
    assert encoded == cobs_encode(raw_message(msg_type, payload)), (msg, encoded.hex(" "))
    assert 0 not in encoded and len(encoded) <= MAX_ENCODING
    again = Message.decode(encoded)
    assert again == msg and not again != msg
    assert Message(msg.type, payload) == msg
    assert repr(msg).startswith("Message(MessageType.")
    size = inp.int_in(0, MAX_ENCODING + 2)
    target = bytearray(b"\xa5" * size)
    try:
        written = msg.encode_into(target)
    except MessageError as exc:
        check_error(exc, {OVERFLOW})
        assert size < len(encoded) and target == b"\xa5" * size
    else:
        assert written == len(encoded) <= size
        assert target[:written] == encoded and target[written:] == b"\xa5" * (size - written)
    check_readers(msg, inp)


READERS: list[tuple[str, int, int, Any]] = [
    ("read_sub_req", MessageType.SUB_REQ, 4, lambda p: struct.unpack("<HH", p)),
    (
        "read_sub_res",
        MessageType.SUB_RES,
        15,
        lambda p: (*struct.unpack("<HH", p[:4]), struct.unpack("<HBQ", p[4:])),
    ),
    ("read_dev_read", MessageType.DEV_READ, 2, lambda p: struct.unpack("<H", p)[0]),
    ("read_hb_req", MessageType.HB_REQ, 1, lambda p: p[0]),
    ("read_hb_res", MessageType.HB_RES, 1, lambda p: p[0]),
    ("read_error", MessageType.ERROR, 1, lambda p: ErrorCode(p[0]) if p[0] in KNOWN_ERRORS else None),
]


def check_readers(msg: Message, inp: Input) -> None:
    msg_type, payload = int(msg.type), msg.payload
    for name, reader_type, length, model in READERS:
        expected = model(payload) if (msg_type, len(payload)) == (reader_type, length) else None
        try:
            value = getattr(msg, name)()
        except MessageError as exc:
            check_error(exc)
            assert expected is None, (name, msg, expected)
        else:
            assert expected is not None and value == expected, (name, msg, value, expected)
    for name, reader_type in (
        ("read_dev_data", MessageType.DEV_DATA),
        ("read_dev_write", MessageType.DEV_WRITE),
    ):
        entries, layout = draw_layout(inp)
        if layout is None:
            continue
        memory = bytearray(inp.take(max(0, span_of(entries) + inp.int_in(-4, 8))))
        before = bytes(memory)
        params = model_values(payload, entries) if msg_type == reader_type else None
        try:
            result = getattr(msg, name)(layout, memory)
        except MessageError as exc:
            check_error(exc)
            assert params is None, (name, msg, entries)
            assert memory == before
        except ValueError:
            assert params is not None and len(memory) < span_of(entries), (name, msg, entries)
            assert memory == before
        else:
            assert params is not None and result == params and len(memory) >= span_of(entries)
            expected = bytearray(before)
            at = 2
            for i, (offset, width) in enumerate(entries):
                if params >> i & 1:
                    expected[offset : offset + width] = payload[at : at + width]
                    at += width
            assert memory == expected, (name, msg, entries)


# ---- factories -----------------------------------------------------------------------------------

ODD_ARGS: list[Any] = [None, 1.0, "1", b"\x01", True, False, [1], -1, 2**64, 2**64 - 1, -(2**63), 2**200]


def draw_int(inp: Input, bits: int) -> Any:
    choice = inp.int_in(0, 7)
    if choice <= 3:
        return inp.int_in(0, (1 << bits) - 1)
    if choice == 4:
        return inp.signed(9)  # signed 72 bits: negative and past 64 bits too
    if choice == 5:
        return (1 << bits) + inp.int_in(-2, 1)
    return inp.pick(ODD_ARGS)


def arg_error(value: Any, bits: int) -> type[Exception] | None:
    """The exception an unsigned argument of `bits` bits must raise, or None."""
    if not isinstance(value, int):
        return TypeError
    return None if 0 <= value < 1 << bits else ValueError


def draw_layout(inp: Input) -> tuple[list[tuple[int, int]], ParamLayout | None]:
    """Random ParamLayout entries; the layout when the constructor accepts them (as it must, exactly then)."""
    count = inp.int_in(0, 17)
    entries: list[Any] = []
    for _ in range(count):
        kind = inp.int_in(0, 15)
        if kind == 0:
            entries.append((inp.pick([-1, 2**62, SSIZE_MAX - 300, SSIZE_MAX, 2**63, 2**64]), 4))
        elif kind == 1:
            entries.append((inp.int_in(0, 64), inp.pick([-1, MAX_WIDTH + 1, 2**63])))
        elif kind == 2:
            entries.append(inp.pick([(1,), (1, 2, 3), "ab", None, (1.0, 2)]))
        else:
            entries.append((inp.int_in(0, 300), inp.int_in(0, MAX_WIDTH)))
    valid = count <= 16 and all(
        isinstance(e, tuple) and len(e) == 2 and all(type(x) is int for x in e) for e in entries
    )
    valid = valid and all(
        0 <= off <= SSIZE_MAX and 0 <= width <= MAX_WIDTH and off + width <= SSIZE_MAX
        for off, width in entries
    )
    try:
        layout = ParamLayout(entries)
    except (ValueError, TypeError):
        assert not valid, entries
        return entries, None
    assert valid, f"ParamLayout accepted {entries}"
    assert layout.count == count and layout.entries == tuple(entries)
    assert layout.span == span_of(entries), (layout.span, entries)
    return entries, layout


def check_factories(inp: Input) -> None:
    which = inp.int_in(0, 11)
    simple = {
        0: ("make_sub_req", MessageType.SUB_REQ, [16, 16], "<HH", "read_sub_req"),
        1: ("make_sub_res", MessageType.SUB_RES, [16, 16, 16, 8, 64], "<HHHBQ", "read_sub_res"),
        2: ("make_dev_read", MessageType.DEV_READ, [16], "<H", "read_dev_read"),
        3: ("make_hb_req", MessageType.HB_REQ, [8], "<B", "read_hb_req"),
        4: ("make_hb_res", MessageType.HB_RES, [8], "<B", "read_hb_res"),
        5: ("make_error", MessageType.ERROR, [8], "<B", "read_error"),
    }
    if which in simple:
        name, msg_type, bits, fmt, reader = simple[which]
        args = [draw_int(inp, b) for b in bits]
        if inp.int_in(0, 15) == 0:  # wrong number of arguments
            args = args[:-1] if inp.flag() else [*args, 0]
        errors = [arg_error(a, b) for a, b in zip(args, bits, strict=False)]
        expected: type[Exception] | None = next((e for e in errors if e), None)
        if len(args) != len(bits):
            expected = TypeError
        elif expected is None and which == 5 and args[0] not in KNOWN_ERRORS:
            expected = ValueError
        try:
            msg = getattr(Message, name)(*args)
        except (ValueError, TypeError) as exc:
            assert expected is not None and isinstance(exc, expected), (name, args, exc)
            return
        assert expected is None, (name, args, msg)
        assert int(msg.type) == msg_type and msg.payload == struct.pack(fmt, *args), (name, args, msg)
        value = getattr(msg, reader)()
        if which == 1:
            assert value == (args[0], args[1], tuple(args[2:])), (value, args)
        elif which == 0:
            assert value == tuple(args)
        else:
            assert value == args[0]
        check_message(msg, inp)
    elif which in (6, 7):
        entries, layout = draw_layout(inp)
        if layout is None:
            return
        params = draw_int(inp, 16)
        memory = inp.take(max(0, span_of(entries) + inp.int_in(-4, 8)))
        name, msg_type = (
            ("make_dev_data", MessageType.DEV_DATA)
            if which == 6
            else ("make_dev_write", MessageType.DEV_WRITE)
        )
        expected = arg_error(params, 16)
        payload = b""
        if expected is None and len(memory) < span_of(entries):
            expected = ValueError
        if expected is None:
            payload = struct.pack("<H", params)
            for i in range(16):
                if params >> i & 1:
                    if i >= len(entries) or entries[i][1] == 0:
                        expected = MessageError
                        break
                    offset, width = entries[i]
                    payload += memory[offset : offset + width]
            if len(payload) > MAX_PAYLOAD:
                expected = MessageError
        try:
            msg = getattr(Message, name)(params, layout, memory)
        except (ValueError, TypeError, MessageError) as exc:
            assert expected is not None and isinstance(exc, expected), (name, params, entries, exc)
            if isinstance(exc, MessageError):
                check_error(exc)
            return
        assert expected is None, (name, params, entries, msg)
        assert int(msg.type) == msg_type and msg.payload == payload, (msg, payload)
        assert layout.size(params) == len(payload)
        check_message(msg, inp)
    elif which == 8:
        msg_type = draw_int(inp, 8)
        payload: Any = inp.take(inp.int_in(0, 260))
        if inp.int_in(0, 15) == 0:
            payload = payload.decode("latin-1")
        expected = arg_error(msg_type, 8)
        if not isinstance(payload, bytes):
            expected = TypeError
        elif expected is None and (msg_type not in KNOWN_TYPES or len(payload) > MAX_PAYLOAD):
            expected = ValueError
        try:
            msg = Message(msg_type, payload)
        except (ValueError, TypeError) as exc:
            assert expected is not None and isinstance(exc, expected), (msg_type, payload, exc)
            return
        assert expected is None and int(msg.type) == msg_type and msg.payload == payload
        check_message(msg, inp)
    else:
        msg = [Message.make_ping, Message.make_dev_disable, Message.make_unsubscribe][which - 9]()
        check_message(msg, inp)


def check_stream(data: bytes) -> None:
    """FrameSplitter, fed the bytes in chunks, yields the model's frames."""
    splitter = FrameSplitter()
    frames: list[bytes] = []
    step = 1 + (data[0] % 64 if data else 0)
    for start in range(0, len(data), step):
        frames += splitter.feed(data[start : start + step])
    pieces = data.split(b"\0")
    complete = pieces[:-1]
    assert frames == [p for p in complete if p and len(p) <= MAX_ENCODING], (frames, data)
    assert splitter.overflows == sum(len(p) > MAX_ENCODING for p in pieces)
    assert splitter.pending == (len(pieces[-1]) if len(pieces[-1]) <= MAX_ENCODING else 0)
    for frame in frames:
        check_frame(frame)


def TestOneInput(data: bytes) -> None:
    inp = Input(data)
    msg = check_frame(data)
    if msg is not None:
        check_message(msg, inp)
    check_factories(inp)
    check_stream(data)


def main() -> None:
    _harness.fuzz(_core, TestOneInput)


if __name__ == "__main__":
    main()
