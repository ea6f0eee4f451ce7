"""The buffer store: buffers by device, namespaces of segments, and discovery.

A :class:`BufferStore` opens and closes the buffers of a catalog by key: a
``(type name, UID)`` pair, or for a Smart Device its UID alone. Segments are
named ``<namespace>-<type>-<uid hex>``; the namespace comes from
``$RUNTIME_BUFFER_NAMESPACE`` (default ``rt``), so that several robots, tests or
demos on one machine never see each other's buffers. :meth:`BufferStore.discover`
lists the buffers that exist in the namespace, so that code can find its
devices without knowing their UIDs in advance.

>>> from runtime import catalog
>>> with BufferStore(catalog.load(), shared=False) as store:
...     pad = store.get_or_open(("gamepad", 0))
...     pad.set("button_a", True)
...     pad.get("button_a")
True
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import os
import re
import time
import types
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from typing import Any, overload

from . import _core
from .buffer import (
    NAMESPACE_ENV,
    SHM_DIR,
    Buffer,
    DeviceBuffer,
    DeviceBufferError,
    DeviceUID,
    Parameter,
    _read_header,
    current_namespace,
    logger,
)
from .catalog import CATALOG_KEYS, device_types, make_catalog
from .device import Device
from .exception import closest, did_you_mean
from .processes import pid_alive, zombie

__all__ = [
    "CATALOG_KEYS",
    "NAMESPACE_MAX",
    "ROBOT_STATE",
    "BufferInfo",
    "BufferKey",
    "BufferStore",
    "buffer_namespaces",
    "check_namespace",
    "mapped_elsewhere",
    "namespace_hint",
    "namespace_segments",
    "namespaces",
    "robot_enabled",
]

_HEX_UID = re.compile(r"[0-9a-f]+")
_NAMESPACE_FORBIDDEN = frozenset("/*$?#\0")
NAMESPACE_MAX = 128
"""Characters of a namespace at most (it prefixes segment names, which the OS limits to 255)."""


def check_namespace(namespace: str) -> str:
    """``namespace`` if it can name a robot's buffers everywhere, else ``ValueError``.

    The one check of every namespace (the buffer store, the command-line
    tools, ``runtime.remote`` and its key expressions): a nonempty string of
    at most :data:`NAMESPACE_MAX` characters, without ``/ * $ ? #`` or NUL,
    not starting with ``@``. It prefixes segment names (``<namespace>-...``
    in /dev/shm) and is one chunk of Zenoh key expressions
    (``runtime/<namespace>/...``), so what either would refuse or misread is
    refused here.

    >>> check_namespace("rt-demo-4242")
    'rt-demo-4242'
    >>> check_namespace("a/b")
    Traceback (most recent call last):
    ...
    ValueError: a namespace is one key chunk without / * $ ? # (nor a leading @), not 'a/b'
    """
    if (
        not isinstance(namespace, str)
        or not namespace
        or namespace.startswith("@")
        or set(namespace) & _NAMESPACE_FORBIDDEN
    ):
        raise ValueError(
            f"a namespace is one key chunk without / * $ ? # (nor a leading @), not {namespace!r}"
        )
    if len(namespace) > NAMESPACE_MAX:
        raise ValueError(f"a namespace has at most {NAMESPACE_MAX} characters, not {len(namespace)}")
    return namespace


BufferKey = int | tuple[str, int]


@dataclasses.dataclass(eq=False)
class BufferStore(Mapping[BufferKey, Buffer]):
    """Manage the lifecycle of a collection of buffers.

    Every device type has a unique name and every device an integer UID unique
    among its type; a ``(type name, UID)`` pair identifies a device globally.
    For Smart Devices the UID encodes the type, so the UID alone is a key.
    The store maps keys to the buffers it opened, and closes them all when used
    as a context manager.

    Args:
        catalog: Maps unique type names to buffer types (see :meth:`make_catalog`).
        buffers: Maps ``(type name, UID)`` pairs to open buffers.
        stack: Closes the buffers.
        shared: Whether buffers live in shared memory (False: process-local).
    """

    catalog: Mapping[str, type[Buffer]]
    buffers: MutableMapping[tuple[str, int], Buffer] = dataclasses.field(default_factory=dict)
    stack: contextlib.ExitStack[Any] = dataclasses.field(default_factory=contextlib.ExitStack)
    shared: bool = True

    @functools.cached_property
    def device_types(self) -> Mapping[int, str]:
        """Maps each Smart Device ``device_id`` to its type name (:func:`runtime.catalog.device_types`)."""
        return types.MappingProxyType(device_types(self.catalog))

    def normalize_key(self, key: BufferKey, /) -> tuple[str, int]:
        """The ``(type name, UID)`` pair for a key.

        Raises:
            KeyError: An unknown type or device_id, or a UID that is not an
                88-bit nonnegative integer; its message says which, with the
                closest type names first.
        """
        if isinstance(key, tuple):
            type_name, uid = key
            if type_name not in self.catalog:
                raise KeyError(
                    f"no device type {type_name!r} in the catalog{did_you_mean(type_name, self.catalog)}; "
                    f"known types: {_known(type_name, self.catalog)}"
                )
        else:
            uid = key
            if isinstance(uid, bool) or not isinstance(uid, int) or not 0 <= uid < 1 << 88:
                raise KeyError(f"a Smart Device UID is an 88-bit nonnegative integer, not {key!r}")
            device_id = uid >> 72
            if device_id not in self.device_types:
                known = ", ".join(f"{name} ({number})" for number, name in sorted(self.device_types.items()))
                raise KeyError(
                    f"UID {uid:#x} has device_id {device_id}, which no Smart Device type of the catalog has; "
                    f"known: {known}"
                )
            type_name = self.device_types[device_id]
        if isinstance(uid, bool) or not isinstance(uid, int) or uid < 0:
            raise KeyError(f"a UID is a nonnegative integer, not {uid!r}")
        return type_name, uid

    def __getitem__(self, key: BufferKey, /) -> Buffer:
        return self.buffers[self.normalize_key(key)]

    def __iter__(self) -> Iterator[BufferKey]:
        return iter(self.buffers)

    def __len__(self) -> int:
        return len(self.buffers)

    def __enter__(self) -> BufferStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every buffer this store opened (segments stay; see :meth:`unlink_all`)."""
        self.stack.close()
        self.buffers.clear()
        self.__dict__.pop("_robot_state", None)

    # -- disabling the robot --

    def _state(self) -> Buffer:
        """The namespace's robot-state segment (created, enabled, on first use; kept open)."""
        state: Buffer | None = self.__dict__.get("_robot_state")  # not a field: the contract has four
        if state is None or state.closed:
            state = _RobotState.attach(f"{self.namespace()}-{ROBOT_STATE}", shared=self.shared)
            self.stack.push(state)
            self.__dict__["_robot_state"] = state
        return state

    @property
    def enabled(self) -> bool:
        """Whether the robot of this namespace is enabled (it starts enabled; see :meth:`disable`)."""
        if "_robot_state" in self.__dict__ or not self.shared:
            return not self._state().get("disabled")
        return robot_enabled(self.namespace())

    def disable(self) -> list[str]:
        """Disable the robot of this namespace: every actuator stops and stays stopped until :meth:`enable`.

        The state lives in shared memory (a bridge that starts later, or
        restarts, finds it). Every Smart Device buffer of the namespace whose
        type has safe-valued parameters is marked disabled: its writes of
        those parameters raise :class:`DeviceBufferError` from now on, they get
        their safe values, and the bridge sends the device DEV_DISABLE and the
        safe values. Other parameters (configuration) keep theirs.

        Returns:
            The names of the buffers marked disabled.
        """
        self._state().set("disabled", True)
        return self._mark_buffers(True)

    def enable(self) -> list[str]:
        """Enable the robot again. Nothing moves until someone writes a new command.

        Returns:
            The names of the buffers marked enabled.
        """
        self._state().set("disabled", False)
        return self._mark_buffers(False)

    def _mark_buffers(self, disabled: bool) -> list[str]:
        marked: list[str] = []
        problems: list[str] = []
        opened = {buffer.name: buffer for buffer in self.buffers.values() if not buffer.closed}
        names = [(type_name, name) for type_name, _, name in self.find_segments()] if self.shared else []
        names += [(type(buffer).type_name, name) for name, buffer in opened.items()]
        for type_name, name in dict.fromkeys(names):
            buffer_type = self.catalog[type_name]
            if not issubclass(buffer_type, DeviceBuffer) or not buffer_type.safe_values():
                continue
            buffer = opened.get(name)
            try:
                other = buffer_type.attach(name, create=False) if buffer is None else None
            except DeviceBufferError as exc:  # another catalog's, or gone meanwhile
                problems.append(f"{name}: {exc.message}")
                continue
            target = buffer or other
            assert target is not None
            try:
                target._access.set_disabled(disabled)
            except DeviceBufferError as exc:
                # The flag is set even then (it needs no lock): the bridge stops the device.
                problems.append(f"{name}: {exc.message}")
            finally:
                if other is not None:
                    other.close()
            marked.append(name)
        for problem in problems:
            logger.warning("%s: %s", "disable" if disabled else "enable", problem)
        return sorted(marked)

    @staticmethod
    def namespace() -> str:
        """The prefix of this project's segment names (``$RUNTIME_BUFFER_NAMESPACE``, default ``rt``)."""
        return current_namespace()

    @staticmethod
    @contextlib.contextmanager
    def use_namespace(namespace: str | None) -> Iterator[str]:
        """Name segments under ``namespace`` while inside (child processes inherit it).

        Sets ``$RUNTIME_BUFFER_NAMESPACE`` and restores it on exit; None keeps the
        current namespace. Yields the namespace in effect.

        Raises:
            DeviceBufferError: The namespace in effect (given, or from the
                environment) is not one :func:`check_namespace` accepts.
        """
        effective = namespace or BufferStore.namespace()
        try:
            check_namespace(effective)
        except ValueError as exc:
            raise DeviceBufferError(str(exc), namespace=effective) from None
        previous = os.environ.get(NAMESPACE_ENV)
        if namespace:
            os.environ[NAMESPACE_ENV] = namespace
        try:
            yield BufferStore.namespace()
        finally:
            if previous is None:
                os.environ.pop(NAMESPACE_ENV, None)
            else:
                os.environ[NAMESPACE_ENV] = previous

    @classmethod
    def segment_name(cls, type_name: str, uid: int, namespace: str | None = None) -> str:
        """The shared memory object name of a device's buffer (in ``namespace``, default the current one)."""
        return f"{namespace or cls.namespace()}-{type_name}-{uid:x}"

    @overload
    def get_or_open(self, key: int, /, *, create: bool = True) -> DeviceBuffer: ...

    @overload
    def get_or_open(self, key: tuple[str, int], /, *, create: bool = True) -> Buffer: ...

    def get_or_open(self, key: BufferKey, /, *, create: bool = True) -> Buffer:
        """Get a buffer, opening a new one if necessary.

        A Smart Device buffer this creates is invalid until its producer (the
        bridge) serves it: nothing passes for a reading before the device
        does. Any other buffer it creates is valid at once.

        Raises:
            KeyError: The device ID or type name does not exist.
            DeviceBufferError: If ``create=False``, but the buffer does not exist.
        """
        type_name, uid = self.normalize_key(key)
        try:
            return self.buffers[type_name, uid]
        except KeyError:
            pass
        buffer_type = self.catalog[type_name]
        name = self.segment_name(type_name, uid)
        smart = issubclass(buffer_type, DeviceBuffer)
        buffer = buffer_type.attach(name, create=create, shared=self.shared, valid=not smart)
        self.stack.push(buffer)  # closes it when the store closes
        if isinstance(buffer, DeviceBuffer) and buffer._created and uid < 1 << 88:
            # Recorded before anyone serves it (a new Smart Device buffer is invalid until then).
            buffer._access.set_meta(uid=DeviceUID.from_int(uid).astuple(), check_valid=False)
        self.buffers[type_name, uid] = buffer
        return buffer

    def find_segments(self, namespace: str | None = None) -> list[tuple[str, int, str]]:
        """The segments of this store's catalog types in the namespace: ``(type, uid, name)``, sorted.

        A name counts only when :meth:`segment_name` gives it back exactly, so
        segments of other namespaces or programs are never picked up.
        ``namespace`` defaults to the one in effect (a thread that watches
        another namespace names it here, not through the environment).
        """
        prefix = (namespace or self.namespace()) + "-"
        names = sorted(self.catalog, key=len, reverse=True)  # "servo-motor" before "servo"
        try:
            entries = os.listdir(SHM_DIR)
        except FileNotFoundError:
            return []
        found: list[tuple[str, int, str]] = []
        for entry in entries:
            if not entry.startswith(prefix):
                continue
            rest = entry[len(prefix) :]
            for type_name in names:
                hex_uid = rest[len(type_name) + 1 :]
                if rest.startswith(type_name + "-") and _HEX_UID.fullmatch(hex_uid):
                    if self.segment_name(type_name, int(hex_uid, 16), namespace) == entry:
                        found.append((type_name, int(hex_uid, 16), entry))
                        break
        return sorted(found)

    def discover(self) -> list[BufferInfo]:
        """What buffers exist in the namespace, for code that looks for its devices.

        Each buffer of a catalog type is attached (never created) and closed
        again; one that cannot be opened (made by another catalog, or not
        this user's) is listed with ``error`` set. Sorted by type and UID.

        Example::

            with BufferStore(catalog.load()) as store:
                motors = [info for info in store.discover() if info.type_name == "yogi-bear" and info.valid]
        """
        found: list[BufferInfo] = []
        for type_name, uid, name in self.find_segments():
            buffer_type = self.catalog[type_name]
            try:
                buffer = buffer_type.attach(name, create=False, shared=self.shared)
            except DeviceBufferError as exc:
                found.append(BufferInfo(type_name, uid, name, False, None, None, exc.message))
                continue
            with buffer:
                last_update = None
                if isinstance(buffer, DeviceBuffer) and buffer.valid:
                    with contextlib.suppress(DeviceBufferError):
                        last_update = buffer.last_update or None
                found.append(BufferInfo(type_name, uid, name, buffer.valid, buffer.producer_pid, last_update))
        return found

    def device(self, key: BufferKey, /) -> Device:
        """The student-facing handle of a device's buffer (see :class:`runtime.device.Device`).

        Opens the buffer like :meth:`get_or_open` (creating it if needed: a
        Smart Device's stays invalid until the bridge serves it).
        """
        buffer = self.get_or_open(key)
        return Device(buffer, self.normalize_key(key)[1])

    def unlink_all(self) -> list[str]:
        """Unlink every segment of this project's namespace; return their names.

        Only segments created in exactly this namespace (recorded in their
        header: ``rt`` is not ``rt-demo-1``) whose header carries this
        library's magic are touched: nothing else on the machine. FIFOs,
        devices and symlinks are never opened. A segment that cannot be
        removed is skipped with a warning on the ``runtime.buffer`` logger.
        """
        removed: list[str] = []
        for entry, _ in namespace_segments(self.namespace()):
            try:
                _core.shm_unlink("/" + entry)
            except FileNotFoundError:
                continue
            except OSError as exc:
                logger.warning("cannot remove segment %s: %s; skipped", entry, exc.strerror)
                continue
            removed.append(entry)
        return removed

    def stale_segments(self) -> list[tuple[str, int, str, int]]:
        """The segments no producer serves any more: ``(type, uid, name, last producer pid)``, sorted.

        The pid is 0 for a Smart Device buffer never served whose creator is gone.

        Leftovers of a bridge (or of another producer) that stopped or died,
        which nobody can bring back to life: ``runtime buffers clean`` removes
        them. A segment is stale when all of this holds:

        * it is a segment of this store's catalog types in exactly this
          namespace (as :meth:`find_segments` names it and :meth:`unlink_all`
          reads its header), this user's, and opens with its type;
        * it was served at some time: its header records a producer
          (``producer_pid`` is not 0); or it is a Smart Device buffer never
          served whose creator is gone and that nobody changed for
          :data:`NEVER_SERVED_GRACE` seconds (a mistyped UID,
          ``store.device(uid)`` with no bridge, from a program that ended;
          the grace leaves a bridge that is starting the time to serve it):
          then the pid returned is 0;
        * nobody serves it now: once attached, :attr:`Buffer.producer_pid` is
          None (the producer lock is free, or its owner died);
        * that last producer is gone: no process has its pid (a zombie counts
          as gone). A bridge that still runs keeps the segments of its
          unplugged devices, to serve them again when they come back;
        * no other live process of this user has it mapped (as
          ``/proc/PID/maps`` says): a program still attached, waiting for the
          device to come back, would otherwise wait on a segment that no new
          bridge would find.

        Never stale: a buffer a live producer serves; a plain buffer never
        served (a program uses it on its own); a Smart Device buffer never
        served whose creator runs (student code that opened it before the
        bridge came) or that a process maps; a segment that
        cannot be opened to look (another catalog's or user's); anything
        outside the namespace. When the last producer's pid was reused by an
        unrelated process, the segment is kept too (a safe mistake). Processes
        this one cannot see (another pid namespace sharing ``/dev/shm``) count
        as gone and not holding anything: clean up from where the bridge runs.

        Selecting is not removing: a producer that starts serving a segment
        between this call and its unlink loses it to the unlink, so clean up
        while no bridge is starting (``runtime buffers clean`` runs before the
        bridge in the systemd unit of ``docs/deploy.md``).
        """
        if not self.shared:
            return []
        namespace = self.namespace()

        def gone(pid: int) -> bool:
            return not pid_alive(pid) or zombie(pid)

        candidates: list[tuple[str, int, str, int, int]] = []
        for type_name, uid, name in self.find_segments():
            path = os.path.join(SHM_DIR, name)
            header = _read_header(path)
            if header is None or header.namespace_length != len(namespace):
                continue
            if header.producer_pid == 0 and not (
                issubclass(self.catalog[type_name], DeviceBuffer)
                and header.creator_pid != 0
                and gone(header.creator_pid)
                and _unchanged_for(path, NEVER_SERVED_GRACE)
            ):
                continue  # never served: stale only as a device buffer whose creator is long gone
            try:
                buffer = self.catalog[type_name].attach(name, create=False, shared=True)
            except DeviceBufferError:
                continue
            with buffer:
                serving_pid = buffer.producer_pid
            if serving_pid is not None or (header.producer_pid != 0 and not gone(header.producer_pid)):
                continue
            with contextlib.suppress(OSError):
                candidates.append((type_name, uid, name, header.producer_pid, os.stat(path).st_ino))
        if not candidates:
            return []
        mapped = mapped_elsewhere({inode for *_, inode in candidates})
        return [
            (type_name, uid, name, pid)
            for type_name, uid, name, pid, inode in candidates
            if inode not in mapped
        ]

    @classmethod
    def make_catalog(cls, catalog: Mapping[str, Mapping[str, Any]]) -> dict[str, type[Buffer]]:
        """Generate buffer types from the raw peripheral specification: :func:`runtime.catalog.make_catalog`.

        Kept here because the API contract names it ``BufferStore.make_catalog``.
        """
        return make_catalog(catalog)


ROBOT_STATE = "robot-state"
"""The name, after the namespace, of the segment that holds whether the robot is disabled."""
_RobotState = Buffer.make_type(ROBOT_STATE, [Parameter("disabled", ctypes.c_bool, 0)])


def robot_enabled(namespace: str | None = None) -> bool:
    """Whether the robot of ``namespace`` (default: the current one) is enabled (:meth:`BufferStore.disable`).

    Raises:
        DeviceBufferError: Its state segment cannot be read (a foreign file in its place).
    """
    name = f"{namespace or current_namespace()}-{ROBOT_STATE}"
    if not os.path.lexists(os.path.join(SHM_DIR, name)):
        return True  # never disabled
    try:
        state = _RobotState.attach(name, create=False)
    except DeviceBufferError:
        if not os.path.lexists(os.path.join(SHM_DIR, name)):
            return True  # removed meanwhile
        raise
    with state:
        return not state.get("disabled")


NEVER_SERVED_GRACE = 60.0
"""Seconds a Smart Device segment never served, whose creator is gone, is left unchanged before
:meth:`BufferStore.stale_segments` counts it stale (a bridge starting meanwhile serves it)."""


def _unchanged_for(path: str, seconds: float) -> bool:
    """Whether a file was last changed at least ``seconds`` ago."""
    try:
        return time.time() - os.stat(path).st_mtime >= seconds
    except OSError:
        return False


def mapped_elsewhere(inodes: set[int]) -> set[int]:
    """Which of these ``/dev/shm`` inodes another process of this user maps (its ``/proc/PID/maps``).

    What tells a segment nobody uses from one a process still reads: ``buffers
    clean`` and the bridge's release of an unplugged device ask it before they
    unlink. Processes of other users are not readable, so not counted.
    """
    found: set[int] = set()
    prefix = SHM_DIR.rstrip("/") + "/"
    own = str(os.getpid())
    with contextlib.suppress(OSError):
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or entry == own:
                continue
            try:
                with open(f"/proc/{entry}/maps", encoding="utf-8", errors="replace") as file:
                    for line in file:
                        fields = line.split(None, 5)
                        if len(fields) == 6 and fields[5].startswith(prefix) and int(fields[4]) in inodes:
                            found.add(int(fields[4]))
            except (OSError, ValueError):  # gone meanwhile, or not ours to read
                continue
    return found


def _known(word: str, names: Iterable[str]) -> str:
    """The names, closest to ``word`` first, then the rest in order."""
    ordered = sorted(names)
    close = closest(word, ordered, n=len(ordered))
    return ", ".join([*close, *(name for name in ordered if name not in close)])


@dataclasses.dataclass(frozen=True)
class BufferInfo:
    """One buffer found by :meth:`BufferStore.discover`."""

    type_name: str
    uid: int
    name: str
    """The segment's name in /dev/shm."""
    valid: bool
    producer_pid: int | None
    """The live process serving it (the bridge, for Smart Devices), or None."""
    last_update: float | None
    """:func:`time.time` of the last update from the device (Smart Devices), None if none yet."""
    error: str | None = None
    """Why the buffer could not be opened (then ``valid`` is False)."""

    @property
    def key(self) -> tuple[str, int]:
        """The store key of the buffer."""
        return self.type_name, self.uid

    def age(self, now: float | None = None) -> float | None:
        """Seconds since the last update, or None."""
        if self.last_update is None:
            return None
        return (time.time() if now is None else now) - self.last_update


def namespace_segments(namespace: str) -> list[tuple[str, int]]:
    """The segments of this library made in exactly ``namespace``: ``(name, last producer pid)``, sorted.

    Whatever their catalog: a segment counts when its header carries this
    library's magic and records this namespace (``rt`` is not ``rt-demo-1``).
    The pid is 0 for a segment never served. FIFOs, devices and symlinks are
    never opened.
    """
    found: list[tuple[str, int]] = []
    try:
        entries = sorted(os.listdir(SHM_DIR))
    except FileNotFoundError:
        return found
    for entry in entries:
        if not entry.startswith(namespace + "-"):
            continue
        header = _read_header(os.path.join(SHM_DIR, entry))
        if header is not None and header.namespace_length == len(namespace):
            found.append((entry, header.producer_pid))
    return found


def namespaces() -> list[str]:
    """The namespaces that have segments of this library in /dev/shm (readable by this user), sorted."""
    found: set[str] = set()
    try:
        entries = os.listdir(SHM_DIR)
    except FileNotFoundError:
        return []
    for entry in entries:
        header = _read_header(os.path.join(SHM_DIR, entry))
        if header is not None and 0 < header.namespace_length < len(entry):
            found.add(entry[: header.namespace_length])
    return sorted(found)


def buffer_namespaces(*, live: bool = False) -> list[str]:
    """The namespaces that have buffers of this library in /dev/shm, sorted.

    The robot's state alone (what ``runtime disable`` makes) is no buffer.
    With ``live=True``, only the namespaces where a segment has a live
    producer: its header records the pid of a process that still runs (the
    bridge, the demo, ``runtime emulate``'s bridge), so a namespace of
    leftovers or of buffers never served does not count. The one answer to
    "where are the buffers" for the examples and the commands' messages.
    """
    found: set[str] = set()
    try:
        entries = os.listdir(SHM_DIR)
    except FileNotFoundError:
        return []
    alive: dict[int, bool] = {}
    for entry in entries:
        header = _read_header(os.path.join(SHM_DIR, entry))
        if header is None or not 0 < header.namespace_length < len(entry):
            continue
        namespace = entry[: header.namespace_length]
        if namespace in found or entry == f"{namespace}-{ROBOT_STATE}":
            continue
        if live:
            pid = header.producer_pid
            if pid == 0 or not alive.setdefault(pid, pid_alive(pid)):
                continue
        found.add(namespace)
    return sorted(found)


def namespace_hint(command: str) -> str:
    """Where the live buffers are, when the current namespace has none: ``""`` when it has some.

    ``command`` is what the user ran (``python examples/read_a_sensor.py``).
    When exactly one other namespace has live buffers (see
    :func:`buffer_namespaces`), the hint names it and the exact command to
    run there; when several do, it lists them.
    """
    live = buffer_namespaces(live=True)
    current = current_namespace()
    if current in live:
        return ""
    others = [namespace for namespace in live if namespace != current]
    if not others:
        return f"no namespace has live buffers (this one is {current!r})"
    if len(others) == 1:
        other = others[0]
        return (
            f"the live buffers are in namespace {other!r}, not {current!r}: run "
            f"{NAMESPACE_ENV}={other} {command} (or add --namespace {other})"
        )
    return f"namespaces with live buffers: {', '.join(others)} (choose one with --namespace NS)"
