"""Smart Device messages, byte for byte against smart-device-protocol.md.

A small pure-Python COBS implementation serves as the reference the compiled
encoder is checked against; hypothesis feeds the decoder arbitrary and
mutated frames, which must only ever produce a Message or a MessageError.
"""

import ctypes
import functools
import struct
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from runtime.messaging import (
    ALL_PARAMS,
    DELIM,
    MAX_ENCODING_SIZE,
    MAX_PARAMS,
    MAX_PAYLOAD,
    NO_PARAMS,
    ErrorCode,
    Message,
    MessageError,
    MessageType,
    ParamLayout,
    make_dev_data,
    make_dev_disable,
    make_dev_read,
    make_dev_write,
    make_error,
    make_hb_req,
    make_hb_res,
    make_ping,
    make_sub_req,
    make_sub_res,
    make_unsubscribe,
)

# ---- reference implementation ---------------------------------------------


def cobs_encode(data: bytes) -> bytes:
    """Textbook COBS: a code byte before each run of up to 254 nonzero bytes."""
    out = bytearray()
    block = bytearray()
    for byte in data:
        if byte == 0:
            out += bytes([len(block) + 1]) + block
            block.clear()
            continue
        block.append(byte)
        if len(block) == 254:
            out += b"\xff" + block
            block.clear()
    out += bytes([len(block) + 1]) + block
    return bytes(out)


def cobs_decode(data: bytes) -> bytes:
    out = bytearray()
    i = 0
    while i < len(data):
        code = data[i]
        assert code != 0
        out += data[i + 1 : i + code]
        i += code
        if code != 0xFF and i < len(data):
            out.append(0)
    return bytes(out)


def raw_message(type_: int, payload: bytes, *, length: int | None = None) -> bytes:
    """The unframed bytes: type, length, payload, XOR checksum."""
    head = bytes([type_, len(payload) if length is None else length]) + payload
    return head + bytes([functools.reduce(int.__xor__, head, 0)])


def frame(type_: int, payload: bytes, **kwargs: Any) -> bytes:
    return cobs_encode(raw_message(type_, payload, **kwargs))


def decode_error(data: bytes) -> MessageError:
    with pytest.raises(MessageError) as info:
        Message.decode(data)
    return info.value


# ---- the device type of the spec's worked examples ----------------------------


class SpecDevice(ctypes.LittleEndianStructure):
    """flag bool id 0, duty_cycle double stored as a 4-byte float id 1, id uint32 id 2."""

    _fields_ = [("flag", ctypes.c_bool), ("duty_cycle", ctypes.c_float), ("id", ctypes.c_uint32)]


SPEC_LAYOUT = ParamLayout(
    [(getattr(SpecDevice, name).offset, getattr(SpecDevice, name).size) for name, _ in SpecDevice._fields_]
)
PACKED = struct.Struct("<?fI")  # the same device as a struct-packed bytearray, no padding
PACKED_LAYOUT = ParamLayout([(0, 1), (1, 4), (5, 4)])
FLOAT_M0_123 = struct.unpack("<f", struct.pack("<f", -0.123))[0]


def spec_memory(
    kind: str, flag: bool = False, duty_cycle: float = 0.0, id_: int = 0
) -> tuple[Any, ParamLayout]:
    if kind == "ctypes":
        return SpecDevice(flag, duty_cycle, id_), SPEC_LAYOUT
    return bytearray(PACKED.pack(flag, duty_cycle, id_)), PACKED_LAYOUT


def spec_values(memory: Any) -> tuple[bool, float, int]:
    if isinstance(memory, SpecDevice):
        return memory.flag, memory.duty_cycle, memory.id
    flag, duty_cycle, id_ = PACKED.unpack(memory)
    return flag, duty_cycle, id_


MEMORY_KINDS = pytest.mark.parametrize("kind", ["ctypes", "bytearray"])


def test_spec_layout_matches_the_structure() -> None:
    assert SPEC_LAYOUT.entries == ((0, 1), (4, 4), (8, 4))
    assert SPEC_LAYOUT.count == 3
    assert SPEC_LAYOUT.span == ctypes.sizeof(SpecDevice) == 12
    assert SPEC_LAYOUT.size(0b111) == 2 + 1 + 4 + 4
    assert PACKED_LAYOUT.span == PACKED.size == 9


# ---- worked examples -------------------------------------------------------


@MEMORY_KINDS
def test_example_dev_data(kind: str) -> None:
    raw = bytes.fromhex("15 06 02 00 6d e7 fb bd dd")
    encoded = bytes.fromhex("04 15 06 02 06 6d e7 fb bd dd")
    assert cobs_encode(raw) == encoded and cobs_decode(encoded) == raw
    assert raw_message(0x15, raw[2:-1]) == raw

    memory, layout = spec_memory(kind, duty_cycle=-0.123)
    msg = make_dev_data(0b010, layout, memory)
    assert msg.type is MessageType.DEV_DATA
    assert msg.payload == raw[2:-1]
    assert len(msg) == len(raw)
    assert msg.encode() == encoded

    target, _ = spec_memory(kind, flag=True, id_=7)
    decoded = Message.decode(encoded)
    assert decoded == msg
    assert decoded.read_dev_data(layout, target) == 0b010
    assert spec_values(target) == (True, FLOAT_M0_123, 7)  # only duty_cycle was written


def test_example_dev_read() -> None:
    raw = bytes.fromhex("13 02 06 00 17")
    encoded = bytes.fromhex("04 13 02 06 02 17")
    assert cobs_encode(raw) == encoded and cobs_decode(encoded) == raw
    assert raw_message(0x13, raw[2:-1]) == raw

    msg = make_dev_read(0b110)
    assert msg.type is MessageType.DEV_READ
    assert msg.payload == raw[2:-1]
    assert msg.encode() == encoded
    assert Message.decode(encoded) == msg
    assert Message.decode(encoded).read_dev_read() == 0b110


@MEMORY_KINDS
def test_example_dev_write(kind: str) -> None:
    raw = bytes.fromhex("14 07 05 00 01 ef be ad de 35")
    encoded = bytes.fromhex("04 14 07 05 07 01 ef be ad de 35")
    assert cobs_encode(raw) == encoded and cobs_decode(encoded) == raw
    assert raw_message(0x14, raw[2:-1]) == raw

    memory, layout = spec_memory(kind, flag=True, duty_cycle=0.5, id_=0xDEADBEEF)
    msg = make_dev_write(0b101, layout, memory)
    assert msg.type is MessageType.DEV_WRITE
    assert msg.payload == raw[2:-1]
    assert msg.encode() == encoded

    target, _ = spec_memory(kind, duty_cycle=2.0)
    assert Message.decode(encoded).read_dev_write(layout, target) == 0b101
    assert spec_values(target) == (True, 2.0, 0xDEADBEEF)


def test_module_docstring_example() -> None:
    assert make_dev_read(0b110).encode().hex(" ") == "04 13 02 06 02 17"


def test_constants() -> None:
    assert (MAX_PARAMS, MAX_PAYLOAD, MAX_ENCODING_SIZE) == (16, 255, 260)
    assert (DELIM, NO_PARAMS, ALL_PARAMS) == (b"\x00", 0, 0xFFFF)


# ---- strategies -----------------------------------------------------------

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u64 = st.integers(0, 2**64 - 1)
known_types = st.sampled_from(list(MessageType))
any_message = st.builds(Message, known_types, st.binary(max_size=MAX_PAYLOAD))


@st.composite
def layouts(draw: st.DrawFn) -> tuple[ParamLayout, bytearray, int]:
    """A packed layout (some IDs unused), random memory, and a bitmap of used IDs."""
    widths = draw(st.lists(st.sampled_from([0, 1, 2, 4, 8, 16, 40]), max_size=MAX_PARAMS))
    entries, offset = [], 0
    for width in widths:
        entries.append((offset, width))
        offset += width
    memory = bytearray(draw(st.binary(min_size=offset, max_size=offset)))
    used = [i for i, width in enumerate(widths) if width]
    params = sum(1 << i for i in draw(st.lists(st.sampled_from(used), unique=True))) if used else 0
    return ParamLayout(entries), memory, params


# ---- round trips ------------------------------------------------------------


def check_frame(msg: Message) -> bytes:
    """The properties every encoding has; returns it."""
    encoded = msg.encode()
    assert b"\x00" not in encoded
    assert len(encoded) <= MAX_ENCODING_SIZE
    assert encoded == frame(int(msg.type), msg.payload)
    assert len(msg) == 3 + len(msg.payload)
    buffer = bytearray(MAX_ENCODING_SIZE + 5)
    assert msg.encode_into(buffer) == len(encoded)
    assert buffer[: len(encoded)] == encoded
    assert msg.encode_into(memoryview(bytearray(len(encoded)))) == len(encoded)
    decoded = Message.decode(encoded)
    assert decoded == msg and not decoded != msg
    assert decoded.type == msg.type and decoded.payload == msg.payload
    return encoded


@pytest.mark.slow  # hypothesis: many examples (near a second; over it on a busy machine)
@settings(max_examples=1000)
@given(any_message)
def test_round_trip_any_message(msg: Message) -> None:
    check_frame(msg)


def test_round_trip_fixed_messages() -> None:
    for factory, type_ in [
        (make_ping, MessageType.PING),
        (make_dev_disable, MessageType.DEV_DISABLE),
    ]:
        msg = factory()
        assert msg.type is type_ and msg.payload == b""
        check_frame(msg)
    unsubscribe = make_unsubscribe()
    assert unsubscribe.read_sub_req() == (NO_PARAMS, 0)
    check_frame(unsubscribe)


@given(u16, u16)
def test_round_trip_sub_req(params: int, interval: int) -> None:
    msg = make_sub_req(params, interval)
    assert msg.type is MessageType.SUB_REQ
    assert msg.payload == struct.pack("<HH", params, interval)
    assert Message.decode(check_frame(msg)).read_sub_req() == (params, interval)


@given(u16, u16, u16, u8, u64)
def test_round_trip_sub_res(params: int, interval: int, device_id: int, year: int, random: int) -> None:
    msg = make_sub_res(params, interval, device_id, year, random)
    assert msg.type is MessageType.SUB_RES
    assert msg.payload == struct.pack("<HHHBQ", params, interval, device_id, year, random)
    decoded = Message.decode(check_frame(msg))
    assert decoded.read_sub_res() == (params, interval, (device_id, year, random))


@given(u16)
def test_round_trip_dev_read(params: int) -> None:
    msg = make_dev_read(params)
    assert msg.payload == struct.pack("<H", params)
    assert Message.decode(check_frame(msg)).read_dev_read() == params


@given(u8)
def test_round_trip_heartbeats(heartbeat: int) -> None:
    request, response = make_hb_req(heartbeat), make_hb_res(heartbeat)
    assert (request.type, response.type) == (MessageType.HB_REQ, MessageType.HB_RES)
    assert Message.decode(check_frame(request)).read_hb_req() == heartbeat
    assert Message.decode(check_frame(response)).read_hb_res() == heartbeat


@pytest.mark.parametrize("code", list(ErrorCode))
def test_round_trip_error(code: ErrorCode) -> None:
    msg = make_error(code)
    assert msg.type is MessageType.ERROR and msg.payload == bytes([code])
    assert Message.decode(check_frame(msg)).read_error() is code


@pytest.mark.parametrize(
    ("make", "read", "type_"),
    [
        (make_dev_data, Message.read_dev_data, MessageType.DEV_DATA),
        (make_dev_write, Message.read_dev_write, MessageType.DEV_WRITE),
    ],
    ids=["dev_data", "dev_write"],
)
@pytest.mark.slow  # hypothesis: many examples (near a second; over it on a busy machine)
@settings(max_examples=300)
@given(case=layouts())
def test_round_trip_values(
    make: Callable[..., Message],
    read: Callable[..., int],
    type_: MessageType,
    case: tuple[ParamLayout, bytearray, int],
) -> None:
    layout, memory, params = case
    before = bytes(memory)
    if layout.size(params) > MAX_PAYLOAD:
        with pytest.raises(MessageError) as info:
            make(params, layout, memory)
        assert info.value.error_code is ErrorCode.BUFFER_OVERFLOW
        return
    msg = make(params, layout, memory)
    assert bytes(memory) == before  # building a message only reads memory
    assert msg.type is type_
    assert len(msg.payload) == layout.size(params)
    expected = struct.pack("<H", params) + b"".join(
        before[offset : offset + width] for i, (offset, width) in enumerate(layout.entries) if params >> i & 1
    )
    assert msg.payload == expected

    target = bytearray(len(memory))
    assert read(Message.decode(check_frame(msg)), layout, target) == params
    for i, (offset, width) in enumerate(layout.entries):
        wanted = before[offset : offset + width] if params >> i & 1 else bytes(width)
        assert target[offset : offset + width] == wanted


def test_values_in_ascending_id_order() -> None:
    # Memory order differs from ID order; the wire follows the IDs.
    layout = ParamLayout([(4, 2), (0, 4), (6, 1)])
    memory = bytearray(b"\x01\x02\x03\x04\x05\x06\x07")
    assert (
        make_dev_data(0b111, layout, memory).payload
        == b"\x07\x00" + b"\x05\x06" + b"\x01\x02\x03\x04" + b"\x07"
    )


def test_values_with_no_params() -> None:
    msg = make_dev_data(NO_PARAMS, SPEC_LAYOUT, SpecDevice())
    assert msg.payload == b"\x00\x00"
    assert Message.decode(msg.encode()).read_dev_data(SPEC_LAYOUT, SpecDevice()) == NO_PARAMS


def test_long_runs_without_zero() -> None:
    # Payloads around the 254-byte COBS block size, with no zero at all.
    for size in (250, 251, 252, 253, 254, 255):
        msg = Message(MessageType.DEV_DATA, bytes([0x41]) * size)
        check_frame(msg)
    assert len(Message(MessageType.DEV_DATA, b"\x41" * 255).encode()) == MAX_ENCODING_SIZE


# ---- oversize DEV_DATA ------------------------------------------------------


def test_oversize_dev_data_raises_and_can_be_split() -> None:
    layout = ParamLayout([(16 * i, 16) for i in range(16)])
    memory = bytearray(range(256))
    with pytest.raises(MessageError) as info:
        make_dev_data(ALL_PARAMS, layout, memory)
    assert info.value.error_code is ErrorCode.BUFFER_OVERFLOW
    assert info.value.context["size"] == 2 + 16 * 16

    # The caller splits the bitmap; every value then travels exactly once.
    target = bytearray(256)
    seen = 0
    for part in (0x00FF, 0xFF00):
        msg = make_dev_data(part, layout, memory)
        assert len(msg.encode()) <= MAX_ENCODING_SIZE
        seen |= Message.decode(msg.encode()).read_dev_data(layout, target)
    assert seen == ALL_PARAMS
    assert target == memory


def test_largest_dev_data_fits() -> None:
    layout = ParamLayout([(0, 253)])
    memory = bytearray(b"\xab" * 253)
    msg = make_dev_data(1, layout, memory)
    assert len(msg.payload) == MAX_PAYLOAD
    check_frame(msg)


# ---- readers reject the wrong messages --------------------------------------

READERS: dict[MessageType, Callable[[Message], object]] = {
    MessageType.SUB_REQ: Message.read_sub_req,
    MessageType.SUB_RES: Message.read_sub_res,
    MessageType.DEV_READ: Message.read_dev_read,
    MessageType.DEV_DATA: lambda m: m.read_dev_data(SPEC_LAYOUT, SpecDevice()),
    MessageType.DEV_WRITE: lambda m: m.read_dev_write(SPEC_LAYOUT, SpecDevice()),
    MessageType.HB_REQ: Message.read_hb_req,
    MessageType.HB_RES: Message.read_hb_res,
    MessageType.ERROR: Message.read_error,
}
PAYLOAD_SIZES = {
    MessageType.SUB_REQ: 4,
    MessageType.SUB_RES: 15,
    MessageType.DEV_READ: 2,
    MessageType.HB_REQ: 1,
    MessageType.HB_RES: 1,
    MessageType.ERROR: 1,
}


@pytest.mark.parametrize("reader_type", list(READERS), ids=lambda t: t.name)
@pytest.mark.parametrize("msg_type", list(MessageType), ids=lambda t: t.name)
def test_reader_on_wrong_type(reader_type: MessageType, msg_type: MessageType) -> None:
    if reader_type == msg_type:
        return
    payload = bytes(PAYLOAD_SIZES.get(reader_type, 2))  # the reader's length, to isolate the type check
    with pytest.raises(MessageError) as info:
        READERS[reader_type](Message(msg_type, payload))
    assert info.value.context["expected"] is reader_type
    assert info.value.context["actual"] is msg_type


@pytest.mark.parametrize("msg_type", list(PAYLOAD_SIZES), ids=lambda t: t.name)
def test_reader_on_wrong_length(msg_type: MessageType) -> None:
    size = PAYLOAD_SIZES[msg_type]
    for wrong in (0, size - 1, size + 1, MAX_PAYLOAD):
        if wrong < 0 or wrong == size:
            continue
        with pytest.raises(MessageError) as info:
            READERS[msg_type](Message(msg_type, bytes(wrong)))
        assert info.value.context["actual"] == wrong
        assert info.value.context["expected"] == size


def test_read_error_unknown_code() -> None:
    with pytest.raises(MessageError) as info:
        Message(MessageType.ERROR, b"\x05").read_error()
    assert info.value.context["code"] == 5


@pytest.mark.parametrize("read", [Message.read_dev_data, Message.read_dev_write], ids=["data", "write"])
@pytest.mark.parametrize(
    "payload",
    [
        b"",  # no bitmap
        b"\x02",  # half a bitmap
        b"\x02\x00",  # duty_cycle flagged, value missing
        b"\x02\x00\x01\x02\x03",  # a byte short
        b"\x02\x00\x01\x02\x03\x04\x05",  # a byte too many
        b"\x08\x00\x01",  # parameter 3 is not in the layout
        b"\x00\x80" + bytes(253),  # parameter 15 is not in the layout
        b"\x07\x00" + bytes(8),  # all three flagged, 9 bytes needed
    ],
)
def test_read_values_mismatch_leaves_memory_untouched(read: Callable[..., int], payload: bytes) -> None:
    type_ = MessageType.DEV_DATA if read is Message.read_dev_data else MessageType.DEV_WRITE
    memory = bytearray(b"\x5a" * 16)
    with pytest.raises(MessageError):
        read(Message(type_, payload), SPEC_LAYOUT, memory)
    assert memory == b"\x5a" * 16
    device = SpecDevice(True, 1.5, 42)
    with pytest.raises(MessageError):
        read(Message(type_, payload), SPEC_LAYOUT, device)
    assert spec_values(device) == (True, 1.5, 42)


def test_read_values_memory_too_small() -> None:
    msg = make_dev_data(0b010, SPEC_LAYOUT, SpecDevice(duty_cycle=1.0))
    memory = bytearray(b"\x5a" * 11)
    with pytest.raises(ValueError):
        msg.read_dev_data(SPEC_LAYOUT, memory)
    assert memory == b"\x5a" * 11
    with pytest.raises((TypeError, BufferError)):
        msg.read_dev_data(SPEC_LAYOUT, bytes(12))  # read-only
    with pytest.raises(TypeError):
        msg.read_dev_data(object(), bytearray(12))  # type: ignore[arg-type]


def test_make_values_errors() -> None:
    with pytest.raises(ValueError):
        make_dev_data(0b001, SPEC_LAYOUT, bytearray(11))  # memory smaller than the layout's span
    with pytest.raises(MessageError):
        make_dev_data(0b1000, SPEC_LAYOUT, SpecDevice())  # no parameter 3
    with pytest.raises(MessageError):
        make_dev_write(0b001, ParamLayout([(0, 0)]), bytearray(4))  # width 0: ID unused
    with pytest.raises(TypeError):
        make_dev_data(0b001, [(0, 1)], bytearray(4))  # type: ignore[arg-type]


# ---- factories reject out-of-range arguments --------------------------------

OUT_OF_RANGE: list[tuple[Callable[..., object], tuple[Any, ...]]] = [
    (make_sub_req, (-1, 0)),
    (make_sub_req, (0x10000, 0)),
    (make_sub_req, (0, 0x10000)),
    (make_sub_res, (0x10000, 0, 0, 0, 0)),
    (make_sub_res, (0, -1, 0, 0, 0)),
    (make_sub_res, (0, 0, 0x10000, 0, 0)),
    (make_sub_res, (0, 0, 0, 256, 0)),
    (make_sub_res, (0, 0, 0, 0, 2**64)),
    (make_sub_res, (0, 0, 0, 0, -1)),
    (make_dev_read, (0x10000,)),
    (make_dev_read, (-1,)),
    (make_hb_req, (256,)),
    (make_hb_req, (-1,)),
    (make_hb_res, (256,)),
    (make_error, (256,)),
    (make_error, (0x05,)),  # not an error code
    (make_dev_data, (0x10000, SPEC_LAYOUT, SpecDevice())),
    (make_dev_write, (-1, SPEC_LAYOUT, SpecDevice())),
    (Message, (0x42,)),  # not a message type
    (Message, (256,)),
    (Message, (MessageType.DEV_DATA, bytes(MAX_PAYLOAD + 1))),
    (ParamLayout, ([(0, 1)] * (MAX_PARAMS + 1),)),
    (ParamLayout, ([(-1, 1)],)),
    (ParamLayout, ([(0, -1)],)),
    (ParamLayout, ([(0, MAX_PAYLOAD - 1)],)),  # a value must fit beside the bitmap
]


@pytest.mark.parametrize(("factory", "args"), OUT_OF_RANGE)
def test_out_of_range_arguments(factory: Callable[..., object], args: tuple[Any, ...]) -> None:
    with pytest.raises(ValueError):
        factory(*args)


def test_bad_argument_types() -> None:
    with pytest.raises(TypeError):
        make_sub_req(1.5, 0)
    with pytest.raises(TypeError):
        make_dev_read()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Message.decode("not bytes")  # type: ignore[arg-type]


def test_factory_accepts_boundaries_and_index_types() -> None:
    assert make_sub_res(0xFFFF, 0xFFFF, 0xFFFF, 0xFF, 2**64 - 1).read_sub_res() == (
        0xFFFF,
        0xFFFF,
        (0xFFFF, 0xFF, 2**64 - 1),
    )
    assert make_hb_req(True).read_hb_req() == 1
    assert make_dev_read(MessageType.PING).read_dev_read() == 0x10  # any __index__


def test_message_equality() -> None:
    assert make_hb_req(1) == make_hb_req(1)
    assert make_hb_req(1) != make_hb_req(2)
    assert make_hb_req(1) != make_hb_res(1)
    assert Message(MessageType.DEV_DATA, b"\x01") != Message(MessageType.DEV_DATA, b"\x01\x00")
    assert make_ping() != b"\x02\x10\x02\x10"
    assert repr(make_hb_req(7)) == "Message(MessageType.HB_REQ, b'\\x07')"


def test_encode_into_too_small() -> None:
    msg = make_dev_read(0b110)
    buffer = bytearray(5)
    with pytest.raises(MessageError) as info:
        msg.encode_into(buffer)
    assert info.value.error_code is ErrorCode.BUFFER_OVERFLOW
    assert info.value.context["needed"] == 6
    assert buffer == bytes(5)
    with pytest.raises((TypeError, BufferError)):
        msg.encode_into(bytes(10))


# ---- decoding errors --------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", ErrorCode.UNEXPECTED_DELIMITER),  # nothing
        (cobs_encode(b"\x10"), ErrorCode.UNEXPECTED_DELIMITER),  # too short
        (cobs_encode(b"\x10\x00"), ErrorCode.UNEXPECTED_DELIMITER),  # too short
        (b"\x04\x13\x02\x06\x00\x17", ErrorCode.UNEXPECTED_DELIMITER),  # a delimiter inside
        (b"\x05\x13\x02\x06\x02\x17", ErrorCode.UNEXPECTED_DELIMITER),  # block overruns the frame
        (b"\xff\x13", ErrorCode.UNEXPECTED_DELIMITER),  # block overruns the frame
        (frame(0x13, b"\x06\x00", length=3), ErrorCode.UNEXPECTED_DELIMITER),  # length field too big
        (frame(0x13, b"\x06\x00", length=1), ErrorCode.UNEXPECTED_DELIMITER),  # length field too small
        (frame(0x10, b"", length=255), ErrorCode.UNEXPECTED_DELIMITER),
        (b"\x04\x13\x02\x06\x02\x18", ErrorCode.BAD_CHECKSUM),
        (cobs_encode(b"\x13\x02\x06\x00\x00"), ErrorCode.BAD_CHECKSUM),
        (frame(0x42, b"\x01"), ErrorCode.INVALID_TYPE),
        (frame(0x00, b""), ErrorCode.INVALID_TYPE),
        (frame(0x19, b""), ErrorCode.INVALID_TYPE),
        (frame(0xFE, b"\x01"), ErrorCode.INVALID_TYPE),
        (b"\x01" * (MAX_ENCODING_SIZE + 1), ErrorCode.BUFFER_OVERFLOW),  # longer than any frame
        (cobs_encode(b"\x15\xff" + b"\x41" * 257), ErrorCode.BUFFER_OVERFLOW),  # 259 raw bytes, 261 encoded
        (
            cobs_encode(b"\x15\xff" + b"\x41" * 100 + b"\x00" + b"\x41" * 156),
            ErrorCode.BUFFER_OVERFLOW,
        ),  # 260
        (b"\x01" * MAX_ENCODING_SIZE, ErrorCode.BUFFER_OVERFLOW),  # decodes to 259 zeros
    ],
)
def test_decode_error_codes(data: bytes, code: ErrorCode) -> None:
    if code is ErrorCode.BUFFER_OVERFLOW and data[0] != 1:
        assert len(data) in (MAX_ENCODING_SIZE, MAX_ENCODING_SIZE + 1)
    error = decode_error(data)
    assert error.error_code is code
    assert error.context["error_code"] is code


def test_decode_unknown_type_reports_it() -> None:
    assert decode_error(frame(0x42, b"")).context["type"] == 0x42


def test_decode_length_mismatch_reports_it() -> None:
    error = decode_error(frame(0x13, b"\x06\x00", length=5))
    assert (error.context["declared"], error.context["actual"]) == (5, 2)


def test_decode_accepts_buffers() -> None:
    encoded = make_dev_read(0b110).encode()
    for data in (bytearray(encoded), memoryview(encoded), memoryview(b"xx" + encoded)[2:]):
        assert Message.decode(data) == make_dev_read(0b110)


# ---- fuzzing the decoder ----------------------------------------------------


def decode_or_message_error(data: bytes) -> Message | None:
    """Decode; only MessageError may escape. A decoded frame re-encodes to an equal message."""
    try:
        msg = Message.decode(data)
    except MessageError as error:
        event(error.error_code.name)
        assert isinstance(error.error_code, ErrorCode)
        assert error.error_code is not ErrorCode.OK
        return None
    event("decoded")
    assert isinstance(msg, Message)
    assert isinstance(msg.type, MessageType)
    assert Message.decode(msg.encode()) == msg
    assert msg.encode() == frame(int(msg.type), msg.payload)
    return msg


@pytest.mark.slow  # hypothesis searches over many thousands of frames
@settings(max_examples=5000)
@given(st.binary(max_size=MAX_ENCODING_SIZE + 8))
def test_decode_arbitrary_bytes(data: bytes) -> None:
    decode_or_message_error(data)


@pytest.mark.slow  # hypothesis searches over many thousands of frames
@settings(max_examples=2000)
@given(st.binary(min_size=1, max_size=MAX_ENCODING_SIZE + 8).map(lambda b: b.replace(b"\x00", b"\x01")))
def test_decode_arbitrary_frames_without_zero(data: bytes) -> None:
    decode_or_message_error(data)


@st.composite
def structured_frames(draw: st.DrawFn) -> bytes:
    """Well-formed COBS around raw messages whose fields are each right or wrong."""
    type_ = draw(st.one_of(known_types, u8))
    payload = draw(st.binary(max_size=MAX_PAYLOAD + 2))
    length = draw(st.one_of(st.just(len(payload) & 0xFF), u8))
    raw = raw_message(type_, payload, length=length)
    if draw(st.booleans()):
        raw = raw[:-1] + bytes([draw(u8)])
    return cobs_encode(raw)


@pytest.mark.slow  # hypothesis searches over many thousands of frames
@settings(max_examples=3000)
@given(structured_frames())
def test_decode_structured_frames(data: bytes) -> None:
    decode_or_message_error(data)


@st.composite
def mutated_frames(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(any_message).encode())
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "replace"]))
        if kind == "flip" and data:
            data[draw(st.integers(0, len(data) - 1))] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del data[draw(st.integers(0, len(data))) :]
        elif kind == "insert":
            data.insert(draw(st.integers(0, len(data))), draw(u8))
        elif kind == "delete" and data:
            del data[draw(st.integers(0, len(data) - 1))]
        elif kind == "replace" and data:
            data[draw(st.integers(0, len(data) - 1))] = draw(u8)
    return bytes(data)


@pytest.mark.slow  # hypothesis searches over many thousands of frames
@settings(max_examples=5000)
@given(mutated_frames())
def test_decode_mutated_frames(data: bytes) -> None:
    decode_or_message_error(data)


@given(any_message, u8)
def test_decode_length_field_changes(msg: Message, length: int) -> None:
    # Checksum kept right, so the length field is the only fault.
    data = frame(int(msg.type), msg.payload, length=length)
    if length == len(msg.payload):
        assert Message.decode(data) == msg
    else:
        assert decode_error(data).error_code is ErrorCode.UNEXPECTED_DELIMITER


@given(any_message, st.data())
def test_decode_single_bit_flip_never_passes_silently(msg: Message, data: st.DataObject) -> None:
    # XOR catches every single-bit error in the unframed message.
    raw = bytearray(raw_message(int(msg.type), msg.payload))
    raw[data.draw(st.integers(0, len(raw) - 1))] ^= 1 << data.draw(st.integers(0, 7))
    with pytest.raises(MessageError):
        Message.decode(cobs_encode(bytes(raw)))


@given(any_message)
def test_decode_truncated_frames(msg: Message) -> None:
    encoded = msg.encode()
    for end in range(len(encoded)):
        assert decode_or_message_error(encoded[:end]) is None
