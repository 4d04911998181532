"""The Ledger contract on real Redis (and the same tests on memory), across tasks, processes and faults."""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
import redis as sync_redis

from policies.errors import InvalidCounters, LedgerUnavailable, LedgerUnseeded
from policies.ledger import CounterSpec, Ledger, MemoryLedger, RedisLedger
from policies.ledger.redis import hash_tag
from tests import redis_helpers
from tests.redis_helpers import PrivateRedis

# The helpers' fixtures, made visible to this module (assigned, so parameters may reuse their names).
redis_prefix = redis_helpers.redis_prefix
redis_url = redis_helpers.redis_url
private_redis = redis_helpers.private_redis

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]

ORG = CounterSpec("sg:{acme}:b:org", limit_nano=1000, ttl_s=600)
RUN = CounterSpec("sg:{acme}:b:run:r1", limit_nano=300, ttl_s=600)


@pytest_asyncio.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def ledger(request: pytest.FixtureRequest) -> AsyncIterator[Ledger]:
    if request.param == "memory":
        ledger: Ledger = MemoryLedger()
    else:
        prefix = request.getfixturevalue("redis_prefix")
        ledger = RedisLedger(request.getfixturevalue("redis_url"), prefix=prefix)
    yield ledger
    await ledger.aclose()


async def totals(ledger: Ledger, *specs: CounterSpec) -> list[tuple[int, int]]:
    return [(s.spent_nano, s.reserved_nano) for s in await ledger.states(specs)]


async def test_reserve_is_all_or_nothing_and_exact_at_the_limit(ledger: Ledger) -> None:
    assert await totals(ledger, ORG) == [(0, 0)]  # never written
    assert (await ledger.reserve("a", [ORG, RUN], 200, 30)).ok
    refused = await ledger.reserve("b", [ORG, RUN], 101, 30)
    assert not refused.ok and refused.refused is not None and refused.refused.key == RUN.key
    assert await totals(ledger, ORG, RUN) == [(0, 200), (0, 200)]
    exact = await ledger.reserve("c", [ORG, RUN], 100, 30)
    assert exact.ok and exact.states[1].remaining_nano == 0
    assert (await ledger.reserve("d", [RUN], 0, 30)).ok


async def test_reserve_and_settle_are_idempotent(ledger: Ledger) -> None:
    await ledger.reserve("a", [ORG, RUN], 250, 30)
    assert (await ledger.reserve("a", [ORG, RUN], 250, 30)).states[0].reserved_nano == 250
    await ledger.settle("a", [ORG, RUN], 120)
    states = await ledger.settle("a", [ORG, RUN], 120)
    assert [(s.spent_nano, s.reserved_nano) for s in states] == [(120, 0), (120, 0)]
    assert (await ledger.reserve("a", [ORG], 10, 30)).states[0].reserved_nano == 0


async def test_expiry_returns_the_amount_and_late_settle_still_counts(ledger: Ledger) -> None:
    await ledger.reserve("a", [RUN], 300, 0.3)
    assert not (await ledger.reserve("b", [RUN], 1, 0.3)).ok
    await asyncio.sleep(0.4)
    assert await totals(ledger, RUN) == [(0, 0)]
    assert not await ledger.renew("a", 30)
    await ledger.settle("a", [RUN], 90)  # the crashed-looking call finished after all
    await ledger.settle("a", [RUN], 90)
    assert await totals(ledger, RUN) == [(90, 0)]


async def test_renew_outlives_the_first_ttl(ledger: Ledger) -> None:
    await ledger.reserve("a", [RUN], 100, 0.3)
    for _ in range(3):
        await asyncio.sleep(0.15)
        assert await ledger.renew("a", 0.3)
    assert await totals(ledger, RUN) == [(0, 100)]
    await ledger.settle("a", [RUN], 60)
    assert await totals(ledger, RUN) == [(60, 0)]


async def test_release_then_settle_adds_only_spend(ledger: Ledger) -> None:
    await ledger.reserve("a", [ORG, RUN], 200, 30)
    await ledger.release("a")
    await ledger.release("a")
    assert await totals(ledger, ORG, RUN) == [(0, 0), (0, 0)]
    await ledger.settle("a", [ORG, RUN], 50)
    await ledger.release("a")
    assert await totals(ledger, ORG, RUN) == [(50, 0), (50, 0)]


async def test_seed_is_set_per_version_and_force_goes_over(ledger: Ledger) -> None:
    assert await ledger.seed(ORG, 400, "v1")
    assert not await ledger.seed(ORG, 400, "v1")
    assert await totals(ledger, ORG) == [(400, 0)]
    forced = await ledger.reserve("a", [ORG], 700, 30, force=True)
    assert forced.ok and forced.refused is not None and forced.refused.reserved_nano == 700
    assert await ledger.seed(ORG, 100, "v2")
    assert await totals(ledger, ORG) == [(100, 700)]


async def test_a_later_rebuild_keeps_live_counters(ledger: Ledger) -> None:
    """A counter born after the lifetime's first rebuild (a new window, a new scope) has counted every settle,
    some not in the store yet: a later rebuild (a reload, another replica starting) must not set it back."""
    if isinstance(ledger, RedisLedger):
        await ledger.mark_seeded("v1", [ORG])  # this Redis lifetime was rebuilt (the marker names v1)
    assert (await ledger.reserve("a", [ORG], 100, 30)).ok
    await ledger.settle("a", [ORG], 60)  # live spend the store may not hold yet
    assert not await ledger.seed(ORG, 10, "v1", keep_live=True)
    assert await totals(ledger, ORG) == [(60, 0)]
    assert await ledger.seed(RUN, 25, "v1", keep_live=True)  # a counter it does not hold: set from the store
    assert await totals(ledger, RUN) == [(25, 0)]
    assert await ledger.seed(ORG, 10, "v2")  # a new lifetime (Redis restarted): the store's total wins
    assert await totals(ledger, ORG) == [(10, 0)]


@pytest.mark.redis
async def test_keep_live_needs_the_lifetime_marker(redis_url: str, redis_prefix: str) -> None:
    ledger = RedisLedger(redis_url, prefix=redis_prefix)
    await ledger.settle("a", [ORG], 60)  # a settle on a Redis that restarted empty, before any rebuild
    assert await ledger.seed(ORG, 500, "v9", keep_live=True)  # no marker for v9: the store's total is set
    assert await totals(ledger, ORG) == [(500, 0)]
    await ledger.aclose()


async def test_invalid_amounts_and_duplicates(ledger: Ledger) -> None:
    with pytest.raises(InvalidCounters):
        await ledger.reserve("a", [ORG, ORG], 1, 30)
    with pytest.raises(ValueError):
        await ledger.reserve("a", [ORG], -1, 30)
    assert await ledger.ping()


async def test_large_amounts_stay_exact(ledger: Ledger) -> None:
    # Amounts travel as decimal strings and are added by HINCRBY: exact, no float formatting (1e+15).
    big = CounterSpec("sg:{acme}:b:big", limit_nano=9 * 10**15, ttl_s=600)
    assert (await ledger.reserve("a", [big], 4 * 10**15 + 1, 30)).ok
    assert not (await ledger.reserve("b", [big], 5 * 10**15, 30)).ok
    await ledger.settle("a", [big], 3_999_999_999_999_999)
    assert await totals(ledger, big) == [(3_999_999_999_999_999, 0)]


@pytest.mark.redis
async def test_every_key_expires(redis_url: str, redis_prefix: str) -> None:
    ledger = RedisLedger(redis_url, prefix=redis_prefix)
    await ledger.reserve("a", [ORG, RUN], 10, 30)
    await ledger.reserve("b", [ORG], 10, 30)
    await ledger.settle("a", [ORG, RUN], 5)
    await ledger.release("b")
    await ledger.seed(CounterSpec("sg:{acme}:b:seeded", 100, 60), 5, "v1")
    await ledger.aclose()
    with sync_redis.Redis.from_url(redis_url) as client:
        keys = list(client.scan_iter(match=f"{redis_prefix}*"))
        assert len(keys) >= 4
        assert all(client.ttl(key) > 0 for key in keys)  # nothing immortal is left behind in Redis


async def test_500_concurrent_calls_over_several_counters(ledger: Ledger) -> None:
    caps = [
        CounterSpec("sg:{acme}:b:org", limit_nano=200_000, ttl_s=600),
        CounterSpec("sg:{acme}:b:project:p1", limit_nano=120_000, ttl_s=600),
        CounterSpec("sg:{acme}:b:agent:a1", limit_nano=90_000, ttl_s=600),
    ]
    rng = random.Random(11)
    settled: list[int] = []

    async def call(i: int) -> None:
        counters = [caps[0], *rng.sample(caps[1:], rng.randint(0, 2))]
        amount = rng.randint(0, 2_000)
        result = await ledger.reserve(f"c{i}", counters, amount, 30)
        for state in result.states:
            assert state.spent_nano + state.reserved_nano <= state.limit_nano
        if result.ok:
            await asyncio.sleep(rng.random() / 200)
            actual = rng.randint(0, amount)
            for state in await ledger.settle(f"c{i}", counters, actual):
                assert state.spent_nano + state.reserved_nano <= state.limit_nano
            settled.append(actual)

    await asyncio.gather(*(call(i) for i in range(500)))
    final = await ledger.states(caps)
    assert all(s.reserved_nano == 0 and s.spent_nano <= s.limit_nano for s in final)
    assert final[0].spent_nano == sum(settled)
    assert 0 < len(settled) < 500


# -- several OS processes on one Redis -----------------------------------------------------------------

WORKER = """
import asyncio, json, random, sys, time
from policies.ledger import CounterSpec, RedisLedger

async def main(url, prefix, mode, start_at, seed):
    ledger = RedisLedger(url, prefix=prefix)
    caps = [CounterSpec("sg:{acme}:b:org", 150_000, 600), CounterSpec("sg:{acme}:b:run:x", 100_000, 600)]
    await asyncio.sleep(max(0.0, start_at - time.time()))  # all processes start hammering together
    if mode == "seed":
        print(json.dumps({"applied": await ledger.seed(caps[0], 77_777, "v2")}))
        return await ledger.aclose()
    rng, settled, worst = random.Random(seed), 0, 0

    async def call(i):
        nonlocal settled, worst
        counters = caps if i % 2 else caps[:1]
        amount = rng.randint(1, 3_000)
        result = await ledger.reserve(f"p{seed}-{i}", counters, amount, 30)
        worst = max([worst, *(s.spent_nano + s.reserved_nano - s.limit_nano for s in result.states)])
        if result.ok:
            await asyncio.sleep(rng.random() / 100)
            actual = rng.randint(0, amount)
            await ledger.settle(f"p{seed}-{i}", counters, actual)
            settled += actual

    await asyncio.gather(*(call(i) for i in range(200)))
    print(json.dumps({"settled": settled, "worst_overshoot": worst}))
    await ledger.aclose()

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5])))
"""


async def run_workers(url: str, prefix: str, mode: str, count: int = 3) -> list[dict[str, int]]:
    start_at = time.time() + 1.5  # past every interpreter's start-up
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", WORKER, url, prefix, mode, str(start_at), str(n),
            cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        for n in range(count)
    ]
    outputs = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in procs)), timeout=60)
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err.decode()
    return [json.loads(out) for out, _ in outputs]


@pytest.mark.redis
async def test_three_processes_never_pass_the_cap(redis_url: str, redis_prefix: str) -> None:
    results = await run_workers(redis_url, redis_prefix, "hammer")
    ledger = RedisLedger(redis_url, prefix=redis_prefix)
    org, run = await ledger.states(
        [CounterSpec("sg:{acme}:b:org", 150_000, 600), CounterSpec("sg:{acme}:b:run:x", 100_000, 600)]
    )
    await ledger.aclose()
    assert all(r["worst_overshoot"] <= 0 for r in results)
    assert org.reserved_nano == 0 and run.reserved_nano == 0
    assert org.spent_nano == sum(r["settled"] for r in results) <= org.limit_nano
    assert run.spent_nano <= run.limit_nano
    assert org.spent_nano > 0


@pytest.mark.redis
async def test_three_processes_seeding_at_once_give_one_total(redis_url: str, redis_prefix: str) -> None:
    ledger = RedisLedger(redis_url, prefix=redis_prefix)
    org = CounterSpec("sg:{acme}:b:org", 150_000, 600)
    assert await ledger.seed(org, 5_000, "v1")  # an older seed, then three replicas restart together
    results = await run_workers(redis_url, redis_prefix, "seed")
    assert sorted(r["applied"] for r in results) == [False, False, True]
    assert await totals(ledger, org) == [(77_777, 0)]
    await ledger.aclose()


# -- faults: closed port, a stopped and a hung private redis-server ------------------------------------


@pytest.mark.redis
async def test_closed_port_raises_ledger_unavailable_without_the_password(closed_port: int) -> None:
    ledger = RedisLedger(f"redis://:s3cret-pw@127.0.0.1:{closed_port}/0", socket_timeout=0.5)
    for operation in (
        ledger.reserve("a", [ORG], 1, 30),
        ledger.settle("a", [ORG], 1),
        ledger.release("a"),
        ledger.renew("a", 30),
        ledger.states([ORG]),
        ledger.seed(ORG, 1, "v1"),
    ):
        with pytest.raises(LedgerUnavailable) as caught:
            await operation
        assert "s3cret-pw" not in str(caught.value) and "***" in str(caught.value)
    assert not await ledger.ping()
    await ledger.aclose()


@pytest.mark.redis
async def test_stopped_then_restarted_redis(private_redis: PrivateRedis) -> None:
    ledger = RedisLedger(private_redis.url, socket_timeout=0.5)
    assert (await ledger.reserve("a", [ORG], 100, 30)).ok
    private_redis.stop()
    with pytest.raises(LedgerUnavailable):
        await ledger.settle("a", [ORG], 50)
    with pytest.raises(LedgerUnavailable):
        await ledger.reserve("b", [ORG], 100, 30)
    assert not await ledger.ping()
    private_redis.start()  # same port, empty (no persistence): operations work again, scripts reloaded
    assert await ledger.ping()
    assert (await ledger.reserve("b", [ORG], 100, 30)).ok
    assert await totals(ledger, ORG) == [(0, 100)]
    await ledger.aclose()


@pytest.mark.redis
async def test_guarded_reserve_refuses_counters_never_rebuilt(private_redis: PrivateRedis) -> None:
    """The proxy's ledger is guarded: after Redis restarts empty, nothing is reserved against zeros until the
    counters are rebuilt from the store and the seeded marker is set again."""
    ledger = RedisLedger(private_redis.url, socket_timeout=0.5, guard=True)
    with pytest.raises(LedgerUnseeded):
        await ledger.reserve("a", [ORG], 100, 30)
    version = await ledger.version()
    assert await ledger.seed(ORG, 700, version)
    await ledger.mark_seeded(version)
    assert (await ledger.reserve("a", [ORG, RUN], 100, 30)).ok  # limits and ttls still line up per counter
    assert await totals(ledger, ORG, RUN) == [(700, 100), (0, 100)]
    assert not (await ledger.reserve("b", [ORG], 201, 30)).ok  # 700 + 100 + 201 > 1000
    private_redis.stop()
    private_redis.start()
    with pytest.raises(LedgerUnseeded):  # the first command after the restart reconnects (asyncio Retry)
        await ledger.reserve("c", [ORG], 100, 30)
    assert await ledger.version() != version
    await ledger.aclose()


async def test_cluster_guard_marks_each_org_slot(closed_port: int) -> None:
    ledger = RedisLedger(f"redis://127.0.0.1:{closed_port}/0", cluster=True, guard=True, prefix="p:")
    assert ledger._seeded_key([ORG]) == "p:sg:{acme}:seeded"
    assert hash_tag(ledger._seeded_key([CounterSpec("sg:{globex}:b:org", 10, 60)])) == "globex"
    await ledger.mark_seeded("v1")  # no counters in cluster mode: no slot to mark, nothing sent


@pytest.mark.redis
async def test_hung_redis_times_out_as_ledger_unavailable(private_redis: PrivateRedis) -> None:
    ledger = RedisLedger(private_redis.url, socket_timeout=0.3)
    assert await ledger.ping()
    private_redis.pause()
    try:
        started = time.monotonic()
        with pytest.raises(LedgerUnavailable):
            await ledger.reserve("a", [ORG], 1, 30)
        assert time.monotonic() - started < 5
    finally:
        private_redis.resume()
    assert (await ledger.reserve("a", [ORG], 1, 30)).ok
    await ledger.aclose()


# -- Redis Cluster key rules (checked before any network I/O) -------------------------------------------


def test_hash_tags() -> None:
    assert hash_tag("sg:{acme}:b:x") == "acme"
    assert hash_tag("sg:{}:b:{acme}") is None
    assert hash_tag("sg:b:x") is None


async def test_cluster_mode_refuses_counters_in_several_slots(closed_port: int) -> None:
    ledger = RedisLedger(f"redis://127.0.0.1:{closed_port}/0", cluster=True)
    other = CounterSpec("sg:{globex}:b:org", 10, 60)
    untagged = CounterSpec("sg:b:all", 10, 60)
    for counters in ([ORG, other], [ORG, untagged], [untagged]):
        with pytest.raises(InvalidCounters):
            await ledger.reserve("a", counters, 1, 30)
    with pytest.raises(InvalidCounters):
        await ledger.release("unknown-here")  # cluster mode needs the counters to find the slot
    with pytest.raises(ValueError):
        RedisLedger("redis://127.0.0.1:1/0", prefix="bad{prefix}")
