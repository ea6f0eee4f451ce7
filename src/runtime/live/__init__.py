"""The live Foxglove view of the buffers: what ``runtime foxglove`` serves.

A Foxglove WebSocket server (the ``foxglove-sdk`` package) serves the buffers
of the namespace:

* **a topic per buffer**, ``/runtime/<type>/<uid hex>``, of JSON messages
  ``{"valid": bool, "values": {...}}`` with the JSON Schema of the device type
  (:func:`runtime.schema.buffer_schema`: names, types, bounds). A message goes
  out on every change, at most ``--max-rate`` per second per buffer (a change
  held back by the limit goes out at the end of the interval: the last state
  is always shown); the log time is the device's (``last_update``). Topics
  appear and disappear with the buffers; a buffer that turns invalid (device
  disconnected, bridge stopped) is a message with ``"valid": false`` and a
  warning in Foxglove's problems list until it is valid again.
* **writeable parameters as Foxglove parameters**, named
  ``/runtime/<type>/<uid hex>/<param>``: the Parameters panel reads them
  (the value the device reports; for write-only ones, the last value set from
  here) and sets them with ``Buffer.write``. A value that the buffer would
  refuse or clamp (unknown or read-only parameter, wrong type, out of bounds,
  device not connected) is refused: nothing is written, and an error status
  says why.
* **a command topic per buffer**: a client that advertises
  ``/runtime/<type>/<uid hex>/command`` (JSON) and publishes ``{param: value,
  ...}`` on it writes those values, all or none, checked the same way.
* **a write belongs to its client**: an actuator's value (a parameter with a
  safe value: a command, :mod:`runtime.commands`) set by a client, either
  way, is that client's command. When the client goes away (tab closed,
  connection dropped), its commands end as a dead process's do: they go back
  to their safe values, unless another client or process wrote since (then
  the command is theirs). The server is the commander in shared memory for
  all its clients; when it stops, its clients' commands end too.
* **what student code prints**: while ``runtime run`` serves its buffer
  (type ``runner``), topic ``/log`` has one ``foxglove.Log`` message per line
  printed (JSON; Foxglove's Log panel shows them; see
  :class:`runtime.mcap.StudentLog`). The lines are read only while
  someone subscribes: the first subscriber (none before it) gets first the
  lines the buffer still holds, then each line as it is printed (as do
  those who join it). Lines printed faster than read
  (more than the buffer holds, within ``1/--max-rate`` s) are lost: one
  warning message says how many.
* **the robot's state**: while the robot is disabled (``runtime disable``), a
  warning status says so (and writes of actuators are refused, with an error
  status saying why).

Who may connect, and who may write (a web page must not drive a motor):

* **read-only unless asked**: ``--allow-write`` (``allow_write=True``) lets
  clients write; without it every parameter set and command is refused with
  :data:`READ_ONLY`, and the server does not offer client publishing. A
  viewer is the common use; a write moves an actuator.
* **browsers from Foxglove only**: the SDK's server cannot see a
  connection's HTTP headers, so it listens on a free port of 127.0.0.1 behind
  a gate on the address asked for (``--host``/``--port``), which reads each
  WebSocket handshake and refuses (``403``) an ``Origin`` other than the
  Foxglove app's (:data:`FOXGLOVE_ORIGINS`; the desktop app's ``file://`` or
  ``foxglove://``), those of ``--allow-origin``, or none (programs). Binding to
  127.0.0.1 alone would not do: a page open in a browser of this machine
  reaches it. A local program that finds the inner port and connects around
  the gate is shut out (twice a second, and before any write; writes are
  refused while it is there).
* **bounded refusals**: a command is at most
  :data:`~runtime.remote.MAX_PAYLOAD` bytes of JSON nested at most
  :data:`~runtime.remote.MAX_DEPTH` deep (refused unparsed otherwise); a
  refusal quotes at most :data:`MESSAGE_LIMIT` characters, and each client
  is shown (and logged) at most :data:`~runtime.remote.REFUSAL_RATE` a second.
* ``--allow-write`` with ``--host`` other than a loopback address logs a
  warning at start: anyone reaching the port drives the robot.

How a client's leaving is known: the SDK tells the server nothing about a
connection as such, only about a client's subscriptions and advertised
channels, and it withdraws those of a client that disconnects. So a client
with any is followed: when its last one goes, it went away. A client with
none (the Parameters panel alone) cannot be followed by itself: its commands
end as soon as no connection to the server is left unaccounted for (each
followed client has one; the connections are counted in ``/proc``, at most
:data:`~runtime.watch.DISCOVER_INTERVAL` later).

Changes are watched by :class:`runtime.watch.BufferWatcher` (one change
feed, :class:`runtime._core.ChangeFeed`: the watcher's thread, asleep in the
compiled core on every buffer, wakes once per batch of changes, their values
already converted; ``/dev/shm`` listed twice a second for buffers that come
and go); messages are encoded by :func:`runtime.values.encode_json`
(orjson). Nothing is read for a topic nobody subscribes to.

:func:`serve_foxglove` runs it all from Python (``runtime demo --foxglove``);
:class:`LiveView` is the server itself (:mod:`runtime.live.server`), behind the
origin gate (:mod:`runtime.live.gate`). The command is :mod:`runtime.tools.foxglove`.
"""

from .gate import CONNECTIONS_LIMIT, FOXGLOVE_ORIGINS, OriginGate, origin_allowed
from .server import (
    DEFAULT_HOST,
    DEFAULT_MAX_RATE,
    DEFAULT_PORT,
    FOXGLOVE_WORKERS,
    MAX_RATE,
    MESSAGE_LIMIT,
    READ_ONLY,
    ROBOT_DISABLED,
    ROBOT_STATUS,
    LiveError,
    LiveView,
    WriteRefused,
    serve_foxglove,
)

__all__ = [
    "CONNECTIONS_LIMIT",
    "DEFAULT_HOST",
    "DEFAULT_MAX_RATE",
    "DEFAULT_PORT",
    "FOXGLOVE_ORIGINS",
    "FOXGLOVE_WORKERS",
    "MAX_RATE",
    "MESSAGE_LIMIT",
    "READ_ONLY",
    "ROBOT_DISABLED",
    "ROBOT_STATUS",
    "LiveError",
    "LiveView",
    "OriginGate",
    "WriteRefused",
    "origin_allowed",
    "serve_foxglove",
]
