"""JSON descriptions of buffer types: JSON Schemas of their values, and catalog fingerprints.

Tools that publish or record buffers (``runtime foxglove``, ``runtime record``)
describe each buffer type from its catalog entry, so that a viewer knows every
field, its type and its bounds without knowing the robot:

* :func:`value_schema` is the JSON Schema of one parameter's value;
* :func:`buffer_schema` is the JSON Schema of a message carrying a buffer's
  state: ``{"valid": bool, "values": {param: value, ...}}`` (``values`` are the
  readable parameters; absent while the buffer is invalid);
* :func:`write_schema` is the JSON Schema of ``{param: value}`` for the
  writeable parameters (a command, or a recorded write);
* :func:`describe_type` / :func:`describe_catalog` describe types as plain
  JSON data, and :func:`catalog_differences` says in words how two such
  descriptions differ (a recording made with another catalog).

A parameter with a safe value (what the device holds when nobody commands it,
:attr:`runtime.buffer.Parameter.safe`) says so: ``"x-safe"`` in its value
schema, ``"safe"`` in its description; a Smart Device type with a
``command_timeout`` has ``"x-command-timeout"`` in its write schema and
``"command_timeout"`` in its description. Both are absent otherwise.

Values in these messages are plain JSON (:func:`runtime.values.jsonable`):
floats shortest-exact, NaN and infinities as ``null``, arrays as lists,
character arrays as text.

>>> from runtime import load_catalog
>>> schema = buffer_schema(load_catalog()["servo-motor"])
>>> schema["title"]
'runtime.servo-motor'
>>> servo0 = schema["properties"]["values"]["properties"]["servo0"]
>>> {key: value for key, value in servo0.items() if key != "description"}
{'type': 'number', 'minimum': -1.0, 'maximum': 1.0, 'x-safe': 0.0}
>>> servo0["description"]
'float, writeable: position of servo 0: -1 one end of its travel, 1 the other'
>>> buffer_schema(load_catalog()["battery"])["properties"]["values"]["properties"]["v_batt"]["x-unit"]
'V'
>>> describe_type(load_catalog()["battery"])["params"][0]["type"]
'bool'
>>> describe_type(load_catalog()["servo-motor"])["params"][0]["safe"]
0.0
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Iterable, Mapping
from typing import Any

from .buffer import Buffer, DeviceBuffer, Parameter, _integer_range
from .values import ARRAY, BOOL, CHAR, INTEGER, TEXT, kind_of, type_name

__all__ = [
    "SCHEMA_PREFIX",
    "buffer_schema",
    "catalog_differences",
    "describe_catalog",
    "describe_type",
    "value_schema",
    "write_schema",
]

SCHEMA_PREFIX = "runtime."
"""The start of every schema title (``runtime.yogi-bear``, ``runtime.yogi-bear.write``)."""

_NOT_COMPARED = frozenset({"safe", "unit", "description"})
"""Parameter description keys that :func:`catalog_differences` ignores (safety policy and words for
people, not data)."""


def _bound(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _scalar_schema(ctype: Any, lower: float = -math.inf, upper: float = math.inf) -> dict[str, Any]:
    kind = kind_of(ctype)
    if kind == BOOL:
        return {"type": "boolean"}
    if kind == CHAR:
        return {"type": "string", "maxLength": 1}
    if kind == INTEGER:
        low, high = _integer_range(ctype)
        if math.isfinite(lower):
            low = max(low, math.ceil(lower))
        if math.isfinite(upper):
            high = min(high, math.floor(upper))
        return {"type": "integer", "minimum": low, "maximum": high}
    schema: dict[str, Any] = {"type": ["number", "null"]}  # NaN and infinities travel as null
    if math.isfinite(lower):
        schema["minimum"] = float(lower)
    if math.isfinite(upper):
        schema["maximum"] = float(upper)
    if "minimum" in schema or "maximum" in schema:
        schema["type"] = "number"
    return schema


def _array_schema(ctype: Any) -> dict[str, Any]:
    if kind_of(ctype) == TEXT:
        return {"type": "string", "maxLength": ctype._length_}  # character data is text
    element = ctype._type_
    items = _array_schema(element) if kind_of(element) in (TEXT, ARRAY) else _scalar_schema(element)
    return {"type": "array", "items": items, "minItems": ctype._length_, "maxItems": ctype._length_}


def _safe_value(param: Parameter) -> bool | int | float | None:
    """A parameter's safe value as JSON data: ``bool``, ``int`` (integer types), ``float``, or None.

    >>> _safe_value(Parameter("duty", ctypes.c_float, 0, writeable=True, safe=0))
    0.0
    """
    safe = param.safe
    if safe is None or isinstance(safe, bool):
        return safe
    if kind_of(param.platform_type) == INTEGER:
        return int(safe)
    return float(safe)


def _command_timeout(buffer_type: type[Buffer]) -> float | None:
    timeout = getattr(buffer_type, "command_timeout", None) if issubclass(buffer_type, DeviceBuffer) else None
    return None if timeout is None else float(timeout)


def value_schema(param: Parameter) -> dict[str, Any]:
    """The JSON Schema of one parameter's value: its JSON type and, for numbers, its bounds.

    The ``description`` gives the catalog type and the access (``read-only``,
    ``writeable``, ``write-only``), then the catalog's unit and description
    of the parameter when it has them (``x-unit``: the unit alone); ``x-safe``, the safe value of a parameter
    that has one (:attr:`Parameter.safe <runtime.buffer.Parameter.safe>`).
    """
    ctype: Any = param.platform_type
    if issubclass(ctype, ctypes.Array):
        schema = _array_schema(ctype)
    else:
        schema = _scalar_schema(ctype, param.lower, param.upper)
    access = "writeable" if param.writeable and param.readable else "write-only" if param.writeable else ""
    access = access or "read-only"
    schema["description"] = f"{type_name(param.ctype)}, {access}"
    if param.unit:
        schema["description"] += f", in {param.unit}"
        schema["x-unit"] = param.unit
    if param.description:
        schema["description"] += f": {param.description}"
    safe = _safe_value(param)
    if safe is not None:
        schema["x-safe"] = safe
    return schema


def buffer_schema(buffer_type: type[Buffer]) -> dict[str, Any]:
    """The JSON Schema of a buffer's state message: ``{"valid": bool, "values": {...}}``.

    ``values`` holds every readable parameter; it is absent while the buffer is
    invalid (no live producer: the device is not connected).
    """
    values = {param.name: value_schema(param) for param in buffer_type.params.values() if param.readable}
    return {
        "title": SCHEMA_PREFIX + buffer_type.type_name,
        "type": "object",
        "properties": {
            "valid": {
                "type": "boolean",
                "description": "whether the data is live (false: the device is not connected)",
            },
            "values": {"type": "object", "properties": values, "additionalProperties": False},
        },
        "required": ["valid"],
    }


def write_schema(buffer_type: type[Buffer]) -> dict[str, Any]:
    """The JSON Schema of ``{param: value}`` for the writeable parameters (values to send to the device).

    A type with a ``command_timeout`` has it as ``x-command-timeout`` (seconds).
    """
    values = {param.name: value_schema(param) for param in buffer_type.params.values() if param.writeable}
    schema: dict[str, Any] = {
        "title": SCHEMA_PREFIX + buffer_type.type_name + ".write",
        "type": "object",
        "properties": values,
        "additionalProperties": False,
    }
    timeout = _command_timeout(buffer_type)
    if timeout is not None:
        schema["x-command-timeout"] = timeout
    return schema


def describe_type(buffer_type: type[Buffer]) -> dict[str, Any]:
    """A buffer type as plain JSON data: what a catalog says about it (parameters, IDs, types, bounds).

    Two types with the same description have the same values and the same
    layout; infinite bounds are ``None``. A parameter with a safe value has a
    ``safe`` key, a Smart Device type with a command timeout a
    ``command_timeout`` key (seconds); the others have neither. A parameter
    with a unit or a description has ``unit`` or ``description``.
    """
    description: dict[str, Any] = {"smart_device": issubclass(buffer_type, DeviceBuffer)}
    if issubclass(buffer_type, DeviceBuffer):
        description["device_id"] = buffer_type.device_id
    timeout = _command_timeout(buffer_type)
    if timeout is not None:
        description["command_timeout"] = timeout
    description["params"] = [_describe_param(param) for param in buffer_type.params.values()]
    return description


def _describe_param(param: Parameter) -> dict[str, Any]:
    described: dict[str, Any] = {
        "name": param.name,
        "id": param.id,
        "type": type_name(param.ctype),
        "readable": bool(param.readable),
        "writeable": bool(param.writeable),
        "subscribed": bool(param.subscribed),
        "lower": _bound(param.lower),
        "upper": _bound(param.upper),
    }
    safe = _safe_value(param)
    if safe is not None:
        described["safe"] = safe
    for key in ("unit", "description"):
        if getattr(param, key):
            described[key] = getattr(param, key)
    return described


def describe_catalog(
    catalog: Mapping[str, type[Buffer]], types: Iterable[str] | None = None
) -> dict[str, dict[str, Any]]:
    """:func:`describe_type` of every type of a catalog (or of ``types`` only), by type name."""
    names = sorted(catalog) if types is None else sorted(set(types))
    return {name: describe_type(catalog[name]) for name in names}


def catalog_differences(
    recorded: Mapping[str, Any], current: Mapping[str, type[Buffer]], types: Iterable[str] | None = None
) -> list[str]:
    """How the types of ``current`` differ from their descriptions in ``recorded``, in words.

    Only the types named in ``types`` are compared (default: every type of
    ``recorded``). An empty list means that they match. Safe values and
    command timeouts are not compared: they say what the bridge does when
    nobody commands a device, not what a recording holds (and recordings made
    before catalogs had them do not mention them); nor are units and
    descriptions, words for people.

    >>> from runtime import load_catalog
    >>> catalog = load_catalog()
    >>> recorded = describe_catalog(catalog, ["servo-motor"])
    >>> recorded["servo-motor"]["params"][1]["upper"] = 2.0
    >>> catalog_differences(recorded, catalog)
    ['servo-motor: parameter servo1: upper 2.0 in the recording, 1.0 in this catalog']
    """
    problems: list[str] = []
    for name in sorted(recorded if types is None else set(types)):
        was = recorded.get(name)
        if name not in current:
            problems.append(f"{name}: a device type of the recording, not in this catalog")
            continue
        if not isinstance(was, Mapping):
            problems.append(f"{name}: not described in the recording")
            continue
        now = describe_type(current[name])
        for key in ("smart_device", "device_id"):
            if was.get(key) != now.get(key):
                problems.append(
                    f"{name}: {key} {was.get(key)!r} in the recording, {now.get(key)!r} in this catalog"
                )
        old_params = {str(p.get("name")): p for p in was.get("params") or [] if isinstance(p, Mapping)}
        new_params = {p["name"]: p for p in now["params"]}
        for param in sorted(old_params.keys() - new_params.keys()):
            problems.append(f"{name}: parameter {param} is in the recording, not in this catalog")
        for param in sorted(new_params.keys() - old_params.keys()):
            problems.append(f"{name}: parameter {param} is in this catalog, not in the recording")
        for param in sorted(old_params.keys() & new_params.keys()):
            for key, value in new_params[param].items():
                if key not in _NOT_COMPARED and old_params[param].get(key) != value:
                    problems.append(
                        f"{name}: parameter {param}: {key} {old_params[param].get(key)!r} in the recording, "
                        f"{value!r} in this catalog"
                    )
    return problems
