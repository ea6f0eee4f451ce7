"""``runtime buffers``: inspect the live buffers in shared memory, write to them, clean up after a bridge.

When something on the robot misbehaves, the first question is what the
buffers hold: is the device's buffer there, is it valid (connected), how old
are its values? This command answers from outside every other process.

Its help, its arguments and its actions' short mains. What a buffer holds is
read by the library, :mod:`runtime.report` (:func:`~runtime.report.scan`,
:func:`~runtime.report.inspect_buffer`: every buffer is attached with
``create=False``, so inspecting cannot disturb the robot, and a buffer that
cannot be opened shows as an error row instead of stopping the listing); the
tables and views are the commands' shared ``_views`` (``runtime demo`` shows
the same table). When a namespace has no buffers, the listing says which
namespaces do.

Two actions change things, for bring-up on a robot: ``write KEY PARAM=VALUE...``
queues parameter writes for a connected device (to spin a motor without
writing code), and ``clean`` removes the segments that no producer serves any
more (:meth:`~runtime.store.BufferStore.stale_segments` says which).

A write of a parameter with a safe value (an actuator: a motor's duty cycle)
is a *command* of the writing process (:mod:`runtime.commands`): it ends, and
the bridge sends the safe value, when the process exits. So ``write`` ends its
commands as it exits, unless ``--hold`` keeps it (and them) alive until
Ctrl-C. The listings say whether the robot of the namespace is enabled
(``runtime disable``/``runtime enable``) and who commands each actuator.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..buffer import SHM_DIR, Buffer, DeviceBuffer, DeviceBufferError
from ..commands import hold
from ..processes import runs_command
from ..rates import RateMeter, changes, measure, rate_reports
from ..report import NoSuchBuffer, inspect_buffer, robot_enabled_or_unknown, robot_line, scan
from ..store import BufferStore
from ..values import WriteRefused, apply_writes, check_writes, jsonable
from ._common import (
    PROG,
    UID_FORMS,
    CommandError,
    add_catalog_option,
    add_interval_option,
    add_namespace_option,
    bounded,
    elsewhere,
    empty_namespace_line,
    format_value,
    load_catalog,
    make_console,
    parse_key,
    print_json,
    stop_on_signals,
)
from ._views import namespace_view, show_renderable

if TYPE_CHECKING:
    from rich.console import RenderableType

__all__ = [
    "DESCRIPTION",
    "EPILOG",
    "add_arguments",
    "main",
    "parse_assignments",
]

DESCRIPTION = f"""\
Inspect the live buffers in shared memory.

Every device served by the bridge (and every other peripheral) has a buffer
in /dev/shm named <namespace>-<type>-<uid hex>. These commands find them for
the device types of the catalog and read them without disturbing anyone:
  list          type, UID, valid (connected) and age of the last update
  show KEY      every parameter of one buffer: value, flags, bounds
  watch [KEY]   a live-updating table of all buffers (or of one)
  write KEY PARAM=VALUE...
                queue parameter writes for a connected device (bring-up);
                a motor's command ends as it exits, unless --hold
  clean         remove the segments no producer serves any more
  hz [KEY]      update rates: average, min/max/std of the interval, every second
  echo KEY      every change of one buffer with its time, as it happens
KEY is TYPE:UID (for any buffer) or a Smart Device UID alone; a UID is
{UID_FORMS}.
The listings also say whether the robot is enabled ('runtime disable' stops
every actuator, 'runtime enable' lets them move again).
"""

EPILOG = """\
examples:
  $ runtime buffers list
  $ runtime buffers list --json
  $ runtime buffers show 0xa0a0000000000c0ffee
  $ runtime buffers show gamepad:0
  $ runtime buffers watch --interval 0.2
  $ runtime buffers write 0xa0a0000000000c0ffee pid_pos_kp=1.5
  $ runtime buffers clean --dry-run
  $ runtime buffers hz --count 5
  $ runtime buffers echo 0xa0a0000000000c0ffee --json --count 10
  $ runtime buffers --namespace rt-demo-4242 watch yogi-bear:0xa0a0000000000c0ffee

The namespace is $RUNTIME_BUFFER_NAMESPACE (default "rt") unless --namespace
is given; 'runtime demo' prints the one it uses.
"""

MAX_COUNT = 1_000_000_000
"""The most refreshes ``watch --count`` takes."""


# ---- keys typed on the command line---------------------------------------------------------------------


# ---- writing: values typed on the command line ---------------------------------------------------


def parse_assignments(words: Sequence[str]) -> dict[str, str]:
    """``PARAM=VALUE`` words into ``{param: value text}``, in order.

    Raises:
        CommandError: (status 2) A word without ``=`` or without a name, or a parameter given twice.
    """
    result: dict[str, str] = {}
    for word in words:
        name, sep, text = word.partition("=")
        name = name.strip()
        if not sep or not name:
            raise CommandError(f"bad assignment {word!r}: write PARAM=VALUE (duty_cycle=0.5)", code=2)
        if name in result:
            raise CommandError(f"parameter {name!r} is given twice", code=2)
        result[name] = text
    return result


# ---- the command --------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``runtime buffers`` and its ``list``/``show``/``watch`` actions."""
    _add_common_options(parser, None)
    actions = parser.add_subparsers(dest="action", metavar="ACTION", title="actions", required=True)
    common = argparse.ArgumentParser(add_help=False)
    _add_common_options(common, argparse.SUPPRESS)  # after the action too, without overriding
    formatter = argparse.RawDescriptionHelpFormatter
    listing = actions.add_parser(
        "list",
        parents=[common],
        help="every live buffer: type, UID, valid, last update age",
        description="List the live buffers: type, UID, state (valid/invalid/error), age of the last\n"
        "update, who serves each (pid and program) and who commands its actuators, and whether\n"
        "the robot of the namespace is enabled. With --json, every readable value too (the\n"
        "robot's state goes to stderr, only when it is disabled: stdout stays the list of buffers).",
        epilog="examples:\n  $ runtime buffers list\n  $ runtime buffers list --json | jq '.[].uid_hex'\n",
        formatter_class=formatter,
    )
    listing.set_defaults(buffers_main=_list_main)
    show = actions.add_parser(
        "show",
        parents=[common],
        help="every parameter of one buffer, with value, flags and bounds",
        description="Show one buffer: its state, whether the robot is enabled, the process serving it\n"
        "and the one commanding each actuator, the subscription, and every parameter with its\n"
        "value, flags (r = readable, no-r = write-only, w = writeable, no-sub = not subscribed),\n"
        "bounds, unit and description.\n"
        "KEY is TYPE:UID, or a Smart Device UID alone.",
        epilog="examples:\n  $ runtime buffers show 0xa0a0000000000c0ffee\n"
        "  $ runtime buffers show yogi-bear:0xa0a0000000000c0ffee --json\n",
        formatter_class=formatter,
    )
    show.add_argument("key", metavar="KEY", help="TYPE:UID, or a Smart Device UID")
    show.set_defaults(buffers_main=_show_main)
    watch = actions.add_parser(
        "watch",
        parents=[common],
        help="a live-updating table of all buffers, or of one",
        description="Watch the buffers change: the table of all live buffers (with their values),\n"
        "or with KEY the detailed view of one, refreshed every --interval seconds until\n"
        "Ctrl-C, or --count refreshes; under it, whether the robot is enabled. When the output\n"
        "is not a terminal, each refresh is printed in turn (with --json: one JSON document\n"
        "per line; the robot's state on stderr when it is disabled, and when it changes).",
        epilog="examples:\n  $ runtime buffers watch\n"
        "  $ runtime buffers watch 0xa0a0000000000c0ffee --interval 0.1\n"
        "  $ runtime buffers watch --json --count 5 --interval 0.1 > samples.jsonl\n",
        formatter_class=formatter,
    )
    watch.add_argument("key", metavar="KEY", nargs="?", help="TYPE:UID, or a Smart Device UID (default: all)")
    add_interval_option(watch, default=0.5, what="the view")
    watch.add_argument("--count", type=bounded(int, 1, MAX_COUNT), metavar="N", help="stop after N refreshes")
    watch.set_defaults(buffers_main=_watch_main)
    write = actions.add_parser(
        "write",
        parents=[common],
        help="queue parameter writes for a connected device (bring-up without code)",
        description="Write parameters of a live buffer, as student code would with write(): the\n"
        "bridge sends them to the device. Every value is checked first (the parameter exists\n"
        "and is writeable, the value fits its type, a number its bounds), then all are written\n"
        "together, or none. Values: numbers (1.5, -2, 1e3, 0x10 for integers), true/false\n"
        "(1/0, yes/no, on/off) for bools, text for char arrays, and for arrays a comma list\n"
        "(1,2,3) or JSON ([1, 2, 3]). A number outside the parameter's bounds is refused with\n"
        "the bounds, never clamped: the same answer as Foxglove, Zenoh and runtime msg give.\n"
        "KEY is TYPE:UID, or a Smart Device UID alone; the device must be connected (its\n"
        "buffer valid: the bridge serves it).\n"
        "A parameter with a safe value (an actuator: a motor's duty_cycle, a servo) takes a\n"
        "command, which belongs to this process: it ends, and the bridge sends the safe value,\n"
        "when this command exits. With --hold it stays in force until Ctrl-C (or SIGTERM).\n"
        "While the robot is disabled ('runtime disable') such writes are refused.\n"
        "Exit status: 0 written (with --hold: held until Ctrl-C), 1 refused (nothing written)\n"
        "or, with --hold, the command ended otherwise (device disconnected, robot disabled,\n"
        "another process took it over), 2 bad arguments.",
        epilog="examples:\n"
        "  $ runtime buffers write yogi-bear:0xa0a0000000000c0ffee pid_pos_kp=1.5 pid_pos_ki=0.1\n"
        "  $ runtime buffers write 0xa0a0000000000c0ffee duty_cycle=0.5     # a blip: 0 again as it exits\n"
        "To spin the motor until Ctrl-C, add --hold to the last one.\n",
        formatter_class=formatter,
    )
    write.add_argument("key", metavar="KEY", help="TYPE:UID, or a Smart Device UID")
    write.add_argument(
        "assignments", metavar="PARAM=VALUE", nargs="+", help="a parameter and the value to write to it"
    )
    write.add_argument(
        "--hold",
        action="store_true",
        help="keep the commands written (actuators) in force until Ctrl-C or SIGTERM; "
        "without it they end as this command exits",
    )
    write.set_defaults(buffers_main=_write_main)
    clean = actions.add_parser(
        "clean",
        parents=[common],
        help="remove the segments no producer serves any more (leftovers of a stopped bridge)",
        description="Remove this user's stale segments of the namespace: those that a producer (the\n"
        "bridge) served once and that nobody serves now, whose last producer is gone (stopped\n"
        "or died) and that no other process has open; and device buffers never served whose\n"
        "maker is gone, that nobody has open, untouched for a minute (a mistyped UID).\n"
        "Kept: buffers a live producer serves,\n"
        "plain buffers never served (a program uses them on its own), a device buffer never\n"
        "served while the program that made it runs (student code that opened it before the\n"
        "bridge came), segments of a bridge still running\n"
        "(its unplugged devices come back into them) or still open in a program.\n"
        "Lists what it removed (with --dry-run: what it would remove).",
        epilog="examples:\n"
        "  $ runtime buffers clean --dry-run\n"
        "  $ runtime buffers clean\n"
        "  $ runtime buffers clean --namespace rt-demo-4242 --json\n",
        formatter_class=formatter,
    )
    clean.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    clean.set_defaults(buffers_main=_clean_main)
    _add_rates_actions(actions, common, formatter)


def _add_rates_actions(actions: Any, common: argparse.ArgumentParser, formatter: Any) -> None:
    """``hz`` and ``echo`` (:mod:`runtime.rates`)."""
    hz = actions.add_parser(
        "hz",
        parents=[common],
        help="update rates per buffer (average, min/max/std of the interval), every second",
        description="Measure how often buffers change, as 'ros2 topic hz' does: per buffer, the\n"
        "average rate and the min/max/std dev of the interval over the last --window changes,\n"
        "printed every second until Ctrl-C, --count reports or --duration seconds. Woken by\n"
        "the changes (not polling); a Smart Device's change is timed by its last_update.\n"
        "KEY (TYPE:UID, or a Smart Device UID) measures one buffer; default: all.",
        epilog="examples:\n  $ runtime buffers hz\n"
        "  $ runtime buffers hz 0xa0a0000000000c0ffee --count 5 --json\n",
        formatter_class=formatter,
    )
    hz.add_argument("key", metavar="KEY", nargs="?", help="TYPE:UID, or a Smart Device UID (default: all)")
    hz.add_argument(
        "--window",
        type=bounded(int, 2, MAX_COUNT),
        default=100,
        metavar="N",
        help="the last N changes make the statistics (default: 100)",
    )
    hz.add_argument("--count", type=bounded(int, 1, MAX_COUNT), metavar="N", help="stop after N reports")
    hz.add_argument("--duration", type=bounded(float, 0.0, 1e9), metavar="S", help="stop after S seconds")
    hz.set_defaults(buffers_main=_hz_main)
    echo = actions.add_parser(
        "echo",
        parents=[common],
        help="every change of one buffer, with its time",
        description="Print every change of one buffer as it happens (not sampled): its time (a Smart\n"
        "Device's last_update) and its values, one line each (--json: a JSON object per line),\n"
        "until Ctrl-C or --count changes. KEY is TYPE:UID, or a Smart Device UID alone.",
        epilog="examples:\n  $ runtime buffers echo 0xa0a0000000000c0ffee\n"
        "  $ runtime buffers echo gamepad:0 --json --count 100 > gamepad.jsonl\n",
        formatter_class=formatter,
    )
    echo.add_argument("key", metavar="KEY", help="TYPE:UID, or a Smart Device UID")
    echo.add_argument("--count", type=bounded(int, 1, MAX_COUNT), metavar="N", help="stop after N changes")
    echo.set_defaults(buffers_main=_echo_main)


def _add_common_options(parser: argparse.ArgumentParser, default: Any) -> None:
    """``--catalog``, ``--namespace`` and ``--json``, accepted before and after the action.

    On the action parsers the defaults are ``SUPPRESS``: otherwise an option
    given before the action would be overwritten by the action's default.
    """
    add_catalog_option(parser, default=default)
    add_namespace_option(parser, default=default)
    parser.add_argument(
        "--json",
        action="store_true",
        default=False if default is None else default,
        help="print JSON for scripts",
    )


def main(args: argparse.Namespace) -> int:
    """Run ``runtime buffers ACTION``."""
    catalog = load_catalog(args.catalog)
    with BufferStore.use_namespace(args.namespace):
        return int(args.buffers_main(args, catalog))


def _list_main(args: argparse.Namespace, catalog: dict[str, type[Buffer]]) -> int:
    with BufferStore(catalog) as store:
        reports = scan(store)
        enabled = robot_enabled_or_unknown(store)
    if args.json:
        now = time.time()
        print_json([report.to_json(now) for report in reports])
        if not reports:
            print(empty_namespace_line(), file=sys.stderr)
        if not enabled:  # stdout stays the list of buffers
            print(robot_line(enabled), file=sys.stderr)
    else:
        console = make_console()
        view = namespace_view(reports, wrap=console.is_terminal, robot=enabled, who=True)
        console.print(view, crop=console.is_terminal)
    return 0


def _show_main(args: argparse.Namespace, catalog: dict[str, type[Buffer]]) -> int:
    with BufferStore(catalog) as store:
        type_name, uid = parse_key(args.key, store)
        try:
            report = inspect_buffer(store, type_name, uid, details=True, must_exist=True)
        except NoSuchBuffer as exc:
            raise CommandError(f"{exc.message}; {elsewhere()}") from None
        enabled = robot_enabled_or_unknown(store)
    if args.json:
        print_json(report.to_json())
        if not enabled:
            print(robot_line(enabled), file=sys.stderr)
    else:
        make_console().print(show_renderable(report, robot=enabled))
    return 1 if report.error is not None else 0


def _watch_main(args: argparse.Namespace, catalog: dict[str, type[Buffer]]) -> int:
    console = make_console()
    key: tuple[str, int] | None = None
    if args.key is not None:
        key = parse_key(args.key, BufferStore(catalog))

    said_empty = False
    said_robot: bool | None = True  # the robot state last said on stderr (--json); enabled goes unsaid

    def snapshot() -> tuple[Any, RenderableType]:
        nonlocal said_empty, said_robot
        with BufferStore(catalog) as store:  # fresh each time: buffers come and go
            enabled = robot_enabled_or_unknown(store)
            if args.json and enabled != said_robot:  # stdout is for JSON alone
                print(robot_line(enabled), file=sys.stderr, flush=True)
                said_robot = enabled
            if key is None:
                reports = scan(store)
                data: Any = [report.to_json() for report in reports]
                if not reports and args.json and not said_empty:
                    print(empty_namespace_line(), file=sys.stderr, flush=True)
                    said_empty = True
                return data, namespace_view(reports, values=True, wrap=console.is_terminal, robot=enabled)
            report = inspect_buffer(store, *key, details=True)
            return report.to_json(), show_renderable(report, robot=enabled)

    refreshes = 0
    try:
        if console.is_terminal and not args.json:
            from rich.live import Live

            with Live(snapshot()[1], console=console, auto_refresh=False) as live:
                refreshes = 1
                while args.count is None or refreshes < args.count:
                    time.sleep(args.interval)
                    live.update(snapshot()[1], refresh=True)
                    refreshes += 1
            return 0
        while args.count is None or refreshes < args.count:
            if refreshes:
                time.sleep(args.interval)
            data, renderable = snapshot()
            if args.json:
                print(json.dumps(data), flush=True)
            else:
                console.print(renderable, crop=False)  # not a terminal: long lines stay whole
            refreshes += 1
    except KeyboardInterrupt:
        pass
    return 0


def _hz_main(args: argparse.Namespace, catalog: dict[str, type[Buffer]]) -> int:
    key = parse_key(args.key, BufferStore(catalog)) if args.key is not None else None
    meter, stop = RateMeter(args.window), threading.Event()
    with stop_on_signals(stop):
        watcher = measure(catalog, meter, stop, select=None if key is None else lambda *k: k == key)
        for rates in rate_reports(meter, stop, count=args.count, duration=args.duration):
            if args.json:
                print(json.dumps([rate.to_json() for rate in rates]), flush=True)
            else:
                print("\n".join(rate.line() for rate in rates) or "(no buffers yet)", flush=True)
    return 1 if watcher.failed else 0


def _echo_main(args: argparse.Namespace, catalog: dict[str, type[Buffer]]) -> int:
    stop = threading.Event()
    with stop_on_signals(stop), BufferStore(catalog) as store:
        type_name, uid = parse_key(args.key, store)
        if not os.path.exists(os.path.join(SHM_DIR, BufferStore.segment_name(type_name, uid))):
            raise CommandError(
                f"no buffer {type_name}:{uid:#x} in namespace {BufferStore.namespace()!r}; {elsewhere()}"
            )
        try:
            buffer = store.get_or_open((type_name, uid), create=False)
        except DeviceBufferError as exc:
            raise CommandError(f"cannot open {type_name}:{uid:#x}: {exc.message}") from None
        print(f"echoing {type_name}:{uid:#x} (Ctrl-C to stop)", file=sys.stderr, flush=True)
        for seen, change in enumerate(changes(buffer, stop), 1):
            if args.json:
                print(json.dumps({"time": change.time, "values": jsonable(dict(change.values))}), flush=True)
            else:
                stamp = time.strftime("%H:%M:%S", time.localtime(change.time)) + f"{change.time % 1:.6f}"[1:]
                values = " ".join(f"{name}={format_value(value)}" for name, value in change.values.items())
                print(f"{stamp} {values}", flush=True)
            if args.count and seen >= args.count:
                break
    return 0


def _whither(buffer: Buffer) -> str:
    """Where a value written to a device's buffer goes: its producer's doing (a bridge, or a replay)."""
    pid = buffer.producer_pid
    if pid is not None and runs_command(pid, "replay"):
        return (
            f"pending: the buffer's producer is runtime replay, pid {pid}, "
            "which sends nothing to a device: there is no bridge here"
        )
    return "the bridge sends it to the device"


def _write_main(args: argparse.Namespace, catalog: dict[str, type[Buffer]]) -> int:
    stop = threading.Event()
    signals = contextlib.ExitStack()
    if args.hold:  # from before the write: a signal then ends the command cleanly, never kills it
        signals.enter_context(stop_on_signals(stop))
    with signals, BufferStore(catalog) as store:
        type_name, uid = parse_key(args.key, store)
        texts = parse_assignments(args.assignments)
        buffer_type = store.catalog[type_name]
        key = f"{type_name}:{uid:#x}"
        try:  # the one write policy: refused (the bounds said), never clamped
            values = check_writes(buffer_type, texts, texts=True)
        except WriteRefused as exc:
            name = exc.param.partition("[")[0]  # gains[1]: an item of the array gains
            why = exc.problem if name == exc.param else exc.message
            raise CommandError(f"cannot write {name}={texts.get(name, '')}: {why}") from None
        segment = BufferStore.segment_name(type_name, uid)
        try:
            buffer = store.get_or_open((type_name, uid), create=False)
        except DeviceBufferError as exc:
            if not os.path.exists(os.path.join(SHM_DIR, segment)):
                raise CommandError(
                    f"{key} is not connected: it has no buffer in namespace {BufferStore.namespace()!r} "
                    f"(no bridge has served it); {elsewhere()}"
                ) from None
            raise CommandError(f"cannot open {key}: {exc.message}") from None
        not_connected = (
            f"{key} is not connected: its buffer is invalid (no bridge serves it now); nothing written"
        )
        if not buffer.valid:
            raise CommandError(not_connected)
        safe = buffer_type.safe_values()
        commands = [name for name in texts if name in safe]
        try:
            with buffer.transaction():
                if commands and buffer.disabled:  # the flag write() checks, under this lock
                    raise CommandError(_disabled_refusal(key, commands))  # before any write: all or none
                apply_writes(buffer, values)
        except DeviceBufferError as exc:
            if not buffer.valid:
                raise CommandError(not_connected) from None
            if exc.message.startswith("the robot is disabled"):
                raise CommandError(_disabled_refusal(key, commands)) from None
            raise CommandError(f"cannot write to {key}: {exc.message}") from None
        written = {name: values[name] for name in texts}
        hold = bool(args.hold and commands)
        if args.json:
            print_json(
                {
                    "key": key,
                    "segment": segment,
                    "written": jsonable(written),
                    "commands": commands,
                    "held": hold,
                }
            )
        else:
            assignments = " ".join(f"{name}={format_value(value)}" for name, value in written.items())
            whither = _whither(buffer) if issubclass(buffer_type, DeviceBuffer) else "pending"
            print(f"wrote {key}: {assignments} ({whither})")
        back = _back_to(commands, safe) if commands else ""
        if hold:
            print(
                f"holding {', '.join(commands)} on {key} until Ctrl-C; "
                f"then {'they end' if len(commands) > 1 else 'it ends'} ({back})",
                file=sys.stderr if args.json else sys.stdout,
                flush=True,
            )
            return _hold(buffer, key, commands, back, stop, json_output=args.json)
        if args.hold:
            print(
                f"{PROG} buffers: note: --hold: nothing to hold (no parameter written is a command)",
                file=sys.stderr,
            )
        elif commands:
            verb = "are commands: they end" if len(commands) > 1 else "is a command: it ends"
            print(
                f"{PROG} buffers: note: {', '.join(commands)} {verb} ({back}) "
                f"when this command exits; use --hold to keep {'them' if len(commands) > 1 else 'it'} "
                "until Ctrl-C",
                file=sys.stderr,
            )
    return 0


def _disabled_refusal(key: str, commands: Sequence[str]) -> str:
    return (
        f"cannot write {', '.join(commands)} to {key}: the robot is disabled (namespace "
        f"{BufferStore.namespace()!r}): actuators keep their safe values until 'runtime enable'; "
        "nothing written"
    )


def _back_to(names: Sequence[str], safe: Mapping[str, Any]) -> str:
    """``back to 0.0`` (or ``duty_cycle_a back to 0.0, servo0 back to ...``)."""
    if len({repr(safe[name]) for name in names}) == 1:
        return f"back to {format_value(safe[names[0]])}"
    return ", ".join(f"{name} back to {format_value(safe[name])}" for name in names)


def _hold(
    buffer: Buffer,
    key: str,
    commands: Sequence[str],
    back: str,
    stop: threading.Event,
    *,
    json_output: bool = False,
) -> int:
    """Hold the commands until ``stop`` (:func:`runtime.commands.hold`); 0, or a :class:`CommandError`
    (status 1) when they end otherwise: the buffer invalid, the robot disabled, or taken over."""
    names = ", ".join(commands)
    # (the signals are taken since before the write: see _write_main)
    try:
        end = hold(buffer, commands, stop)
    except DeviceBufferError as exc:
        raise CommandError(f"cannot end the commands on {key}: {exc.message}") from None
    if end.reason == "invalid":
        raise CommandError(
            f"{key} is not connected any more (its buffer turned invalid): {names} no longer held"
        )
    if end.reason == "disabled":
        raise CommandError(
            f"the robot was disabled (namespace {BufferStore.namespace()!r}): {names} ended "
            f"({back}); 'runtime enable' enables it again"
        )
    if end.reason == "taken":
        others = ", ".join(f"pid {pid}" for pid in end.others)
        how = f"taken over by {others}" if others else "ended by the bridge"
        raise CommandError(f"{names} on {key}: no longer this command's ({how})")
    out = sys.stderr if json_output else sys.stdout  # stdout is for JSON alone
    if end.ended:
        print(f"ended {', '.join(end.ended)} on {key} ({back})", file=out, flush=True)
    else:
        print(f"{names} on {key}: taken over meanwhile; left alone", file=out, flush=True)
    return 0


def _clean_main(args: argparse.Namespace, catalog: dict[str, type[Buffer]]) -> int:
    namespace = BufferStore.namespace()
    with BufferStore(catalog) as store:
        total = len(store.find_segments())
        stale = store.stale_segments()
    done: list[dict[str, Any]] = []
    failed = 0
    for type_name, uid, name, pid in stale:
        entry = {
            "type": type_name,
            "uid": uid,
            "uid_hex": f"{uid:#x}",
            "segment": name,
            "last_producer_pid": pid,
        }
        if not args.dry_run:
            try:
                Buffer.unlink(name)
            except DeviceBufferError:  # removed meanwhile by someone else
                continue
            except OSError as exc:
                print(
                    f"{PROG} buffers: error: cannot remove {name}: {exc.strerror or exc}",
                    file=sys.stderr,
                )
                failed += 1
                continue
        done.append(entry)
    if args.json:
        print_json({"namespace": namespace, "dry_run": bool(args.dry_run), "removed": done})
        return 1 if failed else 0
    verb = "would remove" if args.dry_run else "removed"
    for entry in done:
        served = entry["last_producer_pid"]
        how = f"last served by pid {served}, gone" if served else "never served, its maker gone"
        print(f"{verb} {entry['type']}:{entry['uid_hex']} (segment {entry['segment']}, {how})")
    kept = total - len(stale)
    kept_text = f"; {kept} kept (served, never served, or still open)" if kept else ""
    if done:
        summary = (
            f"{verb} {len(done)} stale segment{'s' if len(done) != 1 else ''} in namespace {namespace!r}"
        )
        print(summary + kept_text)
    elif not failed:
        print(f"no stale segments in namespace {namespace!r}{kept_text or '; it has no segments'}")
    return 1 if failed else 0
