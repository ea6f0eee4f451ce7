"""The live view's server: the buffers as Foxglove channels and parameters, and the write path.

:class:`LiveView` serves (see :mod:`runtime.live`); :func:`serve_foxglove`
runs it from Python until a stop event.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import threading
from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any

from foxglove.websocket import ServerListener

from ..buffer import Buffer, DeviceBufferError, Parameter
from ..commands import ClientCommands
from ..exception import RuntimeBaseException, did_you_mean
from ..mcap import LOG_TOPIC, StudentLog, log_schema, topic_of
from ..remote import RefusalLimiter, load_payload, quote
from ..store import BufferStore, robot_enabled
from ..student import RUNNER_KEY
from ..values import WriteRefused as ValueRefused
from ..values import apply_writes, check_writes, encode_json, jsonable, read_state
from ..watch import BATCH_WINDOW, BufferWatcher, Watched
from .gate import OriginGate, count_connections, shut_sockets

if TYPE_CHECKING:
    import foxglove
    from foxglove.websocket import ChannelView, Client, ClientChannel, WebSocketServer

__all__ = [
    "COMMAND_SUFFIX",
    "DEFAULT_HOST",
    "DEFAULT_MAX_RATE",
    "DEFAULT_PORT",
    "FOXGLOVE_WORKERS",
    "MAX_RATE",
    "MESSAGE_LIMIT",
    "READ_ONLY",
    "ROBOT_DISABLED",
    "ROBOT_STATUS",
    "LiveError",
    "LiveView",
    "WriteRefused",
    "serve_foxglove",
]

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
DEFAULT_MAX_RATE = 50.0
MAX_RATE = 1000.0
"""The highest ``--max-rate``."""
SUBSCRIBE_DELAY = 0.05
"""Seconds after a subscription that the buffer's state is sent (it takes effect after its callback)."""
NAME_HINT_LIMIT = 256
"""The longest unknown parameter name a "did you mean" is looked for (a client's name costs no more)."""
COMMAND_SUFFIX = "/command"
"""A buffer's command topic is its topic and this."""
ROBOT_STATUS = "robot:disabled"
"""The id of the warning status shown while the robot is disabled."""
ROBOT_DISABLED = "robot disabled: actuators stopped (runtime enable)"
"""Its message."""
READ_ONLY = (
    "read-only server: nothing is written (start runtime foxglove with --allow-write to drive the robot)"
)
"""The refusal of every write while writes are not allowed."""
MESSAGE_LIMIT = 300
"""The most characters of a refusal (error status, log line): it quotes what it refused, cut short."""
FOXGLOVE_WORKERS = 1
"""The Foxglove SDK's Tokio worker threads, unless ``TOKIO_WORKER_THREADS`` says otherwise."""
_RUNNER_TOPIC = topic_of(*RUNNER_KEY)
_PARAM_NAME = re.compile(r"(?P<topic>/runtime/[^/]+/0x[0-9a-f]+)/(?P<param>[^/]+)")


class WriteRefused(Exception):
    """A write from a client that is not done: the message says why.

    Values are checked by the library's one codec (:func:`runtime.values.check_writes`):
    a value out of bounds is refused with the bounds, never clamped.
    """


class LiveError(RuntimeBaseException):
    """The live view cannot serve: its address cannot be listened on, or watching the buffers failed."""


class LiveView:
    """The Foxglove server of the buffers of one namespace (see :mod:`runtime.live`).

    Use :meth:`start`, then :meth:`run` until a stop event, then :meth:`close`
    (or :func:`serve_foxglove`, which does all three).

    Args:
        catalog: The device types.
        host, port: Where to listen (port 0: any free port; see :attr:`port`).
        max_rate: The most messages per second per buffer.
        namespace: The buffers' namespace (default: the current one).
        select: Which ``(type, uid)`` to serve (default: all).
        allow_write: Whether clients may write (parameters, command topics);
            else every write is refused with :data:`READ_ONLY`.
        allow_origins: Browser origins accepted besides Foxglove's (:func:`origin_allowed`).
    """

    def __init__(
        self,
        catalog: dict[str, type[Buffer]],
        *,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        max_rate: float = DEFAULT_MAX_RATE,
        namespace: str | None = None,
        select: Callable[[str, int], bool] | None = None,
        allow_write: bool = False,
        allow_origins: Collection[str] = (),
    ) -> None:
        self.catalog = catalog
        self.allow_write = allow_write
        self.allow_origins = tuple(allow_origins)
        self.gate: OriginGate | None = None
        self.limiter = RefusalLimiter()
        """How many refusals each client is shown (and logged) a second."""
        self._bypassed = False
        self.host = host
        self.requested_port = port
        self.namespace = namespace or BufferStore.namespace()
        self.server: WebSocketServer | None = None
        self.context: foxglove.Context | None = None
        self.lock = threading.RLock()
        self.watcher = _Watcher(
            catalog,
            every=self._periodic,
            on_change=self._on_change,
            on_appear=self._on_appear,
            on_disappear=self._on_disappear,
            select=select,
            min_interval=1.0 / max_rate,
            namespace=self.namespace,
            wanted=self._wanted,
            on_stop=self._end_all_commands,
            batch=BATCH_WINDOW,
        )
        self.published = 0
        """Messages sent (to at least one subscriber)."""
        self.refused = 0
        """Writes refused."""
        self.written = 0
        """Values written."""
        self.ended = 0
        """Commands of clients that went away ended (set back to their safe values)."""
        self._topics: dict[str, Watched] = {}
        self._handles: dict[str, Buffer] = {}
        self._client_channels: dict[tuple[int, int], str] = {}
        self._param_subscriptions: set[str] = set()
        self._param_values: dict[str, Any] = {}
        """The last value of each parameter published, or set (write-only ones) from here."""
        self._statuses: dict[str, tuple[str, Any]] = {}
        """The statuses shown, by id: message and level."""
        self._write_lock = threading.Lock()
        """Held while writing and around every use of :attr:`_commands` (ending commands included)."""
        self._commands: ClientCommands[str, int] = ClientCommands()
        """By topic and parameter, the client whose write through this server is the command in force."""
        self._presence: dict[int, set[tuple[str, int]]] = {}
        """A client's subscriptions and advertised channels: while it has any, it is connected."""
        self._clients_seen: set[int] = set()
        self._log: foxglove.Channel | None = None
        """The channel of what student code prints (:data:`~runtime.mcap.LOG_TOPIC`), while the
        runner's buffer is served."""
        self._log_reader = StudentLog()
        """Its lines read so far (a new one for a first subscriber)."""
        self._log_subscriptions: set[tuple[int, int]] = set()
        """The subscriptions to it: client and channel ids."""
        self._log_fresh = False
        """Whether a first subscriber came since the runner's buffer was last read: it starts afresh."""
        self._robot_disabled: bool | None = None
        self._uncounted = False
        self._stopping = False

    # -- the server --

    @property
    def port(self) -> int:
        """The port listened on (the one chosen by the system for port 0)."""
        return self.gate.port if self.gate is not None else self.requested_port

    @property
    def url(self) -> str:
        """The WebSocket URL to give Foxglove."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ws://{host}:{self.port}"

    def start(self) -> None:
        """Listen for Foxglove.

        Raises:
            LiveError: The address cannot be listened on (in use, not of this machine).
        """
        import foxglove
        from foxglove.websocket import Capability

        self.context = foxglove.Context()
        # The SDK's Tokio runtime (made at the first server) with one worker unless asked otherwise: a
        # few clients need no more, and a second worker woken to steal each batch's sends costs a
        # wake-up per batch (TOKIO_WORKER_THREADS; the default is a worker per core).
        os.environ.setdefault("TOKIO_WORKER_THREADS", str(FOXGLOVE_WORKERS))
        capabilities = [Capability.Parameters]  # read (and, if allowed, set)
        if self.allow_write:
            capabilities.append(Capability.ClientPublish)
        try:
            self.server = foxglove.start_server(  # reached through the gate only (see OriginGate)
                name=f"runtime ({self.namespace})",
                host="127.0.0.1",
                port=0,
                capabilities=capabilities,
                server_listener=_Listener(self),
                supported_encodings=["json"],
                context=self.context,
            )
        except RuntimeError as exc:
            reason = str(exc).removeprefix("FoxgloveError: ")
            raise LiveError(f"cannot start the Foxglove server: {reason}") from None
        try:
            self.gate = OriginGate(self.host, self.requested_port, self.server.port, self.allow_origins)
        except (OSError, OverflowError) as exc:
            self.server.stop()
            self.server = None
            if not isinstance(exc, OSError):
                reason = str(exc)
            elif exc.errno is None or exc.errno < 0:  # a name that does not resolve
                reason = "no such address"
            else:
                reason = f"{os.strerror(exc.errno)} (os error {exc.errno})"
            hint = " (another 'runtime foxglove'? choose another --port)" if "in use" in reason else ""
            raise LiveError(f"cannot listen on {self.host}:{self.requested_port}: {reason}{hint}") from None

    def run(self, stop: threading.Event) -> None:
        """Serve the buffers until ``stop`` is set."""
        self.watcher.run(stop)
        if self.watcher.failed:
            raise LiveError("watching the buffers failed (see the log above)")

    def _end_all_commands(self) -> None:
        """End every client's commands (the server stops): before the watcher closes its handles."""
        self._stopping = True  # the clients it disconnects do not go away of themselves
        with self._write_lock:  # closing a handle ends them too, but only if it gets the lock at once
            self._report_ended(*self._commands.end(lambda _: True), "the server stops")

    def close(self) -> None:
        """Stop the server; end its clients' commands; close the channels and the buffers."""
        self._stopping = True  # the clients it disconnects do not go away of themselves
        if self.gate is not None:
            self.gate.close()
        if self.server is not None:
            self.server.stop()
            self.server = None
        self._end_all_commands()
        with self.lock:
            handles = dict(self._handles)
            self._handles.clear()
            for watched in self._topics.values():
                with contextlib.suppress(Exception):
                    watched.data.close()
            self._topics.clear()
            if self._log is not None:
                self._log.close()
                self._log = None
        for handle in handles.values():
            handle.close()

    # -- buffers to messages (the watcher's threads) --

    def _on_appear(self, watched: Watched) -> None:
        import foxglove

        from ..schema import buffer_schema

        metadata = {
            "type": watched.type_name,
            "uid": f"{watched.uid:#x}",
            "segment": watched.name,
            "command_topic": watched.topic + COMMAND_SUFFIX,
        }
        with self.lock:  # known before clients hear of it
            self._topics[watched.topic] = watched
        watched.data = foxglove.Channel(
            watched.topic,
            schema=buffer_schema(self.catalog[watched.type_name]),
            context=self.context,
            metadata=metadata,
        )
        logger.info("serving %s", watched.topic)
        if watched.key == RUNNER_KEY:
            log = foxglove.Channel(
                LOG_TOPIC, schema=log_schema(), context=self.context, metadata={"segment": watched.name}
            )
            with self.lock:
                self._log, self._log_reader = log, StudentLog()
            logger.info("serving %s: what student code prints", LOG_TOPIC)

    def _on_disappear(self, watched: Watched) -> None:
        with self._write_lock, self.lock:
            self._topics.pop(watched.topic, None)
            handle = self._handles.pop(watched.topic, None)
            self._commands.forget(watched.topic)
            log = None
            if watched.key == RUNNER_KEY:
                log, self._log = self._log, None
        if handle is not None:
            handle.close()
        if log is not None:
            log.close()
        watched.data.close()
        self._clear_status(f"invalid:{watched.topic}")
        logger.info("%s: gone", watched.topic)

    def _wanted(self, watched: Watched) -> bool:
        """Whether anyone looks at a buffer: a subscriber to its topic, or to one of its parameters
        (or, the runner's, to :data:`~runtime.mcap.LOG_TOPIC`)."""
        return watched.data is not None and (
            watched.data.has_sinks()
            or bool(self._subscribed_params(watched.topic))
            or self._log_wanted(watched)
        )

    def _log_wanted(self, watched: Watched) -> bool:
        """Whether this is the runner's buffer and someone subscribes to what student code prints."""
        log = self._log
        return watched.key == RUNNER_KEY and log is not None and log.has_sinks()

    def _on_change(self, watched: Watched) -> None:
        channel = watched.data
        if watched.valid != watched.was_valid:
            self._validity_status(watched, bool(watched.valid))
        subscribed = self._subscribed_params(watched.topic)
        sinks = channel.has_sinks()
        printing = self._log_wanted(watched)
        if watched.key == RUNNER_KEY and self._log_fresh:
            with self.lock:
                self._log_fresh, self._log_reader = False, StudentLog()
        if not sinks and not subscribed and not printing:
            return  # nobody looks
        state = (
            read_state(watched.buffer, watched.stamp)
            if watched.state is None  # never from the watcher
            else watched.state.since(watched.stamp)
        )
        watched.stamp = state.time
        if sinks:
            channel.log(encode_json(state.message()), log_time=int(state.time * 1e9))
            self.published += 1
        if subscribed and state.values is not None:
            self._publish_params(watched, state.values, subscribed)
        if printing:
            self._publish_log(state.values, state.time)

    def log_subscribed(self, client: int, channel: int, subscribed: bool) -> None:
        """A client subscribed to :data:`~runtime.mcap.LOG_TOPIC` (``subscribed`` False: it ended).

        A first subscriber (none before on that channel) starts afresh: with the
        lines the runner's buffer holds, not with those printed since the last
        subscriber left (nobody read them) and a warning that they were lost.
        """
        with self.lock:
            if not subscribed:
                self._log_subscriptions.discard((client, channel))
                return
            if not any(other == channel for _, other in self._log_subscriptions):
                self._log_fresh = True
            self._log_subscriptions.add((client, channel))

    def _publish_log(self, values: Mapping[str, Any] | None, stamp: float) -> None:
        """The lines student code printed since the runner's buffer was last read, on /log."""
        log = self._log
        if log is None:
            return
        for message in self._log_reader.messages(values, stamp):
            log.log(encode_json(message), log_time=max(0, int(stamp * 1e9)))
            self.published += 1

    def _validity_status(self, watched: Watched, valid: bool) -> None:
        from foxglove import StatusLevel

        status = f"invalid:{watched.topic}"
        if valid:
            self._clear_status(status)
        else:
            message = _not_connected(watched.type_name, watched.uid, watched.buffer.producer_pid)
            self._set_status(status, message, StatusLevel.Warning)

    # -- parameters --

    def _subscribed_params(self, topic: str) -> list[str]:
        if not self._param_subscriptions:  # the usual case: no lock taken
            return []
        with self.lock:
            return [name for name in self._param_subscriptions if name.startswith(topic + "/")]

    def _publish_params(self, watched: Watched, values: Mapping[str, Any], names: list[str]) -> None:
        from foxglove import Parameter as FoxgloveParameter

        changed = []
        for name in names:
            param = name.rpartition("/")[2]
            if param in values and self._param_values.get(name) != values[param]:
                self._param_values[name] = values[param]
                changed.append(FoxgloveParameter(name, value=_parameter_value(values[param])))
        if changed and self.server is not None:
            self.server.publish_parameter_values(changed)

    def parameter_names(self) -> list[str]:
        """Every writeable parameter of the buffers served, by its Foxglove name."""
        with self.lock:
            topics = list(self._topics.values())
        return [
            f"{watched.topic}/{param.name}"
            for watched in topics
            for param in self.catalog[watched.type_name].params.values()
            if param.writeable
        ]

    def get_parameters(self, names: list[str]) -> list[Any]:
        """The Foxglove parameters asked for (all when ``names`` is empty) that have a value."""
        from foxglove import Parameter as FoxgloveParameter

        result = []
        states: dict[str, Any] = {}
        for name in names or self.parameter_names():
            found = self._lookup_param(name)
            if found is None:
                continue
            watched, param = found
            value: Any = None
            if param.readable:
                if watched.topic not in states:
                    states[watched.topic] = read_state(watched.buffer).values
                value = (states[watched.topic] or {}).get(param.name)
            elif watched.buffer.valid:  # write-only: what was set from here, else the zero default
                value = self._param_values.get(name, _default(param))
            if value is not None:
                result.append(FoxgloveParameter(name, value=_parameter_value(value)))
        return result

    def set_parameters(self, parameters: list[Any], client: int | None = None) -> list[Any]:
        """Write what a client set; the values in effect afterwards (refusals as error statuses).

        The commands written are ``client``'s (see :meth:`write`).
        """
        from foxglove import Parameter as FoxgloveParameter

        refused = self._writes_refused()
        if refused is not None:
            names = [parameter.name for parameter in parameters]
            self._refuse("write:read-only", f"cannot set {quote(names)}: {refused}", client)
            return list(self.get_parameters(names))
        result = []
        for parameter in parameters:
            name = parameter.name
            found = self._lookup_param(name, writeable=False)
            value = parameter.get_value()
            status = f"write:{name}"
            if found is None:  # one status for all unknown names: a client cannot make them pile up
                hint = did_you_mean(name, self.parameter_names()) if len(name) <= NAME_HINT_LIMIT else ""
                self._refuse(
                    "write:unknown",
                    f"cannot set {quote(name)}: no such parameter of a buffer served here{hint}",
                    client,
                )
                continue
            watched, param = found
            if not param.writeable:
                self._refuse(status, f"cannot set {name}: {param.name} is read-only", client)
                continue
            try:
                self.write(watched.topic, {param.name: value}, client=client)
            except WriteRefused as exc:
                self._refuse(status, f"cannot set {name}: {exc}", client)
                current = self.get_parameters([name])
                result.extend(current)
                continue
            self._clear_status(status)
            if not param.readable:
                self._param_values[name] = value
            result.append(FoxgloveParameter(name, value=_parameter_value(jsonable(value))))
        return result

    def _lookup_param(self, name: str, *, writeable: bool = True) -> tuple[Watched, Parameter] | None:
        """The buffer and the parameter of a Foxglove parameter name (only writeable ones, unless asked)."""
        match = _PARAM_NAME.fullmatch(name)
        if match is None:
            return None
        with self.lock:
            watched = self._topics.get(match["topic"])
        if watched is None:
            return None
        param = self.catalog[watched.type_name].params.get(match["param"])
        if param is None or (writeable and not param.writeable):
            return None
        return watched, param

    # -- writing --

    def write(self, topic: str, values: Mapping[str, Any], *, client: int | None = None) -> None:
        """Write values to a buffer served here: all of them, or none (then raise).

        The commands among them (parameters with a safe value) are ``client``'s
        from now on: they end when it goes away (:meth:`client_gone`), unless
        someone else writes them first.

        Raises:
            WriteRefused: No such buffer, an unknown or read-only parameter, a
                value that does not fit (see :func:`runtime.values.check_value`), the device
                is not connected, or the robot is disabled (for a command).
        """
        with self.lock:
            watched = self._topics.get(topic)
            if watched is None:
                raise WriteRefused(f"no buffer {topic} is served here")
            handle = self._handles.get(topic)
            if handle is None:
                try:
                    handle = self.catalog[watched.type_name].attach(
                        BufferStore.segment_name(watched.type_name, watched.uid, self.namespace), create=False
                    )
                except DeviceBufferError as exc:
                    raise WriteRefused(f"{topic}: {exc.message}") from None
                self._handles[topic] = handle
        try:
            checked = check_writes(type(handle), values)
        except ValueRefused as exc:
            raise WriteRefused(exc.message) from None
        with self._write_lock:
            try:
                apply_writes(handle, checked)  # commands first: a disabled robot refuses before any write
            except DeviceBufferError as exc:
                if not handle.valid:
                    raise WriteRefused(f"{watched.type_name} {watched.uid:#x} is not connected") from None
                raise WriteRefused(f"{topic}: {exc.message}") from None
            if client is not None:
                self._commands.wrote(topic, handle, list(checked), client)
        self.written += len(checked)
        logger.info("%s: wrote %s", topic, ", ".join(f"{k}={v!r}" for k, v in values.items()))

    def command(self, topic: str, data: bytes, client: int | None = None) -> None:
        """A client's message on a command topic: ``{param: value, ...}`` to write (``client``'s commands)."""
        status = f"command:{topic}"
        try:
            refused = self._writes_refused()
            if refused is not None:
                raise WriteRefused(refused)
            try:
                values = load_payload(data)  # at most MAX_PAYLOAD bytes, MAX_DEPTH deep
            except ValueError as exc:
                raise WriteRefused(f"a command is a JSON object {{param: value, ...}}; {exc}") from None
            if not isinstance(values, dict) or not values:
                raise WriteRefused("a command is a JSON object {param: value, ...}")
            self.write(topic.removesuffix(COMMAND_SUFFIX), values, client=client)
        except WriteRefused as exc:
            self._refuse(status, f"{topic}: {exc}", client)
        else:
            self._clear_status(status)

    # -- statuses --

    def _refuse(self, status: str, message: str, client: int | None = None) -> None:
        """Count a refusal; show it (an error status) and log it, at most
        :data:`~runtime.remote.REFUSAL_RATE` a second per client (the rest are only counted)."""
        from foxglove import StatusLevel

        self.refused += 1
        if not self.limiter.allow(client):
            return
        if len(message) > MESSAGE_LIMIT:
            message = f"{message[: MESSAGE_LIMIT - 3]}..."
        logger.warning("%s", message)
        self._set_status(status, message, StatusLevel.Error)

    def _set_status(self, status: str, message: str, level: Any) -> None:
        server = self.server
        if server is None:
            return
        with self.lock:
            self._statuses[status] = message, level
        try:
            server.publish_status(message, level, status)
        except RuntimeError as exc:  # the SDK busy with a client being dropped: shown to the next
            logger.debug("cannot show status %s now: %s", status, exc)

    def _clear_status(self, status: str) -> None:
        server = self.server
        with self.lock:
            if self._statuses.pop(status, None) is None:
                return
        if server is not None:
            try:
                server.remove_status([status])
            except RuntimeError as exc:  # as in _set_status
                logger.debug("cannot remove status %s now: %s", status, exc)

    def hello(self, client: int) -> None:
        """A client heard from: the first time, the warnings that stand (the SDK keeps no status for it)."""
        from foxglove import StatusLevel

        with self.lock:
            if client in self._clients_seen:
                return
            self._clients_seen.add(client)
            standing = [(k, v) for k, v in self._statuses.items() if v[1] == StatusLevel.Warning]
        server = self.server
        if server is not None:
            for status, (message, level) in standing:
                server.publish_status(message, level, status)

    # -- clients and their commands --

    def client_present(self, client: int, what: tuple[str, int]) -> None:
        """A client subscribed to a channel (``("channel", id)``), or advertised one (``("advertised", id)``).

        While it has any, it is followed: it is known to be connected.
        """
        with self.lock:
            self._presence.setdefault(client, set()).add(what)

    def client_absent(self, client: int, what: tuple[str, int], *, by_client: bool = True) -> None:
        """A subscription or an advertised channel of a client ended.

        ``by_client``: by the client or its leaving (the SDK withdraws them all
        when it disconnects), not because the channel went away. A client left
        with none went away (:meth:`client_gone`), or else is not followed any more.
        """
        with self.lock:
            presence = self._presence.get(client)
            if presence is None or what not in presence:
                return
            presence.discard(what)
            if presence:
                return
            del self._presence[client]
        if by_client:
            self.client_gone(client)
        else:
            self._end_unfollowed()

    def client_gone(self, client: int) -> None:
        """A client went away: its commands end (those whose last write through here was its)."""
        with self._write_lock:
            with self.lock:
                self._presence.pop(client, None)
                self._clients_seen.discard(client)
            ended, failed = self._commands.end(lambda owner: owner == client)
        self._report_ended(
            ended, failed, "the server stops" if self._stopping else f"client {client} went away"
        )

    def _report_ended(
        self, ended: Mapping[str, set[str]], failed: Mapping[str, DeviceBufferError], why: str
    ) -> None:
        """Log the commands ended (another's write since stood), and those that could not be (yet)."""
        for topic, exc in failed.items():
            logger.error("%s: cannot end its commands on %s: %s", why, topic, exc.message)
        for topic, names in ended.items():
            self.ended += len(names)
            logger.warning("%s: ended its commands: %s %s", why, topic, " ".join(sorted(names)))

    def _end_unfollowed(self) -> None:
        """End the commands of the clients not followed, once no connection is left for them.

        A client with no subscription and no advertised channel may be there
        or gone; all such clients are gone when the connections to the server
        are no more than the clients followed (each of which has one).
        """
        with self._write_lock, self.lock:
            unfollowed = {owner for owner in self._commands.clients() if owner not in self._presence}
            followed = len(self._presence)
        if not unfollowed:
            return
        connections = count_connections(self.server.port) if self.server is not None else None
        if connections is None:
            if not self._uncounted:
                self._uncounted = True
                logger.warning(
                    "cannot count the connections (no /proc): the commands of clients that neither "
                    "subscribe nor advertise end only when the server stops"
                )
            return
        if connections <= followed:
            for client in sorted(unfollowed):
                self.client_gone(client)

    # -- the robot's state, and the periodic checks --

    def _periodic(self) -> None:
        """After each look for buffers (twice a second): the robot's state; the clients not followed."""
        try:
            self._robot_status()
            self._close_bypasses()
            self._end_unfollowed()
        except Exception:  # the watcher goes on
            logger.exception("the periodic checks failed")

    def _close_bypasses(self) -> bool:
        """Close the connections that reached the SDK's server without the gate; whether all is well.

        A program on this machine may find the inner port (127.0.0.1) and skip
        the origin check: its connection is shut (twice a second, and before
        each write); writes are refused while one is there, or while that
        cannot be known (no ``/proc``).
        """
        gate = self.gate
        if gate is None:
            return False
        foreign = gate.foreign()
        if foreign is None:
            if not self._bypassed:
                self._bypassed = True
                logger.warning("cannot list the connections (no /proc): writes are refused")
            return False
        if foreign:
            shut = shut_sockets(foreign)
            logger.warning(
                "closed %d connection(s) to the inner port %d that bypassed the origin check",
                shut,
                gate.inner_port,
            )
            return False
        return True

    def _writes_refused(self) -> str | None:
        """Why no client may write now, or None."""
        if not self.allow_write:
            return READ_ONLY
        if not self._close_bypasses():
            return "a connection bypassed the origin check (closed): nothing is written meanwhile"
        return None

    def _robot_status(self) -> None:
        """A warning status while the robot is disabled."""
        from foxglove import StatusLevel

        try:
            disabled = not robot_enabled(self.namespace)
        except RuntimeBaseException as exc:  # a foreign file where the state belongs: say nothing
            logger.debug("cannot read the robot's state: %s", exc)
            return
        if disabled == self._robot_disabled:
            return
        was, self._robot_disabled = self._robot_disabled, disabled
        if disabled:
            logger.warning("the robot is disabled: writes of actuators are refused")
            self._set_status(ROBOT_STATUS, ROBOT_DISABLED, StatusLevel.Warning)
        else:
            if was is not None:
                logger.warning("the robot is enabled again")
            self._clear_status(ROBOT_STATUS)


def _not_connected(type_name: str, uid: int, producer_pid: int | None) -> str:
    """The status of an invalid buffer, in the words of its user.

    A bridge stops serving the buffer of a device that is unplugged: nobody
    serving it is the usual "not connected", not a fault to name.

    >>> _not_connected("limit-switch", 0x10, None)
    'limit-switch 0x10 is not connected (unplugged, or no bridge serves it)'
    >>> _not_connected("limit-switch", 0x10, 42)
    'limit-switch 0x10 is not connected (its bridge, pid 42, has no data from it)'
    """
    if producer_pid is None:
        return f"{type_name} {uid:#x} is not connected (unplugged, or no bridge serves it)"
    return f"{type_name} {uid:#x} is not connected (its bridge, pid {producer_pid}, has no data from it)"


def _source_topic(topic: str) -> str:
    """The topic of the buffer whose state a topic's messages come from (the runner's for /log)."""
    return _RUNNER_TOPIC if topic == LOG_TOPIC else topic


def _default(param: Parameter) -> Any:
    with contextlib.suppress(DeviceBufferError):
        return jsonable(param.default)
    return None


def _parameter_value(value: Any) -> Any:
    """A JSON value as the Foxglove SDK takes a parameter value (floats stay floats)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class _Listener(ServerListener):
    """The Foxglove server's callbacks (its threads) into the :class:`LiveView`. Never raises."""

    def __init__(self, view: LiveView) -> None:
        self.view = view

    def on_subscribe(self, client: Client, channel: ChannelView) -> None:
        self.view.hello(client.id)
        self.view.client_present(client.id, ("channel", channel.id))
        # Its current state, even if it does not change; a moment later: the subscription is not in
        # effect yet while this runs. For /log, the runner's buffer: the lines it holds.
        if channel.topic == LOG_TOPIC:
            self.view.log_subscribed(client.id, channel.id, True)
        self.view.watcher.refresh(_source_topic(channel.topic), SUBSCRIBE_DELAY)

    def on_unsubscribe(self, client: Client, channel: ChannelView) -> None:
        # Also when the client disconnects (for each subscription), or the channel goes away (its
        # buffer did: not the client's doing).
        with self.view.lock:
            served = channel.topic in self.view._topics
            if channel.topic == LOG_TOPIC:
                served = self.view._log is not None
        if channel.topic == LOG_TOPIC:
            self.view.log_subscribed(client.id, channel.id, False)
        try:
            self.view.client_absent(client.id, ("channel", channel.id), by_client=served)
        except Exception:
            logger.exception("client %d unsubscribing failed", client.id)

    def on_client_advertise(self, client: Client, channel: ClientChannel) -> None:
        self.view.hello(client.id)
        self.view.client_present(client.id, ("advertised", channel.id))
        if not channel.topic.endswith(COMMAND_SUFFIX) or channel.encoding != "json":
            self.view._refuse(
                "advertise",
                f"{quote(channel.topic)} ({quote(channel.encoding)}): clients publish JSON on "
                f"/runtime/<type>/<uid>{COMMAND_SUFFIX} only",
                client.id,
            )
            return
        with self.view.lock:
            self.view._client_channels[client.id, channel.id] = channel.topic

    def on_client_unadvertise(self, client: Client, client_channel_id: int) -> None:
        # Also when the client disconnects (for each channel it still advertises).
        with self.view.lock:
            self.view._client_channels.pop((client.id, client_channel_id), None)
        try:
            self.view.client_absent(client.id, ("advertised", client_channel_id))
        except Exception:
            logger.exception("client %d unadvertising failed", client.id)

    def on_message_data(self, client: Client, client_channel_id: int, data: bytes) -> None:
        with self.view.lock:
            topic = self.view._client_channels.get((client.id, client_channel_id))
        if topic is None:
            return
        try:
            self.view.command(topic, data, client.id)
        except Exception:  # a callback must not raise into the server
            logger.exception("command on %s failed", topic)

    def on_get_parameters(
        self, client: Client, param_names: list[str], request_id: str | None = None
    ) -> list[Any]:
        try:
            self.view.hello(client.id)
            return self.view.get_parameters(param_names)
        except Exception:
            logger.exception("getting parameters failed")
            return []

    def on_set_parameters(
        self, client: Client, parameters: list[Any], request_id: str | None = None
    ) -> list[Any]:
        try:
            self.view.hello(client.id)
            return self.view.set_parameters(parameters, client.id)
        except Exception:
            logger.exception("setting parameters failed")
            return []

    def on_parameters_subscribe(self, param_names: list[str]) -> None:
        with self.view.lock:
            self.view._param_subscriptions.update(param_names)
        for name in param_names:
            self.view._param_values.pop(name, None)  # publish it at the next change
            self.view.watcher.refresh(name.rpartition("/")[0])

    def on_parameters_unsubscribe(self, param_names: list[str]) -> None:
        with self.view.lock:
            self.view._param_subscriptions.difference_update(param_names)


def serve_foxglove(
    store: BufferStore | Mapping[str, type[Buffer]],
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    max_rate: float = DEFAULT_MAX_RATE,
    stop_event: threading.Event | None = None,
    *,
    namespace: str | None = None,
    on_ready: Callable[[LiveView], None] | None = None,
    allow_write: bool = False,
    allow_origins: Collection[str] = (),
) -> None:
    """Serve the buffers of a namespace to Foxglove until ``stop_event`` is set (from another thread).

    For ``runtime demo --foxglove`` and other programs: run it in a thread.

    Args:
        store: The device types: a :class:`~runtime.store.BufferStore` (its
            catalog) or a catalog mapping.
        host, port: Where to listen (port 0: a free port, see ``on_ready``).
        max_rate: The most messages per second per buffer.
        stop_event: Set it to stop (None: serve until the process ends).
        namespace: The buffers' namespace (default: the current one, at the call).
        on_ready: Called with the :class:`LiveView` once it listens (``.url``, ``.port``).
        allow_write: Whether clients may write (default: read-only).
        allow_origins: Browser origins accepted besides Foxglove's.

    Raises:
        LiveError: The address cannot be listened on (the message says why).
    """
    catalog = dict(store.catalog if isinstance(store, BufferStore) else store)
    view = LiveView(
        catalog,
        host=host,
        port=port,
        max_rate=max_rate,
        namespace=namespace,
        allow_write=allow_write,
        allow_origins=allow_origins,
    )
    view.start()
    try:
        if on_ready is not None:
            on_ready(view)
        view.run(stop_event or threading.Event())
    finally:
        view.close()


class _Watcher(BufferWatcher):
    """The buffer watcher, and ``every()`` after each look for buffers (twice a second)."""

    def __init__(self, *args: Any, every: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.every = every

    def discover(self) -> None:
        super().discover()
        self.every()
