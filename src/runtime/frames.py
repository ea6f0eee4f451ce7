"""Smart Device frames by hand: decoding a frame into plain data, building the messages of values.

What ``runtime msg`` shows and sends, with the library's own codec
(:mod:`runtime.messaging`), so that it is exactly what the runtime would do:

* :func:`parse_hex`: hex text (as a serial sniffer or the bridge's log shows
  it) into frames;
* :func:`decode_frame`: one COBS frame into plain data (type, fields,
  parameter names and values when the device type is known: a
  :class:`~runtime.messaging.TypeLayout`);
* :func:`raw_bytes`: a message before framing (type, length, payload, checksum);
* :func:`value_messages`: DEV_DATA or DEV_WRITE messages carrying values
  laid out in a :class:`~runtime.messaging.TypeLayout`'s memory, split where
  one payload would overflow.

Only the codec is imported up front (buffer types come in when a SUB_RES is
decoded), so that ``runtime msg`` starts fast.

>>> decode_frame(bytes.fromhex("041302060217"), None)["params"]
6
"""

from __future__ import annotations

import ctypes
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from .messaging import MAX_PAYLOAD, ErrorCode, Message, MessageError, MessageType, TypeLayout

__all__ = ["decode_frame", "parse_hex", "raw_bytes", "value_messages"]

_MAX_VALUES = MAX_PAYLOAD - 2
"""Value bytes one DEV_DATA/DEV_WRITE payload holds after its bitmap."""


def parse_hex(words: Sequence[str]) -> list[bytes]:
    """Turn hex words into frames: spaces, ``:`` and ``0x`` prefixes are ignored, ``00`` separates.

    >>> parse_hex(['04 13 02', '0602', '17', '00'])
    [b'\\x04\\x13\\x02\\x06\\x02\\x17']
    >>> parse_hex(['0x02100210', '00', '021002', '10'])
    [b'\\x02\\x10\\x02\\x10', b'\\x02\\x10\\x02\\x10']

    Raises:
        ValueError: Not hexadecimal, an odd number of digits, or no frame at all.
    """
    digits = "".join(re.sub(r"^0[xX]", "", part) for word in words for part in re.split(r"[\s:,]+", word))
    if not re.fullmatch(r"[0-9a-fA-F]*", digits):
        bad = re.search(r"[^0-9a-fA-F]", digits)
        raise ValueError(f"not hexadecimal: {bad.group() if bad else digits!r} in {' '.join(words)!r}")
    if len(digits) % 2:
        raise ValueError(f"odd number of hex digits ({len(digits)}): a byte is two digits")
    frames = [frame for frame in bytes.fromhex(digits).split(b"\0") if frame]
    if not frames:
        raise ValueError("no frame to decode (only 00 delimiters)")
    return frames


def raw_bytes(message: Message) -> bytes:
    """The message before framing: type, length, payload, checksum (XOR of the rest)."""
    head = bytes([int(message.type), len(message.payload)]) + message.payload
    checksum = 0
    for byte in head:
        checksum ^= byte
    return head + bytes([checksum])


def decode_frame(
    frame: bytes,
    layout: TypeLayout | None,
    lookup: Callable[[int], TypeLayout | None] | None = None,
) -> dict[str, Any]:
    """Decode one COBS frame into plain data: type, fields, names and values where known.

    Args:
        frame: The encoded bytes, without the delimiter.
        layout: The device type's layout (``--type``), or None.
        lookup: Finds a type's layout by ``device_id`` (for SUB_RES, which
            carries the device's UID) when no ``layout`` is given.

    Raises:
        MessageError: The frame does not decode, or its payload does not fit
            its type (or the device type's parameters).
    """
    message = Message.decode(frame)
    kind = MessageType(message.type)
    result: dict[str, Any] = {
        "frame": frame.hex(" "),
        "type": kind.name,
        "type_code": int(kind),
        "payload": message.payload.hex(" "),
    }
    if layout is not None:
        result["device_type"] = layout.buffer_type.type_name

    def bitmap(params: int, where: TypeLayout | None) -> None:
        result["params"] = params
        if where is not None:
            result["param_names"] = where.names(params)

    if kind is MessageType.SUB_REQ:
        params, interval = message.read_sub_req()
        bitmap(params, layout)
        result["interval_ms"] = interval
    elif kind is MessageType.SUB_RES:
        from .buffer import DeviceUID

        params, interval, (device_id, year, random) = message.read_sub_res()
        uid = int(DeviceUID(device_id, year, random))
        if layout is None and lookup is not None:
            layout = lookup(device_id)
            if layout is not None:
                result["device_type"] = layout.buffer_type.type_name
        bitmap(params, layout)
        result["interval_ms"] = interval
        result["uid"] = {
            "device_id": device_id,
            "year": year,
            "random": random,
            "uid": uid,
            "hex": f"{uid:#x}",
        }
    elif kind is MessageType.DEV_READ:
        bitmap(message.read_dev_read(), layout)
    elif kind in (MessageType.DEV_DATA, MessageType.DEV_WRITE):
        if layout is None:
            if len(message.payload) < 2:
                raise MessageError(
                    "payload too short for a parameter bitmap", error_code=ErrorCode.GENERIC_ERROR
                )
            bitmap(int.from_bytes(message.payload[:2], "little"), None)
            result["value_bytes"] = message.payload[2:].hex(" ")
        else:
            memory = layout.scratch()
            read = message.read_dev_data if kind is MessageType.DEV_DATA else message.read_dev_write
            params = read(layout.layout, memory)
            bitmap(params, layout)
            result["values"] = layout.values(params, memory)
    elif kind is MessageType.HB_REQ:
        result["heartbeat_id"] = message.read_hb_req()
    elif kind is MessageType.HB_RES:
        result["heartbeat_id"] = message.read_hb_res()
    elif kind is MessageType.ERROR:
        code = ErrorCode(message.read_error())
        result["error_code"] = code.name
        result["error_code_value"] = int(code)
    return result


def value_messages(
    kind: MessageType, layout: TypeLayout, memory: bytearray, params: Iterable[int]
) -> list[Message]:
    """DEV_DATA or DEV_WRITE messages (``kind``) carrying the values of ``params`` (IDs) held in ``memory``.

    Every value travels once, in ID order; a message is split where one
    payload would overflow (as the runtime does).

    Raises:
        MessageError: The core refused a message.
    """
    messages: list[Message] = []
    make = Message.make_dev_data if kind is MessageType.DEV_DATA else Message.make_dev_write
    bitmap, size = 0, 0
    for param_id in sorted(params):
        width = ctypes.sizeof(layout.by_id[param_id].platform_type)
        if bitmap and size + width > _MAX_VALUES:
            messages.append(make(bitmap, layout.layout, memory))
            bitmap, size = 0, 0
        bitmap |= 1 << param_id
        size += width
    messages.append(make(bitmap, layout.layout, memory))
    return messages
