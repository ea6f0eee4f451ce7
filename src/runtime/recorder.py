"""Recording and replaying buffers: the engines of ``runtime record`` and ``runtime replay``.

:class:`Recorder` writes every change of the watched buffers into MCAP files
(the format of :mod:`runtime.mcap`):

* topic ``/runtime/<type>/<uid hex>``: a buffer's states, stamped with the
  buffer's own timestamp (``last_update``: when the bridge stored the
  device's values); a validity change is a message too, without ``values``;
* topic ``/runtime/<type>/<uid hex>/write``: what was written to the device,
  as seen while pending (best effort);
* topic ``/log``: what student code printed (:class:`runtime.mcap.StudentLog`);
* metadata ``runtime``: the recording format, the namespace, when it
  started, and the catalog's description of every device type.

Nothing is polled: one change feed (:class:`runtime.watch.BufferWatcher`
over :class:`runtime._core.ChangeFeed`) wakes the recorder once per batch of
changed buffers, of both blocks (at most one batch per
:data:`runtime.watch.RECORD_BATCH`), with their values already converted by
the compiled core; each message is encoded by
:func:`runtime.values.encode_json` (orjson). Every :data:`FLUSH_INTERVAL` the
chunk in progress is written out followed by a provisional end of file
(:class:`runtime.mcap.McapOutput`): a killed recorder leaves a readable file.

:class:`Replayer` plays recordings (:func:`runtime.mcap.open_recording`)
back into buffers, with their timing: it creates the recorded buffers (never
in a namespace a live process serves: :func:`live_producers`, never over an
existing buffer) and becomes their producer, as the bridge would
(``serve()``), then stores each recorded state at its recorded time (scaled
by ``speed``). A Smart Device's values go in as the bridge puts them (a
DEV_DATA message applied with ``update()``); other buffers' with ``set()``
in one transaction. A recorded disconnect makes the buffer invalid again
(``stop_serving()``), a reconnect valid. Recorded writes are not replayed. A
bridge that claims a replayed buffer (its device is connected) gets it.

What cannot be done (a file that exists, a full disk, a live namespace)
raises :class:`runtime.mcap.RecordingError`, one line that says why.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import errno
import heapq
import json
import logging
import math
import threading
import time
import warnings
from array import array
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from .buffer import Buffer, DeviceBuffer, DeviceBufferError, Parameter
from .mcap import (
    CHUNK_SIZE,
    LOG_TOPIC,
    METADATA_NAME,
    PROFILE,
    RECORDING_FORMAT,
    McapOutput,
    RecordedState,
    Recording,
    RecordingError,
    StudentLog,
    iter_states,
    log_schema,
    topic_of,
)
from .messaging import MAX_PAYLOAD, Message, TypeLayout
from .processes import pid_alive
from .store import BufferStore, namespace_segments
from .student import RUNNER_KEY
from .values import CHAR, FLOAT, BufferState, encode_json, jsonable, kind_of, read_state
from .watch import RECORD_BATCH, BufferWatcher, Watched

__all__ = [
    "CLAIM_CHECK",
    "FLUSH_INTERVAL",
    "LONGEST_WAIT",
    "LOOKAHEAD",
    "MAX_AHEAD",
    "MAX_ERRORS_KEPT",
    "REORDER_WINDOW",
    "SPARE_TIME",
    "START_DELAY",
    "Recorder",
    "Replayer",
    "in_time_order",
    "live_producers",
    "percentile",
]

logger = logging.getLogger(__name__)

FLUSH_INTERVAL = 0.5
"""Seconds between two writes of the file: a killed recorder loses at most this much (and the write)."""
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
LONGEST_WAIT = 60.0
"""The longest single wait for a state (a longer one is waited in parts: any delay is a valid timeout)."""
CLAIM_CHECK = 0.25
"""Seconds between two looks for claims (a bridge that sees a replayed buffer's device connected)
while waiting for the next state."""


# ---- recording ------------------------------------------------------------------------------------


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
        from .schema import describe_catalog

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
        # One watcher for both blocks when writes are recorded: one change feed, one wake-up per batch.
        self.watchers = [
            BufferWatcher(
                catalog,
                on_change=self._on_change,
                on_disappear=self._on_disappear,
                select=select,
                block="both" if writes else "update",
                namespace=self.namespace,
                batch=RECORD_BATCH,
            )
        ]

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

        from . import __version__

        name = self.file_name(len(self.files) + 1)
        try:
            output = McapOutput(name, overwrite=self.overwrite)
        except FileExistsError:
            raise RecordingError(f"{name} exists; give --force to overwrite it") from None
        except OSError as exc:
            raise RecordingError(f"cannot write {name}: {exc.strerror}") from None
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
            RecordingError: The file could not be written (a full disk, say): the
                message says what the file keeps.
        """
        with self.lock:
            if self._writer is not None and self._output is not None:
                self._writer.flush()
                if self._output.error is not None:
                    raise self._write_failed(self._output)

    def _write_failed(self, output: McapOutput) -> RecordingError:
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
        return RecordingError(f"cannot write {output.path}: {reason}; {kept}")

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

        from .schema import buffer_schema, write_schema

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
        self._channel(key, write).log(encode_json(message), log_time=max(0, int(stamp * 1e9)))
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
        self._log_channel.log(encode_json(message), log_time=max(0, int(stamp * 1e9)))
        self.messages += 1

    def _on_change(self, watched: Watched) -> None:
        if watched.changed != 2 or watched.valid != watched.was_valid:  # not the write block alone
            self._on_update(watched)
        if watched.changed & 2 or (watched.was_valid is None and self.watchers[0].block == "both"):
            self._on_write(watched)  # a write, or those pending as it appears

    def _on_update(self, watched: Watched) -> None:
        before = self._states.get(watched.key)
        previous = before.time if before is not None else 0.0
        state = (
            read_state(watched.buffer, previous) if watched.state is None else watched.state.since(previous)
        )
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
                    raise RecordingError("watching the buffers failed (see the log above)")
                self.tick()
                if deadline is not None and time.monotonic() >= deadline:
                    break
        finally:
            stop.set()
            for thread in threads:
                thread.join()
            with self.lock:
                self.close_file()


# ---- replaying ------------------------------------------------------------------------------------


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
    kind = kind_of(ctype)
    if kind == FLOAT:
        return math.nan if value is None else float(value)
    if kind == CHAR:
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
            pid = last_producer if pid_alive(last_producer) else None
        if pid:
            found.setdefault(pid, []).append(entry)
    return found


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
            RecordingError: A live process serves a buffer of the namespace (a
                robot's bridge, another replay: the pids are named), or a
                recorded buffer exists already.
        """
        producers = live_producers(self.catalog, self.namespace)
        if producers:
            pids = ", ".join(str(pid) for pid in sorted(producers))
            count = sum(len(names) for names in producers.values())
            raise RecordingError(
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
                raise RecordingError(f"cannot open the buffer {key[0]}:{key[1]:#x}: {exc.message}") from None
            self.buffers[key] = buffer
            if not buffer._created:
                raise RecordingError(
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
