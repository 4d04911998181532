"""UsageWriter: journal first, batched SQL in the background, replay after a crash, outages survived."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from proxy.store.config import StoreConfig
from proxy.store.db import Store
from proxy.store.journal import Journal
from proxy.store.models import usage
from proxy.store.records import CallRecord
from proxy.store.writer import UsageWriter
from tests.pg import PG_PORT, TcpProxy, fresh_pg_database, service_unavailable
from tests.unit.proxy.store.conftest import RecordFactory

FAST: dict[str, Any] = {"flush_interval": 0.02, "retry_backoff": (0.01, 0.05)}


async def _ids(store: Store) -> list[str]:
    async with store.engine.connect() as conn:
        return sorted((await conn.execute(select(usage.c.request_id))).scalars().all())


async def _count(store: Store) -> int:
    async with store.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(usage))).scalar_one())


def _journal(config: StoreConfig) -> Journal:
    return Journal(config.effective_journal_path)


async def test_record_then_flush_puts_rows_in_sql(
    store: Store, store_config: StoreConfig, make_record: RecordFactory
) -> None:
    journal = _journal(store_config)
    batches: list[list[CallRecord]] = []
    writer = UsageWriter(store, journal, batch_max=7, flush_interval=60, on_batch=batches.append)
    await writer.start()
    records = [make_record() for _ in range(20)]
    await asyncio.gather(*(writer.record(r) for r in records))
    await writer.flush()
    assert await _ids(store) == sorted(r.request_id for r in records)
    assert writer.pending == 0 and journal.unconfirmed == 0
    assert max(len(b) for b in batches) <= 7 and sum(len(b) for b in batches) == 20
    assert [p.stat().st_size for p in journal.segment_files()] == [0]  # compacted after the commit
    await writer.close()
    await journal.close()


async def test_background_task_writes_without_flush(
    store: Store, store_config: StoreConfig, make_record: RecordFactory
) -> None:
    journal = _journal(store_config)
    writer = UsageWriter(store, journal, **FAST)
    await writer.start()
    await writer.record(make_record())
    for _ in range(200):
        if await _count(store) == 1:
            break
        await asyncio.sleep(0.01)
    assert await _count(store) == 1
    await writer.close()
    await journal.close()


async def test_close_flushes_everything(
    store: Store, store_config: StoreConfig, make_record: RecordFactory
) -> None:
    journal = _journal(store_config)
    writer = UsageWriter(store, journal, flush_interval=60)
    await writer.start()
    records = [make_record() for _ in range(50)]
    for rec in records:
        await writer.record(rec)
    await writer.close()
    await journal.close()
    assert await _count(store) == 50
    assert journal.segment_files() == []


async def test_crash_replay_writes_each_record_exactly_once(
    store: Store, store_config: StoreConfig, make_record: RecordFactory
) -> None:
    # A proxy that journaled calls and died before any reached SQL.
    crashed = _journal(store_config)
    records = [make_record() for _ in range(30)]
    await asyncio.gather(*(crashed.append(r) for r in records))
    await crashed.close()
    # Also a torn last line, as kill -9 mid-write leaves it.
    with crashed.segment_files()[-1].open("ab") as f:
        f.write(b'{"request_id": "req-torn"')
    delivered: list[CallRecord] = []
    for _ in range(2):  # and starting twice (crash between SQL commit and compaction) changes nothing
        journal = _journal(store_config)
        writer = UsageWriter(store, journal, on_batch=delivered.extend)
        await writer.start()
        assert await _ids(store) == sorted(r.request_id for r in records)
        await writer.close()
        await journal.close()
    assert sorted(delivered, key=lambda r: r.request_id) == records  # the hook never sees a call twice
    assert _journal(store_config).replay() == []


async def test_replayed_but_uncompacted_records_are_not_double_counted(
    store: Store, store_config: StoreConfig, make_record: RecordFactory
) -> None:
    journal = _journal(store_config)
    rec = make_record()
    await journal.append(rec)
    await store.insert_calls([rec])  # committed to SQL, then killed before the journal forgot it
    await journal.close()
    journal = _journal(store_config)
    writer = UsageWriter(store, journal)
    await writer.start()
    assert await _count(store) == 1
    assert journal.segment_files() == []
    await writer.close()
    await journal.close()


async def test_sql_failure_keeps_records_and_retries(
    store: Store, store_config: StoreConfig, make_record: RecordFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = _journal(store_config)
    writer = UsageWriter(store, journal, **FAST)
    await writer.start()
    real_insert = store.insert_new_calls
    failures = 0

    async def flaky(records: Any) -> list[CallRecord]:
        nonlocal failures
        if failures < 3:
            failures += 1
            raise OperationalError("INSERT", None, ConnectionRefusedError("db down"))
        return await real_insert(records)

    monkeypatch.setattr(store, "insert_new_calls", flaky)
    records = [make_record() for _ in range(10)]
    await asyncio.gather(*(writer.record(r) for r in records))
    assert journal.unconfirmed == 10  # durable locally while SQL is failing
    await asyncio.wait_for(writer.flush(), 5)
    assert failures == 3
    assert await _ids(store) == sorted(r.request_id for r in records)
    await writer.close()
    await journal.close()


async def test_close_with_sql_down_keeps_records_for_next_start(
    store: Store, store_config: StoreConfig, make_record: RecordFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = _journal(store_config)
    writer = UsageWriter(store, journal, **FAST)
    await writer.start()

    async def down(records: Any) -> list[CallRecord]:
        raise OperationalError("INSERT", None, ConnectionRefusedError("db down"))

    monkeypatch.setattr(store, "insert_new_calls", down)
    records = [make_record() for _ in range(5)]
    for rec in records:
        await writer.record(rec)
    await writer.close(flush_timeout=0.2)
    await journal.close()
    monkeypatch.undo()
    journal = _journal(store_config)
    writer = UsageWriter(store, journal)
    await writer.start()
    assert await _ids(store) == sorted(r.request_id for r in records)
    await writer.close()
    await journal.close()


async def test_a_record_sql_rejects_does_not_block_the_others(
    store: Store, store_config: StoreConfig, make_record: RecordFactory
) -> None:
    journal = _journal(store_config)
    writer = UsageWriter(store, journal, **FAST)
    await writer.start()
    good = [make_record(), make_record()]
    bad = make_record(org=None)  # NOT NULL violation: no retry can fix it
    for rec in (good[0], bad, good[1]):
        await writer.record(rec)
    await asyncio.wait_for(writer.flush(), 5)
    assert await _ids(store) == sorted(r.request_id for r in good)
    assert journal.unconfirmed == 1  # never confirmed, so never deleted from the journal
    await writer.close()
    await journal.close()


@pytest.mark.postgres
async def test_postgres_outage_through_a_cut_connection(tmp_path: Path, make_record: RecordFactory) -> None:
    proxy = TcpProxy(PG_PORT)
    await proxy.start()
    try:
        url, drop = await fresh_pg_database(port=proxy.port)
    except ConnectionError as exc:
        await proxy.cut()
        service_unavailable(str(exc))
    try:
        store = await Store.open(StoreConfig(url=url))
        journal = Journal(tmp_path / "j")
        writer = UsageWriter(store, journal, **FAST)
        await writer.start()
        before = make_record()
        await writer.record(before)
        await writer.flush()
        await proxy.cut()  # PostgreSQL unreachable: pooled connections die, new ones are refused
        during = [make_record() for _ in range(5)]
        for rec in during:
            await writer.record(rec)  # still durable: the journal needs no SQL
        await asyncio.sleep(0.2)
        assert writer.pending == 5
        await proxy.start()
        await asyncio.wait_for(writer.flush(), 10)
        assert await _ids(store) == sorted(r.request_id for r in [before, *during])
        await writer.close()
        await journal.close()
        await store.close()
    finally:
        await proxy.cut()
        await drop()
