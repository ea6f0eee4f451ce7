"""Watching the buffers of a namespace: which appear, change and disappear, without polling.

:class:`SegmentDiscovery` is the one look for a namespace's segments: each
:meth:`~SegmentDiscovery.discover` lists them, attaches those that appeared
and says which are gone. A segment that is replaced (same name, another
file) is gone and appears anew; one that cannot be opened is tried again at
the next look and reported once. ``runtime zenoh``
(:class:`runtime.remote.server.ZenohServer`) looks through it from its
asyncio loop, and :class:`BufferWatcher` from its thread.

Changes come from a :class:`runtime._core.ChangeFeed`, the one change feed
of every watcher: the compiled core sleeps (``futex_waitv``, the GIL
released) on the sequence words and producer locks of all the buffers it
follows, and wakes its consumer once for a batch of changed buffers
(:meth:`~runtime._core.ChangeFeed.wait` returns, in a thread; or, for
asyncio's ``add_reader``, a thread of the core signals an eventfd).
:meth:`~runtime._core.ChangeFeed.take` then hands over each changed
buffer's values already converted to JSON data (:func:`runtime._core.read_json`,
what :func:`runtime.values.read_state` gives). ``runtime zenoh`` reads it in a thread of its own.

:class:`BufferWatcher` lists the namespace's segments every
:data:`DISCOVER_INTERVAL` seconds and delivers the feed's batches from one
thread, with a rate limit per buffer. ``runtime record`` and ``runtime
foxglove`` are built on it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal

from ._core import ChangeFeed
from .buffer import SHM_DIR, Buffer, DeviceBufferError
from .exception import RuntimeBaseException
from .mcap import topic_of
from .notify import Block
from .store import BufferStore
from .values import BufferState

__all__ = [
    "BATCH_WINDOW",
    "RECORD_BATCH",
    "DISCOVER_INTERVAL",
    "UNCHANGED_AFTER",
    "WAIT_SLICE",
    "BufferWatcher",
    "Segment",
    "SegmentDiscovery",
    "Watched",
    "find_segments",
]

_BLOCKS = {"update": 1, "write": 2, "both": 3}
"""The blocks of a watcher's ``block``, as :meth:`runtime._core.ChangeFeed.add` takes them."""

logger = logging.getLogger(__name__)

DISCOVER_INTERVAL = 0.5
"""Seconds between two looks for buffers that appeared or disappeared."""
BATCH_WINDOW = 0.02
"""The pace of the change feeds of ``runtime zenoh`` and ``runtime foxglove``: at most one batch per
this many seconds. A change after a quiet moment goes out at once; changes that keep coming (a robot's
hundred a second) are handed over together, a few per wake-up instead of one each, at most this late
(changes of one buffer within it go out as its newest values, as their rate limits already do)."""
RECORD_BATCH = 0.01
"""The pace of ``runtime record``'s change feed. Shorter than any Smart Device's subscription interval
(40 ms at least) and a student loop's period (20 ms), so that no state of theirs is merged with the
next; a buffer changed twice within it (a gamepad, say) is recorded with its newest state."""
UNCHANGED_AFTER = 0.05
"""Seconds a directory's modification time must lie before a listing for an unchanged time to mean an
unchanged directory at the next look: a file system may stamp with a coarse clock (a few milliseconds),
and a file made in the same tick as the listing, after it, would leave the time as it was."""
WAIT_SLICE = 0.2
"""The longest a watcher's thread sleeps before asking again which buffers are wanted."""


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
    """The time of the last state its user used (for :meth:`BufferState.since`'s ``previous``)."""
    state: BufferState | None = None
    """The state delivered (read by the core as the change was taken): what ``on_change`` uses,
    through :meth:`~runtime.values.BufferState.since` (its time is the device's ``last_update``,
    or when it was read)."""
    changed: int = 0
    """The blocks whose change is delivered: bit 0 the update block, bit 1 the write block (0: its
    first delivery, a validity change or a refresh only)."""
    wants: bool = True
    """Whether the change feed reads its value changes now (:meth:`BufferWatcher._wants`)."""

    @functools.cached_property
    def key(self) -> tuple[str, int]:
        """The store key ``(type, uid)``."""
        return self.type_name, self.uid

    @functools.cached_property
    def topic(self) -> str:
        """The buffer's topic (:func:`topic_of`; made once: it is asked at every change)."""
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

    A look whose directory has not changed since the last listing (the same
    modification time, which any segment made, unlinked or replaced moves)
    lists nothing: it costs one ``stat`` (see :data:`UNCHANGED_AFTER`).

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
        self._listed: int | None = None
        """The directory's modification time (ns) at a listing that nothing changed since; None: list."""

    def discover(self) -> tuple[list[Segment], list[Segment]]:
        """Look now: ``(appeared, gone)``, each sorted by name.

        ``appeared``: the segments attached in this look (their buffers are
        the caller's). ``gone``: those of earlier looks whose segment vanished
        or was replaced (:attr:`Segment.replaced`); their buffers are not
        closed here (the caller may still be using them).
        """
        modified = _modified(SHM_DIR)
        if modified is not None and modified == self._listed:
            return [], []  # nothing made, unlinked or replaced since the last listing
        self._listed = None
        looked_at = time.time_ns()
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
        if (
            modified is not None
            and looked_at - modified >= UNCHANGED_AFTER * 1e9
            and not (self._refused & present.keys())  # one refused is tried again at the next look
        ):
            self._listed = modified
        return appeared, gone

    def segments(self) -> list[Segment]:
        """The segments attached and not gone, as of the last look."""
        return list(self._known.values())

    def forget(self, name: str) -> Segment | None:
        """Stop following a segment (the caller closes its buffer): the next look attaches it anew."""
        self._listed = None
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


class BufferWatcher:
    """Watch the buffers of the current namespace: call back when one appears, changes or disappears.

    Segments are listed every ``discover_interval`` seconds (the buffers that
    appear and disappear, :class:`SegmentDiscovery`); changes come from one
    :class:`runtime._core.ChangeFeed`: the watcher's one thread sleeps in the
    compiled core (the GIL released) on every buffer's sequence word and
    producer lock, and wakes once for a batch of changes, the feed handing
    over each changed buffer's values already converted to JSON data
    (:func:`runtime.values.read_state`'s state, read by the core). Never a
    poll. Callbacks run one at a time (under one lock), from the watcher's
    threads:

    * ``on_appear(watched)`` before anything else about that buffer;
    * ``on_change(watched)`` with :attr:`Watched.state` the state to use: at
      once when it appears, then when its ``block`` changed or its validity
      did. With ``min_interval``, changes of one buffer are delivered at most
      that often (a change within the interval is delivered at its end with the
      newest state: the last state is never lost, and the buffer's values are
      not even read meanwhile). A batch holds the changes since the watcher's
      thread last woke (at most ``batch`` seconds of them).
      ``watched.valid`` is the validity of that state,
      ``watched.was_valid`` the one of the call before (None the first time);
      :attr:`Watched.changed` says which blocks changed;
    * ``on_disappear(watched)`` when its segment is gone (or was replaced).

    Args:
        catalog: The device types (buffers of other types are ignored).
        select: Which ``(type, uid)`` to watch (default: all).
        block: ``"update"`` (values from the device), ``"write"`` (writes to
            it) or ``"both"`` (one watcher for both; :attr:`Watched.changed`
            tells them apart).
        namespace: The namespace to watch (default: the current one, when made).
        wanted: Whether a buffer's changes are wanted now (default: always),
            asked at every round (within :data:`WAIT_SLICE`). The changes of
            one that is not are not even read: only a change of its validity
            is delivered. One that becomes wanted is delivered its state.
        batch: The pace: at least this many seconds between two batches
            (:data:`BATCH_WINDOW`, say). A change after a quiet moment is
            delivered at once; changes that keep coming wake the watcher once per
            ``batch``, and changes of one buffer within it are delivered as one
            (its newest state). 0 (the default): a wake-up at every change.
        on_stop: Called (under the callback lock) when :meth:`run` ends, before the
            watcher closes its handles (closing a handle ends this process's
            commands on that buffer: a user that ends them itself does it here).
    """

    def __init__(
        self,
        catalog: dict[str, type[Buffer]],
        *,
        on_change: Callable[[Watched], None],
        on_appear: Callable[[Watched], None] | None = None,
        on_disappear: Callable[[Watched], None] | None = None,
        select: Callable[[str, int], bool] | None = None,
        block: Block | Literal["both"] = "update",
        min_interval: float = 0.0,
        discover_interval: float = DISCOVER_INTERVAL,
        namespace: str | None = None,
        wanted: Callable[[Watched], bool] | None = None,
        on_stop: Callable[[], None] | None = None,
        batch: float = 0.0,
    ) -> None:
        if block not in _BLOCKS:
            raise ValueError(f"block must be 'update', 'write' or 'both', not {block!r}")
        self.catalog = catalog
        self.namespace = namespace or BufferStore.namespace()
        self.on_change = on_change
        self.on_appear = on_appear
        self.on_disappear = on_disappear
        self.select = select
        self.block = block
        self.min_interval = min_interval
        self.wanted = wanted
        self.on_stop = on_stop
        self.discover_interval = discover_interval
        self.stopping = threading.Event()
        self.failed = False
        """Whether the watcher's thread died of an unexpected error (logged)."""
        self.callback_lock = threading.RLock()
        self._known: dict[str, Watched] = {}
        self._held: dict[str, Watched] = {}
        """The buffers with a delivery due (:attr:`Watched.due`), by segment name."""
        self._feed = ChangeFeed(batch)
        self._thread: threading.Thread | None = None
        self._segments = SegmentDiscovery(
            catalog,
            self.namespace,
            select=lambda type_name, uid: self.select is None or self.select(type_name, uid),
            on_refused=lambda name, exc: logger.warning("cannot watch %s: %s", name, exc.message),
        )

    # -- what the user calls --

    def run(self, stop: threading.Event) -> None:
        """Watch until ``stop`` is set (or the watcher's thread failed); then close everything."""
        self._thread = threading.Thread(target=self._deliver_changes, name="runtime-watch", daemon=True)
        self._thread.start()
        try:
            while not stop.is_set() and not self.stopping.is_set():
                self.discover()
                stop.wait(self.discover_interval)
        finally:
            self.stopping.set()
            self._feed.wake()
            self._thread.join()
            self._feed.close()
            with self.callback_lock:
                if self.on_stop is not None:
                    self.on_stop()
                for watched in self._known.values():
                    watched.buffer.close()
                self._known.clear()

    def watched(self) -> list[Watched]:
        """The buffers being watched now."""
        return list(self._known.values())

    def refresh(self, topic: str, delay: float = 0.0) -> None:
        """Deliver the state of the buffer of this topic again, in ``delay`` s (within :data:`WAIT_SLICE`)."""
        for watched in list(self._known.values()):
            if watched.topic == topic:
                watched.due = time.monotonic() + delay
                self._held[watched.name] = watched
                if delay <= 0:
                    self._feed.refresh(watched.name)

    def discover(self) -> None:
        """Start watching the buffers that appeared; stop watching those that disappeared."""
        appeared, gone = self._segments.discover()
        for segment in gone:
            watched = self._known.pop(segment.name)
            self._held.pop(segment.name, None)
            self._feed.remove(segment.name)
            with self.callback_lock:
                watched.buffer.close()
                if self.on_disappear is not None:
                    self.on_disappear(watched)
        for index, segment in enumerate(appeared):
            attached = Watched(segment.type_name, segment.uid, segment.name, segment.buffer, segment.inode)
            self._known[segment.name] = attached
            try:
                with self.callback_lock:
                    if self.on_appear is not None:
                        self.on_appear(attached)
            except BaseException:
                del self._known[segment.name]
                for rest in appeared[index:]:  # not watched yet: found again at the next look
                    self._segments.forget(rest.name)
                    rest.buffer.close()
                raise
            # Delivered its state at the next batch: where a recording of it starts.
            attached.wants = self._wants(attached)
            self._feed.add(segment.name, attached.buffer._access, _BLOCKS[self.block], attached.wants)

    # -- inside --

    def _wants(self, watched: Watched) -> bool:
        """Whether its value changes are to be read now: wanted, and no rate limit holds it back."""
        return watched.due is None and (self.wanted is None or self.wanted(watched))

    def _deliver_changes(self) -> None:
        """The watcher's thread: wake once per batch of changes, deliver them, and the held ones when due."""
        feed = self._feed
        asked = -math.inf
        refreshed = False
        try:
            while not self.stopping.is_set():
                timeout = WAIT_SLICE
                if self._held:
                    now = time.monotonic()
                    dues = [w.due for w in list(self._held.values()) if w.due is not None]
                    timeout = min([timeout, *(max(0.0, due - now) for due in dues)])
                ready = refreshed or feed.wait(timeout)
                refreshed = False
                if self.stopping.is_set():
                    break
                now = time.monotonic()
                if ready:
                    # Without a rate limit every change is delivered (the recorder's case): no hold check.
                    deliver = self._changed if self.min_interval > 0 else self._deliver
                    for name, changed, valid, values, stamp in feed.take():
                        watched = self._known.get(name)
                        if watched is not None:
                            deliver(watched, now, BufferState(valid, values, stamp), changed)
                # Held changes that are due: delivered at the next batch, with the newest state.
                for name, watched in list(self._held.items()):
                    if watched.due is None or watched.due <= now:
                        del self._held[name]
                        watched.due = None
                        if feed.refresh(name):
                            self._ask(watched)
                            refreshed = True  # taken at once, not at the feed's next wake-up
                # Who is wanted: asked every WAIT_SLICE (not per batch: an answer may cost microseconds).
                if now - asked >= WAIT_SLICE:
                    asked = now
                    for watched in list(self._known.values()):
                        self._ask(watched)
        except Exception:
            logger.exception("watching buffers failed")
            self.failed = True
            self.stopping.set()

    def _ask(self, watched: Watched) -> None:
        """Tell the feed whether the buffer's value changes are to be read now."""
        wants = self._wants(watched)
        if wants != watched.wants:
            watched.wants = wants
            with contextlib.suppress(KeyError):  # gone meanwhile (discover() removed it)
                self._feed.want(watched.name, wants)

    def _changed(self, watched: Watched, now: float, state: BufferState, changed: int) -> None:
        if (
            watched.valid is None
            or state.valid != watched.valid
            or now - watched.last_delivery >= self.min_interval
        ):
            self._deliver(watched, now, state, changed)
        elif watched.due is None:
            watched.due = watched.last_delivery + self.min_interval
            self._held[watched.name] = watched
            watched.wants = False
            with contextlib.suppress(KeyError):  # gone meanwhile (discover() removed it)
                self._feed.want(watched.name, False)  # not read until then

    def _deliver(self, watched: Watched, now: float, state: BufferState, changed: int) -> None:
        watched.due = None
        watched.last_delivery = now
        watched.state = state
        watched.changed = changed
        watched.was_valid, watched.valid = watched.valid, state.valid
        try:
            with self.callback_lock:
                if watched.name in self._known:
                    self.on_change(watched)
        except RuntimeBaseException as exc:  # the buffer is stuck (a lock held too long): go on
            logger.warning("%s: %s", watched.name, exc)


def find_segments(catalog: Mapping[str, type[Buffer]], namespace: str) -> list[tuple[str, int, str]]:
    """The catalog's segments in ``namespace``: the library's :meth:`BufferStore.find_segments
    <runtime.store.BufferStore.find_segments>`, for a watcher that keeps to its own namespace."""
    return BufferStore(catalog).find_segments(namespace)


def _modified(directory: str) -> int | None:
    """A directory's modification time in nanoseconds; None if it cannot be read."""
    try:
        return os.stat(directory).st_mtime_ns
    except OSError:
        return None


def _inode(name: str) -> int | None:
    try:
        return os.stat(os.path.join(SHM_DIR, name)).st_ino
    except OSError:
        return None
