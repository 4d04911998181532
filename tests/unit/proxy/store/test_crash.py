"""kill -9 of a process mid-traffic: every call whose record() returned is in SQL after restart, once."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select

from proxy.store.config import StoreConfig
from proxy.store.db import Store
from proxy.store.journal import Journal
from proxy.store.models import usage
from proxy.store.writer import UsageWriter

REPO = Path(__file__).resolve().parents[4]

# The child records calls forever (8 concurrent callers, small SQL batches) and prints each request id
# once its record() has returned, i.e. once the proxy would have answered the client.
CHILD = """
import asyncio, sys
from datetime import UTC, datetime
from proxy.store.config import StoreConfig
from proxy.store.db import Store
from proxy.store.journal import Journal
from proxy.store.records import CallRecord
from proxy.store.writer import UsageWriter

async def main(url, journal_path, prefix):
    store = await Store.open(StoreConfig(url=url))
    writer = UsageWriter(store, Journal(journal_path), batch_max=16, flush_interval=0.005)
    await writer.start()
    print("ready", flush=True)

    async def caller(n):
        i = 0
        while True:
            now = datetime.now(UTC)
            rid = f"{prefix}{n}-{i}"
            await writer.record(CallRecord(request_id=rid, started_at=now, ended_at=now, status="ok",
                http_status=200, org="acme", endpoint="/v1/chat/completions", provider="mock", model="m"))
            sys.stdout.write(rid + "\\n")
            sys.stdout.flush()
            i += 1

    await asyncio.gather(*(caller(n) for n in range(8)))

asyncio.run(main(*sys.argv[1:4]))
"""


async def _run_and_kill(url: str, journal: Path, acks_before_kill: int, prefix: str) -> set[str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, url, str(journal), prefix,
        cwd=REPO, stdout=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert proc.stdout is not None
    acked: set[str] = set()
    try:
        assert (await asyncio.wait_for(proc.stdout.readline(), 30)).strip() == b"ready"
        while len(acked) < acks_before_kill:
            line = await asyncio.wait_for(proc.stdout.readline(), 30)
            assert line, "child died"
            acked.add(line.decode().strip())
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    return acked


@pytest.mark.parametrize("acks_before_kill", [1, 300])
async def test_kill_9_loses_and_duplicates_nothing(
    store_config: StoreConfig, tmp_path: Path, acks_before_kill: int
) -> None:
    journal_path = tmp_path / "crash.journal"
    acked = await _run_and_kill(store_config.url, journal_path, acks_before_kill, "a")
    acked |= await _run_and_kill(
        store_config.url, journal_path, acks_before_kill, "b"
    )  # crash during replay too
    store = await Store.open(store_config)
    journal = Journal(journal_path)
    writer = UsageWriter(store, journal)
    try:
        await writer.start()
        async with store.engine.connect() as conn:
            ids = set((await conn.execute(select(usage.c.request_id))).scalars().all())
            total = (await conn.execute(select(func.count()).select_from(usage))).scalar_one()
        assert acked <= ids  # every answered call is stored ...
        assert total == len(ids)  # ... once
    finally:
        await writer.close()
        await journal.close()
        await store.close()
