"""Shared fixtures: the fake upstream (one per session) and a running proxy in front of it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.servers import free_port
from tests.fakes.upstream import FakeUpstream
from tests.harness import Proxy, make_settings


@pytest.fixture(scope="session")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as up:
        yield up


@pytest.fixture(scope="session")
def closed_port() -> int:
    return free_port()  # nothing listens there: connection refused


@pytest.fixture
def proxy(upstream: FakeUpstream, tmp_path: Path, closed_port: int) -> Iterator[Proxy]:
    upstream.clear()
    with Proxy(make_settings(upstream, tmp_path, closed_port)) as p:
        yield p


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each test using this runs once on SQLite and once on a fresh PostgreSQL database (dropped after)."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'spendgate.db'}"
        return
    import asyncio

    from tests.pg import fresh_pg_database, service_unavailable

    try:
        url, drop = asyncio.run(fresh_pg_database())
    except ConnectionError as exc:
        service_unavailable(str(exc))
    try:
        yield url
    finally:
        asyncio.run(drop())


@pytest.fixture
def any_store_proxy(upstream: FakeUpstream, tmp_path: Path, closed_port: int, store_url: str) -> Iterator[Proxy]:
    """A running proxy whose store is SQLite or PostgreSQL (the test runs on both)."""
    upstream.clear()
    with Proxy(make_settings(upstream, tmp_path, closed_port, store_url=store_url)) as p:
        yield p
