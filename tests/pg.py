"""Test helpers for the machine's PostgreSQL: a throwaway database per test, and a TCP proxy to cut it.

Tests never touch the shared server's settings or existing databases: each gets `spendgate_t_<hex>`,
created through the `test` database and dropped (WITH FORCE) afterwards. When PostgreSQL is unreachable
tests skip with a loud reason, or fail when SPENDGATE_REQUIRE_SERVICES=1 (CI).

Use from a test module or conftest:  `from tests.pg import pg_url  # noqa: F401` (a pytest fixture), or
`url, drop = await fresh_pg_database()` ... `await drop()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import NoReturn

import asyncpg  # type: ignore[import-untyped]
import pytest
import pytest_asyncio

PG_HOST = "127.0.0.1"
PG_PORT = 5432
PG_ADMIN_DATABASE = "test"
PG_USERS = ("postgres", "root")  # trust auth: whichever role exists


def services_required() -> bool:
    return os.environ.get("SPENDGATE_REQUIRE_SERVICES") == "1"


def service_unavailable(reason: str) -> NoReturn:
    """Skip loudly on a laptop; fail when CI says the services must be there."""
    if services_required():
        pytest.fail(f"{reason} (SPENDGATE_REQUIRE_SERVICES=1)")
    pytest.skip(f"SERVICE MISSING, TEST SKIPPED: {reason}")


async def _admin_connect() -> tuple[asyncpg.Connection, str]:
    errors = []
    for user in PG_USERS:
        try:
            conn = await asyncpg.connect(
                host=PG_HOST, port=PG_PORT, user=user, database=PG_ADMIN_DATABASE, timeout=5
            )
            return conn, user
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            errors.append(f"{user}: {type(exc).__name__}: {exc}")
    raise ConnectionError(f"PostgreSQL at {PG_HOST}:{PG_PORT} unreachable ({'; '.join(errors)})")


async def fresh_pg_database(
    prefix: str = "spendgate_t_", *, port: int | None = None
) -> tuple[str, Callable[[], Awaitable[None]]]:
    """Create an empty database; returns (SQLAlchemy asyncpg url, coroutine function that drops it).

    `port` puts another port in the url (e.g. a TcpProxy's) while the database lives on PG_PORT.
    Raises ConnectionError when the server is unreachable.
    """
    name = f"{prefix}{secrets.token_hex(6)}"
    conn, user = await _admin_connect()
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()

    async def drop() -> None:
        admin, _ = await _admin_connect()
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()

    return f"postgresql+asyncpg://{user}@{PG_HOST}:{port or PG_PORT}/{name}", drop


@pytest_asyncio.fixture
async def pg_url() -> AsyncIterator[str]:
    """A fresh, empty PostgreSQL database for one test (SQLAlchemy url), dropped afterwards."""
    try:
        url, drop = await fresh_pg_database()
    except ConnectionError as exc:
        service_unavailable(str(exc))
    try:
        yield url
    finally:
        await drop()


class TcpProxy:
    """A loopback TCP relay to a server, which a test can cut and restore (to simulate an outage
    without touching the shared server). `cut()` closes the listener and every relayed connection."""

    def __init__(self, target_port: int, target_host: str = PG_HOST) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Listen (again) on 127.0.0.1; the first start picks a free port, later ones reuse it."""
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(*self.target)
        except OSError:
            client_w.close()
            return
        self._writers.update((client_w, server_w))
        for reader, writer in ((client_r, server_w), (server_r, client_w)):
            task = asyncio.create_task(self._pipe(reader, writer))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(writer)
            with contextlib.suppress(OSError, RuntimeError):
                writer.close()
