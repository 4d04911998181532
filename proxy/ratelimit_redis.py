"""`RedisRates`: rate limit state in the ledger's Redis (or Redis Cluster), shared by every replica; each
operation is one Lua script (ratelimit_admit.lua, ratelimit_charge.lua) timed by Redis's own clock."""

from __future__ import annotations

import contextlib
from importlib import resources

from policies.ledger.redis import RedisClient, connect, redis_errors
from proxy.ratelimit import Limit, Verdict

_US = 1_000_000
_EXCEEDED: tuple[Limit | None, ...] = (None, "requests", "tokens")  # the script's first reply


def _script(name: str) -> str:
    return resources.files("proxy").joinpath(f"ratelimit_{name}.lua").read_text()


class RedisRates:
    """See `RateStore`. Both keys of one key share its org's hash tag (`sg:rl:{org}:...`), so one script
    touches one cluster slot. Redis failures are raised as `LedgerUnavailable`; the one retry redis-py makes
    after a dropped connection can count a request twice at worst (it errs towards limiting)."""

    def __init__(self, url: str, *, cluster: bool = False, timeout_s: float = 0.4, max_connections: int = 64,
                 pool_timeout_s: float = 5.0, client: RedisClient | None = None) -> None:
        self._url = url
        self._owns_client = client is None  # a client given is the proxy's shared one, closed by its owner
        self._client = client or connect(url, cluster=cluster, timeout_s=timeout_s, max_connections=max_connections,
                                         pool_timeout_s=pool_timeout_s)
        self._admit = self._client.register_script(_script("admit"))
        self._charge = self._client.register_script(_script("charge"))

    async def admit(self, rpm_key: str, tpm_key: str, rpm: int | None, tpm: int | None) -> Verdict:
        async with self._unavailable():
            reply = await self._admit(keys=[rpm_key, tpm_key], args=[rpm or 0, tpm or 0])
        code, wait_us, remaining, reset_us, tokens_left, tokens_reset_us = (int(x) for x in reply)
        # The script answers 0 for a limit the key does not have.
        return Verdict(_EXCEEDED[code], wait_us / _US, rpm, remaining, reset_us / _US, tpm, tokens_left,
                       tokens_reset_us / _US)

    async def charge(self, tpm_key: str, tpm: int, tokens: int) -> None:
        async with self._unavailable():
            await self._charge(keys=[tpm_key], args=[tpm, tokens])

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    def _unavailable(self) -> contextlib.AbstractAsyncContextManager[None]:
        return redis_errors(self._url, "rate limit store")
