"""``runtime msg``: decode and encode Smart Device protocol messages by hand.

Debugging a device, or the bridge, means reading what travels on the serial
line, and sometimes sending a message of one's own. ``decode`` takes the
COBS-encoded hex of frames (as a serial sniffer or the bridge's ``--verbose``
log shows them) and prints what they say; ``encode`` builds a frame from a
message type and its fields. Both use the library's own codec
(:mod:`runtime.messaging`), so they show exactly what the runtime would do.

Parameter values of DEV_DATA/DEV_WRITE are laid out by the device type's
parameters (``--type``, from the catalog): a :class:`~runtime.messaging.ParamLayout`
over a scratch ``bytearray`` places each parameter's bytes, and the compiled
core copies them between the message and that memory, as it does for buffers.

The engine is the library's: decoding a frame and building messages from
what users type (:func:`runtime.frames.encode`, which raises
:class:`runtime.frames.FrameError` for what is not a message) are
:mod:`runtime.frames`, the layout of a device type's values
:class:`runtime.messaging.TypeLayout`. This module holds the command: its
help, its arguments, what it prints, and the exit status of each failure.

Only the codec is imported up front: buffer types (and the catalog) come in
when a command needs them, so that ``runtime msg encode ping`` starts fast.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from ..frames import KINDS, FrameError, decode_frame, encode, parse_hex, raw_bytes
from ..messaging import UID_FORMS, Message, MessageError, MessageType, TypeLayout
from ._common import (
    CommandError,
    add_catalog_option,
    format_value,
    load_catalog,
    print_json,
    suggest,
)

if TYPE_CHECKING:
    from ..buffer import Buffer, DeviceBuffer

__all__ = [
    "DESCRIPTION",
    "EPILOG",
    "add_arguments",
    "encode_messages",
    "main",
]

DESCRIPTION = """\
Decode and encode Smart Device protocol messages.

  decode HEX...          what COBS-encoded frames say: type, fields, parameter
                         bitmaps (as names with --type), values (DEV_DATA and
                         DEV_WRITE, with --type); hex with or without spaces,
                         with or without the trailing 00 delimiter; several
                         frames separated by 00
  encode KIND [FIELD...] the COBS hex of one message (more when DEV_WRITE or
                         DEV_DATA values do not fit one payload)

--type TYPE names a device type of the catalog (--catalog FILE, default the
packaged one).
"""

EPILOG = """\
examples:
  $ runtime msg decode 04 13 02 06 02 17
  $ runtime msg decode 041302060217 00 02100210 --json
  $ runtime msg decode --type yogi-bear 04 15 06 01 01 01 01 03 3f 2d
  $ runtime msg encode ping
  $ runtime msg encode dev-read --type yogi-bear duty_cycle enc_pos
  $ runtime msg encode sub-req --params 0x3 --interval 40
  $ runtime msg encode hb-req 7
  $ runtime msg encode dev-write --type servo-motor servo0=0.5 servo1=-0.25

A frame that does not decode is reported with its protocol error code
(BAD_CHECKSUM, UNEXPECTED_DELIMITER, ...) and the exit status is 1.
"""

DECODE_EPILOG = """\
examples:
  $ runtime msg decode 04 13 02 06 02 17         # a DEV_READ of parameters 1 and 2
  $ runtime msg decode 04130206021700            # the same, delimiter included
  $ runtime msg decode 02 10 02 10 00 04 13 02 06 02 17    # two frames
  $ runtime msg decode --type yogi-bear --json 04 15 06 01 01 01 01 03 3f 2d   # duty_cycle = 0.5
"""

ENCODE_EPILOG = """\
kinds and their fields:
  ping, dev-disable            no fields
  sub-req [NAME...]            --params BITMAP or names (with --type); --interval MS
                               (default: the type's sub_interval, else 40; 0 unsubscribes)
  sub-res [NAME...]            as sub-req, plus --uid UID (default: the type's device_id)
  dev-read [NAME...]           --params BITMAP or names (with --type)
  dev-write NAME=VALUE...      needs --type; booleans are true/false, arrays a,b,c
  dev-data NAME=VALUE...       as dev-write (what a device sends)
  hb-req ID, hb-res ID         a heartbeat id, 0..255
  error CODE                   a name (BAD_CHECKSUM) or a number (0xfe)

examples:
  $ runtime msg encode ping
  $ runtime msg encode dev-read --type yogi-bear duty_cycle enc_pos
  $ runtime msg encode sub-req --params 0x3 --interval 40
  $ runtime msg encode hb-req 7
  $ runtime msg encode dev-write --type servo-motor servo0=0.5
  $ runtime msg encode dev-data --type yogi-bear duty_cycle=0.5   # 04 15 06 01 01 01 01 03 3f 2d
  $ runtime msg encode error bad-checksum --json
"""


# ---- device types and their layouts ---------------------------------------------------------------


def _device_type(catalog: dict[str, type[Buffer]], name: str) -> type[DeviceBuffer]:
    from ..buffer import DeviceBuffer

    if name not in catalog:
        raise CommandError(f"no device type {name!r} in the catalog{suggest(name, catalog)}", code=2)
    buffer_type = catalog[name]
    if not issubclass(buffer_type, DeviceBuffer):
        raise CommandError(f"{name!r} is not a Smart Device (it has no device_id)", code=2)
    return buffer_type


# ---- decoding -----------------------------------------------------------------------------------


def _print_decoded(data: dict[str, Any]) -> None:
    print(data["frame"])
    if "error" in data:
        print(f"  error: {data['error']} [{data['error_code']} {data['error_code_value']:#04x}]")
        return
    payload = data["payload"]
    size = len(payload.split())
    plural = "s" * (size != 1)
    print(f"  {data['type']} ({data['type_code']:#04x}), payload {size} byte{plural}: {payload or '-'}")
    if "device_type" in data:
        print(f"  device type: {data['device_type']}")
    if "params" in data:
        names = data.get("param_names")
        listed = f" = {', '.join(names) or 'none'}" if names is not None else ""
        print(f"  params: {data['params']:#06x}{listed}")
    if "interval_ms" in data:
        print(
            f"  interval: {data['interval_ms']} ms" + (" (unsubscribe)" if data["interval_ms"] == 0 else "")
        )
    if "uid" in data:
        uid = data["uid"]
        parts = f"device_id {uid['device_id']}, year {uid['year']:#04x}, random {uid['random']:#x}"
        print(f"  uid: {uid['hex']} ({parts})")
    for name, value in data.get("values", {}).items():
        print(f"  {name} = {format_value(value)}")
    if "value_bytes" in data:
        print(f"  value bytes: {data['value_bytes'] or '-'} (give --type to decode them)")
    if "heartbeat_id" in data:
        print(f"  heartbeat id: {data['heartbeat_id']}")
    if "error_code" in data:
        print(f"  error code: {data['error_code']} ({data['error_code_value']:#04x})")


def _decode_main(args: argparse.Namespace) -> int:
    from ..buffer import DeviceBuffer
    from ..store import BufferStore
    from ..values import jsonable

    try:
        frames = parse_hex(args.hex)
    except FrameError as exc:
        raise CommandError(exc.message, code=2) from None
    catalog = load_catalog(args.catalog) if args.type or args.catalog else None
    layout = TypeLayout.of(_device_type(catalog, args.type)) if catalog is not None and args.type else None
    cache: dict[int, TypeLayout | None] = {}

    def lookup(device_id: int) -> TypeLayout | None:
        nonlocal catalog
        if device_id not in cache:
            try:
                catalog = catalog if catalog is not None else load_catalog(None)
            except CommandError:
                return None
            name = BufferStore(catalog).device_types.get(device_id)
            buffer_type = catalog.get(name) if name is not None else None
            cache[device_id] = (
                TypeLayout.of(buffer_type)
                if buffer_type is not None and issubclass(buffer_type, DeviceBuffer)
                else None
            )
        return cache[device_id]

    results: list[dict[str, Any]] = []
    failed = False
    for frame in frames:
        try:
            results.append(decode_frame(frame, layout, lookup))
        except MessageError as exc:
            failed = True
            results.append(
                {
                    "frame": frame.hex(" "),
                    "error": exc.message,
                    "error_code": exc.error_code.name,
                    "error_code_value": int(exc.error_code),
                    "context": jsonable({k: v for k, v in exc.context.items() if k != "error_code"}),
                }
            )
    if args.json:
        print_json(jsonable(results))
    else:
        for index, data in enumerate(results):
            if index:
                print()
            _print_decoded(data)
    return 1 if failed else 0


# ---- encoding -----------------------------------------------------------------------------------


def encode_messages(args: argparse.Namespace, layout: TypeLayout | None) -> list[Message]:
    """Build the message(s) ``runtime msg encode`` was asked for (the engine: :func:`runtime.frames.encode`).

    Raises:
        CommandError: (status 2) Missing or malformed fields for this kind.
        MessageError: The core refused the message.
    """
    try:
        return encode(
            args.kind, args.fields, layout=layout, params=args.params, interval=args.interval, uid=args.uid
        )
    except FrameError as exc:
        raise CommandError(exc.message, code=2) from None


def _encode_main(args: argparse.Namespace) -> int:
    layout = None
    if args.type:
        layout = TypeLayout.of(_device_type(load_catalog(args.catalog), args.type))
    elif args.catalog:
        load_catalog(args.catalog)  # report a broken file even when it is not needed
    try:
        messages = encode_messages(args, layout)
    except MessageError as exc:
        raise CommandError(f"cannot build the message: {exc} [{exc.error_code.name}]") from None
    if args.json:
        print_json(
            [
                {
                    "type": MessageType(m.type).name,
                    "raw": raw_bytes(m).hex(" "),
                    "encoded": m.encode().hex(" "),
                }
                for m in messages
            ]
        )
    else:
        for message in messages:
            print(message.encode().hex(" "))
    return 0


# ---- the command --------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``runtime msg decode`` and ``runtime msg encode``."""
    actions = parser.add_subparsers(dest="action", metavar="ACTION", title="actions", required=True)
    formatter = argparse.RawDescriptionHelpFormatter
    decoder = actions.add_parser(
        "decode",
        help="what COBS-encoded frames say",
        description="Decode COBS-encoded Smart Device frames (hex) and print their type and fields.\n"
        "Spaces, a 0x prefix and the trailing 00 delimiter are optional; 00 separates frames.\n"
        "With --type, parameter bitmaps show as names and DEV_DATA/DEV_WRITE values are decoded.\n"
        "A frame that fails to decode prints its error and protocol error code; exit status 1.",
        epilog=DECODE_EPILOG,
        formatter_class=formatter,
    )
    decoder.add_argument("hex", nargs="+", metavar="HEX", help="frame bytes in hex")
    encoder = actions.add_parser(
        "encode",
        help="the COBS hex of a message",
        description="Build a Smart Device message and print its COBS encoding in hex (without the\n"
        "00 delimiter), one line per message. KIND is one of: " + ", ".join(KINDS) + ".",
        epilog=ENCODE_EPILOG,
        formatter_class=formatter,
    )
    encoder.add_argument("kind", choices=list(KINDS), metavar="KIND", help="the message type")
    encoder.add_argument(
        "fields", nargs="*", metavar="FIELD", help="parameter names, NAME=VALUE, an id or a code"
    )
    encoder.add_argument(
        "--params", metavar="BITMAP", help="parameter bitmap, e.g. 0x3 (sub-req, sub-res, dev-read)"
    )
    encoder.add_argument("--interval", metavar="MS", help="subscription interval in ms (sub-req, sub-res)")
    encoder.add_argument("--uid", metavar="UID", help=f"the device's UID (sub-res): {UID_FORMS}")
    for sub, words in ((decoder, "hex"), (encoder, "fields")):
        sub.add_argument("--type", "-t", metavar="TYPE", help="device type of the catalog, e.g. yogi-bear")
        add_catalog_option(sub)
        sub.add_argument("--json", action="store_true", help="print JSON for scripts")
        sub.set_defaults(extra_words=words)
    decoder.set_defaults(msg_main=_decode_main)
    encoder.set_defaults(msg_main=_encode_main)


def main(args: argparse.Namespace) -> int:
    """Run ``runtime msg ACTION``."""
    return int(args.msg_main(args))
