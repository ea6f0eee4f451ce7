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
"""

from __future__ import annotations

import errno
import logging
import os
import re
import stat
import time
from collections.abc import Mapping
from typing import Any

from .student import log_lines_since

__all__ = [
    "CHUNK_SIZE",
    "LOG_TOPIC",
    "METADATA_NAME",
    "PROFILE",
    "RECORDING_FORMAT",
    "TOPIC_PREFIX",
    "McapOutput",
    "NotRegularFileError",
    "StudentLog",
    "log_schema",
    "not_a_regular_file",
    "open_regular",
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
        if self.error is None:
            self.pending += data
        return len(data)

    def tell(self) -> int:
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
