"""`RedisLedger`: the shared ledger on Redis (or Redis Cluster); every operation is one Lua script.

Keys (under `prefix`): a counter hash at its key, a ZSET of its live reservations at key + "~holds", and a
reservation hash at "sg:{tag}:r:<id>" (cluster: the counters' hash tag, so one script touches one slot) or
"sg:r:<id>" (standalone, where the id alone finds it from any replica). See common.lua for the fields.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Sequence
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry  # the asyncio one: the sync Retry never retries a coroutine
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError

from policies.errors import InvalidCounters, LedgerUnavailable, LedgerUnseeded
from policies.ledger.audit import CounterAudit, CounterRepair
from policies.ledger.base import (
    DEFAULT_MARKER_TTL_S,
    CounterSpec,
    CounterState,
    ReserveResult,
    check_amount,
    check_counters,
)

_OPERATIONS = ("reserve", "settle", "release", "renew", "states", "seed", "inspect", "repair")
# Cluster mode remembers which slot a reservation made here lives in, for release/renew given only an id.
_MAX_LOCAL_TAGS = 100_000


def hash_tag(key: str) -> str | None:
    """The Redis Cluster hash tag of `key` (text between the first '{' and the next '}'), if non-empty."""
    start = key.find("{")
    if start < 0:
        return None
    end = key.find("}", start + 1)
    if end <= start + 1:
        return None
    return key[start + 1 : end]


def _load_script(name: str) -> str:
    files = resources.files("policies.ledger")
    return files.joinpath("common.lua").read_text() + "\n" + files.joinpath(f"{name}.lua").read_text()


def _ms(ttl_s: float) -> int:
    return max(1, math.ceil(ttl_s * 1000))


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")).geturl()


RedisClient = aioredis.Redis | RedisCluster


def connect(url: str, *, cluster: bool = False, timeout_s: float = 1.0, retries: int = 1,
            max_connections: int = 64, pool_timeout_s: float = 5.0) -> RedisClient:
    """A Redis (or Redis Cluster) client as spendgate uses it everywhere (ledger, rate limits, idempotency):
    `timeout_s` per connect and per read, `retries` after a dropped connection or a timeout, and a bounded
    pool where a burst of calls waits up to `pool_timeout_s` for a connection instead of failing."""
    options: dict[str, Any] = {
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        "retry": Retry(NoBackoff(), retries),
    }
    if cluster:
        return RedisCluster.from_url(url, max_connections=max_connections, **options)
    pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=pool_timeout_s,
                                                    **options)
    return aioredis.Redis.from_pool(pool)  # the client owns (and closes) the pool


@contextlib.asynccontextmanager
async def redis_errors(url: str, what: str) -> AsyncIterator[None]:
    """Map every Redis failure to LedgerUnavailable("<what> at <url> unavailable: ..."); the message never
    carries the URL's password."""
    try:
        yield
    except (RedisError, OSError, TimeoutError) as exc:
        text = f"{type(exc).__name__}: {exc}"
        password = urlsplit(url).password
        if password:
            text = text.replace(password, "***")
        raise LedgerUnavailable(f"{what} at {_redacted(url)} unavailable: {text}") from exc


class RedisLedger:
    """Ledger on one Redis (or Redis Cluster) shared by every replica (see `Ledger` for the contract).

    Every error from Redis (down, timeout, loading, cluster down) is raised as `LedgerUnavailable`; each
    operation is idempotent, so the one retry redis-py makes after a dropped connection is safe.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "",
        cluster: bool = False,
        socket_timeout: float = 1.0,
        marker_ttl_s: float = DEFAULT_MARKER_TTL_S,
        retries: int = 1,
        max_connections: int = 64,
        pool_timeout_s: float = 5.0,
        guard: bool = False,
        client: RedisClient | None = None,
    ) -> None:
        if "{" in prefix or "}" in prefix:
            raise ValueError("the key prefix must not contain '{' or '}' (it would change the hash slot)")
        self._url = url
        self._prefix = prefix
        self._cluster = cluster
        # guard: `reserve` refuses (LedgerUnseeded) counters whose slot has no seeded marker, i.e. counters this
        # Redis never had rebuilt from the store; `mark_seeded` sets the marker after a rebuild.
        self._guard = guard
        self._marker_ms = _ms(marker_ttl_s)
        self._tags: dict[str, str] = {}
        # A client given is shared with the proxy's other Redis users (and closed by its owner, not here).
        self._owns_client = client is None
        self._client = client or connect(url, cluster=cluster, timeout_s=socket_timeout, retries=retries,
                                         max_connections=max_connections, pool_timeout_s=pool_timeout_s)
        self._scripts = {name: self._client.register_script(_load_script(name)) for name in _OPERATIONS}
        self._queued: list[tuple[str, list[str], list[str | int], asyncio.Future[Any]]] = []
        self._flushes: set[asyncio.Task[None]] = set()

    async def reserve(
        self,
        reservation_id: str,
        counters: Sequence[CounterSpec],
        amount_nano: int,
        ttl_s: float,
        *,
        force: bool = False,
    ) -> ReserveResult:
        check_amount("amount_nano", amount_nano)
        rkey = self._reservation_key(reservation_id, counters)
        args: list[str | int] = [reservation_id, amount_nano, _ms(ttl_s), int(force), int(self._guard)]
        for spec in counters:
            args += [spec.limit_nano, spec.ttl_s]
        marker = [self._seeded_key(counters)] if self._guard else []
        reply = await self._run("reserve", [rkey, *marker, *self._keys(counters)], args)
        if int(reply[0]) == -1:
            raise LedgerUnseeded("the redis ledger holds no counters rebuilt from the store (it restarted empty "
                                 "or was flushed)")
        states = _states(counters, reply[2:])
        refused = states[int(reply[1]) - 1] if int(reply[1]) else None
        if self._cluster and int(reply[0]):
            self._remember(reservation_id, counters)
        return ReserveResult(ok=bool(int(reply[0])), states=states, refused=refused)

    async def settle(
        self, reservation_id: str, counters: Sequence[CounterSpec], actual_nano: int
    ) -> tuple[CounterState, ...]:
        check_amount("actual_nano", actual_nano)
        rkey = self._reservation_key(reservation_id, counters)
        args: list[str | int] = [reservation_id, actual_nano, self._marker_ms, *(s.ttl_s for s in counters)]
        reply = await self._run("settle", [rkey, *self._keys(counters)], args)
        self._tags.pop(reservation_id, None)
        return _states(counters, reply)

    async def release(self, reservation_id: str, counters: Sequence[CounterSpec] = ()) -> None:
        rkey = self._reservation_key(reservation_id, counters, by_id=True)
        await self._run("release", [rkey], [reservation_id, self._marker_ms])
        self._tags.pop(reservation_id, None)

    async def renew(self, reservation_id: str, ttl_s: float, counters: Sequence[CounterSpec] = ()) -> bool:
        rkey = self._reservation_key(reservation_id, counters, by_id=True)
        return bool(int(await self._run("renew", [rkey], [reservation_id, _ms(ttl_s)])))

    async def states(self, counters: Sequence[CounterSpec]) -> list[CounterState]:
        if not counters:
            return []
        self._reservation_key("", counters)  # validates the counters (duplicates, cluster slots)
        return list(_states(counters, await self._run("states", self._keys(counters), [])))

    async def seed(self, counter: CounterSpec, spent_nano: int, version: str, *, keep_live: bool = False) -> bool:
        check_amount("spent_nano", spent_nano)
        args: list[str | int] = [spent_nano, version, counter.ttl_s, int(keep_live)]
        return bool(int(await self._run("seed", [*self._keys([counter]), self._seeded_key([counter])], args)))

    async def mark_seeded(self, version: str, counters: Sequence[CounterSpec] = ()) -> None:
        """Record that counters were rebuilt from the store under `version`: for the whole Redis, or in cluster
        mode for the slot of `counters` (each org's slot is marked the first time one of its calls is seen)."""
        if self._cluster and not counters:
            return
        async with self._unavailable():
            await self._client.set(self._seeded_key(counters), version)

    # -- reconciliation (`spendgate reconcile`; never on the hot path) --------------------------------

    async def counter_keys(self, pattern: str) -> list[str]:
        """Counter keys (without the prefix) matching the glob `pattern`, from every node (SCAN, never KEYS)."""
        found: set[str] = set()
        async with self._unavailable():
            async for raw in self._client.scan_iter(match=self._prefix + pattern, count=1000):
                key = raw.decode() if isinstance(raw, bytes) else str(raw)
                if not key.endswith("~holds"):
                    found.add(key[len(self._prefix):])
        return sorted(found)

    async def audit(self, counters: Sequence[CounterSpec]) -> list[CounterAudit]:
        """Each counter as stored (spent, reserved, version, live and stale holds); changes nothing."""
        replies = await asyncio.gather(*(self._run("inspect", self._keys([spec]), []) for spec in counters))
        return [CounterAudit.from_reply(spec.key, reply) for spec, reply in zip(counters, replies, strict=True)]

    async def repair(self, counter: CounterSpec, expected_version: int, spent_nano: int | None) -> CounterRepair:
        """Drop stale holds and set `reserved` to what the live holds hold; SET `spent` to `spent_nano` only if
        the counter's version is still `expected_version` (compare-and-set, never an increment)."""
        if spent_nano is not None:
            check_amount("spent_nano", spent_nano)
        args: list[str | int] = [expected_version, "" if spent_nano is None else spent_nano, counter.ttl_s]
        reply = await self._run("repair", self._keys([counter]), args)
        return CounterRepair.from_reply(counter.key, reply)

    async def ping(self) -> bool:
        """True if Redis answers; False (not an exception) when it does not: this is the health check."""
        try:
            async with self._unavailable():
                return bool(await self._client.ping())
        except LedgerUnavailable:
            return False

    async def version(self) -> str:
        """The Redis server's run id: it changes when Redis restarts (and forgets, keeping nothing on disk), so
        seeding counters keyed by it applies once per Redis lifetime, however many replicas seed at once."""
        async with self._unavailable():
            info = await self._client.info("server")
        if isinstance(info, dict) and "run_id" in info:
            return f"redis-{info['run_id']}"
        return "redis-" + "-".join(sorted(str(v.get("run_id")) for v in info.values()))  # cluster: per node

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    # -- internals --------------------------------------------------------------------------------------

    def _keys(self, counters: Sequence[CounterSpec]) -> list[str]:
        return [self._prefix + spec.key for spec in counters]

    def _seeded_key(self, counters: Sequence[CounterSpec]) -> str:
        if not self._cluster:
            return f"{self._prefix}sg:seeded"
        return f"{self._prefix}sg:{{{hash_tag(counters[0].key)}}}:seeded"

    def _reservation_key(
        self, reservation_id: str, counters: Sequence[CounterSpec], *, by_id: bool = False
    ) -> str:
        """The reservation hash's key; in cluster mode it carries the counters' common hash tag."""
        check_counters(counters)
        if not self._cluster:
            return f"{self._prefix}sg:r:{reservation_id}"
        tags = {hash_tag(spec.key) for spec in counters}
        if by_id and not counters:
            tag = self._tags.get(reservation_id)
            if tag is None:
                raise InvalidCounters(
                    f"cluster mode: reservation {reservation_id!r} was not made here; pass its counters"
                )
            tags = {tag}
        if len(tags) != 1 or None in tags:
            raise InvalidCounters(
                f"cluster mode: counters of one call must share one {{hash tag}} (got {sorted(map(str, tags))})"
            )
        return f"{self._prefix}sg:{{{tags.pop()}}}:r:{reservation_id}"

    def _remember(self, reservation_id: str, counters: Sequence[CounterSpec]) -> None:
        if len(self._tags) >= _MAX_LOCAL_TAGS:
            self._tags.pop(next(iter(self._tags)))  # oldest first; a lost entry only needs counters passed
        tag = hash_tag(counters[0].key) if counters else None
        if tag is not None:
            self._tags[reservation_id] = tag

    async def _run(self, name: str, keys: list[str], args: list[str | int]) -> Any:
        """Run one script. Concurrent calls are pipelined: the scripts queued while the event loop is busy go
        out in one write and come back in one read (each script stays atomic on its own; only the round trip
        is shared), which costs far less client CPU than one command at a time."""
        if self._cluster:  # a cluster pipeline fans out per slot; keep one command per call there
            async with self._unavailable():
                return await self._scripts[name](keys=keys, args=args)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queued.append((name, keys, args, future))
        if len(self._queued) == 1:
            asyncio.get_running_loop().call_soon(self._flush_soon)
        async with self._unavailable():
            return await future

    def _flush_soon(self) -> None:
        batch, self._queued = self._queued, []
        task = asyncio.ensure_future(self._flush(batch))
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    async def _flush(self, batch: list[tuple[str, list[str], list[str | int], asyncio.Future[Any]]]) -> None:
        if len(batch) == 1:
            name, keys, args, future = batch[0]
            await _settle_future(future, self._scripts[name](keys=keys, args=args))
            return
        try:
            pipe = self._client.pipeline(transaction=False)
            for name, keys, args, _ in batch:
                pipe.evalsha(self._scripts[name].sha, len(keys), *keys, *args)
            results = await pipe.execute(raise_on_error=False)
        except BaseException as exc:  # the connection failed: every caller of the batch hears it
            for *_, future in batch:
                if not future.done():
                    future.set_exception(exc if isinstance(exc, Exception) else RedisError(str(exc)))
            if not isinstance(exc, Exception):
                raise
            return
        for (name, keys, args, future), result in zip(batch, results, strict=True):
            if isinstance(result, NoScriptError):  # Redis restarted and forgot the scripts: load and run
                await _settle_future(future, self._scripts[name](keys=keys, args=args))
            elif future.done():
                continue  # its caller was cancelled; the script ran all the same (every write is idempotent)
            elif isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)

    def _unavailable(self) -> contextlib.AbstractAsyncContextManager[None]:
        return redis_errors(self._url, "redis ledger")


async def _settle_future(future: asyncio.Future[Any], call: Any) -> None:
    try:
        result = await call
    except Exception as exc:
        if not future.done():
            future.set_exception(exc)
        return
    if not future.done():
        future.set_result(result)


def _states(counters: Sequence[CounterSpec], flat: Sequence[Any]) -> tuple[CounterState, ...]:
    """Counter states from the scripts' flat reply [spent1, reserved1, ...] (None where never written)."""
    return tuple(
        CounterState(spec.key, int(flat[2 * i] or 0), int(flat[2 * i + 1] or 0), spec.limit_nano)
        for i, spec in enumerate(counters)
    )
