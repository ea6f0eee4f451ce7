"""The Smart Device wire protocol, byte for byte.

A :class:`Message` is a type, a payload of up to 255 bytes and a checksum; on
the serial link each message travels COBS-encoded and frames are separated by
one ``0x00``. Encoding, decoding and the value copies of DEV_DATA / DEV_WRITE
run in the compiled core.

Parameter values are never converted one by one in Python: a
:class:`ParamLayout` says where each parameter's bytes live in a block of
memory (``(offset, width)`` per parameter ID), and :func:`make_dev_data` /
:meth:`Message.read_dev_data` copy the flagged values between the message and
that memory in one call.

>>> msg = make_dev_read(0b110)
>>> msg.encode().hex(' ')
'04 13 02 06 02 17'
>>> Message.decode(bytes.fromhex('04 13 02 06 02 17')).read_dev_read()
6
"""

import ctypes
import enum
import re
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

from . import _core

if TYPE_CHECKING:
    from .buffer import DeviceBuffer, Parameter

__all__ = [
    "ALL_PARAMS",
    "DELIM",
    "MAX_ENCODING_SIZE",
    "MAX_PARAMS",
    "MAX_PAYLOAD",
    "NO_PARAMS",
    "UID_FORMS",
    "ErrorCode",
    "FrameSplitter",
    "Message",
    "MessageError",
    "MessageType",
    "ParamLayout",
    "TypeLayout",
    "closest_uids",
    "make_dev_data",
    "make_dev_disable",
    "make_dev_read",
    "make_dev_write",
    "make_error",
    "make_hb_req",
    "make_hb_res",
    "make_ping",
    "make_sub_req",
    "make_sub_res",
    "make_unsubscribe",
    "parse_uid",
    "uid_device_id",
    "uid_digits_apart",
]

MAX_PARAMS: int = _core.MAX_PARAMS
"""Parameters a Smart Device type may have (IDs 0..15)."""
MAX_PAYLOAD: int = _core.MAX_PAYLOAD
"""Largest payload of one message, in bytes."""
MAX_ENCODING_SIZE: int = _core.MAX_ENCODING_SIZE
"""Largest COBS-encoded message, in bytes, without the delimiter."""
DELIM = b"\x00"
"""The frame delimiter on the serial stream."""
NO_PARAMS = 0
"""The empty parameter bitmap."""
ALL_PARAMS: int = _core.ALL_PARAMS
"""The bitmap with every parameter ID set."""


class MessageType(enum.IntEnum):
    """The first byte of every message."""

    PING = 0x10
    SUB_REQ = 0x11
    SUB_RES = 0x12
    DEV_READ = 0x13
    DEV_WRITE = 0x14
    DEV_DATA = 0x15
    DEV_DISABLE = 0x16
    HB_REQ = 0x17
    HB_RES = 0x18
    ERROR = 0xFF


class ErrorCode(enum.IntEnum):
    """The payload of an ERROR message, and the code a decoding failure maps to."""

    OK = 0x00
    BACKOFF = 0xFA
    INVALID_TYPE = 0xFB
    BUFFER_OVERFLOW = 0xFC
    UNEXPECTED_DELIMITER = 0xFD
    BAD_CHECKSUM = 0xFE
    GENERIC_ERROR = 0xFF


MessageError = _core.MessageError
"""A message could not be decoded, built or read (made by the compiled core, which raises it).

``context['error_code']`` holds the :class:`ErrorCode` to answer the peer with, where the
failure has one; the ``error_code`` property gives it as an :class:`ErrorCode`
(GENERIC_ERROR when none).
"""

Message = _core.Message
ParamLayout = _core.ParamLayout

make_ping = Message.make_ping
make_sub_req = Message.make_sub_req
make_sub_res = Message.make_sub_res
make_dev_read = Message.make_dev_read
make_dev_write = Message.make_dev_write
make_dev_data = Message.make_dev_data
make_dev_disable = Message.make_dev_disable
make_hb_req = Message.make_hb_req
make_hb_res = Message.make_hb_res
make_error = Message.make_error
make_unsubscribe = Message.make_unsubscribe


class FrameSplitter:
    """Cut a serial byte stream into frames at each ``0x00`` delimiter.

    Feed it chunks as they arrive; it returns the complete frames (without
    delimiters, empty frames skipped) and keeps the unfinished tail. A tail that
    grows past ``max_frame`` bytes cannot be a valid frame: it is dropped, and
    counted in :attr:`overflows`, until the next delimiter resynchronises the
    stream, so memory stays bounded on a stream that never sends one.

    >>> splitter = FrameSplitter()
    >>> splitter.feed(b'\\x01\\x02\\x00\\x03')
    [b'\\x01\\x02']
    >>> splitter.feed(b'\\x04\\x00')
    [b'\\x03\\x04']
    """

    def __init__(self, max_frame: int = MAX_ENCODING_SIZE) -> None:
        self.max_frame = max_frame
        self.overflows = 0
        """Frames dropped for being longer than ``max_frame``."""
        self._tail = bytearray()
        self._discarding = False

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Add received bytes; return the frames they complete."""
        pieces = bytes(data).split(DELIM)
        frames: list[bytes] = []
        for index, piece in enumerate(pieces):
            last = index == len(pieces) - 1
            if self._discarding:
                if not last:
                    self._discarding = False  # the delimiter ends the oversize frame
                continue
            if len(self._tail) + len(piece) > self.max_frame:
                self._tail.clear()
                self.overflows += 1
                self._discarding = last
                continue
            if last:
                self._tail += piece
            elif self._tail:
                self._tail += piece
                frames.append(bytes(self._tail))
                self._tail.clear()
            elif piece:
                frames.append(piece)
        return frames

    def reset(self) -> None:
        """Forget any partial frame (after a reconnect, say)."""
        self._tail.clear()
        self._discarding = False

    @property
    def pending(self) -> int:
        """Bytes held of a frame that is not complete yet."""
        return len(self._tail)


def iter_params(params: int) -> Iterator[int]:
    """Yield the parameter IDs set in a bitmap, in ascending order."""
    for index in range(MAX_PARAMS):
        if params & (1 << index):
            yield index


# ---- a device type's parameters in a block of memory ----------------------------------------------


class TypeLayout(NamedTuple):
    """Where each parameter of a device type lives in a scratch block of memory.

    The parameters are packed one after another in ID order
    (:meth:`of`): the memory a DEV_DATA or DEV_WRITE message of this type is
    built from or read into (``runtime msg``, ``runtime replay``).
    """

    buffer_type: "type[DeviceBuffer]"
    layout: ParamLayout
    by_id: "dict[int, Parameter]"
    offsets: dict[int, int]

    @classmethod
    def of(cls, buffer_type: "type[DeviceBuffer]") -> "TypeLayout":
        """Pack the type's parameters one after another, in ID order."""
        by_id = {param.id: param for param in buffer_type.params.values()}
        entries: list[tuple[int, int]] = []
        offsets: dict[int, int] = {}
        offset = 0
        for param_id in range(max(by_id, default=-1) + 1):
            param = by_id.get(param_id)
            if param is None:
                entries.append((0, 0))  # not a parameter of this type: the core refuses its bit
                continue
            width = ctypes.sizeof(param.platform_type)
            entries.append((offset, width))
            offsets[param_id] = offset
            offset += width
        return cls(buffer_type, ParamLayout(entries), by_id, offsets)

    def scratch(self) -> bytearray:
        """Zeroed memory the size of this layout."""
        return bytearray(max(1, self.layout.span))

    def names(self, bitmap: int) -> list[str]:
        """The parameter names of a bitmap, in ID order (``#N`` for IDs the type does not have)."""
        return [
            self.by_id[index].name if index in self.by_id else f"#{index}" for index in iter_params(bitmap)
        ]

    def values(self, bitmap: int, memory: bytearray) -> dict[str, Any]:
        """Read the flagged parameters' values out of the scratch memory."""
        result: dict[str, Any] = {}
        for index in iter_params(bitmap):
            param = self.by_id[index]
            width = ctypes.sizeof(param.platform_type)
            offset = self.offsets[index]
            result[param.name] = _from_bytes(param, bytes(memory[offset : offset + width]))
        return result


def _from_bytes(param: "Parameter", raw: bytes) -> Any:
    ctype: Any = param.platform_type
    value = ctype.from_buffer_copy(raw)
    if isinstance(value, ctypes.Array):
        return value.value if value._type_ is ctypes.c_char else _array_list(value)
    return value.value


def _array_list(array: Any) -> list[Any]:
    return [_array_list(item) if isinstance(item, ctypes.Array) else item for item in array]


# ---- a device's UID, as users type it ---------------------------------------------------------------

UID_FORMS = "hex with 0x (as printed everywhere), decimal, or hex digits with a letter a-f"
"""The UIDs :func:`parse_uid` accepts, in words (for help texts)."""
_UID = re.compile(
    r"0[xX](?P<hex>[0-9a-fA-F]+)|(?P<decimal>[0-9]+)|(?P<bare>[0-9a-fA-F]*[a-fA-F][0-9a-fA-F]*)"
)


def parse_uid(text: str, where: str | None = None) -> int:
    """A UID typed by a user: hex with ``0x``, decimal, or bare hex when it contains a letter a-f.

    The one parser of the UIDs users type (a Smart Device's 88 bits:
    ``device_id``, year, random part, as SUB_RES carries them), for every
    command (``runtime buffers``, ``record``, ``emulate``, ``msg``).

    >>> parse_uid("0xa0a0000000000c0ffee") == parse_uid("a0a0000000000c0ffee") == 0xA0A0000000000C0FFEE
    True
    >>> parse_uid("42"), parse_uid(" 0X2a "), parse_uid("2a")
    (42, 42, 42)
    >>> parse_uid("-5")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: bad UID '-5': it must be an integer, hex with 0x (as printed everywhere), decimal, or ...

    Args:
        where: The argument the UID is part of (``TYPE:UID``), named in the error.

    Raises:
        ValueError: Anything else (a sign, other letters, nothing): one
            message, the same for every command.
    """
    match = _UID.fullmatch(text.strip())
    if match is None:
        within = f" in {where!r}" if where is not None and where != text else ""
        raise ValueError(f"bad UID {text!r}{within}: it must be an integer, {UID_FORMS}")
    if match["decimal"] is not None:
        return int(match["decimal"])
    return int(match["hex"] or match["bare"], 16)


def uid_device_id(uid: int) -> int:
    """The ``device_id`` a Smart Device's UID carries: its top 16 of 88 bits.

    >>> uid_device_id(0xA0A0000000000C0FFEE)
    10
    """
    return uid >> 72


def closest_uids(uid: int, uids: Iterable[int]) -> list[int]:
    """``uids``, closest to ``uid`` first (a mistyped UID's): fewest hex digits differing, then nearest.

    >>> near = closest_uids(0xA0A0000000000C0FFEE, [0x5, 0xA0A0000000000D0FFEE, 0xA0A0000000000C0FFEF])
    >>> [hex(other) for other in near]
    ['0xa0a0000000000c0ffef', '0xa0a0000000000d0ffee', '0x5']
    """

    return sorted(set(uids), key=lambda other: (uid_digits_apart(uid, other), abs(other - uid)))


def uid_digits_apart(first: int, second: int) -> int:
    """In how many hex digits two UIDs differ (written as wide as the wider one, 22 digits at least).

    >>> uid_digits_apart(0xA0A0000000000C0FFEE, 0xA0A0000000000D0FFEF)
    2
    """
    width = max(22, len(f"{first:x}"), len(f"{second:x}"))  # 88 bits: 22 hex digits
    return sum(a != b for a, b in zip(f"{first:0{width}x}", f"{second:0{width}x}", strict=True))
