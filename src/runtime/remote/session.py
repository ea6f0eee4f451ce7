"""Zenoh sessions for ``runtime zenoh`` and its clients: their configuration, and opening one.

:func:`make_config` builds a configuration (a JSON5 file with settings on
top), :func:`open_session` opens it or raises :class:`RemoteError`;
:func:`exposed_endpoints` and :func:`access_control_enabled` say whether a
server is reachable beyond this machine, and guarded.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import zenoh

from ..exception import RuntimeBaseException

__all__ = ["RemoteError", "access_control_enabled", "exposed_endpoints", "make_config", "open_session"]


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
        ValueError: The file cannot be read, or a setting is refused.
    """
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
        raise ValueError(f"bad Zenoh configuration: {exc}") from None
    return config


def open_session(config: zenoh.Config) -> zenoh.Session:
    """Open a Zenoh session with ``config`` (the caller closes it).

    Raises:
        RemoteError: Zenoh refused to open it (an endpoint already taken, unreachable...).
    """
    try:
        return zenoh.open(config)
    except zenoh.ZError as exc:
        raise RemoteError(f"cannot open the Zenoh session: {exc}") from None


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
