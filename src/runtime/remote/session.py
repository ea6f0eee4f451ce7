"""Zenoh sessions for ``runtime zenoh`` and its clients: their configuration, and opening one.

:func:`make_config` builds a configuration (a JSON5 file with settings on
top), :func:`open_session` opens it or raises :class:`RemoteError`;
:func:`exposed_endpoints` and :func:`access_control_enabled` say whether a
server is reachable beyond this machine, and guarded.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence

import zenoh

from ..exception import RuntimeBaseException

__all__ = [
    "RemoteError",
    "access_control_enabled",
    "check_endpoint",
    "exposed_endpoints",
    "make_config",
    "open_session",
    "zenoh_reason",
]

_RUST_PLACE = re.compile(r"\s+at [^\s\]]*\.rs:\d+\.?")
"""Where in Zenoh's Rust sources an error was made (`` at /root/.cargo/.../tcp.rs:61.``): not for the user."""
_JSON5_MESSAGE = re.compile(
    r'Message \{ msg: "(.*?)", location: (?:Some\(Location \{ line: (\d+), column: (\d+) \}\)|None)',
    re.DOTALL,
)

PORT_PROTOCOLS = frozenset({"tcp", "udp", "tls", "quic", "ws"})
"""Zenoh link protocols whose address is HOST:PORT."""
PROTOCOLS = PORT_PROTOCOLS | {"unixsock-stream", "unixpipe", "serial", "vsock"}
"""The Zenoh link protocols an endpoint may name."""


def zenoh_reason(exc: BaseException | str) -> str:
    """A Zenoh error in one line, without the places in Zenoh's Rust sources it carries.

    >>> zenoh_reason("No such file or directory (os error 2) at /root/.cargo/git/zenoh/src/lib.rs:1507.")
    'No such file or directory (os error 2)'
    """
    text = str(exc)
    json5 = _JSON5_MESSAGE.search(text)
    if json5 is not None:
        text = json5.group(1) + (
            f" (line {json5.group(2)}, column {json5.group(3)})" if json5.group(2) else ""
        )
    text = _RUST_PLACE.sub("", text)
    return " ".join(text.split()).rstrip(".")


def check_endpoint(endpoint: str) -> str | None:
    """What is wrong with a Zenoh endpoint (PROTOCOL/ADDRESS), and how to write it, or None.

    >>> check_endpoint("127.0.0.1:7447")
    "endpoint '127.0.0.1:7447' names no protocol: write tcp/127.0.0.1:7447"
    >>> check_endpoint("tcp/0.0.0.0:7447") is None
    True
    """
    protocol, slash, address = endpoint.partition("/")
    if not slash:
        port = "" if ":" in endpoint else ":7447"
        return f"endpoint {endpoint!r} names no protocol: write tcp/{endpoint}{port}"
    if protocol not in PROTOCOLS:
        known = ", ".join(sorted(PORT_PROTOCOLS))
        return f"endpoint {endpoint!r}: no Zenoh protocol {protocol!r} (write {known}, ...: tcp/HOST:PORT)"
    if protocol in PORT_PROTOCOLS:
        host, colon, port = address.partition("#")[0].partition("?")[0].rpartition(":")
        if not colon or not host or not port.isdigit() or int(port) > 65535:
            return (
                f"endpoint {endpoint!r}: the address must be HOST:PORT (a port up to 65535), "
                f"as in {protocol}/0.0.0.0:7447"
            )
    return None


def _hint(reason: str) -> str:
    """How to fix what Zenoh said, when it is a common case."""
    if "Cannot assign requested address" in reason:
        return " (no interface of this machine has that address: listen on 0.0.0.0 or one of its addresses)"
    if "Address already in use" in reason:
        return " (another program listens there, another runtime zenoh? choose another port)"
    return ""


class RemoteError(RuntimeBaseException):
    """The robot cannot be reached (no session could be opened), or the client is closed."""


def make_config(
    *,
    mode: str | None = None,
    listen: Sequence[str] = (),
    connect: Sequence[str] = (),
    scout: bool | None = False,
    config_file: str | os.PathLike[str] | None = None,
) -> zenoh.Config:
    """A Zenoh configuration: ``config_file`` (if any) with these settings on top.

    Args:
        mode: ``"client"``, ``"peer"`` or ``"router"``; None keeps the file's
            (or Zenoh's default, ``peer``).
        listen: Endpoints to listen on, such as ``tcp/0.0.0.0:7447`` (replace the file's when given).
        connect: Endpoints to connect to (replace the file's when given).
        scout: Whether to find peers by multicast scouting (off unless asked:
            robots on one network should not find each other by chance);
            None keeps the file's (or Zenoh's default, on).
        config_file: A Zenoh configuration file (JSON5), for TLS, access
            control, leases and everything else.

    Raises:
        ValueError: The file cannot be read (it is named), an endpoint is
            malformed (:func:`check_endpoint`: the line says how to write it),
            or a setting is refused; one line, without Zenoh's source places.
    """
    for kind, endpoints in (("listen", listen), ("connect", connect)):
        for endpoint in endpoints:
            problem = check_endpoint(endpoint)
            if problem is not None:
                raise ValueError(f"bad {kind} {problem}")
    if config_file is not None:
        try:
            with open(config_file, "rb"):
                pass
        except OSError as exc:
            raise ValueError(
                f"cannot read the Zenoh configuration file {os.fspath(config_file)}: {exc.strerror}"
            ) from None
    try:
        config = zenoh.Config.from_file(os.fspath(config_file)) if config_file is not None else zenoh.Config()
        if mode is not None:
            config.insert_json5("mode", json.dumps(mode))
        if listen:
            config.insert_json5("listen/endpoints", json.dumps(list(listen)))
        if connect:
            config.insert_json5("connect/endpoints", json.dumps(list(connect)))
        if scout is not None:
            config.insert_json5("scouting/multicast/enabled", json.dumps(bool(scout)))
    except zenoh.ZError as exc:
        where = f" in {os.fspath(config_file)}" if config_file is not None else ""
        raise ValueError(f"bad Zenoh configuration{where}: {zenoh_reason(exc)}") from None
    return config


def open_session(config: zenoh.Config) -> zenoh.Session:
    """Open a Zenoh session with ``config`` (the caller closes it).

    Raises:
        RemoteError: Zenoh refused to open it (an endpoint already taken, unreachable...).
    """
    try:
        return zenoh.open(config)
    except zenoh.ZError as exc:
        reason = zenoh_reason(exc)
        raise RemoteError(f"cannot open the Zenoh session: {reason}{_hint(reason)}") from None


def exposed_endpoints(endpoints: Sequence[str]) -> list[str]:
    """The endpoints that listen on more than this machine (not a loopback address).

    >>> exposed_endpoints(["tcp/127.0.0.1:7447", "tcp/0.0.0.0:7447", "tcp/[::1]:7448", "tcp/[::]:7449"])
    ['tcp/0.0.0.0:7447', 'tcp/[::]:7449']
    """
    import ipaddress

    exposed = []
    for endpoint in endpoints:
        address = endpoint.partition("/")[2].partition("#")[0].partition("?")[0]
        host = address.rpartition(":")[0].strip("[]") if ":" in address else address
        if host == "localhost":
            continue
        try:
            if ipaddress.ip_address(host).is_loopback:
                continue
        except ValueError:
            pass
        exposed.append(endpoint)
    return exposed


def access_control_enabled(config: zenoh.Config) -> bool:
    """Whether a Zenoh configuration turns access control on."""
    try:
        return bool(json.loads(config.get_json("access_control/enabled")))
    except (zenoh.ZError, ValueError):
        return False
