"""What a peer puts, taken safely: JSON within limits, short quotes, checked inputs, rate-limited refusals.

A put from the network (a write, a mode, an input; a Foxglove command) is
parsed only within :data:`MAX_PAYLOAD` bytes and :data:`MAX_DEPTH` levels
(:func:`load_payload`), a refusal quotes at most :data:`QUOTE_LIMIT`
characters of it (:func:`quote`) and is answered at most
:data:`REFUSAL_RATE` times a second per sender (:class:`RefusalLimiter`); an
input's values are checked as :func:`check_input` says. Shared by the client,
the server (``runtime zenoh``) and ``runtime foxglove``.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from ..buffer import DeviceBufferError, Parameter
from ..exception import did_you_mean
from ..student import KEY_NAMES, key_param
from ..values import BOOL, FLOAT, INTEGER, check_value, kind_of

__all__ = [
    "MAX_DEPTH",
    "MAX_PAYLOAD",
    "QUOTE_LIMIT",
    "REFUSAL_BURST",
    "REFUSAL_RATE",
    "REFUSAL_SENDERS",
    "RefusalLimiter",
    "check_input",
    "load_payload",
    "quote",
]


def check_input(kind: str, params: Mapping[str, Parameter], values: object) -> dict[str, bool | float]:
    """The values of an input put (``{name: value, ...}``) as the input buffer's parameters take them.

    What ``runtime zenoh`` checks before it sets any of them (all or none),
    and :meth:`Robot.send_input` before it sends them: every name is a
    parameter of the buffer type (for the keyboard also a key as
    :class:`runtime.student.Keyboard` names it: ``"0"`` is ``digit_0``,
    ``","`` is ``comma``), a button takes true or false, a joystick a finite
    number within its bounds (out of them it is refused, not clamped: a
    driver station that sends 1.5 has a bug worth seeing).

    >>> from runtime.catalog import load
    >>> params = load()["keyboard"].params
    >>> check_input("keyboard", params, {"a": True, ",": False, "digit_1": True})
    {'a': True, 'comma': False, 'digit_1': True}
    >>> check_input("gamepad", load()["gamepad"].params, {"joystick_left_x": 1.5})
    Traceback (most recent call last):
    ...
    runtime.values.WriteRefused: joystick_left_x: 1.5 is out of bounds [-1, 1]

    Raises:
        DeviceBufferError: An unknown name (with the closest known one).
        TypeError: Not an object, or not an input (neither a button nor a number).
        WriteRefused: A value of the wrong type, or a number out of bounds
            (:func:`runtime.values.check_value`: the same answer as a write's).
    """
    if not isinstance(values, Mapping) or not values:
        raise TypeError(f"an input of the {kind} is a JSON object {{name: value, ...}}, not {_short(values)}")
    keyboard = kind == "keyboard"
    checked: dict[str, bool | float] = {}
    for name, value in values.items():
        param = key_param(name) if keyboard and isinstance(name, str) else name
        spec = params.get(param) if isinstance(param, str) else None
        if spec is None:
            if keyboard:
                choices = [key for key in [*params, *KEY_NAMES] if key not in KEY_NAMES.values()]
                hint = did_you_mean(name, choices)
                if isinstance(name, str) and name.lower() != name and name.lower() in params:
                    hint = f" (keys are lower case: {name.lower()!r})"
                problem = f"the keyboard has no key {_short(name)}{hint}"
            else:
                problem = f"the {kind} has no input {_short(name)}{did_you_mean(name, params)}"
            raise DeviceBufferError(problem, param=name)
        if kind_of(spec.platform_type) not in (BOOL, INTEGER, FLOAT):
            raise TypeError(f"{kind} {param} is not an input (neither a button nor a number)")
        checked[param] = check_value(spec, value, only_writeable=False)  # refused, never clamped
    return checked


def _short(value: object, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters (a refusal quotes what it refused, not megabytes)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


MAX_PAYLOAD = 65536
"""The most bytes of JSON a peer's put (a write, a mode, an input) or a Foxglove command may have:
a longer one is refused unread."""
MAX_DEPTH = 32
"""The deepest nesting of arrays and objects in such JSON: a deeper one is refused unparsed."""
QUOTE_LIMIT = 60
"""The most characters of a refused payload that a refusal quotes (an error message, a log line)."""
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_JSON_BRACKET = re.compile(rb"[\[\]{}]")


def load_payload(data: bytes | str, *, limit: int = MAX_PAYLOAD, depth: int = MAX_DEPTH) -> Any:
    """JSON from a peer, parsed only if it is at most ``limit`` bytes and ``depth`` levels deep.

    Why: a put of megabytes or one nested 100 000 deep (``RecursionError`` in
    :func:`json.loads`) must cost the server nothing but a refusal.

    >>> load_payload(b'{"duty_cycle": 0.5}')
    {'duty_cycle': 0.5}
    >>> load_payload(b"[" * 1000 + b"]" * 1000)
    Traceback (most recent call last):
    ...
    ValueError: JSON nested deeper than 32 levels
    >>> load_payload(b'"[[[["')
    '[[[['

    Raises:
        ValueError: Too long, too deep, or not JSON (the message quotes at most
            :data:`QUOTE_LIMIT` characters of it).
    """
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    if len(raw) > limit:
        raise ValueError(f"JSON of at most {limit} bytes, not {len(raw)}")
    level = 0
    for bracket in _JSON_BRACKET.findall(_JSON_STRING.sub(b"", raw)):
        level += 1 if bracket in b"[{" else -1
        if level > depth:
            raise ValueError(f"JSON nested deeper than {depth} levels")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise ValueError(f"not JSON: {quote(raw)}") from None


def quote(value: object, limit: int = QUOTE_LIMIT) -> str:
    """``repr(value)`` cut to ``limit`` characters: a refusal quotes what it refused, not megabytes.

    >>> quote(b"x" * 1000, 12)
    "b'xxxxxxx..."
    """
    if isinstance(value, bytes | bytearray) and len(value) > limit:
        value = bytes(value[:limit])
    elif isinstance(value, str) and len(value) > limit:
        value = value[:limit]
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


REFUSAL_RATE = 5.0
"""Refusals a server answers (publishes, shows, logs) per second to one sender, after a burst of
:data:`REFUSAL_BURST`; more are only counted."""
REFUSAL_BURST = 20
REFUSAL_SENDERS = 1024
"""The senders a :class:`RefusalLimiter` follows at once (the least recently refused is forgotten)."""


class RefusalLimiter:
    """Rate-limits the refusals a server answers, per sender and in all (a flood costs a count).

    Each sender may have :data:`REFUSAL_RATE` refusals a second answered
    (after a burst of :data:`REFUSAL_BURST`), and all senders together ten
    times that: a peer that changes its name for every put gains nothing.
    :meth:`allow` says whether to answer; :attr:`suppressed` counts the others.

    >>> limiter = RefusalLimiter(rate=1.0, burst=2)
    >>> [limiter.allow("peer", now=0.0) for _ in range(3)], limiter.suppressed
    ([True, True, False], 1)
    >>> limiter.allow("peer", now=1.0), limiter.allow("other", now=1.0)
    (True, True)
    """

    def __init__(
        self, rate: float = REFUSAL_RATE, burst: int = REFUSAL_BURST, senders: int = REFUSAL_SENDERS
    ) -> None:
        self.rate, self.burst, self.senders = rate, float(burst), senders
        self._buckets: OrderedDict[object, list[float]] = OrderedDict()
        self._total = [self.burst * 10, -math.inf]
        self.suppressed = 0
        """Refusals not answered since this limiter was made."""
        self.lock = threading.Lock()

    def _take(self, bucket: list[float], rate: float, burst: float, now: float) -> bool:
        tokens = min(burst, bucket[0] + (now - bucket[1]) * rate) if bucket[1] > -math.inf else bucket[0]
        bucket[1] = now
        if tokens < 1.0:
            bucket[0] = tokens
            return False
        bucket[0] = tokens - 1.0
        return True

    def allow(self, sender: object, now: float | None = None) -> bool:
        """Whether to answer a refusal of ``sender``'s (None: an unknown one; they share one budget)."""
        now = time.monotonic() if now is None else now
        with self.lock:
            bucket = self._buckets.pop(sender, None) or [self.burst, -math.inf]
            self._buckets[sender] = bucket
            while len(self._buckets) > self.senders:
                self._buckets.popitem(last=False)
            if self._take(bucket, self.rate, self.burst, now) and self._take(
                self._total, self.rate * 10, self.burst * 10, now
            ):
                return True
            self.suppressed += 1
            return False
