"""The server of ``runtime zenoh``: the robot's buffers on a Zenoh network, for other machines.

Serves the buffers of one namespace on a `Zenoh <https://zenoh.io>`_ session,
under key expressions any Zenoh client (Python, Rust, C, JavaScript...) can
use; :mod:`runtime.remote` is the Python client, and its docstring the
reference of the keys and the JSON they carry:

* ``runtime/<namespace>/<type>/<uid>``: the device's readable values as a JSON
  object, published on every change (at most ``--max-rate`` times a second per
  buffer), and the answer of a ``get`` on any key expression that matches it;
* a liveliness token at that key while the buffer is valid, and one at
  ``runtime/<namespace>`` while this process runs;
* ``runtime/<namespace>/<type>/<uid>/write``: a put of ``{param: value}``
  writes, all of it or nothing; a refusal is published on ``.../error``;
* ``runtime/<namespace>/@client/<id>``: the liveliness tokens of the clients
  (commanders), and ``runtime/<namespace>/@robot``: the robot's state,
  ``{"enabled": ...}``, published when it changes and answered to a ``get``;
* ``runtime/<namespace>/@mode``: a put of ``{"mode": "idle"|"auto"|"teleop"}``
  sets the field buffer's ``mode`` (what ``runtime run`` follows); a ``get``
  answers ``{"mode": ..., "running": ..., "driver": ...}``;
* ``runtime/<namespace>/@input/gamepad`` and ``.../@input/keyboard``: a put of
  ``{name: value, ...}`` sets the driver station's inputs, all or none. A
  refusal of either is published on ``<that key>/error``.

The driver station (``runtime drive``, or any :class:`runtime.remote.Robot`):
a mode other than idle, and every input, need a client with a live token, as
commands do (below; the same grace for a token still on its way); idle is
accepted at once from anyone. The client that set a mode other than idle last
is the *driver*: when its token goes, the mode goes idle (a robot without its
driver station is disabled), and so it does when this process stops. The
input buffers (``gamepad`` 0, ``keyboard`` 0) are made when missing and served
by this process (refused while another live process serves one) while the
client that fed them last lives; when it goes, every value returns to neutral
(released, centred) and the buffer turns invalid, which the student API reads
as neutral too. Inputs are checked as :func:`runtime.remote.check_input` says:
a known name, a bool for a button, a finite number within the bounds for a
joystick (out of bounds is refused, not clamped). The field's mode changes are
seen on the field buffer's own key (``runtime/<namespace>/field/0x0``), the
student code's print lines on the runner's (``runtime/<namespace>/runner/0x0``):
they are buffers like the others.

Commands (writes of the parameters that have a safe value, see
:mod:`runtime.commands`) belong to the client that sent them: it declares a
liveliness token at ``runtime/<namespace>/@client/<id>`` and puts its writes
with ``<id>`` (UTF-8) as the attachment. In shared memory every command sent
through here is this process's; this server remembers, per buffer and
parameter, which client sent the one in force last, and when that client's
token goes (it closed, its process died, its network was lost: within the
Zenoh lease) it ends those commands with
:meth:`~runtime.buffer.Buffer.end_commands`, as the bridge does for a process
that died: the safe values go to the device (a parameter commanded since by
another process stays theirs). A command from a client without a live token
is refused (safe by default): at once without an attachment, after
:data:`~runtime.remote.CLIENT_GRACE` seconds when its token does not show up
(a token declared just before the write may arrive just after it; its writes
wait in order meanwhile). This process ending ends all its commands at once.

How it works (one asyncio loop, and Zenoh's own threads):

* Every :data:`DISCOVER_INTERVAL` seconds the namespace's segments are looked
  for (:class:`runtime.watch.SegmentDiscovery`, as ``runtime record`` and
  ``runtime foxglove`` do: a directory listing, then the new ones attached,
  never created). A new one gets a publisher and a task; one that vanished
  loses them (its key gets a Zenoh DELETE); one unlinked and made again
  meanwhile (its file's inode is not the mapped one's) is dropped and served
  anew; one that cannot be opened is logged once and tried again at every look.
  The same pass compares each buffer's validity with the one last published:
  a safety net for a producer death the notifier missed (one can fall between
  two of its waits), so that no liveliness token outlives its device by more
  than that interval.
* One change feed (:class:`runtime._core.ChangeFeed`) follows every buffer
  served: a thread (``runtime-zenoh-feed``) sleeps in it on their update
  blocks and validity, outside the interpreter (the GIL released), is woken
  once for a batch of changed buffers, and publishes them itself (not the
  loop: one thread woken per batch), their values already converted to JSON
  data by the core; each publication is encoded by orjson. It holds a lock
  for the batch that the loop takes to change what is served, answer a query
  or publish the robot's state. Nothing is polled: an idle robot costs no CPU. A change is
  published at once unless the last publication is younger than
  ``1 / --max-rate`` seconds; then it is published when that time is up, with
  whatever else changed meanwhile (the newest values, never a queue of old
  ones; the feed reads nothing of that buffer meanwhile). While no subscriber
  matches a buffer's key (Zenoh tells the publisher), nothing is encoded for
  it; only its liveliness token follows its validity.
* Queries, writes, modes, inputs and the clients' tokens arrive on Zenoh
  threads and are handed to the loop, which alone touches the buffers (and
  serves the input buffers: the producer role belongs to the loop's thread). A write is first tried
  on a process-local scratch buffer of the device's type (the very checks of
  :meth:`~runtime.buffer.Buffer.write`: parameter known and writeable, value
  of the right type, bounds), then its commands need a live client, then it
  is applied in one transaction (which refuses commands while the robot is
  disabled).
* The robot's state (:attr:`~runtime.store.BufferStore.enabled`) is read on
  every look for buffers, whenever a served buffer's disabled flag disagrees
  with it (a disable wakes the buffers' tasks), after a write refused because
  the robot is disabled, and for a ``get``; a change is published at once.

Hostile puts cost a short refusal: a payload is at most
:data:`~runtime.remote.MAX_PAYLOAD` bytes of JSON nested at most
:data:`~runtime.remote.MAX_DEPTH` deep (checked before parsing), an
``.../error`` answer echoes at most :data:`ECHO_LIMIT` bytes of what it
refused, and each sender (its attachment) is answered and logged at most
:data:`~runtime.remote.REFUSAL_RATE` times a second (the rest are counted).
``runtime zenoh`` listening beyond this machine with writes and no access
control logs a warning at start (:func:`~runtime.remote.session.exposed_endpoints`,
:func:`~runtime.remote.session.access_control_enabled`).

:class:`ZenohServer` is the engine; ``runtime zenoh`` (:mod:`runtime.tools.zenoh`)
opens the session (:func:`runtime.remote.session.open_session`) and runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import functools
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson
import zenoh

from .._core import ChangeFeed, read_json
from ..buffer import Buffer, DeviceBuffer, DeviceBufferError
from ..commands import ClientCommands
from ..exception import RuntimeBaseException
from ..store import BufferStore, namespace_segments
from ..student import FIELD_KEY, RUNNER_KEY, mode_name, mode_number
from ..values import WriteRefused, apply_writes, check_writes, jsonable
from ..watch import BATCH_WINDOW, WAIT_SLICE, Segment, SegmentDiscovery
from .keys import (
    CLIENT_GRACE,
    INPUT_KINDS,
    KEY_ROOT,
    check_client_id,
    check_namespace,
    client_key,
    device_key,
    format_uid,
    input_key,
    mode_key,
    parse_device_key,
    state_key,
)
from .payload import QUOTE_LIMIT, RefusalLimiter, check_input, load_payload, quote

__all__ = [
    "DEFAULT_MAX_RATE",
    "DISCOVER_INTERVAL",
    "ECHO_LIMIT",
    "END_RETRY_DELAY",
    "HELD_WRITES_LIMIT",
    "MESSAGE_LIMIT",
    "REFUSAL_LOG_INTERVAL",
    "ZenohServer",
]

logger = logging.getLogger(__name__)

DEFAULT_MAX_RATE = 50.0
"""Publications per second and buffer, at most, unless ``--max-rate`` says otherwise."""
DISCOVER_INTERVAL = 0.5
"""Seconds between two looks for buffers that appeared or vanished."""
REFUSAL_LOG_INTERVAL = 1.0
"""Seconds between two log lines about refused writes to one device (the rest are counted)."""
HELD_WRITES_LIMIT = 256
"""Writes held at most, all clients together, while their clients' tokens are awaited (more are refused)."""
END_RETRY_DELAY = 0.1
"""Seconds before ending a gone client's commands is tried again when a buffer's lock was busy."""
_WRITE_ERRORS = (DeviceBufferError, TypeError, ValueError, OverflowError)
ECHO_LIMIT = 256
"""The most bytes (as JSON) of a refused value or put that an ``.../error`` answer echoes as it came;
a longer one is echoed as a string of its first :data:`~runtime.remote.QUOTE_LIMIT` characters."""
MESSAGE_LIMIT = 300
"""The most characters of a refusal's reason (it may quote what was refused)."""


def _echo(value: Any) -> Any:
    """A refused value as an ``.../error`` answer echoes it: itself if short, else a short quote."""
    value = jsonable(value)
    try:
        text = json.dumps(value, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError):
        return quote(value, QUOTE_LIMIT)
    return value if len(text) <= ECHO_LIMIT else quote(text, QUOTE_LIMIT)


def _cut(message: str) -> str:
    """A refusal's reason, at most :data:`MESSAGE_LIMIT` characters."""
    return message if len(message) <= MESSAGE_LIMIT else f"{message[: MESSAGE_LIMIT - 3]}..."


def _undeclare(entity: Any, method: str = "undeclare") -> None:
    """End a Zenoh entity (its stub leaves the method untyped)."""
    getattr(entity, method)()


def _matching(publisher: Any) -> bool:
    """Whether any subscriber matches the publisher's key (a ``MatchingStatus``, whatever the stub says)."""
    status = publisher.matching_status
    return bool(getattr(status, "matching", status))


def _drop(query: Any) -> None:
    """Finalize a query: its answer is complete."""
    query.drop()


def _client_of(sample: zenoh.Sample) -> str | None:
    """The client ID a write carries as its attachment, or None (none, or not a client ID)."""
    attachment = sample.attachment
    if attachment is None:
        return None
    try:
        return check_client_id(attachment.to_bytes().decode())
    except (UnicodeDecodeError, ValueError):
        return None


@dataclasses.dataclass(eq=False)
class _Served:
    """One buffer on the network: its handle, publisher and liveliness token."""

    type_name: str
    uid: int
    key: str
    key_expr: zenoh.KeyExpr
    buffer: Buffer
    publisher: zenoh.Publisher
    token: zenoh.LivelinessToken | None = None
    seq: int = 0
    last_publish: float = -1e9
    published_valid: bool | None = None
    refused: int = 0
    """Refusals not logged yet (see :data:`REFUSAL_LOG_INTERVAL`)."""
    last_refusal_log: float = -1e9
    safe: dict[str, Any] = dataclasses.field(default_factory=dict)
    """The safe value of each parameter that has one (writing it is a command)."""
    segment: Segment | None = None
    """The segment found (:class:`~runtime.watch.SegmentDiscovery`) whose buffer this serves."""
    matching: bool = False
    """Whether any subscriber matches the publisher's key, as Zenoh last told (its matching listener):
    nobody subscribes, no JSON is made."""
    listener: Any = None
    """The publisher's matching listener."""

    @functools.cached_property
    def uid_text(self) -> str:
        """The UID as its publications give it (:func:`format_uid`; made once, not per change)."""
        return format_uid(self.uid)


def _no_driver(prefix: str, client: str | None, what: str) -> str:
    """Why a mode other than idle, or an input, is refused: no live client sent it."""
    how = (
        f"declare a liveliness token at {prefix}/@client/<id> and put with <id> as the attachment "
        f"(runtime.remote.Robot does); when the token goes, the robot goes idle and its inputs neutral"
    )
    if client is None:
        return f"{what} needs a driver station: {how}"
    return (
        f"client {client!r} has no liveliness token (within {CLIENT_GRACE:g} s): "
        f"{what} needs a live driver station: {how}"
    )


def _no_commander(prefix: str, client: str | None) -> str:
    """Why a command is refused: no live client sent it."""
    how = (
        f"declare a liveliness token at {prefix}/@client/<id> and put the write with <id> as its "
        f"attachment (runtime.remote.Robot does); the command ends when the token goes"
    )
    if client is None:
        return f"a write of a parameter with a safe value is a command, and needs a commander: {how}"
    return (
        f"client {client!r} has no liveliness token (within {CLIENT_GRACE:g} s): "
        f"a command needs a live commander: {how}"
    )


class ZenohServer:
    """Serve the buffers of a store's namespace on a Zenoh session (what ``runtime zenoh`` runs).

    Args:
        session: The open Zenoh session (the caller closes it).
        store: Gives the catalog and the namespace's segments (buffers are
            attached with ``create=False`` and closed here).
        name: The ``<namespace>`` chunk of the key expressions.
        max_rate: Publications per second per buffer, at most.
        read_only: Refuse every write (no subscriber on ``.../write`` at all).
    """

    listening: tuple[str, ...] = ()
    """The endpoints its session listens on, for the start-up line (``runtime zenoh`` sets them)."""

    def __init__(
        self,
        session: zenoh.Session,
        store: BufferStore,
        name: str,
        *,
        max_rate: float = DEFAULT_MAX_RATE,
        read_only: bool = False,
    ) -> None:
        self.session = session
        self.store = store
        self.name = check_namespace(name)
        self.prefix = f"{KEY_ROOT}/{self.name}"
        self.period = 1.0 / max_rate
        self.read_only = read_only
        self.server_id = str(session.zid())
        self.state_key = state_key(self.name)
        self._state_key_expr = zenoh.KeyExpr(self.state_key)
        self.served: dict[tuple[str, int], _Served] = {}
        self.clients: set[str] = set()
        """The clients whose liveliness token is alive."""
        self._held: dict[str, list[tuple[str, bytes]]] = {}
        """Writes of clients whose token has not been seen yet, in order, by client."""
        self._enabled: bool | None = None
        """The robot's state as last published."""
        self._state_publisher: zenoh.Publisher | None = None
        self._segments = self._discovery()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._feed: ChangeFeed | None = None
        """The change feed of the buffers served (while :meth:`serve` runs)."""
        self._lock = threading.RLock()
        """Held by the publishing thread for a batch, and by the loop while it changes what is served,
        answers a query or publishes the robot's state."""
        self._due: dict[str, float] = {}
        """The publications held back by the rate limit: when each is due (monotonic), by segment name;
        the feed reads nothing of those buffers meanwhile. Under the lock."""
        self._stopping = False
        self._by_name: dict[str, _Served] = {}
        """The buffers served, by segment name (the feed's keys)."""
        self.publications = 0
        """Values published so far (every buffer)."""
        self.writes = 0
        """Writes applied so far."""
        self.refusals = 0
        """Writes refused so far (those answered, and those only counted: see :attr:`limiter`)."""
        self.limiter = RefusalLimiter()
        """How many refusals each sender is answered (:data:`~runtime.remote.REFUSAL_RATE` a second)."""
        self.ended = 0
        """Commands ended so far because their client went away."""
        self.commands: ClientCommands[tuple[str, int], str] = ClientCommands()
        """By ``(type, uid)`` and parameter, the client whose command through this server was last."""
        self.mode_key = mode_key(self.name)
        self._mode_key_expr = zenoh.KeyExpr(self.mode_key)
        self._input_prefix = input_key(self.name, "")
        self.driver: str | None = None
        """The client that set the mode in force (not idle): when its token goes, the robot goes idle."""
        self.feeders: dict[str, str] = {}
        """By input kind (``gamepad``, ``keyboard``), the client whose values it holds (served meanwhile)."""
        self._inputs: dict[str, Buffer] = {}
        """The input buffers this process fed (it serves those in :attr:`feeders`)."""
        self._refusal_logs: dict[str, list[float]] = {}
        """By key, when a refusal was last logged there and how many were not logged since."""

    # -- publishing --

    def _payload(
        self, served: _Served, state: tuple[bool, dict[str, Any] | None] | None = None
    ) -> tuple[bool, bytes]:
        """The buffer's JSON object, and whether it is valid: ``state`` (valid, values) as the change
        feed handed it over, else read now (both by the compiled core, :func:`runtime._core.read_json`)."""
        buffer = served.buffer
        valid, values = state if state is not None else read_json(buffer._access)[:2]
        last_update = None
        if valid and isinstance(buffer, DeviceBuffer):
            try:
                last_update = buffer.last_update or None
            except DeviceBufferError:  # turned invalid meanwhile
                valid, values = False, None
        data = {
            "type": served.type_name,
            "uid": served.uid_text,
            "valid": valid,
            "values": values,
            "last_update": last_update,
            "time": time.time(),
            "seq": served.seq,
            "server": self.server_id,
        }
        # orjson (runtime.values.encode_json's encoder) straight: nothing here is NaN or infinite
        # (the core gives None for those), so encode_json's check of a null is not needed.
        return valid, orjson.dumps(data)

    def _publish(self, served: _Served, state: tuple[bool, dict[str, Any] | None] | None = None) -> None:
        """Publish the buffer's values (and its validity once when it turns invalid); token in step.

        ``state``: (valid, values) as the change feed handed it over (else read now)."""
        if served.safe:
            with contextlib.suppress(DeviceBufferError):
                if served.buffer.disabled == bool(self._enabled):  # a disable (or enable) woke us
                    self._check_state()
        served.seq += 1
        payload: bytes | None = None
        if served.matching:
            valid, payload = self._payload(served, state)
        elif state is not None:  # nobody subscribes: no JSON (a get still answers fresh values)
            valid = state[0]
        else:
            valid = served.buffer.valid
        if valid and served.token is None:  # the token first: a remote sees the device, then its values
            served.token = self.session.liveliness().declare_token(served.key)
            logger.info("zenoh: %s %s valid at %s", served.type_name, format_uid(served.uid), served.key)
        if payload is not None and (valid or served.published_valid is not False):
            served.publisher.put(payload)
            self.publications += 1
        if not valid and served.token is not None:
            _undeclare(served.token)
            served.token = None
            logger.info("zenoh: %s %s invalid", served.type_name, format_uid(served.uid))
        served.published_valid = valid
        served.last_publish = time.monotonic()

    def _publish_changes(self, feed: ChangeFeed) -> None:
        """The publishing thread (``runtime-zenoh-feed``): sleep in the change feed (the GIL released)
        until a batch of changed buffers is ready or a held publication is due, then publish them here,
        under :attr:`_lock` (no wake-up of the loop: one thread woken per batch)."""
        while not self._stopping:
            timeout = WAIT_SLICE
            with self._lock:
                if self._due:
                    timeout = min(timeout, max(0.0, min(self._due.values()) - time.monotonic()))
            try:
                feed.wait(timeout)
                if self._stopping:
                    break
                with self._lock:
                    self._publish_batch(feed)
            except Exception:  # noqa: BLE001 - one failed batch must not stop the service
                logger.exception("zenoh: cannot publish the changes")

    def _publish_batch(self, feed: ChangeFeed) -> None:
        """Publish each buffer of the batch at once, unless its last publication is younger than
        :attr:`period`: then when that time is up, with its newest values (the feed reads nothing of it
        meanwhile). The lock held."""
        now = time.monotonic()
        for name, due in list(self._due.items()):  # held ones that are due: their state now
            if due <= now:
                del self._due[name]
                feed.want(name, True)  # its state at this take, changed or not
        for name, _blocks, valid, values, _stamp in feed.take():
            served = self._by_name.get(name)
            if served is None or name in self._due:
                continue
            due = served.last_publish + self.period
            if due > now:
                feed.want(name, False)
                self._due[name] = due
                continue
            try:
                self._publish(served, (valid, values))
            except Exception:  # noqa: BLE001 - one failed publication must not end the buffer's service
                logger.exception("zenoh: cannot publish %s", served.key)

    # -- the buffers that come and go --

    def _discovery(self) -> SegmentDiscovery:
        """The look for the namespace's segments (one that cannot be opened is said once, tried again)."""

        def refused(name: str, exc: DeviceBufferError) -> None:
            logger.warning("zenoh: cannot open %s, not served: %s", name, exc)

        return SegmentDiscovery(self.store.catalog, self.store.namespace(), on_refused=refused)

    async def _discover(self) -> None:
        """Serve the namespace's new buffers; stop serving those that vanished (or were replaced)."""
        appeared, gone = self._segments.discover()
        with self._lock:
            self._follow(appeared, gone)

    def _follow(self, appeared: list[Segment], gone: list[Segment]) -> None:
        """What :meth:`_discover` found: served, or no more (the lock held)."""
        for segment in gone:
            served = self.served.get(segment.key)
            if served is None or served.segment is not segment:
                segment.buffer.close()
                continue
            del self.served[segment.key]
            if segment.replaced:
                # Unlinked and made again between two looks (a bridge restarted, a replay): the handle
                # maps the old segment, which nobody serves any more: follow the new one.
                logger.info(
                    "zenoh: %s %s was replaced: serving the new one",
                    segment.type_name,
                    format_uid(segment.uid),
                )
            self._forget(served, gone=not segment.replaced)
        never_served = self._never_served([s for s in appeared if isinstance(s.buffer, DeviceBuffer)])
        for segment in appeared:
            if segment.name in never_served:  # no device behind it yet: looked at again at the next look
                self._segments.forget(segment.name)
                segment.buffer.close()
                continue
            try:
                self._serve(segment)
            except Exception:  # noqa: BLE001 - tried again at the next look
                logger.exception("zenoh: cannot serve %s", segment.name)
                self._segments.forget(segment.name)
                segment.buffer.close()
        self._check_state()
        for served in list(self.served.values()):
            # A safety net, one memory load per buffer: the notifier can miss a producer's death
            # that falls between two of its waits (it then sleeps on); the token must not outlive it.
            if served.published_valid is not None and served.buffer.valid != served.published_valid:
                logger.debug("zenoh: %s: a validity change the notification missed", served.key)
                self._publish(served)

    def _never_served(self, segments: list[Segment]) -> set[str]:
        """The names of these Smart Device segments that no producer ever served (none serves them now).

        Such a segment (a mistyped UID opened by a program, student code
        before the bridge came) is no device of the robot: it is not served,
        so no remote finds it, until a bridge serves it.
        """
        unserved = [segment for segment in segments if segment.buffer.producer_pid is None]
        if not unserved:
            return set()
        last = dict(namespace_segments(self.store.namespace()))  # name -> last producer pid, 0: none ever
        return {segment.name for segment in unserved if last.get(segment.name, 0) == 0}

    def _serve(self, segment: Segment) -> None:
        """Serve a segment found: a publisher, and its place in the change feed."""
        type_name, uid, buffer = segment.type_name, segment.uid, segment.buffer
        key = device_key(self.name, type_name, uid)
        # A Smart Device reports many times a second: a publication Zenoh drops under congestion is
        # replaced by the next one. Other buffers (the field's mode, the runner's print lines, the
        # driver station's inputs) change seldom: a dropped publication would leave every remote
        # with a stale state, so theirs wait for room instead.
        congestion = (
            zenoh.CongestionControl.DROP
            if isinstance(buffer, DeviceBuffer)
            else zenoh.CongestionControl.BLOCK
        )
        # Not express: the publications of one batch of the change feed (BATCH_WINDOW) leave in one
        # frame, one wake-up of Zenoh's sending thread instead of one each (a third less CPU per
        # publication here), for at most Zenoh's batching delay (a millisecond) beside the feed's pace.
        publisher = self.session.declare_publisher(
            key, encoding=zenoh.Encoding.APPLICATION_JSON, express=False, congestion_control=congestion
        )
        served = _Served(type_name, uid, key, zenoh.KeyExpr(key), buffer, publisher)

        def matching(status: Any) -> None:  # Zenoh's thread: one attribute, read by the loop
            served.matching = bool(status.matching)

        served.listener = publisher.declare_matching_listener(matching)
        served.matching = _matching(publisher)  # what the listener may have told before it existed
        served.safe = type(buffer).safe_values()
        served.segment = segment
        self.served[type_name, uid] = served
        if self._feed is not None:
            self._by_name[segment.name] = served
            self._feed.add(segment.name, buffer._access)  # its state is handed over (published) at once
        logger.info("zenoh: serving %s %s at %s", type_name, format_uid(uid), key)

    def _forget(self, served: _Served, *, gone: bool) -> None:
        self.commands.forget((served.type_name, served.uid))  # closing the buffer ends them
        if served.segment is not None and self._by_name.get(served.segment.name) is served:
            del self._by_name[served.segment.name]
            self._due.pop(served.segment.name, None)
            if self._feed is not None:
                self._feed.remove(served.segment.name)
        with contextlib.suppress(Exception):
            if gone:
                served.publisher.delete()  # the buffer no longer exists: a DELETE on its key
            if served.listener is not None:
                _undeclare(served.listener)
            _undeclare(served.publisher)
        if served.token is not None:
            with contextlib.suppress(Exception):
                _undeclare(served.token)
            served.token = None
        served.buffer.close()
        if gone:
            logger.info("zenoh: %s %s is gone", served.type_name, format_uid(served.uid))

    # -- queries --

    def _on_query(self, query: zenoh.Query) -> None:
        """Zenoh thread: hand the query to the loop."""
        if self._loop is None:
            _drop(query)
            return
        try:
            self._loop.call_soon_threadsafe(self._answer, query)
        except RuntimeError:  # the loop is closing: no answer
            _drop(query)

    def _answer(self, query: zenoh.Query) -> None:
        """The loop: one reply per buffer whose key matches the query's, with its values now
        (and the robot's state, to a query of its key)."""
        try:
            wanted = query.key_expr
            with self._lock:
                if wanted.intersects(self._state_key_expr):
                    self._check_state()
                    payload = self._state_payload(bool(self._enabled))
                    query.reply(self.state_key, payload, encoding=zenoh.Encoding.APPLICATION_JSON)
                if wanted.intersects(self._mode_key_expr):
                    query.reply(self.mode_key, self._mode_payload(), encoding=zenoh.Encoding.APPLICATION_JSON)
                for served in list(self.served.values()):
                    if wanted.intersects(served.key_expr):
                        _, values = self._payload(served)
                        query.reply(served.key, values, encoding=zenoh.Encoding.APPLICATION_JSON)
        except Exception:  # noqa: BLE001 - a query that cannot be answered must not stop the server
            logger.exception("zenoh: cannot answer a query on %s", query.key_expr)
        finally:
            _drop(query)  # the answer is complete

    # -- writes --

    def _on_write(self, sample: zenoh.Sample) -> None:
        """Zenoh thread: hand the write (or mode, or input), and who sent it (the attachment), to the loop."""
        if self._loop is None:
            return
        key, payload = str(sample.key_expr), sample.payload.to_bytes()
        client = _client_of(sample)
        with contextlib.suppress(RuntimeError):  # the loop is closing
            self._loop.call_soon_threadsafe(self._dispatch, key, payload, client)

    def _dispatch(self, key: str, payload: bytes, client: str | None, *, held: bool = False) -> None:
        """The loop: a put on ``.../write``, ``@mode`` or ``@input/<kind>``, to the code that takes it."""
        if key == self.mode_key:
            self._set_mode(payload, client, held=held)
        elif key.startswith(self._input_prefix):
            self._set_input(key.removeprefix(self._input_prefix), payload, client, held=held)
        else:
            self._write(key, payload, client, held=held)

    def _must_wait(self, client: str | None, held: bool, needs_client: bool) -> bool:
        """Whether a put must wait for its client's token (it may be on its way), or behind its held puts."""
        return (
            client is not None
            and client not in self.clients
            and not held
            and (needs_client or client in self._held)
        )

    def _write(self, key: str, payload: bytes, client: str | None = None, *, held: bool = False) -> None:
        """The loop: apply a write, all of it or nothing, or answer why not on ``.../error``.

        ``client`` sent it (None: unknown); ``held``: it waited for that client's token already.
        """
        parsed = parse_device_key(key)
        if parsed is None or parsed[0] != self.name or key.count("/") != 4:
            logger.warning("zenoh: ignoring a write on %s: not a device's write key", key)
            return
        _, type_name, uid = parsed
        served = self.served.get((type_name, uid))
        try:
            data, problem = load_payload(payload), ""
        except ValueError as exc:
            data, problem = None, f": {exc}"
        if served is None:
            self._refuse(type_name, uid, data, "no such device on this robot", client=client)
            return
        if not isinstance(data, dict) or not data:
            error = f"a write is a JSON object {{param: value, ...}}{problem}"
            self._refuse(type_name, uid, data, error, served=served, client=client)
            return
        try:  # the one write policy: refused with the bounds, never clamped (runtime.values)
            checked = check_writes(type(served.buffer), data)
        except WriteRefused as exc:
            param, value = exc.param, data.get(exc.param)
            self._refuse(type_name, uid, data, exc, param=param, value=value, served=served, client=client)
            return
        commands = [param for param in data if param in served.safe]
        if self._must_wait(client, held, bool(commands)):
            assert client is not None

            def refuse() -> None:
                error = (
                    f"too many writes wait for their clients' tokens; {_no_commander(self.prefix, client)}"
                )
                self._refuse(type_name, uid, data, error, served=served, client=client)

            self._hold(client, key, payload, refuse)  # its token may be on its way
            return
        if commands and client not in self.clients:
            param = commands[0]
            error = _no_commander(self.prefix, client)
            self._refuse(
                type_name, uid, data, error, param=param, value=data[param], served=served, client=client
            )
            return
        try:
            apply_writes(served.buffer, checked)  # commands first: a disabled robot refuses before any write
        except _WRITE_ERRORS as exc:
            self._refuse(type_name, uid, data, exc, served=served, client=client)
            self._check_state()  # refused because the robot is disabled? then say so at once
            return
        self.writes += 1
        if commands and client is not None:  # (never None here: checked above)
            self.commands.wrote((type_name, uid), served.buffer, commands, client)  # this client's now
        logger.debug("zenoh: wrote %s to %s for %s", data, served.key, client)

    def _hold(self, client: str, key: str, payload: bytes, refuse: Callable[[], None]) -> None:
        """Hold a put of a client whose token is unknown (until it comes, or for :data:`CLIENT_GRACE`);
        ``refuse()`` when too many wait already."""
        if sum(len(writes) for writes in self._held.values()) >= HELD_WRITES_LIMIT:
            refuse()
            return
        writes = self._held.get(client)
        if writes is None:
            writes = self._held[client] = []
            assert self._loop is not None
            self._loop.call_later(CLIENT_GRACE, self._release, client, writes)
        writes.append((key, payload))

    def _release(self, client: str, writes: list[tuple[str, bytes]] | None = None) -> None:
        """The writes held for a client: applied now that its token came, or refused after the grace.

        ``writes``: those of the grace timer (already released when the token came: nothing to do).
        """
        if writes is not None and self._held.get(client) is not writes:
            return
        for key, payload in self._held.pop(client, []):
            self._dispatch(key, payload, client, held=True)

    # -- the clients --

    def _on_client(self, sample: zenoh.Sample) -> None:
        """Zenoh thread: a client's token came or went; hand it to the loop."""
        if self._loop is None:
            return
        client = str(sample.key_expr).rsplit("/", 1)[-1]
        alive = sample.kind == zenoh.SampleKind.PUT
        with contextlib.suppress(RuntimeError):  # the loop is closing
            self._loop.call_soon_threadsafe(self._client_changed, client, alive)

    def _client_changed(self, client: str, alive: bool) -> None:
        if alive:
            if client not in self.clients:
                self.clients.add(client)
                logger.debug("zenoh: client %s is here", client)
            self._release(client)
        else:
            self.clients.discard(client)
            logger.debug("zenoh: client %s is gone", client)
            if client == self.driver:
                self._idle(f"client {client}, the driver station, is gone")
            for kind, feeder in list(self.feeders.items()):
                if feeder == client:
                    self._neutral(kind, f"client {client}, which fed it, is gone")
            self._end_commands(client)

    def _end_commands(self, client: str) -> None:
        """A client went away: its commands (those through here that nobody gave since) end."""
        if client in self.clients:  # back meanwhile (a retry): its commands are its own again
            return
        ended, busy = self.commands.end(lambda owner: owner == client)
        for (type_name, uid), exc in busy.items():  # the lock is busy: again soon
            logger.debug("zenoh: cannot end the commands of %s on %s %s yet: %s", client, type_name, uid, exc)
        lines = []
        for (type_name, uid), names in ended.items():
            safe = self.store.catalog[type_name].safe_values()
            self.ended += len(names)
            device = f"{type_name} {format_uid(uid)}"
            lines += [f"{device} {name} back to {safe[name]!r}" for name in sorted(names)]
        if lines:
            logger.info("zenoh: client %s is gone: its commands end: %s", client, ", ".join(lines))
        if busy and self._loop is not None:
            self._loop.call_later(END_RETRY_DELAY, self._end_commands, client)

    # -- the robot's state --

    def _read_enabled(self) -> bool:
        try:
            return self.store.enabled
        except RuntimeBaseException as exc:  # a foreign file where the state should be: say disabled
            if self._enabled is not False:
                logger.error("zenoh: cannot read the robot's state (%s); saying it is disabled", exc)
            return False

    def _state_payload(self, enabled: bool) -> str:
        data = {"enabled": enabled, "time": time.time(), "server": self.server_id}
        return json.dumps(data, separators=(",", ":"))

    def _check_state(self) -> None:
        """Read the robot's state; publish it when it changed (the loop's looks and writes, and the
        publishing thread's disabled buffers: under the lock)."""
        with self._lock:
            enabled = self._read_enabled()
            if enabled == self._enabled:
                return
            self._enabled = enabled
            logger.info("zenoh: the robot is %s", "enabled" if enabled else "disabled")
            if self._state_publisher is not None:
                try:
                    self._state_publisher.put(self._state_payload(enabled))
                except Exception:  # noqa: BLE001 - said again at the next change
                    logger.exception("zenoh: cannot publish the robot's state")

    def _refuse(
        self,
        type_name: str,
        uid: int,
        data: Any,
        error: str | Exception,
        *,
        param: str | None = None,
        value: Any = None,
        served: _Served | None = None,
        client: str | None = None,
    ) -> None:
        """Publish why a write was refused on the device's ``.../error`` key, and log it.

        At most :data:`~runtime.remote.REFUSAL_RATE` a second per sender (``client``;
        more are counted in :attr:`refusals` only); what was refused is echoed short (:func:`_echo`).
        """
        self.refusals += 1
        if not self.limiter.allow(client):
            return
        key = device_key(self.name, type_name, uid)
        if isinstance(error, DeviceBufferError):
            message = error.message
            param = error.context.get("param", param)
        else:
            message = str(error)
        message = _cut(message)
        answer = {
            "type": type_name,
            "uid": format_uid(uid),
            "error": message,
            "kind": type(error).__name__ if isinstance(error, Exception) else "RefusedWrite",
            "param": _echo(param),
            "value": _echo(value),
            "write": _echo(data),
            "time": time.time(),
        }
        self._publish_error(key, answer)
        now = time.monotonic()
        if served is not None:
            served.refused += 1
            if now - served.last_refusal_log < REFUSAL_LOG_INTERVAL:
                return  # counted; said with the next line
            more = f" (and {served.refused - 1} more since the last line)" if served.refused > 1 else ""
            served.refused, served.last_refusal_log = 0, now
        else:
            more = ""
        detail = f" {quote(param)}={quote(jsonable(value))}" if param is not None else ""
        logger.warning("zenoh: refused a write to %s%s: %s%s", key, detail, message, more)

    # -- the driver station: the field mode and the inputs --

    def _open_plain(self, key: tuple[str, int], *, create: bool) -> Buffer:
        """A handle of a plain buffer of the namespace, opened now (the caller closes it)."""
        type_name, uid = key
        return self.store.catalog[type_name].attach(self.store.segment_name(type_name, uid), create=create)

    def _read_mode(self, key: tuple[str, int]) -> int | None:
        """The ``mode`` of the field or runner buffer, or None when it does not exist or is invalid."""
        try:
            buffer = self._open_plain(key, create=False)
        except (DeviceBufferError, KeyError):
            return None
        try:
            return int(buffer.get("mode"))
        except DeviceBufferError:  # invalid: its producer is gone
            return None
        finally:
            buffer.close()

    def _mode_payload(self) -> str:
        """The answer to a ``get`` on ``@mode``: the field's mode, the runner's, and the driver."""
        running = self._read_mode(RUNNER_KEY)
        data = {
            "mode": mode_name(self._read_mode(FIELD_KEY) or 0),
            "running": None if running is None else mode_name(running),
            "driver": self.driver,
            "time": time.time(),
            "server": self.server_id,
        }
        return json.dumps(data, separators=(",", ":"))

    def _apply_mode(self, number: int) -> int:
        """Set the field buffer's mode (made when missing); the mode it had."""
        field = self._open_plain(FIELD_KEY, create=True)
        try:
            with field.transaction():
                previous = int(field.get("mode"))
                field.set("mode", number)
        finally:
            field.close()
        return previous

    def _set_mode(self, payload: bytes, client: str | None, *, held: bool = False) -> None:
        """The loop: a put on ``@mode``. Idle at once from anyone; another mode from a live client only."""
        try:
            data = load_payload(payload)
        except ValueError as exc:
            data, mode, unread = None, None, str(exc)
        else:
            mode, unread = (data.get("mode") if isinstance(data, dict) else data), ""
        try:
            if unread:
                raise ValueError(unread)
            if isinstance(mode, bool) or not isinstance(mode, str | int):
                raise ValueError(f"not {quote(mode)}")
            number = mode_number(mode)
        except ValueError as exc:
            error = f'a mode request is {{"mode": "idle" | "auto" | "teleop"}}: {exc}'
            self._refuse_request(self.mode_key, data, error, client, mode=mode)
            return
        name = mode_name(number)
        if number == 0:  # safe: at once, from anyone; it overtakes the client's requests still held
            if client is not None and client in self._held:
                self._held[client][:] = [
                    (key, body) for key, body in self._held[client] if key != self.mode_key
                ]
        else:
            if self._must_wait(client, held, True):
                assert client is not None

                def refuse() -> None:
                    why = _no_driver(self.prefix, client, f"mode {name}")
                    self._refuse_request(
                        self.mode_key, data, f"too many requests wait for tokens; {why}", client
                    )

                self._hold(client, self.mode_key, payload, refuse)
                return
            if client not in self.clients:
                self._refuse_request(
                    self.mode_key, data, _no_driver(self.prefix, client, f"mode {name}"), client, mode=name
                )
                return
        try:
            previous = self._apply_mode(number)
        except DeviceBufferError as exc:
            self._refuse_request(
                self.mode_key, data, f"cannot set the field's mode: {exc.message}", client, mode=name
            )
            return
        driver, self.driver = self.driver, (client if number else None)
        if previous != number or driver != self.driver:
            by = f"client {client}" if client is not None else "a client without an ID"
            role = " (the driver station now: the robot goes idle when it goes)" if number else ""
            logger.info("zenoh: mode %s -> %s, set by %s%s", mode_name(previous), name, by, role)

    def _idle(self, why: str) -> None:
        """The driver is gone: idle (unless it is already)."""
        self.driver = None
        try:
            previous = self._apply_mode(0)
        except DeviceBufferError as exc:
            logger.error("zenoh: %s, but the field's mode cannot be set to idle: %s", why, exc.message)
            return
        if previous != 0:
            logger.warning("zenoh: %s: mode %s -> idle", why, mode_name(previous))

    def _set_input(self, kind: str, payload: bytes, client: str | None, *, held: bool = False) -> None:
        """The loop: a put on ``@input/<kind>``: checked, then set all or none in the input buffer."""
        key = input_key(self.name, kind)
        try:
            data = load_payload(payload)
        except ValueError as exc:
            self._refuse_request(key, None, f"an input is a JSON object {{name: value, ...}}: {exc}", client)
            return
        buffer_type = self.store.catalog.get(kind) if kind in INPUT_KINDS else None
        if buffer_type is None:
            error = f"no such input: the inputs are {', '.join(INPUT_KINDS)}"
            if kind in INPUT_KINDS:
                error = f"the catalog of runtime zenoh has no {kind} type"
            self._refuse_request(key, data, error, client)
            return
        try:
            values = check_input(kind, buffer_type.params, data)
        except (DeviceBufferError, TypeError, ValueError) as exc:
            message = exc.message if isinstance(exc, DeviceBufferError) else str(exc)
            param = None
            for name, value in data.items() if isinstance(data, dict) else ():
                try:
                    check_input(kind, buffer_type.params, {name: value})
                except (DeviceBufferError, TypeError, ValueError):
                    param = name  # the first one refused: the one the message is about
                    break
            self._refuse_request(key, data, message, client, kind=type(exc).__name__, param=param)
            return
        if self._must_wait(client, held, True):
            assert client is not None

            def refuse() -> None:
                why = _no_driver(self.prefix, client, f"the {kind}")
                self._refuse_request(key, data, f"too many requests wait for tokens; {why}", client)

            self._hold(client, key, payload, refuse)
            return
        if client not in self.clients:
            self._refuse_request(key, data, _no_driver(self.prefix, client, f"the {kind}"), client)
            return
        buffer = self._inputs.get(kind)
        try:
            if buffer is None:
                buffer = self._inputs[kind] = self._open_plain((kind, 0), create=True)
            if not buffer.serving:
                taken = buffer.serve()  # this thread (the loop's) produces it from now on
                over = f" (taken over from pid {taken}, which died serving it)" if taken else ""
                logger.info("zenoh: serving the %s for the driver station%s", kind, over)
            with buffer.transaction():
                for param, value in values.items():
                    buffer.set(param, value)
        except DeviceBufferError as exc:
            pid = buffer.producer_pid if buffer is not None and not buffer.closed else None
            if pid is not None and pid != os.getpid():
                error = f"the {kind} is fed by another process (pid {pid}): one driver station at a time"
            else:
                error = f"cannot set the {kind}: {exc.message}"
            self._refuse_request(key, data, error, client)
            return
        if self.feeders.get(kind) != client:
            logger.info("zenoh: client %s feeds the %s", client, kind)
            self.feeders[kind] = client  # (a live client: checked above)

    def _neutral(self, kind: str, why: str) -> None:
        """An input whose feeder is gone: every value back to neutral (released, centred), then not served."""
        self.feeders.pop(kind, None)
        buffer = self._inputs.get(kind)
        if buffer is None or not buffer.serving:
            return
        try:
            with buffer.transaction():
                for name, param in type(buffer).params.items():
                    if not issubclass(param.platform_type, ctypes.Array):
                        buffer.set(name, param.platform_type().value)
        except DeviceBufferError as exc:
            logger.error("zenoh: cannot put the %s back to neutral: %s", kind, exc.message)
        buffer.stop_serving()  # invalid: the student API reads an invalid input as neutral too
        logger.info("zenoh: the %s is back to neutral and no longer served: %s", kind, why)

    def _publish_error(self, key: str, answer: dict[str, Any]) -> None:
        """Say why a put on ``key`` was refused, on ``<key>/error`` (the caller logs it too)."""
        try:
            self.session.put(
                f"{key}/error",
                json.dumps(answer, separators=(",", ":"), allow_nan=False),
                encoding=zenoh.Encoding.APPLICATION_JSON,
                congestion_control=zenoh.CongestionControl.BLOCK,  # a refusal is said once: not dropped
            )
        except Exception:  # noqa: BLE001 - still logged by the caller
            logger.exception("zenoh: cannot publish on %s/error", key)

    def _refuse_request(
        self,
        key: str,
        data: Any,
        error: str,
        client: str | None,
        *,
        kind: str = "RefusedRequest",
        param: Any = None,
        mode: Any = None,
    ) -> None:
        """Publish why a put on ``@mode`` or ``@input/<kind>`` was refused on ``<key>/error``; log it.

        Rate-limited per sender, what was refused echoed short: as :meth:`_refuse`.
        """
        self.refusals += 1
        if not self.limiter.allow(client):
            return
        error = _cut(error)
        answer = {
            "error": error,
            "kind": kind,
            "param": _echo(param),
            "mode": _echo(mode),
            "request": _echo(data),
            "client": client,
            "time": time.time(),
        }
        self._publish_error(key, answer)
        now = time.monotonic()
        if key not in self._refusal_logs and len(self._refusal_logs) >= 64:
            self._refusal_logs.clear()  # keys a peer made up (@input/<anything>): forget them
        last = self._refusal_logs.setdefault(key, [-1e9, 0.0])
        if now - last[0] < REFUSAL_LOG_INTERVAL:
            last[1] += 1
            return
        more = f" (and {last[1]:g} more since the last line)" if last[1] else ""
        last[:] = [now, 0.0]
        logger.warning("zenoh: refused a put on %s: %s%s", key, error, more)

    # -- running --

    async def serve(self, stop: asyncio.Event | None = None) -> int:
        """Serve until ``stop`` is set, then undeclare everything (without ``stop``: until cancelled).

        ``runtime zenoh`` sets ``stop`` on SIGINT and SIGTERM.
        """
        loop = self._loop = asyncio.get_running_loop()
        stop = stop or asyncio.Event()
        feed = self._feed = ChangeFeed(BATCH_WINDOW)
        self._stopping = False
        publishing = threading.Thread(
            target=self._publish_changes, args=(feed,), name="runtime-zenoh-feed", daemon=True
        )
        publishing.start()
        declared: list[Any] = [self.session.liveliness().declare_token(self.prefix)]
        declared.append(self.session.declare_queryable(f"{self.prefix}/**", self._on_query))
        state_publisher = self._state_publisher = self.session.declare_publisher(
            self.state_key, encoding=zenoh.Encoding.APPLICATION_JSON, express=True
        )
        declared.append(state_publisher)
        declared.append(self.session.declare_queryable(self.state_key, self._on_query))
        declared.append(self.session.declare_queryable(self.mode_key, self._on_query))
        self._check_state()
        if not self.read_only:
            # The clients' tokens first: a write is then never held for a token already there.
            declared.append(
                self.session.liveliness().declare_subscriber(
                    client_key(self.name, "*"), self._on_client, history=True
                )
            )
            declared.append(self.session.declare_subscriber(f"{self.prefix}/*/*/write", self._on_write))
            declared.append(self.session.declare_subscriber(self.mode_key, self._on_write))
            declared.append(self.session.declare_subscriber(input_key(self.name, "*"), self._on_write))
        logger.info(
            "zenoh: serving namespace %s on %s (keys %s/**)%s",
            self.store.namespace(),
            ", ".join(self.listening) or "no --listen endpoint (it connects, or scouts)",
            self.prefix,
            " (read-only)" if self.read_only else "",
        )

        async def discover_periodically() -> None:
            while True:
                try:
                    await self._discover()
                except Exception:  # noqa: BLE001 - try again at the next look
                    logger.exception("zenoh: cannot look for buffers")
                await asyncio.sleep(DISCOVER_INTERVAL)

        discoverer = loop.create_task(discover_periodically(), name="discover")
        try:
            await stop.wait()
            logger.info("zenoh: shutting down")
        finally:
            discoverer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await discoverer
            if self.driver is not None:  # nobody drives the robot from here any more
                self._idle("runtime zenoh stops: its driver station can no longer reach the robot")
            for kind in list(self.feeders):
                self._neutral(kind, "runtime zenoh stops")
            for buffer in self._inputs.values():
                buffer.close()
            self._inputs.clear()
            with contextlib.suppress(Exception):
                state_publisher.delete()  # the robot's state is unknown from now on
            self._state_publisher = None
            for entity in reversed(declared):
                with contextlib.suppress(Exception):
                    _undeclare(entity)
            self._loop = None
            self._held.clear()
            self._stopping = True
            feed.wake()  # the publishing thread's wait returns, and it ends
            publishing.join()
            while self.served:
                _, served = self.served.popitem()
                self._forget(served, gone=False)
            feed.close()
            self._feed = None
            self._due.clear()
            self._by_name.clear()
            self._segments = (
                self._discovery()
            )  # the buffers it found are closed: a next serve() finds them anew
        return 0
