"""MCAP recordings of buffers: topics, schemas, and a file that stays readable.

The recording format (``runtime record`` writes it, ``runtime replay`` and
``runtime foxglove`` share its topics):

* topic ``/runtime/<type>/<uid hex>`` (:func:`topic_of`): a buffer's states,
  JSON, schema :func:`runtime.schema.buffer_schema`;
* topic ``/runtime/<type>/<uid hex>/write``: what was written to a device;
* topic ``/log`` (:data:`LOG_TOPIC`): what student code printed, as
  ``foxglove.Log`` messages (:func:`log_schema`, :class:`StudentLog`);
* metadata ``runtime`` (:data:`METADATA_NAME`): format
  :data:`RECORDING_FORMAT`, the namespace, the catalog's description.

:class:`McapOutput` is the file an MCAP writer writes: a complete MCAP file
(without index) after every flush, written only to a regular file
(:func:`open_regular`), cut back to its last good flush when a write fails.

Reading a recording (``runtime replay``): :func:`open_recording` checks a
file (MCAP, made by ``runtime record``, its recorded catalog the same as the
one in use) and describes it (:class:`Recording`); :func:`iter_states` reads
its states (:class:`RecordedState`) as a stream, so that a long recording
costs little memory and a file whose recorder was killed reads up to where it
ends. What cannot be read or recorded raises :class:`RecordingError`, one
line that says why. :func:`recording_info` summarizes any MCAP file
(``runtime record info``): its topics, counts, rates, devices, duration, size
and whether it has an index.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import re
import stat
import struct
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from .exception import RuntimeBaseException
from .student import log_lines_since

if TYPE_CHECKING:
    from .buffer import Buffer

__all__ = [
    "CHUNK_SIZE",
    "LOG_TOPIC",
    "MAX_SPAN",
    "MCAP_MAGIC",
    "METADATA_NAME",
    "PROFILE",
    "RECORDING_FORMAT",
    "RECORD_SIZE_LIMIT",
    "TOPIC_PREFIX",
    "McapOutput",
    "NotRegularFileError",
    "RecordedState",
    "Recording",
    "RecordingError",
    "StudentLog",
    "catalog_damage",
    "iter_states",
    "log_schema",
    "not_a_regular_file",
    "RecordingInfo",
    "TopicInfo",
    "open_recording",
    "open_regular",
    "recording_info",
    "parse_topic",
    "topic_of",
]

logger = logging.getLogger(__name__)

TOPIC_PREFIX = "/runtime"
"""The first part of every buffer's topic."""
RECORDING_FORMAT = "runtime-recording/1"
"""The ``format`` of the ``runtime`` metadata record; ``runtime replay`` reads this format."""
METADATA_NAME = "runtime"
"""The name of the MCAP metadata record that describes the recording."""
PROFILE = ""
"""The MCAP profile (none: JSON messages with JSON Schemas are understood without one)."""
CHUNK_SIZE = 4 * 1024 * 1024
"""The largest chunk (uncompressed); a chunk is closed at every flush anyway."""
RECORD_SIZE_LIMIT = 256 * 1024 * 1024
"""The largest MCAP record read (a chunk of ``runtime record`` holds half a second): larger is damage."""
MAX_SPAN = 366 * 86400
"""The most seconds of recorded time a replay covers (a year): states stamped further apart are damage
(a state stamped 2^64-1 ns would have the replay wait 500 years)."""
MCAP_MAGIC = b"\x89MCAP0\r\n"
"""The first bytes of every MCAP file."""


class RecordingError(RuntimeBaseException):
    """A recording cannot be written or read: the message says why, in one line.

    Raised by :func:`open_recording` (not an MCAP file, not made by ``runtime
    record``, made with another catalog, damaged), by the recorder
    (:class:`runtime.recorder.Recorder`: a file that exists or cannot be
    written, a full disk) and by the replayer
    (:class:`runtime.recorder.Replayer`: a namespace where live processes
    serve buffers). ``runtime record`` and ``runtime replay`` print
    :attr:`message` as their one-line error.
    """


# ---- topics ---------------------------------------------------------------------------------------

_TOPIC = re.compile(r"/runtime/(?P<type>[^/]+)/0x(?P<uid>[0-9a-f]+)(?P<write>/write)?")


def topic_of(type_name: str, uid: int) -> str:
    """The topic of a buffer: ``/runtime/<type>/<uid hex>``.

    >>> topic_of("yogi-bear", 0xA0A0000000000C0FFEE)
    '/runtime/yogi-bear/0xa0a0000000000c0ffee'
    """
    return f"{TOPIC_PREFIX}/{type_name}/{uid:#x}"


def parse_topic(topic: str) -> tuple[str, int, bool] | None:
    """``(type, uid, is_write_topic)`` of a topic of :func:`topic_of` (or its ``/write``), else None.

    >>> parse_topic("/runtime/gamepad/0x0/write"), parse_topic("/other")
    (('gamepad', 0, True), None)
    """
    match = _TOPIC.fullmatch(topic)
    if match is None:
        return None
    return match["type"], int(match["uid"], 16), match["write"] is not None


# ---- what student code prints ----------------------------------------------------------------------

LOG_TOPIC = "/log"
"""The topic of the lines student code printed (``foxglove.Log`` messages), as ``runtime foxglove`` has it."""
LOG_NAME = "student"
"""The ``name`` of those messages (Foxglove's Log panel shows and filters by it)."""
LOG_INFO, LOG_WARNING = 2, 3
"""Levels of ``foxglove.Log``: a printed line; the lines lost."""


def log_schema() -> dict[str, Any]:
    """The JSON Schema of Foxglove's ``foxglove.Log`` message (the fields and levels of Foxglove's own).

    Foxglove knows the messages of a schema of that name (its Log panel shows
    them), whatever the encoding: this one is JSON, as the buffers' topics.
    """
    return {
        "title": "foxglove.Log",
        "description": "A log message",
        "type": "object",
        "properties": {
            "timestamp": {
                "type": "object",
                "title": "time",
                "properties": {
                    "sec": {"type": "integer", "minimum": 0},
                    "nsec": {"type": "integer", "minimum": 0, "maximum": 999_999_999},
                },
                "description": "Timestamp of log message",
            },
            "level": {
                "title": "foxglove.LogLevel",
                "description": "Log level",
                "oneOf": [
                    {"title": title, "const": number}
                    for number, title in enumerate(("UNKNOWN", "DEBUG", "INFO", "WARNING", "ERROR", "FATAL"))
                ],
            },
            "message": {"type": "string", "description": "Log message"},
            "name": {"type": "string", "description": "Process or node name"},
            "file": {"type": "string", "description": "Filename"},
            "line": {"type": "integer", "minimum": 0, "description": "Line number in the file"},
        },
    }


class StudentLog:
    """The lines student code printed, as ``foxglove.Log`` messages, from the states of the runner's buffer.

    One per reader of one ``runner`` buffer (key :data:`runtime.student.RUNNER_KEY`).
    The first state read gives the lines its ``log`` still holds (those before
    were printed before anyone read them: they are not reported lost); each
    later one the lines printed since (:func:`runtime.student.log_lines_since`),
    after a warning that says how many no longer fit in ``log`` when it was read.

    >>> reader = StudentLog()
    >>> [m["message"] for m in reader.messages({"lines": 7, "log": "f\\ng"}, 0.0)]
    ['f', 'g']
    >>> [m["message"] for m in reader.messages({"lines": 11, "log": "j\\nk"}, 0.0)]
    ['2 lines printed were lost (printed faster than read)', 'j', 'k']
    """

    def __init__(self) -> None:
        self.seen: int | None = None
        """The count of lines printed at the last state read (None: none read yet)."""

    def messages(self, values: Mapping[str, Any] | None, stamp: float) -> list[dict[str, Any]]:
        """The messages of the lines printed since the last state read (``values`` of :func:`read_state`).

        ``stamp`` (:func:`time.time`) is their timestamp: when they were read
        (the runner starts each line with the time it was printed). An invalid
        buffer (``values`` None: no runner) gives none.
        """
        if values is None:
            return []
        lines = int(values["lines"])
        log = values["log"]
        new, lost = log_lines_since(self.seen or 0, lines, log)
        if self.seen is None:
            lost = 0
        self.seen = lines
        messages = []
        if lost:
            what = "1 line printed was" if lost == 1 else f"{lost} lines printed were"
            messages.append(_log_message(stamp, LOG_WARNING, f"{what} lost (printed faster than read)"))
        messages.extend(_log_message(stamp, LOG_INFO, line) for line in new)
        return messages


def _log_message(stamp: float, level: int, text: str) -> dict[str, Any]:
    nanoseconds = max(0, int(stamp * 1e9))
    return {
        "timestamp": {"sec": nanoseconds // 1_000_000_000, "nsec": nanoseconds % 1_000_000_000},
        "level": level,
        "message": text,
        "name": LOG_NAME,
        "file": "",
        "line": 0,
    }


# ---- the MCAP file ----------------------------------------------------------------------------------


_KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFLNK: "a symbolic link",
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


def not_a_regular_file(path: str) -> str | None:
    """Why ``path`` is no file for a recording (what it is, in words), or None: missing or a regular file.

    Looked at with ``lstat``: a symbolic link is a link, whatever it points to.

    >>> not_a_regular_file("/dev/null"), not_a_regular_file("/no/such/file")
    ('it is a character device', None)
    """
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode):
        return None
    kind = _KINDS.get(stat.S_IFMT(mode), "not a regular file")
    if stat.S_ISLNK(mode):  # where it points, for the user to give that file itself
        try:
            kind += f" (to {os.readlink(path)})"
        except OSError:
            pass
    return f"it is {kind}"


def open_regular(path: str, *, overwrite: bool = False) -> int:
    """Open ``path`` for writing, only if it is (or becomes) a regular file: its descriptor.

    Never follows a symbolic link (``O_NOFOLLOW``), never blocks (a FIFO
    without reader is not waited for: ``O_NONBLOCK``), never truncates what
    it has not checked: the file is truncated (``overwrite``) only after
    ``fstat`` said it is a regular file. Without ``overwrite`` an existing
    file is refused (``O_EXCL``).

    Raises:
        FileExistsError: The file exists and ``overwrite`` is False.
        OSError: It cannot be opened; ``NotRegularFileError`` when it is not a
            regular file (a symlink, a FIFO, a device, a directory, a socket).
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
    if not overwrite:
        flags |= os.O_EXCL
    else:
        problem = not_a_regular_file(path)  # most are refused without even being opened
        if problem is not None:
            raise NotRegularFileError(path, problem)
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as exc:
        problem = not_a_regular_file(path)  # ELOOP (a link), ENXIO (a FIFO), EISDIR...: say what it is
        if problem is not None and not isinstance(exc, FileExistsError):
            raise NotRegularFileError(path, problem) from None
        raise
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):  # replaced between the look and the open
            raise NotRegularFileError(path, f"it is {_KINDS.get(stat.S_IFMT(mode), 'not a regular file')}")
        os.set_blocking(fd, True)
        if overwrite:
            os.ftruncate(fd, 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


class NotRegularFileError(OSError):
    """The path of a recording is not a regular file (a symlink, a FIFO, a device...): never written."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(errno.EINVAL, f"{problem}; a recording is written only to a regular file", path)
        self.problem = problem


class McapOutput:
    """The file an MCAP writer writes (the SDK's), so that it is readable at every flush.

    What the writer writes is kept in memory; each ``flush()`` (the writer
    closes its chunk first) writes it out at once, followed by a provisional
    end: a DataEnd and a Footer without summary, and the magic. The next flush
    writes over that end. So the file is a complete MCAP file (without index)
    between flushes, and a recorder killed at any time leaves one.

    Only a regular file is opened (:func:`open_regular`). A write that fails
    (a full disk: ``ENOSPC``, a file size limit: ``EFBIG``, ``EIO``) never
    raises here: the file is put back as it was after the last good flush (cut
    there, the provisional end written again: a readable MCAP file without
    index), :attr:`error` says what failed, and whatever comes after is
    dropped. The recorder checks :attr:`error` after each flush.
    """

    def __init__(self, path: str, *, overwrite: bool = False) -> None:
        self.path = path
        self.fd = open_regular(path, overwrite=overwrite)
        self.pending = bytearray()
        self.durable = 0
        """Bytes of the file that stay (the provisional end comes after them)."""
        self.durable_at = time.monotonic()
        """:func:`time.monotonic` of the last flush that wrote out everything."""
        self.closed = False
        self.error: OSError | None = None
        """The write that failed (then nothing more is written), else None."""
        self.restored = False
        """After a failure: whether the file was put back as it was after the last good flush."""
        self.kept = 0
        """After a failure put right: the size of the file (its last good flush, the provisional end)."""
        self._end = self.provisional_end()

    @staticmethod
    def provisional_end() -> bytes:
        """DataEnd, a Footer without summary, and the closing magic: 50 bytes."""
        from mcap.data_stream import RecordBuilder
        from mcap.records import DataEnd, Footer
        from mcap.writer import MCAP0_MAGIC

        builder = RecordBuilder()
        DataEnd(data_section_crc=0).write(builder)
        Footer(summary_start=0, summary_offset_start=0, summary_crc=0).write(builder)
        return bytes(builder.end()) + MCAP0_MAGIC  # type: ignore[no-untyped-call]

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Keep what the writer wrote, for the next :meth:`flush` (nothing after a failure)."""
        if self.error is None:
            self.pending += data
        return len(data)

    def tell(self) -> int:
        """Where the writer is: the bytes written out and those kept for the next flush."""
        return self.durable + len(self.pending)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        """Where the writer is: the only seeks a writer that does not seek makes (else ``OSError``)."""
        position = self.tell()
        if (whence == os.SEEK_CUR and offset == 0) or (whence == os.SEEK_SET and offset == position):
            return position
        raise OSError(f"{self.path}: written front to back, no seeking")

    def flush(self) -> None:
        """Write out what the writer wrote, and the provisional end after it (a failure: :attr:`error`)."""
        if self.closed or self.error is not None:
            return
        try:
            self._write_at(bytes(self.pending) + self._end, self.durable)
        except OSError as exc:
            self._fail(exc)
            return
        self.durable += len(self.pending)
        self.durable_at = time.monotonic()
        self.pending.clear()

    def size(self) -> int:
        """Bytes written out so far."""
        return self.durable

    def close(self) -> None:
        """Write out the rest (the writer finished the file) and close (a failure: :attr:`error`)."""
        if self.closed:
            return
        try:
            if self.error is None:
                self._write_at(bytes(self.pending), self.durable)
                self.durable += len(self.pending)
                self.pending.clear()
                os.ftruncate(self.fd, self.durable)
                os.fsync(self.fd)
        except OSError as exc:
            self._fail(exc)
        finally:
            self.closed = True
            os.close(self.fd)

    def _fail(self, exc: OSError) -> None:
        """Note the failure; cut the file back to its last good flush, with the provisional end after."""
        self.error = exc
        self.pending.clear()
        try:
            os.ftruncate(self.fd, self.durable)  # frees what the failed write took: room for the end
            if self.durable:
                self._write_at(self._end, self.durable)
                self.kept = self.durable + len(self._end)
            self.restored = True
        except OSError:
            logger.debug("%s: cannot put the file back after a failed write", self.path, exc_info=True)

    def _write_at(self, data: bytes, offset: int) -> None:
        view = memoryview(data)
        while view:
            written = os.pwrite(self.fd, view, offset)
            view = view[written:]
            offset += written


# ---- reading a recording ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RecordedState:
    """One recorded state of one buffer."""

    time: int
    """The log time: nanoseconds since the epoch when the buffer held it."""
    key: tuple[str, int]
    valid: bool
    values: dict[str, Any] | None


@dataclasses.dataclass
class Recording:
    """What :func:`open_recording` learned of a file before playing it."""

    path: str
    metadata: dict[str, str]
    """The ``runtime`` metadata record."""
    catalog: dict[str, Any]
    """The recorded description of the device types (:func:`runtime.schema.describe_catalog`)."""
    keys: set[tuple[str, int]] = dataclasses.field(default_factory=set)
    """The buffers recorded."""
    messages: int = 0
    """Recorded states (writes excluded)."""
    writes: int = 0
    """Recorded writes (not replayed)."""
    start: int | None = None
    end: int | None = None
    """The first and last log time (ns)."""
    indexed: bool = False
    """Whether the file ends with its index (False: the recorder was killed, or the file is cut)."""
    damaged: str | None = None
    """Why reading stopped before the end of the file, if it did."""

    @property
    def seconds(self) -> float:
        """The time the recording spans."""
        if self.start is None or self.end is None:
            return 0.0
        return (self.end - self.start) / 1e9


def _records(path: str, damage: list[str] | None = None) -> Iterator[Any]:
    """Every record of an MCAP file in order, chunks opened; a damaged tail ends it (said in ``damage``).

    Raises:
        RecordingError: Not even the first record reads (not an MCAP file).
    """
    from mcap.exceptions import InvalidMagic
    from mcap.stream_reader import StreamReader

    with open(path, "rb") as file:
        records = StreamReader(file, record_size_limit=RECORD_SIZE_LIMIT).records
        try:
            yield next(records)
        except InvalidMagic:
            raise RecordingError(
                f"{path} is not an MCAP file (it does not start with the MCAP magic)"
            ) from None
        except Exception as exc:  # noqa: BLE001 - whatever the reader says: not a file we can read
            raise RecordingError(f"{path} is not an MCAP file: {_reason(exc)}") from None
        while True:
            try:
                record = next(records)
            except StopIteration:
                return
            except Exception as exc:  # noqa: BLE001 - a truncated or damaged tail: stop there
                if damage is not None:
                    damage.append(_reason(exc))
                return
            yield record


def _reason(exc: BaseException) -> str:
    from mcap.exceptions import EndOfFile

    if isinstance(exc, EndOfFile | struct.error | EOFError):
        return "the file ends in the middle of a record (its recorder was killed?)"
    return str(exc) or type(exc).__name__


def _summary(path: str) -> tuple[dict[str, str] | None, Any] | None:
    """The ``runtime`` metadata and the summary of a file that ends with its index, else None."""
    from mcap.reader import SeekingReader

    try:
        with open(path, "rb") as file:
            reader = SeekingReader(file, record_size_limit=RECORD_SIZE_LIMIT)
            summary = reader.get_summary()
            if summary is None or summary.statistics is None:
                return None
            metadata = next((m.metadata for m in reader.iter_metadata() if m.name == METADATA_NAME), None)
            return metadata, summary
    except Exception:  # noqa: BLE001 - no usable index: the file is read from the start instead
        return None


def open_recording(path: str, catalog: Mapping[str, type[Buffer]]) -> Recording:
    """Read a recording's description, from its index (or all of it, when it has none); check its catalog.

    Raises:
        RecordingError: The file cannot be read, is not MCAP, was not made by
            ``runtime record``, or its device types differ from ``catalog``
            (the message says how).
    """
    if os.path.isdir(path):
        raise RecordingError(f"cannot read {path}: it is a directory")
    try:
        # Never blocks on a FIFO, never reads a device: a recording is a regular file (a link to one is).
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        with open(fd, "rb") as file:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise RecordingError(f"cannot read {path}: it is not a regular file (a FIFO, a device...)")
            empty = not file.read(1)
    except OSError as exc:
        raise RecordingError(f"cannot read {path}: {exc.strerror}") from None
    if empty:
        raise RecordingError(f"{path} is empty: not an MCAP file")
    with open(path, "rb") as file:
        if file.read(8) != MCAP_MAGIC:
            raise RecordingError(f"{path} is not an MCAP file (it does not start with the MCAP magic)")
    next(_records(path))  # an MCAP file at all?
    indexed = _summary(path)
    recording = _from_index(path, *indexed) if indexed is not None else _from_scan(path)
    from .schema import catalog_differences

    types = {type_name for type_name, _ in recording.keys}
    damaged = catalog_damage(recording.catalog, types)
    if damaged is None:
        try:
            problems = catalog_differences(recording.catalog, catalog, types)
        except (TypeError, ValueError, AttributeError, KeyError, RecursionError) as exc:
            damaged = f"{type(exc).__name__}: {exc}"  # a shape catalog_damage does not know of
    if damaged is not None:
        raise RecordingError(f"{path}: the recorded catalog is damaged ({damaged})")
    _check_span(recording)
    if problems:
        more = f" (and {len(problems) - 1} more differences)" if len(problems) > 1 else ""
        raise RecordingError(f"{path} was recorded with another catalog: {problems[0]}{more}")
    return recording


def _brief(value: Any) -> str:
    """A recorded JSON value in a few words (for an error line; never the whole of a big one)."""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def catalog_damage(catalog: Mapping[str, Any], types: Iterable[str]) -> str | None:
    """What is wrong with the shape of a recorded catalog's descriptions of ``types``, or None.

    Each one must be what :func:`runtime.schema.describe_type` writes: a
    mapping whose ``params`` is a list of mappings, each with a string
    ``name``. A type the catalog does not describe at all is not damage here
    (:func:`runtime.schema.catalog_differences` says so).

    >>> catalog_damage({"servo-motor": {"params": 5}}, ["servo-motor"])
    "servo-motor: 'params' is 5, not a list"
    """
    for name in sorted(types):
        entry = catalog.get(name)
        if entry is None:
            continue
        if not isinstance(entry, dict):
            return f"{name}: its description is {_brief(entry)}, not a mapping"
        params = entry.get("params")
        if not isinstance(params, list):
            return f"{name}: 'params' is {_brief(params)}, not a list"
        for index, param in enumerate(params):
            if not isinstance(param, dict) or not isinstance(param.get("name"), str):
                return f"{name}: parameter {index} is {_brief(param)}, not a mapping with a name"
    return None


def _check_span(recording: Recording) -> None:
    """Refuse a recording whose first and last states are more than :data:`MAX_SPAN` apart."""
    if recording.start is not None and recording.end is not None and recording.seconds > MAX_SPAN:
        raise RecordingError(
            f"{recording.path}: its states are stamped {recording.start} to {recording.end} ns "
            f"({recording.seconds / 86400:.0f} days apart, a replay covers at most {MAX_SPAN // 86400}): "
            "its times are damaged"
        )


def _not_ours(path: str) -> RecordingError:
    return RecordingError(
        f"{path} was not made by 'runtime record': "
        f"it has no {METADATA_NAME!r} metadata describing the buffers"
    )


def _from_index(path: str, metadata: dict[str, str] | None, summary: Any) -> Recording:
    if metadata is None:
        raise _not_ours(path)
    recording = _describe(path, metadata)
    recording.indexed = True
    statistics = summary.statistics
    for channel_id, channel in summary.channels.items():
        parsed = parse_topic(channel.topic)
        if parsed is None or channel.message_encoding != "json":
            continue
        type_name, uid, write = parsed
        count = statistics.channel_message_counts.get(channel_id, 0)
        if write:
            recording.writes += count
        else:
            recording.keys.add((type_name, uid))
            recording.messages += count
    if statistics.message_count:
        recording.start, recording.end = statistics.message_start_time, statistics.message_end_time
    return recording


def _from_scan(path: str) -> Recording:
    from mcap.records import Channel, Message, Metadata

    damage: list[str] = []
    recording: Recording | None = None
    channels: dict[int, bool] = {}
    for record in _records(path, damage):
        if isinstance(record, Metadata) and record.name == METADATA_NAME and recording is None:
            recording = _describe(path, record.metadata)
        elif recording is None:
            if isinstance(record, Channel | Message):
                break  # data before any description: not a file of ours
        elif isinstance(record, Channel):
            parsed = parse_topic(record.topic)
            if parsed is not None and record.message_encoding == "json":
                type_name, uid, write = parsed
                channels[record.id] = write
                if not write:
                    recording.keys.add((type_name, uid))
        elif isinstance(record, Message) and record.channel_id in channels:
            if channels[record.channel_id]:
                recording.writes += 1
                continue
            recording.messages += 1
            if recording.start is None or record.log_time < recording.start:
                recording.start = record.log_time
            if recording.end is None or record.log_time > recording.end:
                recording.end = record.log_time
    if recording is None:
        if damage:
            raise RecordingError(f"{path} is damaged before the description of its buffers: {damage[0]}")
        raise _not_ours(path)
    recording.damaged = damage[0] if damage else None
    return recording


def _describe(path: str, metadata: Mapping[str, str]) -> Recording:
    version = metadata.get("format")
    if version != RECORDING_FORMAT:
        raise RecordingError(
            f"{path}: recording format {version!r}, but this version reads {RECORDING_FORMAT!r}"
        )
    try:
        catalog = json.loads(metadata.get("catalog", ""))
        if not isinstance(catalog, dict):
            raise ValueError("not a mapping")
    except RecursionError:
        raise RecordingError(f"{path}: the recorded catalog is damaged (nested too deep)") from None
    except ValueError as exc:
        raise RecordingError(f"{path}: the recorded catalog is damaged ({exc})") from None
    return Recording(path, dict(metadata), catalog)


def iter_states(path: str, recording: Recording | None = None) -> Iterator[RecordedState]:
    """The recorded states of a file in the order written (writes and other topics skipped).

    A message that does not parse is skipped with a warning; a damaged tail
    ends the iteration (noted in ``recording.damaged``).
    """
    from mcap.records import Channel, Message

    channels: dict[int, tuple[str, int]] = {}
    bad = 0
    damage: list[str] = []
    for record in _records(path, damage):
        if isinstance(record, Channel):
            parsed = parse_topic(record.topic)
            if parsed is not None and not parsed[2] and record.message_encoding == "json":
                channels[record.id] = parsed[0], parsed[1]
        elif isinstance(record, Message):
            key = channels.get(record.channel_id)
            if key is None:
                continue
            try:
                data = json.loads(record.data)
                valid = data["valid"]
                values = data.get("values")
                if not isinstance(valid, bool) or not (values is None or isinstance(values, dict)):
                    raise ValueError("not a state message")
            except (ValueError, KeyError, TypeError, RecursionError):
                bad += 1
                if bad == 1:
                    logger.warning("%s: skipping a message of %s that is not a state", path, key)
                continue
            yield RecordedState(record.log_time, key, valid, values if valid else None)
    if damage and recording is not None:
        recording.damaged = damage[0]


# ---- a recording's summary (runtime record info) ------------------------------------------------


@dataclasses.dataclass
class TopicInfo:
    """One topic (channel) of a recording, as :func:`recording_info` counts it."""

    topic: str
    messages: int = 0
    encoding: str = ""
    schema: str = ""
    """The schema's name ("" if none)."""
    kind: str = "other"
    """``state`` (a buffer's states), ``write`` (writes to a device), ``log`` (student output), ``other``."""
    type: str | None = None
    uid: int | None = None
    """The buffer's device type and UID (``state`` and ``write`` topics)."""
    rate: float | None = None
    """Messages per second over the recording's duration (None: it lasts no time)."""


@dataclasses.dataclass
class RecordingInfo:
    """What :func:`recording_info` says of a file: a plain summary, :meth:`as_dict` for JSON."""

    path: str
    size: int
    """Bytes."""
    indexed: bool
    """Whether the file ends with its index (False: its recorder was killed, or it is cut)."""
    topics: list[TopicInfo]
    messages: int = 0
    start: int | None = None
    end: int | None = None
    """The first and last log time (ns since the epoch)."""
    metadata: dict[str, str] | None = None
    """The ``runtime`` metadata record without its catalog (None: not made by ``runtime record``)."""
    damaged: str | None = None
    """Why reading stopped before the end of the file, if it did."""

    @property
    def duration(self) -> float:
        """Seconds between the first and the last message."""
        if self.start is None or self.end is None:
            return 0.0
        return (self.end - self.start) / 1e9

    @property
    def devices(self) -> list[tuple[str, int]]:
        """The buffers recorded: (type, UID), sorted."""
        return sorted(
            {(t.type, t.uid) for t in self.topics if t.kind == "state" and t.type and t.uid is not None}
        )

    def as_dict(self) -> dict[str, Any]:
        """The summary as JSON-able data."""
        return {
            "path": self.path,
            "size": self.size,
            "indexed": self.indexed,
            "damaged": self.damaged,
            "messages": self.messages,
            "start_ns": self.start,
            "end_ns": self.end,
            "duration": self.duration,
            "metadata": self.metadata,
            "devices": [{"type": type_name, "uid": f"{uid:#x}"} for type_name, uid in self.devices],
            "topics": [
                {**dataclasses.asdict(t), "uid": None if t.uid is None else f"{t.uid:#x}"}
                for t in self.topics
            ],
        }


def _topic_info(topic: str, encoding: str, schema: str) -> TopicInfo:
    info = TopicInfo(topic, encoding=encoding, schema=schema)
    parsed = parse_topic(topic)
    if parsed is not None:
        info.type, info.uid, write = parsed
        info.kind = "write" if write else "state"
    elif topic == LOG_TOPIC:
        info.kind = "log"
    return info


def recording_info(path: str) -> RecordingInfo:
    """Summarize an MCAP file: topics with message counts and rates, devices, duration, size, index.

    From the file's index when it ends with one, else by reading it through
    (a file whose recorder was killed: up to where it ends). Any MCAP file is
    summarized; ``metadata`` says whether ``runtime record`` made it.

    Raises:
        RecordingError: The file cannot be read or is not MCAP.
    """
    from mcap.records import Channel, Message, Metadata, Schema

    if os.path.isdir(path):
        raise RecordingError(f"cannot read {path}: it is a directory")
    try:
        # As open_recording: never blocks on a FIFO, never reads a device.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        with open(fd, "rb") as file:
            status = os.fstat(fd)
            if not stat.S_ISREG(status.st_mode):
                raise RecordingError(f"cannot read {path}: it is not a regular file (a FIFO, a device...)")
            size = status.st_size
            magic = file.read(8)
    except OSError as exc:
        raise RecordingError(f"cannot read {path}: {exc.strerror}") from None
    if magic != MCAP_MAGIC:
        raise RecordingError(f"{path} is not an MCAP file (it does not start with the MCAP magic)")
    next(_records(path))
    indexed = _summary(path)
    metadata: dict[str, str] | None = None
    topics: dict[int, TopicInfo] = {}
    info = RecordingInfo(path, size, indexed is not None, [])
    if indexed is not None:
        metadata, summary = indexed
        statistics = summary.statistics
        for channel_id, channel in sorted(summary.channels.items()):
            schema = summary.schemas.get(channel.schema_id)
            topic = _topic_info(channel.topic, channel.message_encoding, schema.name if schema else "")
            topic.messages = statistics.channel_message_counts.get(channel_id, 0)
            topics[channel_id] = topic
        info.messages = statistics.message_count
        if statistics.message_count:
            info.start, info.end = statistics.message_start_time, statistics.message_end_time
    else:
        damage: list[str] = []
        schemas: dict[int, str] = {}
        for record in _records(path, damage):
            if isinstance(record, Schema):
                schemas[record.id] = record.name
            elif isinstance(record, Channel) and record.id not in topics:
                topics[record.id] = _topic_info(
                    record.topic, record.message_encoding, schemas.get(record.schema_id, "")
                )
            elif isinstance(record, Message):
                info.messages += 1
                if record.channel_id in topics:
                    topics[record.channel_id].messages += 1
                if info.start is None or record.log_time < info.start:
                    info.start = record.log_time
                if info.end is None or record.log_time > info.end:
                    info.end = record.log_time
            elif isinstance(record, Metadata) and record.name == METADATA_NAME and metadata is None:
                metadata = dict(record.metadata)
        info.damaged = damage[0] if damage else None
    if metadata is not None:
        info.metadata = {name: value for name, value in metadata.items() if name != "catalog"}
    duration = info.duration
    for topic in topics.values():
        topic.rate = topic.messages / duration if duration > 0 else None
    info.topics = sorted(topics.values(), key=lambda t: t.topic)
    return info
