"""Fault injectors for synchronous tests, each on its own event loop thread and on loopback only:
`PgCut` (PostgreSQL through a TcpProxy the test cuts and restores) and `RawUpstream` (a provider that
breaks at the socket level: resets a connection, or takes a request and never answers)."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections.abc import Coroutine
from typing import Any, Literal, TypeVar

from tests.pg import PG_PORT, TcpProxy

T = TypeVar("T")


class LoopThread:
    """An asyncio loop on a daemon thread; `run(coro)` runs a coroutine there and returns its result."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self.loop.close()


class PgCut:
    """PostgreSQL on 127.0.0.1:`port` through a TcpProxy: `cut()` refuses new connections and closes the
    open ones (the server itself is never touched), `restore()` listens again on the same port."""

    def __init__(self, target_port: int = PG_PORT) -> None:
        self._loop = LoopThread("pg-cut")
        self._proxy = TcpProxy(target_port)
        self._loop.run(self._proxy.start())
        self.port = self._proxy.port

    def cut(self) -> None:
        self._loop.run(self._proxy.cut())

    def restore(self) -> None:
        self._loop.run(self._proxy.start())

    def close(self) -> None:
        self._loop.run(self._proxy.cut())
        self._loop.close()

    def __enter__(self) -> PgCut:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


Mode = Literal["reset_on_accept", "reset_after_request", "reset_mid_headers", "silent"]


class RawUpstream:
    """A loopback HTTP "provider" that misbehaves below HTTP, chosen by `mode`:

    reset_on_accept      RST the connection as soon as it is accepted
    reset_after_request  read the whole request, then RST (the provider died before answering)
    reset_mid_headers    read the request, send half a status line, then RST
    silent               read the request and never answer; `disconnects` counts peers that hung up

    `requests` counts requests read whole. Counters are read from the test's thread (ints: no lock needed).
    """

    def __init__(self, mode: Mode) -> None:
        self.mode = mode
        self.accepted = 0
        self.requests = 0
        self.disconnects = 0
        self._loop = LoopThread(f"raw-upstream-{mode}")
        self._server = self._loop.run(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = int(self._server.sockets[0].getsockname()[1])
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.accepted += 1
        try:
            if self.mode == "reset_on_accept":
                return _reset(writer)
            if not await _read_request(reader):
                return _reset(writer)
            self.requests += 1
            if self.mode == "reset_after_request":
                return _reset(writer)
            if self.mode == "reset_mid_headers":
                writer.write(b"HTTP/1.1 200 O")
                await writer.drain()
                await asyncio.sleep(0.05)
                return _reset(writer)
            while await reader.read(65536):  # silent: wait for the peer to give up
                pass
            self.disconnects += 1
            writer.close()
        except (OSError, asyncio.IncompleteReadError):
            self.disconnects += 1
        finally:
            self._tasks.discard(task)

    def close(self) -> None:
        async def stop() -> None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

        self._loop.run(stop())
        self._loop.close()

    def __enter__(self) -> RawUpstream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def _read_request(reader: asyncio.StreamReader) -> bool:
    """Read one HTTP/1.1 request with a Content-Length body; False if the peer went away first."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        return False
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    if length:
        await reader.readexactly(length)
    return True


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with SO_LINGER 0: the peer gets a TCP RST, not an orderly FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
