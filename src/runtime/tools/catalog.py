"""``runtime catalog``: show the device catalog, or check a catalog file.

The catalog (YAML) is where every device type is described; buffer types are
generated from it. This command shows it as tables (or JSON) and checks a file
exactly as the runtime would load it, so that a mistake is found at the desk,
with the file, device type and parameter named, rather than on the robot.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..exception import RuntimeBaseException
from ..values import jsonable
from ._common import (
    CommandError,
    add_catalog_option,
    make_console,
    param_table,
    print_json,
    suggest,
)

if TYPE_CHECKING:
    from ..buffer import Buffer

__all__ = ["DESCRIPTION", "EPILOG", "add_arguments", "describe", "main"]

DESCRIPTION = """\
Show the device catalog, or check a catalog file.

The catalog (YAML) describes every device type: its Smart Device device_id,
its timing intervals, its command timeout if any, and its parameters (ID,
type, flags, bounds, and an actuator's safe value: what the device holds when
nobody commands it). Buffer
types are generated from it. Without --catalog, the catalog packaged with
this library is used. --check loads the file exactly as the runtime would and
prints "ok", or the first mistake (naming the file, device type and
parameter) with exit status 1. A catalog file must be a regular file of at
most 1 MiB.
"""

EPILOG = """\
examples:
  $ runtime catalog                            # every type of the packaged catalog
  $ runtime catalog yogi-bear rfid             # only these types
  $ runtime catalog --catalog my.yaml --json   # a catalog as JSON, for scripts
  $ runtime catalog --check my.yaml            # "ok", or what is wrong and where
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``runtime catalog``."""
    parser.add_argument("types", nargs="*", metavar="TYPE", help="show only these device types")
    add_catalog_option(parser)
    # Deprecated: the option's name before every command took --catalog. Hidden, kept for old scripts.
    parser.add_argument("--file", "-f", dest="catalog", metavar="FILE", help=argparse.SUPPRESS)
    parser.add_argument(
        "--check",
        nargs="?",
        const=True,
        default=None,
        metavar="FILE",
        help='validate the catalog (FILE, or --catalog, or the packaged one); print "ok" or the error',
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")


def _catalog_path(args: argparse.Namespace) -> str | None:
    check = args.check
    path: str | None = args.catalog
    if isinstance(check, str):
        if path is not None and path != check:
            raise CommandError("give the file once: --check FILE or --catalog FILE --check", code=2)
        path = check
    return path


def describe(raw: Mapping[str, Any], types: Mapping[str, type[Buffer]]) -> dict[str, Any]:
    """The catalog as JSON data: raw type strings, with every default applied.

    A Smart Device type with a command timeout has ``command_timeout``
    (seconds), a parameter with a safe value ``safe``; the others have neither. A parameter's
    ``unit`` and ``description`` are there when the catalog gives them.
    """
    from ..buffer import DeviceBuffer
    from ..values import type_name

    result: dict[str, Any] = {}
    for name, buffer_type in types.items():
        raw_types = {param["name"]: param["type"] for param in raw[name]["params"]}
        entry: dict[str, Any] = {}
        if issubclass(buffer_type, DeviceBuffer):
            entry["device_id"] = buffer_type.device_id
            for key in ("sub_interval", "write_interval", "heartbeat_interval"):
                entry[key] = float(getattr(buffer_type, key))
            if buffer_type.command_timeout is not None:
                entry["command_timeout"] = float(buffer_type.command_timeout)
        params = []
        for param in buffer_type.params.values():
            described = {
                "name": param.name,
                "id": param.id,
                "type": str(raw_types.get(param.name, type_name(param.ctype))).replace(" ", ""),
                "readable": param.readable,
                "writeable": param.writeable,
                "subscribed": param.subscribed,
                "lower": jsonable(float(param.lower)),
                "upper": jsonable(float(param.upper)),
            }
            if param.safe is not None:
                described["safe"] = jsonable(param.safe)
            for key in ("unit", "description"):
                if getattr(param, key):
                    described[key] = getattr(param, key)
            params.append(described)
        entry["params"] = params
        result[name] = entry
    return result


def main(args: argparse.Namespace) -> int:
    """Run ``runtime catalog``."""
    from .. import catalog

    path = _catalog_path(args)
    source = path or "the packaged catalog"
    try:
        raw = catalog.load_raw(path)
        types = catalog.make_catalog(raw)
    except (RuntimeBaseException, ValueError) as exc:
        message = exc.message if isinstance(exc, RuntimeBaseException) else str(exc)
        if args.check and args.json:
            print_json({"ok": False, "source": source, "error": message})
            return 1
        raise CommandError(message) from None
    if args.check:
        if args.json:
            print_json({"ok": True, "source": source, "types": len(types)})
        else:
            print(f"ok: {source}: {len(types)} device type{'s' * (len(types) != 1)}")
        return 0
    described = describe(raw, types)
    unknown = [name for name in args.types if name not in described]
    if unknown:
        raise CommandError(f"no device type {unknown[0]!r} in {source}{suggest(unknown[0], described)}")
    if args.types:
        described = {name: described[name] for name in args.types}
    if args.json:
        print_json({"source": source, "types": described})
        return 0
    _print_catalog(described)
    return 0


def _print_catalog(described: Mapping[str, Any]) -> None:
    from ._views import param_notes

    console = make_console()
    for name, entry in described.items():
        if "device_id" in entry:
            title = (
                f"{name}: device_id {entry['device_id']}, sub {entry['sub_interval']:g} s, "
                f"write {entry['write_interval']:g} s, heartbeat {entry['heartbeat_interval']:g} s"
            )
            if "command_timeout" in entry:
                title += f", command timeout {entry['command_timeout']:g} s"
        else:
            title = f"{name}: plain buffer (not a Smart Device)"
        console.print(title, soft_wrap=True)  # not a table title: rich would wrap it to the table's width
        safe = [
            f"{param['name']} = {_show_safe(param['safe'])}" for param in entry["params"] if "safe" in param
        ]
        if safe:
            console.print(f"safe values (held when nobody commands them): {', '.join(safe)}", soft_wrap=True)
        console.print(param_table(entry["params"]))
        for note in param_notes(entry["params"]):
            console.print(note, soft_wrap=True)


def _show_safe(value: object) -> str:
    """A safe value as the catalog writes it: ``0``, ``0.5``, ``true``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return f"{value:g}" if isinstance(value, float) else str(value)
