"""``runtime bridge``: the host side of the Smart Device protocol (the Smart Device manager).

Smart Devices are USB serial boards; this command finds their ports, identifies
each device, keeps its shared-memory buffer (:mod:`runtime.buffer`) in step with
it, and forwards what other processes request through the buffer. It is the one
process that talks to the serial ports; everything else only sees buffers.

Its help, its options and a short ``main()``; the engine, and how it is
organised, is :mod:`runtime.bridge`. On SIGINT/SIGTERM it stops cleanly: every
connected device gets a DEV_DISABLE, every buffer is marked invalid, and the
stats file is written one last time.

Run it as ``runtime bridge`` (see :mod:`runtime.tools.cli`) or ``python -m runtime.tools.bridge``.
"""

from __future__ import annotations

import argparse
import asyncio
import math
from collections.abc import Callable, Mapping
from typing import TypeVar

from .. import catalog as catalog_module
from ..bridge import DEFAULT_GLOB, UNPLUGGED_CAP, UNPLUGGED_GRACE, Bridge, logger
from ..buffer import Buffer
from ..exception import RuntimeBaseException
from ..store import BufferStore
from ._common import add_catalog_option, configure_logging, stop_on_signals

__all__ = ["DESCRIPTION", "EPILOG", "add_arguments", "main"]

T = TypeVar("T")

DESCRIPTION = """\
Serve Smart Devices into shared memory.

The bridge opens each serial port (a real USB device, or a pseudo-terminal of
'runtime emulate'), learns which device is there from its subscription
response, creates the device's buffer in shared memory and then pumps
messages both ways: DEV_DATA into the buffer, pending reads and writes out to
the device, heartbeats to notice a device that went silent (its buffer is then
marked invalid). It exits cleanly on Ctrl-C or SIGTERM.
"""

EPILOG = """\
examples:
  $ runtime bridge --port /dev/ttyACM0 --port /dev/ttyACM1
  $ runtime bridge --glob '/dev/ttyACM*' --stats /tmp/bridge.json --verbose
  $ runtime bridge --glob '/tmp/devs/*' --catalog my-catalog.yaml   # runtime emulate ... --link /tmp/devs
"""

DEFAULT_LOG_LEVEL = "INFO"
"""The bridge logs one line per event (connects, disconnects, bad frames) unless told otherwise."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``runtime bridge`` options to ``parser``."""
    parser.add_argument(
        "--port",
        action="append",
        default=[],
        metavar="PATH",
        help="serve this serial port (exact path; repeatable); it may come and go",
    )
    parser.add_argument(
        "--glob",
        action="append",
        default=[],
        metavar="PATTERN",
        help=f"serve every port matching this pattern, watched for devices appearing and disappearing "
        f"(repeatable; default {DEFAULT_GLOB} when neither --port nor --glob is given)",
    )
    add_catalog_option(parser)
    parser.add_argument(
        "--stats",
        metavar="FILE",
        default=None,
        help="write per-device statistics as JSON to FILE every second and at exit",
    )
    parser.add_argument(
        "--unplugged-grace",
        type=_non_negative(float),
        default=UNPLUGGED_GRACE,
        metavar="SECONDS",
        help=f"keep a disconnected device's buffer this long: if it comes back by then, it gets the same "
        f"segment; then the buffer is released, its segment removed unless another process maps it "
        f"(default {UNPLUGGED_GRACE:g})",
    )
    parser.add_argument(
        "--unplugged-cap",
        type=_non_negative(int),
        default=UNPLUGGED_CAP,
        metavar="N",
        help=f"keep at most N disconnected devices' buffers; beyond, the longest gone is released first "
        f"(default {UNPLUGGED_CAP})",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log every frame sent and received")


def _non_negative(kind: type[T]) -> Callable[[str], T]:
    """An argparse type: a number of ``kind`` (int or float), finite and not negative."""

    def parse(text: str) -> T:
        try:
            value = kind(text)  # type: ignore[call-arg]
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not 0 <= value < math.inf:  # type: ignore[operator]
            raise argparse.ArgumentTypeError(f"must be 0 or more, not {text}")
        return value

    return parse


def main(args: argparse.Namespace) -> int:
    """Run the bridge until SIGINT/SIGTERM; return the exit code (0 clean, 2 bad catalog)."""
    verbose = bool(getattr(args, "verbose", False))
    configure_logging(debug=[logger.name] if verbose else [])  # --verbose: every frame
    try:
        catalog: Mapping[str, type[Buffer]] = catalog_module.load(args.catalog)
    except (RuntimeBaseException, ValueError, OSError) as exc:
        logger.error("cannot load the catalog: %s", exc)
        return 2
    ports: list[str] = list(args.port or [])
    globs: list[str] = list(args.glob or [])
    if not ports and not globs:
        globs = [DEFAULT_GLOB]
    with BufferStore(catalog) as store:
        bridge = Bridge(
            store,
            ports,
            globs,
            stats_path=args.stats,
            verbose=verbose,
            unplugged_grace=getattr(args, "unplugged_grace", UNPLUGGED_GRACE),
            unplugged_cap=getattr(args, "unplugged_cap", UNPLUGGED_CAP),
        )
        try:
            return asyncio.run(_serve(bridge))
        except KeyboardInterrupt:  # a second Ctrl-C during shutdown
            return 130


async def _serve(bridge: Bridge) -> int:
    """Serve until SIGINT/SIGTERM, then shut down cleanly."""
    stop = asyncio.Event()
    with stop_on_signals(stop, asyncio.get_running_loop()):
        return await bridge.serve(stop)


if __name__ == "__main__":  # python -m runtime.tools.bridge ...: the same as runtime bridge ...
    import sys

    from .cli import main as runtime_main

    raise SystemExit(runtime_main(["bridge", *sys.argv[1:]]))
