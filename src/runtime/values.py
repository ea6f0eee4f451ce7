"""Buffer values as plain data: one codec for every surface that shows or takes them.

Every place where a person or a remote program reads or writes a value goes
through this module, so that the same value gets the same answer everywhere:

* **Reading.** :func:`read_state` reads a buffer's values consistently, as
  JSON-ready data (:func:`json_values`; float32 values as the shortest decimal
  that reads back the same); :func:`encode_json` makes a message of them.
* **Describing.** :func:`kind_of` sorts a ctypes type into the classes every
  surface tells apart (:data:`BOOL`, :data:`INTEGER`, :data:`FLOAT`,
  :data:`CHAR`, :data:`TEXT`, :data:`ARRAY`); :func:`type_name` spells it as
  the catalog does; :func:`describe` says in words what a parameter takes.
* **Taking.** :func:`parse_text` reads what a person typed,
  :func:`check_value` what a program sent (decoded JSON, or Python values);
  :func:`check_writes` checks a batch against a buffer type and
  :func:`apply_writes` writes it, all or none.

The write policy, the same on the command line (``runtime buffers write``,
``runtime msg encode``), in Foxglove, over Zenoh and in :mod:`runtime.remote`:
a value out of its parameter's bounds is **refused**, with the bounds in the
message (:class:`WriteRefused`), never clamped. A sender who asks for 1.5 on a
motor whose duty cycle stops at 1 has a bug worth seeing, and clamping would
hide it. Booleans are ``true``/``false`` only, integers whole numbers (``3.0``
is taken: JSON from JavaScript has no other), numbers finite, text within its
length, arrays of their exact length.

:meth:`Buffer.write <runtime.buffer.Buffer.write>` in student code is the one
documented exception: it clamps with a ``RuntimeWarning``, as PiE's API does,
because a robot program that computes ``speed * 1.2`` must keep driving at
full speed rather than stop on an exception in the middle of a match.

>>> import ctypes
>>> from runtime.buffer import Parameter
>>> duty = Parameter("duty_cycle", ctypes.c_float, 0, lower=-1.0, upper=1.0, writeable=True)
>>> parse_text(duty, "-0.5"), check_value(duty, 1)
(-0.5, 1.0)
>>> check_value(duty, 1.5)
Traceback (most recent call last):
...
runtime.values.WriteRefused: duty_cycle: 1.5 is out of bounds [-1, 1]
"""

from __future__ import annotations

import ctypes
import json
import math
import struct
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import orjson

from ._core import read_json, short_float32
from .buffer import Buffer, DeviceBufferError, Parameter, _integer_range
from .exception import did_you_mean

__all__ = [
    "ARRAY",
    "BOOL",
    "CHAR",
    "FALSE_WORDS",
    "FLOAT",
    "INTEGER",
    "TEXT",
    "TRUE_WORDS",
    "BufferState",
    "WriteRefused",
    "apply_writes",
    "bounds_of",
    "check_value",
    "check_writes",
    "describe",
    "encode_json",
    "format_bounds",
    "from_json_values",
    "json_values",
    "jsonable",
    "kind_of",
    "parse_text",
    "read_state",
    "short_float",
    "to_wire",
    "type_name",
]


# ---- the classes of ctypes ---------------------------------------------------------------------------

BOOL = "bool"
INTEGER = "integer"
FLOAT = "float"
CHAR = "char"
"""One character (``c_char``)."""
TEXT = "text"
"""A character array: text of at most its length in bytes."""
ARRAY = "array"
"""An array of anything but characters."""

_FLOAT_NAMES = {"f": "float", "d": "double", "g": "longdouble"}
_INTEGER_CODES = frozenset("bBhHiIlLqQ")
_FLOAT32_MAX = 3.4028234663852886e38


def kind_of(ctype: Any) -> str:
    """The class of a ctypes type: :data:`BOOL`, :data:`INTEGER`, :data:`FLOAT`, :data:`CHAR`,
    :data:`TEXT` or :data:`ARRAY` (anything else: its type code, which no surface takes).

    >>> kind_of(ctypes.c_uint8), kind_of(ctypes.c_char * 4), kind_of(ctypes.c_float * 2)
    ('integer', 'text', 'array')
    """
    if isinstance(ctype, type) and issubclass(ctype, ctypes.Array):
        element: Any = ctype._type_
        return TEXT if element is ctypes.c_char else ARRAY
    code = getattr(ctype, "_type_", "")
    if code == "?":
        return BOOL
    if code in _FLOAT_NAMES:
        return FLOAT
    if isinstance(code, str) and code in _INTEGER_CODES:
        return INTEGER
    if code == "c":
        return CHAR
    return str(code)


def type_name(ctype: Any) -> str:
    """The catalog spelling of a ctypes type.

    >>> type_name(ctypes.c_uint8), type_name(ctypes.c_char * 4), type_name(ctypes.c_int16 * 2 * 3)
    ('uint8', 'char[4]', 'int16[2][3]')
    """
    if isinstance(ctype, type) and issubclass(ctype, ctypes.Array):
        lengths = []
        while isinstance(ctype, type) and issubclass(ctype, ctypes.Array):
            lengths.append(ctype._length_)
            ctype = ctype._type_
        return type_name(ctype) + "".join(f"[{length}]" for length in reversed(lengths))
    kind = kind_of(ctype)
    if kind == FLOAT:
        return _FLOAT_NAMES[ctype._type_]
    if kind == INTEGER:
        return f"{'' if ctype._type_.islower() else 'u'}int{ctypes.sizeof(ctype) * 8}"
    if kind in (BOOL, CHAR):
        return kind
    return str(getattr(ctype, "__name__", ctype)).removeprefix("c_")


def bounds_of(param: Parameter) -> tuple[float, float]:
    """The values a scalar parameter takes: its bounds, within its type's range (integers).

    >>> bounds_of(Parameter("n", ctypes.c_uint8, 0, lower=-math.inf, upper=100))
    (0, 100)
    """
    ctype: Any = param.platform_type
    return _scalar_bounds(ctype, param.lower, param.upper)


def _scalar_bounds(ctype: Any, lower: float, upper: float) -> tuple[float, float]:
    if kind_of(ctype) == INTEGER:
        low, high = _integer_range(ctype)
        return max(low, lower), min(high, upper)
    return lower, upper


def format_bounds(lower: float, upper: float) -> str:
    """``[lower, upper]`` for bounded parameters, empty when unbounded.

    >>> format_bounds(-1.0, 1.0), format_bounds(0.0, math.inf), format_bounds(-math.inf, math.inf)
    ('[-1, 1]', '[0, inf]', '')
    """
    if lower == -math.inf and upper == math.inf:
        return ""

    def number(bound: float) -> str:
        if math.isinf(bound):
            return "inf" if bound > 0 else "-inf"
        return str(int(bound)) if bound == int(bound) else repr(float(bound))

    return f"[{number(lower)}, {number(upper)}]"


def describe(param: Parameter) -> str:
    """What a parameter takes, in words (for errors and help).

    >>> describe(Parameter("duty_cycle", ctypes.c_float, 0, lower=-1.0, upper=1.0))
    'a number (float) in [-1, 1]'
    >>> describe(Parameter("pair", ctypes.c_int16 * 2, 0))
    '2 integers (int16), as a comma list (1,2) or a JSON list ([1, 2])'
    """
    ctype: Any = param.platform_type
    if kind_of(ctype) in (ARRAY, TEXT):
        return _describe_type(ctype)
    bounds = format_bounds(*bounds_of(param)) if param.numeric else ""
    return _describe_type(ctype) + (f" in {bounds}" if bounds else "")


def _describe_type(ctype: Any) -> str:
    kind = kind_of(ctype)
    if kind == TEXT:
        return f"text of at most {ctype._length_} bytes"
    if kind == ARRAY:
        dims = [ctype._length_]
        element = ctype._type_
        while issubclass(element, ctypes.Array):
            dims.append(element._length_)
            element = element._type_
        items = _describe_items(element)
        if len(dims) == 1:
            example = [str(index + 1) for index in range(min(dims[0], 3))]
            comma, listed = ",".join(example), ", ".join(example)
            return f"{dims[0]} {items}, as a comma list ({comma}) or a JSON list ([{listed}])"
        return f"a {'x'.join(map(str, dims))} JSON list of lists of {items}"
    if kind == BOOL:
        return "true or false"
    if kind == FLOAT:
        return f"a number ({type_name(ctype)})"
    if kind == INTEGER:
        return f"an integer ({type_name(ctype)})"
    if kind == CHAR:
        return "one character"
    return f"a {type_name(ctype)}"


def _describe_items(ctype: Any) -> str:
    kind = kind_of(ctype)
    if kind == BOOL:
        return "bools (true or false)"
    if kind == FLOAT:
        return f"numbers ({type_name(ctype)})"
    if kind == INTEGER:
        return f"integers ({type_name(ctype)})"
    return f"values ({type_name(ctype)})"


# ---- taking values ------------------------------------------------------------------------------------


class WriteRefused(DeviceBufferError, ValueError):
    """A value a parameter does not take, or a parameter that takes none: nothing was written.

    The message is ``<param>: <problem>``; :attr:`problem` is the part after
    the name, for a surface that names the parameter itself.
    """

    def __init__(self, param: str, problem: str, /, **context: Any) -> None:
        super().__init__(f"{param}: {problem}", param=param, **context)

    def __str__(self) -> str:
        return self.message  # it names the parameter and the value already

    @property
    def param(self) -> str:
        """The parameter's name."""
        return str(self.context.get("param", ""))

    @property
    def problem(self) -> str:
        """Why, without the parameter's name."""
        return self.message.partition(": ")[2]


TRUE_WORDS = frozenset({"true", "1", "yes", "on"})
"""The words (any case) a person types for true."""
FALSE_WORDS = frozenset({"false", "0", "no", "off"})
"""The words (any case) a person types for false."""


def parse_text(param: Parameter, text: str, *, only_writeable: bool = True) -> Any:
    """The value a person typed for ``param``, checked as :func:`check_value` checks it.

    A bool takes :data:`TRUE_WORDS` and :data:`FALSE_WORDS`; an integer decimal,
    ``0x`` hex or ``0b`` binary; a character array the text itself; another
    array a comma list (``1,2,3``) or a JSON list (``[1, 2, 3]``, nested lists
    for arrays of arrays).

    >>> parse_text(Parameter("on", ctypes.c_bool, 0, writeable=True), "TRUE")
    True
    >>> parse_text(Parameter("n", ctypes.c_uint8, 0, writeable=True), "0x10")
    16
    >>> pair = Parameter("pair", ctypes.c_int16 * 2, 0, writeable=True)
    >>> parse_text(pair, "1, 2"), parse_text(pair, "[4, 5]")
    ([1, 2], [4, 5])

    ``only_writeable=False`` takes a value of a read-only parameter too (a
    device's report of it, as ``runtime msg encode DEV_DATA`` builds).

    Raises:
        WriteRefused: The text is no value the parameter takes (the message
            says what it takes), or the parameter is read-only.
    """
    ctype: Any = param.platform_type
    try:
        kind = kind_of(ctype)
        if kind == TEXT:
            value: Any = text
        elif kind == ARRAY:
            stripped = text.strip()
            if stripped.startswith("["):
                value = json.loads(stripped)
            elif issubclass(ctype._type_, ctypes.Array):
                raise ValueError(text)  # nested arrays only as JSON
            else:
                value = [_scalar_from_text(ctype._type_, item) for item in stripped.split(",")]
        else:
            value = _scalar_from_text(ctype, text)
    except (ValueError, RecursionError):  # json.JSONDecodeError is a ValueError
        raise WriteRefused(param.name, f"{text!r} is not {describe(param)}", value=text) from None
    return check_value(param, value, only_writeable=only_writeable)


def _scalar_from_text(ctype: Any, text: str) -> Any:
    kind = kind_of(ctype)
    word = text.strip()
    if kind == BOOL:
        if word.lower() in TRUE_WORDS:
            return True
        if word.lower() in FALSE_WORDS:
            return False
        raise ValueError(word)
    if kind == FLOAT:
        return float(word)
    if kind == INTEGER:
        try:
            return int(word, 10)
        except ValueError:
            return int(word, 0)  # 0x10, 0b101
    if kind == CHAR:
        return text
    raise ValueError(text)


def check_value(param: Parameter, value: Any, *, only_writeable: bool = True) -> Any:
    """A value a program sent for ``param`` (decoded JSON, or Python values), as ``write()`` takes it.

    Refused rather than clamped (see the module's docstring): a bool takes
    ``True``/``False``; an integer a whole number (an ``int``, or a float with
    no fraction) within its bounds and its type's range; a float a finite
    number within its bounds (and a float32's range); a character array text
    (``str``, UTF-8, or ``bytes``) of at most its length; one character one
    byte; another array a list of exactly its length, each item checked so.

    ``only_writeable=False`` checks a value of a read-only parameter too.

    Raises:
        WriteRefused: The parameter is read-only, or the value does not fit it.
    """
    if only_writeable and not param.writeable:
        raise WriteRefused(param.name, "read-only: nothing writes it but its device", value=_shown(value))
    ctype: Any = param.platform_type
    lower, upper = (param.lower, param.upper) if param.numeric else (-math.inf, math.inf)
    return _check(param.name, ctype, value, lower, upper)


def _check(where: str, ctype: Any, value: Any, lower: float, upper: float) -> Any:
    kind = kind_of(ctype)
    if kind == ARRAY:
        length = ctype._length_
        if not isinstance(value, list | tuple) or len(value) != length:
            raise WriteRefused(where, f"{_shown(value)} is not {_describe_type(ctype)}", value=_shown(value))
        return [
            _check(f"{where}[{index}]", ctype._type_, item, lower, upper) for index, item in enumerate(value)
        ]
    if kind == TEXT:
        data = value.encode("utf-8") if isinstance(value, str) else value
        if not isinstance(data, bytes | bytearray):
            raise WriteRefused(where, f"{_shown(value)} is not text", value=_shown(value))
        if len(data) > ctype._length_:
            raise WriteRefused(
                where, f"{len(data)} bytes of text do not fit {ctype._length_}", value=_shown(value)
            )
        return bytes(data)
    if kind == CHAR:
        data = value.encode("utf-8") if isinstance(value, str) else value
        if not isinstance(data, bytes | bytearray) or len(data) != 1:
            raise WriteRefused(where, f"{_shown(value)} is not one character (one byte)", value=_shown(value))
        return bytes(data)
    if kind == BOOL:
        if not isinstance(value, bool):
            raise WriteRefused(where, f"{_shown(value)} is not true or false", value=_shown(value))
        return value
    if kind not in (INTEGER, FLOAT):
        raise WriteRefused(where, f"values of type {type_name(ctype)} cannot be written")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise WriteRefused(where, f"{_shown(value)} is not a number", value=_shown(value))
    if isinstance(value, float) and not math.isfinite(value):
        raise WriteRefused(where, f"{value!r} is not a finite number", value=value)
    if kind == INTEGER:
        if isinstance(value, float):
            if not value.is_integer():
                raise WriteRefused(where, f"{value!r} is not an integer ({type_name(ctype)})", value=value)
            value = int(value)
    else:
        value = float(value)
    low, high = _scalar_bounds(ctype, lower, upper)
    if not low <= value <= high:
        raise WriteRefused(
            where, f"{_number(value)} is out of bounds {format_bounds(low, high)}", value=value
        )
    if kind == FLOAT and ctype._type_ == "f" and abs(value) > _FLOAT32_MAX:
        raise WriteRefused(where, f"{_number(value)} does not fit a 4-byte float", value=value)
    return value


def _number(value: float) -> str:
    return (
        str(int(value))
        if isinstance(value, float) and value.is_integer() and abs(value) < 1e16
        else repr(value)
    )


def _shown(value: Any) -> str:
    """A value as a message shows it: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_writes(
    buffer_type: type[Buffer], values: Mapping[Any, Any], *, texts: bool = False
) -> dict[str, Any]:
    """Check a batch of writes to a buffer of ``buffer_type``: the values as ``write()`` takes them.

    Every name must be a parameter of the type (a wrong one is refused with
    the closest names) that is writeable, and every value must fit it
    (:func:`check_value`; :func:`parse_text` when ``texts``: the values are
    what a person typed). The first problem refuses the whole batch.

    Raises:
        WriteRefused: A name or value is refused (the message says which and why).
    """
    checked: dict[str, Any] = {}
    for name, value in values.items():
        param = buffer_type.params.get(name) if isinstance(name, str) else None
        if param is None:
            known = buffer_type.params
            hint = did_you_mean(name, known) or f"; it has {', '.join(sorted(known)) or 'none'}"
            raise WriteRefused(
                str(name), f"no such parameter of {buffer_type.type_name}{hint}", value=_shown(value)
            )
        checked[name] = parse_text(param, value) if texts else check_value(param, value)
    return checked


def apply_writes(buffer: Buffer, checked: Mapping[str, Any]) -> None:
    """Write a batch :func:`check_writes` checked, all or none: under one lock, one change for readers.

    Commands (parameters with a safe value) are written first: on a disabled
    robot the first of them is refused before anything else is written.

    Raises:
        DeviceBufferError: The buffer refused (invalid, or the robot disabled
            and a command among the writes): nothing was written.
    """
    params = buffer.params
    order = sorted(checked, key=lambda name: params[name].safe is None)
    with buffer.transaction():
        for name in order:
            buffer.write(name, checked[name])


def to_wire(param: Parameter, value: Any) -> bytes:
    """The wire bytes of a checked value (its platform type, little-endian; text zero-padded)."""
    ctype: Any = param.platform_type
    kind = kind_of(ctype)
    if kind == TEXT:
        return bytes(value).ljust(ctype._length_, b"\0")
    if kind == ARRAY:
        return bytes(ctype(*(_array_item(ctype._type_, item) for item in value)))
    return bytes(ctype(value))


def _array_item(ctype: Any, item: Any) -> Any:
    if issubclass(ctype, ctypes.Array):
        return ctype(*(_array_item(ctype._type_, element) for element in item))
    return item


# ---- reading values -------------------------------------------------------------------------------------


def short_float(value: float) -> float:
    """The shortest decimal that reads back as the same single-precision float.

    Device values are 4-byte floats; shown as doubles they look like
    ``-0.12300000339746475``. This gives ``-0.123``, which converts back to the
    exact same float32, so nothing is lost. Values that are not float32 (and
    NaN and infinities) are returned as they are. The compiled core's
    :func:`runtime._core.short_float32` does it, as it does for every value it
    reads (:func:`read_state`).

    >>> short_float(ctypes.c_float(-0.123).value)
    -0.123
    >>> short_float(0.1)
    0.1
    """
    short = short_float32(value)
    return value if short is None else short


def jsonable(value: Any) -> Any:
    """Convert a parameter value (or a structure of them) into plain JSON data.

    Floats are shortened (:func:`short_float`), non-finite floats become
    ``None`` (JSON has no infinity), ctypes arrays become lists and bytes become
    text (character arrays hold text).
    """
    kind = type(value)  # the usual types first, by identity: this runs per value of every change
    if kind is float:
        return short_float32(value)
    if kind is int or kind is bool or kind is str or value is None:
        return value
    if kind is dict:
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, bool) or isinstance(value, int | str):
        return value
    if isinstance(value, float):
        return short_float32(value)
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, Mapping):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, ctypes.Array | list | tuple | set | frozenset):
        return [jsonable(item) for item in value]
    return str(value)


class BufferState(NamedTuple):
    """What a buffer held at one moment."""

    valid: bool
    values: dict[str, Any] | None
    """Every readable value as plain JSON data (:func:`jsonable`); None when invalid."""
    time: float
    """:func:`time.time` of the values: the device's last update (Smart Devices), else when read."""

    def since(self, previous: float) -> BufferState:
        """This state as :func:`read_state` with ``previous`` gives it: a state read without
        ``previous`` (by :meth:`runtime._core.ChangeFeed.take`) whose time is not after it is
        stamped now (nothing new came from the device)."""
        if self.time > previous:
            return self
        return self._replace(time=max(time.time(), previous))

    def message(self) -> dict[str, Any]:
        """The message of :func:`runtime.schema.buffer_schema`."""
        if self.values is None:
            return {"valid": self.valid}
        return {"valid": self.valid, "values": self.values}


def read_state(buffer: Buffer, previous: float = 0.0) -> BufferState:
    """Read a buffer's values and their time consistently, without taking its lock.

    One call of the compiled core (:func:`runtime._core.read_json`): the
    values and ``last_update`` come from one consistent copy of the buffer
    (the seqlock read; its lock when a writer keeps it busy), converted as
    :func:`json_values` converts them. Their time is
    ``last_update``, unless that is not after ``previous`` (the time of the
    state read before): then nothing new came from the device (the buffer
    turned valid again, say) and the time is now. An invalid buffer (or one
    that turns invalid while being read) gives ``values`` None.
    """
    return BufferState(*read_json(buffer._access, previous))


_CONVERTERS: dict[type[Buffer], Callable[[dict[str, Any]], dict[str, Any]]] = {}


def json_values(buffer_type: type[Buffer], values: dict[str, Any]) -> dict[str, Any]:
    """A snapshot of a buffer of ``buffer_type`` as plain JSON data (changed in place, and returned).

    Floats become the shortest decimal that reads back as the same float32
    (None for NaN and infinities), arrays lists, text ``str``: what
    :func:`jsonable` gives, faster (the conversion of each
    type is worked out once).
    """
    return _converter(buffer_type)(values)


def _converter(buffer_type: type[Buffer]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A fast :func:`jsonable` for a snapshot of this type (it changes it in place)."""
    convert = _CONVERTERS.get(buffer_type)
    if convert is not None:
        return convert
    floats, others = [], []
    for param in buffer_type.params.values():
        if not param.readable:
            continue
        kind = kind_of(param.platform_type)
        if kind == FLOAT:
            floats.append(param.name)
        elif kind not in (BOOL, INTEGER):
            others.append(param.name)  # arrays, characters: the general conversion

    def convert_values(values: dict[str, Any]) -> dict[str, Any]:
        for name in floats:
            values[name] = short_float32(values[name])
        for name in others:
            values[name] = jsonable(values[name])
        return values

    _CONVERTERS[buffer_type] = convert_values
    return convert_values


_FLOAT32 = struct.Struct("<f")
_ENCODE = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
_ENCODE_INDENTED = json.JSONEncoder(indent=2, allow_nan=False).encode


def from_json_values(buffer_type: type[Buffer], values: dict[str, Any]) -> dict[str, Any]:
    """Values read as JSON (from another machine) as a local ``get`` gives them (changed in place).

    JSON carries a float32 as its shortest decimal (:func:`json_values`);
    this gives the very float32 back, so that a remote value compares equal
    to the local one.
    """
    for name in _float32_params(buffer_type) & values.keys():
        if isinstance(values[name], float):
            values[name] = _FLOAT32.unpack(_FLOAT32.pack(values[name]))[0]
    return values


_FLOAT32_PARAMS: dict[type[Buffer], frozenset[str]] = {}


def _float32_params(buffer_type: type[Buffer]) -> frozenset[str]:
    names = _FLOAT32_PARAMS.get(buffer_type)
    if names is None:
        params = buffer_type.params.values()
        names = frozenset(param.name for param in params if param.platform_type is ctypes.c_float)
        _FLOAT32_PARAMS[buffer_type] = names
    return names


def encode_json(data: Any, *, indent: bool = False) -> bytes:
    """Compact JSON (no spaces; NaN and infinities refused), UTF-8: what goes into a message.

    ``indent``: indented by two spaces instead, for a file people read.

    Encoded by orjson (every server encodes one message per change). It writes
    text as UTF-8 where :mod:`json` escapes it (``"é"``, not ``"\\u00e9"``), and
    an exponent without padding (``1e-7``, not ``1e-07``): the same JSON once
    parsed. orjson writes NaN and infinities as ``null``: output holding a
    ``null`` is checked again by :mod:`json`, which refuses them; what orjson
    refuses and :mod:`json` takes (keys that are not text, integers beyond 64
    bits) is encoded by :mod:`json`.

    Raises:
        ValueError: A float is NaN or infinite.
        TypeError: Something is no JSON data.
    """
    try:
        encoded = orjson.dumps(data, option=orjson.OPT_INDENT_2 if indent else None)
    except orjson.JSONEncodeError:  # what json takes and orjson not (keys not text, integers past 64 bits)
        return (_ENCODE_INDENTED if indent else _ENCODE)(data).encode()  # or raises as json does
    if b"null" in encoded:
        _ENCODE(data)  # raises for NaN and infinities (rare: only output with a null is looked at)
    return encoded
