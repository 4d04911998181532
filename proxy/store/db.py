"""The store's connection to SQL: engine set-up, migrations to head at open, idempotent batch inserts.

Contract: `Store.open` returns a ready store (schema at head) and the caller owns it: call `close()`
once, after every writer and query using it has stopped. Inserts are idempotent on `request_id`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import event, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from proxy.metrics.rollups import Rollup
from proxy.store.config import StoreConfig
from proxy.store.models import sqlite_value, usage
from proxy.store.records import CallRecord

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# Fixed key of the PostgreSQL advisory lock held while migrating ("spendgate" in ASCII): replicas that
# start together migrate one after another, and the later ones find the schema already at head.
MIGRATION_LOCK_KEY = 0x7370656E64676174
SQLITE_BUSY_TIMEOUT_MS = 5000


class Store:
    """An open store. Build it with `await Store.open(config)`, never with the constructor."""

    def __init__(self, engine: AsyncEngine, config: StoreConfig) -> None:
        self.engine = engine
        self.config = config
        self.dialect: str = engine.dialect.name

    @classmethod
    async def open(cls, config: StoreConfig) -> Store:
        """Create the engine and migrate the schema to head (safe to run from many replicas at once)."""
        engine = _create_engine(config)
        store = cls(engine, config)
        try:
            await store._migrate()
        except BaseException:
            await engine.dispose()
            raise
        log.info("store open: %s", config.redacted_url, extra={"dialect": store.dialect})
        return store

    async def _migrate(self) -> None:
        async with self.engine.begin() as conn:
            if self.dialect == "postgresql":
                # Transaction-scoped: released by the commit below, or by the server if we die.
                await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
            await conn.run_sync(_upgrade_to_head)

    async def ping(self) -> bool:
        """True when a trivial query succeeds (for /readyz); never raises."""
        try:
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception as exc:  # readiness probe: any failure means "not ready"
            log.warning("store ping failed: %s", type(exc).__name__)
            return False
        return True

    async def close(self) -> None:
        await self.engine.dispose()

    async def insert_calls(self, records: Sequence[CallRecord]) -> int:
        """Insert the records in one transaction; returns how many were new (duplicates are skipped)."""
        return len(await self.insert_new_calls(records))

    async def insert_new_calls(self, records: Sequence[CallRecord]) -> list[CallRecord]:
        """Like `insert_calls`, but returns the records that were newly inserted, in input order.

        ON CONFLICT (request_id) DO NOTHING on both dialects: a replayed record is stored once, and
        only first-time rows are returned and rolled up (metric buckets, issue and run rollups), in the
        insert's own transaction, so rollups never count a call twice or miss one.
        """
        unique: dict[str, CallRecord] = {}
        for rec in records:
            unique.setdefault(rec.request_id, rec)
        if not unique:
            return []
        rows = [record_to_row(rec) for rec in unique.values()]
        async with self.engine.begin() as conn:
            if self.dialect == "postgresql":
                inserted = await _insert_postgresql(conn, rows)
            else:
                inserted = await _insert_sqlite(conn, rows)
            # Rolled up in the same transaction: buckets never count a call the table lacks, or miss one.
            rollup = Rollup()
            for row in rows:
                if row["request_id"] in inserted:
                    rollup.add_call(row)
            await rollup.upsert(conn)
        return [rec for rid, rec in unique.items() if rid in inserted]


# The hot write path talks to the driver directly: SQLAlchemy's per-row compile and bind processing cost
# ~25 us per row, more than the rest of a call's recording. Column order is COLUMNS everywhere.
COLUMNS = tuple(c.name for c in usage.columns)
_SQLITE_INSERT = (f"INSERT INTO usage ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))}) "
                  "ON CONFLICT (request_id) DO NOTHING")


async def _insert_sqlite(conn: AsyncConnection, rows: list[dict[str, Any]]) -> set[str]:
    ids = [row["request_id"] for row in rows]
    existing: set[str] = set()
    for i in range(0, len(ids), 500):  # SQLite's bound-parameter limit
        chunk = ids[i: i + 500]
        found = await conn.exec_driver_sql(
            f"SELECT request_id FROM usage WHERE request_id IN ({', '.join('?' * len(chunk))})", tuple(chunk))
        existing.update(r[0] for r in found)
    params = [tuple(sqlite_value(row[c]) for c in COLUMNS) for row in rows if row["request_id"] not in existing]
    if params:
        await conn.exec_driver_sql(_SQLITE_INSERT, params)
    return {rid for rid in ids if rid not in existing}


_PG_TYPES = {"request_id": "text", "started_at": "timestamptz", "ended_at": "timestamptz"}


async def _insert_postgresql(conn: AsyncConnection, rows: list[dict[str, Any]]) -> set[str]:
    """One statement per batch: INSERT ... SELECT FROM unnest(column arrays) ... RETURNING request_id."""
    types = {c.name: c.type.compile(dialect=conn.dialect) for c in usage.columns}
    args = ", ".join(f"${i + 1}::{types[c]}[]" for i, c in enumerate(COLUMNS))
    sql = (f"INSERT INTO usage ({', '.join(COLUMNS)}) SELECT * FROM unnest({args}) "
           "ON CONFLICT (request_id) DO NOTHING RETURNING request_id")
    columns = tuple([row[c] for row in rows] for c in COLUMNS)
    result = await conn.exec_driver_sql(sql, columns)
    return {r[0] for r in result}


def record_to_row(rec: CallRecord) -> dict[str, Any]:
    """Column values for one record. NUL is replaced: PostgreSQL rejects it in text, and a rejected row
    would otherwise sit at the head of the writer's queue."""
    return {
        "request_id": rec.request_id,
        "started_at": rec.started_at,
        "ended_at": rec.ended_at,
        "duration_ms": rec.duration_ms,
        "status": _clean(rec.status),
        "http_status": rec.http_status,
        "org": _clean(rec.org),
        "project": _clean(rec.project),
        "agent": _clean(rec.agent),
        "station": _clean(rec.station),
        "run": _clean(rec.run),
        "issue": _clean(rec.issue),
        "actor": _clean(rec.actor),
        "retry_of": _clean(rec.retry_of),
        "key_name": _clean(rec.key_name),
        "endpoint": _clean(rec.endpoint),
        "provider": _clean(rec.provider),
        "model": _clean(rec.model),
        "upstream_model": _clean(rec.upstream_model),
        "input_tokens": rec.input_tokens,
        "cached_input_tokens": rec.cached_input_tokens,
        "cache_write_tokens": rec.cache_write_tokens,
        "output_tokens": rec.output_tokens,
        "reasoning_tokens": rec.reasoning_tokens,
        "cost_nano": rec.cost_nano,
        "usage_source": _clean(rec.usage_source),
        "stream": rec.stream,
        "catalog_version": _clean(rec.catalog_version),
        "error": _clean(rec.error[:1000]) if rec.error else rec.error,
        "enforcement": rec.enforcement,
    }


def _clean(value: str | None) -> str | None:
    if value is None or "\x00" not in value:
        return value
    return value.replace("\x00", "\ufffd")


def _upgrade_to_head(connection: Connection) -> None:
    cfg = AlembicConfig()
    # ConfigParser interpolation: a '%' in the install path must be doubled.
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, "head")


def _create_engine(config: StoreConfig) -> AsyncEngine:
    # hide_parameters: SQL errors are logged by the writer and must not carry row values.
    if config.dialect == "sqlite":
        engine = create_async_engine(config.sa_url, hide_parameters=True)
        # FULL with fsync: a committed batch survives power loss before the journal forgets it.
        synchronous = "FULL" if config.fsync else "NORMAL"

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute(f"PRAGMA synchronous={synchronous}")
            cursor.close()

        return engine
    return create_async_engine(
        config.sa_url,
        hide_parameters=True,
        pool_size=5,
        max_overflow=5,
        pool_pre_ping=True,  # a connection cut while idle (failover, proxy restart) is replaced, not used
        pool_recycle=1800,
        # timeout bounds connecting; command_timeout a hung statement, so the writer can retry.
        connect_args={"timeout": 10, "command_timeout": 60},
    )
