"""The robot's buffers from another machine, over Zenoh: a client of ``runtime zenoh``.

On the robot, ``runtime zenoh --listen tcp/0.0.0.0:7447`` serves the buffers of
a namespace on a `Zenoh <https://zenoh.io>`_ session. This module is the client
for a laptop, a dashboard or a test bench: :func:`connect` to the robot, list
its devices with :meth:`Robot.discover`, take a :class:`RemoteDevice` with
:meth:`Robot.device` and use it like the local student handle
(:class:`runtime.device.Device`): ``get``, ``snapshot``, ``write``, ``valid``,
``wait_update`` and ``wait_update_async``.

Any Zenoh client, in any language, can do the same with these key expressions
(``<namespace>`` is the robot's name on the network, by default its buffer
namespace, ``rt``):

* ``runtime/<namespace>/<type>/<uid>``: one JSON object per change of the
  device's values, ``{"type": "servo-motor", "uid": "0x7...", "valid": true,
  "values": {"servo0": 0.5, ...}, "last_update": 1700000000.5, "time":
  1700000000.51, "seq": 42}``. The UID is hex with ``0x`` (lower case, no
  padding), as ``runtime buffers`` prints it; ``values`` is null while the
  device is not connected; ``seq`` counts the publications of one server.
  A ``get`` on ``runtime/<namespace>/**`` (or on one device's key) answers the
  same objects, fresh, one per matching buffer.
* A liveliness token at the same key while the device is valid, and one at
  ``runtime/<namespace>`` while ``runtime zenoh`` runs: a liveliness
  subscriber sees devices come and go, and all of them go when the robot's
  process or machine dies.
* ``runtime/<namespace>/<type>/<uid>/write``: put a JSON object
  ``{"param": value, ...}`` to write; the robot applies all of it or nothing.
  A refused write (unknown or read-only parameter, wrong type, device not
  connected, robot disabled, a command without a commander: below) changes
  nothing and is answered with a JSON object on
  ``runtime/<namespace>/<type>/<uid>/error``: ``error`` (the reason),
  ``kind``, ``param``, ``value``, ``write`` (what was asked) and ``time``.
* Commands: a write of a parameter that has a safe value in the catalog (an
  actuator: a motor's ``duty_cycle``, a servo's ``servo0``) is a *command*,
  and belongs to the client that sent it, as a local write belongs to its
  process (:mod:`runtime.commands`). A client makes itself known with a
  liveliness token at ``runtime/<namespace>/@client/<id>`` (``<id>``: one key
  chunk of its choice, unique on the network, at most 128 characters, without
  ``/ * $ ? #`` nor a leading ``@``) and sends ``<id>`` (UTF-8) as the *attachment* of each put
  on ``.../write``. When its token goes (the client closes, its process dies,
  or its network is lost: then within the Zenoh lease, 10 s by default,
  ``transport/link/tx/lease`` in the client's configuration), the robot puts
  back the safe value of every parameter whose last command through
  ``runtime zenoh`` was this client's (one commanded since by another client,
  or by a program on the robot, stays theirs). A command without a live
  token (no attachment, or an ``<id>`` whose token the robot has not seen
  within :data:`CLIENT_GRACE` seconds) is refused: safe by default. Writes of
  other parameters need neither. :class:`Robot` does all of this: its
  :attr:`Robot.client_id` is its session's Zenoh ID and a random suffix, and
  its token lives until :meth:`Robot.close`.
* ``runtime/<namespace>/@robot``: the robot's state, ``{"enabled": true,
  "time": 1700000000.5, "server": "<zid>"}``, published when it changes and
  answered to a ``get``; a DELETE when ``runtime zenoh`` stops. While the
  robot is disabled (``runtime disable``, :meth:`runtime.store.BufferStore.disable`)
  every command is refused (``"the robot is disabled..."``); nothing moves
  until it is enabled and a new command arrives. :attr:`Robot.enabled` reads it.

* ``runtime/<namespace>/@mode``: the field's mode, the driver station's
  switch. A put of ``{"mode": "teleop"}`` (``"idle"``, ``"auto"``,
  ``"teleop"``; a bare JSON string too) sets the ``mode`` of the field buffer,
  which ``runtime run`` follows. Idle is accepted from anyone, at once; any
  other mode only from a client with a live token (as a command), which
  becomes the *driver*: when its token goes, the robot goes idle. A ``get``
  answers ``{"mode": "teleop", "running": "teleop", "driver": "<id>", "time":
  ..., "server": ...}`` (``running``: the mode the runner's student code runs
  in, null without a runner). The field buffer itself is served like any
  buffer, at ``runtime/<namespace>/field/0x0``: its publications say every
  change of the mode. :meth:`Robot.set_mode` and :attr:`Robot.mode`.
* ``runtime/<namespace>/@input/gamepad`` and ``.../@input/keyboard``: a put of
  ``{name: value, ...}`` from a client with a live token sets the driver
  station's inputs, all or none: a gamepad's ``button_a`` ... (true or false)
  and ``joystick_left_x`` ... (a number from -1 to 1: out of bounds is refused,
  not clamped), a keyboard's keys (``"a"``, ``"0"``, ``","``, ``"left_arrow"``
  or the parameter names ``"digit_0"``, ``"comma"``...) as :func:`check_input`
  checks them. ``runtime zenoh`` serves the input's buffer (``gamepad`` 0,
  ``keyboard`` 0) for that client; when its token goes, every value returns
  to neutral and the buffer turns invalid. :meth:`Robot.send_gamepad` and
  :meth:`Robot.send_keyboard`.
* ``runtime/<namespace>/@mode/error`` and ``.../@input/<kind>/error``: why a
  mode or an input was refused, a JSON object: ``error``, ``kind``,
  ``param``, ``mode``, ``request`` (what was asked), ``client`` (its
  attachment) and ``time``. :meth:`Robot.refusals`.
* The student code's print lines: ``runtime run`` serves a ``runner`` buffer,
  published at ``runtime/<namespace>/runner/0x0`` like any buffer: ``lines``
  counts every line printed, ``log`` holds the newest ones.
  :meth:`Robot.log_lines` gives those not seen yet.

The ``@client``, ``@robot``, ``@mode`` and ``@input`` chunks are verbatim
chunks: the wildcards of ``runtime/<namespace>/**`` or
``runtime/<namespace>/*/*`` never match them, so a subscriber to the devices
sees none of them.

Example (it needs a robot, so it is not run as a doctest)::

    from runtime import remote

    with remote.connect("tcp/192.168.0.42:7447") as robot:
        for info in robot.discover():
            print(info.type_name, hex(info.uid), info.valid)
        servo = robot.device(0x7_09_0000000000000042)
        if servo.wait_update(timeout=2.0):
            print(servo.get("servo0"), servo.snapshot())
        servo.write("servo0", 0.5)  # a command: 0.0 again when this client goes

        robot.set_mode("teleop")  # this client drives: the robot goes idle when it goes
        robot.send_keyboard({"w": True})  # released again when this client goes
        print(robot.mode, robot.log_lines())

The client keeps the latest values of every device it has heard of, so
``get`` and ``snapshot`` cost no network round trip; ``wait_update`` sleeps
until the next publication. A client in Zenoh's ``client`` mode reconnects by
itself when the robot comes back.

The package, by job: :mod:`runtime.remote.keys` (the key expressions and
their chunks, client IDs, namespaces), :mod:`runtime.remote.payload` (what a
peer puts, parsed within limits; inputs checked; refusals rate-limited),
:mod:`runtime.remote.session` (Zenoh configurations and sessions,
:class:`RemoteError`), :mod:`runtime.remote.client` (:func:`connect`,
:class:`Robot`, :class:`RemoteDevice`) and :mod:`runtime.remote.server`
(:class:`~runtime.remote.server.ZenohServer`, what ``runtime zenoh`` runs;
not imported by ``import runtime.remote``). This module re-exports the names
of all but the server.
"""

from __future__ import annotations

from .client import (
    DEFAULT_TIMEOUT,
    DEVICES_KEEP,
    ERRORS_KEEP,
    LOG_KEEP,
    REORDER_TIME,
    REORDER_WINDOW,
    SEQ_LIMIT,
    RemoteDevice,
    RemoteInfo,
    Robot,
    connect,
)
from .keys import (
    CLIENT_CHUNK,
    CLIENT_GRACE,
    INPUT_CHUNK,
    INPUT_KINDS,
    KEY_ROOT,
    MODE_CHUNK,
    STATE_CHUNK,
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
from .payload import (
    MAX_DEPTH,
    MAX_PAYLOAD,
    QUOTE_LIMIT,
    REFUSAL_BURST,
    REFUSAL_RATE,
    REFUSAL_SENDERS,
    RefusalLimiter,
    check_input,
    load_payload,
    quote,
)
from .session import RemoteError, access_control_enabled, exposed_endpoints, make_config, open_session

__all__ = [
    # the names runtime.remote has always exported
    "CLIENT_GRACE",
    "DEFAULT_TIMEOUT",
    "INPUT_KINDS",
    "KEY_ROOT",
    "RemoteDevice",
    "RemoteError",
    "RemoteInfo",
    "Robot",
    "check_client_id",
    "check_input",
    "check_namespace",
    "client_key",
    "connect",
    "device_key",
    "format_uid",
    "input_key",
    "make_config",
    "mode_key",
    "parse_device_key",
    "state_key",
    # importable from here before, now exported too
    "CLIENT_CHUNK",
    "DEVICES_KEEP",
    "ERRORS_KEEP",
    "INPUT_CHUNK",
    "LOG_KEEP",
    "MAX_DEPTH",
    "MAX_PAYLOAD",
    "MODE_CHUNK",
    "QUOTE_LIMIT",
    "REFUSAL_BURST",
    "REFUSAL_RATE",
    "REFUSAL_SENDERS",
    "REORDER_TIME",
    "REORDER_WINDOW",
    "RefusalLimiter",
    "SEQ_LIMIT",
    "STATE_CHUNK",
    "load_payload",
    "quote",
    # new
    "access_control_enabled",
    "exposed_endpoints",
    "open_session",
]
