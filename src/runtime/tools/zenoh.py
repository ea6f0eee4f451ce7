"""``runtime zenoh``: the robot's buffers on a Zenoh network, for other machines.

The command: its help, its options and a short :func:`main`. The server is
the library's :class:`runtime.remote.server.ZenohServer` (its docstring says
how it works); :mod:`runtime.remote` is the Python client, and its docstring
the reference of the keys and the JSON they carry.

Run it as ``runtime zenoh`` (see :mod:`runtime.tools.cli`) or
``python -m runtime.tools.zenoh``. ``import zenoh`` below is the absolute
import of the ``eclipse-zenoh`` package, not this module.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
from collections.abc import Sequence
from typing import Any

import zenoh

from ..remote import (
    RemoteError,
    access_control_enabled,
    check_namespace,
    exposed_endpoints,
    make_config,
    open_session,
)
from ..remote.server import DEFAULT_MAX_RATE, ZenohServer
from ..store import BufferStore
from ._common import (
    CommandError,
    add_catalog_option,
    add_namespace_option,
    bounded,
    configure_logging,
    load_catalog,
    stop_on_signals,
)

__all__ = ["DESCRIPTION", "EPILOG", "add_arguments", "main"]

logger = logging.getLogger("runtime.tools.zenoh")

MAX_RATE_LIMIT = 10000.0
"""The highest ``--max-rate`` accepted."""

DESCRIPTION = """\
Serve the robot's buffers on a Zenoh network, for other machines.

Every buffer of the namespace (Smart Devices served by the bridge, the
gamepad...) appears under key expressions that any Zenoh client, in any
language, can use (<uid> is hex with 0x, as 'runtime buffers' prints it):
  runtime/<namespace>/<type>/<uid>         its readable values as JSON, published
                                           on every change; a 'get' answers them
  liveliness token at that key             alive while the device is valid
  liveliness token runtime/<namespace>     alive while this process runs
  runtime/<namespace>/<type>/<uid>/write   put {"param": value, ...} to write
  runtime/<namespace>/<type>/<uid>/error   why a write was refused (JSON)
  runtime/<namespace>/@robot               {"enabled": true|false}; a 'get' answers
  runtime/<namespace>/@client/<id>         a client's liveliness token (below)
  runtime/<namespace>/@mode                put {"mode": "teleop"} (idle, auto, teleop)
                                           to switch the field's mode; a 'get' answers
  runtime/<namespace>/@input/gamepad       put {"button_a": true, "joystick_left_x": 0.5}
  runtime/<namespace>/@input/keyboard      put {"a": true, "left_arrow": false}
  .../@mode/error, .../@input/<kind>/error why a mode or an input was refused (JSON)
A refused write (unknown or read-only parameter, wrong type, device not
connected, robot disabled) changes nothing. A write of an actuator (a
parameter with a safe value, such as duty_cycle) is a command of the client
that sent it: the client declares the token above and puts its writes with
<id> as the attachment; when its token goes (it closed, died, or its network
was lost), the safe values come back. A command without a live token is
refused. So are a mode other than idle and the inputs of a client without a
live token; the client that set the mode last drives the robot: when it goes
(or this process stops), the mode goes idle, and the inputs it fed go back to
neutral. 'runtime drive' is that driver station. The Python client is the
runtime.remote module, which does all this.
Multicast scouting is off unless --scout; use --config for TLS, access
control or leases (the options here apply on top of the file). It exits
cleanly on Ctrl-C or SIGTERM.
"""

EPILOG = """\
examples:
  $ runtime zenoh --listen tcp/0.0.0.0:7447
  $ runtime zenoh --listen tcp/0.0.0.0:7447 --max-rate 20 --read-only
  $ runtime zenoh --connect tcp/192.168.0.10:7447 --name robot-7
  $ runtime zenoh --config zenoh-tls.json5 --namespace rt-demo-4242

On another machine, in Python:
  from runtime import remote
  with remote.connect("tcp/ROBOT-ADDRESS:7447") as robot:
      print(robot.discover())
"""

DEFAULT_LOG_LEVEL = "INFO"
"""One line per event (a buffer served, valid, invalid, gone; a refused write; a client's commands
ended; the robot enabled or disabled; a mode set; an input fed, or back to neutral)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``runtime zenoh`` options to ``parser``."""
    network = parser.add_argument_group("the Zenoh session")
    network.add_argument(
        "--listen",
        action="append",
        default=[],
        metavar="ENDPOINT",
        help="accept connections on this endpoint, e.g. tcp/0.0.0.0:7447 (repeatable)",
    )
    network.add_argument(
        "--connect",
        action="append",
        default=[],
        metavar="ENDPOINT",
        help="connect to this endpoint, e.g. a Zenoh router's tcp/10.0.0.1:7447 (repeatable)",
    )
    network.add_argument(
        "--scout", action="store_true", help="find peers and routers by multicast scouting (default: off)"
    )
    network.add_argument(
        "--mode",
        choices=("peer", "client", "router"),
        default=None,
        help="the Zenoh mode of this session (default: peer, or the --config file's)",
    )
    network.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help="a Zenoh configuration file (JSON5): TLS, access control, leases...",
    )
    what = parser.add_argument_group("what is served")
    add_namespace_option(what)
    what.add_argument(
        "--name",
        metavar="NAME",
        default=None,
        help="the <namespace> of the key expressions (default: the buffer namespace); "
        "give each robot on one Zenoh network its own",
    )
    what.add_argument(
        "--max-rate",
        type=bounded(float, 0, MAX_RATE_LIMIT, above=True, unit="publications per second"),
        default=DEFAULT_MAX_RATE,
        metavar="HZ",
        help=f"publish each buffer at most HZ times a second (default {DEFAULT_MAX_RATE:g})",
    )
    what.add_argument("--read-only", action="store_true", help="accept no writes from the network")
    add_catalog_option(parser)


def main(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM; return the exit code (0 clean)."""
    configure_logging()
    catalog = load_catalog(args.catalog)
    if not (args.listen or args.connect or args.config or args.scout):
        raise CommandError(
            "nowhere to serve: give --listen ENDPOINT (such as tcp/0.0.0.0:7447), "
            "--connect ENDPOINT, --scout or --config FILE",
            2,
        )
    with BufferStore.use_namespace(args.namespace) as namespace:
        try:
            name = check_namespace(args.name or namespace)
            config = make_config(
                mode=args.mode or (None if args.config else "peer"),
                listen=args.listen,
                connect=args.connect,
                scout=bool(args.scout),
                config_file=args.config,
            )
            session = open_session(config)
        except ValueError as exc:
            raise CommandError(str(exc), 2) from None
        except RemoteError as exc:
            raise CommandError(exc.message) from None
        exposed = exposed_endpoints(args.listen)
        if exposed and not args.read_only and not access_control_enabled(config):
            logger.warning(
                "zenoh: listening on %s with writes enabled and no access control: anyone who reaches it "
                "can drive the robot (restrict it: --read-only, or --config FILE with TLS and "
                "access_control, or listen on 127.0.0.1 only)",
                ", ".join(exposed),
            )
        try:
            with BufferStore(catalog) as store:
                server = ZenohServer(session, store, name, max_rate=args.max_rate, read_only=args.read_only)
                server.listening = _listening(args.listen, config)
                return asyncio.run(_serve(server))
        except KeyboardInterrupt:  # a second Ctrl-C during shutdown
            return 130
        finally:
            _close(session)  # and with it everything it declared


def _listening(listen: Sequence[str] | None, config: zenoh.Config) -> tuple[str, ...]:
    """The endpoints the session listens on: ``--listen``, else the configuration file's list."""
    if listen:
        return tuple(listen)
    try:
        endpoints = json.loads(config.get_json("listen/endpoints"))
    except Exception:  # noqa: BLE001 - only for the start-up line
        return ()
    return tuple(str(endpoint) for endpoint in endpoints) if isinstance(endpoints, list) else ()


async def _serve(server: ZenohServer) -> int:
    """Run the server until SIGINT or SIGTERM."""
    stop = asyncio.Event()
    with stop_on_signals(stop, asyncio.get_running_loop()):
        return await server.serve(stop)


def _close(session: zenoh.Session) -> None:
    """Close a Zenoh session (its stub leaves ``close`` untyped)."""
    closing: Any = session
    closing.close()


if __name__ == "__main__":  # python -m runtime.tools.zenoh ...: the same as runtime zenoh ...
    import sys

    from .cli import main as runtime_main

    raise SystemExit(runtime_main(["zenoh", *sys.argv[1:]]))
