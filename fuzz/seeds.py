#!/usr/bin/env python3
"""Write the committed seed corpus: fuzz/corpus/decode/, fuzz/corpus/update/ and fuzz/corpus/pump/.

    python3 fuzz/seeds.py

Seeds are small, readable starting points; libFuzzer mutates from them. The
decode seeds are COBS frames: the spec's worked examples, one message of every
type, the largest messages, and each kind of malformed frame. The update seeds
are written in fuzz_update.py's input format (see ``Writer`` below, the mirror
of _harness.Input): a catalog, then operations; they put the spec's example
device through its worked examples, and reach the deep paths on purpose
(values split over several messages, the exact packer, transactions, plain
buffers). The pump seeds are in fuzz_pump.py's format (``PumpWriter``): a
device, then frames and calls that reach each of the pump's paths (heartbeats,
DEV_DATA before and after attach, writes settled or not, stale values,
forward_all, over-long and split frames, the longest frame, a held lock, a
closed or invalid buffer, a full queue, an event flood, remove/add, hang-ups).
Re-run this after changing any format; stale seeds are harmless but fuzz less
well. Only stdlib: no build needed.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Self

from _harness import cobs_encode

CORPUS = Path(__file__).resolve().parent / "corpus"

# ---- the protocol --------------------------------------------------------------------------------

PING, SUB_REQ, SUB_RES, DEV_READ, DEV_WRITE, DEV_DATA, DEV_DISABLE, HB_REQ, HB_RES = range(0x10, 0x19)
ERROR = 0xFF


def raw(msg_type: int, payload: bytes) -> bytes:
    data = bytes([msg_type, len(payload)]) + payload
    checksum = 0
    for byte in data:
        checksum ^= byte
    return data + bytes([checksum])


def frame(msg_type: int, payload: bytes = b"") -> bytes:
    return cobs_encode(raw(msg_type, payload))


def decode_seeds() -> dict[str, bytes]:
    seeds = {
        # the spec's worked examples, byte for byte
        "spec-dev-data": bytes.fromhex("04 15 06 02 06 6d e7 fb bd dd"),
        "spec-dev-read": bytes.fromhex("04 13 02 06 02 17"),
        "spec-dev-write": bytes.fromhex("04 14 07 05 07 01 ef be ad de 35"),
        # one of each type
        "ping": frame(PING),
        "sub-req": frame(SUB_REQ, struct.pack("<HH", 0b111, 40)),
        "unsubscribe": frame(SUB_REQ, bytes(4)),
        "sub-res": frame(SUB_RES, struct.pack("<HHHBQ", 0x7, 100, 0x10, 3, 0xDEADBEEFC0DEF00D)),
        "dev-disable": frame(DEV_DISABLE),
        "hb-req": frame(HB_REQ, b"\x2a"),
        "hb-res": frame(HB_RES, b"\x2a"),
        "error-ok": frame(ERROR, b"\x00"),
        "error-bad-checksum": frame(ERROR, b"\xfe"),
        "error-unknown-code": frame(ERROR, b"\x42"),
        # the largest messages: 255 nonzero payload bytes (an 0xFF COBS block), and all zeros
        "dev-data-max-nonzero": frame(DEV_DATA, b"\xff\xff" + bytes(range(1, 254))),
        "dev-data-max-zeros": frame(DEV_DATA, bytes(255)),
        "dev-write-bitmap-only": frame(DEV_WRITE, b"\x00\x00"),
        # malformed frames, one per error
        "bad-checksum": bytes.fromhex("04 13 02 06 02 18"),
        "bad-cobs-zero": bytes.fromhex("04 13 00 06 02 17"),
        "bad-cobs-overrun": bytes.fromhex("09 13 02 06"),
        "length-mismatch": cobs_encode(b"\x13\x03\x06\x00\x16"),
        "unknown-type": frame(0x20, b"\x01"),
        "short": bytes.fromhex("02 10"),
        "too-long": b"\x01" * 261,
        "decodes-too-long": b"\x01" * 260,
    }
    return seeds


# ---- fuzz_update.py's input format ---------------------------------------------------------------

# Must match fuzz_update.py (BASES order, the op numbers of do_op, the choice lists).
BASES = [
    "bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float", "double",
    "char", "byte", "ubyte", "short", "ushort", "int", "uint", "long", "ulong", "longlong", "ulonglong",
    "longdouble", "size_t", "ssize_t", "wchar", "char_p", "bogus",
]  # fmt: skip
MESSAGE_TYPES = [PING, SUB_REQ, SUB_RES, DEV_READ, DEV_WRITE, DEV_DATA, DEV_DISABLE, HB_REQ, HB_RES, ERROR]
OP_UPDATE_ANY, OP_UPDATE_VALUES, OP_UPDATE_FRAME, OP_FACTORY = 0, 2, 5, 6
OP_SET, OP_WRITE, OP_GET, OP_READ, OP_EMIT_RW, OP_EMIT_DATA, OP_EMIT_SUB = 7, 8, 9, 10, 11, 12, 13
OP_TAKE, OP_TRANSACTION, OP_VALID, OP_EXTRAS, OP_CLOSE = 14, 15, 16, 17, 18
READABLE_OFF, WRITEABLE, UNSUBSCRIBED, HAS_ID = 1, 2, 4, 8


class Writer:
    """Writes the bytes that _harness.Input reads back as the given choices."""

    def __init__(self) -> None:
        self.out = bytearray()

    def uint(self, nbytes: int, value: int) -> Self:
        self.out += value.to_bytes(nbytes, "little")
        return self

    def int_in(self, low: int, high: int, value: int) -> Self:
        span = high - low + 1
        if span > 1:
            self.uint((span - 1).bit_length() + 7 >> 3, value - low)
        return self

    def pick(self, items: list[object], item: object) -> Self:
        return self.int_in(0, len(items) - 1, items.index(item))

    def flag(self, value: bool) -> Self:
        return self.uint(1, int(value))

    def take(self, data: bytes) -> Self:
        self.out += data
        return self

    # -- the catalog --
    def device(self, device_id: int, params: list[tuple[str, int]]) -> Self:
        """params: (type, flags) in ID order; types like 'uint8' or 'uint8[200]'."""
        self.int_in(0, 17, len(params)).uint(1, 0).uint(2, device_id)
        return self._params(params)

    def plain_buffer(self, params: list[tuple[str, int]]) -> Self:
        self.int_in(0, 17, len(params)).uint(1, 0x41)
        return self._params(params)

    def _params(self, params: list[tuple[str, int]]) -> Self:
        for ctype, flags in params:
            base, _, size = ctype.partition("[")
            self.pick(BASES, base)
            if size:
                self.uint(1, 176).int_in(1, 256, int(size.rstrip("]")))
            else:
                self.uint(1, 0)
            self.uint(1, flags)
        return self

    # -- operations --
    def op(self, number: int) -> Self:
        return self.int_in(0, 19, number)

    def update_frame(self, data: bytes) -> Self:
        return self.op(OP_UPDATE_FRAME).int_in(0, 262, len(data)).take(data)

    def update_values(self, write: bool, params: int, values: bytes) -> Self:
        return self.op(OP_UPDATE_VALUES).flag(write).uint(2, params).int_in(0, 3, 2).take(values)

    def sub_req(self, params: int, interval: int) -> Self:
        return self.op(OP_FACTORY).int_in(0, 8, 0).uint(2, params).uint(2, interval)

    def sub_res(self, params: int, interval: int, device_id: int, year: int, random: int) -> Self:
        self.op(OP_FACTORY).int_in(0, 8, 1).uint(2, params).uint(2, interval).uint(2, device_id)
        return self.uint(1, year).uint(8, random)

    def dev_read(self, params: int) -> Self:
        return self.op(OP_FACTORY).int_in(0, 8, 2).uint(2, params)

    def emit(self, which: int, feed_back: bool = True) -> Self:
        return self.op(which).flag(feed_back)

    def take_values(self, which: int) -> Self:
        """0 get_update, 1 get_write, 2 get_read, 3 snapshot."""
        return self.op(OP_TAKE).int_in(0, 3, which)

    def set_raw(self, op: int, name_index: int, names: int, size: int, fill: int) -> Self:
        """set/write an array parameter to `size` bytes of `fill` (a value of its exact type)."""
        self.op(op).int_in(0, 2 * names + 4, name_index).int_in(0, 9, 3)
        return self.take(bytes([fill]) * size)


def spec_device() -> Writer:
    # flag bool id 0 (write-only), duty_cycle double id 1 (read-only), id uint32 id 2 (read/write)
    return Writer().device(0x100, [("bool", READABLE_OFF | WRITEABLE), ("double", 0), ("uint32", WRITEABLE)])


def update_seeds() -> dict[str, bytes]:
    seeds: dict[str, Writer] = {}
    dev_data, dev_read, dev_write = (
        decode_seeds()[f"spec-{k}"] for k in ("dev-data", "dev-read", "dev-write")
    )
    seeds["spec-device"] = spec_device()
    seeds["spec-worked-examples"] = (
        spec_device().update_frame(dev_data).update_frame(dev_read).update_frame(dev_write)
        .take_values(0).take_values(1).take_values(2).emit(OP_EMIT_DATA).emit(OP_EMIT_RW)
    )  # fmt: skip
    seeds["spec-subscription"] = (
        spec_device().sub_req(0b111, 10).emit(OP_EMIT_SUB).sub_res(0b110, 100, 0x100, 5, 0x1234)
        .dev_read(0b111).emit(OP_EMIT_RW).op(OP_EXTRAS).int_in(0, 3, 1)
    )  # fmt: skip
    seeds["spec-values"] = (
        spec_device().update_values(False, 0b110, struct.pack("<fI", -0.123, 7))
        .update_values(True, 0b101, b"\x01" + struct.pack("<I", 0xDEADBEEF))
        .update_values(False, 0b1000, b"").emit(OP_EMIT_DATA).emit(OP_EMIT_RW).take_values(3)
    )  # fmt: skip
    seeds["spec-transaction"] = (
        spec_device().op(OP_TRANSACTION).int_in(0, 4, 2).update_frame(dev_data)
        .op(OP_TRANSACTION).int_in(0, 4, 1).update_frame(dev_write).flag(True).flag(False)
        .op(OP_VALID).flag(False).update_frame(dev_data).op(OP_VALID).flag(True).op(OP_CLOSE).int_in(0, 7, 0)
        .update_frame(dev_read)
    )  # fmt: skip
    # Values that need several messages: 650 bytes, subscribed, updated and written.
    widths = [200, 120, 100, 90, 60, 40, 30, 10]
    wide = (
        Writer()
        .device(7, [(f"uint8[{w}]", WRITEABLE) for w in widths])
        .sub_req(0xFFFF, 100)
        .emit(OP_EMIT_SUB)
    )
    for i, w in enumerate(widths):
        wide.set_raw(OP_SET, i, len(widths), w, i + 1)
    wide.emit(OP_EMIT_DATA)
    for i, w in enumerate(widths[:4]):
        wide.set_raw(OP_WRITE, i, len(widths), w, 0x80 + i)
    seeds["split-values"] = wide.emit(OP_EMIT_RW)
    # First-fit decreasing needs 4 messages for these, 3 suffice: the exact packer runs.
    widths = [78, 134, 101, 133, 105, 46, 119, 33]
    seeds["exact-packing"] = (
        Writer().device(8, [(f"uint8[{w}]", 0) for w in widths]).sub_req(0xFFFF, 40).emit(OP_EMIT_SUB)
    )
    # One parameter of every scalar type; each set, then read back and emitted.
    scalars = ["bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float",
               "double", "char", "longdouble", "wchar", "size_t", "short"]  # fmt: skip
    consumed = {"bool": 1, "int8": 1, "uint8": 1, "int16": 2, "uint16": 2, "short": 2, "int32": 4,
                "uint32": 4, "float": 4, "double": 4, "int64": 8, "uint64": 8, "size_t": 8, "char": 1,
                "longdouble": 16, "wchar": 4}  # fmt: skip
    every = Writer().device(9, [(t, WRITEABLE) for t in scalars])
    for i, t in enumerate(scalars):
        every.op(OP_SET).int_in(0, 2 * len(scalars) + 4, i).int_in(0, 9, 1).take(b"\x41" * consumed[t])
    seeds["every-scalar"] = every.take_values(0).take_values(3).emit(OP_EMIT_DATA)
    # A plain Buffer: device operations are refused.
    seeds["plain-buffer"] = (
        Writer().plain_buffer([("int32", WRITEABLE), ("uint8[4]", 0)]).update_frame(dev_data).op(OP_EMIT_DATA)
        .op(OP_SET).int_in(0, 8, 0).int_in(0, 9, 1).uint(4, 5).take_values(3)
    )  # fmt: skip
    # close() inside a transaction must end it: a lock left held on memory that is then unmapped
    # corrupts the thread's robust-mutex list (found by this fuzzer; the next input's lock crashed).
    seeds["close-in-transaction"] = (
        spec_device().op(OP_TRANSACTION).int_in(0, 4, 2).update_frame(dev_data).op(OP_CLOSE).int_in(0, 7, 0)
        .flag(False).update_frame(dev_read).take_values(3)
    )  # fmt: skip
    return {name: bytes(writer.out) for name, writer in seeds.items()}


# ---- fuzz_pump.py's input format -----------------------------------------------------------------

# Must match fuzz_pump.py (CATALOG order, BASES, the op numbers of Run.stream_op and Run.call_op).
PUMP_TYPES = ["limit-switch", "encoder", "rfid", "servo-motor", "battery", "koala-bear"]
PUMP_BASES = [
    "bool",
    "uint8",
    "int8",
    "int16",
    "uint16",
    "int32",
    "uint32",
    "float",
    "double",
    "int64",
    "uint64",
]
P_RAW, P_DEV_DATA, P_EMITTED, P_MISFIT, P_HB_REQ, P_HB_RES, P_OTHER, P_MUTATED = 0, 2, 5, 6, 7, 8, 9, 10
P_LONG, P_PIECE, P_BURST, P_DELIMS = 11, 12, 13, 14
P_SYNC, P_ATTACH, P_WATCH, P_SETTLED, P_BUFFER, P_TXN, P_SEND, P_READD, P_FLOOD = range(15, 24)
LONG_LENGTHS = [259, 260, 261, 262, 300, 520, 521, 700, 4096, 4097]
PALETTE, WRITTEN, STALE, STAGE, RANDOM = 1, 3, 4, 5, 7  # value modes (0..2: palette entries)


class PumpWriter(Writer):
    """fuzz_pump.py's input: the device type, forward_all, attach at once, the ending (13: the device hangs
    up, 14, 15: stops reading; 11, 12: remove the port, close the pump with frames in flight), the value
    palette; then operations."""

    def __init__(self, device: str | None = "servo-motor", *, forward_all: bool = False, attach: bool = True,
                 ending: int = 0, palette: tuple[int, int] = (0x3F, 0xBF)) -> None:  # fmt: skip
        super().__init__()
        if device is not None:
            self.int_in(0, 3, 0).pick(PUMP_TYPES, device)  # type: ignore[arg-type]
            self.header(forward_all, attach, ending, palette)

    def header(self, forward_all: bool, attach: bool, ending: int, palette: tuple[int, int]) -> Self:
        self.int_in(0, 3, 3 if forward_all else 0).flag(attach).int_in(0, 15, ending)
        return self.uint(1, palette[0]).uint(1, palette[1])

    def random_device(self, params: list[str], device_id: int = 0x99) -> Self:
        """A random catalog: types like 'float', 'int16[4]' (1..32 values) or 'uint8[253]' (200..253)."""
        self.int_in(0, 3, 2).int_in(1, 16, len(params))
        for ctype in params:
            base, _, size = ctype.partition("[")
            self.pick(PUMP_BASES, base)  # type: ignore[arg-type]
            if not size:
                self.uint(1, 1)
            elif int(size[:-1]) >= 200:
                self.uint(1, 0x80).int_in(200, 253, int(size[:-1]))
            else:
                self.uint(1, 0).int_in(1, 32, int(size[:-1]))
        return self.uint(2, device_id)

    def pop(self, number: int) -> Self:
        return self.int_in(0, 23, number)

    def values(self, params: int, values: list[int | bytes]) -> Self:
        """A payload that fits: the bitmap, then each value: a mode (PALETTE, 2, WRITTEN...) or its bytes."""
        self.uint(2, params)
        for value in values:
            if isinstance(value, bytes):
                self.int_in(0, 7, RANDOM).take(value)
            else:
                self.int_in(0, 7, value)
        return self

    def dev_data(self, params: int, values: list[int | bytes]) -> Self:
        return self.pop(P_DEV_DATA).values(params, values)

    def hb(self, request: bool, heartbeat_id: int) -> Self:
        return self.pop(P_HB_REQ if request else P_HB_RES).uint(1, heartbeat_id)

    def long(self, length: int, fill: int, delimited: bool) -> Self:
        return self.pop(P_LONG).pick(LONG_LENGTHS, length).int_in(1, 255, fill).int_in(0, 1, int(delimited))  # type: ignore[arg-type]

    def watch(self, params: int, values: list[int | bytes], ids: int) -> Self:
        return self.pop(P_WATCH).int_in(0, 7, 0).values(params, values).flag(True).uint(2, ids)

    def settled(self, forget: int = 0) -> Self:
        return self.pop(P_SETTLED).flag(True).uint(2, forget)

    def flood(self, count: int, frame: int, hang_up: bool, heartbeat_id: int) -> Self:
        """`count` (1000..1124) copies of a frame (0 PING, 1 ERROR, 2 bad checksum), then an HB_REQ."""
        self.call(P_FLOOD, 3, 3).int_in(1000, 1124, count).int_in(0, 2, frame)
        return self.int_in(0, 3, 3 if hang_up else 0).uint(1, heartbeat_id)

    def call(self, op: int, choice: int, high: int) -> Self:
        """A call op and its first choice (attach: 0 plain attach; buffer: 0 update, 5 valid, 10 close...)."""
        return self.pop(op).int_in(0, high, choice)


def pump_seeds() -> dict[str, PumpWriter]:
    half, quarter = struct.pack("<f", 0.5), struct.pack("<f", -0.25)
    seeds = {
        "servo-data-heartbeats": PumpWriter().dev_data(0b11, [half, quarter]).hb(True, 42).hb(False, 7),
        "attach-midway": PumpWriter(attach=False)
        .dev_data(0b01, [half]).pop(P_SYNC).call(P_ATTACH, 0, 15).dev_data(0b10, [PALETTE])
        .call(P_ATTACH, 0, 15),  # attached already: refused
        # a write, a report of the old values (not settled), then of the value written, then of another
        "watch-settle": PumpWriter()
        .dev_data(0b11, [0, 0]).watch(0b11, [PALETTE, 2], 0b11).dev_data(0b11, [STALE, STALE]).settled()
        .dev_data(0b01, [WRITTEN]).settled().dev_data(0b10, [b"\x01\x02\x03\x04"]).settled(0b10),
        "forward-all": PumpWriter(forward_all=True)
        .dev_data(0b11, [PALETTE, 2]).hb(True, 1).hb(False, 2).call(P_OTHER, 0, 12),
        # over-long runs (ended, then running into a DEV_DATA), half a frame written, a burst
        "overflow-split": PumpWriter()
        .long(261, 0x41, True).long(260, 0x41, False).dev_data(0b11, [PALETTE, PALETTE]).long(260, 0x42, True)
        .dev_data(0b11, [PALETTE, 2]).pop(P_PIECE).uint(1, 100).hb(True, 9)
        .pop(P_BURST).flag(True).int_in(0, 2, 1).uint(1, 3).int_in(2, 60, 40),
        "transaction-stall": PumpWriter()
        .call(P_TXN, 3, 6).dev_data(0b11, [PALETTE, 2]).hb(True, 5).dev_data(0b01, [0]).pop(P_SYNC),
        "send-readd-hang-up": PumpWriter(ending=13)
        .call(P_SEND, 0, 24).int_in(0, 64, 4).take(b"ping").hb(True, 3).call(P_READD, 3, 3)
        .dev_data(0b01, [PALETTE]).hb(True, 4),
        # the device's end does not read: send() and the answers queue in the pump, then are dropped
        "outbox-full": PumpWriter(forward_all=True)
        .call(P_SEND, 24, 24).uint(1, 0x55).hb(True, 1).hb(True, 2).pop(P_SYNC)
        .call(P_SEND, 20, 24).uint(1, 0x66).call(P_SEND, 20, 24).uint(1, 0x77).hb(True, 3),
        # more events than the pump keeps for Python
        "event-flood": PumpWriter(forward_all=True).flood(1100, 1, False, 0x21).hb(True, 4),
        "event-flood-hang-up": PumpWriter().flood(1030, 0, True, 0x22),
        # frames in flight when the port is removed, the buffer attached
        "abrupt-remove": PumpWriter(ending=11)
        .dev_data(0b11, [PALETTE, 2]).hb(True, 1).pop(P_OTHER).int_in(0, 12, 0).long(700, 0x33, False),
        "abrupt-close": PumpWriter(ending=12, forward_all=True).dev_data(0b11, [PALETTE, 2]).hb(True, 1),
        # the device stops reading: send() fails, then (forward_all) an answer to a heartbeat fails
        "stops-reading-send": PumpWriter(ending=14).hb(True, 1).call(P_READD, 2, 3).int_in(1, 4, 4)
        .uint(1, 8).uint(1, 0).uint(1, 9).uint(1, 15),
        "stops-reading-heartbeat": PumpWriter(ending=15, forward_all=True).dev_data(0b01, [PALETTE]),
        # five writes of one parameter: the oldest replaced value is forgotten (settles), the others not
        "stale-values": PumpWriter()
        .dev_data(0b01, [0]).watch(0b01, [b"\x01\x00\x00\x00"], 1).watch(0b01, [b"\x02\x00\x00\x00"], 1)
        .watch(0b01, [b"\x03\x00\x00\x00"], 1).watch(0b01, [b"\x04\x00\x00\x00"], 1)
        .watch(0b01, [b"\x05\x00\x00\x00"], 1).dev_data(0b01, [b"\x02\x00\x00\x00"]).settled()
        .dev_data(0b01, [0]).settled(),
        "closed-buffer": PumpWriter()
        .dev_data(0b01, [PALETTE]).call(P_BUFFER, 10, 11).dev_data(0b11, [2, 2]).call(P_ATTACH, 0, 15),
        "invalid-buffer": PumpWriter()
        .call(P_BUFFER, 5, 11).flag(False).dev_data(0b01, [PALETTE]).call(P_BUFFER, 5, 11).flag(True)
        .dev_data(0b10, [2]).call(P_BUFFER, 0, 11).values(0b01, [2]),
        # 16 parameters; a report of the value before the write (STAGE) does not settle it
        "koala-16-params": PumpWriter("koala-bear")
        .dev_data(0xFFFF, [PALETTE] * 16).watch(0x8001, [2, 2], 0xFFFF).dev_data(0x8001, [WRITTEN, STAGE])
        .settled(0xFFFF),
        # a 253-byte array: its DEV_DATA is a 260-byte frame, the longest there is
        "longest-frame": PumpWriter(None).random_device(["uint8[253]", "float"])
        .header(False, True, 0, (0x55, 0xAA)).dev_data(0b01, [PALETTE]).dev_data(0b10, [2]),
    }  # fmt: skip
    return seeds


def write(folder: Path, seeds: dict[str, bytes]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("seed-*"):
        old.unlink()
    for name, data in seeds.items():
        (folder / f"seed-{name}").write_bytes(data)
    print(f"{folder}: {len(seeds)} seeds")


if __name__ == "__main__":
    write(CORPUS / "decode", decode_seeds())
    write(CORPUS / "update", update_seeds())
    write(CORPUS / "pump", {name: bytes(writer.out) for name, writer in pump_seeds().items()})
