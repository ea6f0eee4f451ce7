"""Reports of buffers: what a live buffer holds and who serves it, for people.

What ``runtime buffers`` lists, shows and watches, and what ``runtime demo``
tabulates: :func:`inspect_buffer` attaches one buffer with ``create=False`` (an
attacher never marks a buffer valid or invalid and never destroys it, so
looking cannot disturb the robot) and reads it, under one lock, into a
:class:`BufferReport`; :func:`scan` does so for every live buffer of the
namespace. A buffer that cannot be opened (made by a different catalog,
half-initialized) gives a report in the ``error`` state instead of an
exception, so one bad segment never stops a listing.

>>> report = BufferReport("battery", 0x2A, "rt-battery-2a", smart=True)
>>> report.key, report.state()           # not created yet
('battery:0x2a', 'waiting')
>>> robot_line(False)
'robot: DISABLED (runtime enable to enable)'

The commands show the reports with ``rich`` (``runtime.tools._views``); this
module has no presentation beyond plain lines of text.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping
from typing import Any

from .buffer import SHM_DIR, Buffer, DeviceBuffer, DeviceBufferError
from .exception import RuntimeBaseException
from .processes import program_name
from .store import BufferStore
from .values import jsonable, type_name

__all__ = [
    "ROBOT_DISABLED",
    "ROBOT_ENABLED",
    "BufferReport",
    "NoSuchBuffer",
    "devices_of_type",
    "inspect_buffer",
    "program_name",
    "robot_enabled_or_unknown",
    "robot_line",
    "scan",
]

ROBOT_DISABLED = "robot: DISABLED (runtime enable to enable)"
"""The line that says that the robot of the namespace is disabled."""
ROBOT_ENABLED = "robot: enabled"
"""The line that says that the robot of the namespace is enabled."""


class NoSuchBuffer(DeviceBufferError):
    """There is no buffer of that key in the namespace (no segment in ``/dev/shm``).

    A :class:`~runtime.buffer.DeviceBufferError`; ``context`` gives the ``key``
    (``TYPE:0xUID``), the ``segment``, the ``namespace`` and the ``devices``
    of that type the namespace has (their UIDs, closest first: a mistyped
    UID's device first; the message lists them).
    """


@dataclasses.dataclass
class BufferReport:
    """What one live buffer holds, as read at one moment (or why it could not be read)."""

    type_name: str
    uid: int
    segment: str
    smart: bool
    valid: bool | None = None
    """None when the buffer could not be opened at all (see :attr:`error`), or does not exist (yet)."""
    last_update: float | None = None
    last_write: float | None = None
    subscription: list[str] | None = None
    interval: float | None = None
    values: dict[str, Any] | None = None
    """Readable parameters' values; None when unavailable (invalid buffer, error)."""
    error: str | None = None
    params: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    """Every parameter's descriptor (filled by :func:`inspect_buffer` with ``details=True``)."""
    commanders: dict[str, int] | None = None
    """The pid of the process whose command is in force, by actuator (None: the type has no actuators,
    or the buffer could not be read)."""
    disabled: bool | None = None
    """Whether the robot is disabled for this buffer (None: the type has no actuators, or unknown)."""
    producer_pid: int | None = None
    """The pid of the live process serving the buffer (the bridge, say); None: nobody serves it."""
    programs: dict[int, str] = dataclasses.field(default_factory=dict)
    """The program name (:func:`program_name`) of the producer and of each commander, by pid."""

    def program(self, pid: int | None) -> str:
        """``pid 1234 (runtime bridge)``: a process of this report, named (``nobody`` for None)."""
        if pid is None:
            return "nobody"
        name = self.programs.get(pid)
        return f"pid {pid} ({name})" if name else f"pid {pid}"

    @property
    def key(self) -> str:
        """``TYPE:0xUID``, accepted back by ``runtime buffers show`` and ``watch``."""
        return f"{self.type_name}:{self.uid:#x}"

    def age(self, now: float | None = None) -> float | None:
        """Seconds since the last update; None when never updated or unknown."""
        if not self.last_update:
            return None
        return max(0.0, (time.time() if now is None else now) - self.last_update)

    def state(self) -> str:
        """``valid``, ``invalid``, ``error``, or ``waiting`` (the buffer does not exist yet)."""
        if self.error is not None:
            return "error"
        if self.valid is None:
            return "waiting"
        return "valid" if self.valid else "invalid"

    def to_json(self, now: float | None = None) -> dict[str, Any]:
        """Plain JSON data (values included, parameters when collected)."""
        data: dict[str, Any] = {
            "type": self.type_name,
            "uid": self.uid,
            "uid_hex": f"{self.uid:#x}",
            "segment": self.segment,
            "smart_device": self.smart,
            "valid": self.valid,
            "last_update": self.last_update or None,
            "age": self.age(now),
            "last_write": self.last_write or None,
            "producer_pid": self.producer_pid,
            "producer_program": self.programs.get(self.producer_pid) if self.producer_pid else None,
            "values": jsonable(self.values),
            "error": self.error,
        }
        if self.smart:
            data["subscription"] = self.subscription
            data["interval"] = self.interval
            data["commanders"] = self.commanders
            if self.commanders:
                programs = {name: self.programs.get(pid) for name, pid in self.commanders.items()}
                data["commander_programs"] = programs
            data["disabled"] = self.disabled
        if self.params:
            data["params"] = jsonable(self.params)
        return data


def _param_rows(buffer_type: type[Buffer], values: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    rows = []
    for param in buffer_type.params.values():
        rows.append(
            {
                "name": param.name,
                "id": param.id,
                "type": type_name(param.ctype),
                "value": values.get(param.name) if values is not None and param.readable else None,
                "readable": param.readable,
                "writeable": param.writeable,
                "subscribed": param.subscribed,
                "lower": float(param.lower),
                "upper": float(param.upper),
                "unit": param.unit,
                "description": param.description,
            }
        )
    return rows


_DEVICES_LISTED = 5
"""Devices a :class:`NoSuchBuffer` message lists, at most (its ``devices`` has them all)."""


def devices_of_type(store: BufferStore, type_name: str, *, near: int | None = None) -> list[int]:
    """The UIDs of the ``type_name`` buffers of the current namespace (its segments in /dev/shm).

    Sorted; with ``near``, closest to that UID first (:func:`runtime.messaging.closest_uids`:
    the device a mistyped UID meant comes first).
    """
    from .messaging import closest_uids

    uids = sorted(uid for found, uid, _ in store.find_segments() if found == type_name)
    return uids if near is None else closest_uids(near, uids)


def inspect_buffer(
    store: BufferStore, type_name: str, uid: int, *, details: bool = False, must_exist: bool = False
) -> BufferReport:
    """Attach one buffer (``create=False``) and read it into a report; never raises for a bad buffer.

    A buffer that does not exist gives a report in the ``waiting`` state.

    Args:
        details: Also list every parameter's descriptor.
        must_exist: Raise :class:`NoSuchBuffer` when there is no such buffer.
    """
    buffer_type = store.catalog[type_name]
    smart = issubclass(buffer_type, DeviceBuffer)
    report = BufferReport(type_name, uid, BufferStore.segment_name(type_name, uid), smart)
    try:
        buffer = store.get_or_open((type_name, uid), create=False)
    except DeviceBufferError as exc:
        if not os.path.exists(os.path.join(SHM_DIR, report.segment)):
            if must_exist:
                namespace = BufferStore.namespace()
                devices = devices_of_type(store, type_name, near=uid)
                if devices:
                    listed = ", ".join(f"{other:#x}" for other in devices[:_DEVICES_LISTED])
                    more = (
                        f" and {len(devices) - _DEVICES_LISTED} more"
                        if len(devices) > _DEVICES_LISTED
                        else ""
                    )
                    there = (
                        f"; the {type_name} devices in namespace {namespace!r}, closest first: {listed}{more}"
                    )
                else:
                    there = f" (no {report.segment} in {SHM_DIR})"
                raise NoSuchBuffer(
                    f"no buffer {report.key} in namespace {namespace!r}{there}",
                    key=report.key,
                    segment=report.segment,
                    namespace=namespace,
                    devices=devices,
                ) from None
        else:
            report.error = exc.message
    else:
        _read_buffer(buffer, report)
    if details:
        report.params = _param_rows(buffer_type, report.values)
    return report


def _read_buffer(buffer: Buffer, report: BufferReport) -> None:
    """Fill a report from an open buffer, under one lock so that the values are consistent."""
    try:
        report.producer_pid = buffer.producer_pid
        report.valid = buffer.valid
        if not report.valid:
            _name_programs(report)
            return
        with buffer.transaction():
            report.values = buffer.snapshot()
            if isinstance(buffer, DeviceBuffer):
                report.last_update = buffer.last_update
                report.last_write = buffer.last_write
                report.subscription = sorted(buffer.subscription, key=lambda name: buffer.params[name].id)
                report.interval = buffer.interval
                if type(buffer).safe_values():
                    report.commanders = buffer.commanders()
                    report.disabled = buffer.disabled
    except DeviceBufferError as exc:
        # The owner marked it invalid between our two looks: the values are unavailable.
        if not buffer.valid:
            report.valid = False
            report.values = None
        else:
            report.error = exc.message
    except RuntimeBaseException as exc:  # a lock held too long by a stuck process, say
        report.error = exc.message
    _name_programs(report)


def _name_programs(report: BufferReport) -> None:
    pids = set((report.commanders or {}).values())
    if report.producer_pid is not None:
        pids.add(report.producer_pid)
    for pid in pids:
        name = program_name(pid)
        if name:
            report.programs[pid] = name


def scan(store: BufferStore, *, details: bool = False) -> list[BufferReport]:
    """Reports for every live buffer of the store's catalog types in the current namespace."""
    return [
        inspect_buffer(store, type_name, uid, details=details) for type_name, uid, _ in store.find_segments()
    ]


def robot_enabled_or_unknown(store: BufferStore) -> bool | None:
    """Whether the robot of the current namespace is enabled (:attr:`BufferStore.enabled`); None if unknown.

    Unknown when its state cannot be read (a foreign file where the state
    segment belongs): the listing then says so instead of failing.
    """
    try:
        return store.enabled
    except RuntimeBaseException:
        return None


def robot_line(enabled: bool | None) -> str:
    """``robot: enabled``, ``robot: DISABLED (runtime enable to enable)``, or that it is unknown."""
    if enabled is None:
        return "robot: unknown (its state in shared memory cannot be read)"
    return ROBOT_ENABLED if enabled else ROBOT_DISABLED
