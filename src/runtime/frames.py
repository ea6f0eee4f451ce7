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
  one payload would overflow;
* :func:`encode`: the message(s) of one kind from its fields as a person
  types them (``runtime msg encode``); :class:`FrameError` when they do not
  make one.

Only the codec is imported up front (buffer types and value parsing come in
when a SUB_RES or values need them), so that ``runtime msg`` starts fast.

>>> decode_frame(bytes.fromhex("041302060217"), None)["params"]
6
>>> [message.encode().hex(" ") for message in encode("hb-req", ["7"])]
['05 17 01 07 11']
"""

from __future__ import annotations

import ctypes
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from .exception import RuntimeBaseException, did_you_mean
from .messaging import MAX_PAYLOAD, ErrorCode, Message, MessageError, MessageType, TypeLayout, parse_uid

__all__ = ["KINDS", "FrameError", "decode_frame", "encode", "parse_hex", "raw_bytes", "value_messages"]

KINDS: dict[str, MessageType] = {
    "ping": MessageType.PING,
    "sub-req": MessageType.SUB_REQ,
    "sub-res": MessageType.SUB_RES,
    "dev-read": MessageType.DEV_READ,
    "dev-write": MessageType.DEV_WRITE,
    "dev-data": MessageType.DEV_DATA,
    "dev-disable": MessageType.DEV_DISABLE,
    "hb-req": MessageType.HB_REQ,
    "hb-res": MessageType.HB_RES,
    "error": MessageType.ERROR,
}
"""The message kinds of :func:`encode`: the message types spelled as ``runtime msg encode`` spells them."""

_MAX_VALUES = MAX_PAYLOAD - 2
"""Value bytes one DEV_DATA/DEV_WRITE payload holds after its bitmap."""


class FrameError(RuntimeBaseException, ValueError):
    """What was given does not make a frame: bad hex, an unknown name, a malformed number, a missing field.

    Raised by :func:`parse_hex` and :func:`encode` before the core is asked
    for anything (a message the core refuses raises
    :class:`~runtime.messaging.MessageError`). The message is the one
    ``runtime msg`` prints: it names the arguments as the command spells them
    (``--params`` for ``params``, ``--type TYPE`` for ``layout``, ...).
    """

    def __str__(self) -> str:
        return self.message  # a whole sentence; the context is data for callers


def parse_hex(words: Sequence[str]) -> list[bytes]:
    """Turn hex words into frames: spaces, ``:`` and ``0x`` prefixes are ignored, ``00`` separates.

    >>> parse_hex(['04 13 02', '0602', '17', '00'])
    [b'\\x04\\x13\\x02\\x06\\x02\\x17']
    >>> parse_hex(['0x02100210', '00', '021002', '10'])
    [b'\\x02\\x10\\x02\\x10', b'\\x02\\x10\\x02\\x10']

    Raises:
        FrameError: (a ValueError) Not hexadecimal, an odd number of digits, or no frame at all.
    """
    digits = "".join(re.sub(r"^0[xX]", "", part) for word in words for part in re.split(r"[\s:,]+", word))
    if not re.fullmatch(r"[0-9a-fA-F]*", digits):
        bad = re.search(r"[^0-9a-fA-F]", digits)
        raise FrameError(f"not hexadecimal: {bad.group() if bad else digits!r} in {' '.join(words)!r}")
    if len(digits) % 2:
        raise FrameError(f"odd number of hex digits ({len(digits)}): a byte is two digits")
    frames = [frame for frame in bytes.fromhex(digits).split(b"\0") if frame]
    if not frames:
        raise FrameError("no frame to decode (only 00 delimiters)")
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


# ---- encoding what a person types -------------------------------------------------------------------


def encode(
    kind: MessageType | str,
    fields: Sequence[str] = (),
    *,
    layout: TypeLayout | None = None,
    params: int | str | None = None,
    interval: int | str | None = None,
    uid: int | str | None = None,
) -> list[Message]:
    """The message(s) of one ``kind``, built from its fields as ``runtime msg encode`` builds them.

    Numbers may be given as ints or as text (decimal or ``0x`` hex, as typed).

    Args:
        kind: The message type, or its spelling in :data:`KINDS` (``"sub-req"``).
        fields: The kind's fields as text: parameter names (sub-req, sub-res,
            dev-read); ``NAME=VALUE`` (dev-write, dev-data: booleans
            true/false, arrays ``a,b,c``); a heartbeat id 0..255 (hb-req,
            hb-res); an error code's name or number (error); none (ping,
            dev-disable).
        layout: The device type's layout: it names the parameters, lays out
            the values, and gives the default interval and a SUB_RES's device_id.
        params: A parameter bitmap (sub-req, sub-res, dev-read), with or
            instead of names; with neither, every readable parameter of ``layout``.
        interval: The subscription interval in ms (sub-req, sub-res); 0
            unsubscribes. Default: the type's ``sub_interval``, else 40.
        uid: The device's 88-bit UID (sub-res), an int or text as
            :func:`~runtime.messaging.parse_uid` reads it. Default: the type's
            device_id, year and random 0.

    Returns:
        One message; several DEV_WRITE or DEV_DATA when the values do not fit one payload.

    Raises:
        FrameError: The fields or arguments do not make a message of this kind
            (``runtime msg`` reports it as a usage error, exit status 2).
        MessageError: The core refused the message.
    """
    kind, spelled = _kind(kind)
    if isinstance(fields, str):  # one field, not its characters
        fields = [fields]
    if uid is not None and kind is not MessageType.SUB_RES:
        raise FrameError("--uid applies to sub-res only", kind=spelled)
    if interval is not None and kind not in (MessageType.SUB_REQ, MessageType.SUB_RES):
        raise FrameError("--interval applies to sub-req and sub-res only", kind=spelled)
    if params is not None and kind not in (MessageType.SUB_REQ, MessageType.SUB_RES, MessageType.DEV_READ):
        raise FrameError("--params applies to sub-req, sub-res and dev-read only", kind=spelled)
    if kind in (MessageType.DEV_WRITE, MessageType.DEV_DATA):
        return _values_messages(kind, spelled, fields, layout)
    if kind in (MessageType.PING, MessageType.DEV_DISABLE):
        if fields:
            raise FrameError(f"{spelled} takes no fields, got {' '.join(fields)!r}", kind=spelled)
        return [Message.make_ping() if kind is MessageType.PING else Message.make_dev_disable()]
    if kind in (MessageType.HB_REQ, MessageType.HB_RES, MessageType.ERROR):
        if len(fields) != 1:
            what = "an error code" if kind is MessageType.ERROR else "a heartbeat id (0..255)"
            raise FrameError(f"{spelled} takes one field, {what}", kind=spelled)
        if kind is MessageType.ERROR:
            return [Message.make_error(int(_error_code(fields[0])))]
        heartbeat = _number(fields[0], "the heartbeat id", 0xFF)
        make = Message.make_hb_req if kind is MessageType.HB_REQ else Message.make_hb_res
        return [make(heartbeat)]
    bitmap = _bitmap(fields, params, layout)
    if kind is MessageType.DEV_READ:
        return [Message.make_dev_read(bitmap)]
    if kind is MessageType.SUB_REQ:
        return [Message.make_sub_req(bitmap, _interval(interval, layout))]
    from .buffer import DeviceUID  # SUB_RES: with the buffer types, not for `runtime msg encode ping`

    parts = DeviceUID.from_int(_uid(uid, layout))
    return [
        Message.make_sub_res(bitmap, _interval(interval, layout), parts.device_id, parts.year, parts.random)
    ]


def _kind(kind: MessageType | str) -> tuple[MessageType, str]:
    """The message type and its spelling in :data:`KINDS`."""
    if isinstance(kind, MessageType):
        return kind, next(spelled for spelled, value in KINDS.items() if value is kind)
    if kind not in KINDS:
        raise FrameError(f"unknown kind {kind!r}{did_you_mean(kind, KINDS)}; kinds: {', '.join(KINDS)}")
    return KINDS[kind], kind


def _number(value: int | str, what: str, limit: int) -> int:
    """An integer in ``0..limit``, from an int or text (decimal or 0x hex)."""
    if isinstance(value, str):
        try:
            number = int(value, 0)
        except ValueError:
            raise FrameError(f"{what} must be an integer (decimal or 0x hex), not {value!r}") from None
    else:
        number = int(value)
    if not 0 <= number <= limit:
        raise FrameError(f"{what} must be in 0..{limit} ({limit:#x}), not {value}")
    return number


def _bitmap(names: Sequence[str], params: int | str | None, layout: TypeLayout | None) -> int:
    """The parameter bitmap from ``params`` and/or parameter names (which need ``layout``)."""
    bitmap = _number(params, "--params", 0xFFFF) if params is not None else 0
    if names and layout is None:
        raise FrameError("parameter names need --type TYPE (or give --params BITMAP)")
    if layout is not None:
        known = layout.buffer_type.params
        for name in names:
            if name not in known:
                hint = did_you_mean(name, known)
                raise FrameError(
                    f"{layout.buffer_type.type_name} has no parameter {name!r}{hint}", param=name
                )
            if not known[name].readable:
                raise FrameError(f"parameter {name!r} is not readable", param=name)
            bitmap |= 1 << known[name].id
    if params is None and not names:
        if layout is None:
            raise FrameError("give --params BITMAP, or --type TYPE and parameter names")
        bitmap = sum(1 << param.id for param in layout.buffer_type.params.values() if param.readable)
    return bitmap


def _interval(interval: int | str | None, layout: TypeLayout | None) -> int:
    if interval is not None:
        return _number(interval, "--interval", 0xFFFF)
    if layout is not None:
        return round(layout.buffer_type.sub_interval * 1000)
    return 40


def _uid(uid: int | str | None, layout: TypeLayout | None) -> int:
    """A SUB_RES's UID: given (and checked against the type's device_id), or the type's."""
    if uid is None:
        if layout is None:
            raise FrameError("sub-res needs --uid UID, or --type TYPE")
        return layout.buffer_type.device_id << 72
    if isinstance(uid, str):
        try:
            number = parse_uid(uid)
        except ValueError as exc:
            raise FrameError(f"--uid: {exc}") from None
    else:
        number = int(uid)
    if number < 0:
        raise FrameError(f"--uid: a UID is not negative, not {uid}")
    if number >= 1 << 88:
        raise FrameError(f"--uid: a UID has 88 bits, {uid} has {number.bit_length()}")
    if layout is not None and number >> 72 != layout.buffer_type.device_id:
        raise FrameError(
            f"UID {number:#x} has device_id {number >> 72}, but {layout.buffer_type.type_name} has "
            f"{layout.buffer_type.device_id}"
        )
    return number


def _error_code(text: str) -> ErrorCode:
    name = text.strip().upper().replace("-", "_")
    if name in ErrorCode.__members__:
        return ErrorCode[name]
    try:
        return ErrorCode(int(text, 0))
    except ValueError:
        names = ", ".join(code.name for code in ErrorCode)
        raise FrameError(f"unknown error code {text!r}; known codes: {names}") from None


def _values_messages(
    kind: MessageType, spelled: str, fields: Sequence[str], layout: TypeLayout | None
) -> list[Message]:
    """DEV_WRITE or DEV_DATA messages of ``NAME=VALUE`` fields, parsed and checked by runtime.values."""
    from .values import WriteRefused, parse_text, to_wire  # with the buffer types: not for `encode ping`

    if layout is None:
        raise FrameError(f"{spelled} needs --type TYPE to lay out the values", kind=spelled)
    if not fields:
        first = next(iter(layout.buffer_type.params), None)
        example = f"{first}=1" if first is not None else "NAME=VALUE"
        raise FrameError(f"give the values to send as NAME=VALUE (e.g. {example})", kind=spelled)
    known = layout.buffer_type.params
    memory = layout.scratch()
    chosen: set[int] = set()
    for field in fields:
        name, sep, text = field.partition("=")
        if not sep:
            raise FrameError(f"give values as NAME=VALUE, not {field!r}")
        if name not in known:
            hint = did_you_mean(name, known)
            raise FrameError(f"{layout.buffer_type.type_name} has no parameter {name!r}{hint}", param=name)
        param = known[name]
        try:  # the one write policy: refused (the bounds said), never clamped
            data = to_wire(param, parse_text(param, text, only_writeable=kind is MessageType.DEV_WRITE))
        except WriteRefused as exc:
            raise FrameError(exc.message, param=name) from exc
        offset = layout.offsets[param.id]
        memory[offset : offset + len(data)] = data
        chosen.add(param.id)
    return value_messages(kind, layout, memory, chosen)
