"""The client of ``runtime zenoh``: :func:`connect` to a robot, its :class:`Robot`, a :class:`RemoteDevice`.

What :mod:`runtime.remote` is for users (it re-exports every name here): the
protocol it speaks is described there.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import os
import secrets
import threading
import time
import typing
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import zenoh

from ..buffer import NAMESPACE_ENV, Buffer, DeviceBuffer, DeviceBufferError, current_namespace
from ..exception import did_you_mean
from ..student import FIELD_KEY, MODES, RUNNER_KEY, log_lines_since, mode_name, mode_number
from ..values import WriteRefused, check_writes, from_json_values, jsonable
from .keys import (
    INPUT_KINDS,
    KEY_ROOT,
    STATE_CHUNK,
    check_client_id,
    check_namespace,
    client_key,
    device_key,
    input_key,
    mode_key,
    parse_device_key,
    state_key,
)
from .payload import MAX_PAYLOAD, QUOTE_LIMIT, RefusalLimiter, check_input, load_payload, quote
from .session import RemoteError, make_config, zenoh_reason

__all__ = [
    "DEFAULT_TIMEOUT",
    "DEVICES_KEEP",
    "ERRORS_KEEP",
    "LOG_KEEP",
    "REORDER_TIME",
    "REORDER_WINDOW",
    "SEQ_LIMIT",
    "RemoteDevice",
    "RemoteInfo",
    "Robot",
    "connect",
]

logger = logging.getLogger("runtime.remote")
DEFAULT_TIMEOUT = 5.0
"""Seconds a query to the robot (connecting, :meth:`Robot.discover`) waits for its answers."""
LOG_KEEP = 10000
"""Print lines of the runner a :class:`Robot` keeps for :meth:`Robot.log_lines`, at most (older are lost)."""
ERRORS_KEEP = 1000
"""Refusals of modes and inputs a :class:`Robot` keeps for :meth:`Robot.refusals`, at most."""
DEVICES_KEEP = 1024
"""Devices a :class:`Robot` keeps a record of, at most: keys a peer announces beyond it (after
forgetting those with no value, no token and no handle) are ignored, counted in :attr:`Robot.ignored`."""
SEQ_LIMIT = 2**63
"""A publication's ``seq`` is an integer from 0 to below this; any other sample is malformed."""
REORDER_WINDOW = 64
"""A publication at most this many ``seq`` behind the last one taken, within :data:`REORDER_TIME`,
is an older one overtaken (a query's answer): dropped. Any other is taken, so that a peer putting a
``seq`` far ahead under the server's id holds the values for :data:`REORDER_TIME` at most."""
REORDER_TIME = 1.0
"""Seconds after a publication is taken during which an older one (within the window) is dropped."""
_CHANNEL_SIZE = 4096
"""Samples a subscriber's channel holds before the network thread waits for the reader."""


@dataclasses.dataclass(frozen=True)
class RemoteInfo:
    """One device of the robot, as :meth:`Robot.discover` found it (like a local ``BufferInfo``)."""

    type_name: str
    uid: int
    key_expr: str
    """Its key expression, ``runtime/<namespace>/<type>/<uid>``."""
    valid: bool
    """Whether it was connected (its liveliness token alive) when looked at."""
    last_update: float | None
    """:func:`time.time` on the robot of the device's last report, or None."""

    @property
    def key(self) -> tuple[str, int]:
        """The key of :meth:`Robot.device`: ``(type_name, uid)``."""
        return self.type_name, self.uid


class _Record:
    """What the client knows of one device (shared by every handle of it); guarded by the robot's lock."""

    __slots__ = (
        "async_waiters",
        "changes",
        "key",
        "last_error",
        "last_update",
        "seq",
        "seq_time",
        "server",
        "token",
        "token_events",
        "type_name",
        "uid",
        "values",
        "wanted",
    )

    def __init__(self, type_name: str, uid: int, key: str) -> None:
        self.type_name = type_name
        self.uid = uid
        self.key = key
        self.values: dict[str, Any] | None = None
        self.last_update: float | None = None
        self.seq = -1
        self.seq_time = -math.inf
        """:func:`time.monotonic` when :attr:`seq` was taken."""
        self.server: str | None = None
        self.wanted = False
        """Whether a handle asked for it (:meth:`Robot.device`): never forgotten."""
        self.token = False
        self.token_events = 0
        self.changes = 0
        self.last_error: dict[str, Any] | None = None
        self.async_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Robot:
    """A connection to a robot's ``runtime zenoh``: its devices, their values, their liveness.

    Made by :func:`connect` (or from a Zenoh session of your own:
    ``Robot(session, "rt")``, which then stays yours to close). Use it as a
    context manager, or call :meth:`close` (which closes the session too when
    :func:`connect` opened it).

    It is a commander (see the module's docstring): it declares a liveliness
    token at ``runtime/<namespace>/@client/<client_id>`` and sends
    :attr:`client_id` with every write, so that its commands (writes of
    actuators) end when it is closed, or when its process or network dies.

    Args:
        session: An open Zenoh session that reaches the robot.
        namespace: The robot's name on the network (``runtime zenoh --name``,
            by default its buffer namespace); None: :func:`runtime.buffer.current_namespace`.
        catalog: Device types by name, to find a Smart Device's type from its
            UID and to check writes before sending them (default: the packaged
            catalog; a type it lacks is checked by the robot only).
        timeout: Seconds a query to the robot waits for its answers.
        owns_session: Whether :meth:`close` closes ``session``.
    """

    malformed: int = 0
    """Samples ignored as malformed (not JSON, a bad ``seq``, ``values`` not an object...)."""
    ignored: int = 0
    """Announcements of devices ignored because :data:`DEVICES_KEEP` records are kept already."""

    def __init__(
        self,
        session: zenoh.Session,
        namespace: str | None = None,
        *,
        catalog: Mapping[str, type[Buffer]] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        owns_session: bool = False,
    ) -> None:
        self._session = session
        self._namespace = check_namespace(namespace or current_namespace())
        self._prefix = f"{KEY_ROOT}/{self._namespace}"
        self._timeout = timeout
        self._owns_session = owns_session
        if catalog is None:
            from ..catalog import load

            catalog = load()
        self._catalog = catalog
        self._device_types = {
            buffer_type.device_id: name
            for name, buffer_type in catalog.items()
            if issubclass(buffer_type, DeviceBuffer) and hasattr(buffer_type, "device_id")
        }
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._records: dict[tuple[str, int], _Record] = {}
        self.malformed = 0
        self.ignored = 0
        self._error_logs = RefusalLimiter()
        """How many refusals of the robot are logged (the rest are kept in ``last_error`` only)."""
        self._online = False
        self._online_events = 0
        self._enabled: bool | None = None
        self._state_events = 0
        self._started = False
        self._closed = False
        self._mode_answer: str | None = None
        """The field's mode as a ``get`` on ``@mode`` said, while no publication of the field buffer does."""
        self._log: deque[str] = deque()
        self._log_seen: int | None = None
        self._log_lost = 0
        self._refusals: deque[dict[str, Any]] = deque(maxlen=ERRORS_KEEP)
        self._last_mode_error: dict[str, Any] | None = None
        self._last_input_error: dict[str, Any] | None = None
        self._subscribers: list[Any] = []
        self._threads: list[threading.Thread] = []
        self._client_id = check_client_id(f"{session.zid()}-{secrets.token_hex(4)}")
        self._token: Any = None
        try:
            # First: the robot knows this client (discover's round trips follow it) before any write.
            self._token = session.liveliness().declare_token(client_key(self._namespace, self._client_id))
            self._subscribe(session.declare_subscriber(f"{self._prefix}/*/*", _channel()), self._on_values)
            self._subscribe(
                session.liveliness().declare_subscriber(f"{self._prefix}/**", _channel(), history=True),
                self._on_token,
            )
            self._subscribe(
                session.declare_subscriber(f"{self._prefix}/*/*/error", _channel()), self._on_error
            )
            self._subscribe(
                session.declare_subscriber(state_key(self._namespace), _channel()), self._on_state
            )
            for refused in (mode_key(self._namespace), input_key(self._namespace, "*")):
                self._subscribe(
                    session.declare_subscriber(f"{refused}/error", _channel()), self._on_driver_error
                )
            self.discover()
            self._fetch_state()
            self._started = True
        except BaseException:
            self.close()
            raise

    # -- what the robot has --

    @property
    def namespace(self) -> str:
        """The robot's name on the network: the ``<namespace>`` of the key expressions."""
        return self._namespace

    @property
    def online(self) -> bool:
        """Whether the robot's ``runtime zenoh`` is reachable (its token, or a device's, is alive)."""
        with self._lock:
            alive = self._online or any(record.token for record in self._records.values())
        return alive and not self._closed

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    @property
    def enabled(self) -> bool | None:
        """Whether the robot is enabled (True) or disabled (False: it refuses every command),
        as ``runtime/<namespace>/@robot`` last said; None while unknown (the robot is offline).

        Disabled, the robot keeps its actuators at their safe values; enabled
        again, nothing moves until a new command.
        """
        with self._lock:
            enabled = self._enabled
        return None if self._closed else enabled

    @property
    def client_id(self) -> str:
        """This client's ID: the ``<id>`` of its liveliness token, and the attachment of its writes."""
        return self._client_id

    # -- the driver station --

    @property
    def mode(self) -> str | None:
        """The field's mode, ``"idle"``, ``"auto"`` or ``"teleop"``; None while the robot is offline.

        What the field buffer's last publication says (no round trip), else
        the answer of a ``get`` on ``runtime/<namespace>/@mode`` (idle while
        the robot has no field buffer yet). :meth:`set_mode` changes it.
        """
        with self._lock:
            if self._closed or not self._online:
                return None
            mode = self._mode_locked(FIELD_KEY) or self._mode_answer
        if mode is None:
            mode = self._fetch_mode()
        return mode

    @property
    def running(self) -> str | None:
        """The mode the robot's student code runs in (``runtime run``'s buffer), or None without a runner."""
        with self._lock:
            return None if self._closed else self._mode_locked(RUNNER_KEY)

    def set_mode(self, mode: str | int) -> None:
        """Switch the robot's mode: ``"idle"``, ``"auto"`` or ``"teleop"`` (or the field's number of one).

        Sent to ``runtime/<namespace>/@mode``; ``runtime run`` on the robot
        follows the field's mode. A mode other than idle makes this client
        the *driver station*: when it closes, or its process or network dies,
        the robot goes idle. Idle is always accepted; what the robot refuses
        (a mode from a client whose liveliness token it has not seen) is kept
        in :attr:`last_mode_error` and :meth:`refusals`. :attr:`mode` says
        when it took effect.

        Raises:
            ValueError: Not a mode (the message lists them).
            RemoteError: The connection is closed.
        """
        name = mode_name(mode_number(mode))
        self._check_open()
        with self._lock:
            self._mode_answer = None
        self._put(mode_key(self._namespace), json.dumps({"mode": name}))

    def send_input(self, kind: str, values: Mapping[str, Any]) -> None:
        """Set driver-station inputs on the robot: ``kind`` is ``"gamepad"`` or ``"keyboard"``.

        ``values`` maps inputs to their state: a gamepad's ``button_a`` ...
        to True or False, its ``joystick_left_x`` ... to a number from -1 to
        1; a keyboard's keys (``"a"``, ``"0"``, ``","``, ``"left_arrow"``, or
        the parameter names, ``"digit_0"``, ``"comma"``) to True (pressed) or
        False. Inputs not named keep their state. The robot's ``runtime
        zenoh`` serves the input's buffer while this client lives; when it
        goes, every input it fed returns to neutral (released, centred).

        Checked here as the robot checks it (:func:`check_input`); what the
        robot refuses all the same is kept in :attr:`last_input_error` and
        :meth:`refusals`.

        Raises:
            ValueError: An unknown kind, or a number out of bounds (refused, not clamped).
            DeviceBufferError: An unknown input (with the closest known name).
            TypeError: A value of the wrong type.
            RemoteError: The connection is closed.
        """
        if kind not in INPUT_KINDS:
            raise ValueError(
                f"an input is one of {', '.join(INPUT_KINDS)}, not {kind!r}{did_you_mean(kind, INPUT_KINDS)}"
            )
        buffer_type = self._catalog.get(kind)
        if buffer_type is not None:
            checked: Mapping[str, Any] = check_input(kind, buffer_type.params, values)
        else:
            checked = {str(name): jsonable(value) for name, value in values.items()}
        self._check_open()
        self._put(input_key(self._namespace, kind), json.dumps(checked, allow_nan=False))

    def send_gamepad(self, values: Mapping[str, Any]) -> None:
        """:meth:`send_input` of the gamepad: ``{"button_a": True, "joystick_left_y": -0.5}``."""
        self.send_input("gamepad", values)

    def send_keyboard(self, values: Mapping[str, Any]) -> None:
        """:meth:`send_input` of the keyboard: ``{"w": True, "left_arrow": False, ",": True}``."""
        self.send_input("keyboard", values)

    def log_lines(self) -> list[str]:
        """The lines the robot's student code printed (``runtime run``) since the last call, oldest first.

        They come with the publications of the runner's buffer
        (``runtime/<namespace>/runner/0x0``); the first call also gives the
        lines the runner still held when this client connected. Lines printed
        faster than the runner's buffer keeps them between two publications,
        or more than :data:`LOG_KEEP` waiting here, are lost: counted by
        :attr:`log_lines_lost`.
        """
        with self._lock:
            lines = list(self._log)
            self._log.clear()
        return lines

    @property
    def log_lines_lost(self) -> int:
        """Print lines of the runner that :meth:`log_lines` could not give (printed too fast), so far."""
        return self._log_lost

    def refusals(self) -> list[dict[str, Any]]:
        """This client's mode and input requests the robot refused since the last call, oldest first.

        Each is the JSON object of ``.../@mode/error`` or ``.../@input/<kind>/error``:
        ``error`` (the reason), ``kind``, ``param``, ``mode``, ``request``
        (what was asked), ``client``, ``time``; and ``key``, the key the
        request was put on.
        """
        with self._lock:
            refusals = list(self._refusals)
            self._refusals.clear()
        return refusals

    @property
    def last_mode_error(self) -> dict[str, Any] | None:
        """The robot's answer to the last refused mode request (from any client), or None."""
        return self._last_mode_error

    @property
    def last_input_error(self) -> dict[str, Any] | None:
        """The robot's answer to the last refused input (gamepad or keyboard, from any client), or None."""
        return self._last_input_error

    def _mode_locked(self, key: tuple[str, int]) -> str | None:
        """The ``mode`` of the field or runner buffer as last published, if valid; the lock is held."""
        record = self._records.get(key)
        if record is None or not record.token or record.values is None:
            return None
        number = record.values.get("mode")
        return mode_name(number) if isinstance(number, int) else None

    def _fetch_mode(self) -> str | None:
        """Ask the robot for its mode (``get`` on ``@mode``); None without an answer."""
        mode = None
        try:
            for reply in self._session.get(mode_key(self._namespace), timeout=self._timeout):
                if reply.ok is not None:
                    answer = load_payload(reply.ok.payload.to_bytes())
                    if isinstance(answer, dict) and answer.get("mode") in MODES:
                        mode = answer["mode"]
        except Exception:  # noqa: BLE001 - closed meanwhile, or a malformed answer: unknown
            logger.debug("cannot ask the robot's mode", exc_info=True)
            return None
        with self._lock:
            self._mode_answer = mode
        return mode

    def _take_log(self, values: Mapping[str, Any]) -> None:
        """The new print lines of a publication of the runner's buffer; the lock is held."""
        lines, log = values.get("lines"), values.get("log")
        if not isinstance(lines, int) or not isinstance(log, str):
            return
        if self._log_seen is None:  # the first one: what it still holds is new, the rest is history
            self._log_seen = max(0, lines - len(log.split("\n") if log else []))
        new, lost = log_lines_since(self._log_seen, lines, log)
        self._log_seen = lines
        self._log.extend(new)
        overflow = max(0, len(self._log) - LOG_KEEP)
        for _ in range(overflow):
            self._log.popleft()
        self._log_lost += lost + overflow

    def _on_driver_error(self, sample: zenoh.Sample) -> None:
        key = str(sample.key_expr).removesuffix("/error")
        error = _error_object(sample)
        error["key"] = key
        with self._lock:
            if key == mode_key(self._namespace):
                self._last_mode_error = error
            else:
                self._last_input_error = error
            if error.get("client") == self._client_id:
                self._refusals.append(error)
                logger.info("the robot refused a request on %s: %s", key, error.get("error", error))

    # -- the devices --

    def discover(self) -> list[RemoteInfo]:
        """Ask the robot which devices it has: their types, UIDs, validity and last report.

        One query for the liveliness tokens and one for the values, each
        waiting at most ``timeout`` seconds; what they bring also refreshes
        every :class:`RemoteDevice` of this robot. Sorted by type and UID,
        like :meth:`runtime.store.BufferStore.discover`.
        """
        self._check_open()
        with self._lock:
            token_events = {key: record.token_events for key, record in self._records.items()}
        alive: set[str] = set()
        for reply in self._session.liveliness().get(f"{self._prefix}/**", timeout=self._timeout):
            if reply.ok is not None:
                alive.add(str(reply.ok.key_expr))
        with self._lock:
            if self._prefix in alive:  # a token missing from an answer is no proof: the subscriber says gone
                self._online = True
            for key in alive:
                parsed = parse_device_key(key)
                if parsed is not None and parsed[0] == self._namespace:
                    record = self._record(parsed[1], parsed[2], peer=True)
                    if record is None:
                        continue
                    if token_events.get((record.type_name, record.uid), 0) == record.token_events:
                        self._set_token(record, True)
        for reply in self._session.get(f"{self._prefix}/**", timeout=self._timeout):
            if reply.ok is not None:
                self._take_values(str(reply.ok.key_expr), reply.ok.payload.to_bytes())
        with self._lock:
            return [
                RemoteInfo(
                    record.type_name,
                    record.uid,
                    record.key,
                    record.token,
                    record.last_update,
                )
                for _, record in sorted(self._records.items())
                if record.token or record.values is not None or record.seq >= 0
            ]

    def device(self, key: int | tuple[str, int], /) -> RemoteDevice:
        """A handle of one device: a Smart Device's UID, or a ``(type name, UID)`` pair.

        The device need not be there yet: like a buffer opened before the
        bridge saw its device, the handle is invalid until it connects.

        Raises:
            KeyError: A UID whose type is neither in the catalog nor seen on the robot.
        """
        self._check_open()
        if isinstance(key, tuple):
            type_name, uid = key
            if not isinstance(type_name, str) or isinstance(uid, bool) or not isinstance(uid, int) or uid < 0:
                raise KeyError(key)
        else:
            uid = key
            if isinstance(uid, bool) or not isinstance(uid, int) or uid < 0:
                raise KeyError(key)
            with self._lock:
                seen = [name for (name, other) in self._records if other == uid]
            if len(seen) == 1:
                type_name = seen[0]
            elif uid >> 72 in self._device_types:
                type_name = self._device_types[uid >> 72]
            else:
                raise KeyError(key)
        with self._lock:
            record = self._record(type_name, uid)
            record.wanted = True
        return RemoteDevice(self, record)

    def close(self) -> None:
        """End the connection (and the Zenoh session, when it is this robot's): every handle turns invalid."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for record in self._records.values():
                self._changed_locked(record)
        if self._token is not None:  # first: the robot ends this client's commands
            with contextlib.suppress(Exception):
                self._token.undeclare()
        for subscriber in self._subscribers:
            with contextlib.suppress(Exception):
                subscriber.undeclare()
        if self._owns_session:
            with contextlib.suppress(Exception):
                _close(self._session)
        for thread in self._threads:
            thread.join(1.0)

    def __enter__(self) -> Robot:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "online" if self._online else "offline"
        return f"<Robot {self._prefix!r} {state}, {len(self._records)} devices known>"

    # -- what arrives --

    def _subscribe(self, subscriber: Any, handle: Callable[[zenoh.Sample], None]) -> None:
        """Read a subscriber's channel in a daemon thread (none is left behind at exit)."""
        self._subscribers.append(subscriber)

        def pump() -> None:
            try:
                for sample in subscriber.handler:
                    try:
                        handle(sample)
                    except Exception:  # one bad sample must not end the stream
                        logger.exception("cannot take a sample on %s", sample.key_expr)
            except Exception:  # noqa: BLE001 - the session closed under the reader
                pass

        thread = threading.Thread(target=pump, name="runtime-remote", daemon=True)
        self._threads.append(thread)
        thread.start()

    @typing.overload
    def _record(self, type_name: str, uid: int) -> _Record: ...
    @typing.overload
    def _record(self, type_name: str, uid: int, *, peer: bool) -> _Record | None: ...
    def _record(self, type_name: str, uid: int, *, peer: bool = False) -> _Record | None:
        """The record of a device (made when first heard of); the lock is held.

        ``peer``: a peer announces it. Beyond :data:`DEVICES_KEEP` records, those
        with nothing (no value, no token, no handle, no waiter) are forgotten,
        and if none is, the announcement is ignored (None; counted in :attr:`ignored`).
        """
        record = self._records.get((type_name, uid))
        if record is None:
            if peer and len(self._records) >= DEVICES_KEEP:
                for key, other in list(self._records.items()):
                    if not (other.wanted or other.token or other.values is not None or other.async_waiters):
                        del self._records[key]
                if len(self._records) >= DEVICES_KEEP:
                    self.ignored += 1
                    return None
            record = self._records[type_name, uid] = _Record(
                type_name, uid, device_key(self._namespace, type_name, uid)
            )
        return record

    def _changed_locked(self, record: _Record) -> None:
        """Wake whoever waits on the record; the lock is held."""
        if (record.type_name, record.uid) == FIELD_KEY:
            self._mode_answer = None  # the field's own publications say it from now on
        record.changes += 1
        self._changed.notify_all()
        waiters, record.async_waiters = record.async_waiters, []
        for loop, future in waiters:
            with contextlib.suppress(RuntimeError):  # a loop that closed meanwhile
                loop.call_soon_threadsafe(_wake, future)

    def _set_token(self, record: _Record, alive: bool) -> None:
        if record.token == alive:
            return
        record.token = alive
        if not alive:  # the next values may come from another server: forget what this one said
            record.values = None
            record.seq = -1
            record.server = None
        self._changed_locked(record)

    def _on_token(self, sample: zenoh.Sample) -> None:
        key = str(sample.key_expr)
        alive = sample.kind == zenoh.SampleKind.PUT
        with self._lock:
            if key == self._prefix:
                self._online = alive
                self._online_events += 1
                self._mode_answer = None
                if not alive:  # the robot's state is unknown until its runtime zenoh is back
                    self._enabled = None
                    self._state_events += 1
                elif self._started and not self._closed:  # back: ask its state (it was said before we heard)
                    threading.Thread(
                        target=self._refetch_state, name="runtime-remote-state", daemon=True
                    ).start()
                return
            parsed = parse_device_key(key)
            if parsed is None or parsed[0] != self._namespace:
                return
            record = self._record(parsed[1], parsed[2], peer=True)
            if record is None:
                return
            record.token_events += 1
            self._set_token(record, alive)

    def _on_values(self, sample: zenoh.Sample) -> None:
        key = str(sample.key_expr)
        if sample.kind == zenoh.SampleKind.DELETE:  # the buffer is gone from the robot
            parsed = parse_device_key(key)
            if parsed is not None and parsed[0] == self._namespace:
                with self._lock:
                    record = self._records.get((parsed[1], parsed[2]))
                    if record is not None:
                        record.values, record.seq, record.server = None, -1, None
                        self._changed_locked(record)
            return
        self._take_values(key, sample.payload.to_bytes())

    def _take_values(self, key: str, payload: bytes) -> None:
        parsed = parse_device_key(key)
        if parsed is None or parsed[0] != self._namespace or key.count("/") != 3:
            return
        try:
            data = load_payload(payload, limit=max(MAX_PAYLOAD, 1 << 20))  # a runner's log is long
            if not isinstance(data, dict):
                raise TypeError("not an object")
            seq, server = data.get("seq"), data.get("server", "")
            if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq < SEQ_LIMIT:
                raise ValueError(f"seq is not an integer from 0 to 2**63: {quote(seq)}")
            if not isinstance(server, str):
                raise TypeError("server is not a string")
            values = data.get("values") if data.get("valid") is True else None
            if values is not None and not isinstance(values, dict):
                raise TypeError("values is not an object")
            last_update = data.get("last_update")
            if not isinstance(last_update, int | float) or isinstance(last_update, bool):
                last_update = None
            elif not math.isfinite(last_update):
                raise ValueError("last_update is not finite")
        except (ValueError, KeyError, TypeError) as exc:
            with self._lock:
                self.malformed += 1
                first = self.malformed == 1
            # Quietly: a peer sending them by the thousand must not fill the log.
            (logger.warning if first else logger.debug)(
                "ignoring a malformed sample on %s: %s (counted in Robot.malformed)", quote(key), exc
            )
            return
        buffer_type = self._catalog.get(parsed[1])
        if values is not None and buffer_type is not None:
            from_json_values(buffer_type, values)  # JSON has the shortest decimal: the very float32 again
        now = time.monotonic()
        with self._lock:
            record = self._record(parsed[1], parsed[2], peer=True)
            if record is None:
                return
            if server == record.server and seq == record.seq and values == record.values:
                return  # the same publication again (a query's answer)
            if (
                server == record.server
                and record.seq - REORDER_WINDOW <= seq < record.seq
                and now - record.seq_time < REORDER_TIME
            ):
                return  # older than what we have (a query's answer overtaken by a publication)
            record.server, record.seq, record.seq_time = server, seq, now
            record.values = values
            record.last_update = None if last_update is None else float(last_update)
            if values is not None and (record.type_name, record.uid) == RUNNER_KEY:
                self._take_log(values)
            self._changed_locked(record)

    def _on_state(self, sample: zenoh.Sample) -> None:
        enabled = None
        if sample.kind == zenoh.SampleKind.PUT:
            enabled = self._parse_state(sample)
            if enabled is None:
                return
        with self._lock:
            self._enabled = enabled
            self._state_events += 1

    def _refetch_state(self) -> None:
        try:
            self._fetch_state()
        except Exception:  # noqa: BLE001 - closed meanwhile; or the next publication says it
            logger.debug("cannot ask the robot's state", exc_info=True)

    def _fetch_state(self) -> None:
        """Ask the robot for its state (what the subscriber says meanwhile wins)."""
        with self._lock:
            events = self._state_events
        enabled = None
        for reply in self._session.get(state_key(self._namespace), timeout=self._timeout):
            if reply.ok is not None:
                enabled = self._parse_state(reply.ok)
        with self._lock:
            if enabled is not None and events == self._state_events:
                self._enabled = enabled

    def _parse_state(self, sample: zenoh.Sample) -> bool | None:
        try:
            state = load_payload(sample.payload.to_bytes())
            enabled = state["enabled"] if isinstance(state, dict) else None
            if not isinstance(enabled, bool):
                raise TypeError("enabled is not a boolean")
        except (ValueError, KeyError, TypeError) as exc:
            with self._lock:
                self.malformed += 1
                first = self.malformed == 1
            (logger.warning if first else logger.debug)(
                "ignoring a malformed robot state on %s: %s (counted in Robot.malformed)",
                sample.key_expr,
                exc,
            )
            return None
        return enabled

    def _on_error(self, sample: zenoh.Sample) -> None:
        key = str(sample.key_expr)
        parsed = parse_device_key(key)
        if parsed is None or parsed[0] != self._namespace:
            return
        error = _error_object(sample)
        if self._error_logs.allow(None):  # a peer flooding .../error must not fill the log
            logger.warning(
                "%s refused a write: %s", key.removesuffix("/error"), quote(error.get("error", error), 300)
            )
        with self._lock:
            record = self._record(parsed[1], parsed[2], peer=True)
            if record is not None:
                record.last_error = error

    # -- for the handles --

    def _check_open(self) -> None:
        if self._closed:
            raise RemoteError("the connection to the robot is closed", namespace=self._namespace)

    def _fetch(self, record: _Record) -> None:
        """Ask the robot for one device's values now (a handle read before any publication)."""
        for reply in self._session.get(record.key, timeout=self._timeout):
            if reply.ok is not None:
                self._take_values(str(reply.ok.key_expr), reply.ok.payload.to_bytes())

    def _check_write(self, record: _Record, values: Mapping[str, Any]) -> dict[str, Any]:
        """Check a write as the robot will (when the catalog knows the type): the values to send.

        The one write policy (:func:`runtime.values.check_writes`): a value out
        of bounds is refused with the bounds, never clamped.
        """
        buffer_type = self._catalog.get(record.type_name)
        if buffer_type is None:
            return {param: jsonable(value) for param, value in values.items()}
        try:
            checked = check_writes(buffer_type, values)
        except WriteRefused as exc:  # said of the device
            context = {key: item for key, item in exc.context.items() if key != "param"}
            raise WriteRefused(exc.param, exc.problem, device=record.key, **context) from None
        return {param: jsonable(value) for param, value in checked.items()}

    def _put(self, key: str, payload: str) -> None:
        """Send a write, signed with this client's ID (the attachment): its commands are this client's."""
        self._session.put(
            key,
            payload,
            encoding=zenoh.Encoding.APPLICATION_JSON,
            congestion_control=zenoh.CongestionControl.BLOCK,
            express=True,
            attachment=self._client_id,
        )


def _error_object(sample: zenoh.Sample) -> dict[str, Any]:
    """A refusal published on an ``.../error`` key, as a JSON object whatever was sent."""
    raw = sample.payload.to_bytes()
    try:
        error = load_payload(raw)
    except ValueError:
        error = {"error": quote(raw.decode("utf-8", "replace"), QUOTE_LIMIT)}
    return error if isinstance(error, dict) else {"error": error}


def _close(session: Any) -> None:
    """Close a Zenoh session (its stub leaves ``close`` untyped)."""
    session.close()


def _channel() -> Any:
    return zenoh.handlers.FifoChannel(_CHANNEL_SIZE)


class RemoteDevice:
    """One device of a remote robot, used like :class:`runtime.device.Device` (from :meth:`Robot.device`).

    ``get``, ``snapshot`` and ``write`` raise :class:`~runtime.buffer.DeviceBufferError`
    while the device is not connected (its liveliness token is gone: the
    device, the bridge, ``runtime zenoh`` or the robot itself is not there),
    exactly as locally: check :attr:`valid` first, or catch it.
    """

    def __init__(self, robot: Robot, record: _Record) -> None:
        self._robot = robot
        self._record = record
        with robot._lock:
            self._seen = record.changes
        self._closed = False

    def _check(self) -> None:
        """Raise unless the device is connected; the robot's lock is held."""
        if self._closed:
            raise DeviceBufferError("the device handle is closed", device=self._record.key)
        if self._robot._closed:
            raise DeviceBufferError("the connection to the robot is closed", device=self._record.key)
        if not self._record.token:
            raise DeviceBufferError("the device is not connected", device=self._record.key)

    def _values(self) -> dict[str, Any]:
        robot, record = self._robot, self._record
        with robot._lock:
            self._check()
            values = record.values
        if values is None:  # connected, but nothing heard yet: ask
            robot._fetch(record)
            with robot._lock:
                self._check()
                values = record.values
            if values is None:
                raise DeviceBufferError(
                    "the robot did not answer with the device's values", device=record.key
                )
        return values

    def get(self, param: str, /) -> Any:
        """The parameter's latest value, as the robot last published it (no network round trip).

        The value a local ``get`` would give: a float32 parameter (of a type
        the catalog knows) comes back as the same float32, arrays as lists.
        """
        values = self._values()
        try:
            return values[param]
        except KeyError:
            raise DeviceBufferError(
                f"no such readable parameter{did_you_mean(param, values)}",
                device=self._record.key,
                param=param,
            ) from None

    def snapshot(self) -> dict[str, Any]:
        """Every readable value of the device's latest publication (read at one instant on the robot)."""
        return dict(self._values())

    def write(self, param: str, value: Any, /) -> None:
        """Ask the device to take this value: sent to the robot, which hands it to the bridge.

        Checked here first as the robot checks it (when the catalog knows the
        type), by :func:`runtime.values.check_value`: an unknown or
        unwriteable parameter, a value of the wrong type or a number out of
        bounds raises :class:`~runtime.values.WriteRefused` (a
        :class:`~runtime.buffer.DeviceBufferError` and a ``ValueError``), and
        nothing is sent. What the robot refuses all the same (a command
        while the robot is disabled, see :attr:`Robot.enabled`) is logged and
        kept in :attr:`last_error`.

        A write of a parameter with a safe value (an actuator) is a command of
        this client: the robot puts the safe value back when the :class:`Robot`
        is closed, or its process or network dies (unless someone commanded
        that parameter since).
        """
        robot, record = self._robot, self._record
        with robot._lock:
            self._check()
        values = robot._check_write(record, {param: value})
        robot._put(f"{record.key}/write", json.dumps(values, allow_nan=False))

    def wait_update(self, timeout: float | None = None) -> bool:
        """Sleep until the device reports again (or its validity changes); False if ``timeout`` passed first.

        True when something arrived since this handle last returned from a
        wait (or since it was made). Raises :class:`~runtime.buffer.DeviceBufferError`
        at once if the device is not connected, or when it disconnects while waiting.
        """
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        robot, record = self._robot, self._record
        with robot._lock:
            while True:
                self._check()
                if record.changes != self._seen:
                    self._seen = record.changes
                    return True
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                robot._changed.wait(remaining)

    async def wait_update_async(self, timeout: float | None = None) -> bool:
        """The asyncio form of :meth:`wait_update`: no thread per waiter."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + max(0.0, timeout)
        robot, record = self._robot, self._record
        while True:
            with robot._lock:
                self._check()
                if record.changes != self._seen:
                    self._seen = record.changes
                    changed = True
                else:
                    changed = False
                    future: asyncio.Future[None] = loop.create_future()
                    record.async_waiters.append((loop, future))
            if changed:
                await asyncio.sleep(0)  # always let the loop run
                return True
            remaining = None if deadline is None else deadline - loop.time()
            try:
                if remaining is not None and remaining <= 0:
                    raise TimeoutError
                await asyncio.wait_for(future, remaining)
            except TimeoutError:
                return False
            finally:
                with robot._lock:
                    with contextlib.suppress(ValueError):
                        record.async_waiters.remove((loop, future))

    @property
    def valid(self) -> bool:
        """Whether the device is connected (and the robot reachable): its values are live."""
        return self._record.token and not self._closed and not self._robot._closed

    @property
    def type_name(self) -> str:
        """The device type (as in the catalog)."""
        return self._record.type_name

    @property
    def uid(self) -> int:
        """The device's UID."""
        return self._record.uid

    @property
    def key_expr(self) -> str:
        """The device's key expression, ``runtime/<namespace>/<type>/<uid>``."""
        return self._record.key

    @property
    def last_update(self) -> float | None:
        """:func:`time.time` on the robot of the device's last report (None if unknown)."""
        return self._record.last_update

    @property
    def last_error(self) -> dict[str, Any] | None:
        """The robot's answer to the last refused write of this device (from any client), or None."""
        return self._record.last_error

    def close(self) -> None:
        """Stop using the handle (the robot and its other handles go on)."""
        self._closed = True

    def __enter__(self) -> RemoteDevice:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "valid" if self.valid else "invalid"
        return f"<RemoteDevice {self.type_name} {self.key_expr!r} {state}>"


def connect(
    endpoint: str | Sequence[str] | None = None,
    *,
    namespace: str | None = None,
    config: str | os.PathLike[str] | None = None,
    mode: str = "client",
    catalog: Mapping[str, type[Buffer]] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Robot:
    """Connect to a robot's ``runtime zenoh``; the :class:`Robot` to use (and close).

    Example::

        with connect("tcp/robot.local:7447") as robot:
            print([info.key for info in robot.discover() if info.valid])

    Args:
        endpoint: Where the robot listens (``runtime zenoh --listen``), such
            as ``tcp/192.168.0.42:7447``, or several; None: whatever ``config``
            says, else find it by multicast scouting (``runtime zenoh --scout``).
        namespace: The robot's name on the network (``runtime zenoh --name``,
            by default its buffer namespace). None: ``$RUNTIME_BUFFER_NAMESPACE``
            when set, else the one namespace that the ``runtime zenoh`` reached
            there serves (asked at ``runtime/*/@robot``).
        config: A Zenoh configuration file (JSON5): TLS, credentials...
        mode: The Zenoh mode of this end: ``client`` (default: connects to
            the robot, and again whenever the robot comes back) or ``peer``.
        catalog: See :class:`Robot`.
        timeout: Seconds the first queries to the robot wait for its answers.

    Raises:
        RemoteError: No Zenoh session could be opened (nobody listens there);
            or, with no namespace to use, no ``runtime zenoh`` answered there,
            or several did (the message lists their namespaces).
        ValueError: A bad namespace or configuration.
    """
    endpoints = [endpoint] if isinstance(endpoint, str) else list(endpoint or ())
    if not math.isfinite(timeout) or timeout <= 0:
        raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
    if namespace or os.environ.get(NAMESPACE_ENV):
        namespace = check_namespace(namespace or current_namespace())
    scout = None if config is not None and not endpoints else not endpoints
    zenoh_config = make_config(mode=mode, connect=endpoints, scout=scout, config_file=config)
    try:
        session = zenoh.open(zenoh_config)
    except zenoh.ZError as exc:
        where = f" at {', '.join(endpoints)}" if endpoints else ""
        raise RemoteError(
            f"cannot reach the robot{where}: {zenoh_reason(exc)}", endpoint=endpoints or None
        ) from None
    if not namespace:
        try:
            namespace = _served_namespace(session, endpoints, timeout)
        except BaseException:
            _close(session)
            raise
    return Robot(session, namespace, catalog=catalog, timeout=timeout, owns_session=True)


def _served_namespaces(session: zenoh.Session, timeout: float) -> list[str]:
    """The namespaces whose ``runtime zenoh`` answers at ``runtime/*/@robot`` through ``session``, sorted."""
    found: set[str] = set()
    for reply in session.get(f"{KEY_ROOT}/*/{STATE_CHUNK}", timeout=timeout):
        if reply.ok is None:
            continue
        chunks = str(reply.ok.key_expr).split("/")
        if len(chunks) == 3 and chunks[0] == KEY_ROOT and chunks[2] == STATE_CHUNK:
            with contextlib.suppress(ValueError):  # not a namespace of runtime's: not a robot
                found.add(check_namespace(chunks[1]))
    return sorted(found)


def _served_namespace(session: zenoh.Session, endpoints: Sequence[str], timeout: float) -> str:
    """The one namespace served there; else a :class:`RemoteError` that says what answered."""
    where = ", ".join(endpoints) if endpoints else "any endpoint found by scouting"
    found = _served_namespaces(session, timeout)
    if not found:
        raise RemoteError(
            f"no runtime zenoh answered at {where} (within {timeout:g} s): nothing serves "
            f"{KEY_ROOT}/*/{STATE_CHUNK} there; start runtime zenoh on the robot, or give namespace=",
            endpoint=list(endpoints) or None,
        )
    if len(found) > 1:
        raise RemoteError(
            f"several robots answered at {where}, namespaces {', '.join(found)}: choose one with namespace=",
            endpoint=list(endpoints) or None,
            namespaces=found,
        )
    return found[0]
