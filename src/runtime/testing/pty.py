"""A Smart Device your test plays in-process, on a pseudo-terminal the code under test opens as a serial port.

:class:`FakeSerialPort` is the plumbing: a pseudo-terminal whose slave end
(:attr:`~FakeSerialPort.path`) the code under test opens like ``/dev/ttyACM0``,
while the test reads and writes the master end, frame by frame.
:class:`FakeDevice` adds the device's side of the protocol: send messages,
wait for the host's, introduce itself with a UID, accept a subscription, or
hand the port to a :class:`~runtime.testing.DeviceModel` for a while
(:meth:`FakeDevice.serve`).

Everything happens in the calling thread, when the test asks: nothing runs in
the background, so what the host sees is exactly what the test sent, in order.

>>> import serial                                   # the host side, as the bridge opens a port
>>> from runtime.messaging import Message, MessageType
>>> with FakeDevice(uid=0x07_01_0000000000000042) as device:
...     host = serial.Serial(device.path, 115200, timeout=1)
...     _ = host.write(Message.make_ping().encode() + b"\\0")
...     device.introduce()                          # wait for the PING, answer with a SUB_RES
...     Message.decode(host.read_until(b"\\0")[:-1]).read_sub_res()
...     host.close()
(0, 0, (7, 1, 66))
"""

from __future__ import annotations

import contextlib
import os
import select
import time
import tty
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Self

from ..buffer import DeviceBuffer, DeviceUID
from ..messaging import DELIM, FrameSplitter, Message, MessageError, MessageType

if TYPE_CHECKING:
    from .device import DeviceModel

__all__ = ["FakeDevice", "FakeSerialPort", "dev_data", "sub_res"]

WRITE_TIMEOUT = 5.0
"""Seconds :meth:`FakeSerialPort.write` waits for a host that does not read its port."""


def sub_res(uid: int, params: int = 0, interval_ms: int = 0) -> Message:
    """The SUB_RES a device with this UID sends: ``params`` subscribed every ``interval_ms`` ms.

    With the defaults it is the answer to a PING (nothing subscribed yet).

    >>> sub_res(0x07_01_0000000000000042, 0b11, 40).read_sub_res()
    (3, 40, (7, 1, 66))
    """
    parts = DeviceUID.from_int(uid)
    return Message.make_sub_res(params, interval_ms, parts.device_id, parts.year, parts.random)


def dev_data(buffer_type: type[DeviceBuffer], **values: Any) -> Message:
    """The DEV_DATA a device of this type sends to report ``values`` (checked and clamped as by ``set``).

    >>> from runtime import catalog
    >>> servo = catalog.load()["servo-motor"]
    >>> message = dev_data(servo, servo0=0.5)
    >>> with servo.open("host", shared=False) as host:  # what a host makes of it
    ...     host.update(message)
    ...     host.get_update()
    {'servo0': 0.5}

    Raises:
        ValueError: No values given.
    """
    if not values:
        raise ValueError("dev_data() needs at least one value")
    with buffer_type.open("runtime-testing-dev-data", shared=False) as local:
        for name, value in values.items():
            local.set(name, value)
        (message,) = local.emit_dev_data()
    return message


class FakeSerialPort:
    """A pseudo-terminal: the code under test opens :attr:`path`; the test reads and writes frames.

    Both ends stay open until :meth:`close` (also at the end of a ``with``
    block), so the port survives the code under test closing and reopening
    it. Frames are split at the 0x00 delimiter and decoded into :attr:`inbox`
    by :meth:`receive` and :meth:`collect`.

    Args:
        strict: Whether a frame from the host that does not decode raises
            :class:`~runtime.messaging.MessageError` (the host under test is
            broken). Either way it is kept in :attr:`bad_frames`.

    >>> with FakeSerialPort() as port:
    ...     port.path.startswith("/dev/pts/")
    True
    """

    def __init__(self, *, strict: bool = True) -> None:
        self.master, self.slave = os.openpty()
        try:
            tty.setraw(self.slave)  # no echo, no line discipline: bytes pass as they are
            os.set_blocking(self.master, False)
            self.path = os.ttyname(self.slave)
            """The serial port to give the code under test (``/dev/pts/N``)."""
        except BaseException:
            os.close(self.master)
            os.close(self.slave)
            raise
        self.strict = strict
        self.splitter = FrameSplitter()
        self.inbox: list[Message] = []
        """Messages received and not yet taken (by :meth:`collect` or :meth:`FakeDevice.expect`)."""
        self.bad_frames: list[bytes] = []
        """Frames from the host that did not decode (COBS-encoded, without delimiter)."""

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self.master < 0

    def close(self) -> None:
        """Close both ends: the code under test then gets a hang-up or read error. Idempotent."""
        for fd in (self.master, self.slave):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.master = self.slave = -1

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def write(self, data: bytes, timeout: float = WRITE_TIMEOUT) -> None:
        """Write raw bytes for the host to read, all of them.

        Raises:
            TimeoutError: The host did not read its port for ``timeout`` seconds (the pty is full).
        """
        view = memoryview(data)
        deadline = time.monotonic() + timeout
        while view:
            try:
                view = view[os.write(self.master, view) :]
            except BlockingIOError:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"the host did not read {self.path} for {timeout:g} s") from None
                select.select([], [self.master], [], remaining)

    def receive(self, timeout: float = 0.0) -> int:
        """Wait up to ``timeout`` seconds for bytes from the host; decode what came into :attr:`inbox`.

        Returns the number of messages added. A partial frame waits for the
        rest of it in :attr:`splitter`.

        Raises:
            MessageError: A frame did not decode and :attr:`strict` is set (the
                good frames of the same read are in the inbox first).
        """
        ready, _, _ = select.select([self.master], [], [], max(timeout, 0.0))
        if not ready:
            return 0
        try:
            data = os.read(self.master, 4096)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError:  # EIO: the host closed its end (cannot happen while we hold the slave)
            return 0
        added = 0
        error: MessageError | None = None
        for frame in self.splitter.feed(data):
            try:
                self.inbox.append(Message.decode(frame))
            except MessageError as exc:
                self.bad_frames.append(frame)
                error = error or exc
                continue
            added += 1
        if error is not None and self.strict:
            raise error
        return added

    def collect(self, seconds: float) -> list[Message]:
        """Everything the host sends during ``seconds``, after what was in the inbox; empties the inbox."""
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            self.receive(min(remaining, 0.05))
        messages, self.inbox = self.inbox, []
        return messages


class FakeDevice(FakeSerialPort):
    """A Smart Device the test plays by hand, on a pseudo-terminal the host (e.g. the bridge) opens.

    Script the conversation: :meth:`send` messages (:func:`dev_data` makes the
    values a device reports), :meth:`expect` the host's, :meth:`introduce` the
    device with its UID (the answer to PING), and :meth:`accept_subscription`.
    Or let a :class:`~runtime.testing.DeviceModel` play it for a while with
    :meth:`serve`.

    With the bridge (``runtime bridge --port PATH``) as the host::

        with FakeDevice(uid) as device:
            ...start the bridge with --port device.path...
            device.introduce()                       # the bridge serves the device's buffer
            device.accept_subscription()             # and subscribes to its values
            device.send(dev_data(servo_type, servo0=0.5))   # the buffer shows them
            write = device.expect(MessageType.DEV_WRITE)     # what student code wrote

    Args:
        uid: The device's UID, used by :meth:`introduce` and
            :meth:`accept_subscription` when they are not given one.
        strict: See :class:`FakeSerialPort`.
    """

    def __init__(self, uid: int | None = None, *, strict: bool = True) -> None:
        super().__init__(strict=strict)
        self.uid = uid

    def send(self, *messages: Message) -> None:
        """Send messages to the host, each framed (COBS-encoded, then the 0x00 delimiter)."""
        self.write(b"".join(message.encode() + DELIM for message in messages))

    def expect(
        self, kind: MessageType, timeout: float = 5.0, where: Callable[[Message], bool] | None = None
    ) -> Message:
        """Wait for the next message of type ``kind`` (for which ``where`` is true, if given) and return it.

        Messages before it in the inbox are dropped; those after it stay.

        Raises:
            AssertionError: None came within ``timeout`` seconds (the message lists what did).
        """
        deadline = time.monotonic() + timeout
        skipped: list[str] = []
        while True:
            while self.inbox:
                message = self.inbox.pop(0)
                if message.type == kind and (where is None or where(message)):
                    return message
                skipped.append(message.type.name)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"no {kind.name} from the host on {self.path} within {timeout:g} s "
                    f"(received: {', '.join(skipped) or 'nothing'})"
                )
            self.receive(min(remaining, 0.1))

    def _uid(self, uid: int | None) -> int:
        uid = self.uid if uid is None else uid
        if uid is None:
            raise ValueError("no UID: give one to FakeDevice() or to this method")
        return uid

    def introduce(self, uid: int | None = None, timeout: float = 5.0) -> None:
        """Wait for the host's PING and answer it with a SUB_RES naming the device (nothing subscribed)."""
        uid = self._uid(uid)
        self.expect(MessageType.PING, timeout)
        self.send(sub_res(uid))

    def accept_subscription(self, uid: int | None = None, timeout: float = 5.0) -> tuple[int, int]:
        """Wait for the host's SUB_REQ and confirm it with a SUB_RES; return ``(params, interval_ms)``.

        The bridge counts a subscription only once a SUB_RES with a nonzero
        interval confirms it; after this it expects DEV_DATA of those
        parameters every ``interval_ms`` (send them with :meth:`send`).
        """
        uid = self._uid(uid)
        params, interval_ms = self.expect(MessageType.SUB_REQ, timeout).read_sub_req()
        self.send(sub_res(uid, params, interval_ms))
        return params, interval_ms

    def serve(self, model: DeviceModel, seconds: float) -> None:
        """Let ``model`` play the device for ``seconds``: answer the host, stream data, send heartbeats.

        Runs in the calling thread and returns after ``seconds``; the model
        keeps its state, so calling it again continues the conversation. What
        the host does not read in time is dropped, as a UART does. The
        messages the host sends are digested by the model, not put in the inbox.

        >>> from runtime import catalog
        >>> from runtime.testing import DeviceModel
        >>> switch = catalog.load()["limit-switch"]
        >>> model = DeviceModel(switch, 0x00_0A_0000000000000001, seed=1)
        >>> with FakeDevice() as device:
        ...     device.serve(model, 0.1)                # nobody asked anything: nothing to answer
        >>> model.messages_in
        0
        >>> model.close()
        """
        deadline = time.monotonic() + seconds
        while True:
            now = time.monotonic()
            self._send_or_drop(model.poll(now))
            if now >= deadline:
                return
            wait = min(model.next_deadline(now), deadline) - time.monotonic()
            ready, _, _ = select.select([self.master], [], [], max(wait, 0.0))
            if not ready:
                continue
            try:
                data = os.read(self.master, 4096)
            except OSError:  # BlockingIOError, EIO: nothing to read after all
                continue
            for frame in self.splitter.feed(data):
                self._send_or_drop(model.receive(frame, time.monotonic()))

    def _send_or_drop(self, messages: list[Message]) -> None:
        for message in messages:
            with contextlib.suppress(BlockingIOError):
                os.write(self.master, message.encode() + DELIM)
