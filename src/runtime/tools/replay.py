"""``runtime replay``: play a recording of ``runtime record`` back into buffers, with its timing.

Student code runs against recorded sensor data with no hardware: the replay
creates the recorded buffers (in a namespace of its own by default, printed;
never in one a live process serves, never over an existing buffer:
:meth:`Replayer.prepare`) and becomes their producer, as the bridge would (``serve()``), then stores
each recorded state at its recorded time (scaled by ``--speed``). A Smart
Device's values go in as the bridge puts them (a DEV_DATA message applied with
``update()``: its ``last_update`` is the time of replay, one change per
recorded message); other buffers' with ``set()`` in one transaction. A
recorded disconnect makes the buffer invalid again (``stop_serving()``), a
reconnect valid. Recorded writes are not replayed: nothing here talks to a
device; what the code under test writes stays pending in the buffers.

The files are read as a stream (so a long recording costs little memory,
and a file whose recorder was killed plays up to where it ends), after a
check of the catalog the recording was made with against the one in use:
a device type that differs is refused, with what differs.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import ctypes
import dataclasses
import heapq
import json
import logging
import math
import os
import re
import signal
import stat
import struct
import sys
import threading
import time
import warnings
from array import array
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from ..buffer import Buffer, DeviceBuffer, DeviceBufferError, Parameter
from ..jsonio import jsonable
from ..mcap import METADATA_NAME, RECORDING_FORMAT, parse_topic
from ..messaging import MAX_PAYLOAD, Message
from ..store import BufferStore, namespace_segments
from ._common import CommandError, add_catalog_option, bounded, load_catalog, print_json, stop_on_signals

__all__ = [
    "DESCRIPTION",
    "EPILOG",
    "Recording",
    "RecordedState",
    "Replayer",
    "add_arguments",
    "catalog_damage",
    "iter_states",
    "live_producers",
    "main",
    "open_recording",
    "percentile",
]

logger = logging.getLogger(__name__)

RECORD_SIZE_LIMIT = 256 * 1024 * 1024
"""The largest MCAP record read (a chunk of ``runtime record`` holds half a second): larger is damage."""
SPEEDS = (0.01, 100.0)
"""The slowest and fastest ``--speed``."""
MAX_ERRORS_KEPT = 2_000_000
"""Timing errors kept for the percentiles (16 MB); beyond, the first ones."""
REORDER_WINDOW = 200_000_000
"""Nanoseconds of recorded time within which states are put back in time order before playing.

The recorder writes states in the order it read them; their times are the
devices' (when the bridge stored them), which may be a little out of order
across buffers (a buffer's first state, say, is older than its recording)."""
START_DELAY = 0.02
"""Seconds between the start of a pass and its first state."""
LOOKAHEAD = 1_000_000_000
"""Nanoseconds of recorded time read ahead of the state to play next (when there is time to spare)."""
MAX_AHEAD = 100_000
"""The most states read ahead."""
SPARE_TIME = 0.004
"""Seconds before the next state's time that are enough to read on (a chunk takes a few milliseconds)."""
END_HOLD = 0.25
"""Seconds the last states stay valid after the end of a replay, so that readers see them."""
MAX_SPAN = 366 * 86400
"""The most seconds of recorded time a replay covers (a year): states stamped further apart are damage
(a state stamped 2^64-1 ns would have the replay wait 500 years)."""
LONGEST_WAIT = 60.0
"""The longest single wait for a state (a longer one is waited in parts: any delay is a valid timeout)."""
CLAIM_CHECK = 0.25
"""Seconds between two looks for claims (a bridge that sees a replayed buffer's device connected)
while waiting for the next state."""
MCAP_MAGIC = b"\x89MCAP0\r\n"
_NAMESPACE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,100}")


# ---- reading a recording --------------------------------------------------------------------------


class _Damaged(Exception):
    """The file ends early or is damaged after this point."""


@dataclasses.dataclass(frozen=True)
class RecordedState:
    """One recorded state of one buffer."""

    time: int
    """The log time: nanoseconds since the epoch when the buffer held it."""
    key: tuple[str, int]
    valid: bool
    values: dict[str, Any] | None


@dataclasses.dataclass
class Recording:
    """What :func:`open_recording` learned of a file before playing it."""

    path: str
    metadata: dict[str, str]
    """The ``runtime`` metadata record."""
    catalog: dict[str, Any]
    """The recorded description of the device types (:func:`runtime.schema.describe_catalog`)."""
    keys: set[tuple[str, int]] = dataclasses.field(default_factory=set)
    """The buffers recorded."""
    messages: int = 0
    """Recorded states (writes excluded)."""
    writes: int = 0
    """Recorded writes (not replayed)."""
    start: int | None = None
    end: int | None = None
    """The first and last log time (ns)."""
    indexed: bool = False
    """Whether the file ends with its index (False: the recorder was killed, or the file is cut)."""
    damaged: str | None = None
    """Why reading stopped before the end of the file, if it did."""

    @property
    def seconds(self) -> float:
        """The time the recording spans."""
        if self.start is None or self.end is None:
            return 0.0
        return (self.end - self.start) / 1e9


def _records(path: str, damage: list[str] | None = None) -> Iterator[Any]:
    """Every record of an MCAP file in order, chunks opened; a damaged tail ends it (said in ``damage``).

    Raises:
        CommandError: Not even the first record reads (not an MCAP file).
    """
    from mcap.exceptions import InvalidMagic
    from mcap.stream_reader import StreamReader

    with open(path, "rb") as file:
        records = StreamReader(file, record_size_limit=RECORD_SIZE_LIMIT).records
        try:
            yield next(records)
        except InvalidMagic:
            raise CommandError(
                f"{path} is not an MCAP file (it does not start with the MCAP magic)"
            ) from None
        except Exception as exc:  # noqa: BLE001 - whatever the reader says: not a file we can read
            raise CommandError(f"{path} is not an MCAP file: {_reason(exc)}") from None
        while True:
            try:
                record = next(records)
            except StopIteration:
                return
            except Exception as exc:  # noqa: BLE001 - a truncated or damaged tail: stop there
                if damage is not None:
                    damage.append(_reason(exc))
                return
            yield record


def _reason(exc: BaseException) -> str:
    from mcap.exceptions import EndOfFile

    if isinstance(exc, EndOfFile | struct.error | EOFError):
        return "the file ends in the middle of a record (its recorder was killed?)"
    return str(exc) or type(exc).__name__


def _summary(path: str) -> tuple[dict[str, str] | None, Any] | None:
    """The ``runtime`` metadata and the summary of a file that ends with its index, else None."""
    from mcap.reader import SeekingReader

    try:
        with open(path, "rb") as file:
            reader = SeekingReader(file, record_size_limit=RECORD_SIZE_LIMIT)
            summary = reader.get_summary()
            if summary is None or summary.statistics is None:
                return None
            metadata = next((m.metadata for m in reader.iter_metadata() if m.name == METADATA_NAME), None)
            return metadata, summary
    except Exception:  # noqa: BLE001 - no usable index: the file is read from the start instead
        return None


def open_recording(path: str, catalog: Mapping[str, type[Buffer]]) -> Recording:
    """Read a recording's description, from its index (or all of it, when it has none); check its catalog.

    Raises:
        CommandError: The file cannot be read, is not MCAP, was not made by
            ``runtime record``, or its device types differ from ``catalog``
            (the message says how).
    """
    if os.path.isdir(path):
        raise CommandError(f"cannot read {path}: it is a directory")
    try:
        # Never blocks on a FIFO, never reads a device: a recording is a regular file (a link to one is).
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        with open(fd, "rb") as file:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise CommandError(f"cannot read {path}: it is not a regular file (a FIFO, a device...)")
            empty = not file.read(1)
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror}") from None
    if empty:
        raise CommandError(f"{path} is empty: not an MCAP file")
    with open(path, "rb") as file:
        if file.read(8) != MCAP_MAGIC:
            raise CommandError(f"{path} is not an MCAP file (it does not start with the MCAP magic)")
    next(_records(path))  # an MCAP file at all?
    indexed = _summary(path)
    recording = _from_index(path, *indexed) if indexed is not None else _from_scan(path)
    from ..schema import catalog_differences

    types = {type_name for type_name, _ in recording.keys}
    damaged = catalog_damage(recording.catalog, types)
    if damaged is None:
        try:
            problems = catalog_differences(recording.catalog, catalog, types)
        except (TypeError, ValueError, AttributeError, KeyError, RecursionError) as exc:
            damaged = f"{type(exc).__name__}: {exc}"  # a shape catalog_damage does not know of
    if damaged is not None:
        raise CommandError(f"{path}: the recorded catalog is damaged ({damaged})")
    _check_span(recording)
    if problems:
        more = f" (and {len(problems) - 1} more differences)" if len(problems) > 1 else ""
        raise CommandError(f"{path} was recorded with another catalog: {problems[0]}{more}")
    return recording


def _brief(value: Any) -> str:
    """A recorded JSON value in a few words (for an error line; never the whole of a big one)."""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def catalog_damage(catalog: Mapping[str, Any], types: Iterable[str]) -> str | None:
    """What is wrong with the shape of a recorded catalog's descriptions of ``types``, or None.

    Each one must be what :func:`runtime.schema.describe_type` writes: a
    mapping whose ``params`` is a list of mappings, each with a string
    ``name``. A type the catalog does not describe at all is not damage here
    (:func:`runtime.schema.catalog_differences` says so).

    >>> catalog_damage({"servo-motor": {"params": 5}}, ["servo-motor"])
    "servo-motor: 'params' is 5, not a list"
    """
    for name in sorted(types):
        entry = catalog.get(name)
        if entry is None:
            continue
        if not isinstance(entry, dict):
            return f"{name}: its description is {_brief(entry)}, not a mapping"
        params = entry.get("params")
        if not isinstance(params, list):
            return f"{name}: 'params' is {_brief(params)}, not a list"
        for index, param in enumerate(params):
            if not isinstance(param, dict) or not isinstance(param.get("name"), str):
                return f"{name}: parameter {index} is {_brief(param)}, not a mapping with a name"
    return None


def _check_span(recording: Recording) -> None:
    """Refuse a recording whose first and last states are more than :data:`MAX_SPAN` apart."""
    if recording.start is not None and recording.end is not None and recording.seconds > MAX_SPAN:
        raise CommandError(
            f"{recording.path}: its states are stamped {recording.start} to {recording.end} ns "
            f"({recording.seconds / 86400:.0f} days apart, a replay covers at most {MAX_SPAN // 86400}): "
            "its times are damaged"
        )


def _not_ours(path: str) -> CommandError:
    return CommandError(
        f"{path} was not made by 'runtime record': "
        f"it has no {METADATA_NAME!r} metadata describing the buffers"
    )


def _from_index(path: str, metadata: dict[str, str] | None, summary: Any) -> Recording:
    if metadata is None:
        raise _not_ours(path)
    recording = _describe(path, metadata)
    recording.indexed = True
    statistics = summary.statistics
    for channel_id, channel in summary.channels.items():
        parsed = parse_topic(channel.topic)
        if parsed is None or channel.message_encoding != "json":
            continue
        type_name, uid, write = parsed
        count = statistics.channel_message_counts.get(channel_id, 0)
        if write:
            recording.writes += count
        else:
            recording.keys.add((type_name, uid))
            recording.messages += count
    if statistics.message_count:
        recording.start, recording.end = statistics.message_start_time, statistics.message_end_time
    return recording


def _from_scan(path: str) -> Recording:
    from mcap.records import Channel, Message, Metadata

    damage: list[str] = []
    recording: Recording | None = None
    channels: dict[int, bool] = {}
    for record in _records(path, damage):
        if isinstance(record, Metadata) and record.name == METADATA_NAME and recording is None:
            recording = _describe(path, record.metadata)
        elif recording is None:
            if isinstance(record, Channel | Message):
                break  # data before any description: not a file of ours
        elif isinstance(record, Channel):
            parsed = parse_topic(record.topic)
            if parsed is not None and record.message_encoding == "json":
                type_name, uid, write = parsed
                channels[record.id] = write
                if not write:
                    recording.keys.add((type_name, uid))
        elif isinstance(record, Message) and record.channel_id in channels:
            if channels[record.channel_id]:
                recording.writes += 1
                continue
            recording.messages += 1
            if recording.start is None or record.log_time < recording.start:
                recording.start = record.log_time
            if recording.end is None or record.log_time > recording.end:
                recording.end = record.log_time
    if recording is None:
        if damage:
            raise CommandError(f"{path} is damaged before the description of its buffers: {damage[0]}")
        raise _not_ours(path)
    recording.damaged = damage[0] if damage else None
    return recording


def _describe(path: str, metadata: Mapping[str, str]) -> Recording:
    version = metadata.get("format")
    if version != RECORDING_FORMAT:
        raise CommandError(
            f"{path}: recording format {version!r}, but this version reads {RECORDING_FORMAT!r}"
        )
    try:
        catalog = json.loads(metadata.get("catalog", ""))
        if not isinstance(catalog, dict):
            raise ValueError("not a mapping")
    except RecursionError:
        raise CommandError(f"{path}: the recorded catalog is damaged (nested too deep)") from None
    except ValueError as exc:
        raise CommandError(f"{path}: the recorded catalog is damaged ({exc})") from None
    return Recording(path, dict(metadata), catalog)


def iter_states(path: str, recording: Recording | None = None) -> Iterator[RecordedState]:
    """The recorded states of a file in the order written (writes and other topics skipped).

    A message that does not parse is skipped with a warning; a damaged tail
    ends the iteration (noted in ``recording.damaged``).
    """
    from mcap.records import Channel, Message

    channels: dict[int, tuple[str, int]] = {}
    bad = 0
    damage: list[str] = []
    for record in _records(path, damage):
        if isinstance(record, Channel):
            parsed = parse_topic(record.topic)
            if parsed is not None and not parsed[2] and record.message_encoding == "json":
                channels[record.id] = parsed[0], parsed[1]
        elif isinstance(record, Message):
            key = channels.get(record.channel_id)
            if key is None:
                continue
            try:
                data = json.loads(record.data)
                valid = data["valid"]
                values = data.get("values")
                if not isinstance(valid, bool) or not (values is None or isinstance(values, dict)):
                    raise ValueError("not a state message")
            except (ValueError, KeyError, TypeError, RecursionError):
                bad += 1
                if bad == 1:
                    logger.warning("%s: skipping a message of %s that is not a state", path, key)
                continue
            yield RecordedState(record.log_time, key, valid, values if valid else None)
    if damage and recording is not None:
        recording.damaged = damage[0]


def in_time_order(states: Iterator[RecordedState], window: int = REORDER_WINDOW) -> Iterator[RecordedState]:
    """The states sorted by time, given that none comes more than ``window`` ns after a later one.

    >>> states = [RecordedState(t, ("gamepad", 0), True, None) for t in (5, 3, 9, 7)]
    >>> [state.time for state in in_time_order(iter(states), window=4)]
    [3, 5, 7, 9]
    """
    heap: list[tuple[int, int, RecordedState]] = []
    newest = None
    for index, state in enumerate(states):
        heapq.heappush(heap, (state.time, index, state))
        newest = state.time if newest is None else max(newest, state.time)
        while heap and heap[0][0] < newest - window:
            yield heapq.heappop(heap)[2]
    while heap:
        yield heapq.heappop(heap)[2]


def _pull(source: Iterator[RecordedState], ahead: collections.deque[RecordedState]) -> bool:
    """Move the next state of ``source`` to ``ahead``; False when there is none."""
    state = next(source, None)
    if state is None:
        return False
    ahead.append(state)
    return True


# ---- putting values into buffers ------------------------------------------------------------------


def _python_value(param: Parameter, value: Any) -> Any:
    """A recorded JSON value as the Python value ``set()`` takes (NaN for a null float)."""
    ctype: Any = param.platform_type
    if issubclass(ctype, ctypes.Array):
        if isinstance(value, str):
            return value.encode("utf-8")
        return [_element(ctype._type_, item) for item in value]
    return _element(ctype, value)


def _element(ctype: Any, value: Any) -> Any:
    if isinstance(ctype, type) and issubclass(ctype, ctypes.Array):
        if isinstance(value, str):
            return value.encode("utf-8")
        return [_element(ctype._type_, item) for item in value]
    code = getattr(ctype, "_type_", "")
    if code in ("f", "d", "g"):
        return math.nan if value is None else float(value)
    if code == "c":
        return value.encode("utf-8")[:1] if isinstance(value, str) else value
    return value


def _raw_value(param: Parameter, value: Any) -> bytes:
    """A recorded JSON value as the bytes of the parameter's platform type (no clamping: as recorded)."""
    ctype: Any = param.platform_type
    converted = _python_value(param, value)
    if issubclass(ctype, ctypes.Array):
        if isinstance(converted, bytes):
            return converted[: ctypes.sizeof(ctype)].ljust(ctypes.sizeof(ctype), b"\0")
        return bytes(_array(ctype, converted))
    return bytes(ctype(converted))


def _array(ctype: Any, items: list[Any]) -> Any:
    element = ctype._type_
    if isinstance(element, type) and issubclass(element, ctypes.Array):
        return ctype(*(_array(element, item) for item in items))
    return ctype(*items)


class _DeviceFeeder:
    """Makes the DEV_DATA messages that carry a recorded state of one Smart Device type."""

    def __init__(self, buffer_type: type[DeviceBuffer]) -> None:
        from .msg import TypeLayout

        self.layout = TypeLayout.of(buffer_type)
        self.memory = self.layout.scratch()
        self.params = buffer_type.params

    def messages(self, values: Mapping[str, Any]) -> list[Message]:
        """DEV_DATA messages holding these values (as few as fit a payload each)."""
        messages: list[Message] = []
        mask = size = 0
        for name, value in values.items():
            param = self.params.get(name)
            if param is None or not param.readable:
                continue
            raw = _raw_value(param, value)
            if mask and size + len(raw) > MAX_PAYLOAD - 2:
                messages.append(Message.make_dev_data(mask, self.layout.layout, self.memory))
                mask = size = 0
            offset = self.layout.offsets[param.id]
            self.memory[offset : offset + len(raw)] = raw
            mask |= 1 << param.id
            size += len(raw)
        if mask:
            messages.append(Message.make_dev_data(mask, self.layout.layout, self.memory))
        return messages


def percentile(values: Any, fraction: float) -> float | None:
    """The ``fraction`` quantile (nearest rank) of a sequence of numbers; None when empty."""
    ordered = sorted(values)
    if not ordered:
        return None
    return float(ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))])


def live_producers(catalog: Mapping[str, type[Buffer]], namespace: str) -> dict[int, list[str]]:
    """The live processes that serve a buffer of ``namespace`` (exactly it): pid -> segment names.

    A buffer of the catalog is asked (its producer lock tells a live producer
    from a dead one); a segment of another catalog (or one that does not
    open) counts when the producer pid in its header is a running process.
    """
    store = BufferStore(dict(catalog))
    known = {name: type_name for type_name, _, name in store.find_segments(namespace)}
    found: dict[int, list[str]] = {}
    for entry, last_producer in namespace_segments(namespace):
        pid: int | None = None
        try:
            if entry not in known:
                raise DeviceBufferError("not a buffer of this catalog")
            with catalog[known[entry]].attach(entry, create=False) as buffer:
                pid = buffer.producer_pid
        except DeviceBufferError:
            pid = last_producer if _running(last_producer) else None
        if pid:
            found.setdefault(pid, []).append(entry)
    return found


def _running(pid: int) -> bool:
    """Whether a process of this pid runs (0: none)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's: running
    return True


class Replayer:
    """Play recordings into the buffers of the current namespace (see the module's docstring).

    Args:
        catalog: The device types (checked against each recording's).
        speed: How much faster than recorded (0.5: half speed).
    """

    def __init__(self, catalog: dict[str, type[Buffer]], *, speed: float = 1.0) -> None:
        self.catalog = catalog
        self.speed = speed
        self.store = BufferStore(catalog)
        self.buffers: dict[tuple[str, int], Buffer] = {}
        self.created: list[str] = []
        """Segments this replay made (removed at the end)."""
        self.serving: set[tuple[str, int]] = set()
        self.feeders: dict[str, _DeviceFeeder] = {}
        self.applied = 0
        self.skipped = 0
        """States that could not be stored (a value of the wrong type, say)."""
        self.errors = array("d")
        """Seconds each state was stored after its time (negative: before)."""
        self.passes = 0
        self.repeated = 0
        """States skipped because they repeat the one before (the first of each file of a split recording)."""
        self.last: dict[tuple[str, int], RecordedState] = {}
        self.yielded = 0
        """Buffers given up to a claim (a bridge with the device connected)."""
        self.namespace = BufferStore.namespace()

    def prepare(self, recordings: list[Recording]) -> None:
        """Create every recorded buffer, in a namespace where no live process serves any buffer.

        The replay serves only buffers it creates: never a robot's (a device
        unplugged for a moment would find its buffer taken, its bridge locked
        out for as long as the replay runs), never one left by someone else.

        Raises:
            CommandError: A live process serves a buffer of the namespace (a
                robot's bridge, another replay: the pids are named), or a
                recorded buffer exists already.
        """
        producers = live_producers(self.catalog, self.namespace)
        if producers:
            pids = ", ".join(str(pid) for pid in sorted(producers))
            count = sum(len(names) for names in producers.values())
            raise CommandError(
                f"namespace {self.namespace!r} is live: {'processes' if len(producers) > 1 else 'process'} "
                f"{pids} {'serve' if len(producers) > 1 else 'serves'} {count} of its buffers "
                "(a robot's bridge? another replay?); a replay serves only buffers of its own: "
                "leave out --namespace (a fresh rt-replay-<pid>) or give a new one"
            )
        keys = sorted({key for recording in recordings for key in recording.keys})
        for key in keys:
            try:
                buffer = self.store.get_or_open(key)
            except DeviceBufferError as exc:
                raise CommandError(f"cannot open the buffer {key[0]}:{key[1]:#x}: {exc.message}") from None
            self.buffers[key] = buffer
            if not buffer._created:
                raise CommandError(
                    f"the buffer {key[0]}:{key[1]:#x} exists already in namespace {self.namespace!r} "
                    "(a robot's, or left by a replay that was killed?); a replay serves only buffers it "
                    "creates: leave out --namespace (a fresh rt-replay-<pid>), give a new one, or remove "
                    f"what nobody serves with 'runtime buffers clean --namespace {self.namespace}'"
                )
            self.created.append(buffer.name)
            if isinstance(buffer, DeviceBuffer) and buffer.type_name not in self.feeders:
                self.feeders[buffer.type_name] = _DeviceFeeder(type(buffer))

    def play(self, recordings: list[Recording], stop: threading.Event, *, loop: bool = False) -> None:
        """Store every recorded state at its time (relative to the first), once or until ``stop``.

        Reading the file (a chunk at a time) is done ahead, while there is time
        to spare before the next state, so that it never delays one.
        """
        starts = [recording.start for recording in recordings if recording.start is not None]
        if not starts:
            return
        base = min(starts)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # values as recorded, even out of bounds
            while not stop.is_set():
                self.passes += 1
                origin = time.monotonic() + START_DELAY
                source = in_time_order(
                    state for recording in recordings for state in self._in_span(recording)
                )
                ahead: collections.deque[RecordedState] = collections.deque()
                exhausted = False
                while not stop.is_set():
                    if not ahead:
                        if exhausted or not _pull(source, ahead):
                            break
                    state = ahead[0]
                    due = origin + (state.time - base) / 1e9 / self.speed
                    delay = due - time.monotonic()
                    covered = ahead[-1].time - state.time
                    if (
                        delay > SPARE_TIME
                        and not exhausted
                        and covered < LOOKAHEAD
                        and len(ahead) < MAX_AHEAD
                    ):
                        exhausted = not _pull(source, ahead)
                        continue  # time has passed: look again
                    if delay > 0:
                        if stop.wait(min(delay, LONGEST_WAIT, CLAIM_CHECK)):
                            return
                        self.yield_claimed()
                        if delay > CLAIM_CHECK:
                            continue  # waited a part: look again
                    ahead.popleft()
                    self.apply(state)
                    if len(self.errors) < MAX_ERRORS_KEPT:
                        self.errors.append(time.monotonic() - due)
                if not loop:
                    return

    def _in_span(self, recording: Recording) -> Iterator[RecordedState]:
        """The states of a recording stamped within its span (an index may say otherwise: then skipped)."""
        start, end = recording.start, recording.end
        for state in iter_states(recording.path, recording):
            if start is not None and end is not None and not start <= state.time <= end:
                self.skipped += 1
                if self.skipped == 1:
                    logger.warning(
                        "%s: a state of %s:%#x stamped %d ns, outside the recording's span, skipped",
                        recording.path,
                        *state.key,
                        state.time,
                    )
                continue
            yield state

    def apply(self, state: RecordedState) -> None:
        """Store one recorded state (or invalidity) into its buffer, as its producer."""
        buffer = self.buffers.get(state.key)
        if buffer is None:
            return
        if self.last.get(state.key) == state:
            self.repeated += 1  # a split recording starts each file with the states it had: once is enough
            return
        self.last[state.key] = state
        if not state.valid:
            if state.key in self.serving:
                self.serving.discard(state.key)
                buffer.stop_serving()
            self.applied += 1
            return
        if state.key in self.serving and self._yield(state.key, buffer):
            return
        if state.key not in self.serving:
            buffer.serve()
            self.serving.add(state.key)
        try:
            self._store(buffer, state.values or {})
        except Exception as exc:  # noqa: BLE001 - whatever a hostile value makes ctypes raise: skip the state
            self.skipped += 1
            if self.skipped == 1:
                logger.warning("%s:%#x: a recorded state could not be stored: %s", *state.key, exc)
            return
        self.applied += 1

    def yield_claimed(self) -> None:
        """Give up every served buffer that someone claimed (see :meth:`_yield`)."""
        for key in list(self.serving):
            self._yield(key, self.buffers[key])

    def _yield(self, key: tuple[str, int], buffer: Buffer) -> bool:
        """Give a claimed buffer up for good, logged: True if it was claimed.

        A bridge that sees the buffer's device connected claims it
        (:meth:`Buffer.claim`): the real device wins over the recording. The
        replay stops serving it, plays nothing more into it and leaves the
        segment in place at the end (the bridge serves it now).
        """
        claimant = buffer.claimed
        if claimant is None:
            return False
        with contextlib.suppress(DeviceBufferError):
            buffer.stop_serving()
        self.serving.discard(key)
        del self.buffers[key]
        if buffer.name in self.created:
            self.created.remove(buffer.name)
        self.yielded += 1
        logger.warning(
            "%s:%#x: claimed by process %d (a bridge with the device connected?): no longer replayed",
            *key,
            claimant,
        )
        return True

    def _store(self, buffer: Buffer, values: Mapping[str, Any]) -> None:
        if isinstance(buffer, DeviceBuffer):
            feeder = self.feeders.get(buffer.type_name)
            if feeder is None:
                feeder = self.feeders[buffer.type_name] = _DeviceFeeder(type(buffer))
            messages = feeder.messages(values)
            if len(messages) == 1:
                buffer.update(messages[0])
                return
            with buffer.transaction():
                for message in messages:
                    buffer.update(message)
            return
        with buffer.transaction():
            for name, value in values.items():
                param = buffer.params.get(name)
                if param is not None and param.readable:
                    buffer.set(name, _python_value(param, value))

    def close(self) -> None:
        """Stop serving (the buffers turn invalid), close them and remove the segments made here."""
        for key in list(self.serving):
            with contextlib.suppress(DeviceBufferError):
                self.buffers[key].stop_serving()
        self.serving.clear()
        self.store.close()
        for name in self.created:
            with contextlib.suppress(DeviceBufferError):
                Buffer.unlink(name)

    def summary(self) -> dict[str, Any]:
        """What was played, and how late: the timing error percentiles in milliseconds."""

        def ms(value: float | None) -> float | None:
            return None if value is None else round(value * 1000, 3)

        return {
            "namespace": self.namespace,
            "states": self.applied,
            "skipped": self.skipped,
            "repeated": self.repeated,
            "passes": self.passes,
            "buffers": len(self.buffers) + self.yielded,
            "yielded": self.yielded,
            "timing_error_ms": {
                "p50": ms(percentile(self.errors, 0.5)),
                "p99": ms(percentile(self.errors, 0.99)),
                "max": ms(max(self.errors) if self.errors else None),
            },
        }


# ---- the command ----------------------------------------------------------------------------------

DESCRIPTION = """\
Play recordings of 'runtime record' back into buffers, with the recorded
timing, so that robot code runs against recorded sensor data with no
hardware.

The recorded buffers are created in a namespace of the replay's own
(rt-replay-<pid>, printed; --namespace chooses one, where no live process may
serve any buffer and the recorded buffers may not exist yet: a robot's
buffers are never taken) and served by the replay as the bridge would serve
them: valid while the recorded device was connected, holding each recorded
state at its time (times --speed). Point your code at them with
RUNTIME_BUFFER_NAMESPACE. Several files (a recording split
with --split-size or --split-time) play one after the other. Recorded writes
are not replayed. At the end (or Ctrl-C) the buffers turn invalid and the
segments the replay made are removed.

A bridge started in the replay's namespace that sees a replayed device
connected claims its buffer: the replay gives that buffer up (one line), the
bridge serves it with the live device, and it is left in place at the end.

A file whose recorder was killed plays up to where it ends. A recording made
with another catalog is refused: the device types it uses must be described
the same way (parameters, types, bounds) in the catalog in use. A damaged
recorded catalog, or states stamped more than a year apart, are refused with
one line; a recorded value that cannot be stored is skipped (counted).
"""

EPILOG = """\
examples:
  $ runtime replay robot.mcap                      # prints the namespace to use
  $ runtime replay robot.mcap --speed 2 --loop     # twice as fast, over and over
  $ runtime replay long-001.mcap long-002.mcap     # a split recording
  $ runtime replay robot.mcap --namespace rt-sim --delay 5 --json

Then, in another terminal: RUNTIME_BUFFER_NAMESPACE=rt-replay-<pid> python my_robot.py
(or 'runtime buffers watch --namespace rt-replay-<pid>').
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``runtime replay``."""
    parser.add_argument("inputs", nargs="+", metavar="IN.mcap", help="recordings to play, in order")
    add_catalog_option(parser)
    parser.add_argument(
        "--namespace",
        metavar="NS",
        help="the namespace of the buffers to create (default: rt-replay-<pid>); refused when a live "
        "process serves a buffer there or a recorded buffer exists there already",
    )
    low, high = SPEEDS
    parser.add_argument(
        "--speed",
        type=bounded(float, low, high, unit="times real time"),
        default=1.0,
        metavar="X",
        help=f"play X times as fast as recorded, {low:g} to {high:g} (default 1)",
    )
    parser.add_argument(
        "--loop", action="store_true", help="play again from the start at the end, until Ctrl-C"
    )
    parser.add_argument(
        "--delay",
        type=bounded(float, 0, 3600, unit="seconds"),
        default=0.0,
        metavar="S",
        help="wait S seconds between creating the buffers and playing (time to start your code)",
    )
    parser.add_argument("--json", action="store_true", help="print the summary at the end as JSON")


def main(args: argparse.Namespace) -> int:
    """Run ``runtime replay``."""
    catalog = load_catalog(args.catalog)
    namespace = args.namespace or f"rt-replay-{os.getpid()}"
    if not _NAMESPACE.fullmatch(namespace):
        raise CommandError(f"bad namespace {namespace!r}: letters, digits, '-', '_' and '.' only", code=2)
    recordings = [open_recording(path, catalog) for path in args.inputs]
    for recording in recordings:
        if recording.messages == 0:
            raise CommandError(f"{recording.path} holds no recorded buffer states")
    stamps = [t for recording in recordings for t in (recording.start, recording.end) if t is not None]
    if stamps and (max(stamps) - min(stamps)) / 1e9 > MAX_SPAN:
        raise CommandError(
            f"the recordings span {(max(stamps) - min(stamps)) / 1e9 / 86400:.0f} days: "
            f"a replay covers at most {MAX_SPAN // 86400} (play them one at a time)"
        )
    keys = {key for recording in recordings for key in recording.keys}
    seconds = sum(recording.seconds for recording in recordings)
    files = ", ".join(args.inputs)
    with BufferStore.use_namespace(namespace):
        replayer = Replayer(catalog, speed=args.speed)
        try:
            replayer.prepare(recordings)
            out = sys.stderr if args.json else sys.stdout
            print(
                f"replaying {files}: {len(keys)} buffers, {seconds:.1f} s, into namespace {namespace!r} "
                f"at speed {args.speed:g}{' in a loop' if args.loop else ''}",
                file=out,
                flush=True,
            )
            print(f"  run your code with RUNTIME_BUFFER_NAMESPACE={namespace}", file=out, flush=True)
            for recording in recordings:
                if not recording.indexed:
                    logger.info(
                        "%s has no index (its recorder was killed?): read from the start", recording.path
                    )
            stop = threading.Event()
            with stop_on_signals(stop, signals=(signal.SIGINT, signal.SIGTERM, signal.SIGHUP)):
                if not stop.wait(args.delay):
                    replayer.play(recordings, stop, loop=args.loop)
                    stop.wait(END_HOLD)  # the last states are seen before the buffers turn invalid
        finally:
            replayer.close()
    summary = replayer.summary()
    summary["files"] = args.inputs
    summary["writes_not_replayed"] = sum(recording.writes for recording in recordings)
    damaged = [f"{r.path}: {r.damaged}" for r in recordings if r.damaged]
    summary["damaged"] = damaged
    for line in damaged:
        print(f"runtime replay: warning: {line}; played up to there", file=sys.stderr)
    if args.json:
        print_json(jsonable(summary))
    else:
        timing = summary["timing_error_ms"]
        print(
            f"replayed {summary['states']} states of {summary['buffers']} buffers "
            f"({summary['writes_not_replayed']} recorded writes not replayed); "
            f"timing error p50 {timing['p50']} ms, p99 {timing['p99']} ms",
            flush=True,
        )
    return 0


if __name__ == "__main__":  # python -m runtime.tools.replay ...: the same as runtime replay ...
    from .cli import main as runtime_main

    raise SystemExit(runtime_main(["replay", *sys.argv[1:]]))
