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
import errno
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from ..buffer import Buffer, DeviceBufferError
from ..jsonio import jsonable
from ..mcap import (
    CHUNK_SIZE,
    LOG_TOPIC,
    METADATA_NAME,
    PROFILE,
    RECORDING_FORMAT,
    McapOutput,
    StudentLog,
    log_schema,
    not_a_regular_file,
    topic_of,
)
from ..store import BufferStore
from ..student import RUNNER_KEY
from ..values import BufferState, encode_json, read_state
from ..watch import BufferWatcher, Watched
from ._common import (
    LONGEST_SECONDS,
    CommandError,
    add_catalog_option,
    add_namespace_option,
    bounded,
    load_catalog,
    say_if_empty,
    stop_on_signals,
    suggest,
)

__all__ = [
    "DESCRIPTION",
    "EPILOG",
    "FLUSH_INTERVAL",
    "Recorder",
    "add_arguments",
    "main",
    "make_filter",
]

logger = logging.getLogger(__name__)

FLUSH_INTERVAL = 0.5
"""Seconds between two writes of the file: a killed recorder loses at most this much (and the write)."""
MAX_SIZE_MB = 1_000_000.0
"""The largest ``--split-size`` (a terabyte)."""


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
