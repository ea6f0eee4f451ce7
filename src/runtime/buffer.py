"""Peripheral data storage and sharing.

Buffers are how the processes of the robot software share peripheral data.
Each buffer is a ctypes structure for one Smart Device or other peripheral,
usually backed by a POSIX shared-memory segment and guarded by a robust,
process-shared mutex. Nothing here knows any particular device: buffer types
are generated from a catalog (see :meth:`BufferStore.make_catalog` and
:mod:`runtime.catalog`).

A segment holds a 64-byte header (magic, format version, layout fingerprint,
validity), the mutex, the producer lock, then the structure: an update block
(values as read from the peripheral), a write block (values to write to it),
both with one field per parameter, and a metadata block (timestamps, pending
bitmaps, subscription, UID), and last an undo copy of the structure. Every
operation that touches shared memory is one call into the compiled core, which
takes the lock, checks validity, copies and releases. The outermost
``transaction()`` first saves the structure to the undo copy; if its process
dies before the end, the next process to take the lock restores it, so a
transaction is all or nothing.

Validity belongs to the *producer*: the process that feeds a buffer (the
bridge, for Smart Devices) calls :meth:`Buffer.serve`, and the buffer is valid
for as long as that process lives and serves it. When it stops serving, closes
the buffer or dies (SIGKILL included), every reader sees the buffer invalid at
its next operation. Consumers never change validity: only the live producer
sets :attr:`Buffer.valid`, and only its process changes the update block of
a buffer it serves (consumers ``write()``). A buffer that nobody serves is
valid from its creation (for code that uses a buffer on its own), except a
Smart Device buffer created through a :class:`BufferStore`: that one stays
invalid until the bridge serves it, so that no default value passes for a
reading.

Consumers need not poll: :meth:`Buffer.wait_update` and :meth:`Buffer.wait_write`
sleep until a block changes, in any process, and have asyncio forms (see
:mod:`runtime.notify`, which also waits on many buffers at once). Other
operations take the mutex only briefly (microseconds), so asyncio code may
call them directly.

>>> import ctypes
>>> Motor = DeviceBuffer.make_type('motor', [
...     Parameter('duty_cycle', ctypes.c_float, 0, lower=-1, upper=1, writeable=True),
...     Parameter('enc_pos', ctypes.c_int32, 1),
... ], device_id=100)
>>> with Motor.open('doctest-motor', shared=False) as motor:
...     motor.set('enc_pos', 42)
...     motor.write('duty_cycle', 0.5)
...     motor.get('enc_pos'), motor.get_write()
(42, {'duty_cycle': 0.5})
"""

from __future__ import annotations

import builtins
import contextlib
import ctypes
import errno
import functools
import hashlib
import inspect
import logging
import math
import operator
import os
import re
import stat
import sys
import time
import types
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, TypeVar

from . import _core
from .messaging import Message

__all__ = [
    "BaseStructure",
    "Buffer",
    "BufferStore",
    "CatalogError",
    "DeviceBuffer",
    "DeviceBufferError",
    "DeviceUID",
    "NullDevice",
    "Parameter",
]

logger = logging.getLogger(__name__)

if sys.byteorder != "little":  # pragma: no cover - every supported robot is little-endian
    raise ImportError("runtime.buffer copies values to the wire as-is and needs a little-endian host")

FORMAT_VERSION = 5
"""Bumped whenever the segment format changes; part of every layout fingerprint."""
MAGIC = b"RTBUFFER"
"""First bytes of every segment this library creates."""
NAMESPACE_ENV = "RUNTIME_BUFFER_NAMESPACE"
"""Environment variable prefixing the segment names a :class:`BufferStore` uses."""
SHM_DIR = "/dev/shm"
_NAME_MAX = 255

BufferT = TypeVar("BufferT", bound="Buffer")


DeviceBufferError = _core.DeviceBufferError
"""Error when interfacing with a buffer (``context`` names the buffer and parameter); a
:class:`~runtime.exception.RuntimeBaseException` made by the compiled core, which raises it."""


class CatalogError(DeviceBufferError):
    """A device catalog, or a buffer type made from one, is malformed (``context`` says where).

    A subclass of :class:`DeviceBufferError`, so that code catching that still
    catches it; catch this one first to tell a broken catalog from a buffer problem.
    """


class BaseStructure(ctypes.Structure):
    """A ctypes structure with a readable ``repr``."""

    def __repr__(self) -> str:
        fields = ", ".join(f"{field[0]}={getattr(self, field[0])!r}" for field in self._fields_)
        return f"{type(self).__name__}({fields})"


class DeviceUID(BaseStructure):
    """A unique device identifier: 88 bits of type, season and random number.

    Attributes:
        device_id: The device type (see the catalog's ``device_id``).
        year: The year in which the device was created. ``0x00`` corresponds to
            the spring 2016 season, and increments for each season afterwards.
        random: A random 64-bit number.

    Examples:
        >>> uid = DeviceUID(0xffff, 0xee, 0xc0debeef_deadbeef)
        >>> assert int(uid) == 0xffff_ee_c0debeef_deadbeef
        >>> uid = DeviceUID.from_int(0xffff_ee_c0debeef_deadbeef)
        >>> hex(uid.device_id)
        '0xffff'
        >>> hex(uid.year)
        '0xee'
        >>> hex(uid.random)
        '0xc0debeefdeadbeef'
    """

    _fields_ = [("device_id", ctypes.c_uint16), ("year", ctypes.c_uint8), ("random", ctypes.c_uint64)]

    device_id: int
    year: int
    random: int

    def __int__(self) -> int:
        return self.device_id << 72 | self.year << 64 | self.random

    def __index__(self) -> int:
        return int(self)

    def astuple(self) -> tuple[int, int, int]:
        """``(device_id, year, random)``."""
        return self.device_id, self.year, self.random

    @classmethod
    def from_int(cls, uid: int, /) -> DeviceUID:
        """Split an 88-bit integer UID into its fields."""
        if not 0 <= uid < 1 << 88:
            raise ValueError(f"a UID is an 88-bit nonnegative integer, not {uid!r}")
        return cls(uid >> 72, (uid >> 64) & 0xFF, uid & 0xFFFF_FFFF_FFFF_FFFF)


class _Meta(BaseStructure):
    """Per-buffer bookkeeping; mirrors ``rt_meta`` in the compiled core."""

    _fields_ = [
        ("last_update", ctypes.c_double),
        ("last_write", ctypes.c_double),
        ("updated", ctypes.c_uint64),
        ("read", ctypes.c_uint64),
        ("written", ctypes.c_uint64),
        ("subscription", ctypes.c_uint16),
        ("interval_ms", ctypes.c_uint16),
        ("reserved", ctypes.c_uint32),
        ("uid", DeviceUID),
    ]


class _SegmentHeader(ctypes.Structure):
    """The first 64 bytes of a segment."""

    _fields_ = [
        ("magic", ctypes.c_char * 8),
        ("version", ctypes.c_uint32),
        ("state", ctypes.c_uint32),
        ("size", ctypes.c_uint64),
        ("valid", ctypes.c_uint32),
        ("creator_pid", ctypes.c_uint32),
        ("fingerprint", ctypes.c_uint8 * 16),
        ("txn_depth", ctypes.c_uint32),
        ("undo_active", ctypes.c_uint32),
        ("producer_pid", ctypes.c_uint32),
        ("namespace_length", ctypes.c_uint32),
    ]


def _check_core_layout() -> None:
    """Refuse to run over a compiled core whose memory layout differs (a stale build)."""
    meta = _core.META_LAYOUT
    problems = [] if ctypes.sizeof(_Meta) == meta["size"] else ["metadata block size"]
    fields = ("last_update", "last_write", "updated", "read", "written", "subscription", "interval_ms", "uid")
    problems += [f"metadata field {field}" for field in fields if getattr(_Meta, field).offset != meta[field]]
    for what, ours, theirs in (
        ("header size", ctypes.sizeof(_SegmentHeader), _core.HEADER_SIZE),
        ("valid word offset", _SegmentHeader.valid.offset, _core.VALID_OFFSET),
        ("state word offset", _SegmentHeader.state.offset, _core.STATE_OFFSET),
    ):
        if ours != theirs:
            problems.append(what)
    if problems:
        raise ImportError(
            f"runtime.buffer and the compiled core runtime._core disagree on the segment layout "
            f"({', '.join(problems)}): rebuild the core (pip install -e . or make)"
        )


_check_core_layout()


# ---- parameters ---------------------------------------------------------------------------------

_TYPE_PATTERN = re.compile(r"\s*([A-Za-z_]\w*)\s*((?:\[\s*\d+\s*\]\s*)*)")
_POINTER_TYPES = {"char_p", "wchar_p", "void_p"}
_POINTER_CODES = frozenset("zZPO")
"""ctypes type codes of pointers and Python objects: meaningless in another process, refused."""
_INTEGER_CODES = frozenset("bBhHiIlLqQ")
_KINDS = {"?": "bool", "f": "float32", "d": "float64"}
_INT_KINDS = {
    (1, True): "int8",
    (1, False): "uint8",
    (2, True): "int16",
    (2, False): "uint16",
    (4, True): "int32",
    (4, False): "uint32",
    (8, True): "int64",
    (8, False): "uint64",
}


def _platform_type(ctype: Any) -> Any:
    if ctype is ctypes.c_double:
        return ctypes.c_float
    if issubclass(ctype, ctypes.Array):
        element = _platform_type(ctype._type_)
        return ctype if element is ctype._type_ else element * ctype._length_
    return ctype


class Parameter(NamedTuple):
    """A parameter descriptor.

    Args:
        name: The parameter name.
        ctype: The ctypes type of its values.
        id: The parameter ID, a nonnegative integer (its bit in bitmaps).
        lower: This parameter's minimum valid value. For numeric parameters only.
        upper: This parameter's maximum valid value. For numeric parameters only.
        readable: Whether this parameter should be readable with :meth:`Buffer.get`.
        writeable: Whether this parameter should be writeable with :meth:`Buffer.write`.
        subscribed: Whether this parameter should be subscribed to, by default.
            Only applicable for Smart Devices.
        safe: The value the device must hold when nobody commands it (an
            actuator's "off": a motor's duty cycle 0), or None for a parameter
            that keeps its value (configuration: gains, LEDs). A writeable
            scalar of a Smart Device only, inside the bounds. When the process
            that wrote the value in force ends, the bridge writes this value
            back (see ``docs/guarantees.md``, "a command never outlives its commander").
        unit: The unit of its values, for people (``V``, ``A``), or None. Metadata:
            no part of the layout or its fingerprint.
        description: One line saying what it is, for people, or None. Metadata too.
    """

    name: str
    ctype: type
    id: int
    lower: float = -math.inf
    upper: float = math.inf
    readable: bool = True
    writeable: bool = False
    subscribed: bool = True
    safe: Any = None
    unit: str | None = None
    description: str | None = None

    def clamp(self, value: float, /) -> float:
        """Ensure a real value is between this parameter's lower and upper limits.

        A value outside the bounds is clipped to the nearer one, with a
        ``RuntimeWarning`` worded as every clamp of the library words it
        (``parameter NAME: VALUE is out of bounds [LOWER, UPPER]; clamped to BOUND``).

        Example:
            >>> param = Parameter('param', ctypes.c_double, 0, lower=-1, upper=1)
            >>> param.clamp(-1.1)
            -1
            >>> param.clamp(1.1)
            1
            >>> param.clamp(0)
            0
        """
        if value < self.lower or value > self.upper:
            bound = self.lower if value < self.lower else self.upper
            message = _clamp_message(self.name, value, self.lower, self.upper, bound)
            warnings.warn(message, RuntimeWarning, stacklevel=2)
            return bound
        return value

    @staticmethod
    def parse_ctype(type_specifier: str) -> type:
        """Parse a type specifier into the corresponding C type.

        The specifier is the name of a simple ctypes type without the ``c_``
        prefix, optionally followed by ``[n]`` suffixes for (nested) arrays.
        Pointer types are not supported.

        Example:
            >>> assert Parameter.parse_ctype('bool') is ctypes.c_bool
            >>> assert Parameter.parse_ctype('int32[64]') is ctypes.c_int32 * 64
            >>> assert Parameter.parse_ctype('uint64[8][8]') is ctypes.c_uint64 * 8 * 8
        """
        match = _TYPE_PATTERN.fullmatch(type_specifier) if isinstance(type_specifier, str) else None
        base = match and match.group(1)
        ctype = getattr(ctypes, f"c_{base}", None) if base and base not in _POINTER_TYPES else None
        if not (isinstance(ctype, type) and issubclass(ctype, ctypes._SimpleCData)):
            raise CatalogError("unknown parameter type", type=type_specifier)
        assert match is not None
        result: Any = ctype
        for length in re.findall(r"\d+", match.group(2)):
            if int(length) == 0:
                raise CatalogError("array length must be positive", type=type_specifier)
            result = result * int(length)
        return result  # type: ignore[no-any-return]

    @property
    def default(self) -> Any:
        """The default value of :attr:`platform_type` (vectors have none).

        Example:
            >>> Parameter('param', ctypes.c_double, 0).default
            0.0
            >>> Parameter('param', ctypes.c_int8, 0).default
            0
            >>> Parameter('param', ctypes.c_bool, 0).default
            False
            >>> Parameter('param', ctypes.c_bool * 3, 0).default
            Traceback (most recent call last):
              ...
            runtime.buffer.DeviceBufferError: vector parameters have no default
        """
        if issubclass(self.platform_type, ctypes.Array):
            raise DeviceBufferError("vector parameters have no default")
        return self.platform_type().value

    @property
    def platform_type(self) -> Any:
        """A C type exactly as wide as the values the peripheral sends.

        Smart Devices have no 8-byte double: a ``double`` parameter travels and
        is stored as a 4-byte float.
        """
        return _platform_type(self.ctype)

    @property
    def numeric(self) -> bool:
        """Whether bounds apply: a scalar number (not bool, char or array)."""
        ctype = self.platform_type
        return not issubclass(ctype, ctypes.Array) and getattr(ctype, "_type_", "") not in ("?", "c", "u")


def _kind(param: Parameter) -> str:
    """The compiled core's conversion kind for a parameter."""
    ctype: Any = param.platform_type
    if issubclass(ctype, ctypes.Array):
        return "raw"
    code = ctype._type_
    if code in _KINDS:
        return _KINDS[code]
    if code in _INTEGER_CODES:
        return _INT_KINDS[(ctypes.sizeof(ctype), code.islower())]
    return "raw"


def _raw_converters(param: Parameter) -> tuple[Callable[[bytes], Any], Callable[[Any], bytes]]:
    """Python-side conversions for arrays and unusual scalars (the slow path)."""
    ctype: Any = param.platform_type
    size = ctypes.sizeof(ctype)
    is_array = issubclass(ctype, ctypes.Array)
    is_text = is_array and ctype._type_ is ctypes.c_char

    def to_python(raw: bytes) -> Any:
        value = ctype.from_buffer_copy(raw)
        return value.value if is_text or not is_array else value

    def from_python(value: Any) -> bytes:
        if isinstance(value, ctype):
            return bytes(value)
        try:
            if is_array and isinstance(value, (bytes, bytearray, memoryview)):
                data = bytes(value)
                if ctypes.sizeof(ctype._type_) == 1 and len(data) <= size:
                    return data.ljust(size, b"\0")
                raise ValueError(f"{len(data)} bytes do not fit {size}")
            if is_array:
                converted = ctype(*_array_items(param.name, ctype, value, 4))
            else:
                converted = ctype(value)
        except (TypeError, ValueError, IndexError, OverflowError) as exc:
            raise TypeError(
                f"parameter {param.name}: cannot store {value!r} as {ctype.__name__}: {exc}"
            ) from None
        return bytes(converted)

    return to_python, from_python


def _clamp_message(name: str, value: Any, lower: Any, upper: Any, bound: Any) -> str:
    """The one wording of a clamp warning (the compiled core words its own the same way)."""
    return f"parameter {name}: {value!r} is out of bounds [{lower!r}, {upper!r}]; clamped to {bound!r}"


def _array_items(where: str, ctype: Any, value: Any, stacklevel: int) -> tuple[Any, ...]:
    """The elements of ``value`` for array type ``ctype``, integers clamped to their type's range.

    ctypes would wrap an out-of-range integer silently (int16 99999 becomes
    -31073) and zero-fill a short sequence; here an integer out of range is
    clamped with the same ``RuntimeWarning`` as a scalar, and a wrong length
    is refused.
    """
    items = tuple(value)
    if len(items) != ctype._length_:
        raise ValueError(f"{len(items)} elements, not {ctype._length_}")
    element = ctype._type_
    if issubclass(element, ctypes.Array):
        return tuple(
            _array_items(f"{where}[{index}]", element, item, stacklevel + 1)
            for index, item in enumerate(items)
        )
    if element._type_ not in _INTEGER_CODES:
        return items
    low, high = _integer_range(element)
    result = []
    for index, item in enumerate(items):
        number = operator.index(item)
        if not low <= number <= high:
            bound = low if number < low else high
            message = _clamp_message(f"{where}[{index}]", item, low, high, bound)
            warnings.warn(message, RuntimeWarning, stacklevel=stacklevel)
            number = bound
        result.append(number)
    return tuple(result)


# ---- buffers ------------------------------------------------------------------------------------


def _describe_layout(ctype: Any) -> Any:
    """A canonical description of a ctypes type's memory layout."""
    if isinstance(ctype, type) and issubclass(ctype, ctypes.Structure):
        return [
            (name, getattr(ctype, name).offset, getattr(ctype, name).size, _describe_layout(field_type))
            for name, field_type, *_ in ctype._fields_
        ]
    if isinstance(ctype, type) and issubclass(ctype, ctypes.Array):
        return ("array", ctype._length_, _describe_layout(ctype._type_))
    return (ctype._type_, ctypes.sizeof(ctype))


def _validate_name(name: str) -> None:
    if not isinstance(name, str) or not name:
        raise DeviceBufferError("buffer name must be a nonempty string", name=name)
    if "/" in name or "\0" in name:
        raise DeviceBufferError("buffer name must not contain '/' or NUL", name=name)
    if len(name.encode()) > _NAME_MAX - 1:
        raise DeviceBufferError("buffer name is too long for the OS", name=name, limit=_NAME_MAX - 1)


def _log_recovery(name: str, rolled_back: bool) -> None:
    if rolled_back:
        logger.warning(
            "buffer %r: the lock owner died inside a transaction; lock recovered, changes rolled back", name
        )
    else:
        logger.warning("buffer %r: the previous lock owner died; lock recovered", name)


SETUP_TIMEOUT = 1.0
"""Seconds a segment may stay half made (unsized, or not initialized) before it counts as abandoned."""


class _Abandoned(Exception):
    """A segment whose creator died before finishing it."""


def _map_segment(name: str | None, size: int, create: bool) -> tuple[Any, bool]:
    """Map the named segment (None: process-local memory), creating it if asked and missing."""
    try:
        memory, created, actual = _core.map_segment(None if name is None else "/" + name, size, create)
        deadline = time.monotonic() + SETUP_TIMEOUT
        while memory is None and actual == 0 and time.monotonic() < deadline:  # the creator is sizing it
            time.sleep(0.001)
            memory, created, actual = _core.map_segment("/" + str(name), size, False)
    except FileNotFoundError:
        raise DeviceBufferError("buffer does not exist", name=name) from None
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise DeviceBufferError(
                f"no room for the buffer in {SHM_DIR} (ENOSPC: shared memory is full)", name=name, size=size
            ) from None
        raise DeviceBufferError(f"cannot open buffer: {exc.strerror}", name=name) from exc
    if memory is None and actual == 0:
        raise _Abandoned
    if memory is None:
        raise DeviceBufferError(
            "buffer layout does not match: segment size differs", name=name, expected=size, actual=actual
        )
    return memory, created


class Buffer(BaseStructure):
    """A structure for storing peripheral data.

    A buffer consists of two substructures: an update block for storing current
    parameter values (as read from the peripheral), and a write block for
    parameter values to be written to the peripheral.

    Attributes:
        params: Maps param names to their descriptors.
    """

    params: ClassVar[Mapping[str, Parameter]] = types.MappingProxyType({})
    type_name: ClassVar[str] = "buffer"
    lock_timeout: ClassVar[float] = 1.0
    """Seconds an operation waits for the lock before raising."""
    _max_params: ClassVar[int] = 64
    _spec: ClassVar[Any] = None
    _fingerprint: ClassVar[bytes] = b""
    _segment_size: ClassVar[int] = 0
    _initial_block: ClassVar[bytes | None] = None
    """A values block with every parameter inside its bounds (None: all zeros are)."""
    _fast_methods: ClassVar[tuple[str, ...]] = ("get", "set", "write", "transaction")

    _access: _core.BufferAccess
    _name: str
    _created: bool

    @classmethod
    def make_type(
        cls: type[BufferT], name: str, params: Iterable[Parameter], *extra_fields: Any, **attrs: Any
    ) -> type[BufferT]:
        """Create a new buffer type (subclass).

        Args:
            name: The type name (as in the catalog).
            params: The parameter descriptors.
            extra_fields: More ``(name, ctype)`` fields to append to the structure.
            attrs: Class attributes of the new type (``device_id``, intervals, ...).

        Raises:
            DeviceBufferError: A parameter is malformed (duplicate name or ID, bad bounds).
            ValueError: Too many parameters for this kind of buffer.
        """
        _check_attrs(name, cls, attrs)
        params = list(params)
        if len(params) > cls._max_params:
            raise ValueError(
                f"{name}: {len(params)} parameters, but a {cls.__name__} has at most {cls._max_params}"
            )
        _check_params(name, params, cls._max_params)
        params.sort(key=lambda param: param.id)
        values = type(
            f"{name}.values", (BaseStructure,), {"_fields_": [(p.name, p.platform_type) for p in params]}
        )
        fields = [("_update", values), ("_write", values), ("_meta", _Meta), *extra_fields]
        namespace = {
            "_fields_": fields,
            "params": types.MappingProxyType({param.name: param for param in params}),
            "type_name": name,
            **attrs,
        }
        buffer_type: Any = type(name, (cls,), namespace)
        buffer_type._spec = _core.BufferSpec(
            [_spec_entry(param, getattr(values, param.name).offset) for param in params],
            update_offset=buffer_type._update.offset,
            write_offset=buffer_type._write.offset,
            meta_offset=buffer_type._meta.offset,
            block_size=ctypes.sizeof(values),
            struct_size=ctypes.sizeof(buffer_type),
            is_device=issubclass(cls, DeviceBuffer),
            safe={p.id: bytes(p.platform_type(p.safe)) for p in params if p.safe is not None},
        )
        description = repr((FORMAT_VERSION, ctypes.sizeof(buffer_type), _describe_layout(buffer_type)))
        buffer_type._fingerprint = hashlib.sha256(description.encode()).digest()[:16]
        initial = values()
        for param in params:
            if param.numeric and not param.lower <= 0 <= param.upper:  # start at the bound nearest zero
                bound = param.lower if param.lower > 0 else param.upper
                setattr(initial, param.name, int(bound) if _is_integer(param) else bound)
        buffer_type._initial_block = bytes(initial) if any(bytes(initial)) else None
        buffer_type._segment_size = _core.segment_size(ctypes.sizeof(buffer_type))
        return buffer_type  # type: ignore[no-any-return]

    @classmethod
    def segment_size(cls) -> int:
        """Bytes of a segment of this type: header, mutex, structure and its undo copy."""
        return cls._segment_size

    @classmethod
    @contextlib.contextmanager
    def open(
        cls: type[BufferT], name: str, /, *, create: bool = True, shared: bool = True
    ) -> Iterator[BufferT]:
        """Open a new buffer backed by shared memory.

        Args:
            name: The shared memory object's name (no '/').
            create: Whether to create the object if it does not exist. A buffer
                created here is valid at once (usable on its own); a producer
                that :meth:`serve` s it owns its validity from then on.
            shared: False gives a process-local buffer with the same behaviour
                (nothing is created in shared memory).

        Returns:
            A context manager that automatically closes the shared memory object
            when the exit handler runs. The object is not unlinked, meaning
            other processes may still access the object. To finally destroy
            the object, you must call :meth:`Buffer.unlink` on this object's name.

        Raises:
            DeviceBufferError: If ``create=False`` but the object does not exist,
                the segment was made for a different layout, is not this user's
                own (owner-only) regular file, or shared memory is full.
        """
        buffer = cls.attach(name, create=create, shared=shared)
        try:
            yield buffer
        finally:
            buffer.close()

    @classmethod
    def attach(
        cls: type[BufferT], name: str, /, *, create: bool = True, shared: bool = True, valid: bool = True
    ) -> BufferT:
        """Like :meth:`open`, but returns the buffer itself.

        Call :meth:`close` when done, or use the buffer as a context manager.
        ``valid`` is the validity of a segment this call creates (False: invalid
        until a producer serves it); an existing segment keeps its own.
        """
        if cls._spec is None:
            raise CatalogError("buffer type has no layout; make one with make_type()", type=cls.__name__)
        _validate_name(name)
        for attempt in (1, 2):
            try:
                memory, created = _map_segment(name if shared else None, cls._segment_size, create)
                if created:
                    cls._initialize_segment(memory, name, shared, valid)
                else:
                    cls._check_segment(memory, name)
                break
            except _Abandoned:
                # Its creator died half way (or stalled for SETUP_TIMEOUT): start it again.
                if not create or attempt == 2:
                    raise DeviceBufferError(
                        "buffer was never initialized by its creator; unlink it", name=name
                    ) from None
                logger.warning("buffer %r: its creator never finished it; making it again", name)
                with contextlib.suppress(FileNotFoundError):
                    _core.shm_unlink("/" + name)
        buffer = cls.from_buffer(memory, _core.DATA_OFFSET)
        access = _core.BufferAccess(
            cls._spec, memory, name, on_recover=_log_recovery, timeout=cls.lock_timeout
        )
        state = buffer.__dict__
        state.update(_access=access, _name=name, _created=created)
        for method in cls._fast_methods:  # one C call per operation: skip the Python method frame
            state[method] = getattr(access, method)
        return buffer

    @classmethod
    def _initialize_segment(cls, memory: Any, name: str, shared: bool, valid: bool) -> None:
        # The namespace in effect, when the name is in it, is recorded so that unlink_all() can tell
        # namespace "rt" from "rt-demo-1" exactly. Parameters whose bounds exclude zero start inside
        # them, before anyone can see the segment.
        namespace = current_namespace()
        namespace_length = len(namespace) if name.startswith(namespace + "-") else 0
        _core.segment_init(
            memory,
            MAGIC,
            FORMAT_VERSION,
            cls._fingerprint,
            ctypes.sizeof(cls),
            shared,
            os.getpid(),
            valid,
            namespace_length,
            cls._initial_block,
            (cls._update.offset, cls._write.offset),
        )

    @classmethod
    def _check_segment(cls, memory: Any, name: str) -> None:
        check = functools.partial(
            _core.segment_check, memory, MAGIC, FORMAT_VERSION, cls._fingerprint, ctypes.sizeof(cls)
        )
        problem = check()
        deadline = time.monotonic() + SETUP_TIMEOUT
        while problem == "not ready" and time.monotonic() < deadline:  # its creator is still setting it up
            time.sleep(0.001)
            problem = check()
        if problem == "not ready":
            raise _Abandoned
        if problem == "format":
            header = _SegmentHeader.from_buffer_copy(memory)
            raise DeviceBufferError(
                "segment is not a buffer of this format",
                name=name,
                magic=header.magic,
                version=header.version,
            )
        if problem == "layout":
            raise DeviceBufferError(
                "buffer layout does not match this type (the segment was made by a different catalog)",
                name=name,
                type=cls.type_name,
            )

    def __enter__(self: BufferT) -> BufferT:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop using this buffer. A producer that closes it stops serving it (it turns invalid);
        anyone else leaves its validity alone. The commands of this process on it end
        (:meth:`end_commands`).

        The memory stays mapped until the object is garbage collected (ctypes
        holds a view of it) but every operation raises from now on.
        """
        access = self.__dict__.get("_access")
        if access is None or access.closed:
            return
        access.close()
        for method in self._fast_methods:
            self.__dict__.pop(method, None)

    def serve(self) -> int | None:
        """Become this buffer's producer and mark it valid.

        The buffer stays valid while this process lives and serves it: until
        :meth:`stop_serving`, :meth:`close`, or the death of the calling thread
        (SIGKILL included), whichever comes first. Call it again to mark the
        buffer valid after setting :attr:`valid` to False. Serve and stop from
        the same thread (the role is a lock held by that thread). A thread
        serves at most ``runtime._core.MAX_SERVED_PER_THREAD`` buffers at once:
        the kernel releases at most 2048 robust locks of a dying thread.

        A producer whose thread is gone is taken over, even when the kernel
        left its lock held (a thread that died holding too many robust locks).

        Returns:
            The pid of a producer that died serving this buffer and was taken
            over (for a log line), else None.

        Raises:
            DeviceBufferError: Another live producer serves it, or this thread
                already serves as many buffers as a thread may.
        """
        previous: int | None = self._access.serve()
        return previous

    def stop_serving(self) -> None:
        """Mark the buffer invalid and give up the producer role (no effect unless serving).

        Needs no lock: it takes effect at once, even while another process
        holds the buffer's lock.

        Raises:
            DeviceBufferError: Called from another thread than the serving one;
                nothing changes (that thread still serves, and may stop).
        """
        self._access.stop_serving()

    def claim(self) -> None:
        """Ask the buffer's live producer to give it up (a bridge that sees the device connected).

        One word in the segment, no lock: anyone with the buffer open may
        claim it. A producer that honours claims (``runtime replay``) sees
        :attr:`claimed`, stops serving and leaves the buffer alone; the
        claimant then :meth:`serve` s it, which clears its claim. A producer
        that ignores claims keeps the buffer: a claim asks, it never takes.
        """
        self._access.claim()

    @property
    def claimed(self) -> int | None:
        """The pid of a live process that claimed this buffer (:meth:`claim`) and does not serve it, or None.

        A producer that yields to claims checks it on its pass (one memory load
        while nobody claims) and, when set, calls :meth:`stop_serving`.
        """
        pid: int | None = self._access.claimed
        return pid

    def set_lock_timeout(self, seconds: float) -> None:
        """How long this handle's operations wait for the lock (default :attr:`lock_timeout`).

        0 never waits: an operation that finds the lock taken raises
        :class:`DeviceBufferError` at once, with ``context['errno'] == errno.EBUSY``.
        """
        self._access.timeout = seconds

    @property
    def serving(self) -> bool:
        """Whether this handle is the buffer's producer (a forked child's copy is not)."""
        return bool(self._access.serving)

    @property
    def producer_pid(self) -> int | None:
        """The pid of the live process serving this buffer, or None when nobody does.

        A producer whose thread is gone counts as gone, whatever its lock says
        (its lock is then released: the buffer turns invalid for everyone).
        """
        pid: int | None = self._access.producer_pid
        return pid

    @classmethod
    def unlink(cls, name: str) -> None:
        """Destroy a shared memory object.

        Processes that have it open keep their mapping until they close it.

        Raises:
            DeviceBufferError: If there is no such object.
        """
        _validate_name(name)
        try:
            _core.shm_unlink("/" + name)
        except FileNotFoundError:
            raise DeviceBufferError("buffer does not exist", name=name) from None

    @property
    def name(self) -> str:
        """The buffer's (shared memory object's) name."""
        return self._name

    @property
    def valid(self) -> bool:
        """Whether the data is live: operations on an invalid buffer raise.

        A served buffer is valid while its producer lives and says so. Setting
        it needs no lock, and only the live producer may, from the thread that
        serves (anyone else gets :class:`DeviceBufferError`, even on a buffer
        nobody serves: :meth:`serve` it first). So no consumer makes a dead or
        stopped producer's last values pass for live ones.
        """
        return bool(self._access.valid)

    @valid.setter
    def valid(self, value: bool) -> None:
        self._access.valid = value

    @classmethod
    def safe_values(cls) -> dict[str, Any]:
        """The safe value of each parameter that has one (its actuators), by name."""
        return {name: param.safe for name, param in cls.params.items() if param.safe is not None}

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        access = self.__dict__.get("_access")
        return access is None or bool(access.closed)

    def get(self, param: str, /) -> Any:
        """Read a parameter from the update block.

        Raises:
            DeviceBufferError: If the parameter does not exist or is not readable.
        """
        return self._access.get(param)

    def set(self, param: str, value: Any, /) -> None:
        """Set a parameter value in the update block.

        Numeric values outside the parameter's bounds are clamped, with a warning.
        The update block holds what the device reports: on a buffer that a live
        producer serves, only the producer's process sets it (consumers
        :meth:`write`, a request for the device).

        Raises:
            DeviceBufferError: If the parameter does not exist, or another
                process serves the buffer (``context['producer_pid']`` names it).
            TypeError: If the value is not the correct type.
        """
        self._access.set(param, value)

    def write(self, param: str, value: Any, /) -> None:
        """Request writing a parameter to the device.

        Because the buffer is polled and the writes are batched during each
        cycle, a pending write may be overwritten by a newer one; this is a
        feature that reduces excessive writes.

        A write of a parameter with a safe value (an actuator) is a *command*
        that belongs to the calling process: when the process ends (however it
        ends) or closes this buffer, the bridge puts the safe value back (see
        :meth:`end_commands`).

        Raises:
            DeviceBufferError: If the parameter does not exist or is not writeable,
                or it has a safe value and the robot is disabled (:meth:`BufferStore.disable`).
            TypeError: If the value is not the correct type.
        """
        self._access.write(param, value)

    def end_commands(self, params: Iterable[str] | None = None) -> builtins.set[str]:
        """End this process's commands on this buffer: their parameters go back to their safe values.

        A parameter another process wrote since is its command, and stands.
        Closing the buffer does the same for every parameter; a server that
        writes for remote clients calls it for the parameters of a client
        that went away.

        Returns:
            The names of the parameters set back to their safe values (pending for the device).
        """
        return set(self._access.end_my_commands(params))

    def commanders(self) -> dict[str, int]:
        """The pid of the process whose value is in force, for each safe-valued parameter someone commands."""
        return {name: who[0] for name, who in self._access.commanders().items()}

    @property
    def disabled(self) -> bool:
        """Whether the robot is disabled for this buffer: writes of safe-valued parameters are refused."""
        return bool(self._access.disabled)

    def transaction(self) -> contextlib.AbstractContextManager[Any]:
        """Acquire the buffer's mutex and check its valid bit.

        Every method already locks, but a ``with buffer.transaction():`` block
        groups several operations into one atomic transaction across processes
        (and avoids locking repeatedly). It is reentrant.
        """
        return self._access.transaction()

    def snapshot(self) -> dict[str, Any]:
        """Every readable parameter's value, read under one lock (for telemetry)."""
        return self._access.snapshot()

    def wait_update(self, timeout: float | None = None) -> bool:
        """Block until the update block changes (a ``set``, or the bridge applying a DEV_DATA).

        Returns True when it changed since this handle last returned from
        ``wait_update`` (the first time: since the handle was opened), False
        when ``timeout`` seconds passed (None: no limit; a negative number or
        NaN raises ``ValueError``). Only committed changes count: a change made
        inside a transaction counts when the transaction ends, and never if it
        is rolled back (its process died inside). The thread sleeps in
        the kernel: waiting costs no CPU, and a change wakes it at once, from
        any process. Raises :class:`DeviceBufferError` at once if the buffer
        is, or turns, invalid while waiting (its producer stopped or died).
        """
        return self._access.wait(0, timeout)

    def wait_write(self, timeout: float | None = None) -> bool:
        """Like :meth:`wait_update`, for the write block (a ``write()`` by anyone)."""
        return self._access.wait(1, timeout)

    async def wait_update_async(self, timeout: float | None = None) -> bool:
        """The asyncio form of :meth:`wait_update`: no thread per waiter, cancellation-safe."""
        from .notify import wait_async

        return await wait_async(self, timeout, block="update")

    async def wait_write_async(self, timeout: float | None = None) -> bool:
        """The asyncio form of :meth:`wait_write`."""
        from .notify import wait_async

        return await wait_async(self, timeout, block="write")

    def pending_writes(self) -> dict[str, Any]:
        """The parameters written and not yet sent to the device, with their values.

        Unlike :meth:`DeviceBuffer.get_write` (the bridge's), looking does not
        consume them.
        """
        return self._access.pending_writes()

    def __repr__(self) -> str:
        # Short, and without reading the structure (which needs the lock).
        access = self.__dict__.get("_access")
        if access is None:
            return f"<{type(self).type_name} buffer (not attached)>"
        state = "closed" if access.closed else "valid" if access.valid else "invalid"
        return f"<{type(self).type_name} buffer {self._name!r} {state}>"


def _check_attrs(type_name: str, cls: type, attrs: Mapping[str, Any]) -> None:
    """Refuse class attributes that would replace a method or property, or a bad lock timeout."""
    for key, value in attrs.items():
        current = inspect.getattr_static(cls, key, None)
        if (
            callable(current)
            or isinstance(current, (property, classmethod, staticmethod))
            or key.startswith("_")
        ):
            raise CatalogError(
                "attribute would replace a method or internal of the buffer type", device=type_name, key=key
            )
        if key == "lock_timeout" and (
            isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf
        ):
            raise CatalogError(
                "lock_timeout must be a nonnegative, finite number of seconds", device=type_name, value=value
            )


def _check_params(type_name: str, params: list[Parameter], max_params: int) -> None:
    names: set[str] = set()
    ids: set[int] = set()
    for param in params:
        context = {"device": type_name, "param": getattr(param, "name", None)}
        if not isinstance(param, Parameter):
            raise CatalogError("expected a Parameter", **context)
        if not isinstance(param.name, str) or not param.name.isidentifier() or param.name.startswith("_"):
            raise CatalogError("parameter name must be an identifier not starting with '_'", **context)
        if param.name in names:
            raise CatalogError("duplicate parameter name", **context)
        if not isinstance(param.id, int) or not 0 <= param.id < max_params:
            raise CatalogError(
                f"parameter id must be an integer in 0..{max_params - 1}", id=param.id, **context
            )
        if param.id in ids:
            raise CatalogError("duplicate parameter id", id=param.id, **context)
        if not (
            isinstance(param.ctype, type) and issubclass(param.ctype, (ctypes._SimpleCData, ctypes.Array))
        ):
            raise CatalogError("parameter ctype must be a simple ctypes type or array", **context)
        try:
            lower, upper = float(param.lower), float(param.upper)
        except (TypeError, ValueError):
            raise CatalogError(
                "bounds must be numbers", lower=param.lower, upper=param.upper, **context
            ) from None
        if math.isnan(lower) or math.isnan(upper) or lower > upper:
            raise CatalogError("bad bounds: need lower <= upper", lower=lower, upper=upper, **context)
        if not param.numeric and (lower, upper) != (-math.inf, math.inf):
            raise CatalogError("bounds apply to numeric parameters only", **context)
        if lower == math.inf or upper == -math.inf:
            raise CatalogError("bounds exclude every value", lower=lower, upper=upper, **context)
        if _is_integer(param):
            low, high = _integer_range(param.platform_type)
            if not all(math.isinf(bound) or bound.is_integer() for bound in (lower, upper)):
                raise CatalogError("bounds of an integer parameter must be integers", **context)
            if lower > high or upper < low:
                raise CatalogError(
                    "bounds lie outside the parameter type's range", lower=lower, upper=upper, **context
                )
        if _has_wchar(param.ctype):
            raise CatalogError("wchar is platform-dependent; use uint16 or uint32", **context)
        if _element_type(param.ctype)._type_ in _POINTER_CODES:
            raise CatalogError(
                "pointer types cannot be shared between processes; use an integer or char array", **context
            )
        if max_params <= 16 and ctypes.sizeof(param.platform_type) > _core.MAX_PAYLOAD - 2:
            raise CatalogError("parameter is too wide for one message", **context)
        if param.safe is not None:
            _check_safe(param, max_params, context)
        names.add(param.name)
        ids.add(param.id)


def _check_safe(param: Parameter, max_params: int, context: dict[str, Any]) -> None:
    """A safe value belongs to a writeable scalar of a Smart Device, of its type and inside its bounds."""
    safe = param.safe
    if max_params > 16:
        raise CatalogError("only a Smart Device's parameters have a safe value", safe=safe, **context)
    if not param.writeable:
        raise CatalogError("only a writeable parameter has a safe value", safe=safe, **context)
    kind = _kind(param)
    if kind == "raw":
        raise CatalogError("only a scalar parameter has a safe value", safe=safe, **context)
    if kind == "bool":
        if not isinstance(safe, bool):
            raise CatalogError("safe value of a bool parameter must be true or false", safe=safe, **context)
        return
    if isinstance(safe, bool) or not isinstance(safe, (int, float)):
        raise CatalogError("safe value must be a number", safe=safe, **context)
    if _is_integer(param):
        low, high = _integer_range(param.platform_type)
        if not isinstance(safe, int) and not float(safe).is_integer():
            raise CatalogError("safe value of an integer parameter must be an integer", safe=safe, **context)
        if not low <= safe <= high:
            raise CatalogError("safe value lies outside the parameter type's range", safe=safe, **context)
    if not math.isfinite(safe):
        raise CatalogError("safe value must be a finite number", safe=safe, **context)
    if not float(param.lower) <= safe <= float(param.upper):
        raise CatalogError(
            f"safe value {safe} is out of bounds [{param.lower}, {param.upper}]", safe=safe, **context
        )


def _is_integer(param: Parameter) -> bool:
    return _kind(param).startswith(("int", "uint"))


def _integer_range(ctype: Any) -> tuple[int, int]:
    bits = 8 * ctypes.sizeof(ctype)
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if ctype._type_.islower() else (0, (1 << bits) - 1)


def _element_type(ctype: Any) -> Any:
    """The scalar type of an array (of arrays...), or ``ctype`` itself."""
    while issubclass(ctype, ctypes.Array):
        ctype = ctype._type_
    return ctype


def _has_wchar(ctype: Any) -> bool:
    return _element_type(ctype) is ctypes.c_wchar


def _spec_entry(param: Parameter, offset: int) -> tuple[Any, ...]:
    kind = _kind(param)
    entry: tuple[Any, ...] = (
        param.name,
        param.id,
        kind,
        offset,
        ctypes.sizeof(param.platform_type),
        float(param.lower),
        float(param.upper),
        bool(param.readable),
        bool(param.writeable),
        bool(param.subscribed),
    )
    return entry + _raw_converters(param) if kind == "raw" else entry


class DeviceBuffer(Buffer):
    """A special buffer representing a Smart Device.

    Class attributes (set per type by the catalog): ``device_id``, and the
    intervals in seconds ``sub_interval``, ``write_interval``, ``heartbeat_interval``.
    """

    device_id: ClassVar[int]
    sub_interval: ClassVar[float] = 0.04
    write_interval: ClassVar[float] = 0.04
    heartbeat_interval: ClassVar[float] = 1.0
    command_timeout: ClassVar[float | None] = None
    """Seconds after which the bridge restores the safe values when no live commander
    has written them (None: never; a command then lasts as long as its commander)."""
    _max_params: ClassVar[int] = _core.MAX_PARAMS
    _fast_methods = (*Buffer._fast_methods, "read", "update", "emit_dev_rw")

    @classmethod
    def make_type(
        cls: type[BufferT], name: str, params: Iterable[Parameter], *extra_fields: Any, **attrs: Any
    ) -> type[BufferT]:
        """Create a Smart Device buffer type; at most 16 parameters (``ValueError``)."""
        for key in ("sub_interval", "write_interval", "heartbeat_interval"):
            value = attrs.get(key, 1.0)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise CatalogError(f"{key} must be a positive number of seconds", device=name, value=value)
        timeout = attrs.get("command_timeout")
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < math.inf
        ):
            raise CatalogError(
                "command_timeout must be a positive, finite number of seconds", device=name, value=timeout
            )
        device_id = attrs.get("device_id", 0)
        if isinstance(device_id, bool) or not isinstance(device_id, int) or not 0 <= device_id <= 0xFFFF:
            raise CatalogError("device_id must be an integer in 0..65535", device=name, device_id=device_id)
        return super().make_type(name, params, *extra_fields, **attrs)

    def read(self, params: Iterable[str] | None = None) -> None:
        """Request reading parameters from the device (all readable ones by default)."""
        self._access.read(params)

    def update(self, message: Message, /) -> None:
        """Digest a Smart Device message and update this buffer's state accordingly.

        DEV_DATA and DEV_WRITE values are copied into the update or write block
        (a payload that does not match this type's layout raises
        :class:`~runtime.messaging.MessageError` and changes nothing); DEV_READ,
        SUB_REQ and SUB_RES record what was asked; other types change nothing.
        """
        self._access.update(message)

    def emit_dev_rw(self) -> Iterator[Message]:
        """Make messages for reading and writing parameters; clears the pending sets.

        Yields a DEV_READ for parameters requested with :meth:`read`, then as
        few DEV_WRITE messages as hold the pending writes.
        """
        return self._access.emit_dev_rw()

    def emit_dev_data(self) -> Iterator[Message]:
        """Make DEV_DATA messages for recently updated parameters, and clear that set."""
        return self._access.emit_dev_data()

    def emit_subscription(self) -> Iterator[Message]:
        """Make DEV_DATA messages for the subscribed parameters."""
        return self._access.emit_subscription()

    def make_sub_req(self, params: Iterable[str] | None = None, interval: float | None = None) -> Message:
        """Make a subscription request.

        Args:
            params: Parameter names (default: those flagged ``subscribed``).
            interval: Seconds between updates (default: the type's ``sub_interval``).
        """
        if params is None:
            params = [param.name for param in self.params.values() if param.subscribed and param.readable]
        mask = self._access.mask(params, 1)
        seconds = self.sub_interval if interval is None else interval
        if not 0 <= seconds <= 65.535:
            raise ValueError(f"interval must be in 0..65.535 seconds, not {seconds!r}")
        with self.transaction():  # refuse on an invalid buffer
            return Message.make_sub_req(mask, round(seconds * 1000))

    def make_sub_res(self) -> Message:
        """Make a subscription response for the parameters subscribed to."""
        return self._access.make_sub_res()

    def get_read(self) -> set[str]:
        """The parameters requested for reading; clears the pending read set."""
        return self._access.get_read()

    def get_update(self) -> dict[str, Any]:
        """The parameters updated since the last call, with their values; clears that set."""
        return self._access.get_update()

    def get_write(self) -> dict[str, Any]:
        """The parameters written since the last call, with their values; clears that set."""
        return self._access.get_write()

    @property
    def uid(self) -> int:
        """The device's 88-bit UID (see :class:`DeviceUID`)."""
        return self._access.uid

    @uid.setter
    def uid(self, uid: int) -> None:
        self._access.set_meta(uid=DeviceUID.from_int(int(uid)).astuple())

    @property
    def subscription(self) -> frozenset[str]:
        """Names of the parameters currently subscribed to."""
        return frozenset(self._access.names(self._access.subscription_mask))

    @property
    def interval(self) -> float:
        """The subscription interval in seconds (0 when unsubscribed)."""
        return self._access.interval_ms / 1000

    @property
    def last_update(self) -> float:
        """The timestamp given by :func:`time.time` of the last update (a DEV_DATA digested); 0 if none."""
        return self._access.last_update

    @property
    def last_write(self) -> float:
        """The timestamp given by :func:`time.time` of the last write; 0 if none.

        On the robot side, when a ``write()`` was last requested (the precise
        realtime clock, never earlier than a ``time.time()`` taken before the
        call); on the device side (an emulator), when a DEV_WRITE was last digested.
        """
        return self._access.last_write

    @property
    def last_command(self) -> float:
        """The :func:`time.time` of the last write of a safe-valued parameter (a command); 0 if none."""
        return self._access.last_command


NullDevice = DeviceBuffer.make_type("NullDevice", [])
NullDevice.__doc__ = """A buffer type with no parameters.

Useful for creating a non-null placeholder where a buffer is required.
"""


# ---- segments on disk ---------------------------------------------------------------------------


def _read_header(path: str) -> _SegmentHeader | None:
    """The header of a segment file carrying this library's magic; None for anything else.

    Never follows a symlink, never blocks on a FIFO, never opens a device.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        data = os.read(fd, ctypes.sizeof(_SegmentHeader))
    except OSError:
        return None
    finally:
        os.close(fd)
    if len(data) < ctypes.sizeof(_SegmentHeader) or not data.startswith(MAGIC):
        return None
    return _SegmentHeader.from_buffer_copy(data)


def current_namespace() -> str:
    """The prefix of segment names in effect: ``$RUNTIME_BUFFER_NAMESPACE``, default ``rt``."""
    return os.environ.get(NAMESPACE_ENV) or "rt"


if TYPE_CHECKING:
    from .store import BufferStore


def __getattr__(name: str) -> Any:
    # BufferStore lives in runtime.store; the API contract names it runtime.buffer.BufferStore.
    if name == "BufferStore":
        from .store import BufferStore

        return BufferStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
