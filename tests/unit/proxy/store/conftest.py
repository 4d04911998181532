"""Fixtures for the store tests: a `store` on SQLite (tmp_path) and on a throwaway PostgreSQL database."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from proxy.store.config import StoreConfig
from proxy.store.db import Store
from proxy.store.records import CallRecord
from tests.pg import fresh_pg_database, service_unavailable

RecordFactory = Callable[..., CallRecord]
BASE_TIME = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def dialect(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest_asyncio.fixture
async def store_config(dialect: str, tmp_path: Path) -> AsyncIterator[StoreConfig]:
    """Config of an empty store of the parametrized dialect; its journal lives in tmp_path."""
    journal = str(tmp_path / "usage.journal")
    if dialect == "sqlite":
        yield StoreConfig(url=f"sqlite+aiosqlite:///{tmp_path / 'spendgate.db'}", journal_path=journal)
        return
    try:
        url, drop = await fresh_pg_database()
    except ConnectionError as exc:
        service_unavailable(str(exc))
    try:
        yield StoreConfig(url=url, journal_path=journal)
    finally:
        await drop()


@pytest_asyncio.fixture
async def store(store_config: StoreConfig) -> AsyncIterator[Store]:
    opened = await Store.open(store_config)
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
def make_record() -> Iterator[RecordFactory]:
    """Factory of CallRecords with unique ids and start times one second apart (newest last)."""
    counter = itertools.count()

    def make(**overrides: Any) -> CallRecord:
        n = next(counter)
        started = overrides.pop("started_at", BASE_TIME + timedelta(seconds=n))
        fields: dict[str, Any] = {
            "request_id": f"req-{n:05d}",
            "started_at": started,
            "ended_at": started + timedelta(milliseconds=1250),
            "status": "ok",
            "http_status": 200,
            "org": "acme",
            "endpoint": "/v1/chat/completions",
            "provider": "mock",
            "model": "gpt-4o-mini",
            "upstream_model": "gpt-4o-mini-2024-07-18",
            "input_tokens": 100 + n,
            "output_tokens": 20,
            "cost_nano": 1_500 * (n + 1),
            "catalog_version": "litellm-1.110.2",
        }
        fields.update(overrides)
        return CallRecord(**fields)

    yield make
