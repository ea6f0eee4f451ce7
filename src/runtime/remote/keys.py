"""The key expressions of ``runtime zenoh`` and its clients, and the rules of their chunks.

Every key starts ``runtime/<namespace>`` (:data:`KEY_ROOT`); a device's values
are at ``runtime/<namespace>/<type>/<uid>`` (:func:`device_key`, read back by
:func:`parse_device_key`); the ``@client``, ``@robot``, ``@mode`` and
``@input`` chunks are verbatim (no wildcard matches them). Shared by the
client (:mod:`runtime.remote.client`) and the server
(:mod:`runtime.remote.server`); :mod:`runtime.remote` describes the protocol.
"""

from __future__ import annotations

import zenoh

__all__ = [
    "CLIENT_CHUNK",
    "CLIENT_GRACE",
    "INPUT_CHUNK",
    "INPUT_KINDS",
    "KEY_ROOT",
    "MODE_CHUNK",
    "STATE_CHUNK",
    "check_client_id",
    "check_namespace",
    "client_key",
    "device_key",
    "format_uid",
    "input_key",
    "mode_key",
    "parse_device_key",
    "state_key",
]

KEY_ROOT = "runtime"
"""The first chunk of every key expression: ``runtime/<namespace>/<type>/<uid>``."""
CLIENT_GRACE = 2.0
"""Seconds ``runtime zenoh`` holds a command from a client whose liveliness token it has not seen
yet (the token may still be on its way), before it refuses it."""
CLIENT_CHUNK = "@client"
"""The chunk of the clients' liveliness tokens, ``runtime/<namespace>/@client/<id>`` (verbatim: no
wildcard matches it)."""
STATE_CHUNK = "@robot"
"""The chunk of the robot's state: ``runtime/<namespace>/@robot`` (verbatim: no wildcard matches it)."""
MODE_CHUNK = "@mode"
"""The chunk of the field mode: ``runtime/<namespace>/@mode`` (verbatim: no wildcard matches it)."""
INPUT_CHUNK = "@input"
"""The chunk of the driver station's inputs: ``runtime/<namespace>/@input/<kind>`` (verbatim)."""
INPUT_KINDS = ("gamepad", "keyboard")
"""The driver station's inputs: each one a buffer of that type, uid 0, that ``runtime zenoh`` serves."""
_CLIENT_ID_LIMIT = 128
"""Characters in a client ID, at most."""
_WILDCARD_CHARACTERS = frozenset("*$?#")


def format_uid(uid: int) -> str:
    """A UID as it appears in key expressions and JSON: hex with ``0x``, lower case, no padding.

    >>> format_uid(0x7_09_00000000000000AB)
    '0x70900000000000000ab'
    >>> int(format_uid(42), 16)
    42
    """
    return f"{uid:#x}"


def device_key(namespace: str, type_name: str, uid: int) -> str:
    """The key expression of a device's values: ``runtime/<namespace>/<type>/<uid>``.

    >>> device_key("rt", "servo-motor", 0x7_09_0000000000000042)
    'runtime/rt/servo-motor/0x7090000000000000042'
    """
    return f"{KEY_ROOT}/{namespace}/{type_name}/{format_uid(uid)}"


def parse_device_key(key: str) -> tuple[str, str, int] | None:
    """``(namespace, type, uid)`` of a device's key expression (a trailing chunk such as
    ``/write`` is ignored), or None when ``key`` is not one.

    >>> namespace, type_name, uid = parse_device_key("runtime/rt/servo-motor/0x7090000000000000042/write")
    >>> namespace, type_name, hex(uid)
    ('rt', 'servo-motor', '0x7090000000000000042')
    >>> parse_device_key("runtime/rt"), parse_device_key("runtime/rt/servo-motor/*")
    (None, None)
    >>> parse_device_key("runtime/rt/@client/0x1")  # a client's token, not a device
    """
    chunks = key.split("/")
    if len(chunks) < 4 or chunks[0] != KEY_ROOT:
        return None
    namespace, type_name, uid_text = chunks[1:4]
    if not uid_text.startswith("0x") or any(
        set(chunk) & _WILDCARD_CHARACTERS or chunk.startswith("@") for chunk in chunks[1:4]
    ):
        return None
    try:
        uid = int(uid_text, 16)
    except ValueError:
        return None
    return namespace, type_name, uid


def check_namespace(namespace: str) -> str:
    """``namespace`` if it can be the ``<namespace>`` chunk of the key expressions, else ``ValueError``.

    The one check of every namespace (:func:`runtime.store.check_namespace`),
    then Zenoh's own look at the key expression.

    >>> check_namespace("rt-demo-4242")
    'rt-demo-4242'
    >>> check_namespace("robots/*")
    Traceback (most recent call last):
    ...
    ValueError: a namespace is one key chunk without / * $ ? # (nor a leading @), not 'robots/*'
    """
    from ..store import check_namespace as check_store_namespace

    check_store_namespace(namespace)
    try:
        zenoh.KeyExpr(f"{KEY_ROOT}/{namespace}")
    except zenoh.ZError as exc:
        raise ValueError(f"namespace {namespace!r} is not usable in a key expression: {exc}") from None
    return namespace


def client_key(namespace: str, client_id: str) -> str:
    """The key expression of a client's liveliness token: ``runtime/<namespace>/@client/<id>``.

    >>> client_key("rt", "5f3a9c-0b1d2e3f")
    'runtime/rt/@client/5f3a9c-0b1d2e3f'
    """
    return f"{KEY_ROOT}/{namespace}/{CLIENT_CHUNK}/{client_id}"


def state_key(namespace: str) -> str:
    """The key expression of the robot's state (``{"enabled": ...}``): ``runtime/<namespace>/@robot``.

    >>> state_key("rt")
    'runtime/rt/@robot'
    """
    return f"{KEY_ROOT}/{namespace}/{STATE_CHUNK}"


def mode_key(namespace: str) -> str:
    """The key expression of the field mode: a put of ``{"mode": "teleop"}`` sets it, a ``get`` reads it.

    >>> mode_key("rt")
    'runtime/rt/@mode'
    """
    return f"{KEY_ROOT}/{namespace}/{MODE_CHUNK}"


def input_key(namespace: str, kind: str) -> str:
    """The key expression of a driver-station input (``gamepad`` or ``keyboard``): a put of its values.

    >>> input_key("rt", "gamepad")
    'runtime/rt/@input/gamepad'
    """
    return f"{KEY_ROOT}/{namespace}/{INPUT_CHUNK}/{kind}"


def check_client_id(client_id: str) -> str:
    """``client_id`` if it can be the ``<id>`` chunk of a client's token, else ``ValueError``.

    One key chunk of at most 128 characters, without ``/ * $ ? #`` nor a leading ``@``.

    >>> check_client_id("5f3a9c-0b1d2e3f")
    '5f3a9c-0b1d2e3f'
    >>> check_client_id("**")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: a client ID is one key chunk ... not '**'
    """
    if (
        not isinstance(client_id, str)
        or not client_id
        or len(client_id) > _CLIENT_ID_LIMIT
        or "/" in client_id
        or client_id.startswith("@")
        or set(client_id) & _WILDCARD_CHARACTERS
    ):
        raise ValueError(
            f"a client ID is one key chunk of at most {_CLIENT_ID_LIMIT} characters "
            f"without / * $ ? # (nor a leading @), not {client_id!r}"
        )
    try:
        zenoh.KeyExpr(client_key("rt", client_id))
    except zenoh.ZError as exc:
        raise ValueError(f"client ID {client_id!r} is not usable in a key expression: {exc}") from None
    return client_id
