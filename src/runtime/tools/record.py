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

A killed recorder leaves a readable file: every :data:`~runtime.recorder.FLUSH_INTERVAL` the
chunk in progress is closed and written out followed by a provisional end of
file (a footer without index), which the next write replaces. Readers that
need an index (seeking) fall back to reading such a file from the start, as
the ``mcap`` package and Foxglove do; the clean end (Ctrl-C, SIGTERM,
``--duration``) writes the full index.

The engine is the library's :class:`runtime.recorder.Recorder`; this module
holds the command: its help, its arguments, and ``main()``, which turns the
library's :class:`runtime.mcap.RecordingError` into the command's one line.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from collections.abc import Callable

from ..buffer import Buffer
from ..mcap import RecordingError, RecordingInfo, not_a_regular_file, recording_info
from ..recorder import Recorder
from ..store import BufferStore
from ._common import (
    LONGEST_SECONDS,
    CommandError,
    add_catalog_option,
    add_namespace_option,
    bounded,
    load_catalog,
    parse_key,
    print_json,
    say_if_empty,
    stop_on_signals,
    suggest,
)

__all__ = [
    "DESCRIPTION",
    "EPILOG",
    "add_arguments",
    "main",
    "make_filter",
]

MAX_SIZE_MB = 1_000_000.0
"""The largest ``--split-size`` (a terabyte)."""


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

'runtime record info FILE' summarizes a recording instead (any MCAP file):
its topics with message counts and rates, the devices (type and UID), the
duration, the size and whether it ends with its index (--json: as JSON). To
record into a file named 'info', write ./info.
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
it (File > Open); 'runtime record info robot.mcap' summarizes it (topics,
counts, rates, devices, duration; --json for a program).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``runtime record``."""
    parser.add_argument(
        "output", metavar="OUT.mcap", help="the file to write (or 'info FILE': summarize FILE)"
    )
    parser.add_argument("info_file", nargs="?", metavar="FILE", help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help="with 'info FILE': print the summary as JSON")
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


def _when(ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ns / 1e9)) + f".{ns // 1_000_000 % 1000:03d}"


def print_info(info: RecordingInfo) -> None:
    """Print a recording's summary (``runtime record info``), like ``ros2 bag info``."""
    index = "with its index" if info.indexed else "without index (its recorder was killed, or it is cut)"
    print(f"file:       {info.path}")
    print(f"size:       {info.size} bytes, {index}")
    if info.damaged:
        print(f"damaged:    {info.damaged}")
    if info.metadata is None:
        print("made by:    not 'runtime record' (no 'runtime' metadata)")
    else:
        print(f"namespace:  {info.metadata.get('namespace', '?')}")
    if info.start is not None and info.end is not None:
        print(f"duration:   {info.duration:.3f} s ({_when(info.start)} to {_when(info.end)})")
    else:
        print("duration:   0 s (no messages)")
    print(f"messages:   {info.messages}")
    print(f"devices:    {len(info.devices)}")
    for type_name, uid in info.devices:
        print(f"  {type_name:<20} {uid:#x}")
    print(f"topics:     {len(info.topics)}")
    width = max((len(t.topic) for t in info.topics), default=0)
    for t in info.topics:
        rate = f"{t.rate:8.1f}/s" if t.rate is not None else " " * 10
        print(
            f"  {t.topic:<{width}} {t.messages:8d} msgs {rate}  {t.kind:<5}  {t.encoding} {t.schema}".rstrip()
        )


def _info_main(args: argparse.Namespace) -> int:
    if args.info_file is None:
        raise CommandError(
            "give the recording to summarize: runtime record info FILE "
            "(to record into a file named info, write ./info)",
            code=2,
        )
    try:
        info = recording_info(args.info_file)
    except RecordingError as exc:
        raise CommandError(exc.message) from None
    if args.json:
        print_json(info.as_dict())
    else:
        print_info(info)
    return 0


def main(args: argparse.Namespace) -> int:
    """Run ``runtime record`` (or ``runtime record info FILE``)."""
    if args.output == "info":
        return _info_main(args)
    if args.info_file is not None:
        raise CommandError(
            f"one file to record into, not also {args.info_file!r} "
            "('runtime record info FILE' summarizes a recording)",
            code=2,
        )
    if args.json:
        raise CommandError("--json goes with 'runtime record info FILE'", code=2)
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
            try:
                recorder.run(stop, args.duration)
            except RecordingError as exc:
                raise CommandError(exc.message) from None
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
