"""The metrics APIs' per-key cap (`RateLimits.check_api`): GCRA over `server.metrics_rate_limit_per_minute`,
with a Retry-After that is actually enough."""

from __future__ import annotations

from proxy.ratelimit import MemoryRates, RateLimits


class Clock:
    def __init__(self, t: float = 6000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def limiter(per_minute: int, clock: Clock) -> RateLimits:
    return RateLimits(MemoryRates(clock), api_per_minute=per_minute)


async def test_allows_the_limit_at_once_then_refuses_with_a_wait_that_is_enough() -> None:
    clock = Clock()
    limits = limiter(5, clock)
    assert [await limits.check_api("acme", "k") for _ in range(5)] == [None] * 5
    clock.t += 10
    wait = await limits.check_api("acme", "k")
    assert wait == 2  # one request every 12 s after the burst: the next is due at 12 s
    assert await limits.check_api("acme", "other") is None  # per key
    clock.t += wait
    assert await limits.check_api("acme", "k") is None  # after waiting as told, one request fits again
    assert await limits.check_api("acme", "k") is not None


async def test_the_wait_is_whole_seconds_rounded_up_and_at_least_one() -> None:
    clock = Clock()
    limits = limiter(600, clock)  # one every 0.1 s
    for _ in range(600):
        assert await limits.check_api("acme", "k") is None
    assert await limits.check_api("acme", "k") == 1


async def test_a_quiet_key_gets_its_whole_burst_back() -> None:
    clock = Clock()
    limits = limiter(3, clock)
    for _ in range(3):
        await limits.check_api("acme", "k")
    clock.t += 60
    assert [await limits.check_api("acme", "k") for _ in range(3)] == [None] * 3
