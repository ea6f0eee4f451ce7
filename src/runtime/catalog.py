"""The device catalog: load and check the YAML that describes every peripheral.

The buffer library has no hardcoded knowledge of devices (see
:mod:`runtime.buffer`): a catalog file maps each kebab-case type name to its
Smart Device ``device_id`` (if any), optional timing intervals and its
parameters, and :func:`make_catalog` turns that into
buffer types. The default catalog ships inside the package
(``runtime/catalog.yaml``).

A catalog is written by hand, and a typo in it would otherwise surface much
later, far from its cause (as a ``KeyError`` in ``make_catalog``, a ``ctypes``
error, or a device that silently never answers). :func:`validate` checks the
raw mapping up front and turns the first mistake into one
:class:`~runtime.buffer.CatalogError` whose message names the file, the
device type and the parameter (also kept as ``source``/``device``/``param`` in
its ``context``).

Hostile or mistaken files end the same way, not in a ``RecursionError`` or a
run that eats the machine: a file must be a regular file of at most
:data:`MAX_CATALOG_SIZE` bytes, nested at most :data:`MAX_NESTING` levels deep,
and hold at most :data:`MAX_CATALOG_NODES` values with its aliases expanded.

>>> raw = load_raw()
>>> raw['rfid']['device_id'], raw['rfid']['sub_interval']
(11, 0.1)
>>> [param['name'] for param in raw['rfid']['params']]
['id', 'tag_detect']
"""

from __future__ import annotations

import copy
import ctypes
import errno
import math
import os
import re
import reprlib
import stat
from collections.abc import Hashable, Mapping
from typing import Any, TypeGuard

import yaml

from .buffer import Buffer, CatalogError, DeviceBuffer, Parameter, _integer_range
from .exception import did_you_mean
from .values import FLOAT, kind_of

__all__ = [
    "BASE_TYPES",
    "CATALOG_KEYS",
    "DEVICE_KEYS",
    "MAX_CATALOG_NODES",
    "MAX_CATALOG_SIZE",
    "MAX_NESTING",
    "MAX_SMART_PARAMS",
    "PARAM_KEYS",
    "TEXT_LIMITS",
    "load",
    "device_types",
    "load_raw",
    "make_catalog",
    "validate",
]

DEVICE_KEYS = (
    "device_id", "sub_interval", "write_interval", "heartbeat_interval", "command_timeout", "params",
)  # fmt: skip
"""Keys a device type may have (``params`` is required; ``command_timeout`` on a Smart Device only)."""
PARAM_KEYS = (
    "name",
    "type",
    "id",
    "lower",
    "upper",
    "readable",
    "writeable",
    "subscribed",
    "safe",
    "unit",
    "description",
)
TEXT_LIMITS = {"unit": 16, "description": 120}
"""The longest ``unit`` and ``description`` of a parameter (characters): metadata for people, one line."""
"""Keys a parameter may have (``name`` and ``type`` are required).

``safe`` is the value a Smart Device's writeable parameter must hold when
nobody commands it (a motor's duty cycle 0): a bool parameter's is true or
false, a numeric one's a finite number inside the bounds (a whole number, in
the type's range, for an integer type). Arrays and characters have none.
"""
INTERVAL_KEYS = ("sub_interval", "write_interval", "heartbeat_interval")
FLAG_KEYS = ("readable", "writeable", "subscribed")
BASE_TYPES = frozenset(
    {
        "bool", "char", "wchar", "byte", "ubyte", "short", "ushort", "int", "uint", "long", "ulong",
        "longlong", "ulonglong", "float", "double", "longdouble", "int8", "uint8", "int16", "uint16",
        "int32", "uint32", "int64", "uint64", "size_t", "ssize_t",
    }
)  # fmt: skip
"""Type names a parameter may use: ``ctypes`` simple types without the ``c_`` prefix."""
NON_NUMERIC_TYPES = frozenset({"bool", "char", "wchar"})
"""Base types that take no bounds (besides arrays of any type)."""
MAX_SMART_PARAMS = 16
"""Parameters a Smart Device type may have: they travel as a 16-bit bitmap."""
MAX_DEVICE_ID = 0xFFFF
"""Device IDs are the 16-bit type field of a Smart Device UID."""
MAX_CATALOG_SIZE = 1 << 20
"""Bytes a catalog file may have (1 MiB; the packaged catalog has about 6 KB).

:func:`load` and :func:`load_raw` refuse a larger file, and anything but a
regular file (a device such as ``/dev/zero``, a pipe, a directory), before
parsing it, and never read more than this many bytes plus one: parsing YAML
takes seconds per megabyte, and a catalog is written by hand.
"""
MAX_NESTING = 16
"""Levels of mappings and lists a catalog may nest (it needs 4: types, a type, its params, a param).

Deeper data, including data that contains itself through YAML aliases, is
refused with an error instead of exhausting Python's recursion limit.
"""
MAX_CATALOG_NODES = 100_000
"""Values (mappings, lists and scalars, keys included) a catalog may hold with its YAML aliases expanded.

An alias (``*name``) costs a few bytes of the file but is checked and turned
into buffer types once per use, so a small file could otherwise keep
:func:`validate` busy for minutes; the packaged catalog holds 785 values.
"""

_TYPE_NAME = re.compile(r"[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*")
_PARAM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Like Parameter.parse_ctype: a name, then [n] array sizes; blanks around the parts are tolerated.
_TYPE_SPEC = re.compile(r"\s*(?P<base>[A-Za-z_]\w*)\s*(?P<dims>(?:\[\s*[0-9]+\s*\]\s*)*)")
_DIM = re.compile(r"\[\s*([0-9]+)\s*\]")
_PACKAGED = "catalog.yaml"


class _Where:
    """Where in the catalog a check is: builds errors that say so."""

    def __init__(self, source: str, device: str | None = None, param: str | int | None = None) -> None:
        self.source = source
        self.device = device
        self.param = param

    def at(self, param: str | int) -> _Where:
        return _Where(self.source, self.device, param)

    def describe(self) -> str:
        parts = [self.source]
        if self.device is not None:
            parts.append(f"device type {self.device!r}")
        if isinstance(self.param, int):
            parts.append(f"parameter #{self.param}")
        elif self.param is not None:
            parts.append(f"parameter {self.param!r}")
        return ", ".join(parts)

    def error(self, problem: str, **extra: Any) -> CatalogError:
        """An error saying ``<source>, device type ..., parameter ...: <problem>``."""
        context: dict[str, Any] = {"source": self.source}
        if self.device is not None:
            context["device"] = self.device
        if self.param is not None:
            context["param"] = self.param
        return CatalogError(f"{self.describe()}: {problem}", **context, **extra)


def _show(value: object) -> str:
    """A repr of a (possibly large) value, shortened for an error message."""
    return reprlib.repr(value)


def _suggest(word: object, choices: tuple[str, ...] | frozenset[str]) -> str:
    """A ``did you mean`` hint for a misspelled key or type, or nothing."""
    return did_you_mean(word, choices)


def _check_keys(where: _Where, entry: Mapping[Any, Any], allowed: tuple[str, ...], what: str) -> None:
    for key in entry:
        if key not in allowed:
            raise where.error(
                f"unknown {what} key {_show(key)}{_suggest(key, allowed)}; allowed keys: {', '.join(allowed)}"
            )


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_type(where: _Where, spec: object) -> bool:
    """Check a type specifier like ``Parameter.parse_ctype`` reads it; return whether it takes bounds."""
    if not isinstance(spec, str):
        raise where.error(f"type must be a string such as 'float' or 'uint8[4]', not {_show(spec)}")
    match = _TYPE_SPEC.fullmatch(spec)
    if match is None:
        raise where.error(
            f"malformed type {_show(spec)}: expected a ctypes name without 'c_', optionally followed "
            "by [n] array sizes, e.g. 'uint8[4]'"
        )
    base = match["base"]
    if base not in BASE_TYPES:
        hint = _suggest(base.removeprefix("c_"), BASE_TYPES)
        raise where.error(f"unknown type {base!r}{hint}; known types: {', '.join(sorted(BASE_TYPES))}")
    dims = [int(size) for size in _DIM.findall(match["dims"])]
    if any(size == 0 for size in dims):
        raise where.error(f"array sizes in type {spec!r} must be positive")
    return not dims and base not in NON_NUMERIC_TYPES


def _check_bound(where: _Where, key: str, value: object) -> float:
    if not _is_number(value) or math.isnan(value):
        raise where.error(f"{key} must be a number (write .inf / -.inf for no bound), not {_show(value)}")
    return float(value)


def _check_safe(where: _Where, entry: Mapping[Any, Any], smart: bool, bounds: tuple[float, float]) -> Any:
    """Check a parameter's ``safe`` value; return it normalized (a float for a float type)."""
    value, spec = entry["safe"], entry["type"]
    if not smart:
        raise where.error("safe applies to Smart Device parameters only (a device type with a device_id)")
    if entry.get("writeable") is not True:
        raise where.error("safe applies to writeable parameters only (add writeable: true)")
    match = _TYPE_SPEC.fullmatch(spec)  # _check_type has accepted it
    assert match is not None
    base = match["base"]
    if match["dims"] or base in ("char", "wchar"):
        raise where.error(f"safe applies to bool and numeric scalar types only, not {spec!r}")
    if base == "bool":
        if not isinstance(value, bool):
            raise where.error(f"safe must be true or false for a bool parameter, not {_show(value)}")
        return value
    if not _is_number(value):
        raise where.error(f"safe must be a number for a {base} parameter, not {_show(value)}")
    if not math.isfinite(value):
        raise where.error(f"safe must be a finite number, not {_show(value)}")
    lower, upper = bounds
    ctype: Any = getattr(ctypes, f"c_{base}")
    integers = None if kind_of(ctype) == FLOAT else _integer_range(ctype)
    if integers is not None:
        if not float(value).is_integer():
            raise where.error(f"safe must be a whole number for a {base} parameter, not {_show(value)}")
        value = int(value)
        if not integers[0] <= value <= integers[1]:
            raise where.error(f"safe {value} is outside the range of {base} ({integers[0]}..{integers[1]})")
    else:
        value = float(value)
    if not lower <= value <= upper:
        raise where.error(f"safe {value:g} is out of bounds [{lower:g}, {upper:g}]")
    return value


def _check_param(where: _Where, entry: object, names: set[str], smart: bool = False) -> dict[str, Any]:
    """Check one parameter entry; return a normalized copy (bounds, and a float type's safe, as floats)."""
    if not isinstance(entry, Mapping):
        raise where.error(f"a parameter must be a mapping with 'name' and 'type', not {_show(entry)}")
    name = entry.get("name")
    if isinstance(name, str) and name:
        where = where.at(name)
    _check_keys(where, entry, PARAM_KEYS, "parameter")
    for key in ("name", "type"):
        if key not in entry:
            raise where.error(f"missing required key {key!r}")
    if not isinstance(name, str) or _PARAM_NAME.fullmatch(name) is None:
        raise where.error(f"parameter name must be an identifier such as 'duty_cycle', not {_show(name)}")
    if name in names:
        raise where.error(f"duplicate parameter name {name!r}")
    names.add(name)
    numeric = _check_type(where, entry["type"])
    result = copy.deepcopy(dict(entry))
    if "id" in entry and not _is_int(entry["id"]):
        raise where.error(f"id must be an integer, not {_show(entry['id'])}")
    for flag in FLAG_KEYS:
        if flag in entry and not isinstance(entry[flag], bool):
            raise where.error(f"{flag} must be true or false, not {_show(entry[flag])}")
    bounds = {key: _check_bound(where, key, entry[key]) for key in ("lower", "upper") if key in entry}
    if bounds and not numeric:
        raise where.error(f"bounds (lower/upper) apply to numeric scalar types only, not {entry['type']!r}")
    lower, upper = bounds.get("lower", -math.inf), bounds.get("upper", math.inf)
    if lower > upper:
        raise where.error(f"lower bound {lower} is greater than upper bound {upper}")
    result.update(bounds)
    if "safe" in entry:
        result["safe"] = _check_safe(where, entry, smart, (lower, upper))
    for key, limit in TEXT_LIMITS.items():
        if key not in entry:
            continue
        text = entry[key]
        if not isinstance(text, str) or not text.strip() or not text.isprintable():
            raise where.error(f"{key} must be one line of text, not {_show(text)}")
        if len(text) > limit:
            raise where.error(f"{key} must be at most {limit} characters, not {len(text)}")
    return result


def _check_device(source: str, device: str, entry: object, ids: dict[int, str]) -> dict[str, Any]:
    """Check one device type's entry; return a normalized copy."""
    where = _Where(source, device)
    if not isinstance(entry, Mapping):
        raise where.error(f"a device type must be a mapping with 'params', not {_show(entry)}")
    _check_keys(where, entry, DEVICE_KEYS, "device")
    if "params" not in entry:
        raise where.error("missing required key 'params' (a list, possibly empty)")
    result: dict[str, Any] = {}
    smart = "device_id" in entry
    if smart:
        device_id = entry["device_id"]
        if not _is_int(device_id) or not 0 <= device_id <= MAX_DEVICE_ID:
            raise where.error(f"device_id must be an integer in 0..{MAX_DEVICE_ID}, not {_show(device_id)}")
        if device_id in ids:
            raise where.error(f"device_id {device_id} is already used by device type {ids[device_id]!r}")
        ids[device_id] = device
        result["device_id"] = device_id
    for key in INTERVAL_KEYS:
        if key in entry:
            value = entry[key]
            if not _is_number(value) or not 0 < value < math.inf:
                raise where.error(f"{key} must be a positive number of seconds, not {_show(value)}")
            result[key] = float(value)
    if "command_timeout" in entry:
        value = entry["command_timeout"]
        if not smart:
            raise where.error(
                "command_timeout applies to Smart Devices only (a device type with a device_id)"
            )
        if not _is_number(value) or not 0 < value < math.inf:
            raise where.error(f"command_timeout must be a positive number of seconds, not {_show(value)}")
        result["command_timeout"] = float(value)
    params = entry["params"]
    if not isinstance(params, list | tuple):
        raise where.error(f"params must be a list of parameters, not {_show(params)}")
    if smart and len(params) > MAX_SMART_PARAMS:
        raise ValueError(
            f"{where.describe()}: a Smart Device has at most {MAX_SMART_PARAMS} parameters, not {len(params)}"
        )
    names: set[str] = set()
    checked = [_check_param(where.at(position), param, names, smart) for position, param in enumerate(params)]
    seen: dict[int, str] = {}
    limit = MAX_SMART_PARAMS - 1 if smart else None
    for position, param in enumerate(checked):
        param_id: int = param.get("id", position)
        here = where.at(param["name"])
        if param_id < 0 or (limit is not None and param_id > limit):
            allowed = f"0..{limit} on a Smart Device" if limit is not None else "nonnegative"
            raise here.error(f"parameter id {param_id} out of range (must be {allowed})")
        if param_id in seen:
            raise here.error(f"parameter id {param_id} is already used by parameter {seen[param_id]!r}")
        seen[param_id] = param["name"]
    result["params"] = checked
    return {key: result[key] for key in entry}  # Keep the file's key order.


class _TooBig(Exception):
    """Raised by :func:`_measure` as soon as the data is found too deep (``deep``) or too large."""

    def __init__(self, deep: bool) -> None:
        super().__init__()
        self.deep = deep


def _measure(value: object, levels: int, sizes: dict[int, tuple[int, int]]) -> tuple[int, int]:
    """The nesting depth and the number of values of ``value`` (keys included), aliases expanded.

    A container seen before (a YAML alias) is not walked again: ``sizes``
    remembers each one's result by ``id``, so the walk takes time in proportion
    to the data in memory, not to its expansion. Recursion stops ``levels``
    deep, which also ends the walk of a container nested in itself.

    Raises:
        _TooBig: Deeper than ``levels``, or more than :data:`MAX_CATALOG_NODES` values.
    """
    if isinstance(value, Mapping):
        children: list[object] = [*value.keys(), *value.values()]
    elif isinstance(value, list | tuple | set | frozenset):
        children = list(value)
    else:
        return 0, 1
    known = sizes.get(id(value))
    if known is None:
        if levels == 0:
            raise _TooBig(deep=True)
        depth, count = 0, 1
        for child in children:
            child_depth, child_count = _measure(child, levels - 1, sizes)
            depth, count = max(depth, child_depth), count + child_count
            if count > MAX_CATALOG_NODES:
                raise _TooBig(deep=False)
        known = sizes[id(value)] = (depth + 1, count)
    if known[0] > levels:
        raise _TooBig(deep=True)
    return known


def _check_shape(where: _Where, raw: object) -> None:
    """Refuse data too deep (:data:`MAX_NESTING`) or too large (:data:`MAX_CATALOG_NODES`) to check."""
    try:
        _measure(raw, MAX_NESTING, {})
    except _TooBig as exc:
        if exc.deep:
            raise where.error(_too_deep(), limit=MAX_NESTING) from None
        raise where.error(
            f"too many values: more than {MAX_CATALOG_NODES} keys, values and list items, counting "
            "what each YAML alias (*name) repeats (the packaged catalog has 785)",
            limit=MAX_CATALOG_NODES,
        ) from None


def _too_deep() -> str:
    return (
        f"mappings and lists nested more than {MAX_NESTING} levels deep, or inside themselves "
        "(a catalog needs 4: types, a type, its params, a parameter)"
    )


def validate(raw: object, source: str = "<catalog>") -> dict[str, dict[str, Any]]:
    """Check a raw catalog mapping (as read from YAML) and return a normalized deep copy.

    The input is never mutated. The copy has plain ``dict``/``list`` containers,
    intervals, ``command_timeout``, bounds and the ``safe`` values of float
    parameters as ``float`` (an integer parameter's ``safe`` as ``int``), and no keys added: defaults (flags,
    bounds, positional IDs) are left for ``BufferStore.make_catalog`` to apply.

    Raises:
        CatalogError: On the first mistake found; its message names
            ``source``, the device type and the parameter (``context`` keys
            ``source``, ``device``, ``param``, where applicable).
        ValueError: If a Smart Device (one with a ``device_id``) has more than
            16 parameters, which its 16-bit parameter bitmaps cannot address.

    Data nested more than :data:`MAX_NESTING` levels deep (or inside itself),
    or holding more than :data:`MAX_CATALOG_NODES` values once YAML aliases are
    expanded, is refused first, with a :class:`~runtime.buffer.CatalogError`.
    """
    top = _Where(source)
    _check_shape(top, raw)
    if raw is None:
        raise top.error("the catalog is empty")
    if not isinstance(raw, Mapping):
        raise top.error(f"a catalog must be a mapping of device type names to devices, not {_show(raw)}")
    ids: dict[int, str] = {}
    result: dict[str, dict[str, Any]] = {}
    for name, entry in raw.items():
        if not isinstance(name, str) or _TYPE_NAME.fullmatch(name) is None:
            raise top.error(
                f"device type names must be kebab-case strings such as 'yogi-bear', not {_show(name)}"
            )
        result[name] = _check_device(source, name, entry, ids)
    return result


_SafeLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: ~15x faster


class _StrictLoader(_SafeLoader):  # type: ignore[misc]
    """``yaml.SafeLoader`` that rejects duplicate mapping keys instead of keeping the last one.

    On libyaml's parser where PyYAML was built with it (the catalog loads in a
    few milliseconds: ``runtime disable`` starts fast), else the pure-Python one.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[Hashable] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, Hashable):
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"duplicate key {key!r}",
                        key_node.start_mark,
                    )
                seen.add(key)
        mapping: dict[Hashable, Any] = super().construct_mapping(node, deep=deep)
        return mapping


def _read_file(where: _Where) -> bytes:
    """The bytes of a catalog file: a regular file of at most :data:`MAX_CATALOG_SIZE` bytes.

    Opened without blocking (a FIFO without a writer would hang ``open``), then
    checked with ``fstat`` on the open file; at most ``MAX_CATALOG_SIZE + 1``
    bytes are ever read.

    Raises:
        OSError: Cannot open or read it, or it is not a regular file.
        CatalogError: It is larger than :data:`MAX_CATALOG_SIZE` (``context``
            has ``size``, when known, and ``limit``).
    """
    descriptor = os.open(where.source, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    try:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            code = errno.EISDIR if stat.S_ISDIR(info.st_mode) else errno.EINVAL
            raise OSError(code, f"not a regular file but {_file_kind(info.st_mode)}", where.source)
        if info.st_size > MAX_CATALOG_SIZE:
            raise _too_large(where, f"{info.st_size} bytes", size=info.st_size)
        file = open(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise
    with file:
        data = file.read(MAX_CATALOG_SIZE + 1)
    if len(data) > MAX_CATALOG_SIZE:  # it grew since fstat
        raise _too_large(where, f"more than {MAX_CATALOG_SIZE} bytes")
    return data


def _too_large(where: _Where, shown: str, **context: Any) -> CatalogError:
    return where.error(
        f"the catalog file is too large: {shown}, the limit is {MAX_CATALOG_SIZE} bytes "
        f"({MAX_CATALOG_SIZE >> 20} MiB)",
        **context,
        limit=MAX_CATALOG_SIZE,
    )


def _file_kind(mode: int) -> str:
    """``a directory``, ``a character device``... for a file that is not a regular one."""
    kinds = (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a pipe"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((kind for test, kind in kinds if test(mode)), "a special file")


def _read(path: str | os.PathLike[str] | None) -> tuple[object, str]:
    """Read and parse a catalog file; return the raw data and the source name for messages."""
    packaged = os.path.join(os.path.dirname(os.path.abspath(__file__)), _PACKAGED)  # beside this module
    where = _Where(packaged if path is None else os.fspath(path))
    try:
        data = _read_file(where)
    except OSError as exc:
        raise where.error(f"cannot read device catalog: {exc.strerror or exc}") from exc
    try:
        return yaml.load(data, Loader=_StrictLoader), where.source  # safe_load, minus duplicate keys.
    except RecursionError:
        raise where.error(_too_deep(), limit=MAX_NESTING) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = ": ".join(part for part in (exc.context, exc.problem) if part) or "syntax error"
        if mark is None:
            raise where.error(f"invalid YAML: {problem}") from exc
        at = f"line {mark.line + 1}, column {mark.column + 1}"
        raise where.error(f"invalid YAML at {at}: {problem}", line=mark.line + 1) from exc
    except yaml.YAMLError as exc:
        raise where.error(f"invalid YAML: {exc}") from exc


def load_raw(path: str | os.PathLike[str] | None = None) -> dict[str, dict[str, Any]]:
    """Read and validate a catalog file (the packaged one by default); return the raw mapping.

    Useful for tools and tests that want the catalog's facts without
    generating buffer types.

    Raises:
        DeviceBufferError: If the file cannot be read, is not valid YAML (the
            message gives the line), or fails :func:`validate`.
        ValueError: See :func:`validate`.
    """
    raw, source = _read(path)
    return validate(raw, source=source)


def load(path: str | os.PathLike[str] | None = None) -> dict[str, type[Buffer]]:
    """Load a catalog file (the packaged one by default) into buffer types keyed by type name.

    Smart Devices become :class:`~runtime.buffer.DeviceBuffer` subclasses, the
    others plain :class:`~runtime.buffer.Buffer` subclasses, as
    :func:`make_catalog` makes them.

    Raises:
        DeviceBufferError: As :func:`load_raw`.
        ValueError: See :func:`validate`.
    """
    return make_catalog(load_raw(path))


# ---- buffer types ------------------------------------------------------------------------------------

CATALOG_KEYS = (
    "device_id",
    "sub_interval",
    "write_interval",
    "heartbeat_interval",
    "command_timeout",
    "params",
)
"""The keys a device type of :func:`make_catalog` may have."""


def make_catalog(catalog: Mapping[str, Mapping[str, Any]]) -> dict[str, type[Buffer]]:
    """Generate buffer types from a raw catalog (as :func:`validate` returns it), keyed by type name.

    The raw catalog maps each type name to::

        {
            "device_id": <int>,            # For Smart Devices only
            "sub_interval": <float>,       # Optional
            "write_interval": <float>,     # Optional
            "heartbeat_interval": <float>, # Optional
            "params": [                    # Keyword arguments of ``Parameter``
                {"name": <str>, "type": <str>}
            ]
        }

    Smart Devices (with a ``device_id``) become :class:`~runtime.buffer.DeviceBuffer`
    subclasses, the others :class:`~runtime.buffer.Buffer` subclasses. The input
    is not modified.

    Raises:
        CatalogError: A type or parameter is malformed (names them), has a key
            not in :data:`CATALOG_KEYS`, or two types share a ``device_id``.
        ValueError: A Smart Device has more than 16 parameters.
    """
    result: dict[str, type[Buffer]] = {}
    for type_name, spec in catalog.items():
        if not isinstance(spec, Mapping):
            raise CatalogError("device type must be a mapping", device=type_name)
        unknown = sorted(str(key) for key in spec if key not in CATALOG_KEYS)
        if unknown:
            raise CatalogError(
                f"unknown key {unknown[0]!r}; a device type takes {', '.join(CATALOG_KEYS)}",
                device=type_name,
                key=unknown[0],
            )
        attrs = {key: value for key, value in spec.items() if key != "params"}
        params = [_make_param(type_name, index, raw) for index, raw in enumerate(spec.get("params") or [])]
        base = DeviceBuffer if "device_id" in attrs else Buffer
        result[type_name] = base.make_type(type_name, params, **attrs)
    device_types(result)  # two types with one device_id: refused now
    return result


def device_types(types: Mapping[str, type[Buffer]]) -> dict[int, str]:
    """Each Smart Device ``device_id`` of a catalog's buffer types, mapped to its type name.

    Raises:
        CatalogError: Two types share a ``device_id`` (the message names both).
    """
    result: dict[int, str] = {}
    for type_name, buffer_type in types.items():
        if issubclass(buffer_type, DeviceBuffer) and hasattr(buffer_type, "device_id"):
            other = result.setdefault(buffer_type.device_id, type_name)
            if other != type_name:
                raise CatalogError(
                    "two device types share a device_id",
                    device_id=buffer_type.device_id,
                    types=(other, type_name),
                )
    return result


def _make_param(type_name: str, index: int, raw: Any) -> Parameter:
    if not isinstance(raw, Mapping):
        raise CatalogError("parameter must be a mapping", device=type_name, index=index)
    options = dict(raw)
    name = options.pop("name", None)
    if name is None:
        raise CatalogError("parameter has no name", device=type_name, index=index)
    if "type" not in options:
        raise CatalogError("parameter has no type", device=type_name, param=name)
    try:
        ctype = Parameter.parse_ctype(options.pop("type"))
    except CatalogError as exc:
        raise CatalogError(exc.message, device=type_name, param=name, **exc.context) from None
    param_id = options.pop("id", index)
    try:
        return Parameter(name, ctype, param_id, **options)
    except TypeError as exc:
        raise CatalogError(f"bad parameter options: {exc}", device=type_name, param=name) from None
