"""The origin gate: who may connect to the live view (:mod:`runtime.live`).

The Foxglove SDK's server cannot see a connection's HTTP headers, so it
listens on a free port of 127.0.0.1 and :class:`OriginGate`, on the address
asked for, reads each WebSocket handshake and relays only those of an allowed
``Origin`` (:func:`origin_allowed`), at most :data:`CONNECTIONS_LIMIT` at once.
From ``/proc``, :func:`count_connections` counts this process's connections on
a port and :func:`shut_sockets` shuts some down (those that bypassed the gate);
:func:`loopback` says whether an address is this machine's only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
from collections.abc import Collection

from .._core import Relay
from ..remote import quote

__all__ = [
    "CONNECTIONS_LIMIT",
    "FOXGLOVE_ORIGINS",
    "HANDSHAKE_LIMIT",
    "HANDSHAKE_TIMEOUT",
    "OriginGate",
    "count_connections",
    "loopback",
    "origin_allowed",
    "shut_sockets",
]

logger = logging.getLogger(__name__)

FOXGLOVE_ORIGINS = ("https://app.foxglove.dev",)
"""The browser origins always accepted: the Foxglove web app. Its desktop app (Electron) sends
``file://`` or a ``foxglove://`` origin, and programs send none: accepted too (a web page cannot)."""
HANDSHAKE_LIMIT = 16384
"""The most bytes of a WebSocket handshake (request line and headers): a longer one is refused."""
HANDSHAKE_TIMEOUT = 10.0
"""Seconds a connection has to send its handshake."""
CONNECTIONS_LIMIT = 64
"""Connections served at once; more are refused (503)."""


def origin_allowed(origin: str | None, allowed: Collection[str] = ()) -> bool:
    """Whether a WebSocket client with this ``Origin`` header may connect.

    No header: not a browser (a program; Foxglove's desktop app may send
    none), accepted. Otherwise the Foxglove web app (:data:`FOXGLOVE_ORIGINS`),
    the desktop app's ``file://`` or ``foxglove://...`` (no web page has
    those), or one of ``allowed`` (``--allow-origin``). Every other page, on any
    site or on this machine (``http://localhost:3000``), is refused: it would
    read the robot and, with ``--allow-write``, drive it.

    >>> origin_allowed(None), origin_allowed("https://app.foxglove.dev"), origin_allowed("file://")
    (True, True, True)
    >>> origin_allowed("http://evil.example"), origin_allowed("null")
    (False, False)
    >>> origin_allowed("http://localhost:3000", ["http://localhost:3000"])
    True
    """
    if origin is None:
        return True
    origin = origin.strip().rstrip("/").lower()
    return (
        origin in FOXGLOVE_ORIGINS
        or origin in {o.strip().rstrip("/").lower() for o in allowed}
        or origin == "file:"  # file://, its trailing slashes stripped
        or origin.startswith("foxglove://")
    )


class OriginGate:
    """The address clients connect to: checks each WebSocket handshake's ``Origin``, then relays it.

    The Foxglove SDK's server does not tell its listener anything of a
    connection's handshake, so it listens on a free port of 127.0.0.1 and this
    gate, on the address asked for, lets through only the handshakes of
    allowed origins (:func:`origin_allowed`; a refused one gets ``403
    Forbidden`` and is closed). An asyncio loop in a thread of its own reads
    the handshakes; the connections let through are relayed both ways by the
    compiled core (:class:`runtime._core.Relay`: a thread outside the
    interpreter, no Python per message). :meth:`foreign` finds connections to
    the inner port that bypassed the gate (a local program that found it):
    :class:`~runtime.live.LiveView` closes them and refuses writes meanwhile.
    """

    def __init__(self, host: str, port: int, inner_port: int, allowed: Collection[str]) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.create_server((host, port), family=family, backlog=128)
        self.sock.setblocking(False)
        self.port: int = self.sock.getsockname()[1]
        self.inner_port = inner_port
        self.allowed = tuple(allowed)
        self.relayed = 0
        """Connections let through."""
        self.refused = 0
        """Connections refused (origin, malformed or too long handshake, too many)."""
        self._relay = Relay()
        self._connecting: set[int] = set()
        """The local ports of connections to the inner port not handed to the relay yet."""
        self._handshakes = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._origins_said: set[str] = set()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="foxglove-origin-gate", daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        accepting = self._loop.create_task(self._accept())
        self._loop.call_soon(self._ready.set)
        try:
            self._loop.run_forever()
        finally:
            tasks = [accepting, *self._tasks]
            for task in tasks:
                task.cancel()
            self._loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            self._loop.close()

    def close(self) -> None:
        """Stop listening and drop every connection."""
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._relay.close()
        self.sock.close()

    def ours(self) -> set[int]:
        """The local ports of the gate's connections to the inner port (a copy)."""
        return set(self._connecting) | set(self._relay.active())

    def _say_refused(self, origin: str, why: str) -> None:
        """Log a refused connection: once per origin (the first 100), then only count."""
        self.refused += 1
        key = quote(origin)
        if key in self._origins_said or len(self._origins_said) >= 100:
            return
        self._origins_said.add(key)
        logger.warning(
            "refused a connection: %s (runtime foxglove --allow-origin ORIGIN accepts a page's)", why
        )

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                client, _ = await loop.sock_accept(self.sock)
            except OSError as exc:  # out of descriptors, say: the next one may be accepted
                logger.warning("cannot accept a connection: %s", exc)
                await asyncio.sleep(0.1)
                continue
            task = loop.create_task(self._handle(client))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _handle(self, client: socket.socket) -> None:
        with client:
            if self._handshakes + self._relay.count >= CONNECTIONS_LIMIT:
                self._say_refused("<too many>", f"more than {CONNECTIONS_LIMIT} connections at once")
                await _answer(client, 503, "too many connections")
                return
            self._handshakes += 1
            try:
                await self._let_through(client)
            finally:
                self._handshakes -= 1

    async def _let_through(self, client: socket.socket) -> None:
        """Read the handshake; relay the connection if its origin is allowed, else answer why not."""
        loop = asyncio.get_running_loop()
        try:
            head, rest = await asyncio.wait_for(_read_handshake(client), HANDSHAKE_TIMEOUT)
        except (ValueError, TimeoutError, OSError):
            self._say_refused("<handshake>", "no WebSocket handshake (too long, too slow, or none)")
            await _answer(client, 400, "bad request")
            return
        origins = [
            value.strip()
            for name, _, value in (line.partition(":") for line in head.decode("latin-1").split("\r\n")[1:])
            if name.strip().lower() == "origin"
        ]
        origin = origins[0] if len(origins) == 1 else None
        if len(origins) > 1 or not origin_allowed(origin, self.allowed):
            shown = quote(origins[0] if len(origins) == 1 else origins)
            self._say_refused(shown, f"origin {shown} is not allowed")
            await _answer(client, 403, f"origin {shown} is not allowed (runtime foxglove --allow-origin)")
            return
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as inner:
            local = 0
            try:
                inner.bind(("127.0.0.1", 0))
                local = inner.getsockname()[1]
                self._connecting.add(local)  # before the connection exists: never taken for a foreign one
                inner.setblocking(False)
                await loop.sock_connect(inner, ("127.0.0.1", self.inner_port))
                await loop.sock_sendall(inner, head + rest)
            except OSError as exc:
                self._connecting.discard(local)
                logger.error("cannot reach the Foxglove server: %s", exc)
                await _answer(client, 502, "the Foxglove server is not reachable")
                return
            try:
                self._relay.add(client.detach(), inner.detach(), local)  # the relay's from now on
                self.relayed += 1
            except (OSError, ValueError) as exc:  # closed meanwhile, or out of memory or descriptors
                logger.error("cannot relay a connection: %s", exc)
            finally:
                self._connecting.discard(local)

    def foreign(self) -> list[int] | None:
        """The socket inodes of connections to the inner port that are not the gate's; None if unknown."""
        rows = _tcp_rows()
        if rows is None:
            return None
        ours = self.ours()
        return [inode for local, remote, inode in rows if local == self.inner_port and remote not in ours]


async def _read_handshake(client: socket.socket) -> tuple[bytes, bytes]:
    """A WebSocket handshake (request line and headers), and the bytes the client sent after it.

    Raises:
        ValueError: It is longer than :data:`HANDSHAKE_LIMIT`, or the client ended before its end.
    """
    loop = asyncio.get_running_loop()
    data = b""
    while (end := data.find(b"\r\n\r\n")) < 0:
        if len(data) > HANDSHAKE_LIMIT:
            raise ValueError("handshake too long")
        chunk = await loop.sock_recv(client, 4096)
        if not chunk:
            raise ValueError("the client ended before its handshake did")
        data += chunk
    if end + 4 > HANDSHAKE_LIMIT:
        raise ValueError("handshake too long")
    return data[: end + 4], data[end + 4 :]


async def _answer(client: socket.socket, code: int, text: str) -> None:
    """An HTTP error answer to a refused handshake (the caller closes the connection)."""
    reason = {400: "Bad Request", 403: "Forbidden", 502: "Bad Gateway", 503: "Service Unavailable"}[code]
    body = (text + "\n").encode("utf-8", "replace")
    answer = (
        f"HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )
    with contextlib.suppress(OSError, TimeoutError):
        await asyncio.wait_for(asyncio.get_running_loop().sock_sendall(client, answer), 5)
        client.shutdown(socket.SHUT_WR)
        # What the client sent and nobody read would make the close a reset, which may cost the
        # client the answer: read it (what has come; none of it is waited for).
        for _ in range(HANDSHAKE_LIMIT // 4096 + 1):
            if not client.recv(4096):
                break


_TCP_ESTABLISHED = 1
"""``TCP_ESTABLISHED``, the state in the first byte of ``TCP_INFO``."""


def _tcp_rows() -> list[tuple[int, int, int]] | None:
    """This process's connected TCP sockets (local port, remote port, socket inode); None: unknown.

    Asked of each socket itself (its name and its peer's, on a duplicate of its
    descriptor): reading ``/proc/net/tcp`` walks the whole kernel's table of
    connections (a millisecond of CPU on some machines, twice a second).
    """
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return None
    rows = []
    for fd in names:
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
            if not target.startswith("socket:["):
                continue
            with socket.socket(fileno=os.dup(int(fd))) as sock:
                if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_STREAM:
                    continue
                if sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0] != _TCP_ESTABLISHED:
                    continue  # tcpi_state: only established connections count
                local, remote = sock.getsockname()[1], sock.getpeername()[1]
        except (OSError, ValueError):  # closed meanwhile, or not connected
            continue
        rows.append((local, remote, int(target[8:-1])))
    return rows


def shut_sockets(inodes: Collection[int]) -> int:
    """Shut down this process's sockets of these inodes (their owner then sees them closed); how many."""
    wanted = {f"socket:[{inode}]" for inode in inodes}
    done = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError, ValueError):
            if os.readlink(f"/proc/self/fd/{fd}") in wanted:
                with socket.socket(fileno=os.dup(int(fd))) as sock:
                    sock.shutdown(socket.SHUT_RDWR)
                done += 1
    return done


def count_connections(port: int) -> int | None:
    """The established TCP connections of this process on its local port ``port``; None if unknown."""
    rows = _tcp_rows()
    return None if rows is None else sum(1 for local, _, _ in rows if local == port)


def loopback(host: str) -> bool:
    """Whether ``host`` is an address of this machine only (127.0.0.0/8, ::1, localhost)."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
