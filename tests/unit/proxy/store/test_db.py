"""Store: migrations to head (idempotent, race-free across replicas) and idempotent inserts."""

from __future__ import annotations

import asyncio

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, func, inspect, select, text

from proxy.store.config import StoreConfig
from proxy.store.db import Store
from proxy.store.models import Base, usage
from tests.pg import fresh_pg_database, service_unavailable
from tests.unit.proxy.store.conftest import RecordFactory


async def _count(store: Store) -> int:
    async with store.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(usage))).scalar_one())


async def test_open_creates_schema_with_version_table_and_indexes(store: Store) -> None:
    def inspect_schema(conn: Connection) -> tuple[set[str], set[str], str | None]:
        insp = inspect(conn)
        indexes = {ix["name"] for ix in insp.get_indexes("usage") if ix["name"]}
        return set(insp.get_table_names()), indexes, MigrationContext.configure(conn).get_current_revision()

    async with store.engine.connect() as conn:
        tables, indexes, revision = await conn.run_sync(inspect_schema)
    assert {"usage", "alembic_version"} <= tables
    assert {"ix_usage_org_started_at", "ix_usage_org_run", "ix_usage_org_issue"} <= indexes
    assert {"ix_usage_org_agent", "ix_usage_org_station"} <= indexes
    assert revision == "0005_station_visits"
    assert await store.ping()


async def test_migrated_schema_matches_the_models(store: Store) -> None:
    def diff(conn: Connection) -> list[object]:
        return list(compare_metadata(MigrationContext.configure(conn), Base.metadata))

    async with store.engine.connect() as conn:
        assert await conn.run_sync(diff) == []


async def test_open_twice_is_idempotent_and_keeps_rows(
    store_config: StoreConfig, make_record: RecordFactory
) -> None:
    first = await Store.open(store_config)
    await first.insert_calls([make_record()])
    await first.close()
    second = await Store.open(store_config)
    try:
        assert await _count(second) == 1
    finally:
        await second.close()


async def test_insert_is_idempotent_on_request_id(store: Store, make_record: RecordFactory) -> None:
    a, b = make_record(), make_record()
    assert await store.insert_calls([a, b, a]) == 2
    assert await store.insert_calls([a]) == 0
    changed = make_record(request_id=a.request_id, cost_nano=999)
    assert await store.insert_new_calls([changed, make_record()]) != [changed]
    assert await _count(store) == 3
    async with store.engine.connect() as conn:
        cost = (
            await conn.execute(select(usage.c.cost_nano).where(usage.c.request_id == a.request_id))
        ).scalar()
    assert cost == a.cost_nano  # first write wins: a replay never rewrites a row


async def test_insert_keeps_times_utc_and_fields(store: Store, make_record: RecordFactory) -> None:
    from datetime import timedelta, timezone

    local = timezone(timedelta(hours=2))
    rec = make_record(started_at=make_record().started_at.astimezone(local), stream=True, error="x\x00y")
    await store.insert_calls([rec])
    async with store.engine.connect() as conn:
        row = (await conn.execute(select(usage).where(usage.c.request_id == rec.request_id))).mappings().one()
    assert row["started_at"] == rec.started_at and row["started_at"].utcoffset() == timedelta(0)
    assert row["duration_ms"] == 1250 and row["stream"] is True and row["error"] == "x\ufffdy"


async def test_sqlite_runs_in_wal_mode(store: Store) -> None:
    if store.dialect != "sqlite":
        pytest.skip("SQLite only")
    async with store.engine.connect() as conn:
        assert (await conn.execute(text("PRAGMA journal_mode"))).scalar() == "wal"


@pytest.mark.postgres
async def test_replicas_opening_at_once_do_not_race_on_migrations() -> None:
    try:
        url, drop = await fresh_pg_database()
    except ConnectionError as exc:
        service_unavailable(str(exc))
    try:
        stores = await asyncio.gather(*(Store.open(StoreConfig(url=url)) for _ in range(4)))
        assert all([await s.ping() for s in stores])
        for s in stores:
            await s.close()
    finally:
        await drop()


async def test_open_fails_cleanly_when_the_server_is_unreachable() -> None:
    config = StoreConfig(url="postgresql+asyncpg://spend:hunter2@127.0.0.1:1/nowhere")
    with pytest.raises(OSError) as info:
        await Store.open(config)
    assert "hunter2" not in str(info.value)
