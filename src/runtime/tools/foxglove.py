"""``runtime foxglove``: see the robot live in Foxglove, and drive it from there.

Serves the buffers of the namespace to Foxglove over WebSocket: a topic per
buffer, writeable parameters as Foxglove parameters, a command topic per
buffer, ``/log`` for what student code prints. Read-only unless
``--allow-write``; browsers connect only from the Foxglove app and the origins
of ``--allow-origin``. The engine, and how it all works, is
:mod:`runtime.live` (:func:`runtime.live.serve_foxglove`).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from ..live import (
    DEFAULT_HOST,
    DEFAULT_MAX_RATE,
    DEFAULT_PORT,
    FOXGLOVE_ORIGINS,
    MAX_RATE,
    LiveError,
    LiveView,
    serve_foxglove,
)
from ..live.gate import loopback
from ..store import BufferStore
from ._common import (
    CommandError,
    add_catalog_option,
    add_namespace_option,
    bounded,
    load_catalog,
    say_if_empty,
    stop_on_signals,
)

__all__ = ["DESCRIPTION", "EPILOG", "add_arguments", "main"]

logger = logging.getLogger(__name__)

DESCRIPTION = """\
See the robot live in Foxglove, and drive it from there: a Foxglove
WebSocket server of the buffers of the namespace.

Each buffer is a topic /runtime/<type>/<uid hex> of JSON messages
{"valid": ..., "values": {...}} with a JSON Schema from the catalog (names,
types, bounds), sent on every change (at most --max-rate per second per
buffer). Buffers appear and disappear with their devices; one that turns
invalid (device disconnected) says "valid": false, and Foxglove lists a
warning until it is back.

Writeable parameters are Foxglove parameters named
/runtime/<type>/<uid hex>/<param>: the Parameters panel shows and sets them.
A client may also publish JSON {param: value, ...} on the topic
/runtime/<type>/<uid hex>/command. Values are checked against the catalog
(type, bounds, writeable): a refused one is not written, and Foxglove shows
an error saying why (it is never clamped).

What student code prints ('runtime run') is the topic /log, a foxglove.Log
message per line, for Foxglove's Log panel: the lines the runner's buffer
holds when you subscribe (if nobody else does), then each line printed.

A motor's duty cycle or a servo's position set from Foxglove belongs to the
client that set it: when that client goes away (tab closed, connection
lost) or the server stops, it goes back to its safe value, unless someone
wrote it since. While the robot is disabled (runtime disable), Foxglove
shows a warning, and such values are refused.

Read-only unless --allow-write: without it every write is refused (the
robot is only shown). Browsers connect only from the Foxglove app
(https://app.foxglove.dev, or the desktop app) and from the origins given
with --allow-origin: any other web page is refused (403), whatever address
the server listens on, so that no page you visit reads or drives the robot.
Programs that send no Origin header are accepted. With --allow-write on an
address other than 127.0.0.1 anyone on the network who reaches the port may
drive the robot: a warning says so at start.

In Foxglove: Open connection > Foxglove WebSocket > the URL printed.
"""

EPILOG = f"""\
examples:
  $ runtime foxglove                              # ws://127.0.0.1:{DEFAULT_PORT}, until Ctrl-C
  $ runtime foxglove --allow-write                # also drive the robot from Foxglove
  $ runtime foxglove --host 0.0.0.0 --port 9000   # reachable from other machines (read-only)
  $ runtime foxglove --allow-origin http://localhost:3000   # a dashboard page of yours too
  $ runtime foxglove --namespace rt-demo-4242 --max-rate 20
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``runtime foxglove``."""
    add_catalog_option(parser)
    add_namespace_option(parser)
    parser.add_argument(
        "--host", default=DEFAULT_HOST, help=f"the address to listen on (default {DEFAULT_HOST})"
    )
    parser.add_argument(
        "--port",
        type=bounded(int, 0, 65535),
        default=DEFAULT_PORT,
        help=f"the TCP port to listen on, 0 for any free one (default {DEFAULT_PORT})",
    )
    parser.add_argument(
        "--max-rate",
        type=bounded(float, 0, MAX_RATE, above=True, unit="messages per second"),
        default=DEFAULT_MAX_RATE,
        metavar="HZ",
        help=f"the most messages per second per buffer (default {DEFAULT_MAX_RATE:g})",
    )
    parser.add_argument(
        "--allow-write",
        action="store_true",
        help="let clients write parameters and publish commands (default: read-only, every write refused)",
    )
    parser.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="also accept browser connections from this origin, e.g. http://localhost:3000 (repeatable; "
        "always accepted: https://app.foxglove.dev, the desktop app, and programs sending no Origin)",
    )


def main(args: argparse.Namespace) -> int:
    """Run ``runtime foxglove``."""
    catalog = load_catalog(args.catalog)
    served: list[LiveView] = []

    def announce(view: LiveView) -> None:
        served.append(view)
        access = "read-write" if args.allow_write else "read-only: --allow-write to drive the robot"
        print(
            f"serving the buffers of namespace {view.namespace!r} to Foxglove at {view.url} ({access})",
            flush=True,
        )
        origins = ", ".join([*FOXGLOVE_ORIGINS, "the desktop app", *args.allow_origin])
        print(f"  browsers accepted from: {origins}", flush=True)
        if args.allow_write and not loopback(args.host):
            logger.warning(
                "listening on %s with --allow-write and no access control: anyone who reaches "
                "port %d can drive the robot (restrict it: drop --allow-write for read-only, "
                "or listen on 127.0.0.1 and connect through 'ssh -L', or firewall the port)",
                args.host,
                view.port,
            )
        print("  in Foxglove: Open connection > Foxglove WebSocket > that URL; Ctrl-C to stop", flush=True)
        say_if_empty(catalog, view.namespace, "foxglove", "serving those that appear")

    with BufferStore.use_namespace(args.namespace) as namespace:
        stop = threading.Event()
        try:
            with stop_on_signals(stop, signals=(signal.SIGINT, signal.SIGTERM, signal.SIGHUP)):
                serve_foxglove(
                    catalog,
                    args.host,
                    args.port,
                    args.max_rate,
                    stop,
                    namespace=namespace,
                    on_ready=announce,
                    allow_write=args.allow_write,
                    allow_origins=args.allow_origin,
                )
        except LiveError as exc:
            raise CommandError(exc.message) from None
    view = served[0]
    print(
        f"served {view.published} messages; {view.written} values written, {view.refused} refused", flush=True
    )
    return 0


if __name__ == "__main__":  # python -m runtime.tools.foxglove ...: the same as runtime foxglove ...
    from .cli import main as runtime_main

    raise SystemExit(runtime_main(["foxglove", *sys.argv[1:]]))
