"""Admission and settlement over the memory ledger: caps hold, soft budgets warn, clamp, thresholds, holds."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from policies.budgets import Budget
from policies.config import BudgetConfig
from policies.decisions import Allowed, Denied, Held
from policies.engine import ClampRoom, Engine
from policies.ledger.base import CounterSpec
from policies.ledger.memory import MemoryLedger

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
TAGS = {"org": "acme", "project": "web", "agent": "coder", "run": "run-1", "model": "gpt-4o-mini",
        "provider": "openai", "key": "k1"}
USD = 10**9


def budget(**kw: Any) -> Budget:
    cfg = {"name": "cap", "scope": {"org": "acme"}, "window": "month", "limit_usd": 1.0, **kw}
    return Budget.from_config(BudgetConfig.model_validate(cfg))


def engine(*budgets: Budget, **kw: Any) -> Engine:
    return Engine(MemoryLedger(), list(budgets), clock=lambda: NOW, **kw)


async def spent(e: Engine, tags: dict[str, str] = TAGS) -> list[tuple[int, int]]:
    counters = e.counters(tags)
    states = await e.ledger.states([CounterSpec(c.key, c.limit_nano, c.ttl_s) for c in counters])
    return [(s.spent_nano, s.reserved_nano) for s in states]


async def test_no_matching_budget_reserves_nothing() -> None:
    e = engine(budget(scope={"org": "other"}))
    decision, admission = await e.admit(TAGS, 5 * USD, "r1")
    assert decision == Allowed() and admission is None


async def test_reserve_then_settle_moves_the_worst_case_to_the_real_cost() -> None:
    e = engine(budget())
    decision, admission = await e.admit(TAGS, USD // 4, "r1")
    assert isinstance(decision, Allowed) and decision.reservation_id == "r1" and admission is not None
    assert await spent(e) == [(0, USD // 4)]
    assert await e.settle(admission, USD // 10) == []
    assert await spent(e) == [(USD // 10, 0)]
    assert await e.settle(admission, USD // 10) == []  # a second settle changes nothing
    assert await spent(e) == [(USD // 10, 0)]


async def test_a_call_that_would_pass_the_cap_is_denied_with_the_details() -> None:
    e = engine(budget())
    _, first = await e.admit(TAGS, 600_000_000, "r1")
    decision, admission = await e.admit(TAGS, 500_000_000, "r2")
    assert admission is None and isinstance(decision, Denied)
    assert (decision.spent_nano, decision.reserved_nano, decision.needed_nano, decision.limit_nano) == (
        0, 600_000_000, 500_000_000, USD)
    assert first is not None
    await e.release(first)
    decision, _ = await e.admit(TAGS, 500_000_000, "r3")  # room again: no false refusal
    assert isinstance(decision, Allowed)


async def test_the_cap_holds_under_heavy_concurrency() -> None:
    e = engine(budget(), budget(name="per-run", scope={"run": "*"}, window="run", limit_usd=0.8))
    rng = random.Random(3)
    served: list[int] = []

    async def one(i: int) -> None:
        worst = rng.randint(1, 50_000_000)
        decision, admission = await e.admit(TAGS, worst, f"r{i}")
        await asyncio.sleep(rng.random() / 1000)
        if admission is not None:
            actual = rng.randint(0, worst)
            await e.settle(admission, actual)
            served.append(actual)
        else:
            assert isinstance(decision, Denied)

    await asyncio.gather(*(one(i) for i in range(500)))
    (org_spent, org_reserved), (run_spent, run_reserved) = await spent(e)
    assert org_reserved == run_reserved == 0
    assert org_spent == run_spent == sum(served) <= 800_000_000
    assert len(served) < 500  # the cap was reached


async def test_approve_budget_holds_the_call() -> None:
    holds: list[tuple[str, int]] = []

    async def hold(counter: Any, worst: int) -> str:
        holds.append((counter.budget.name, worst))
        return "ap_1"

    e = engine(budget(on_exceed="approve", limit_usd=0.1), on_hold=hold)
    decision, admission = await e.admit(TAGS, USD, "r1")
    assert isinstance(decision, Held) and decision.approval_id == "ap_1" and admission is None
    assert holds == [("cap", USD)] and await spent(e) == [(0, 0)]  # a held call holds no reservation


async def test_soft_budgets_let_the_call_through_with_a_warning_and_count_it() -> None:
    e = engine(budget(on_exceed="warn", limit_usd=0.1), budget(name="hook", on_exceed="webhook", limit_usd=10))
    decision, admission = await e.admit(TAGS, 200_000_000, "r1")
    assert isinstance(decision, Allowed) and admission is not None
    assert [w.counter.budget.name for w in decision.warnings] == ["cap"]
    assert decision.warnings[0].pct == 200.0
    assert await spent(e) == [(0, 200_000_000), (0, 200_000_000)]
    await e.settle(admission, 150_000_000)
    assert await spent(e) == [(150_000_000, 0), (150_000_000, 0)]


async def test_shadow_budgets_never_block_or_warn() -> None:
    e = engine(budget(mode="shadow", limit_usd=0.01))
    decision, admission = await e.admit(TAGS, USD, "r1")
    assert decision == Allowed(reservation_id="r1") and admission is not None
    assert await spent(e) == [(0, USD)]  # but it is counted, to see what the cap would have done


async def test_clamp_shrinks_max_tokens_to_what_remains() -> None:
    e = engine(budget(clamp_max_tokens=True, min_output_tokens=100, limit_usd=0.001))  # 1,000,000 nano
    room = ClampRoom(prompt_nano=200_000, output_nano_per_token=Decimal(1000), requested_max=4096)
    decision, admission = await e.admit(TAGS, 200_000 + 4096 * 1000, "r1", clamp=room)
    assert isinstance(decision, Allowed) and decision.clamp_to == 800 and admission is not None
    assert admission.reserved_nano == 200_000 + 800 * 1000 == 1_000_000
    decision, _ = await e.admit(TAGS, 200_000 + 4096 * 1000, "r2", clamp=room)
    assert isinstance(decision, Denied)  # nothing left: below min_output_tokens is a refusal


async def test_clamp_is_not_applied_to_budgets_that_did_not_ask_for_it() -> None:
    e = engine(budget(limit_usd=0.001))
    room = ClampRoom(prompt_nano=200_000, output_nano_per_token=Decimal(1000), requested_max=4096)
    decision, _ = await e.admit(TAGS, 200_000 + 4096 * 1000, "r1", clamp=room)
    assert isinstance(decision, Denied)


async def test_thresholds_are_reported_by_the_settle_that_crosses_them() -> None:
    e = engine(budget(alerts=[{"at_pct": 50, "action": "warn"}, {"at_pct": 80, "action": "webhook"}]))
    fired = []
    for i, actual in enumerate([400_000_000, 200_000_000, 150_000_000, 100_000_000]):
        _, admission = await e.admit(TAGS, actual, f"r{i}")
        assert admission is not None
        fired.append([(c.alert.at_pct, c.spent_nano) for c in await e.settle(admission, actual)])
    assert fired == [[], [(50.0, 600_000_000)], [], [(80.0, 850_000_000)]]


async def test_run_wildcard_does_not_match_untagged_calls() -> None:
    e = engine(budget(name="per-run", scope={"run": "*"}, window="run", limit_usd=0.01))
    untagged = {k: v for k, v in TAGS.items() if k != "run"}
    decision, admission = await e.admit(untagged, USD, "r1")
    assert decision == Allowed() and admission is None
    decision, _ = await e.admit(TAGS, USD, "r2")
    assert isinstance(decision, Denied)
