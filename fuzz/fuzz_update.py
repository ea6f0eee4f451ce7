#!/usr/bin/env python3
"""Fuzz DeviceBuffer.update and the other buffer operations against random catalogs.

Each input describes a device type (1..16 parameters of random simple and
array types, IDs, flags and bounds, built with BufferStore.make_catalog; a
catalog the library refuses with DeviceBufferError/ValueError is skipped) and
then a sequence of operations on a process-local buffer of that type
(``Type.open(name, shared=False)``: nothing is created in /dev/shm):

- update() with random messages: Message(type, payload) of any length,
  DEV_DATA/DEV_WRITE sized for random bitmaps (sometimes off by a few bytes),
  decoded random frames, the factories' messages, and the buffer's own emitted
  messages fed back;
- get / set / write (values of the right type, out of range, wrongly typed),
  read, emit_dev_rw / emit_dev_data / emit_subscription, get_update /
  get_write / get_read / snapshot, nested transactions (sometimes left by an
  exception), the valid bit, make_sub_req / make_sub_res / uid, close.

The oracle is a byte-level model of the buffer structure written from
shared/spec/smart-device-protocol.md: after each update() the structure must be
exactly what the spec says (values copied to the flagged parameters' places,
pending bitmaps, subscription with the interval clamped to 40..250 ms, UID),
and a refused message or operation changes nothing. Emitted messages carry
exactly the pending/subscribed values, each once, in as few messages as
possible. Only the documented exceptions may escape: MessageError for
payloads that do not match the layout, DeviceBufferError for invalid, closed
or non-device buffers and unknown/forbidden parameters, ValueError/TypeError
for bad arguments. Anything else, a failed check or a sanitizer report is a
finding.
"""

from __future__ import annotations

import ctypes
import math
import os
import struct
import time
from typing import Any

import _harness  # sys.path and warnings first
import atheris
from _harness import Input, model_values

with atheris.instrument_imports(include=["runtime"]):
    from runtime import _core
    from runtime.buffer import BufferStore, DeviceBuffer, DeviceBufferError, DeviceUID
    from runtime.messaging import ErrorCode, Message, MessageError, MessageType

# Known bugs outside fuzz/'s remit, tolerated (narrowly) until fixed; see fuzz/README.md.
KNOWN_ISSUES: set[str] = set()
"""Findings tolerated until their fix lands (each entry names its exact case below); none now."""

MAX_WIDTH = 253
META = _core.META_LAYOUT
UID_YEAR = DeviceUID.year.offset
UID_RANDOM = DeviceUID.random.offset
BASES = [
    "bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float", "double",
    "char", "byte", "ubyte", "short", "ushort", "int", "uint", "long", "ulong", "longlong", "ulonglong",
    "longdouble", "size_t", "ssize_t", "wchar", "char_p", "bogus",
]  # fmt: skip
BOUNDS: list[Any] = [
    -math.inf,
    math.inf,
    0,
    1,
    -1,
    0.5,
    -0.5,
    100,
    -100,
    1e9,
    -1e9,
    2**40,
    math.nan,
    "x",
    255,
    -128,
    2**63,
    1e300,
    None,
]
ODD_NAMES: list[Any] = ["p0", "_hidden", "1x", "", "class", "x" * 300, "é", 5]
INT_RANGES = {
    "int8": (-(2**7), 2**7 - 1), "uint8": (0, 2**8 - 1), "int16": (-(2**15), 2**15 - 1),
    "uint16": (0, 2**16 - 1), "int32": (-(2**31), 2**31 - 1), "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1), "uint64": (0, 2**64 - 1),
}  # fmt: skip
ODD_VALUES: list[Any] = [
    None,
    "x",
    "",
    [1, 2],
    (1, 2, 3),
    10**400,
    -(10**400),
    2**64,
    -(2**63) - 1,
    object(),
    b"\x01",
    1 + 2j,
]
FLOATS = [0.0, -0.0, 1.5, -1.5, math.nan, math.inf, -math.inf, 1e300, -1e300, 3.4e38, 3.5e38, 1e-45, 0.1]
MESSAGE_TYPES = [int(t) for t in MessageType]
_catalogs: dict[str, Any] = {}
TRACE = os.environ.get("FUZZ_TRACE") == "1"  # print the catalog and operations (to replay an input)


class Abort(Exception):
    """Raised inside a transaction to leave it by an exception."""


# ---- the catalog ---------------------------------------------------------------------------------


def draw_catalog(inp: Input) -> dict[str, Any]:
    count = inp.int_in(0, 17)
    attrs = inp.uint(1)
    # a plain Buffer now and then: the core must refuse device operations on it
    spec: dict[str, Any] = {} if attrs & 0x41 == 0x41 else {"device_id": inp.uint(2)}
    if attrs & 2:
        spec["sub_interval"] = inp.pick([0, -1, "x", 0.04, True, 10])
    if attrs & 4:
        spec["device_id"] = inp.pick([-1, 70000, "x", True, None])
    params = []
    for index in range(count):
        base = inp.pick(BASES)
        shape = inp.uint(1)
        if shape < 176:
            ctype = base
        elif shape < 240:
            ctype = f"{base}[{inp.int_in(1, 256)}]"
        else:
            ctype = f"{base}[{inp.int_in(1, 8)}][{inp.int_in(1, 8)}]"
        flags = inp.uint(1)
        raw: dict[str, Any] = {"name": inp.pick(ODD_NAMES) if flags & 64 else f"p{index}", "type": ctype}
        if flags & 1:
            raw["readable"] = False
        if flags & 2:
            raw["writeable"] = True
        if flags & 4:
            raw["subscribed"] = False
        if flags & 8:
            raw["id"] = inp.int_in(0, 17)
        if flags & 16:
            raw["lower"] = inp.pick(BOUNDS)
        if flags & 32:
            raw["upper"] = inp.pick(BOUNDS)
        if flags & 128:
            raw["bogus"] = 1
        params.append(raw)
    spec["params"] = params
    return spec


def make_type(spec: dict[str, Any]) -> Any:
    """The buffer type for a raw spec (cached), or None when the catalog is refused."""
    key = repr(spec)
    if key not in _catalogs:
        try:
            _catalogs[key] = BufferStore.make_catalog({"fz": spec})["fz"]
        except (DeviceBufferError, ValueError):
            _catalogs[key] = None
        except (TypeError, OverflowError):
            if "int-bound-initial" not in KNOWN_ISSUES or not has_odd_int_bound(spec):
                raise
            _catalogs[key] = None
        if len(_catalogs) > 512:
            _catalogs.pop(next(iter(_catalogs)))
    return _catalogs[key]


INT_BASES = {
    "int8",
    "uint8",
    "int16",
    "uint16",
    "int32",
    "uint32",
    "int64",
    "uint64",
    "byte",
    "ubyte",
    "short",
    "ushort",
    "int",
    "uint",
    "long",
    "ulong",
    "longlong",
    "ulonglong",
    "size_t",
    "ssize_t",
}


def has_odd_int_bound(spec: dict[str, Any]) -> bool:
    """Whether an integer parameter starts at a bound that is a float (see KNOWN_ISSUES)."""
    for raw in spec["params"]:
        if raw["type"] not in INT_BASES:
            continue
        lower, upper = raw.get("lower", -math.inf), raw.get("upper", math.inf)
        if not (isinstance(lower, (int, float)) and isinstance(upper, (int, float))) or lower <= 0 <= upper:
            continue
        if isinstance(lower if lower > 0 else upper, float):
            return True
    return False


class Shape:
    """Where everything lives in the buffer structure of one type."""

    def __init__(self, buffer_type: Any) -> None:
        self.type = buffer_type
        values = dict(buffer_type._fields_)["_update"]
        self.update = buffer_type._update.offset
        self.write = buffer_type._write.offset
        self.meta = buffer_type._meta.offset
        self.device = issubclass(buffer_type, DeviceBuffer)
        self.params = dict(buffer_type.params)
        self.place = {name: (getattr(values, name).offset, ctypes.sizeof(p.platform_type))
                      for name, p in self.params.items()}  # fmt: skip
        count = max((p.id + 1 for p in self.params.values()), default=0)
        self.entries = [(0, 0)] * count
        self.readable = self.writeable = 0
        for name, p in self.params.items():
            self.entries[p.id] = self.place[name]
            self.readable |= (1 << p.id) if p.readable else 0
            self.writeable |= (1 << p.id) if p.writeable else 0

    def get(self, raw: bytes | bytearray, field: str, fmt: str = "<Q", extra: int = 0) -> int:
        return int(struct.unpack_from(fmt, raw, self.meta + META[field] + extra)[0])

    def put(self, raw: bytearray, field: str, value: int, fmt: str = "<Q", extra: int = 0) -> None:
        struct.pack_into(fmt, raw, self.meta + META[field] + extra, value)

    def ids(self, bits: int) -> list[int]:
        return [i for i in range(len(self.entries)) if bits >> i & 1]

    def name_of(self, param_id: int) -> str:
        return next(name for name, p in self.params.items() if p.id == param_id)


# ---- the model of update() -----------------------------------------------------------------------


def model_update(shape: Shape, before: bytes, msg_type: int, payload: bytes) -> bytearray | None:
    """The structure after update() per the spec, or None when the message must be refused."""
    after = bytearray(before)
    if msg_type in (MessageType.DEV_DATA, MessageType.DEV_WRITE):
        params = model_values(payload, shape.entries)
        if params is None:
            return None
        block = shape.update if msg_type == MessageType.DEV_DATA else shape.write
        at = 2
        for i in shape.ids(params):
            offset, width = shape.entries[i]
            after[block + offset : block + offset + width] = payload[at : at + width]
            at += width
        field = "updated" if msg_type == MessageType.DEV_DATA else "written"
        shape.put(after, field, shape.get(before, field) | params)
    elif msg_type == MessageType.DEV_READ:
        if len(payload) != 2:
            return None
        shape.put(
            after, "read", shape.get(before, "read") | (struct.unpack("<H", payload)[0] & shape.readable)
        )
    elif msg_type == MessageType.SUB_REQ:
        if len(payload) != 4:
            return None
        params, interval = struct.unpack("<HH", payload)
        if interval:
            interval = min(max(interval, 40), 250)
        shape.put(after, "subscription", params & shape.readable, "<H")
        shape.put(after, "interval_ms", interval, "<H")
    elif msg_type == MessageType.SUB_RES:
        if len(payload) != 15:
            return None
        params, interval, device_id, year, random = struct.unpack("<HHHBQ", payload)
        shape.put(after, "subscription", params, "<H")  # exactly as the device reported it
        shape.put(after, "interval_ms", interval, "<H")
        shape.put(after, "uid", device_id, "<H")
        shape.put(after, "uid", year, "<B", UID_YEAR)
        shape.put(after, "uid", random, "<Q", UID_RANDOM)
    return after


def api(buf: Any, shape: Shape) -> Any:
    """The object to call device operations on (a plain Buffer has no such methods: its core accessor)."""
    return buf if shape.device else buf._access


def refused(buf: Any, shape: Shape) -> bool:
    """Whether operations must raise DeviceBufferError (closed or invalid buffer)."""
    return bool(buf.closed or not buf.valid)


def do_update(buf: Any, shape: Shape, msg: Message) -> None:
    before = bytes(buf)
    expected = model_update(shape, before, int(msg.type), msg.payload) if shape.device else None
    refuse = refused(buf, shape)
    started = time.time()
    try:
        api(buf, shape).update(msg)
    except MessageError as exc:
        assert shape.device and expected is None, f"update({msg!r}) refused: {exc!r}"
        assert isinstance(exc.error_code, ErrorCode)
        assert bytes(buf) == before, f"refused update({msg!r}) changed the buffer"
        return
    except DeviceBufferError as exc:
        assert not shape.device or (refuse and expected is not None), f"update({msg!r}): {exc!r}"
        assert bytes(buf) == before
        return
    assert shape.device and not refuse and expected is not None, f"update({msg!r}) accepted"
    after = bytes(buf)
    for field, msg_type in (("last_update", MessageType.DEV_DATA), ("last_write", MessageType.DEV_WRITE)):
        if msg.type == msg_type:
            stamp = struct.unpack_from("<d", after, shape.meta + META[field])[0]
            assert started - 1 <= stamp <= time.time() + 1, f"{field} = {stamp}"
            expected[shape.meta + META[field] : shape.meta + META[field] + 8] = after[
                shape.meta + META[field] : shape.meta + META[field] + 8
            ]
    if after != expected:
        diff = [i for i in range(len(after)) if after[i] != expected[i]]
        raise AssertionError(f"update({msg!r}) wrote bytes {diff[:16]} wrongly (shape {shape.entries})")


# ---- emitted messages ----------------------------------------------------------------------------


def min_messages(widths: list[int]) -> int | None:
    """Fewest messages holding values of these widths (exact for up to 12 values)."""
    if not widths:
        return 0
    if sum(widths) <= MAX_WIDTH:
        return 1
    n = len(widths)
    if n > 12:
        return None
    best = [(99, 0)] * (1 << n)
    best[0] = (1, 0)
    for s in range(1 << n):
        count, fill = best[s]
        for i in range(n):
            if s >> i & 1:
                continue
            w = widths[i]
            candidate = (count, fill + w) if fill + w <= MAX_WIDTH else (count + 1, w)
            if candidate < best[s | 1 << i]:
                best[s | 1 << i] = candidate
    return best[-1][0]


def check_values_messages(
    shape: Shape, msgs: list[Any], msg_type: int, bits: int, block: int, raw: bytes
) -> None:
    seen = 0
    for msg in msgs:
        assert isinstance(msg, Message) and msg.type == msg_type, msg
        payload = msg.payload
        params = struct.unpack_from("<H", payload)[0]
        assert params and not params & seen, f"value sent twice or empty message: {msgs}"
        seen |= params
        expected = payload[:2] + b"".join(
            raw[block + shape.entries[i][0] : block + sum(shape.entries[i])] for i in shape.ids(params)
        )
        assert payload == expected, f"{msg!r} does not carry the buffer's values"
        assert Message.decode(msg.encode()) == msg
    assert seen == bits, f"emitted {seen:#x}, expected {bits:#x}"
    fewest = min_messages([shape.entries[i][1] for i in shape.ids(bits)])
    if fewest is not None:
        assert len(msgs) == fewest, f"{len(msgs)} messages where {fewest} suffice"


def do_emit(buf: Any, shape: Shape, which: int, inp: Input) -> None:
    before = bytes(buf)
    refuse = refused(buf, shape) or not shape.device
    method = ("emit_dev_rw", "emit_dev_data", "emit_subscription")[which]
    try:
        msgs = list(getattr(api(buf, shape), method)())
    except DeviceBufferError:
        assert refuse, f"{method} refused"
        assert bytes(buf) == before
        return
    assert not refuse, f"{method} on a closed/invalid/non-device buffer"
    expected = bytearray(before)
    if method == "emit_dev_rw":
        read = shape.get(before, "read") & 0xFFFF
        if read:
            assert msgs and msgs[0] == Message.make_dev_read(read), (msgs, read)
        writes = msgs[1:] if read else msgs
        check_values_messages(shape, writes, MessageType.DEV_WRITE, shape.get(before, "written") & 0xFFFF,
                              shape.write, before)  # fmt: skip
        shape.put(expected, "read", 0)
        shape.put(expected, "written", 0)
    elif method == "emit_dev_data":
        bits = shape.get(before, "updated") & shape.readable & 0xFFFF
        check_values_messages(shape, msgs, MessageType.DEV_DATA, bits, shape.update, before)
        shape.put(expected, "updated", 0)
    else:
        bits = shape.get(before, "subscription", "<H") & shape.readable
        check_values_messages(shape, msgs, MessageType.DEV_DATA, bits, shape.update, before)
    assert bytes(buf) == expected, f"{method} changed more than its pending set"
    if inp.flag():  # what a buffer emits, a buffer of the same type digests
        for msg in msgs:
            do_update(buf, shape, msg)


# ---- values --------------------------------------------------------------------------------------


def kind_of(param: Any) -> str:
    ctype = param.platform_type
    if issubclass(ctype, ctypes.Array):
        return "raw"
    code = ctype._type_
    if code == "?":
        return "bool"
    if code in "fd":
        return "float"
    if code in "bBhHiIlLqQ":
        signed = code.islower()
        return f"{'' if signed else 'u'}int{8 * ctypes.sizeof(ctype)}"
    return "raw"


def draw_value(inp: Input, param: Any) -> tuple[Any, bool]:
    """A value for `param`, and whether it is of the right type (set/write must then accept it)."""
    mode = inp.int_in(0, 9)
    if param is not None and mode <= 3:
        return draw_good_value(inp, param, mode), True
    return draw_odd_value(inp, mode), False


def draw_good_value(inp: Input, param: Any, mode: int) -> Any:
    kind = kind_of(param)
    ctype = param.platform_type
    if kind == "bool":
        return inp.flag()
    if kind == "float":
        return inp.pick(FLOATS) if mode == 0 else inp.signed(4) / 256
    if kind in INT_RANGES:
        low, high = INT_RANGES[kind]
        return inp.int_in(low, high) if mode else inp.pick([low, high, low - 1, high + 1, 0])
    size = ctypes.sizeof(ctype)
    raw = inp.take(size).ljust(size, b"\0")
    if issubclass(ctype, ctypes.Array) and ctypes.sizeof(ctype._type_) == 1 and mode == 1:
        return raw[: inp.int_in(0, size)]
    if ctype._type_ == "c" and mode == 2:
        return raw[:1]
    return ctype.from_buffer_copy(raw)


def draw_odd_value(inp: Input, mode: int) -> Any:
    if mode == 4:
        return inp.signed(9)
    if mode == 5:
        return inp.pick(FLOATS)
    if mode == 6:
        return inp.flag()
    if mode == 7:
        return inp.take(inp.int_in(0, 300))
    if mode == 8:
        return [inp.signed(1) for _ in range(inp.int_in(0, 10))]
    return inp.pick(ODD_VALUES)


def expected_bytes(param: Any, value: Any) -> bytes | None:
    """What set/write must store for a plain number (None: not modelled here)."""
    kind = kind_of(param)
    ctype = param.platform_type
    if kind == "bool" and isinstance(value, int):
        return b"\x01" if value else b"\x00"
    if kind == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:
            return None
        if number < param.lower:
            number = float(param.lower)
        elif number > param.upper:
            number = float(param.upper)
        return bytes(ctype(number))
    if kind in INT_RANGES and type(value) is int and kind not in ("int64", "uint64"):
        low, high = INT_RANGES[kind]
        if param.lower > low:
            low = param.lower
        if param.upper < high:
            high = param.upper
        if low > high:  # bounds outside the type's range: nothing sensible to store (reported)
            return None
        number = value
        if number < low:
            number = int(low)
        elif number > high:
            number = int(high)
        return bytes(ctype(number))
    return None


def check_known_issue(param: Any, value: Any, exc: BaseException) -> None:
    if (
        "float-overflow" in KNOWN_ISSUES
        and isinstance(exc, OverflowError)
        and param is not None
        and kind_of(param) == "float"
        and isinstance(value, int)
        and abs(value) >= 2**1023  # PyLong_AsDouble overflows from about DBL_MAX on
    ):
        return
    raise exc


def refuses_non_finite(param: Any, value: Any) -> bool:
    """Whether set/write must refuse ``value``: NaN or infinity for a float parameter with a finite bound."""
    if kind_of(param) != "float" or isinstance(value, (int, bool)) or not isinstance(value, float):
        return False
    return not math.isfinite(value) and (math.isfinite(param.lower) or math.isfinite(param.upper))


def do_store(buf: Any, shape: Shape, inp: Input, to_write: bool) -> None:
    name = draw_name(inp, shape)
    param = shape.params.get(name) if isinstance(name, str) else None
    value, good = draw_value(inp, param)
    before = bytes(buf)
    method = "write" if to_write else "set"
    try:
        getattr(buf, method)(name, value)
    except (DeviceBufferError, TypeError) as exc:
        if isinstance(exc, DeviceBufferError):
            assert (
                param is None
                or refused(buf, shape)
                or (to_write and not param.writeable)
                or refuses_non_finite(param, value)
            ), f"{method}({name!r}, {value!r}): {exc!r}"
        else:
            assert not good, f"{method}({name!r}, {value!r}) refused a value of the right type: {exc!r}"
        assert bytes(buf) == before, f"failed {method} changed the buffer"
        return
    except OverflowError as exc:
        check_known_issue(param, value, exc)
        return
    assert param is not None and not refused(buf, shape), f"{method}({name!r}) accepted"
    assert not refuses_non_finite(param, value), f"{method}({name!r}, {value!r}): a non-finite value accepted"
    assert not to_write or param.writeable, f"write({name!r}) to a parameter that is not writeable"
    after = bytes(buf)
    expected = bytearray(before)
    block = shape.write if to_write else shape.update
    offset, width = shape.place[name]
    stored = expected_bytes(param, value)
    if stored is not None and not (kind_of(param) == "float" and math.isnan(struct.unpack("<f", stored)[0])):
        assert after[block + offset : block + offset + width] == stored, f"{method}({name!r}, {value!r})"
    expected[block + offset : block + offset + width] = after[block + offset : block + offset + width]
    field = "written" if to_write else "updated"
    shape.put(expected, field, shape.get(before, field) | 1 << param.id)
    if to_write:  # last_write: when the write was requested (a coarse wall clock)
        at = shape.meta + META["last_write"]
        stamp = struct.unpack_from("<d", after, at)[0]
        assert abs(stamp - time.time()) < 5, f"last_write = {stamp}"
        expected[at : at + 8] = after[at : at + 8]
    assert after == expected, f"{method}({name!r}) changed other bytes"


def same_value(a: Any, b: Any) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


def value_at(shape: Shape, raw: bytes, block: int, name: str) -> Any:
    offset, width = shape.place[name]
    return (
        shape.params[name].platform_type.from_buffer_copy(raw[block + offset : block + offset + width]).value
    )


def check_values(shape: Shape, values: dict[str, Any], bits: int, raw: bytes, block: int) -> None:
    names = {shape.name_of(i) for i in shape.ids(bits)}
    assert set(values) == names, (values, names)
    for name, value in values.items():
        if kind_of(shape.params[name]) != "raw":
            assert same_value(value, value_at(shape, raw, block, name)), (name, value)


def wchar_issue(shape: Shape, names: Any) -> bool:
    """Whether a ValueError may come from a wchar parameter among `names` (see KNOWN_ISSUES)."""
    return "wchar-value" in KNOWN_ISSUES and any(
        isinstance(n, str) and n in shape.params and "c_wchar" in repr(shape.params[n].platform_type)
        for n in names
    )


def do_take(buf: Any, shape: Shape, which: int) -> None:
    before = bytes(buf)
    method = ("get_update", "get_write", "get_read", "snapshot")[which]
    try:
        result = getattr(buf if method == "snapshot" else api(buf, shape), method)()
    except DeviceBufferError:
        assert refused(buf, shape), f"{method} refused"
        return
    except ValueError:
        if not wchar_issue(shape, shape.params):
            raise
        return
    assert not refused(buf, shape)
    expected = bytearray(before)
    if method == "get_update":
        check_values(shape, result, shape.get(before, "updated"), before, shape.update)
        shape.put(expected, "updated", 0)
    elif method == "get_write":
        check_values(shape, result, shape.get(before, "written"), before, shape.write)
        shape.put(expected, "written", 0)
    elif method == "get_read":
        assert result == {shape.name_of(i) for i in shape.ids(shape.get(before, "read"))}
        shape.put(expected, "read", 0)
    else:
        check_values(shape, result, shape.readable, before, shape.update)
    assert bytes(buf) == expected, f"{method} changed more than its pending set"


def draw_name(inp: Input, shape: Shape) -> Any:
    names = list(shape.params)
    return inp.pick([*names, *names, "nope", "_update", "", 5, ["x"]])


# ---- the operations ------------------------------------------------------------------------------


def do_op(buf: Any, shape: Shape, inp: Input, depth: int) -> None:
    op = inp.int_in(0, 19)
    if TRACE:
        print(f"{'  ' * depth}op {op} at byte {inp.pos}", flush=True)
    if op <= 1:  # any type, any payload
        msg_type = inp.pick(MESSAGE_TYPES)
        do_update(buf, shape, Message(msg_type, inp.take(inp.int_in(0, 255))))
    elif op <= 4:  # values sized for a bitmap
        msg_type = MessageType.DEV_WRITE if inp.flag() else MessageType.DEV_DATA
        params = inp.uint(2)
        mode = inp.int_in(0, 3)
        if mode <= 1:
            params &= (1 << len(shape.entries)) - 1
        size = sum(shape.entries[i][1] for i in shape.ids(params))
        if mode == 3:
            size += inp.int_in(-3, 3)
        payload = struct.pack("<H", params) + inp.take(max(0, size))
        if len(payload) > 255:
            try:
                Message(msg_type, payload)
            except ValueError:
                return
            raise AssertionError("Message accepted a payload over 255 bytes")
        do_update(buf, shape, Message(msg_type, payload))
    elif op == 5:  # a decoded frame
        try:
            msg = Message.decode(inp.take(inp.int_in(0, 262)))
        except MessageError:
            return
        do_update(buf, shape, msg)
    elif op == 6:
        factory = inp.int_in(0, 8)
        msg = [
            lambda: Message.make_sub_req(inp.uint(2), inp.uint(2)),
            lambda: Message.make_sub_res(inp.uint(2), inp.uint(2), inp.uint(2), inp.uint(1), inp.uint(8)),
            lambda: Message.make_dev_read(inp.uint(2)),
            lambda: Message.make_hb_req(inp.uint(1)),
            lambda: Message.make_hb_res(inp.uint(1)),
            Message.make_ping,
            Message.make_dev_disable,
            Message.make_unsubscribe,
            lambda: Message.make_error(inp.pick([int(c) for c in ErrorCode])),
        ][factory]()
        do_update(buf, shape, msg)
    elif op in (7, 8):
        do_store(buf, shape, inp, to_write=op == 8)
    elif op == 9:
        name = draw_name(inp, shape)
        param = shape.params.get(name) if isinstance(name, str) else None
        try:
            value = buf.get(name)
        except DeviceBufferError:
            assert param is None or not param.readable or refused(buf, shape), f"get({name!r}) refused"
            return
        except TypeError:
            assert not isinstance(name, (str, int)), f"get({name!r}) raised TypeError"
            return
        except ValueError:
            if not wchar_issue(shape, [name]):
                raise
            return
        assert param is not None and param.readable and not refused(buf, shape), f"get({name!r}) accepted"
        if kind_of(param) != "raw":
            assert same_value(value, value_at(shape, bytes(buf), shape.update, name)), (name, value)
    elif op == 10:
        names = None if inp.flag() else [draw_name(inp, shape) for _ in range(inp.int_in(0, 3))]
        before = bytes(buf)
        try:
            api(buf, shape).read(names)
        except (DeviceBufferError, TypeError):
            assert bytes(buf) == before
            return
        assert not refused(buf, shape)
        mask = shape.readable if names is None else sum({1 << shape.params[n].id for n in names})
        assert all(shape.params[n].readable for n in names or [])
        expected = bytearray(before)
        shape.put(expected, "read", shape.get(before, "read") | mask)
        assert bytes(buf) == expected, "read() marked the wrong parameters"
    elif op <= 13:
        do_emit(buf, shape, op - 11, inp)
    elif op == 14:
        do_take(buf, shape, inp.int_in(0, 3))
    elif op == 15:
        if depth >= 3:
            return
        try:
            with buf.transaction():
                for _ in range(inp.int_in(0, 4)):
                    do_op(buf, shape, inp, depth + 1)
                if inp.flag():
                    raise Abort
        except Abort:
            pass
        except DeviceBufferError:
            assert refused(buf, shape), "transaction refused"
    elif op == 16:
        try:
            buf.valid = inp.flag()
        except DeviceBufferError:
            assert buf.closed
    elif op == 17:
        do_device_extras(buf, shape, inp)
    elif op == 18 and inp.int_in(0, 7) == 0:
        buf.close()  # inside a transaction too: it must end it (and not leave the lock held)
        assert buf.closed and not buf.valid


def do_device_extras(buf: Any, shape: Shape, inp: Input) -> None:
    if not shape.device:
        return
    which = inp.int_in(0, 3)
    try:
        if which == 0:
            names = None if inp.flag() else [draw_name(inp, shape) for _ in range(inp.int_in(0, 2))]
            interval = inp.pick([None, 0, 0.04, 0.001, 0.3, 65.535, 65.536, -1, math.nan])
            msg = buf.make_sub_req(names, interval)
            assert msg.type == MessageType.SUB_REQ
        elif which == 1:
            msg = buf.make_sub_res()
            assert msg.type == MessageType.SUB_RES
        elif which == 2:
            uid = inp.pick([inp.uint(11), -1, 2**88, "12", None, 0])
            buf.uid = uid
            assert buf.uid == int(uid)
            return
        else:
            buf.subscription, buf.interval, buf.last_update, buf.last_write, buf.uid  # noqa: B018
            return
    except (DeviceBufferError, ValueError, TypeError):
        return
    do_update(buf, shape, msg)


def TestOneInput(data: bytes) -> None:
    inp = Input(data)
    spec = draw_catalog(inp)
    if TRACE:
        print(f"catalog {spec}", flush=True)
    buffer_type = make_type(spec)
    if buffer_type is None:
        return
    shape = Shape(buffer_type)
    with buffer_type.open("fuzz-update", shared=False) as buf:
        buf.serve()  # its producer: only it changes validity (op 16)
        for _ in range(64):
            if inp.exhausted:
                break
            do_op(buf, shape, inp, 0)


def main() -> None:
    _harness.fuzz(_core, TestOneInput)


if __name__ == "__main__":
    main()
