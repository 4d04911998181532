"""MemoryLedger against the Ledger contract: all-or-nothing reserve, idempotency, expiry, seeding, force."""

from __future__ import annotations

import asyncio
import random

import pytest

from policies.errors import InvalidCounters
from policies.ledger import CounterSpec, MemoryLedger


class Clock:
    """A monotonic clock the test steps by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ledger(clock: Clock) -> MemoryLedger:
    return MemoryLedger(clock=clock, marker_ttl_s=3600)


ORG = CounterSpec("sg:{acme}:b:org", limit_nano=1000, ttl_s=600)
RUN = CounterSpec("sg:{acme}:b:run:r1", limit_nano=300, ttl_s=600)


async def totals(ledger: MemoryLedger, *specs: CounterSpec) -> list[tuple[int, int]]:
    return [(s.spent_nano, s.reserved_nano) for s in await ledger.states(specs)]


async def test_reserve_is_all_or_nothing(ledger: MemoryLedger) -> None:
    assert (await ledger.reserve("a", [ORG, RUN], 200, 30)).ok
    refused = await ledger.reserve("b", [ORG, RUN], 101, 30)  # RUN would reach 301 > 300
    assert not refused.ok
    assert refused.refused is not None and refused.refused.key == RUN.key
    assert await totals(ledger, ORG, RUN) == [(0, 200), (0, 200)]  # ORG untouched although it had room


async def test_no_false_refusal_at_exact_limit(ledger: MemoryLedger) -> None:
    assert (await ledger.reserve("a", [RUN], 300, 30)).ok
    result = await ledger.reserve("b", [RUN], 0, 30)  # amount 0 always fits
    assert result.ok and result.states[0].remaining_nano == 0
    assert not (await ledger.reserve("c", [RUN], 1, 30)).ok


async def test_reserve_same_id_twice_adds_once(ledger: MemoryLedger) -> None:
    await ledger.reserve("a", [ORG], 100, 30)
    again = await ledger.reserve("a", [ORG], 100, 30)
    assert again.ok and again.states[0].reserved_nano == 100


async def test_settle_moves_reservation_to_actual_spend_once(ledger: MemoryLedger) -> None:
    await ledger.reserve("a", [ORG, RUN], 250, 30)
    states = await ledger.settle("a", [ORG, RUN], 120)
    assert [(s.spent_nano, s.reserved_nano) for s in states] == [(120, 0), (120, 0)]
    await ledger.settle("a", [ORG, RUN], 120)  # retried settle
    assert await totals(ledger, ORG, RUN) == [(120, 0), (120, 0)]
    assert (await ledger.reserve("a", [ORG], 999, 30)).states[0].reserved_nano == 0  # settled id: no-op


async def test_expired_reservation_returns_its_amount(ledger: MemoryLedger, clock: Clock) -> None:
    await ledger.reserve("a", [RUN], 300, 5)
    assert not (await ledger.reserve("b", [RUN], 1, 5)).ok
    clock.now += 5  # expiry is inclusive: at exactly its expiry it is still live
    assert await totals(ledger, RUN) == [(0, 300)]
    clock.now += 0.001
    assert await totals(ledger, RUN) == [(0, 0)]
    assert (await ledger.reserve("b", [RUN], 300, 5)).ok


async def test_settle_after_expiry_still_adds_spend_once(ledger: MemoryLedger, clock: Clock) -> None:
    await ledger.reserve("a", [RUN], 200, 5)
    clock.now += 10
    (state,) = await ledger.settle("a", [RUN], 150)
    assert (state.spent_nano, state.reserved_nano) == (150, 0)
    await ledger.settle("a", [RUN], 150)
    assert await totals(ledger, RUN) == [(150, 0)]


async def test_release_returns_amount_and_settle_then_only_adds_spend(ledger: MemoryLedger) -> None:
    await ledger.reserve("a", [ORG, RUN], 200, 30)
    await ledger.release("a")
    await ledger.release("a")  # idempotent
    assert await totals(ledger, ORG, RUN) == [(0, 0), (0, 0)]
    assert not await ledger.renew("a", 30)
    await ledger.settle("a", [ORG, RUN], 50)  # the call ran after all: its cost is counted
    await ledger.settle("a", [ORG, RUN], 50)
    assert await totals(ledger, ORG, RUN) == [(50, 0), (50, 0)]
    await ledger.release("a")  # releasing a settled id changes nothing
    assert await totals(ledger, ORG, RUN) == [(50, 0), (50, 0)]


async def test_settle_without_any_reservation_adds_spend(ledger: MemoryLedger) -> None:
    await ledger.settle("never-reserved", [ORG], 70)
    assert await totals(ledger, ORG) == [(70, 0)]


async def test_renew_keeps_a_long_call_alive(ledger: MemoryLedger, clock: Clock) -> None:
    await ledger.reserve("a", [RUN], 100, 5)
    for _ in range(4):
        clock.now += 4
        assert await ledger.renew("a", 5)
    assert await totals(ledger, RUN) == [(0, 100)]
    clock.now += 6
    assert not await ledger.renew("a", 5)
    assert await totals(ledger, RUN) == [(0, 0)]


async def test_seed_sets_spent_once_per_version(ledger: MemoryLedger) -> None:
    await ledger.reserve("a", [ORG], 100, 30)
    assert await ledger.seed(ORG, 400, "v1")
    assert not await ledger.seed(ORG, 400, "v1")  # second replica / second start: no double count
    assert await totals(ledger, ORG) == [(400, 100)]  # reservations are untouched
    assert await ledger.seed(ORG, 10, "v2")
    assert await totals(ledger, ORG) == [(10, 100)]


async def test_force_reserves_over_the_limit_and_names_the_counter(ledger: MemoryLedger) -> None:
    result = await ledger.reserve("a", [ORG, RUN], 500, 30, force=True)
    assert result.ok and result.refused is not None and result.refused.key == RUN.key
    assert result.refused.reserved_nano == 500 and result.refused.remaining_nano == 0
    assert (await ledger.reserve("b", [ORG], 1, 30, force=True)).refused is None


async def test_counters_expire_when_idle(ledger: MemoryLedger, clock: Clock) -> None:
    short = CounterSpec("sg:{acme}:b:short", limit_nano=100, ttl_s=60)
    await ledger.settle("a", [short], 40)
    clock.now += 59
    await ledger.settle("b", [short], 10)  # a write refreshes the idle expiry
    clock.now += 59
    assert await totals(ledger, short) == [(50, 0)]
    clock.now += 2
    assert await totals(ledger, short) == [(0, 0)]


async def test_invalid_input_is_refused(ledger: MemoryLedger) -> None:
    with pytest.raises(InvalidCounters):
        await ledger.reserve("a", [ORG, ORG], 1, 30)
    with pytest.raises(ValueError):
        await ledger.reserve("a", [ORG], -1, 30)
    with pytest.raises(ValueError):
        await ledger.settle("a", [ORG], -5)
    assert await ledger.states([]) == []
    assert await ledger.ping()


async def test_markers_are_forgotten_after_their_ttl(clock: Clock) -> None:
    ledger = MemoryLedger(clock=clock, marker_ttl_s=10)
    await ledger.settle("a", [ORG], 5)
    clock.now += 11
    await ledger.settle("a", [ORG], 5)  # the marker is gone: a very late retry counts again (bounded by TTL)
    assert await totals(ledger, ORG) == [(10, 0)]


async def test_500_concurrent_calls_never_pass_the_cap(ledger: MemoryLedger) -> None:
    cap = CounterSpec("sg:{acme}:b:cap", limit_nano=50_000, ttl_s=600)
    rng = random.Random(7)
    settled: list[int] = []

    async def call(i: int) -> None:
        amount = rng.randint(0, 1_000)
        await asyncio.sleep(rng.random() / 1000)
        result = await ledger.reserve(f"c{i}", [cap], amount, 30)
        state = result.states[0]
        assert state.spent_nano + state.reserved_nano <= cap.limit_nano
        if not result.ok:
            return
        await asyncio.sleep(rng.random() / 1000)  # the call runs; others reserve meanwhile
        actual = rng.randint(0, amount)
        (after,) = await ledger.settle(f"c{i}", [cap], actual)
        settled.append(actual)
        assert after.spent_nano + after.reserved_nano <= cap.limit_nano

    await asyncio.gather(*(call(i) for i in range(500)))
    (final,) = await ledger.states([cap])
    assert final.reserved_nano == 0
    assert final.spent_nano == sum(settled) <= cap.limit_nano
    assert 0 < len(settled) < 500  # the cap really bit, and really admitted
