"""Per-key rate limit arithmetic with an injected clock: GCRA for requests per minute, a token bucket that
goes into debt for tokens per minute, the `x-ratelimit-*` headers, and which keys are limited at all."""

from __future__ import annotations

import hashlib

import pytest

from policies.errors import LedgerUnavailable
from proxy.errors import RateLimited, ServiceUnavailable
from proxy.ratelimit import (
    KeyLimits,
    MemoryRates,
    RateLimits,
    Verdict,
    bucket_level,
    duration,
    gcra,
    interval_us,
    key_limits,
)
from proxy.settings import ConfigError, KeyConfig, Settings, parse_settings


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def admit(store: MemoryRates, rpm: int | None = None, tpm: int | None = None, key: str = "k") -> Verdict:
    return store.admit_now(key + ":rpm", key + ":tpm", rpm, tpm)


# --- GCRA ------------------------------------------------------------------------------------------------

def test_an_idle_key_may_send_its_whole_rpm_at_once_then_one_per_interval() -> None:
    clock = Clock()
    store = MemoryRates(clock)
    verdicts = [admit(store, rpm=6) for _ in range(6)]
    assert [v.exceeded for v in verdicts] == [None] * 6
    assert [v.remaining_requests for v in verdicts] == [5, 4, 3, 2, 1, 0]
    refused = admit(store, rpm=6)
    assert refused.exceeded == "requests" and refused.wait_s == pytest.approx(10.0)
    assert refused.retry_after == 10 and refused.remaining_requests == 0
    clock.t += 9.9
    assert admit(store, rpm=6).exceeded == "requests"  # a refusal changed nothing: still 0.1 s to go
    clock.t += 0.1
    assert admit(store, rpm=6).exceeded is None  # one interval later, exactly one more
    assert admit(store, rpm=6).exceeded == "requests"


def test_gcra_rounding_never_refuses_the_last_request_of_a_burst() -> None:
    for rpm in (7, 13, 61, 119, 997):
        store = MemoryRates(Clock(1.7e9))  # a large clock: the additions lose precision
        assert all(admit(store, rpm=rpm).exceeded is None for _ in range(rpm)), rpm
        assert admit(store, rpm=rpm).exceeded == "requests"


def test_gcra_refills_one_request_per_interval_up_to_the_burst() -> None:
    s = 1_000_000  # gcra works in whole microseconds
    view = gcra(None, 100 * s, 120)
    assert view.admitted and view.remaining == 119 and view.reset_us == s // 2
    view = gcra(160 * s, 100 * s, 120)  # full: the 121st is due half a second later
    assert not view.admitted and view.wait_us == s // 2 and view.reset_us == 60 * s and view.remaining == 0
    view = gcra(160 * s, 110 * s, 120)  # ten seconds on: twenty requests back
    assert view.admitted and view.remaining == 19
    assert gcra(50 * s, 100 * s, 120).remaining == 119  # a TAT in the past is an idle key


def test_an_interval_that_is_not_whole_microseconds_rounds_towards_fewer_requests() -> None:
    assert interval_us(7) == 8_571_429 and interval_us(120) == 500_000


def test_limits_are_per_key() -> None:
    store = MemoryRates(Clock())
    assert admit(store, rpm=1, key="a").exceeded is None
    assert admit(store, rpm=1, key="a").exceeded == "requests"
    assert admit(store, rpm=1, key="b").exceeded is None


# --- token bucket in debt --------------------------------------------------------------------------------

async def test_tokens_admit_while_not_in_debt_and_the_charge_may_go_negative() -> None:
    clock = Clock()
    store = MemoryRates(clock)
    first = admit(store, tpm=600)
    assert first.exceeded is None and first.remaining_tokens == 600 and first.reset_tokens_s == 0
    await store.charge("k:tpm", 600, 500)
    assert admit(store, tpm=600).remaining_tokens == 100  # admission charges nothing
    await store.charge("k:tpm", 600, 400)  # level -300: in debt
    refused = admit(store, tpm=600)
    assert refused.exceeded == "tokens" and refused.remaining_tokens == 0
    assert refused.wait_s == pytest.approx(30.0, abs=1e-3)  # 300 tokens at 10 per second
    assert refused.retry_after == 30 and refused.reset_tokens_s == pytest.approx(90.0)
    clock.t += 30.0
    assert admit(store, tpm=600).exceeded == "tokens"  # level exactly 0: not above it yet
    clock.t += 0.1
    ok = admit(store, tpm=600)
    assert ok.exceeded is None and ok.remaining_tokens == 1


def test_the_bucket_refills_at_tpm_per_minute_and_never_above_capacity() -> None:
    assert bucket_level(None, 0.0, 5.0, 600) == 600
    assert bucket_level(-300.0, 0.0, 6.0, 600) == pytest.approx(-240.0)
    assert bucket_level(0.0, 0.0, 600.0, 600) == 600  # capped
    assert bucket_level(100.0, 10.0, 5.0, 600) == 100  # a clock that went back refills nothing


async def test_a_refusal_by_tokens_does_not_count_the_request() -> None:
    clock = Clock()
    store = MemoryRates(clock)
    await store.charge("k:tpm", 60, 120)
    refused = admit(store, rpm=2, tpm=60)
    assert refused.exceeded == "tokens" and refused.remaining_requests == 2  # not counted
    clock.t += 61
    assert [admit(store, rpm=2, tpm=60).exceeded for _ in range(3)] == [None, None, "requests"]


# --- headers, config ---------------------------------------------------------------------------------------

def test_headers_name_only_the_limits_a_key_has() -> None:
    store = MemoryRates(Clock())
    assert set(admit(store, rpm=10).headers()) == {
        "x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests"}
    both = admit(store, rpm=10, tpm=1000, key="b").headers()
    assert both == {"x-ratelimit-limit-requests": "10", "x-ratelimit-remaining-requests": "9",
                    "x-ratelimit-reset-requests": "6s", "x-ratelimit-limit-tokens": "1000",
                    "x-ratelimit-remaining-tokens": "1000", "x-ratelimit-reset-tokens": "0s"}


@pytest.mark.parametrize("seconds, text", [(0, "0s"), (0.0004, "1ms"), (0.25, "250ms"), (1, "1s"),
                                           (1.5, "1.5s"), (59.9991, "1m0s"), (360, "6m0s"),
                                           (90.25, "1m30.25s")])
def test_durations_are_written_like_openais_reset_headers(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def key(name: str, **limits: int) -> KeyConfig:
    return KeyConfig(name=name, key_sha256=hashlib.sha256(name.encode()).hexdigest(), org="acme", **limits)


def test_keys_without_limits_are_absent_and_defaults_fill_keys_that_set_none() -> None:
    keys = [key("free"), key("rpm", rpm=10), key("tpm", tpm=500)]
    assert key_limits(keys, None, None) == {"rpm": KeyLimits(10, None), "tpm": KeyLimits(None, 500)}
    assert key_limits(keys, 60, 1000) == {"free": KeyLimits(60, 1000), "rpm": KeyLimits(10, None),
                                          "tpm": KeyLimits(None, 500)}


def test_the_table_follows_a_reloaded_key_list() -> None:
    limits = RateLimits(MemoryRates())
    settings = Settings(keys=[key("a", rpm=5)])
    assert limits.limits_for(settings, "a") == KeyLimits(5, None) and limits.limits_for(settings, "b") is None
    reloaded = settings.model_copy(update={"keys": [key("b", tpm=9)]})
    assert limits.limits_for(reloaded, "a") is None and limits.limits_for(reloaded, "b") == KeyLimits(None, 9)


# --- RateLimits: errors, store down ----------------------------------------------------------------------

async def test_an_over_limit_key_gets_rate_limited_with_retry_after_and_headers() -> None:
    limits = RateLimits(MemoryRates(Clock()))
    assert (await limits.admit("acme", "k", KeyLimits(rpm=1))) is not None
    with pytest.raises(RateLimited) as caught:
        await limits.admit("acme", "k", KeyLimits(rpm=1))
    assert caught.value.status == 429 and caught.value.code == "rate_limited"
    assert caught.value.headers["retry-after"] == "60"
    assert caught.value.headers["x-ratelimit-remaining-requests"] == "0"


async def test_count_tokens_ignores_the_token_bucket() -> None:
    store = MemoryRates(Clock())
    limits = RateLimits(store)
    await store.charge(limits._key("acme", "k", "tpm"), 10, 100)
    with pytest.raises(RateLimited):
        await limits.admit("acme", "k", KeyLimits(rpm=5, tpm=10))
    assert (await limits.admit("acme", "k", KeyLimits(rpm=5, tpm=10), tokens=False)) is not None


class DownStore(MemoryRates):
    async def admit(self, rpm_key: str, tpm_key: str, rpm: int | None, tpm: int | None) -> Verdict:
        raise LedgerUnavailable("down")

    async def charge(self, tpm_key: str, tpm: int, tokens: int) -> None:
        raise LedgerUnavailable("down")


async def test_a_store_that_is_down_blocks_or_lets_calls_pass_as_configured() -> None:
    with pytest.raises(ServiceUnavailable):
        await RateLimits(DownStore()).admit("acme", "k", KeyLimits(rpm=5))
    allow = RateLimits(DownStore(), on_unavailable="allow")
    assert (await allow.admit("acme", "k", KeyLimits(rpm=5))) is None
    await allow.charge("acme", "k", 5, 100)  # logged, never raised


async def test_the_metrics_api_cap_falls_back_to_this_replica_when_the_store_is_down() -> None:
    limits = RateLimits(DownStore(), api_per_minute=2)
    assert [await limits.check_api("acme", "k") for _ in range(2)] == [None, None]
    assert await limits.check_api("acme", "k") == 30.0


def test_bad_limits_are_config_errors_at_their_lines() -> None:
    digest = hashlib.sha256(b"k").hexdigest()
    text = (f"server:\n  default_rpm: -1\n  rate_limit_key_prefix: 'a{{b}}'\nkeys:\n  - name: k\n"
            f"    key_sha256: {digest}\n    org: acme\n    rpm: 0\n    tpm: '100'\n")
    with pytest.raises(ConfigError) as caught:
        parse_settings(text)
    lines = caught.value.lines
    assert lines[0] == "config.yaml:2 server.default_rpm: Input should be greater than 0 (got -1)"
    assert lines[1] == ("config.yaml:3 server.rate_limit_key_prefix: must not contain braces or whitespace "
                        "(a brace would change the Redis hash slot) (got 'a{b}')")
    assert lines[2] == "config.yaml:8 keys[0].rpm: Input should be greater than 0 (got 0)"
    assert lines[3] == "config.yaml:9 keys[0].tpm: Input should be a valid integer (got '100')"
    assert len(lines) == 4
