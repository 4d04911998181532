"""`spendgate reconcile` on a private redis-server: drift written into the counter keys by hand is reported, then
repaired to the store's totals by compare-and-set; three reconcilers at once give the same counters as one."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import redis.asyncio as aioredis
import yaml

from policies.budgets import Budget, counter_key
from policies.config import BudgetConfig
from policies.ledger import CounterSpec, RedisLedger
from policies.windows import window_of
from proxy.app import load_config
from proxy.budgeting import seed_from_store
from proxy.cli import main
from proxy.reconcile import MEMORY_LEDGER_NOTE, format_report, reconcile, reconcile_settings
from proxy.store.config import StoreConfig
from proxy.store.db import Store
from proxy.store.records import CallRecord
from tests import redis_helpers
from tests.redis_helpers import PrivateRedis

private_redis = redis_helpers.private_redis
pytestmark = [pytest.mark.integration, pytest.mark.redis]
ROOT = Path(__file__).resolve().parents[2]

BUDGETS = [
    {"name": "org-day", "scope": {"org": "acme"}, "window": "day", "limit_usd": 100},
    {"name": "per-run", "scope": {"org": "acme", "run": "*"}, "window": "run", "limit_usd": 10},
    {"name": "agents", "scope": {"org": "*", "agent": "*"}, "window": "month", "limit_usd": 50},
]
# (run, agent, cost nano-USD) of the stored calls, all of org acme and in the current windows.
CALLS = [("r1", "planner", 1_500), ("r1", "coder", 20_000), ("r2", "coder", 333_333), ("r2", "planner", 7),
         (None, "coder", 4_000)]


@dataclass
class World:
    store: Store
    store_url: str
    redis: PrivateRedis
    raw: aioredis.Redis
    budgets: list[Budget]
    config: Path

    def key(self, budget: str, **scope: str) -> str:
        b = next(b for b in self.budgets if b.name == budget)
        return counter_key(b.name, tuple(sorted(scope.items())), window_of(b.window, datetime.now(UTC), b.tz).id)

    def spec(self, key: str) -> CounterSpec:
        return CounterSpec(key, 10**12, 3600)

    async def counters(self) -> dict[str, dict[str, str]]:
        """Every counter hash (spent, reserved, ver and holds), decoded."""
        found = {}
        async for raw_key in self.raw.scan_iter(match="sg:*:b:*"):
            key = _text(raw_key)
            if not key.endswith("~holds"):
                fields = await self.raw.hgetall(key)
                found[key] = {_text(k): _text(v) for k, v in fields.items()}
        return found


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def truth() -> dict[str, int]:
    """The store's totals per counter, computed here from CALLS (independently of proxy/store/spend.py)."""
    totals: dict[tuple[str, tuple[tuple[str, str], ...]], int] = {}

    def add(budget: str, cost: int, **scope: str) -> None:
        k = (budget, tuple(sorted(scope.items())))
        totals[k] = totals.get(k, 0) + cost

    for run, agent, cost in CALLS:
        add("org-day", cost, org="acme")
        if run:
            add("per-run", cost, org="acme", run=run)
        add("agents", cost, org="acme", agent=agent)
    now = datetime.now(UTC)
    windows = {str(b["name"]): window_of(str(b["window"]), now, UTC).id for b in BUDGETS}
    return {counter_key(name, scope, windows[name]): v for (name, scope), v in totals.items()}


@pytest_asyncio.fixture
async def world(private_redis: PrivateRedis, tmp_path: Path) -> AsyncIterator[World]:
    store_url = f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    store = await Store.open(StoreConfig(url=store_url))
    now = datetime.now(UTC)
    await store.insert_calls([
        CallRecord(request_id=f"sg-{i}", started_at=now, ended_at=now, status="ok", http_status=200, org="acme",
                   endpoint="/v1/chat/completions", provider="openai", model="m", run=run, agent=agent,
                   cost_nano=cost)
        for i, (run, agent, cost) in enumerate(CALLS)])
    budgets = [Budget.from_config(BudgetConfig.model_validate(b)) for b in BUDGETS]
    config = tmp_path / "spendgate.yaml"
    config.write_text(yaml.safe_dump({
        "store": {"url": store_url, "journal_path": str(tmp_path / "j")}, "ledger": {"url": private_redis.url},
        "models": [{"name": "m", "provider": "mock", "price_as": "gpt-4o-mini"}], "keys": [], "budgets": BUDGETS}))
    raw = aioredis.Redis.from_url(private_redis.url)
    ledger = RedisLedger(private_redis.url)
    await seed_from_store(ledger, budgets, store, "redis-test")  # the counters as a healthy start leaves them
    await ledger.aclose()
    yield World(store, store_url, private_redis, raw, budgets, config)
    await raw.aclose()
    await store.close()


async def inject_drift(w: World) -> dict[str, Any]:
    """Wrong values in the counter keys, as a lost settle, a killed proxy or a hand edit leave them."""
    ledger = RedisLedger(w.redis.url)
    org, r1, r2 = w.key("org-day", org="acme"), w.key("per-run", org="acme", run="r1"), w.key(
        "per-run", org="acme", run="r2")
    ghost = w.key("agents", org="acme", agent="ghost")
    await w.raw.hincrby(org, "spent", 12_345)  # the ledger counts more than the store
    await w.raw.hincrby(r1, "spent", -500)  # ... less
    await w.raw.delete(r2)  # a counter the ledger lost
    await w.raw.hset(ghost, mapping={"spent": 777, "reserved": 0})  # spend the store never saw
    await w.raw.hincrby(org, "reserved", 999)  # reserved money no reservation holds
    await ledger.reserve("killed", [w.spec(org)], 50_000, 0.05)  # a killed proxy's call: its hold expires
    await ledger.reserve("live", [w.spec(org)], 70_000, 600)  # a call still running: its hold must stay
    await ledger.aclose()
    await asyncio.sleep(0.1)
    return {"org": org, "r1": r1, "r2": r2, "ghost": ghost}


def assert_repaired(counters: dict[str, dict[str, str]], keys: dict[str, Any]) -> None:
    expected = truth()
    for key, spent in expected.items():
        assert int(counters[key]["spent"]) == spent, key
    assert int(counters[keys["ghost"]]["spent"]) == 0
    assert int(counters[keys["org"]]["reserved"]) == 70_000  # only the live call's hold is left
    assert "h:killed" not in counters[keys["org"]] and "h:live" in counters[keys["org"]]
    assert all(int(c.get("reserved", 0)) == 0 for k, c in counters.items() if k != keys["org"])


async def run_cli(config: Path, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy.cli", "reconcile", "--config", str(config), *args, cwd=ROOT,
        env=dict(os.environ), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def run_here(config: Path, *, dry_run: bool) -> tuple[int, str]:
    """What `spendgate reconcile` does, in this process (the subprocess costs seconds of imports)."""
    settings, _ = load_config(config)
    report = await reconcile_settings(settings, dry_run=dry_run)
    return report.exit_code, "\n".join(format_report(report))


async def test_dry_run_reports_the_drift_and_writes_nothing(world: World) -> None:
    keys = await inject_drift(world)
    before = await world.counters()
    code, out = await run_here(world.config, dry_run=True)
    assert code == 2, out
    assert await world.counters() == before
    lines = {line.split()[0] + " " + line.split()[2]: line for line in out.splitlines()[2:-1]}
    assert lines["org-day org=acme"].split()[5] == "+0.000012345"
    assert lines["org-day org=acme"].split()[-1] == "drift"
    assert "0.000050999 (1)" in lines["org-day org=acme"]  # the expired hold plus the unbacked 999
    assert lines["per-run org=acme,run=r1"].split()[5] == "-0.000000500"
    assert lines["per-run org=acme,run=r2"].split()[3:6] == ["0.000000000", "0.000333340", "-0.000333340"]
    assert lines["agents org=acme,agent=ghost"].split()[5] == "+0.000000777"
    assert lines["agents org=acme,agent=coder"].split()[-1] == "in_sync"
    assert out.splitlines()[-1] == "6 counter(s): 2 in_sync, 0 repaired, 4 drift, 0 busy"
    assert keys


async def test_three_reconcilers_at_once_repair_to_the_store_totals(world: World) -> None:
    keys = await inject_drift(world)
    # A settle of $0 just now: each process waits until it is --lag-s old before reading the store, so all
    # three read and write at about the same moment, whenever their imports finished.
    ledger = RedisLedger(world.redis.url)
    await ledger.settle("just-now", [world.spec(keys["org"])], 0)
    await ledger.aclose()
    results = await asyncio.gather(*(run_cli(world.config, "--lag-s", "5") for _ in range(3)))
    assert [code for code, _ in results] == [0, 0, 0], results
    for scope in ("org=acme,run=r1", "org=acme,run=r2", "org=acme,agent=ghost"):
        outcomes = sorted(line.split()[-1] for _, out in results for line in out.splitlines() if f" {scope} " in line)
        assert outcomes == ["in_sync", "in_sync", "repaired"], (scope, results)  # one compare-and-set won
    repaired = await world.counters()
    assert_repaired(repaired, keys)
    # Run again: everything is in sync and nothing is written (no version moves).
    code, out = await run_here(world.config, dry_run=False)
    assert code == 0 and out.splitlines()[-1] == "6 counter(s): 6 in_sync, 0 repaired, 0 drift, 0 busy", out
    assert await world.counters() == repaired


async def test_concurrent_reconcilers_in_one_loop_agree(world: World) -> None:
    keys = await inject_drift(world)
    ledgers = [RedisLedger(world.redis.url) for _ in range(3)]
    try:
        reports = await asyncio.gather(*(reconcile(ledger, world.store, world.budgets, dry_run=False)
                                         for ledger in ledgers))
    finally:
        for ledger in ledgers:
            await ledger.aclose()
    assert_repaired(await world.counters(), keys)
    for report in reports:  # each saw the same drift, or found it already repaired by another
        assert {r.outcome for r in report} <= {"in_sync", "repaired"}
    spent_repairs = [r for report in reports for r in report
                     if r.target.spec.key == keys["r1"] and r.outcome == "repaired"]
    assert len(spent_repairs) == 1  # one compare-and-set won; the others read again and found it in sync


async def test_a_counter_booking_spend_throughout_is_left_alone(world: World) -> None:
    """Calls settling all the time (their rows not yet in SQL): no reading is consistent, so nothing is
    overwritten and the counter is reported busy instead of losing that spend."""
    key = world.key("org-day", org="acme")
    await world.raw.hincrby(key, "spent", 5)
    ledger, settler = RedisLedger(world.redis.url), RedisLedger(world.redis.url)
    stop = asyncio.Event()

    async def settle_all_the_time() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            await settler.settle(f"call-{i}", [world.spec(key)], 10)
            await asyncio.sleep(0.02)

    task = asyncio.create_task(settle_all_the_time())
    try:
        await asyncio.sleep(0.05)
        report = await reconcile(ledger, world.store, world.budgets, dry_run=False, lag_s=0.2, rounds=2)
    finally:
        stop.set()
        await task
        await ledger.aclose()
        await settler.aclose()
    (busy,) = [r for r in report if r.target.spec.key == key]
    assert busy.outcome == "busy"
    counters = await world.counters()
    booked = int(counters[key]["ver"]) - 1  # one version per settle, after the seed's
    assert int(counters[key]["spent"]) == truth()[key] + 5 + 10 * booked  # nothing overwritten


def test_memory_ledger_has_nothing_to_reconcile(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "spendgate.yaml"
    config.write_text(yaml.safe_dump({
        "store": {"url": f"sqlite+aiosqlite:///{tmp_path / 's.db'}"}, "keys": [], "budgets": BUDGETS,
        "models": [{"name": "m", "provider": "mock", "price_as": "gpt-4o-mini"}]}))
    assert main(["reconcile", "--config", str(config)]) == 0
    assert capsys.readouterr().out.strip() == MEMORY_LEDGER_NOTE


@pytest.mark.parametrize("scope", [
    {"org": "acme", "run": "r1"},
    {"org": "a}c{me", "run": "x,y=z:%2C*?[1]"},  # every separator and glob character, percent-encoded
])
def test_a_ledger_key_gives_back_its_scope(scope: dict[str, str]) -> None:
    import fnmatch

    from proxy.reconcile import _pattern, _scope_of

    budget = Budget.from_config(BudgetConfig.model_validate(
        {"name": "per-run.v2", "scope": {"org": "*", "run": "*"}, "window": "day", "limit_usd": 1}))
    window = window_of("day", datetime.now(UTC), UTC)
    key = counter_key(budget.name, tuple(sorted(scope.items())), window.id)
    assert fnmatch.fnmatchcase(key, _pattern(budget, window))  # Redis globs read these patterns the same way
    assert _scope_of(key, budget, window) == tuple(sorted(scope.items()))
    other = Budget.from_config(BudgetConfig.model_validate(
        {"name": "per-run.v2", "scope": {"org": "*"}, "window": "day", "limit_usd": 1}))
    assert _scope_of(key, other, window) is None  # a counter of an older scope shape is not this budget's
