"""``runtime emulate``: virtual Smart Devices on pseudo-terminals.

Lets the bridge, the tools built on buffers and the tests run without hardware.
Its help, its arguments and a short ``main()``; the emulator is the testing
kit's (:mod:`runtime.testing.emulator`: :class:`~runtime.testing.Emulator`
serves each :class:`~runtime.testing.DeviceModel` on its own pseudo-terminal,
over a link made flaky on demand, :class:`~runtime.testing.FaultInjector`), so
that users' tests run the very same devices. A bridge serves them exactly like
USB serial devices: ``runtime bridge --port /dev/pts/N``, or ``--glob
'DIR/*'`` with ``--link DIR``.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys
from collections.abc import Mapping

from .. import catalog as catalog_module
from ..buffer import Buffer, DeviceBuffer
from ..exception import RuntimeBaseException
from ..testing.device import HOST_SILENCE_HEARTBEATS, random_uid
from ..testing.emulator import DISCONNECT_FOR, STATS_INTERVAL, Emulator, EmulatorError
from ..testing.faults import FaultRates
from ._common import (
    LONGEST_SECONDS,
    UID_FORMS,
    add_catalog_option,
    bounded,
    configure_logging,
    parse_uid,
    suggest,
)

__all__ = ["DESCRIPTION", "EPILOG", "DeviceSpec", "add_arguments", "main", "parse_device"]

logger = logging.getLogger("runtime.tools.emulate")


# ---- command line -------------------------------------------------------------------------------


class DeviceSpec:
    """A parsed ``TYPE[:UID]`` argument."""

    def __init__(self, buffer_type: type[DeviceBuffer], uid: int) -> None:
        self.buffer_type = buffer_type
        self.uid = uid

    def __repr__(self) -> str:
        return f"DeviceSpec({self.buffer_type.type_name!r}, {self.uid:#x})"


def parse_device(
    text: str, catalog: Mapping[str, type[Buffer]], rng: random.Random | None = None
) -> DeviceSpec:
    """Parse ``TYPE[:UID]`` (a UID as :func:`~runtime.tools._common.parse_uid` takes it; random when omitted).

    Raises:
        ValueError: Unknown or non-Smart-Device type, malformed UID, or a UID
            whose device_id is not the type's (the message says which).
    """
    type_name, _, uid_text = text.partition(":")
    buffer_type = catalog.get(type_name)
    if buffer_type is None:
        raise ValueError(
            f"{text!r}: unknown device type {type_name!r}{suggest(type_name, catalog)} "
            f"(known: {', '.join(sorted(catalog))})"
        )
    if not (issubclass(buffer_type, DeviceBuffer) and hasattr(buffer_type, "device_id")):
        raise ValueError(f"{text!r}: {type_name} is not a Smart Device (it has no device_id)")
    if not uid_text:
        return DeviceSpec(buffer_type, random_uid(buffer_type.device_id, rng))
    uid = parse_uid(uid_text, where=text)
    if not 0 <= uid < 1 << 88:
        raise ValueError(f"{text!r}: UID must be an 88-bit nonnegative integer")
    device_id = uid >> 72
    if device_id != buffer_type.device_id:
        raise ValueError(
            f"{text!r}: UID {uid:#x} has device_id {device_id}, but {type_name} has device_id "
            f"{buffer_type.device_id} (uid = device_id << 72 | year << 64 | random)"
        )
    return DeviceSpec(buffer_type, uid)


DESCRIPTION = f"""\
Emulate Smart Devices on pseudo-terminals.

Each TYPE[:UID] argument becomes one device of that catalog type that speaks
the Smart Device protocol on its own pseudo-terminal, so the bridge can serve
it as if it were plugged in. At start one line per device gives its type, UID
and terminal path. It exits cleanly on Ctrl-C or SIGTERM.

Like a real device, a device stops actuating (its actuators go to their safe
values, as on DEV_DISABLE) when, after hearing from the host, it hears nothing
for {HOST_SILENCE_HEARTBEATS} of its type's heartbeat intervals.
"""

EPILOG = """\
examples:
  $ runtime emulate yogi-bear limit-switch
  $ runtime emulate yogi-bear:0xa0a0000000000c0ffee --link /tmp/devs
"""

DEFAULT_LOG_LEVEL = "INFO"
"""The emulator logs one line per event (connects, disconnects, faults) unless told otherwise."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``runtime emulate`` arguments to ``parser``."""
    parser.add_argument(
        "devices",
        nargs="+",
        metavar="TYPE[:UID]",
        help="device type from the catalog (e.g. limit-switch, yogi-bear), optionally with its UID "
        f"({UID_FORMS}; its device_id must be the type's); a random UID when omitted",
    )
    parser.add_argument(
        "--link",
        type=_link_directory,
        metavar="DIR",
        default=None,
        help="create a symlink DIR/<type>-<n> (n = 0, 1, ... per type) to each device's pseudo-terminal, "
        "removed at exit; e.g. run the bridge with --glob 'DIR/*'",
    )
    add_catalog_option(parser)
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seed for random UIDs, simulated values and injected faults (reproducible runs)",
    )
    parser.add_argument(
        "--still", action="store_true", help="do not simulate: sensor values change only when written"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log protocol errors")
    faults = parser.add_argument_group(
        "a flaky link",
        "Make the link of every device misbehave, to test the host. Fault rates are probabilities "
        "drawn independently for each frame (reproducible with --seed). What was done is counted: "
        "see --stats, and the 'summary TYPE UID: key=value ...' line each device prints at exit.",
    )
    faults.add_argument(
        "--faults",
        type=_fault_rates,
        default=FaultRates(),
        metavar="KIND=RATE[,...]",
        help="damage the frames each device sends (device -> host). KIND is drop (the frame is lost), "
        "duplicate (an intact copy follows it), corrupt (one random bit of the encoded frame flips, "
        "never into a 0x00 byte), truncate (the encoded frame is cut short before its delimiter) or all; "
        "RATE is a probability in 0..1. Example: drop=0.05,duplicate=0.05,corrupt=0.05,truncate=0.05",
    )
    faults.add_argument(
        "--faults-in",
        type=_fault_rates,
        default=FaultRates(),
        metavar="KIND=RATE[,...]",
        help="damage the frames each device receives (host -> device) the same way, before the device "
        "decodes them; it answers a damaged frame with an ERROR, as a real device does",
    )
    faults.add_argument(
        "--disconnect-every",
        type=_seconds,
        default=0.0,
        metavar="SECONDS",
        help="unplug each device after SECONDS connected: its pseudo-terminal is closed and its --link "
        "removed; after --disconnect-for it comes back on a new pseudo-terminal with the same UID (the "
        "link is made again, so use --link and a bridge with --glob 'DIR/*'). The device keeps its values "
        f"but forgets its subscription. The first disconnects of several devices are staggered. "
        f"0 (default): never; at most {LONGEST_SECONDS:g}",
    )
    faults.add_argument(
        "--disconnect-for",
        type=_seconds,
        default=DISCONNECT_FOR,
        metavar="SECONDS",
        help=f"how long each disconnect lasts (default {DISCONNECT_FOR:g})",
    )
    faults.add_argument(
        "--stats",
        metavar="FILE",
        default=None,
        help="write each device's link statistics as JSON to FILE every "
        f"{STATS_INTERVAL:g} s and at exit: frames sent, delivered, dropped, duplicated, corrupted, "
        "truncated and mutated in each direction, disconnects, reconnects, errors",
    )
    # Testing aid: make the devices send noise now and then.
    parser.add_argument("--garbage", type=_seconds, default=0.0, metavar="SECONDS", help=argparse.SUPPRESS)


def _fault_rates(text: str) -> FaultRates:
    try:
        return FaultRates.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _link_directory(text: str) -> str:
    """``--link DIR``: a directory, or a path where one can be made (it is made at start)."""
    if not text:
        raise argparse.ArgumentTypeError("expected a directory")
    if os.path.lexists(text) and not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text!r} exists and is not a directory")
    return text


_seconds = bounded(float, 0.0, LONGEST_SECONDS, unit="seconds")


def main(args: argparse.Namespace) -> int:
    """Run the emulated devices until SIGINT/SIGTERM; return the exit code (2: bad arguments)."""
    verbose = bool(getattr(args, "verbose", False))
    configure_logging(debug=[logger.name] if verbose else [])  # --verbose: protocol errors
    try:
        catalog = catalog_module.load(args.catalog)
    except (RuntimeBaseException, ValueError, OSError) as exc:
        print(f"runtime emulate: cannot load the catalog: {exc}", file=sys.stderr)
        return 2
    rng = random.Random(args.seed)
    try:
        specs = [parse_device(text, catalog, rng) for text in args.devices]
    except ValueError as exc:
        print(f"runtime emulate: {exc}", file=sys.stderr)
        return 2
    uids = [spec.uid for spec in specs]
    if len(set(uids)) != len(uids):
        print("runtime emulate: the same UID is given twice", file=sys.stderr)
        return 2
    if args.link:
        try:
            os.makedirs(args.link, exist_ok=True)
        except OSError as exc:
            print(
                f"runtime emulate: cannot make the --link directory {args.link}: {exc.strerror or exc}",
                file=sys.stderr,
            )
            return 2
    every = float(getattr(args, "disconnect_every", 0.0) or 0.0)
    if every > 0 and not args.link:
        logger.warning(
            "--disconnect-every without --link: the devices come back on new pseudo-terminals, "
            "which a bridge serving fixed --port paths will not find"
        )
    emulator = Emulator(
        [(spec.buffer_type, spec.uid) for spec in specs],
        link_directory=args.link or None,
        seed=args.seed,
        simulate=not args.still,
        garbage=float(args.garbage),
        faults=getattr(args, "faults", None),
        faults_in=getattr(args, "faults_in", None),
        disconnect_every=every,
        disconnect_for=float(getattr(args, "disconnect_for", DISCONNECT_FOR)),
        stats_path=getattr(args, "stats", None),
        logger=logger,
    )
    try:
        emulator.open(on_open=lambda device: print(device.describe(), flush=True))
        emulator.serve()
    except KeyboardInterrupt:
        pass
    except EmulatorError as exc:
        print(f"runtime emulate: {exc.message}", file=sys.stderr)
        return 1
    finally:
        for line in emulator.summaries():
            print(line, flush=True)
        emulator.close()
    return 0


if __name__ == "__main__":  # python -m runtime.tools.emulate ...: the same as runtime emulate ...
    from .cli import main as runtime_main

    raise SystemExit(runtime_main(["emulate", *sys.argv[1:]]))
