"""``runtime replay``: play a recording of ``runtime record`` back into buffers, with its timing.

Student code runs against recorded sensor data with no hardware: the replay
creates the recorded buffers (in a namespace of its own by default, printed;
never in one a live process serves, never over an existing buffer:
:meth:`runtime.recorder.Replayer.prepare`) and becomes their producer, as the
bridge would (``serve()``), then stores each recorded state at its recorded
time (scaled by ``--speed``). A Smart Device's values go in as the bridge puts
them (a DEV_DATA message applied with ``update()``: its ``last_update`` is the
time of replay, one change per recorded message); other buffers' with
``set()`` in one transaction. A recorded disconnect makes the buffer invalid
again (``stop_serving()``), a reconnect valid. Recorded writes are not
replayed: nothing here talks to a device; what the code under test writes
stays pending in the buffers.

The files are read as a stream (so a long recording costs little memory,
and a file whose recorder was killed plays up to where it ends), after a
check of the catalog the recording was made with against the one in use:
a device type that differs is refused, with what differs.

The engine is the library's: reading a recording is
:func:`runtime.mcap.open_recording` and :func:`runtime.mcap.iter_states`,
playing it :class:`runtime.recorder.Replayer`; this module holds the command:
its help, its arguments, and ``main()``, which turns the library's
:class:`runtime.mcap.RecordingError` into the command's one line.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sys
import threading

from ..mcap import MAX_SPAN, RecordingError, open_recording
from ..recorder import Replayer
from ..store import BufferStore
from ..values import jsonable
from ._common import CommandError, add_catalog_option, bounded, load_catalog, print_json, stop_on_signals

__all__ = [
    "DESCRIPTION",
    "EPILOG",
    "add_arguments",
    "main",
]

logger = logging.getLogger(__name__)

SPEEDS = (0.01, 100.0)
"""The slowest and fastest ``--speed``."""
END_HOLD = 0.25
"""Seconds the last states stay valid after the end of a replay, so that readers see them."""
_NAMESPACE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,100}")


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
    try:
        recordings = [open_recording(path, catalog) for path in args.inputs]
    except RecordingError as exc:
        raise CommandError(exc.message) from None
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
        stop = threading.Event()
        try:
            replayer.prepare(recordings)
            # Ctrl-C is heard from before the namespace is announced: pressed as soon as the lines
            # appear, it stops the replay cleanly.
            with stop_on_signals(stop, signals=(signal.SIGINT, signal.SIGTERM, signal.SIGHUP)):
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
                if not stop.wait(args.delay):
                    replayer.play(recordings, stop, loop=args.loop)
                    stop.wait(END_HOLD)  # the last states are seen before the buffers turn invalid
        except RecordingError as exc:  # the namespace is live, or a recorded buffer exists there
            raise CommandError(exc.message) from None
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
        if summary["states"] == 0:
            print("nothing played: stopped before the first state", flush=True)
        else:
            late = ""
            if timing["p50"] is not None:
                late = f"; timing error p50 {timing['p50']} ms, p99 {timing['p99']} ms"
            print(
                f"replayed {summary['states']} states of {summary['buffers']} buffers "
                f"({summary['writes_not_replayed']} recorded writes not replayed){late}",
                flush=True,
            )
    return 0


if __name__ == "__main__":  # python -m runtime.tools.replay ...: the same as runtime replay ...
    from .cli import main as runtime_main

    raise SystemExit(runtime_main(["replay", *sys.argv[1:]]))
