"""Watching the buffers of a namespace: which appear, change and disappear, without polling.

:class:`SegmentDiscovery` is the one look for a namespace's segments: each
:meth:`~SegmentDiscovery.discover` lists them, attaches those that appeared
and says which are gone. A segment that is replaced (same name, another
file) is gone and appears anew; one that cannot be opened is tried again at
the next look and reported once. ``runtime zenoh``
(:class:`runtime.remote.server.ZenohServer`) looks through it from its
asyncio loop, and :class:`BufferWatcher` from its thread.

:class:`BufferWatcher` lists the namespace's segments every
:data:`DISCOVER_INTERVAL` seconds and sleeps in :func:`runtime.notify.wait_any`
on the buffers it found (one thread per
:data:`~runtime.notify.WATCHED_PER_THREAD` of them) until one changes.
``runtime record`` and ``runtime foxglove`` are built on it.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from .buffer import SHM_DIR, Buffer, DeviceBufferError
from .exception import RuntimeBaseException
from .mcap import topic_of
from .notify import WATCHED_PER_THREAD, Block, wait_any
from .store import BufferStore

__all__ = [
    "DISCOVER_INTERVAL",
    "WAIT_SLICE",
    "BufferWatcher",
    "Segment",
    "SegmentDiscovery",
    "Watched",
    "find_segments",
]

logger = logging.getLogger(__name__)

DISCOVER_INTERVAL = 0.5
"""Seconds between two looks for buffers that appeared or disappeared."""
WAIT_SLICE = 0.2
"""The longest a watcher thread sleeps before looking at its list of buffers again."""


@dataclasses.dataclass(eq=False)
class Watched:
    """One buffer a :class:`BufferWatcher` watches, with what the watcher's user keeps about it."""

    type_name: str
    uid: int
    name: str
    """The segment's name."""
    buffer: Buffer
    """The watcher's own handle (it closes it)."""
    inode: int
    valid: bool | None = None
    """The validity when last delivered (read just before the callback; None: not yet)."""
    was_valid: bool | None = None
    """The validity at the delivery before (for a callback to see a change; None: none before)."""
    last_delivery: float = -math.inf
    """:func:`time.monotonic` of the last delivery."""
    due: float | None = None
    """When a change held back by the rate limit is to be delivered (monotonic), else None."""
    data: Any = None
    """Whatever the watcher's user keeps here (a channel, say)."""
    stamp: float = 0.0
    """The time of the last state its user read (for :func:`read_state`'s ``previous``)."""

    @property
    def key(self) -> tuple[str, int]:
        """The store key ``(type, uid)``."""
        return self.type_name, self.uid

    @property
    def topic(self) -> str:
        """The buffer's topic (:func:`topic_of`)."""
        return topic_of(self.type_name, self.uid)


@dataclasses.dataclass(eq=False)
class Segment:
    """One segment a :class:`SegmentDiscovery` found and attached: its buffer is the caller's."""

    type_name: str
    uid: int
    name: str
    """The segment's name."""
    buffer: Buffer
    """A handle attached to it (never created): the caller closes it once the segment is gone."""
    inode: int
    """The inode of the file attached: another one at its name replaced it."""
    replaced: bool = False
    """Set when it is reported gone because another file took its name (not unlinked for good)."""

    @property
    def key(self) -> tuple[str, int]:
        """The store key ``(type, uid)``."""
        return self.type_name, self.uid


class SegmentDiscovery:
    """The segments of a namespace, looked for again at each :meth:`discover`: which appeared, which went.

    A segment appears once it is attached (with ``create=False``: nothing is
    made here); it is gone when its name is no longer listed, or when the
    file at its name is another one (replaced: unlinked and made again, a
    bridge restarted; the new file appears in the same look when it can be
    attached). One that cannot be attached (a foreign file, a layout of
    another version) is tried again at every look; ``on_refused`` hears of it
    once, until it is attached. Plain and synchronous: one directory listing
    (:meth:`runtime.store.BufferStore.find_segments`) and the attaches, quick
    enough for an asyncio loop.

    Args:
        catalog: The device types (segments of other types are ignored).
        namespace: The namespace to look in (default: the current one, when made).
        select: Which ``(type, uid)`` to take (default: all).
        on_refused: Called with the segment's name and the error the first
            time it cannot be attached (default: a warning in the log).
    """

    def __init__(
        self,
        catalog: Mapping[str, type[Buffer]],
        namespace: str | None = None,
        *,
        select: Callable[[str, int], bool] | None = None,
        on_refused: Callable[[str, DeviceBufferError], None] | None = None,
    ) -> None:
        self.catalog = catalog
        self.namespace = namespace or BufferStore.namespace()
        self.select = select
        self.on_refused = on_refused
        self._known: dict[str, Segment] = {}
        self._refused: set[str] = set()

    def discover(self) -> tuple[list[Segment], list[Segment]]:
        """Look now: ``(appeared, gone)``, each sorted by name.

        ``appeared``: the segments attached in this look (their buffers are
        the caller's). ``gone``: those of earlier looks whose segment vanished
        or was replaced (:attr:`Segment.replaced`); their buffers are not
        closed here (the caller may still be using them).
        """
        present: dict[str, tuple[str, int]] = {}
        for type_name, uid, name in find_segments(self.catalog, self.namespace):
            if self.select is None or self.select(type_name, uid):
                present[name] = (type_name, uid)
        gone = []
        for name, segment in list(self._known.items()):
            if name not in present or _inode(name) != segment.inode:
                segment.replaced = name in present
                gone.append(self._known.pop(name))
        appeared = []
        for name, (type_name, uid) in present.items():
            if name in self._known:
                continue
            attached = self._attach(type_name, uid, name)
            if attached is not None:
                self._known[name] = attached
                appeared.append(attached)
        return appeared, gone

    def segments(self) -> list[Segment]:
        """The segments attached and not gone, as of the last look."""
        return list(self._known.values())

    def forget(self, name: str) -> Segment | None:
        """Stop following a segment (the caller closes its buffer): the next look attaches it anew."""
        return self._known.pop(name, None)

    def _attach(self, type_name: str, uid: int, name: str) -> Segment | None:
        inode = _inode(name)
        try:
            buffer = self.catalog[type_name].attach(name, create=False)
        except DeviceBufferError as exc:
            if name not in self._refused:  # say it once
                self._refused.add(name)
                if self.on_refused is not None:
                    self.on_refused(name, exc)
                else:
                    logger.warning("cannot open %s: %s", name, exc.message)
            return None
        if inode is None or _inode(name) != inode:  # replaced meanwhile: next time
            buffer.close()
            return None
        self._refused.discard(name)
        return Segment(type_name, uid, name, buffer, inode)


class _Group:
    """A thread sleeping in :func:`~runtime.notify.wait_any` on up to WATCHED_PER_THREAD buffers."""

    def __init__(self, watcher: BufferWatcher, index: int) -> None:
        self.watcher = watcher
        self.lock = threading.Lock()
        self.members: list[Watched] = []
        self.adds: list[Watched] = []
        self.removes: list[Watched] = []
        self.thread = threading.Thread(
            target=self.run, name=f"runtime-watch-{watcher.block}-{index}", daemon=True
        )

    @property
    def load(self) -> int:
        with self.lock:
            return len(self.members) + len(self.adds) - len(self.removes)

    def run(self) -> None:
        watcher = self.watcher
        wanted = watcher.wanted
        try:
            while not watcher.stopping.is_set():
                self._apply_inbox()
                now = time.monotonic()
                # Sleep on the buffers somebody wants and no rate limit holds back; the others are
                # looked at when due, or (validity only) at every round.
                active, due, idle = [], [], []
                for watched in self.members:
                    if watched.due is not None:
                        due.append(watched)
                    elif wanted is None or wanted(watched):
                        active.append(watched)
                    else:
                        idle.append(watched)
                timeout = WAIT_SLICE
                if due:
                    timeout = min(timeout, max(0.0, min(w.due or now for w in due) - now))
                changed: list[Buffer] = []
                if active:
                    try:
                        changed = wait_any([w.buffer for w in active], timeout, block=watcher.block)
                    except DeviceBufferError:  # a handle closed under us: drop it at the next round
                        logger.debug("wait failed", exc_info=True)
                        with self.lock:
                            self.removes.extend(w for w in self.members if w.buffer.closed)
                        watcher.stopping.wait(timeout)  # never a busy loop
                else:
                    watcher.stopping.wait(timeout)
                now = time.monotonic()
                if changed:
                    by_handle = {id(w.buffer): w for w in active}
                    for buffer in changed:
                        watcher._changed(by_handle[id(buffer)], now)
                for watched in due:
                    if watched.due is not None and watched.due <= now:
                        wait_any([watched.buffer], 0, block=watcher.block)  # what it is due for: taken
                        watcher._deliver(watched, now)
                for watched in idle:
                    if watched.buffer.valid != watched.valid:
                        watcher._deliver(watched, now)
        except Exception:
            logger.exception("watching buffers failed")
            watcher.failed = True
            watcher.stopping.set()
        finally:
            for watched in self.members:
                watched.buffer.close()

    def _apply_inbox(self) -> None:
        """Take the buffers added and removed."""
        with self.lock:
            if not self.adds and not self.removes:
                return
            adds, self.adds = self.adds, []
            removes, self.removes = self.removes, []
        for watched in adds:
            self.members.append(watched)
            watched.due = time.monotonic()  # its state now: where a recording of it starts
        for watched in removes:
            if watched in self.members:
                self.members.remove(watched)
                watched.buffer.close()
                self.watcher._gone(watched)


class BufferWatcher:
    """Watch the buffers of the current namespace: call back when one appears, changes or disappears.

    Segments are listed every ``discover_interval`` seconds (the buffers that
    appear and disappear); changes wake a thread sleeping in
    :func:`~runtime.notify.wait_any` (one thread per
    :data:`~runtime.notify.WATCHED_PER_THREAD` buffers), never a poll.
    Callbacks run one at a time (under one lock), from the watcher's threads:

    * ``on_appear(watched)`` before anything else about that buffer;
    * ``on_change(watched)`` with the current state to read: at once when it
      appears, then when its ``block`` changed or its validity did. With
      ``min_interval``, changes of one buffer are delivered at most that often
      (a change within the interval is delivered at its end: the last state
      is never lost, and the buffer is not even looked at meanwhile).
      ``watched.valid`` is the validity read just before the call,
      ``watched.was_valid`` the one of the call before (None the first time);
    * ``on_disappear(watched)`` when its segment is gone (or was replaced).

    Args:
        catalog: The device types (buffers of other types are ignored).
        select: Which ``(type, uid)`` to watch (default: all).
        block: ``"update"`` (values from the device) or ``"write"`` (writes to it).
        namespace: The namespace to watch (default: the current one, when made).
        wanted: Whether a buffer's changes are wanted now (default: always). The
            changes of one that is not are not even waited for: only a change of its
            validity is delivered (noticed within :data:`WAIT_SLICE`).
    """

    def __init__(
        self,
        catalog: dict[str, type[Buffer]],
        *,
        on_change: Callable[[Watched], None],
        on_appear: Callable[[Watched], None] | None = None,
        on_disappear: Callable[[Watched], None] | None = None,
        select: Callable[[str, int], bool] | None = None,
        block: Block = "update",
        min_interval: float = 0.0,
        discover_interval: float = DISCOVER_INTERVAL,
        namespace: str | None = None,
        wanted: Callable[[Watched], bool] | None = None,
    ) -> None:
        self.catalog = catalog
        self.namespace = namespace or BufferStore.namespace()
        self.on_change = on_change
        self.on_appear = on_appear
        self.on_disappear = on_disappear
        self.select = select
        self.block: Block = block
        self.min_interval = min_interval
        self.wanted = wanted
        self.discover_interval = discover_interval
        self.stopping = threading.Event()
        self.failed = False
        """Whether a watcher thread died of an unexpected error (logged)."""
        self.callback_lock = threading.RLock()
        self._known: dict[str, Watched] = {}
        self._groups: list[_Group] = []
        self._segments = SegmentDiscovery(
            catalog,
            self.namespace,
            select=lambda type_name, uid: self.select is None or self.select(type_name, uid),
            on_refused=lambda name, exc: logger.warning("cannot watch %s: %s", name, exc.message),
        )

    # -- what the user calls --

    def run(self, stop: threading.Event) -> None:
        """Watch until ``stop`` is set (or a watcher thread failed); then close everything."""
        try:
            while not stop.is_set() and not self.stopping.is_set():
                self.discover()
                stop.wait(self.discover_interval)
        finally:
            self.stopping.set()
            for group in self._groups:
                if group.thread.is_alive():
                    group.thread.join()

    def watched(self) -> list[Watched]:
        """The buffers being watched now."""
        return list(self._known.values())

    def refresh(self, topic: str, delay: float = 0.0) -> None:
        """Deliver the state of the buffer of this topic again, in ``delay`` s (within :data:`WAIT_SLICE`)."""
        for watched in list(self._known.values()):
            if watched.topic == topic:
                watched.due = time.monotonic() + delay

    def discover(self) -> None:
        """Start watching the buffers that appeared; stop watching those that disappeared."""
        appeared, gone = self._segments.discover()
        for segment in gone:
            watched = self._known.pop(segment.name)
            self._group_of(watched, remove=True)
        for index, segment in enumerate(appeared):
            attached = Watched(segment.type_name, segment.uid, segment.name, segment.buffer, segment.inode)
            self._known[segment.name] = attached
            try:
                with self.callback_lock:
                    if self.on_appear is not None:
                        self.on_appear(attached)
            except BaseException:
                for rest in appeared[index + 1 :]:  # not watched yet: found again at the next look
                    self._segments.forget(rest.name)
                    rest.buffer.close()
                raise
            self._group_of(attached)

    # -- inside --

    def _group_of(self, watched: Watched, *, remove: bool = False) -> None:
        if remove:
            for group in self._groups:
                with group.lock:
                    if watched in group.members or watched in group.adds:
                        group.removes.append(watched)
                        return
            return
        chosen = next((g for g in self._groups if g.load < WATCHED_PER_THREAD), None)
        if chosen is None:
            chosen = _Group(self, len(self._groups))
            self._groups.append(chosen)
            chosen.thread.start()
        with chosen.lock:
            chosen.adds.append(watched)

    def _changed(self, watched: Watched, now: float) -> None:
        valid = watched.buffer.valid
        if valid != watched.valid or now - watched.last_delivery >= self.min_interval:
            self._deliver(watched, now)
        elif watched.due is None:
            watched.due = watched.last_delivery + self.min_interval

    def _deliver(self, watched: Watched, now: float) -> None:
        watched.due = None
        watched.last_delivery = now
        watched.was_valid, watched.valid = watched.valid, watched.buffer.valid
        try:
            with self.callback_lock:
                self.on_change(watched)
        except RuntimeBaseException as exc:  # the buffer is stuck (a lock held too long): go on
            logger.warning("%s: %s", watched.name, exc)

    def _gone(self, watched: Watched) -> None:
        if self.on_disappear is not None:
            with self.callback_lock:
                self.on_disappear(watched)


def find_segments(catalog: Mapping[str, type[Buffer]], namespace: str) -> list[tuple[str, int, str]]:
    """The catalog's segments in ``namespace``: the library's :meth:`BufferStore.find_segments
    <runtime.store.BufferStore.find_segments>`, for a watcher that keeps to its own namespace."""
    return BufferStore(catalog).find_segments(namespace)


def _inode(name: str) -> int | None:
    try:
        return os.stat(os.path.join(SHM_DIR, name)).st_ino
    except OSError:
        return None
