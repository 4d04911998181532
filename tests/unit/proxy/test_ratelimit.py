"""The metrics APIs' per-key rate limiter: a sliding minute, with a Retry-After that is actually enough."""

from __future__ import annotations

from proxy.ratelimit import RateLimiter


class Clock:
    def __init__(self, t: float = 6000.0) -> None:  # the start of a minute
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_allows_the_limit_then_refuses_with_a_wait_until_the_minute_turns() -> None:
    clock = Clock()
    limiter = RateLimiter(5, clock)
    assert [limiter.check("k") for _ in range(5)] == [None] * 5
    clock.t += 10
    wait = limiter.check("k")
    assert wait is not None and 49 <= wait <= 50
    assert limiter.check("other") is None  # per key


def test_the_previous_minute_still_counts_while_it_overlaps_the_window() -> None:
    clock = Clock()
    limiter = RateLimiter(10, clock)
    for _ in range(10):
        assert limiter.check("k") is None
    clock.t += 60 + 6  # next minute, 10 % in: 90 % of the previous ten (9) still weigh in
    assert limiter.check("k") is None  # 9 + 1
    wait = limiter.check("k")  # 9 + 2 > 10: wait until 20 % of the previous minute has slid out
    assert wait == 6
    clock.t += wait  # after waiting as told, one request fits again
    assert limiter.check("k") is None


def test_a_quiet_key_forgets_old_minutes() -> None:
    clock = Clock()
    limiter = RateLimiter(3, clock)
    for _ in range(3):
        limiter.check("k")
    clock.t += 180
    assert [limiter.check("k") for _ in range(3)] == [None] * 3
