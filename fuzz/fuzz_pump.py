#!/usr/bin/env python3
"""Fuzz the bridge's frame pump (runtime.link.FramePump, csrc/pump.c) over a socket pair.

Each input drives one FramePump serving one end of a
``socket.socketpair(AF_UNIX, SOCK_STREAM)`` (non-blocking, added with
``pump.add``) while the harness plays the device on the other end, with a
process-local DeviceBuffer (``Type.open(name, shared=False)``) of a catalog
device type or of a small random catalog, attached at once, midway or never,
and sometimes ``forward_all``. The input then lists operations:

- bytes written to the pump: random bytes, DEV_DATA that fit the layout (values
  drawn from a small palette, the watched writes and their stale values, so
  that writes get settled and not settled), DEV_DATA emitted by a model device
  (set() then emit_dev_data(), as ``runtime.testing.dev_data`` does), DEV_DATA
  that do not fit, HB_REQ / HB_RES, the other factories' messages, frames of
  unknown types or bad checksums, mutated frames, over-long runs around the
  260-byte limit, bursts, missing and doubled delimiters; written in pieces, so
  that frames are split across reads;
- between synchronisation points (the pump idle): ``attach`` (also twice, of a
  closed or a plain buffer, to no port), ``watch_writes`` / ``settled`` (odd
  messages and masks too), ``send`` (also 4 KiB chunks until the pump's queue
  is full: the pump's end has a small SO_SNDBUF and the device's end does not
  read until the next synchronisation point), ``remove`` and ``add`` again,
  misuses, ``update`` from Python, the valid bit, ``close`` of the buffer, a
  transaction holding the buffer's lock while DEV_DATA arrive (the pump
  stalls, then applies them), more events than the pump keeps for Python;
- at the end, sometimes: the device's end closes, or stops reading (the next
  ``send`` or HB_RES fails), and the port is lost; or the port is removed, or
  the pump closed, with events waiting and frames in flight (no oracle there
  but the sanitizers, and no event of a removed port may reach Python).

A synchronisation point writes a delimited PING (the pump always forwards it)
and waits, on ``select`` of ``pump.fileno()`` for at most 2 s (longer is a
'hang' finding), until every predicted event arrived. The oracle is a Python
model built from FrameSplitter, Message.decode and a model buffer updated with
``update()``:

- the FRAME / OVERFLOW (and with forward_all SEEN / SENT) events are exactly
  the predicted ones, in order, with the exact frame bytes; STALL / UNSTALL
  come exactly when the buffer's lock is held; beyond 1024 FRAME / OVERFLOW
  events waiting (the port's share, asked for with ``port_events``), the first
  1024 are kept and the others dropped and counted, while the copies have room
  of their own (only the flood goes that far: otherwise a synchronisation point
  comes after 400 events);
- the buffer structure equals the model buffer's (the timestamp aside), byte
  for byte, after the fitting DEV_DATA applied in order (none while the buffer
  is invalid or closed), and snapshot() agrees (NaN-aware);
- ``counters(port)`` equals the model's: messages_in (fitting DEV_DATA while
  attached, HB_REQ and HB_RES with 1-byte payloads), messages_out (HB_RES
  sent; dropped when the queue is full), lock_stalls, events_dropped;
  ``last_rx`` is set once a message was handled;
- the device's end receives exactly the predicted bytes: an HB_RES (same id)
  per HB_REQ, in order, interleaved with what ``send`` wrote, nothing once the
  queue is full, and the queue is empty after it read them;
- ``send`` returns False exactly when the queue is full (or the port lost);
- ``settled`` returns the IDs a model of the settling rule (csrc/pump.c:
  settle, watch_writes) predicts.

The writer thread's calls (serve_writes and the rest) appear only as misuses
here: tests/test_pump_writes.py covers the writer on real ptys and buffers.

Only the documented exceptions may escape (ValueError for a bad port, a
DEV_WRITE that does not fit or a second attach; TypeError for wrongly typed
arguments; DeviceBufferError for a closed or plain buffer; OSError for a
descriptor added twice). Any other exception, a
failed check, a hang, a crash or a sanitizer report is a finding. Every input
closes the pump and both sockets; open descriptors and threads are checked to
stay bounded.
"""

from __future__ import annotations

import ctypes
import math
import os
import select
import socket
import struct
import time
from typing import Any

import _harness  # sys.path and warnings first
import atheris
from _harness import Input, cobs_encode, model_values

with atheris.instrument_imports(include=["runtime"]):
    from runtime import _core
    from runtime import catalog as catalog_module
    from runtime.buffer import BufferStore, DeviceBufferError
    from runtime.link import FramePump, PumpEvent
    from runtime.messaging import DELIM, ErrorCode, FrameSplitter, Message, MessageError, MessageType

# Known bugs outside fuzz/'s remit, tolerated (narrowly) until fixed; see fuzz/README.md.
KNOWN_ISSUES: set[str] = set()
"""Findings tolerated until their fix lands (each entry names its exact case below); none now."""

WAIT = 2.0  # seconds an expected event or reply may take: longer is a hang
MAX_OPS = 128
MAX_PENDING_EVENTS = 400  # events predicted since the last sync before one is forced (the pump keeps 1024)
MAX_PENDING_RX = 16 * 1024  # bytes the device's end has yet to read before a sync is forced
MAX_STREAM = 256 * 1024  # bytes written to the pump per input
MAX_WIDTH = 253
OUTBOX_LIMIT = 64 * 1024  # bytes the pump queues per port before it drops what it would send (pump.c)
EVENT_LIMIT = 1024  # frames the port may have waiting for Python (its share, port_events; copies: 4 times)
SNDBUF = 8192  # the pump's end of the socket pair takes little: its writes queue in the pump soon
WATCH_WIDTH = 8  # the pump watches writes of parameters up to 8 bytes wide
STALE_VALUES = 4
META = _core.META_LAYOUT
PING = Message.make_ping().encode()
MARKER = DELIM + PING + DELIM
STREAM_OPS = 15  # ops 0..14 only write bytes; the others synchronise first
BASES = ["bool", "uint8", "int8", "int16", "uint16", "int32", "uint32", "float", "double", "int64", "uint64"]
FLOATS = [0.0, -0.0, 1.5, -1.5, math.nan, math.inf, -math.inf, 1e300, 3.5e38, 1e-45, 0.1]
INT_RANGES = {
    "c_bool": (0, 1), "c_byte": (-128, 127), "c_ubyte": (0, 255), "c_short": (-(2**15), 2**15 - 1),
    "c_ushort": (0, 2**16 - 1), "c_int": (-(2**31), 2**31 - 1), "c_uint": (0, 2**32 - 1),
    "c_long": (-(2**63), 2**63 - 1), "c_ulong": (0, 2**64 - 1),
}  # fmt: skip
ODD_IDS: list[Any] = [0, -1, 2**64 - 1, 2**70, 0xFFFF0000, "x", None]


# Device types of the real catalog (src/runtime/catalog.yaml), from small to the 16-parameter koala-bear,
# and a buffer type that is not a Smart Device (like gamepad).
CATALOG = catalog_module.load()
DEVICE_TYPES = [
    CATALOG[name] for name in ("limit-switch", "encoder", "rfid", "servo-motor", "battery", "koala-bear")
]
PLAIN = BufferStore.make_catalog({"plain": {"params": [{"name": "x", "type": "int32"}]}})["plain"]
TRACE = os.environ.get("FUZZ_TRACE") == "1"  # print the operations (to replay an input)
_types: dict[str, Any] = {}
_shapes: dict[Any, Shape] = {}
_runs = 0
_baseline: tuple[int, int] | None = None


def trace(*args: Any) -> None:
    if TRACE:
        print(*args, flush=True)


def raw_message(msg_type: int, payload: bytes, checksum_error: int = 0) -> bytes:
    raw = bytes([msg_type, len(payload) & 0xFF]) + payload
    checksum = checksum_error
    for byte in raw:
        checksum ^= byte
    return raw + bytes([checksum])


def same(a: Any, b: Any) -> bool:
    """Equality where NaN equals NaN (snapshots hold floats from random bytes; arrays as ctypes arrays)."""
    if isinstance(a, ctypes.Array) and isinstance(b, ctypes.Array):
        a, b = list(a), list(b)
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def mismatch(got: list[Any], expected: list[Any]) -> str:
    """Where two event lists part (for a finding's message)."""
    at = next((i for i, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b), None)
    if at is None:
        at = min(len(got), len(expected))
    return (
        f"events differ at #{at} of {len(got)} (expected {len(expected)}): "
        f"got {got[max(0, at - 2) : at + 3]}, expected {expected[max(0, at - 2) : at + 3]}"
    )


# ---- the device type -----------------------------------------------------------------------------


class Shape:
    """Where each parameter ID's value lives in the update block (the layout the pump checks against)."""

    def __init__(self, buffer_type: Any) -> None:
        values = dict(buffer_type._fields_)["_update"]
        self.update = buffer_type._update.offset
        self.meta = buffer_type._meta.offset
        params = buffer_type.params
        count = max((p.id + 1 for p in params.values()), default=0)
        self.entries = [(0, 0)] * count
        # (name, ctypes name) of the parameters set() takes a number for
        self.scalars: list[tuple[str, str]] = []
        for name, p in params.items():
            self.entries[p.id] = (getattr(values, name).offset, ctypes.sizeof(p.platform_type))
            ctype = p.platform_type.__name__
            if ctype in INT_RANGES or ctype in ("c_float", "c_double"):
                self.scalars.append((name, ctype))
        self.ids = [i for i, (_, width) in enumerate(self.entries) if width]
        self.mask = sum(1 << i for i in self.ids)


def shape_of(buffer_type: Any) -> Shape:
    shape = _shapes.get(buffer_type)
    if shape is None:
        shape = _shapes[buffer_type] = Shape(buffer_type)
        if len(_shapes) > 512:
            _shapes.pop(next(iter(_shapes)))
    return shape


def draw_type(inp: Input) -> Any:
    """A catalog device type, or a small random one (a refused catalog falls back to the first type)."""
    if inp.int_in(0, 3) < 2:
        return inp.pick(DEVICE_TYPES)
    params = []
    for index in range(inp.int_in(1, 16)):
        base = inp.pick(BASES)
        flags = inp.uint(1)
        if flags & 3:
            ctype = base
        elif flags & 0x80:
            ctype = f"uint8[{inp.int_in(200, MAX_WIDTH)}]"  # DEV_DATA near the 255-byte payload limit
        else:
            ctype = f"{base}[{inp.int_in(1, 32)}]"
        raw: dict[str, Any] = {"name": f"p{index}", "type": ctype}
        if flags & 4:
            raw["id"] = inp.int_in(0, 15)  # gaps, and duplicates (refused)
        if flags & 8:
            raw["readable"] = False
        if flags & 16:
            raw["writeable"] = True
        params.append(raw)
    spec = {"device_id": inp.uint(2), "params": params}
    key = repr(spec)
    if key not in _types:
        try:
            _types[key] = BufferStore.make_catalog({"fzp": spec})["fzp"]
        except (DeviceBufferError, ValueError):
            _types[key] = DEVICE_TYPES[0]
        if len(_types) > 512:
            _types.pop(next(iter(_types)))
    return _types[key]


# ---- one input -----------------------------------------------------------------------------------


class Run:
    """A pump, its port and buffer, the device's end of the socket pair, and the model of all of them."""

    def __init__(
        self, inp: Input, buffer_type: Any, buffers: tuple[Any, Any, Any], forward_all: bool
    ) -> None:
        self.inp = inp
        self.shape = shape_of(buffer_type)
        self.buf, self.model, self.emitter = buffers
        # model: update()d with the DEV_DATA the pump must apply; emitter: the device, set() and emitted
        self.forward_all = forward_all
        self.palette = [0, inp.uint(1), inp.uint(1)]
        self.pump = FramePump(forward_all=forward_all, port_events=EVENT_LIMIT)
        self.device, self.host = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.host.setblocking(False)
        self.host.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF)
        self.device.settimeout(WAIT)
        self.port = self.pump.add(self.host.fileno())
        assert self.pump._core.forward_all is forward_all
        self.written_total = 0
        self.lost = False
        self.flooded = False
        self.valid = True
        self.closed = False
        self.in_txn = False
        self.stall_events: list[tuple[PumpEvent, Any]] = []
        self.reset_port()

    def reset_port(self) -> None:
        """The model of a freshly added port."""
        self.splitter = FrameSplitter()
        self.out = bytearray()  # bytes for the pump not written yet
        self.expected: list[tuple[PumpEvent, Any]] = []  # events predicted since the last sync
        self.rx_expected = bytearray()  # what the device's end must read
        self.rx = bytearray()
        self.messages_in = self.messages_out = self.stalls = self.dropped = 0
        self.outbox = 0  # bytes the pump queued for the device's end (known after send(); 0 after a drain)
        self.attached = False
        self.stage: dict[int, bytes] = {}  # the value the device reported last (or the buffer's at attach)
        self.watching = self.settled = 0
        self.written: dict[int, bytes] = {}
        self.stale: dict[int, list[bytes]] = {}
        self.stalled = False
        self.held: list[Message] = []  # DEV_DATA staged while the lock is held

    # -- the model of the stream --

    def emit(self, data: bytes) -> None:
        """Queue bytes for the pump and predict what it does with them (piece by piece if one is long)."""
        self.out += data
        if self.splitter.pending + max(map(len, data.split(DELIM))) <= self.splitter.max_frame:
            for frame in self.splitter.feed(data):  # nothing too long: no overflow to order among the frames
                self.model_frame(frame)
            return
        start = 0
        while True:
            end = data.find(0, start)
            segment = data[start:] if end < 0 else data[start : end + 1]
            overflows = self.splitter.overflows
            frames = self.splitter.feed(segment)
            assert len(frames) + self.splitter.overflows - overflows <= 1, (segment, frames)
            if self.splitter.overflows != overflows:
                self.expected.append((PumpEvent.OVERFLOW, None))
            for frame in frames:
                self.model_frame(frame)
            if end < 0:
                break
            start = end + 1

    def model_frame(self, frame: bytes) -> None:
        try:
            msg = Message.decode(frame)
        except MessageError:
            self.expected.append((PumpEvent.FRAME, frame))
            return
        msg_type, payload = int(msg.type), msg.payload
        if msg_type == MessageType.DEV_DATA and self.attached:
            params = model_values(payload, self.shape.entries)
            if params is None:
                self.expected.append((PumpEvent.FRAME, frame))
                return
            self.handled(frame)
            at = 2
            for i in self.shape.ids:
                if params >> i & 1:
                    width = self.shape.entries[i][1]
                    value = payload[at : at + width]
                    at += width
                    if self.watching >> i & 1:
                        self.model_settle(i, value)
                    self.stage[i] = value
            self.model_commit(msg)
        elif msg_type == MessageType.HB_RES and len(payload) == 1:
            self.handled(frame)
        elif msg_type == MessageType.HB_REQ and len(payload) == 1:
            self.handled(frame)
            reply = Message.make_hb_res(payload[0]).encode()
            if self.outbox:  # queued behind what the device's end has not taken, up to the limit
                if self.outbox + len(reply) + 1 > OUTBOX_LIMIT:
                    return  # dropped
                self.outbox += len(reply) + 1
            self.messages_out += 1
            self.rx_expected += reply + DELIM
            if self.forward_all:
                self.expected.append((PumpEvent.SENT, reply))
        else:
            self.expected.append((PumpEvent.FRAME, frame))

    def handled(self, frame: bytes) -> None:
        self.messages_in += 1
        if self.forward_all:
            self.expected.append((PumpEvent.SEEN, frame))

    def model_settle(self, i: int, value: bytes) -> None:
        if value != self.written[i] and value in self.stale[i]:
            return  # the device may report this without having seen the write
        self.watching &= ~(1 << i)
        self.settled |= 1 << i

    def model_commit(self, msg: Message) -> None:
        if self.closed:
            return  # refused: the values go
        if self.in_txn:
            if not self.stalled:
                self.stalled = True
                self.stalls += 1
            self.held.append(msg)
            return
        if self.valid:
            self.model.update(msg)

    # -- talking to the pump --

    def flush(self, upto: int | None = None) -> None:
        """Write the queued bytes (or the first `upto` of them) to the pump."""
        data = bytes(self.out if upto is None else self.out[:upto])
        del self.out[: len(data)]
        if self.lost or not data:
            return
        self.written_total += len(data)
        try:
            self.device.sendall(data)
        except TimeoutError:
            raise AssertionError(f"hang: the pump did not read {len(data)} bytes in {WAIT}s") from None

    def sync(self) -> None:
        """Write a PING, wait until the pump forwarded it: everything before it is done; check it all."""
        if self.lost:
            return
        self.emit(MARKER)
        self.flush()
        self.collect()
        self.drain()
        counters = self.pump.counters(self.port)
        expected = (self.messages_in, self.messages_out, self.stalls, self.dropped, 0)  # no writes served
        trace(f"    sync: {counters}, stalls {self.stall_events}")
        assert tuple(counters) == expected, f"counters {counters}, expected {expected}"
        last_rx = self.pump.last_rx(self.port)
        assert (last_rx > 0) == (self.messages_in > 0) and last_rx <= time.monotonic(), last_rx
        if self.in_txn:
            assert self.stall_events == ([(PumpEvent.STALL, 0.0)] if self.stalled else []), self.stall_events
        else:
            assert not self.stall_events, f"unexpected {self.stall_events}"
            self.compare_buffers()

    def take(self, got: list[tuple[PumpEvent, Any]]) -> None:
        for port, kind, data in self.pump.take_events():
            assert port == self.port, (port, kind, data)
            if kind in (PumpEvent.STALL, PumpEvent.UNSTALL):
                self.stall_events.append((kind, data))
            else:
                got.append((kind, data))

    def collect(self) -> None:
        trace(f"    expecting {self.expected}")
        got: list[tuple[PumpEvent, Any]] = []
        deadline = time.monotonic() + WAIT
        while len(got) < len(self.expected):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"hang: {len(got)} of {len(self.expected)} events in {WAIT}s; "
                    f"{mismatch(got, self.expected)}; counters {self.pump.counters(self.port)}"
                )
            select.select([self.pump.fileno()], [], [], left)
            self.take(got)
        assert got == self.expected, mismatch(got, self.expected)
        self.expected.clear()

    def drain(self) -> None:
        """Read what the pump wrote to the device's end: exactly the predicted bytes."""
        deadline = time.monotonic() + WAIT
        while True:
            while select.select([self.device], [], [], 0)[0]:
                chunk = self.device.recv(65536)
                if not chunk:
                    break
                self.rx += chunk
            assert self.rx == self.rx_expected[: len(self.rx)], (
                f"the device's end read {self.rx.hex(' ')}, expected {self.rx_expected.hex(' ')}"
            )
            if len(self.rx) == len(self.rx_expected):
                break
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"hang: {len(self.rx)} of {len(self.rx_expected)} bytes from the pump in {WAIT}s"
                )
            select.select([self.device], [], [], left)
        assert self.pump.pending(self.port) == 0
        self.rx.clear()
        self.rx_expected.clear()
        self.outbox = 0

    def compare_buffers(self) -> None:
        if self.closed:
            return
        actual, expected = bytearray(bytes(self.buf)), bytearray(bytes(self.model))
        stamp = slice(self.shape.meta + META["last_update"], self.shape.meta + META["last_update"] + 8)
        assert any(actual[stamp]) == any(expected[stamp]), "last_update set wrongly"
        actual[stamp] = expected[stamp] = bytes(8)
        if actual != expected:
            diff = [i for i in range(len(actual)) if actual[i] != expected[i]]
            raise AssertionError(
                f"buffer differs from the model at bytes {diff[:16]} (update block at {self.shape.update}, "
                f"layout {self.shape.entries})"
            )

    def compare_snapshots(self) -> None:
        if self.closed or not self.valid:
            return
        actual, expected = self.buf.snapshot(), self.model.snapshot()
        assert same(actual, expected), (actual, expected)

    # -- what goes on the wire --

    def draw_value(self, i: int) -> bytes:
        width = self.shape.entries[i][1]
        mode = self.inp.int_in(0, 7)
        if mode <= 2:
            return bytes([self.palette[mode]]) * width
        if mode == 3 and i in self.written:
            return self.written[i]
        if mode == 4 and self.stale.get(i):
            return self.inp.pick(self.stale[i])
        if mode == 5 and i in self.stage:
            return self.stage[i]
        return self.inp.take(width).ljust(width, b"\x00")

    def draw_values(self) -> bytes:
        """The payload of a DEV_DATA/DEV_WRITE that fits the layout."""
        params = self.inp.uint(2) & self.shape.mask
        if params == 0 and self.shape.ids:
            params = 1 << self.inp.pick(self.shape.ids)
        chosen = [i for i in self.shape.ids if params >> i & 1]
        while sum(self.shape.entries[i][1] for i in chosen) > MAX_WIDTH:
            chosen.pop()
        params = sum(1 << i for i in chosen)
        return struct.pack("<H", params) + b"".join(self.draw_value(i) for i in chosen)

    def draw_misfit(self) -> bytes:
        """A payload that (mostly) does not fit: random, one byte off, or with an ID not in the layout."""
        which = self.inp.int_in(0, 3)
        if which == 0:
            return self.inp.take(self.inp.int_in(0, 40))
        payload = self.draw_values()
        if which == 1:
            return payload[:-1] if len(payload) > 2 else payload + b"\x00"
        if which == 2:
            return (payload + self.inp.take(self.inp.int_in(1, 3)))[:255]
        params = struct.unpack_from("<H", payload)[0] | 1 << self.inp.int_in(0, 15)
        return struct.pack("<H", params) + payload[2:]

    def emitted_dev_data(self) -> list[Message]:
        """The DEV_DATA a model of the device emits after set() (as runtime.testing.dev_data makes them)."""
        if not self.shape.scalars:
            return []
        values: dict[str, Any] = {}
        for _ in range(self.inp.int_in(1, 3)):
            name, ctype = self.inp.pick(self.shape.scalars)
            if ctype in ("c_float", "c_double"):
                values[name] = self.inp.pick(FLOATS)
            elif ctype == "c_bool":
                values[name] = self.inp.flag()
            else:
                low, high = INT_RANGES[ctype]
                values[name] = self.inp.int_in(low, high)
        for name, value in values.items():
            try:
                self.emitter.set(name, value)
            except DeviceBufferError:  # a non-finite value for a bounded parameter: not the pump's business
                pass
        return list(self.emitter.emit_dev_data())

    def other_message(self) -> bytes:
        inp = self.inp
        which = inp.int_in(0, 12)
        if which == 0:
            msg = Message.make_ping()
        elif which == 1:
            msg = Message.make_sub_res(inp.uint(2), inp.uint(2), inp.uint(2), inp.uint(1), inp.uint(8))
        elif which == 2:
            msg = Message.make_error(inp.pick(list(ErrorCode)))
        elif which == 3:
            msg = Message.make_sub_req(inp.uint(2), inp.uint(2))
        elif which == 4:
            msg = Message.make_dev_read(inp.uint(2))
        elif which == 5:
            msg = Message.make_dev_disable()
        elif which == 6:
            msg = Message(MessageType.DEV_WRITE, self.draw_values())
        elif which == 7:  # heartbeats of the wrong size: not the pump's to handle
            msg = Message(inp.pick([MessageType.HB_REQ, MessageType.HB_RES]), inp.take(inp.pick([0, 2, 3])))
        elif which == 8:
            msg = Message(inp.pick(list(MessageType)), inp.take(inp.int_in(0, 255)))
        else:  # raw frames: unknown types, bad checksums, length bytes that lie
            msg_type = inp.uint(1)
            payload = inp.take(inp.int_in(0, 20))
            raw = raw_message(msg_type, payload, inp.uint(1) if which == 9 else 0)
            if which == 10:
                raw = raw[:1] + bytes([inp.uint(1)]) + raw[2:]
            elif which == 11:
                raw = raw_message(inp.pick([MessageType.HB_REQ, MessageType.HB_RES, MessageType.DEV_DATA]),
                                  payload, inp.uint(1))  # fmt: skip
            return cobs_encode(raw)
        return msg.encode()

    def known_frame(self) -> bytes:
        """An encoded message the pump handles, to mutate."""
        which = self.inp.int_in(0, 2)
        if which == 0:
            return Message(MessageType.DEV_DATA, self.draw_values()).encode()
        return (Message.make_hb_req if which == 1 else Message.make_hb_res)(self.inp.uint(1)).encode()

    def mutated(self) -> bytes:
        frame = bytearray(self.known_frame())
        for _ in range(self.inp.int_in(1, 3)):
            which = self.inp.int_in(0, 4)
            at = self.inp.int_in(0, max(0, len(frame) - 1))
            if which == 0 and frame:
                frame[at] ^= self.inp.int_in(1, 255)  # may become a delimiter: two frames
            elif which == 1:
                del frame[at:]
            elif which == 2:
                frame.insert(at, self.inp.uint(1))
            elif which == 3 and frame:
                del frame[at]
            else:
                frame = bytearray(frame[at:] + frame[:at])
        return bytes(frame)

    def stream_op(self, op: int) -> None:
        """Ops 0..14: bytes for the pump."""
        inp = self.inp
        if op <= 1:
            self.emit(inp.take(inp.int_in(0, 64)))
        elif op <= 4:
            self.emit(Message(MessageType.DEV_DATA, self.draw_values()).encode() + DELIM)
        elif op == 5:
            self.emit(b"".join(msg.encode() + DELIM for msg in self.emitted_dev_data()))
        elif op == 6:
            self.emit(Message(MessageType.DEV_DATA, self.draw_misfit()).encode() + DELIM)
        elif op == 7:
            self.emit(Message.make_hb_req(inp.uint(1)).encode() + DELIM)
        elif op == 8:
            self.emit(Message.make_hb_res(inp.uint(1)).encode() + DELIM)
        elif op == 9:
            self.emit(self.other_message() + DELIM)
        elif op == 10:
            self.emit(self.mutated() + DELIM * inp.int_in(0, 1))
        elif op == 11:  # over-long: around the 260-byte limit, or far past it; ended or not
            length = inp.pick([259, 260, 261, 262, 300, 520, 521, 700, 4096, 4097])
            fill = inp.int_in(1, 255)
            self.emit(bytes([fill]) * length + DELIM * inp.int_in(0, 1))
        elif op == 12:  # a piece now: the rest (half a frame, often) in a later read
            self.flush(len(self.out) * inp.uint(1) // 255)
        elif op == 13:  # a burst: many frames in one read
            frame = self.known_frame() if inp.flag() else self.other_message()
            self.emit((frame + DELIM) * inp.int_in(2, 60))
        else:  # delimiters: none (the next frame runs on), or several
            self.emit(self.known_frame() + DELIM * inp.int_in(0, 3))

    # -- calls between frames (the pump idle) --

    def attach(self) -> None:
        which = self.inp.int_in(0, 15)
        if which == 15:  # not a Smart Device buffer: refused
            with PLAIN.open("fuzz-pump-plain", shared=False) as plain:
                try:
                    self.pump.attach(self.port, plain)
                except DeviceBufferError:
                    return
                raise AssertionError("attach() took a plain buffer")
        if which == 14:
            try:
                self.pump.attach(self.port + 1 + self.inp.uint(1), self.buf)
            except ValueError:
                return
            except DeviceBufferError:
                assert self.closed, "attach() refused"  # the buffer is checked first
                return
            raise AssertionError("attach() to a port that does not exist")
        attached, closed = self.attached, self.closed
        try:
            self.attach_buffer()
        except DeviceBufferError:
            assert closed, "attach() refused"
            return
        except ValueError:
            assert attached and not closed, "attach() refused"
            return
        assert not attached and not closed, "attach() accepted twice, or a closed buffer"

    def attach_buffer(self) -> None:
        """attach(); the pump's stage starts as the buffer's update block (what a write replaces)."""
        self.pump.attach(self.port, self.buf)
        self.attached = True
        block = bytes(self.buf)
        for i in self.shape.ids:
            offset, width = self.shape.entries[i]
            self.stage[i] = block[self.shape.update + offset : self.shape.update + offset + width]

    def watch_writes(self) -> None:
        inp = self.inp
        which = inp.int_in(0, 7)
        if which == 7:
            msg = Message(MessageType.DEV_WRITE, self.draw_misfit())
        elif which == 6:
            msg = Message(inp.pick([MessageType.DEV_DATA, MessageType.PING]), b"")
        else:
            msg = Message(MessageType.DEV_WRITE, self.draw_values())
        ids: Any = inp.uint(2) if inp.flag() else inp.pick(ODD_IDS)
        params = model_values(msg.payload, self.shape.entries)
        if msg.type != MessageType.DEV_WRITE or not isinstance(ids, int):
            expected: type[Exception] | None = TypeError
        elif not self.attached or params is None:
            expected = ValueError
        else:
            expected = None
        trace(f"    watch_writes({msg!r}, {ids!r})")
        try:
            self.pump.watch_writes(self.port, msg, ids)
        except (TypeError, ValueError) as exc:
            assert expected is not None and isinstance(exc, expected), (msg, ids, exc)
            return
        assert expected is None and params is not None, f"watch_writes({msg!r}, {ids!r}) accepted"
        ids &= 2**64 - 1
        at = 2
        for i in self.shape.ids:
            if not params >> i & 1:
                continue
            width = self.shape.entries[i][1]
            value = msg.payload[at : at + width]
            at += width
            if ids >> i & 1 and width <= WATCH_WIDTH:
                stale = self.stale.setdefault(i, [])
                if not self.watching >> i & 1:
                    stale.clear()
                previous = self.written[i] if self.watching >> i & 1 else self.stage[i]
                if len(stale) == STALE_VALUES:
                    stale.pop(0)
                stale.append(previous)
                self.written[i] = value
                self.watching |= 1 << i
                self.settled &= ~(1 << i)

    def settled_op(self) -> None:
        forget: Any = self.inp.uint(2) if self.inp.flag() else self.inp.pick(ODD_IDS)
        try:
            result = self.pump.settled(self.port, forget)
        except TypeError:
            assert not isinstance(forget, int), forget
            return
        assert isinstance(forget, int), forget
        trace(f"    settled({forget!r}) = {result:#x}")
        assert result == self.settled, f"settled() = {result:#x}, expected {self.settled:#x}"
        self.settled = 0
        self.watching &= ~(forget & 0xFFFFFFFF)

    def buffer_op(self) -> None:
        which = self.inp.int_in(0, 11)
        if self.closed:
            return
        if which <= 4:  # the host's own update() of the buffer: the pump's stage does not see it
            msg = Message(MessageType.DEV_DATA, self.draw_values())
            try:
                self.buf.update(msg)
            except DeviceBufferError:
                assert not self.valid, f"update({msg!r}) refused"
                return
            assert self.valid, "update() of an invalid buffer"
            self.model.update(msg)
        elif which <= 7:
            self.valid = self.inp.flag()
            self.buf.valid = self.valid
        elif which <= 9:
            self.compare_snapshots()
        elif which == 10:
            self.buf.close()  # the pump keeps the memory it attached until it lets go
            self.closed = True

    def transaction(self) -> None:
        """Hold the buffer's lock while frames arrive: the pump stalls, and applies them once it frees."""
        count = self.inp.int_in(1, 6)
        if self.closed or not self.valid:
            return
        with self.buf.transaction():
            self.in_txn = True
            for _ in range(count):
                self.stream_op(self.inp.int_in(0, STREAM_OPS - 1))
            self.sync()
            self.in_txn = False
        if not self.stalled:
            return
        got: list[tuple[PumpEvent, Any]] = []
        deadline = time.monotonic() + WAIT
        while not self.stall_events or self.stall_events[-1][0] != PumpEvent.UNSTALL:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"hang: no UNSTALL {WAIT}s after the lock was released")
            select.select([self.pump.fileno()], [], [], left)
            self.take(got)
        assert not got, f"unexpected {got}"
        first, *reports, last = self.stall_events
        assert first == (PumpEvent.STALL, 0.0) and all(e == PumpEvent.STALL and s > 0 for e, s in reports)
        assert isinstance(last[1], float) and last[1] >= 0, self.stall_events
        self.stall_events.clear()
        self.stalled = False
        for msg in self.held:
            self.model.update(msg)
        self.held.clear()

    def send(self) -> None:
        """send() a few bytes, or 4 KiB chunks that fill the pump's queue (the device's end does not read)."""
        chunks = self.inp.int_in(0, 24)
        if chunks == 0:
            data = [self.inp.take(self.inp.int_in(0, 64))]
        else:
            data = [bytes([self.inp.uint(1)]) * 4096] * chunks
        for chunk in data:
            pending = self.pump.pending(
                self.port
            )  # the thread is idle: nothing flushes until the device reads
            accepted = pending == 0 or pending + len(chunk) <= OUTBOX_LIMIT
            assert self.pump.send(self.port, chunk) is accepted, f"send() with {pending} bytes queued"
            if accepted:
                self.rx_expected += chunk
        self.outbox = self.pump.pending(self.port)
        assert self.outbox <= max(OUTBOX_LIMIT, len(data[0])), self.outbox

    def flood(self) -> None:
        """More frames than the port's share: the first 1024 reach Python, the others are dropped (counted);
        the heartbeat's copies and a LOST still get through (room is kept for them)."""
        count = self.inp.int_in(EVENT_LIMIT - 24, EVENT_LIMIT + 100)
        frames = [
            PING,
            Message.make_error(ErrorCode.BACKOFF).encode(),
            cobs_encode(raw_message(0x10, b"", 1)),
        ]
        frame = self.inp.pick(
            frames
        )  # one the pump forwards, whatever the state: predicted without the model
        hang_up = self.inp.int_in(0, 3) == 3
        self.out += (frame + DELIM) * count
        self.expected += [(PumpEvent.FRAME, frame)] * count
        heartbeat = Message.make_hb_req(self.inp.uint(1)).encode()
        self.emit(heartbeat + DELIM)  # its answer says the pump read everything
        self.flush()
        self.drain()
        kept: list[tuple[PumpEvent, Any]] = []
        frames = 0
        for event in self.expected:  # EVENT_LIMIT frames in the share; copies have room of their own
            if event[0] in (PumpEvent.FRAME, PumpEvent.OVERFLOW):
                frames += 1
                if frames > EVENT_LIMIT:
                    self.dropped += 1
                    continue
            kept.append(event)
        self.expected.clear()
        if hang_up:
            self.device.close()
            deadline = time.monotonic() + WAIT
            while self.pump.send(self.port, b""):  # taking the events would make room: wait for the loss
                assert time.monotonic() < deadline, f"hang: the port not lost {WAIT}s after the hang-up"
                select.select([], [], [], 0.001)
            self.lost = True
        got: list[tuple[PumpEvent, Any]] = []
        self.take(got)
        if hang_up:
            assert got[-1:] and got[-1][0] == PumpEvent.LOST, got[-1:]
            got.pop()
        assert got == kept, mismatch(got, kept)
        counters = self.pump.counters(self.port)
        assert counters.events_dropped == self.dropped, (counters, self.dropped)

    def misuse(self) -> None:
        """Calls the pump must refuse (ValueError, TypeError, or OSError for a descriptor added twice),
        changing nothing."""
        core, port = self.pump._core, self.port
        calls: list[tuple[type[Exception], Any]] = [
            (TypeError, lambda: core.attach(port)),
            (TypeError, lambda: core.send(port)),
            (TypeError, lambda: core.watch_writes(port, PING)),
            (TypeError, lambda: core.settled()),
            (TypeError, lambda: core.settled(port, 0, 0)),
            (TypeError, lambda: core.counters("0")),
            (TypeError, lambda: core.send(port, "text")),
            (ValueError, lambda: self.pump.add(-1)),
            (OSError, lambda: self.pump.add(self.host.fileno())),  # already in the pump's epoll set
            (ValueError, lambda: self.pump.remove(port + 1)),
            (ValueError, lambda: self.pump.send(-1, b"")),
            (ValueError, lambda: self.pump.counters(port + 100)),
            (ValueError, lambda: self.pump.last_rx(-1)),
            (ValueError, lambda: self.pump.pending(port + 1)),
            (ValueError, lambda: self.pump.settled(port + 1)),
            (
                ValueError,
                lambda: self.pump.watch_writes(port + 1, Message(MessageType.DEV_WRITE, b"\0\0"), 1),
            ),
            # the writer thread's calls (serve_writes is never called here: the model has no writer)
            (TypeError, lambda: core.serve_writes(port)),
            (TypeError, lambda: core.confirm_writes(port, 1, 0.25, 8)),
            (TypeError, lambda: core.commanders_checked(port, 7)),
            (ValueError, lambda: self.pump.serve_writes(port + 1, 0.04)),
            (ValueError, lambda: self.pump.serve_writes(port, -1.0)),
            (ValueError, lambda: self.pump.confirm_writes(port, 1, 0.0, 8, subscribed=True)),
            (ValueError, lambda: self.pump.confirm_writes(port, 1, 0.25, 1000, subscribed=True)),
            (ValueError, lambda: self.pump.send_writes_now(port + 1)),
            (ValueError, lambda: self.pump.commanders_checked(port, [(k, 0) for k in range(1, 100)])),
        ]
        for _ in range(self.inp.int_in(1, 4)):
            error, call = self.inp.pick(calls)
            try:
                call()
            except error:
                continue
            raise AssertionError(f"a misuse was not refused with {error.__name__}")

    def readd(self) -> None:
        """remove() then add() the same descriptor: a fresh port, the same ID."""
        self.pump.remove(self.port)
        for call in (self.pump.counters, self.pump.pending):
            try:
                call(self.port)
            except ValueError:
                continue
            raise AssertionError(f"{call.__name__} of a removed port")
        assert self.pump.add(self.host.fileno()) == self.port
        self.reset_port()

    def call_op(self, op: int) -> None:
        """Ops 15..23: synchronise, then call the pump (or the buffer)."""
        self.sync()
        if self.lost:
            return
        trace(
            "   ",
            ["sync", "attach", "watch", "settled", "buffer", "txn", "send", "readd/misuse", "flood"][op - 15],
        )
        if op == 16:
            self.attach()
        elif op == 17:
            self.watch_writes()
        elif op == 18:
            self.settled_op()
        elif op == 19:
            self.buffer_op()
        elif op == 20:
            self.transaction()
        elif op == 21:
            self.send()
        elif op == 22:
            which = self.inp.int_in(0, 3)
            if which == 3:
                self.readd()
            elif which == 2:
                self.misuse()
        elif op == 23 and self.inp.int_in(0, 3) == 3 and not self.flooded:
            self.flooded = True  # once per input: it is slow
            self.flood()

    def hang_up(self, how: int) -> None:
        """The device's end goes: closed (end of stream), or it stops reading and the pump's next write,
        of send() or of an HB_RES, fails. The port is lost; sends are dropped from then on."""
        expected: list[tuple[PumpEvent, Any]] = []
        if how == 0:
            self.device.close()
        else:
            self.device.shutdown(socket.SHUT_RD)
            if how == 1:
                assert self.pump.send(self.port, b"x") is False, "send() to a device that stopped reading"
            else:
                heartbeat = Message.make_hb_req(0x5A).encode()
                self.device.sendall(heartbeat + DELIM)
                self.messages_in += 1
                if self.forward_all:
                    expected.append((PumpEvent.SEEN, heartbeat))
        got: list[tuple[PumpEvent, Any]] = []
        deadline = time.monotonic() + WAIT
        while len(got) <= len(expected):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"hang: no LOST event {WAIT}s after the hang-up ({how}): {got}")
            select.select([self.pump.fileno()], [], [], left)
            self.take(got)
        *handled, (kind, reason) = got
        assert handled == expected and kind == PumpEvent.LOST and isinstance(reason, str), got
        assert reason.startswith("end of stream" if how == 0 else "write error"), reason
        trace(f"    hang-up: {reason}")
        assert self.pump.send(self.port, b"x") is False
        counters = self.pump.counters(self.port)
        assert counters[:2] == (self.messages_in, self.messages_out), (counters, self.messages_in)
        self.lost = True

    def abrupt_end(self, remove: bool) -> None:
        """Close the pump, or remove the port, with events waiting and frames in flight (no oracle but
        the sanitizers; a removed port's events must not reach Python)."""
        self.emit(MARKER)
        self.flush()
        select.select([self.pump.fileno()], [], [], WAIT)
        self.device.sendall((PING + DELIM) * 8)
        if remove:
            self.pump.remove(self.port)
            assert self.pump.take_events() == [], "events of a removed port"

    def close(self) -> None:
        self.pump.close()
        self.pump.close()
        try:
            self.pump.take_events()
        except ValueError:
            pass
        else:
            raise AssertionError("take_events() on a closed pump")
        self.host.close()
        self.device.close()


def check_resources() -> None:
    """Every 64 inputs: descriptors and threads must not pile up (the pumps were closed)."""
    global _runs, _baseline
    _runs += 1
    if _runs % 64 != 1:
        return
    now = (len(os.listdir("/proc/self/fd")), len(os.listdir("/proc/self/task")))
    if _baseline is None:
        _baseline = now
    assert now[0] <= _baseline[0] + 8, f"descriptors leak: {now[0]} open, {_baseline[0]} at the start"
    assert now[1] <= _baseline[1] + 2, f"threads leak: {now[1]} running, {_baseline[1]} at the start"


def TestOneInput(data: bytes) -> None:
    check_resources()
    inp = Input(data)
    buffer_type = draw_type(inp)
    forward_all = inp.int_in(0, 3) == 3
    attach_now = inp.flag()
    ending = inp.int_in(0, 15)  # 13..15: the device hangs up; 11, 12: remove, close with frames in flight
    trace(f"type {buffer_type.__name__} {shape_of(buffer_type).entries} forward_all={forward_all}")
    with (
        buffer_type.open("fuzz-pump", shared=False) as buf,
        buffer_type.open("fuzz-pump-model", shared=False) as model,
        buffer_type.open("fuzz-pump-device", shared=False) as emitter,
    ):
        buf.serve()  # its producer, as the bridge is: only it changes validity
        run = Run(inp, buffer_type, (buf, model, emitter), forward_all)
        try:
            if attach_now:
                run.attach_buffer()
            for _ in range(MAX_OPS):
                if inp.exhausted or run.lost or run.written_total > MAX_STREAM:
                    break
                op = inp.int_in(0, 23)
                if op < STREAM_OPS:
                    trace(f"op {op}")
                    run.stream_op(op)
                    if len(run.expected) > MAX_PENDING_EVENTS or len(run.rx_expected) > MAX_PENDING_RX:
                        run.sync()
                else:
                    run.call_op(op)
            if ending in (11, 12) and not run.lost:
                run.abrupt_end(remove=ending == 11)
                return
            run.sync()
            run.compare_snapshots()
            if ending >= 13 and not run.lost:
                run.hang_up(ending - 13)
        finally:
            run.close()


def main() -> None:
    _harness.fuzz(_core, TestOneInput)


if __name__ == "__main__":
    main()
