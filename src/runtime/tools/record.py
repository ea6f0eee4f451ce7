"""``runtime record``: every change of every buffer into an MCAP file.

The recorder watches the buffers of the namespace (or those chosen with
``--type``/``--key``) and writes one MCAP message per change:

* topic ``/runtime/<type>/<uid hex>`` (:func:`topic_of`), JSON encoding, the
  JSON Schema of :func:`runtime.schema.buffer_schema`: ``{"valid": bool,
  "values": {...}}``. The message's log time is the buffer's own timestamp
  (``last_update``: when the bridge stored the device's values). A validity change (the device disconnected,
  the bridge died, it came back) is a message too, without ``values``.
* topic ``/runtime/<type>/<uid hex>/write``: what was written to the device
  (``{param: value}``, schema :func:`runtime.schema.write_schema`), as seen
  while pending: best effort, a write the bridge sent before the recorder
  looked is not seen.
* topic ``/log`` (:data:`LOG_TOPIC`): what student code printed, one
  ``foxglove.Log`` message per line (JSON, :func:`log_schema`; Foxglove's Log
  panel shows them), read from the buffer of ``runtime run`` (type ``runner``,
  :class:`StudentLog`) when it is recorded. A recording that starts after the
  runner gets the lines its buffer still holds; lines printed faster than the
  buffer is read are lost, and one warning message says how many.
* metadata ``runtime``: the recording format, the namespace, when it started,
  and the catalog's description of every device type
  (:func:`runtime.schema.describe_catalog`), which ``runtime replay`` checks.

Nothing is polled: one thread per 63 buffers sleeps in
:func:`runtime.notify.wait_any` until a buffer changes; ``/dev/shm`` is
listed every half second for buffers that appear or disappear
(:class:`BufferWatcher`, which ``runtime foxglove`` uses too).

Files are written by the Foxglove SDK's MCAP writer (compiled: a message costs
a couple of microseconds), zstd-compressed, without message index (a chunk
holds half a second: readers find messages by chunk).

Only a regular file is opened (:func:`open_regular`: never through a
symbolic link, never blocking on a FIFO, never a device). A write that fails
(a full disk) ends the recording with one line, the file cut back to its last
flush: what it held then, readable (:class:`McapOutput`).

A killed recorder leaves a readable file: every :data:`FLUSH_INTERVAL` the
chunk in progress is closed and written out followed by a provisional end of
file (a footer without index), which the next write replaces. Readers that
need an index (seeking) fall back to reading such a file from the start, as
the ``mcap`` package and Foxglove do; the clean end (Ctrl-C, SIGTERM,
``--duration``) writes the full index.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
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
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from ..buffer import SHM_DIR, Buffer, DeviceBuffer, DeviceBufferError
from ..exception import RuntimeBaseException
from ..jsonio import jsonable
from ..notify import WATCHED_PER_THREAD, Block, wait_any
from ..store import BufferStore
from ..student import RUNNER_KEY, log_lines_since
from ._common import (
    LONGEST_SECONDS,
    PROG,
    CommandError,
    add_catalog_option,
    add_namespace_option,
    bounded,
    load_catalog,
    stop_on_signals,
    suggest,
)

__all__ = [
    "DESCRIPTION",
    "DISCOVER_INTERVAL",
    "EPILOG",
    "FLUSH_INTERVAL",
    "LOG_TOPIC",
    "METADATA_NAME",
    "RECORDING_FORMAT",
    "BufferState",
    "BufferWatcher",
    "McapOutput",
    "NotRegularFileError",
    "Recorder",
    "StudentLog",
    "Watched",
    "add_arguments",
    "find_segments",
    "log_schema",
    "main",
    "make_filter",
    "not_a_regular_file",
    "open_regular",
    "parse_topic",
    "read_state",
    "say_if_empty",
    "topic_of",
]

logger = logging.getLogger(__name__)

FLUSH_INTERVAL = 0.5
"""Seconds between two writes of the file: a killed recorder loses at most this much (and the write)."""
DISCOVER_INTERVAL = 0.5
"""Seconds between two looks for buffers that appeared or disappeared."""
WAIT_SLICE = 0.2
"""The longest a watcher thread sleeps before looking at its list of buffers again."""
TOPIC_PREFIX = "/runtime"
RECORDING_FORMAT = "runtime-recording/1"
"""The ``format`` of the ``runtime`` metadata record; ``runtime replay`` reads this format."""
METADATA_NAME = "runtime"
"""The name of the MCAP metadata record that describes the recording."""
PROFILE = ""
CHUNK_SIZE = 4 * 1024 * 1024
"""The largest chunk (uncompressed); a chunk is closed at every flush anyway."""
"""The MCAP profile (none: JSON messages with JSON Schemas are understood without one)."""
MAX_SIZE_MB = 1_000_000.0
"""The largest ``--split-size`` (a terabyte)."""


# ---- topics ---------------------------------------------------------------------------------------

_TOPIC = re.compile(r"/runtime/(?P<type>[^/]+)/0x(?P<uid>[0-9a-f]+)(?P<write>/write)?")


def topic_of(type_name: str, uid: int) -> str:
    """The topic of a buffer: ``/runtime/<type>/<uid hex>``.

    >>> topic_of("yogi-bear", 0xA0A0000000000C0FFEE)
    '/runtime/yogi-bear/0xa0a0000000000c0ffee'
    """
    return f"{TOPIC_PREFIX}/{type_name}/{uid:#x}"


def parse_topic(topic: str) -> tuple[str, int, bool] | None:
    """``(type, uid, is_write_topic)`` of a topic of :func:`topic_of` (or its ``/write``), else None.

    >>> parse_topic("/runtime/gamepad/0x0/write"), parse_topic("/other")
    (('gamepad', 0, True), None)
    """
    match = _TOPIC.fullmatch(topic)
    if match is None:
        return None
    return match["type"], int(match["uid"], 16), match["write"] is not None


# ---- reading a buffer -----------------------------------------------------------------------------


class BufferState(NamedTuple):
    """What a buffer held at one moment."""

    valid: bool
    values: dict[str, Any] | None
    """Every readable value as plain JSON data (:func:`runtime.jsonio.jsonable`); None when invalid."""
    time: float
    """:func:`time.time` of the values: the device's last update (Smart Devices), else when read."""

    def message(self) -> dict[str, Any]:
        """The message of :func:`runtime.schema.buffer_schema`."""
        if self.values is None:
            return {"valid": self.valid}
        return {"valid": self.valid, "values": self.values}


def read_state(buffer: Buffer, previous: float = 0.0) -> BufferState:
    """Read a buffer's values and their time consistently, without taking its lock.

    A Smart Device's values are read between two reads of ``last_update``; if
    an update came in between, they are read again. Their time is
    ``last_update``, unless that is not after ``previous`` (the time of the
    state read before): then nothing new came from the device (the buffer
    turned valid again, say) and the time is now. An invalid buffer (or one
    that turns invalid while being read) gives ``values`` None.
    """
    now = time.time()
    convert = _converter(type(buffer))
    try:
        if not isinstance(buffer, DeviceBuffer):
            return BufferState(True, convert(buffer.snapshot()), now)
        for _ in range(3):
            before = buffer.last_update
            values = buffer.snapshot()
            after = buffer.last_update
            if before == after:
                break
        return BufferState(True, convert(values), after if after > previous else max(now, previous))
    except DeviceBufferError:
        if buffer.closed or buffer.valid:
            raise
        return BufferState(False, None, max(now, previous))


_CONVERTERS: dict[type[Buffer], Callable[[dict[str, Any]], dict[str, Any]]] = {}
_SHORT: dict[float, float] = {}
_SHORT_CACHE_SIZE = 4096


def _converter(buffer_type: type[Buffer]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A fast :func:`~runtime.jsonio.jsonable` for a snapshot of this type (it changes it in place)."""
    convert = _CONVERTERS.get(buffer_type)
    if convert is not None:
        return convert
    floats, others = [], []
    for param in buffer_type.params.values():
        if not param.readable:
            continue
        code = getattr(param.platform_type, "_type_", None)
        if code in ("f", "d"):
            floats.append(param.name)
        elif code not in ("?", *"bBhHiIlLqQ"):
            others.append(param.name)  # arrays, characters: the general conversion

    def convert_values(values: dict[str, Any]) -> dict[str, Any]:
        for name in floats:
            values[name] = _short_float(values[name])
        for name in others:
            values[name] = jsonable(values[name])
        return values

    _CONVERTERS[buffer_type] = convert_values
    return convert_values


def _short_float(value: float) -> float | None:
    """:func:`runtime.jsonio.short_float` of a float32 value (None for NaN and infinities), memoized."""
    short = _SHORT.get(value)
    if short is not None:
        return short
    if not math.isfinite(value):
        return None
    # The shortest decimal that reads back as the same float32: six significant digits (trailing zeros
    # dropped) give it whenever six or fewer suffice; more are tried only when needed.
    short = value
    for digits in (6, 7, 8, 9):
        candidate = float(f"{value:.{digits}g}")
        if _FLOAT32.unpack(_FLOAT32.pack(candidate))[0] == value:
            short = candidate
            break
    if len(_SHORT) >= _SHORT_CACHE_SIZE:
        _SHORT.clear()
    _SHORT[value] = short
    return short


_FLOAT32 = struct.Struct("<f")
_ENCODE = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


# ---- what student code prints ----------------------------------------------------------------------

LOG_TOPIC = "/log"
"""The topic of the lines student code printed (``foxglove.Log`` messages), as ``runtime foxglove`` has it."""
LOG_NAME = "student"
"""The ``name`` of those messages (Foxglove's Log panel shows and filters by it)."""
LOG_INFO, LOG_WARNING = 2, 3
"""Levels of ``foxglove.Log``: a printed line; the lines lost."""


def log_schema() -> dict[str, Any]:
    """The JSON Schema of Foxglove's ``foxglove.Log`` message (the fields and levels of Foxglove's own).

    Foxglove knows the messages of a schema of that name (its Log panel shows
    them), whatever the encoding: this one is JSON, as the buffers' topics.
    """
    return {
        "title": "foxglove.Log",
        "description": "A log message",
        "type": "object",
        "properties": {
            "timestamp": {
                "type": "object",
                "title": "time",
                "properties": {
                    "sec": {"type": "integer", "minimum": 0},
                    "nsec": {"type": "integer", "minimum": 0, "maximum": 999_999_999},
                },
                "description": "Timestamp of log message",
            },
            "level": {
                "title": "foxglove.LogLevel",
                "description": "Log level",
                "oneOf": [
                    {"title": title, "const": number}
                    for number, title in enumerate(("UNKNOWN", "DEBUG", "INFO", "WARNING", "ERROR", "FATAL"))
                ],
            },
            "message": {"type": "string", "description": "Log message"},
            "name": {"type": "string", "description": "Process or node name"},
            "file": {"type": "string", "description": "Filename"},
            "line": {"type": "integer", "minimum": 0, "description": "Line number in the file"},
        },
    }


class StudentLog:
    """The lines student code printed, as ``foxglove.Log`` messages, from the states of the runner's buffer.

    One per reader of one ``runner`` buffer (key :data:`runtime.student.RUNNER_KEY`).
    The first state read gives the lines its ``log`` still holds (those before
    were printed before anyone read them: they are not reported lost); each
    later one the lines printed since (:func:`runtime.student.log_lines_since`),
    after a warning that says how many no longer fit in ``log`` when it was read.

    >>> reader = StudentLog()
    >>> [m["message"] for m in reader.messages({"lines": 7, "log": "f\\ng"}, 0.0)]
    ['f', 'g']
    >>> [m["message"] for m in reader.messages({"lines": 11, "log": "j\\nk"}, 0.0)]
    ['2 lines printed were lost (printed faster than read)', 'j', 'k']
    """

    def __init__(self) -> None:
        self.seen: int | None = None
        """The count of lines printed at the last state read (None: none read yet)."""

    def messages(self, values: Mapping[str, Any] | None, stamp: float) -> list[dict[str, Any]]:
        """The messages of the lines printed since the last state read (``values`` of :func:`read_state`).

        ``stamp`` (:func:`time.time`) is their timestamp: when they were read
        (the runner starts each line with the time it was printed). An invalid
        buffer (``values`` None: no runner) gives none.
        """
        if values is None:
            return []
        lines = int(values["lines"])
        log = values["log"]
        new, lost = log_lines_since(self.seen or 0, lines, log)
        if self.seen is None:
            lost = 0
        self.seen = lines
        messages = []
        if lost:
            what = "1 line printed was" if lost == 1 else f"{lost} lines printed were"
            messages.append(_log_message(stamp, LOG_WARNING, f"{what} lost (printed faster than read)"))
        messages.extend(_log_message(stamp, LOG_INFO, line) for line in new)
        return messages


def _log_message(stamp: float, level: int, text: str) -> dict[str, Any]:
    nanoseconds = max(0, int(stamp * 1e9))
    return {
        "timestamp": {"sec": nanoseconds // 1_000_000_000, "nsec": nanoseconds % 1_000_000_000},
        "level": level,
        "message": text,
        "name": LOG_NAME,
        "file": "",
        "line": 0,
    }


# ---- watching the buffers of a namespace ----------------------------------------------------------


@dataclasses.dataclass(eq=False)
class Watched:
    """One buffer a :class:`BufferWatcher` watches, with what the watcher's user keeps about it."""

    type_name: str
    uid: int
    name: str
    """The segment's name."""
    buffer: Buffer
    """The watcher's own handle (it closes it)."""
    inode: int
    valid: bool | None = None
    """The validity when last delivered (read just before the callback; None: not yet)."""
    was_valid: bool | None = None
    """The validity at the delivery before (for a callback to see a change; None: none before)."""
    last_delivery: float = -math.inf
    """:func:`time.monotonic` of the last delivery."""
    due: float | None = None
    """When a change held back by the rate limit is to be delivered (monotonic), else None."""
    data: Any = None
    """Whatever the watcher's user keeps here (a channel, say)."""
    stamp: float = 0.0
    """The time of the last state its user read (for :func:`read_state`'s ``previous``)."""

    @property
    def key(self) -> tuple[str, int]:
        """The store key ``(type, uid)``."""
        return self.type_name, self.uid

    @property
    def topic(self) -> str:
        """The buffer's topic (:func:`topic_of`)."""
        return topic_of(self.type_name, self.uid)


class _Group:
    """A thread sleeping in :func:`~runtime.notify.wait_any` on up to WATCHED_PER_THREAD buffers."""

    def __init__(self, watcher: BufferWatcher, index: int) -> None:
        self.watcher = watcher
        self.lock = threading.Lock()
        self.members: list[Watched] = []
        self.adds: list[Watched] = []
        self.removes: list[Watched] = []
        self.thread = threading.Thread(
            target=self.run, name=f"runtime-watch-{watcher.block}-{index}", daemon=True
        )

    @property
    def load(self) -> int:
        with self.lock:
            return len(self.members) + len(self.adds) - len(self.removes)

    def run(self) -> None:
        watcher = self.watcher
        wanted = watcher.wanted
        try:
            while not watcher.stopping.is_set():
                self._apply_inbox()
                now = time.monotonic()
                # Sleep on the buffers somebody wants and no rate limit holds back; the others are
                # looked at when due, or (validity only) at every round.
                active, due, idle = [], [], []
                for watched in self.members:
                    if watched.due is not None:
                        due.append(watched)
                    elif wanted is None or wanted(watched):
                        active.append(watched)
                    else:
                        idle.append(watched)
                timeout = WAIT_SLICE
                if due:
                    timeout = min(timeout, max(0.0, min(w.due or now for w in due) - now))
                changed: list[Buffer] = []
                if active:
                    try:
                        changed = wait_any([w.buffer for w in active], timeout, block=watcher.block)
                    except DeviceBufferError:  # a handle closed under us: drop it at the next round
                        logger.debug("wait failed", exc_info=True)
                        with self.lock:
                            self.removes.extend(w for w in self.members if w.buffer.closed)
                        watcher.stopping.wait(timeout)  # never a busy loop
                else:
                    watcher.stopping.wait(timeout)
                now = time.monotonic()
                if changed:
                    by_handle = {id(w.buffer): w for w in active}
                    for buffer in changed:
                        watcher._changed(by_handle[id(buffer)], now)
                for watched in due:
                    if watched.due is not None and watched.due <= now:
                        wait_any([watched.buffer], 0, block=watcher.block)  # what it is due for: taken
                        watcher._deliver(watched, now)
                for watched in idle:
                    if watched.buffer.valid != watched.valid:
                        watcher._deliver(watched, now)
        except Exception:
            logger.exception("watching buffers failed")
            watcher.failed = True
            watcher.stopping.set()
        finally:
            for watched in self.members:
                watched.buffer.close()

    def _apply_inbox(self) -> None:
        """Take the buffers added and removed."""
        with self.lock:
            if not self.adds and not self.removes:
                return
            adds, self.adds = self.adds, []
            removes, self.removes = self.removes, []
        for watched in adds:
            self.members.append(watched)
            watched.due = time.monotonic()  # its state now: where a recording of it starts
        for watched in removes:
            if watched in self.members:
                self.members.remove(watched)
                watched.buffer.close()
                self.watcher._gone(watched)


class BufferWatcher:
    """Watch the buffers of the current namespace: call back when one appears, changes or disappears.

    Segments are listed every ``discover_interval`` seconds (the buffers that
    appear and disappear); changes wake a thread sleeping in
    :func:`~runtime.notify.wait_any` (one thread per
    :data:`~runtime.notify.WATCHED_PER_THREAD` buffers), never a poll.
    Callbacks run one at a time (under one lock), from the watcher's threads:

    * ``on_appear(watched)`` before anything else about that buffer;
    * ``on_change(watched)`` with the current state to read: at once when it
      appears, then when its ``block`` changed or its validity did. With
      ``min_interval``, changes of one buffer are delivered at most that often
      (a change within the interval is delivered at its end: the last state
      is never lost, and the buffer is not even looked at meanwhile).
      ``watched.valid`` is the validity read just before the call,
      ``watched.was_valid`` the one of the call before (None the first time);
    * ``on_disappear(watched)`` when its segment is gone (or was replaced).

    Args:
        catalog: The device types (buffers of other types are ignored).
        select: Which ``(type, uid)`` to watch (default: all).
        block: ``"update"`` (values from the device) or ``"write"`` (writes to it).
        namespace: The namespace to watch (default: the current one, when made).
        wanted: Whether a buffer's changes are wanted now (default: always). The
            changes of one that is not are not even waited for: only a change of its
            validity is delivered (noticed within :data:`WAIT_SLICE`).
    """

    def __init__(
        self,
        catalog: dict[str, type[Buffer]],
        *,
        on_change: Callable[[Watched], None],
        on_appear: Callable[[Watched], None] | None = None,
        on_disappear: Callable[[Watched], None] | None = None,
        select: Callable[[str, int], bool] | None = None,
        block: Block = "update",
        min_interval: float = 0.0,
        discover_interval: float = DISCOVER_INTERVAL,
        namespace: str | None = None,
        wanted: Callable[[Watched], bool] | None = None,
    ) -> None:
        self.catalog = catalog
        self.namespace = namespace or BufferStore.namespace()
        self.on_change = on_change
        self.on_appear = on_appear
        self.on_disappear = on_disappear
        self.select = select
        self.block: Block = block
        self.min_interval = min_interval
        self.wanted = wanted
        self.discover_interval = discover_interval
        self.stopping = threading.Event()
        self.failed = False
        """Whether a watcher thread died of an unexpected error (logged)."""
        self.callback_lock = threading.RLock()
        self._known: dict[str, Watched] = {}
        self._groups: list[_Group] = []
        self._refused: set[str] = set()

    # -- what the user calls --

    def run(self, stop: threading.Event) -> None:
        """Watch until ``stop`` is set (or a watcher thread failed); then close everything."""
        try:
            while not stop.is_set() and not self.stopping.is_set():
                self.discover()
                stop.wait(self.discover_interval)
        finally:
            self.stopping.set()
            for group in self._groups:
                if group.thread.is_alive():
                    group.thread.join()

    def watched(self) -> list[Watched]:
        """The buffers being watched now."""
        return list(self._known.values())

    def refresh(self, topic: str, delay: float = 0.0) -> None:
        """Deliver the state of the buffer of this topic again, in ``delay`` s (within :data:`WAIT_SLICE`)."""
        for watched in list(self._known.values()):
            if watched.topic == topic:
                watched.due = time.monotonic() + delay

    def discover(self) -> None:
        """Start watching the buffers that appeared; stop watching those that disappeared."""
        present: dict[str, tuple[str, int]] = {}
        for type_name, uid, name in find_segments(self.catalog, self.namespace):
            if self.select is None or self.select(type_name, uid):
                present[name] = (type_name, uid)
        for name, watched in list(self._known.items()):
            if name not in present or _inode(name) != watched.inode:
                del self._known[name]
                self._group_of(watched, remove=True)
        for name, (type_name, uid) in present.items():
            if name in self._known:
                continue
            attached = self._attach(type_name, uid, name)
            if attached is None:
                continue
            self._known[name] = attached
            with self.callback_lock:
                if self.on_appear is not None:
                    self.on_appear(attached)
            self._group_of(attached)

    # -- inside --

    def _attach(self, type_name: str, uid: int, name: str) -> Watched | None:
        inode = _inode(name)
        try:
            buffer = self.catalog[type_name].attach(name, create=False)
        except DeviceBufferError as exc:
            if name not in self._refused:  # say it once
                self._refused.add(name)
                logger.warning("cannot watch %s: %s", name, exc.message)
            return None
        if inode is None or _inode(name) != inode:  # replaced meanwhile: next time
            buffer.close()
            return None
        self._refused.discard(name)
        return Watched(type_name, uid, name, buffer, inode)

    def _group_of(self, watched: Watched, *, remove: bool = False) -> None:
        if remove:
            for group in self._groups:
                with group.lock:
                    if watched in group.members or watched in group.adds:
                        group.removes.append(watched)
                        return
            return
        chosen = next((g for g in self._groups if g.load < WATCHED_PER_THREAD), None)
        if chosen is None:
            chosen = _Group(self, len(self._groups))
            self._groups.append(chosen)
            chosen.thread.start()
        with chosen.lock:
            chosen.adds.append(watched)

    def _changed(self, watched: Watched, now: float) -> None:
        valid = watched.buffer.valid
        if valid != watched.valid or now - watched.last_delivery >= self.min_interval:
            self._deliver(watched, now)
        elif watched.due is None:
            watched.due = watched.last_delivery + self.min_interval

    def _deliver(self, watched: Watched, now: float) -> None:
        watched.due = None
        watched.last_delivery = now
        watched.was_valid, watched.valid = watched.valid, watched.buffer.valid
        try:
            with self.callback_lock:
                self.on_change(watched)
        except RuntimeBaseException as exc:  # the buffer is stuck (a lock held too long): go on
            logger.warning("%s: %s", watched.name, exc)

    def _gone(self, watched: Watched) -> None:
        if self.on_disappear is not None:
            with self.callback_lock:
                self.on_disappear(watched)


def find_segments(catalog: dict[str, type[Buffer]], namespace: str) -> list[tuple[str, int, str]]:
    """The catalog's segments in ``namespace``: the library's :meth:`BufferStore.find_segments
    <runtime.store.BufferStore.find_segments>`, for a watcher that keeps to its own namespace."""
    return BufferStore(catalog).find_segments(namespace)


def _inode(name: str) -> int | None:
    try:
        return os.stat(os.path.join(SHM_DIR, name)).st_ino
    except OSError:
        return None


# ---- the MCAP file ----------------------------------------------------------------------------------


_KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFLNK: "a symbolic link",
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


def not_a_regular_file(path: str) -> str | None:
    """Why ``path`` is no file for a recording (what it is, in words), or None: missing or a regular file.

    Looked at with ``lstat``: a symbolic link is a link, whatever it points to.

    >>> not_a_regular_file("/dev/null"), not_a_regular_file("/no/such/file")
    ('it is a character device', None)
    """
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode):
        return None
    kind = _KINDS.get(stat.S_IFMT(mode), "not a regular file")
    if stat.S_ISLNK(mode):  # where it points, for the user to give that file itself
        try:
            kind += f" (to {os.readlink(path)})"
        except OSError:
            pass
    return f"it is {kind}"


def open_regular(path: str, *, overwrite: bool = False) -> int:
    """Open ``path`` for writing, only if it is (or becomes) a regular file: its descriptor.

    Never follows a symbolic link (``O_NOFOLLOW``), never blocks (a FIFO
    without reader is not waited for: ``O_NONBLOCK``), never truncates what
    it has not checked: the file is truncated (``overwrite``) only after
    ``fstat`` said it is a regular file. Without ``overwrite`` an existing
    file is refused (``O_EXCL``).

    Raises:
        FileExistsError: The file exists and ``overwrite`` is False.
        OSError: It cannot be opened; ``NotRegularFileError`` when it is not a
            regular file (a symlink, a FIFO, a device, a directory, a socket).
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
    if not overwrite:
        flags |= os.O_EXCL
    else:
        problem = not_a_regular_file(path)  # most are refused without even being opened
        if problem is not None:
            raise NotRegularFileError(path, problem)
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as exc:
        problem = not_a_regular_file(path)  # ELOOP (a link), ENXIO (a FIFO), EISDIR...: say what it is
        if problem is not None and not isinstance(exc, FileExistsError):
            raise NotRegularFileError(path, problem) from None
        raise
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):  # replaced between the look and the open
            raise NotRegularFileError(path, f"it is {_KINDS.get(stat.S_IFMT(mode), 'not a regular file')}")
        os.set_blocking(fd, True)
        if overwrite:
            os.ftruncate(fd, 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


class NotRegularFileError(OSError):
    """The path of a recording is not a regular file (a symlink, a FIFO, a device...): never written."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(errno.EINVAL, f"{problem}; a recording is written only to a regular file", path)
        self.problem = problem


class McapOutput:
    """The file an MCAP writer writes (the SDK's), so that it is readable at every flush.

    What the writer writes is kept in memory; each ``flush()`` (the writer
    closes its chunk first) writes it out at once, followed by a provisional
    end: a DataEnd and a Footer without summary, and the magic. The next flush
    writes over that end. So the file is a complete MCAP file (without index)
    between flushes, and a recorder killed at any time leaves one.

    Only a regular file is opened (:func:`open_regular`). A write that fails
    (a full disk: ``ENOSPC``, a file size limit: ``EFBIG``, ``EIO``) never
    raises here: the file is put back as it was after the last good flush (cut
    there, the provisional end written again: a readable MCAP file without
    index), :attr:`error` says what failed, and whatever comes after is
    dropped. The recorder checks :attr:`error` after each flush.
    """

    def __init__(self, path: str, *, overwrite: bool = False) -> None:
        self.path = path
        self.fd = open_regular(path, overwrite=overwrite)
        self.pending = bytearray()
        self.durable = 0
        """Bytes of the file that stay (the provisional end comes after them)."""
        self.durable_at = time.monotonic()
        """:func:`time.monotonic` of the last flush that wrote out everything."""
        self.closed = False
        self.error: OSError | None = None
        """The write that failed (then nothing more is written), else None."""
        self.restored = False
        """After a failure: whether the file was put back as it was after the last good flush."""
        self.kept = 0
        """After a failure put right: the size of the file (its last good flush, the provisional end)."""
        self._end = self.provisional_end()

    @staticmethod
    def provisional_end() -> bytes:
        """DataEnd, a Footer without summary, and the closing magic: 50 bytes."""
        from mcap.data_stream import RecordBuilder
        from mcap.records import DataEnd, Footer
        from mcap.writer import MCAP0_MAGIC

        builder = RecordBuilder()
        DataEnd(data_section_crc=0).write(builder)
        Footer(summary_start=0, summary_offset_start=0, summary_crc=0).write(builder)
        return bytes(builder.end()) + MCAP0_MAGIC  # type: ignore[no-untyped-call]

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self.error is None:
            self.pending += data
        return len(data)

    def tell(self) -> int:
        return self.durable + len(self.pending)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        """Where the writer is: the only seeks a writer that does not seek makes (else ``OSError``)."""
        position = self.tell()
        if (whence == os.SEEK_CUR and offset == 0) or (whence == os.SEEK_SET and offset == position):
            return position
        raise OSError(f"{self.path}: written front to back, no seeking")

    def flush(self) -> None:
        """Write out what the writer wrote, and the provisional end after it (a failure: :attr:`error`)."""
        if self.closed or self.error is not None:
            return
        try:
            self._write_at(bytes(self.pending) + self._end, self.durable)
        except OSError as exc:
            self._fail(exc)
            return
        self.durable += len(self.pending)
        self.durable_at = time.monotonic()
        self.pending.clear()

    def size(self) -> int:
        """Bytes written out so far."""
        return self.durable

    def close(self) -> None:
        """Write out the rest (the writer finished the file) and close (a failure: :attr:`error`)."""
        if self.closed:
            return
        try:
            if self.error is None:
                self._write_at(bytes(self.pending), self.durable)
                self.durable += len(self.pending)
                self.pending.clear()
                os.ftruncate(self.fd, self.durable)
                os.fsync(self.fd)
        except OSError as exc:
            self._fail(exc)
        finally:
            self.closed = True
            os.close(self.fd)

    def _fail(self, exc: OSError) -> None:
        """Note the failure; cut the file back to its last good flush, with the provisional end after."""
        self.error = exc
        self.pending.clear()
        try:
            os.ftruncate(self.fd, self.durable)  # frees what the failed write took: room for the end
            if self.durable:
                self._write_at(self._end, self.durable)
                self.kept = self.durable + len(self._end)
            self.restored = True
        except OSError:
            logger.debug("%s: cannot put the file back after a failed write", self.path, exc_info=True)

    def _write_at(self, data: bytes, offset: int) -> None:
        view = memoryview(data)
        while view:
            written = os.pwrite(self.fd, view, offset)
            view = view[written:]
            offset += written


# ---- the recorder ---------------------------------------------------------------------------------


class Recorder:
    """Write every change of the watched buffers into MCAP files (see the module's docstring).

    Args:
        catalog: The device types (their descriptions go into the file).
        path: The file; with splitting, ``NAME-001.mcap``, ``NAME-002.mcap``, ...
        select: Which ``(type, uid)`` to record (default: every buffer of the namespace).
        split_size: Start a new file when this one reaches this many bytes.
        split_time: Start a new file after this many seconds.
        overwrite: Replace existing files (else refuse them).
        writes: Also record the writes to the devices.
    """

    def __init__(
        self,
        catalog: dict[str, type[Buffer]],
        path: str,
        *,
        select: Callable[[str, int], bool] | None = None,
        split_size: int | None = None,
        split_time: float | None = None,
        overwrite: bool = False,
        writes: bool = True,
        compression: str = "zstd",
        namespace: str | None = None,
    ) -> None:
        from ..schema import describe_catalog

        self.catalog = catalog
        self.namespace = namespace or BufferStore.namespace()
        self.path = path
        self.split_size = split_size
        self.split_time = split_time
        self.overwrite = overwrite
        self.compression = compression
        self.catalog_json = json.dumps(describe_catalog(catalog), separators=(",", ":"))
        self.lock = threading.RLock()
        self.files: list[str] = []
        """Every file started, in order."""
        self.messages = 0
        self.writes_seen = 0
        self.started = time.time()
        self._file_started = time.monotonic()
        self._states: dict[tuple[str, int], BufferState] = {}
        self._channels: dict[tuple[tuple[str, int], bool], Any] = {}
        self._log_channel: Any = None
        self.keys: set[tuple[str, int]] = set()
        """The buffers recorded."""
        self._context: Any = None
        self._writer: Any = None
        self._output: McapOutput | None = None
        self.watchers = [
            BufferWatcher(
                catalog,
                on_change=self._on_update,
                on_disappear=self._on_disappear,
                select=select,
                namespace=self.namespace,
            )
        ]
        if writes:
            self.watchers.append(
                BufferWatcher(
                    catalog, on_change=self._on_write, select=select, block="write", namespace=self.namespace
                )
            )

    # -- files --

    def file_name(self, index: int) -> str:
        """The name of the ``index``-th file (1-based): ``path`` itself unless splitting."""
        if self.split_size is None and self.split_time is None:
            return self.path
        stem, dot, suffix = self.path.rpartition(".")
        if not dot or "/" in suffix:
            stem, suffix = self.path, "mcap"
        return f"{stem}-{index:03d}.{suffix}"

    def open_file(self) -> None:
        """Start the next file: header, the ``runtime`` metadata, then the state of every buffer known."""
        import foxglove
        from foxglove.mcap import MCAPCompression, MCAPWriteOptions

        from .. import __version__

        name = self.file_name(len(self.files) + 1)
        try:
            output = McapOutput(name, overwrite=self.overwrite)
        except FileExistsError:
            raise CommandError(f"{name} exists; give --force to overwrite it") from None
        except OSError as exc:
            raise CommandError(f"cannot write {name}: {exc.strerror}") from None
        compression = {"zstd": MCAPCompression.Zstd, "lz4": MCAPCompression.Lz4, "none": None}
        options = MCAPWriteOptions(
            compression=compression[self.compression],
            profile=PROFILE,
            chunk_size=CHUNK_SIZE,
            # No message index: 16 bytes per message, as much as a compressed message itself;
            # readers find messages by chunk (each holds half a second).
            emit_message_indexes=False,
            disable_seeking=True,  # a file written once, front to back (McapOutput)
        )
        if self._context is None:
            self._context = foxglove.Context()
        writer = foxglove.open_mcap(output, context=self._context, writer_options=options)
        writer.write_metadata(
            METADATA_NAME,
            {
                "format": RECORDING_FORMAT,
                "namespace": self.namespace,
                "started": repr(self.started),
                "file_index": str(len(self.files) + 1),
                "catalog": self.catalog_json,
                "runtime_version": __version__,
                "writer": f"runtime {__version__} record",
            },
        )
        self._writer, self._output = writer, output
        self.files.append(name)
        self._file_started = time.monotonic()
        for key, state in self._states.items():  # each file replays on its own
            self._add(key, state.message(), state.time)
        self.flush()

    def close_file(self) -> None:
        """Finish the current file (with its index)."""
        writer, output = self._writer, self._output
        self._writer = self._output = None
        if writer is None or output is None:
            return
        try:
            writer.close()
        finally:
            output.close()
        if output.error is not None:
            raise self._write_failed(output)

    def flush(self) -> None:
        """Close the chunk in progress and write it out (the file stays readable).

        Raises:
            CommandError: The file could not be written (a full disk, say): the
                message says what the file keeps.
        """
        with self.lock:
            if self._writer is not None and self._output is not None:
                self._writer.flush()
                if self._output.error is not None:
                    raise self._write_failed(self._output)

    def _write_failed(self, output: McapOutput) -> CommandError:
        """The one-line error of a failed write, saying precisely what the file keeps."""
        error = output.error
        assert error is not None
        reason = error.strerror or str(error)
        code = errno.errorcode.get(error.errno or 0)
        if code:
            reason += f" ({code})"
        if output.durable == 0:
            kept = "nothing was written: it is empty"
        elif output.restored:
            lost = max(0.0, time.monotonic() - output.durable_at)
            kept = (
                f"it keeps what was recorded up to {lost:.1f} s before the error: {output.kept} bytes, "
                "a readable MCAP file without index (as a killed recorder's)"
            )
        else:
            kept = (
                f"its first {output.durable} bytes hold what was recorded until then, "
                "followed by an unfinished write (readers stop there)"
            )
        return CommandError(f"cannot write {output.path}: {reason}; {kept}")

    def tick(self) -> None:
        """Flush; start the next file when the current one is big or old enough."""
        with self.lock:
            if self._output is None:
                return
            self.flush()
            too_big = self.split_size is not None and self._output.size() >= self.split_size
            too_old = self.split_time is not None and time.monotonic() - self._file_started >= self.split_time
            if too_big or too_old:
                self.close_file()
                self.open_file()

    # -- messages --

    def _channel(self, key: tuple[str, int], write: bool) -> Any:
        """The channel of a buffer's states (or writes), made when first used."""
        channel = self._channels.get((key, write))
        if channel is not None:
            return channel
        import foxglove

        from ..schema import buffer_schema, write_schema

        type_name, uid = key
        buffer_type = self.catalog[type_name]
        metadata = {
            "type": type_name,
            "uid": f"{uid:#x}",
            "segment": BufferStore.segment_name(type_name, uid, self.namespace),
        }
        channel = foxglove.Channel(
            topic_of(type_name, uid) + ("/write" if write else ""),
            schema=write_schema(buffer_type) if write else buffer_schema(buffer_type),
            context=self._context,
            metadata=metadata,
        )
        self._channels[key, write] = channel
        return channel

    def _add(
        self, key: tuple[str, int], message: dict[str, Any], stamp: float, *, write: bool = False
    ) -> None:
        if self._writer is None:
            return
        self._channel(key, write).log(_ENCODE(message).encode(), log_time=max(0, int(stamp * 1e9)))
        self.messages += 1
        self.keys.add(key)

    def _add_log(self, message: dict[str, Any], stamp: float) -> None:
        """A line student code printed (or the lines lost), on :data:`LOG_TOPIC`."""
        if self._writer is None:
            return
        if self._log_channel is None:
            import foxglove

            self._log_channel = foxglove.Channel(
                LOG_TOPIC,
                schema=log_schema(),
                context=self._context,
                metadata={"segment": BufferStore.segment_name(*RUNNER_KEY, self.namespace)},
            )
        self._log_channel.log(_ENCODE(message).encode(), log_time=max(0, int(stamp * 1e9)))
        self.messages += 1

    def _on_update(self, watched: Watched) -> None:
        before = self._states.get(watched.key)
        state = read_state(watched.buffer, before.time if before is not None else 0.0)
        with self.lock:
            self._states[watched.key] = state
            self._add(watched.key, state.message(), state.time)
            if watched.key == RUNNER_KEY:  # the runner's buffer: the lines printed since, on /log
                if watched.data is None:
                    watched.data = StudentLog()
                for message in watched.data.messages(state.values, state.time):
                    self._add_log(message, state.time)

    def _on_write(self, watched: Watched) -> None:
        try:
            pending = watched.buffer.pending_writes()
        except DeviceBufferError:
            return  # invalid: nothing can be written to it
        if not pending:
            return  # sent already (or a validity change)
        now = time.time()
        with self.lock:
            self.writes_seen += 1
            self._add(watched.key, jsonable(pending), now, write=True)

    def _on_disappear(self, watched: Watched) -> None:
        now = time.time()
        with self.lock:
            if self._states.pop(watched.key, None) is not None:
                self._add(watched.key, {"valid": False}, now)  # its segment is gone: no live data

    # -- running --

    def run(self, stop: threading.Event, duration: float | None = None) -> None:
        """Record until ``stop`` is set or ``duration`` seconds passed; the files are complete after."""
        deadline = None if duration is None else time.monotonic() + duration
        with self.lock:
            self.open_file()
        threads = [
            threading.Thread(target=watcher.run, args=(stop,), name="runtime-record-discover", daemon=True)
            for watcher in self.watchers
        ]
        try:
            for thread in threads:
                thread.start()
            while not stop.is_set():
                wait = (
                    FLUSH_INTERVAL if deadline is None else min(FLUSH_INTERVAL, deadline - time.monotonic())
                )
                if stop.wait(max(0.0, wait)):
                    break
                if any(watcher.failed for watcher in self.watchers):
                    raise CommandError("watching the buffers failed (see the log above)")
                self.tick()
                if deadline is not None and time.monotonic() >= deadline:
                    break
        finally:
            stop.set()
            for thread in threads:
                thread.join()
            with self.lock:
                self.close_file()


# ---- the command ----------------------------------------------------------------------------------

DESCRIPTION = """\
Record every change of every buffer of the namespace into an MCAP file, for
Foxglove, for the 'mcap' tools, or for 'runtime replay'.

Each buffer is a topic /runtime/<type>/<uid hex> of JSON messages
{"valid": ..., "values": {...}} (JSON Schema from the catalog: names, types,
bounds), one per change, stamped with the time the bridge stored the device's
values; a device that disconnects or comes back is a message with "valid"
changed. Writes to devices go to /runtime/<type>/<uid hex>/write (best
effort: those the recorder saw while pending). What student code printed
('runtime run') goes to /log, a foxglove.Log message per line, for
Foxglove's Log panel. The catalog is in the file's "runtime" metadata.
Buffers that appear later are recorded from then on.

The file is written out every half second and stays readable if the
recorder is killed (then without index: Foxglove and the mcap package read it
from the start). Stop with Ctrl-C or SIGTERM, or give --duration.

Only a regular file is written: a symbolic link, a FIFO, a device or a
directory is refused at once, never opened. A full disk (or a file size
limit) ends the recording with one line saying what the file keeps: what
was written out before (up to the last half second), a readable file.
"""

EPILOG = """\
examples:
  $ runtime record robot.mcap --duration 1          # everything, for a second
  $ runtime record robot.mcap --force                # until Ctrl-C, over an older robot.mcap
  $ runtime record motors.mcap --type yogi-bear --duration 1
  $ runtime record pad.mcap --key gamepad:0 --duration 1
  $ runtime record day.mcap --split-time 600         # day-001.mcap, day-002.mcap, ...: 10 min each
  $ runtime record --namespace rt-demo-4242 demo.mcap   # the buffers of a 'runtime demo'

Then: 'runtime replay robot.mcap' plays it back into buffers; Foxglove opens
it (File > Open); 'mcap info robot.mcap' summarizes it.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``runtime record``."""
    parser.add_argument("output", metavar="OUT.mcap", help="the file to write")
    add_catalog_option(parser)
    add_namespace_option(parser)
    parser.add_argument(
        "--type",
        dest="types",
        action="append",
        default=[],
        metavar="TYPE",
        help="record only buffers of this device type (repeat for more)",
    )
    parser.add_argument(
        "--key",
        dest="keys",
        action="append",
        default=[],
        metavar="KEY",
        help="record only this buffer: TYPE:UID, or a Smart Device UID (repeat for more)",
    )
    parser.add_argument(
        "--duration",
        type=bounded(float, 0, LONGEST_SECONDS, above=True, unit="seconds"),
        metavar="S",
        help="stop after S seconds (default: at Ctrl-C or SIGTERM)",
    )
    parser.add_argument(
        "--split-size",
        type=bounded(float, 0, MAX_SIZE_MB, above=True, unit="megabytes"),
        metavar="MB",
        help="start a new file (OUT-001.mcap, OUT-002.mcap, ...) when one reaches MB megabytes",
    )
    parser.add_argument(
        "--split-time",
        type=bounded(float, 0, LONGEST_SECONDS, above=True, unit="seconds"),
        metavar="S",
        help="start a new file every S seconds",
    )
    parser.add_argument(
        "--compression",
        choices=("zstd", "lz4", "none"),
        default="zstd",
        help="how chunks are compressed (default zstd)",
    )
    parser.add_argument(
        "--no-writes", dest="writes", action="store_false", help="do not record writes to devices"
    )
    parser.add_argument("--force", action="store_true", help="overwrite existing files")


def make_filter(
    args: argparse.Namespace, catalog: dict[str, type[Buffer]]
) -> Callable[[str, int], bool] | None:
    """The ``(type, uid)`` filter of ``--type`` and ``--key`` (None: everything).

    Raises:
        CommandError: (status 2) An unknown type or a malformed key.
    """
    from .buffers import parse_key

    types: set[str] = set()
    for type_name in args.types:
        if type_name not in catalog:
            raise CommandError(
                f"no device type {type_name!r} in the catalog{suggest(type_name, catalog)}", code=2
            )
        types.add(type_name)
    store = BufferStore(catalog)
    keys = {parse_key(text, store) for text in args.keys}
    if not types and not keys:
        return None
    return lambda type_name, uid: type_name in types or (type_name, uid) in keys


def say_if_empty(catalog: dict[str, type[Buffer]], namespace: str, command: str, then: str) -> None:
    """A line on stderr when the namespace has no buffers yet (and which namespaces have some)."""
    if not find_segments(catalog, namespace):
        from .buffers import empty_namespace_line

        print(f"{PROG} {command}: {empty_namespace_line()}; {then}", file=sys.stderr, flush=True)


def _check_output(path: str, force: bool, *, split: bool = False) -> None:
    """Refuse at once an output that cannot be written (one line), rather than after setting up."""
    directory = os.path.dirname(os.path.abspath(path))
    problem = None if split else not_a_regular_file(path)
    if problem is not None:  # a FIFO would block the open, a device take the recording: never opened
        raise CommandError(f"cannot write {path}: {problem}; a recording is written only to a regular file")
    if not os.path.isdir(directory):
        raise CommandError(f"cannot write {path}: no directory {directory}")
    if not os.access(directory, os.W_OK):
        raise CommandError(f"cannot write {path}: the directory {directory} is not writable")
    if os.path.lexists(path) and not force and not split:
        raise CommandError(f"{path} exists; give --force to overwrite it")


def main(args: argparse.Namespace) -> int:
    """Run ``runtime record``."""
    catalog = load_catalog(args.catalog)
    select = make_filter(args, catalog)
    _check_output(args.output, args.force, split=args.split_size is not None or args.split_time is not None)
    with BufferStore.use_namespace(args.namespace) as namespace:
        recorder = Recorder(
            catalog,
            args.output,
            select=select,
            split_size=None if args.split_size is None else int(args.split_size * 1e6),
            split_time=args.split_time,
            overwrite=args.force,
            writes=args.writes,
            compression=args.compression,
        )
        stop = threading.Event()
        what = "every buffer" if select is None else "the chosen buffers"
        until = f"for {args.duration:g} s" if args.duration is not None else "until Ctrl-C"
        print(f"recording {what} of namespace {namespace!r} into {recorder.file_name(1)} {until}", flush=True)
        say_if_empty(catalog, namespace, "record", "recording those that appear")
        started = time.monotonic()
        with stop_on_signals(stop, signals=(signal.SIGINT, signal.SIGTERM, signal.SIGHUP)):
            recorder.run(stop, args.duration)
        elapsed = time.monotonic() - started
        buffers = len(recorder.keys)
        size = sum(os.path.getsize(name) for name in recorder.files if os.path.exists(name))
        files = ", ".join(recorder.files)
        print(
            f"recorded {recorder.messages} messages ({recorder.writes_seen} writes) of {buffers} buffers "
            f"in {elapsed:.1f} s: {files} ({size} bytes)",
            flush=True,
        )
    return 0


if __name__ == "__main__":  # python -m runtime.tools.record ...: the same as runtime record ...
    from .cli import main as runtime_main

    raise SystemExit(runtime_main(["record", *sys.argv[1:]]))
