"""How often buffers change, and every change of one: the engines of ``runtime buffers hz`` and ``echo``.

:class:`RateMeter` keeps, per buffer, the times of its last changes (a
window) and says its average rate and the minimum, maximum and standard
deviation of the intervals, as ``ros2 topic hz`` does. :func:`measure` feeds
one from a :class:`runtime.watch.BufferWatcher`: a change wakes it (no
polling); a Smart Device's change is timed by its buffer's ``last_update``
(when the bridge digested the device's data), any other by the clock when it
woke. Changes closer together than a wake-up are counted once.

:func:`changes` yields every change of one buffer, with its time and values,
woken by :meth:`runtime.buffer.Buffer.wait_update`: not sampled (a change
committed while the previous one is read is the next one yielded; changes
committed together count as one).

>>> meter = RateMeter(window=10)
>>> for stamp in (0.0, 0.1, 0.2, 0.3):
...     meter.tick("battery:0x2a", stamp)
>>> rate = meter.rates()[0]
>>> round(rate.rate, 6), rate.count, rate.samples
(10.0, 4, 3)
"""

from __future__ import annotations

import collections
import dataclasses
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from .buffer import Buffer, DeviceBuffer, DeviceBufferError
from .watch import BufferWatcher, Watched

__all__ = ["WAIT_SLICE", "Change", "Rate", "RateMeter", "changes", "measure", "rate_reports"]

WAIT_SLICE = 0.2
"""The longest :func:`changes` sleeps before looking whether it is to stop."""


@dataclasses.dataclass(frozen=True)
class Rate:
    """The update rate of one buffer over its window of changes."""

    key: str
    """``TYPE:0xUID``."""
    count: int
    """Changes counted since measuring began."""
    samples: int
    """Intervals in the window (the rate is over them)."""
    rate: float | None
    """Average changes per second over the window; None before two changes."""
    min: float | None
    """The shortest interval (seconds)."""
    max: float | None
    """The longest interval (seconds)."""
    std: float | None
    """The standard deviation of the intervals (seconds)."""

    def to_json(self) -> dict[str, Any]:
        """Plain JSON data."""
        return dataclasses.asdict(self)

    def line(self) -> str:
        """``KEY: average rate: 50.000 Hz  min: 0.019 s max: 0.021 s std dev: 0.00050 s window: 100``."""
        if self.rate is None:
            return f"{self.key}: no changes yet ({self.count} seen)"
        return (
            f"{self.key}: average rate: {self.rate:.3f} Hz  min: {self.min:.3f} s max: {self.max:.3f} s "
            f"std dev: {self.std:.5f} s window: {self.samples}"
        )


class RateMeter:
    """Times of the last changes of buffers (a window each), and their rates. Thread-safe."""

    def __init__(self, window: int = 100) -> None:
        if window < 1:
            raise ValueError("window must be at least 1 interval")
        self.window = window
        self._lock = threading.Lock()
        self._stamps: dict[str, collections.deque[float]] = {}
        self._counts: dict[str, int] = {}

    def add(self, key: str) -> None:
        """Know a buffer before its first change (it is listed with no rate yet)."""
        with self._lock:
            self._stamps.setdefault(key, collections.deque(maxlen=self.window + 1))
            self._counts.setdefault(key, 0)

    def tick(self, key: str, stamp: float) -> None:
        """One change of ``key`` at ``stamp`` (seconds)."""
        with self._lock:
            self._stamps.setdefault(key, collections.deque(maxlen=self.window + 1)).append(stamp)
            self._counts[key] = self._counts.get(key, 0) + 1

    def rates(self) -> list[Rate]:
        """Every buffer's rate, by key."""
        with self._lock:
            stamps = {key: list(values) for key, values in self._stamps.items()}
            counts = dict(self._counts)
        result = []
        for key in sorted(stamps):
            times = stamps[key]
            intervals = [b - a for a, b in zip(times, times[1:], strict=False)]
            if not intervals:
                result.append(Rate(key, counts.get(key, 0), 0, None, None, None, None))
                continue
            mean = sum(intervals) / len(intervals)
            std = math.sqrt(sum((i - mean) ** 2 for i in intervals) / len(intervals))
            rate = 1 / mean if mean > 0 else math.inf
            result.append(Rate(key, counts[key], len(intervals), rate, min(intervals), max(intervals), std))
        return result


def _stamp(buffer: Buffer) -> float:
    """When the buffer's state changed: a Smart Device's ``last_update``, else (or if none) now."""
    if isinstance(buffer, DeviceBuffer):
        try:
            return buffer.last_update or time.time()
        except DeviceBufferError:  # invalid meanwhile
            return time.time()
    return time.time()


def measure(
    catalog: dict[str, type[Buffer]],
    meter: RateMeter,
    stop: threading.Event,
    *,
    select: Callable[[str, int], bool] | None = None,
) -> BufferWatcher:
    """Count the changes of the namespace's buffers (those ``select`` takes) into ``meter`` until ``stop``.

    Starts a :class:`~runtime.watch.BufferWatcher` in a daemon thread and
    returns it (``failed`` says whether it died). The state of a buffer when
    it appears is no change; its validity changing without new values is none.
    """
    last: dict[str, float] = {}

    def key_of(watched: Watched) -> str:
        return f"{watched.type_name}:{watched.uid:#x}"

    def on_appear(watched: Watched) -> None:
        meter.add(key_of(watched))

    def on_change(watched: Watched) -> None:
        key = key_of(watched)
        stamp = _stamp(watched.buffer)
        if watched.was_valid is None:  # delivered as it appears: its state, not a change
            if isinstance(watched.buffer, DeviceBuffer) and stamp != 0:
                last[key] = stamp
            return
        if not watched.valid or last.get(key) == stamp:
            return
        last[key] = stamp
        meter.tick(key, stamp)

    watcher = BufferWatcher(catalog, on_change=on_change, on_appear=on_appear, select=select)
    threading.Thread(target=watcher.run, args=(stop,), name="runtime-rates", daemon=True).start()
    return watcher


def rate_reports(
    meter: RateMeter,
    stop: threading.Event,
    *,
    every: float = 1.0,
    count: int | None = None,
    duration: float | None = None,
) -> Iterator[list[Rate]]:
    """The meter's rates every ``every`` s until ``stop``, ``count`` reports or ``duration`` s.

    ``stop`` is set when it ends, so that a :func:`measure` watching with it stops.
    """
    end = None if duration is None else time.monotonic() + duration
    reports = 0
    try:
        while not stop.wait(every if end is None else max(0.0, min(every, end - time.monotonic()))):
            yield meter.rates()
            reports += 1
            if (count and reports >= count) or (end is not None and time.monotonic() >= end):
                break
    finally:
        stop.set()


@dataclasses.dataclass(frozen=True)
class Change:
    """One change of a buffer: when, and the values it holds then."""

    time: float
    """A Smart Device's ``last_update`` (:func:`time.time`), or when it was seen for other buffers."""
    values: Mapping[str, Any]


def changes(buffer: Buffer, stop: threading.Event, *, slice_: float = WAIT_SLICE) -> Iterator[Change]:
    """Every change of ``buffer``'s values from now on, until ``stop`` is set.

    Woken by :meth:`~runtime.buffer.Buffer.wait_update`; while the buffer is
    invalid (nobody serves it), it waits for it to be served again.
    """
    while not stop.is_set():
        try:
            if not buffer.wait_update(slice_):
                continue
            with buffer.transaction():
                values = buffer.snapshot()
                stamp = _stamp(buffer)
        except DeviceBufferError:
            if buffer.valid:
                raise
            stop.wait(slice_)  # not served: look again soon
            continue
        yield Change(stamp, values)
