"""Per-key rate limits: requests per minute (GCRA) and tokens per minute (a token bucket that may go into
debt), decided in process memory or, when the ledger is on Redis, in Redis so every replica shares one limit;
and the metrics APIs' per-key request cap on the same store.

Requests (`rpm`): GCRA with emission interval 60/rpm s and a burst tolerance of `rpm` requests, so an idle
key may send `rpm` requests at once, then one every 60/rpm s: the familiar "rpm per rolling minute".
Tokens (`tpm`): a bucket of `tpm` tokens refilling at tpm/60 per second. A call is admitted while the bucket
is not in debt (level > 0); when its row is recorded its real tokens (input + output) are taken, which may
drive the level below zero so that the following calls wait. This is how OpenAI-style tpm limits behave when
the size of an answer is unknown until it ends.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from policies.errors import LedgerUnavailable
from proxy.errors import RateLimited, ServiceUnavailable

if TYPE_CHECKING:
    from policies.ledger.redis import RedisClient
    from proxy.prometheus import Metrics
    from proxy.settings import KeyConfig, Settings

log = logging.getLogger(__name__)

MINUTE_S = 60.0
MINUTE_US = 60_000_000
EPSILON_S = 1e-6
_LOG_EVERY_S = 10.0  # "the rate store is down, calls pass unlimited" is logged at most this often
Limit = Literal["requests", "tokens"]


@dataclass(frozen=True, slots=True)
class KeyLimits:
    """One key's limits (None: unlimited). A key with neither is never looked up in the store."""

    rpm: int | None = None
    tpm: int | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    """One decision and the numbers behind the `x-ratelimit-*` headers. `exceeded` names the limit that
    refused the request (None: admitted); `wait_s` is how long until it would be admitted."""

    exceeded: Limit | None
    wait_s: float
    rpm: int | None
    remaining_requests: int
    reset_requests_s: float  # until the request limit is back to its full burst
    tpm: int | None
    remaining_tokens: int
    reset_tokens_s: float  # until the bucket is full again

    @property
    def retry_after(self) -> int:
        """Whole seconds, rounded up, at least 1: a client that waits this long is admitted."""
        return max(1, math.ceil(self.wait_s - EPSILON_S))

    def headers(self) -> dict[str, str]:
        """OpenAI's `x-ratelimit-*` headers for the limits this key has."""
        out: dict[str, str] = {}
        if self.rpm is not None:
            out["x-ratelimit-limit-requests"] = str(self.rpm)
            out["x-ratelimit-remaining-requests"] = str(self.remaining_requests)
            out["x-ratelimit-reset-requests"] = duration(self.reset_requests_s)
        if self.tpm is not None:
            out["x-ratelimit-limit-tokens"] = str(self.tpm)
            out["x-ratelimit-remaining-tokens"] = str(self.remaining_tokens)
            out["x-ratelimit-reset-tokens"] = duration(self.reset_tokens_s)
        return out


def duration(seconds: float) -> str:
    """A duration the way OpenAI writes its reset headers (Go style): `250ms`, `1.5s`, `6m0s`."""
    ms = max(0, math.ceil(seconds * 1000 - 1e-6))
    if ms < 1000:
        return f"{ms}ms" if ms else "0s"
    minutes, rest_ms = divmod(ms, 60_000)
    rest = f"{rest_ms / 1000:.3f}".rstrip("0").rstrip(".")
    return f"{minutes}m{rest}s" if minutes else f"{rest}s"


# --- the arithmetic (the Lua scripts do the same in microseconds) ------------------------------------------

@dataclass(frozen=True, slots=True)
class RequestsView:
    """GCRA for one request at `now`, in whole microseconds: `new_tat` is the theoretical arrival time to
    store if it is admitted."""

    admitted: bool
    new_tat: int
    wait_us: int
    remaining: int
    reset_us: int


def interval_us(rpm: int) -> int:
    """GCRA's emission interval, rounded up to a whole microsecond."""
    return -(-MINUTE_US // rpm)


def gcra(tat: int | None, now: int, rpm: int) -> RequestsView:
    """GCRA in integer microseconds (exact, so a burst never loses its last request to rounding): emission
    interval T = 60 s / rpm rounded up (never faster than the limit), burst of `rpm` requests; admitted if the
    new TAT is at most rpm * T ahead of now."""
    interval = interval_us(rpm)
    window = rpm * interval
    base = now if tat is None or tat < now else tat
    new_tat = base + interval
    late = new_tat - window - now
    if late > 0:
        return RequestsView(False, base, late, (now + window - base) // interval, base - now)
    return RequestsView(True, new_tat, 0, (now + window - new_tat) // interval, new_tat - now)


def bucket_level(level: float | None, at: float, now: float, tpm: int) -> float:
    """The bucket's level at `now`: full when never used (or expired), else refilled at tpm/60 per second."""
    if level is None:
        return float(tpm)
    return min(float(tpm), level + max(0.0, now - at) * tpm / MINUTE_S)


def bucket_wait(level: float, tpm: int) -> float:
    """Seconds until a bucket at `level` is out of debt (level > 0); 0 when it is not in debt."""
    return 0.0 if level > 0 else -level * MINUTE_S / tpm + EPSILON_S


def bucket_reset(level: float, tpm: int) -> float:
    """Seconds until the bucket is full again."""
    return max(0.0, (tpm - level) * MINUTE_S / tpm)


def verdict(rpm: int | None, tpm: int | None, requests: RequestsView | None, level: float | None) -> Verdict:
    """The decision from both views: tokens first (a key in debt waits), then requests."""
    exceeded: Limit | None = None
    wait = 0.0
    remaining, reset = (requests.remaining, requests.reset_us) if requests is not None else (0, 0)
    if tpm is not None and level is not None and level <= 0:
        exceeded, wait = "tokens", bucket_wait(level, tpm)
        if requests is not None and requests.admitted and rpm is not None:  # the request was not counted
            remaining, reset = min(rpm, remaining + 1), max(0, reset - interval_us(rpm))
    elif requests is not None and not requests.admitted:
        exceeded, wait = "requests", requests.wait_us / 1e6
    return Verdict(
        exceeded, wait, rpm, remaining, reset / 1e6,
        tpm, max(0, math.floor(level + 1e-6)) if level is not None else 0,
        bucket_reset(level, tpm) if level is not None and tpm is not None else 0.0,
    )


# --- stores ----------------------------------------------------------------------------------------------

class RateStore(Protocol):
    """Where limit state lives. `admit` is atomic per key: it reads the token bucket, then counts the request
    only if the call is admitted (a refused call changes nothing). `charge` takes `tokens` from the bucket.
    State expires once it is back to idle, so a key unused for a minute costs no memory. Redis failures are
    raised as `LedgerUnavailable`."""

    async def admit(self, rpm_key: str, tpm_key: str, rpm: int | None, tpm: int | None) -> Verdict: ...

    async def charge(self, tpm_key: str, tpm: int, tokens: int) -> None: ...

    async def aclose(self) -> None: ...


class MemoryRates:
    """Limit state in this process (one replica, or the fallback of the metrics APIs' cap)."""

    _PRUNE_AT = 100_000  # keys are bounded by config; this only guards memory

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._tat: dict[str, int] = {}  # key -> theoretical arrival time, microseconds
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (level, at)

    async def admit(self, rpm_key: str, tpm_key: str, rpm: int | None, tpm: int | None) -> Verdict:
        return self.admit_now(rpm_key, tpm_key, rpm, tpm)

    def admit_now(self, rpm_key: str, tpm_key: str, rpm: int | None, tpm: int | None) -> Verdict:
        now = self._clock()
        level = None
        if tpm is not None:
            stored = self._buckets.get(tpm_key)
            level = bucket_level(stored[0], stored[1], now, tpm) if stored else float(tpm)
        now_us = round(now * 1_000_000)
        requests = gcra(self._tat.get(rpm_key), now_us, rpm) if rpm is not None else None
        result = verdict(rpm, tpm, requests, level)
        if result.exceeded is None and requests is not None:
            if len(self._tat) >= self._PRUNE_AT:
                self._tat = {k: v for k, v in self._tat.items() if v > now_us}
            self._tat[rpm_key] = requests.new_tat
        return result

    async def charge(self, tpm_key: str, tpm: int, tokens: int) -> None:
        now = self._clock()
        stored = self._buckets.get(tpm_key)
        level = bucket_level(stored[0], stored[1], now, tpm) if stored else float(tpm)
        if len(self._buckets) >= self._PRUNE_AT:
            self._buckets = {k: (lv, at) for k, (lv, at) in self._buckets.items()
                             if bucket_reset(lv, tpm) > now - at}
        self._buckets[tpm_key] = (level - tokens, now)

    async def aclose(self) -> None:
        return None


# --- what the routes use ----------------------------------------------------------------------------------

def key_limits(keys: Sequence[KeyConfig], default_rpm: int | None,
               default_tpm: int | None) -> dict[str, KeyLimits]:
    """Each limited key's limits by name; a key that sets neither takes the server defaults. Keys left
    unlimited are absent, so looking them up costs one dict miss."""
    table: dict[str, KeyLimits] = {}
    for key in keys:
        if key.rpm is None and key.tpm is None:
            limits = KeyLimits(default_rpm, default_tpm)
        else:
            limits = KeyLimits(key.rpm, key.tpm)
        if limits.rpm is not None or limits.tpm is not None:
            table[key.name] = limits
    return table


class RateLimits:
    """The configured per-key limits over one store, and the metrics APIs' per-key cap (`check_api`)."""

    def __init__(self, store: RateStore, *, prefix: str = "", api_per_minute: int = 1000,
                 on_unavailable: str = "block", metrics: Metrics | None = None) -> None:
        self.store = store
        self.per_minute = api_per_minute
        self.metrics = metrics
        self._prefix = prefix
        self._block = on_unavailable != "allow"
        self._fallback = MemoryRates()  # the metrics APIs' cap while the shared store is down: per replica
        self._keys: object = None
        self._table: dict[str, KeyLimits] = {}
        self._logged_at = -math.inf

    def limits_for(self, settings: Settings, key_name: str) -> KeyLimits | None:
        """The key's limits in the current config (keys reload live: the table follows `settings.keys`)."""
        if settings.keys is not self._keys:
            server = settings.server
            self._table = key_limits(settings.keys, server.default_rpm, server.default_tpm)
            self._keys = settings.keys
        return self._table.get(key_name)

    def _key(self, org: str, key_name: str, kind: str) -> str:
        # {org}: the hash tag, so a key's state shares one Redis Cluster slot (as the ledger's counters do).
        return f"{self._prefix}sg:rl:{{{org}}}:{key_name}:{kind}"

    async def admit(self, org: str, key_name: str, limits: KeyLimits, *,
                    tokens: bool = True) -> Verdict | None:
        """Count one proxied request; raise RateLimited when over, ServiceUnavailable when the store is down
        and `on_unavailable` is block. None: the store was down and calls pass (`allow`). `tokens=False`
        (count_tokens) counts the request only."""
        tpm = limits.tpm if tokens else None
        try:
            result = await self.store.admit(self._key(org, key_name, "rpm"), self._key(org, key_name, "tpm"),
                                            limits.rpm, tpm)
        except LedgerUnavailable:
            if self._block:
                raise ServiceUnavailable(
                    "the rate limit store (the ledger's Redis) is unreachable, so no call of a rate-limited "
                    "key can be admitted (ledger.on_unavailable: block)",
                    headers={"retry-after": "1"}) from None
            self._log_down("rate limits not enforced: their store is unreachable (on_unavailable: allow)")
            return None
        if result.exceeded is not None:
            if self.metrics is not None:
                self.metrics.rate_limited(key_name, result.exceeded)
            per = "requests" if result.exceeded == "requests" else "tokens"
            limit = result.rpm if per == "requests" else result.tpm
            raise RateLimited(f"rate limit of {limit} {per} per minute for key {key_name!r} reached; retry "
                              f"after {result.retry_after} s (Retry-After)",
                              headers={"retry-after": str(result.retry_after), **result.headers()})
        return result

    async def charge(self, org: str, key_name: str, tpm: int, tokens: int) -> None:
        """Take a recorded call's tokens from the key's bucket. Never fails the call (the row is stored)."""
        try:
            await self.store.charge(self._key(org, key_name, "tpm"), tpm, tokens)
        except LedgerUnavailable:
            self._log_down("tokens not charged to a rate limit: its store is unreachable")

    async def check_api(self, org: str, key_name: str) -> float | None:
        """One metrics-API request of `key_name`: None when allowed, else seconds to wait. The cap is shared
        through Redis when the ledger is there; while Redis is down each replica counts on its own."""
        rpm_key = self._key(org, key_name, "api")
        try:
            result = await self.store.admit(rpm_key, rpm_key, self.per_minute, None)
        except LedgerUnavailable:
            self._log_down("metrics API rate limit counted per replica: its store is unreachable")
            result = self._fallback.admit_now(rpm_key, rpm_key, self.per_minute, None)
        if result.exceeded is None:
            return None
        if self.metrics is not None:
            self.metrics.rate_limited(key_name, "metrics_api")
        return float(result.retry_after)

    def _log_down(self, message: str) -> None:
        now = time.monotonic()
        if now - self._logged_at >= _LOG_EVERY_S:
            self._logged_at = now
            log.error(message)

    async def aclose(self) -> None:
        await self.store.aclose()


def open_rate_limits(settings: Settings, metrics: Metrics | None = None,
                     client: RedisClient | None = None) -> RateLimits:
    """Limits on the ledger's Redis when it has one (shared by every replica; through `client`, the ledger's,
    when given), else in this process."""
    ledger, server = settings.ledger, settings.server
    store: RateStore
    if ledger.url.startswith("memory://"):
        store = MemoryRates()
    else:
        from proxy.ratelimit_redis import RedisRates  # redis-py only when configured

        store = RedisRates(ledger.url, cluster=ledger.cluster, timeout_s=ledger.timeout_s, client=client)
    return RateLimits(store, prefix=server.rate_limit_key_prefix,
                      api_per_minute=server.metrics_rate_limit_per_minute,
                      on_unavailable=ledger.on_unavailable, metrics=metrics)
