"""Spend written straight to the store with chosen times (calls through the store's own insert, events through
the events API), and what the spend and cost report APIs should count from it. Shared by the dashboard and
cost report tests."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

import httpx

from proxy.store.config import StoreConfig
from proxy.store.db import Store
from proxy.store.records import CallRecord
from tests.harness import ADMIN, OTHER, Proxy


@dataclass(frozen=True)
class Spend:
    """One call or event as the reports count it (nano-USD; `calls` is the jobs it adds; `retry` the cost of
    a call that retried another)."""

    ts: datetime
    org: str
    project: str
    agent: str
    provider: str
    cost: int
    calls: int = 1
    errors: int = 0
    inp: int = 0
    out: int = 0
    run: str = ""
    retry: int = 0


@dataclass
class SpendData:
    now: datetime
    spends: list[Spend] = field(default_factory=list)
    records: list[CallRecord] = field(default_factory=list)
    events: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {"acme": [], "globex": []})
    seq: int = 0

    def call(self, ts: datetime, cost: int, *, org: str = "acme", project: str = "web", agent: str = "coder",
             provider: str = "openai", run: str = "", status: str = "ok", retry_of: str | None = None,
             inp: int = 100, out: int = 20) -> str:
        self.seq += 1
        rid = f"{org}-call-{self.seq:05d}"
        self.records.append(CallRecord(
            request_id=rid, started_at=ts, ended_at=ts + timedelta(milliseconds=250), status=status,
            http_status=200 if status == "ok" else 500, org=org, endpoint="/v1/chat/completions",
            provider=provider, model="gpt-4o-mini", project=project or None, agent=agent or None,
            run=run or None, retry_of=retry_of, input_tokens=inp, output_tokens=out, cost_nano=cost))
        if status != "refused":  # refused calls never reached a provider: no rollup counts them
            self.spends.append(Spend(ts, org, project, agent, provider, cost, 1, int(status == "error"), inp, out,
                                     run, cost if retry_of else 0))
        return rid

    def event(self, ts: datetime, spend: Spend, **fields: Any) -> None:
        """An event of `spend.org` (its `id` and `ts` filled in) and what it should count."""
        self.seq += 1
        self.events[spend.org].append({"id": f"e{self.seq}", "ts": ts.isoformat(), **fields})
        self.spends.append(spend)

    def of(self, org: str | None = "acme", since: date | None = None, *, until: date | None = None,
           project: str | None = None) -> list[Spend]:
        """The spend of `org` (None: every org) between two days (inclusive), of one project if given."""
        return [s for s in self.spends if (org is None or s.org == org) and (since is None or s.ts.date() >= since)
                and (until is None or s.ts.date() <= until) and (project is None or s.project == project)]


def insert(store_url: str, data: SpendData, proxy: Proxy) -> None:
    """The calls through the store's own insert, the events through POST /api/factory/events."""
    async def run() -> None:
        store = await Store.open(StoreConfig(url=store_url))
        try:
            assert len(await store.insert_new_calls(data.records)) == len(data.records)
        finally:
            await store.close()
    asyncio.run(run())
    for org, key in (("acme", ADMIN), ("globex", OTHER)):
        if data.events[org]:
            r = httpx.post(proxy.url + "/api/factory/events", json={"events": data.events[org]},
                           headers={"authorization": f"Bearer {key}"}, timeout=30)
            assert r.status_code == 200 and r.json()["accepted"] == len(data.events[org]), r.text
