"""The stores behind `Idempotency-Key` (proxy/idempotency.py): claims, leases and stored answers, in the ledger's
Redis (shared by replicas; Lua scripts, the org as hash tag) or in this process's memory (bounded LRU)."""


from __future__ import annotations

import hashlib
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

import orjson
from redis.exceptions import RedisError

from policies.config import LedgerConfig
from policies.ledger.redis import RedisClient, connect
from proxy.upstreams.base import ENDPOINT_PATHS, Endpoint

MAX_RESPONSE_BYTES = 8 * 1024 * 1024  # an answer over this is not stored: the key is freed instead
MEMORY_MAX_BYTES = 64 * 1024 * 1024  # memory:// keeps at most this much, least recently used dropped first
MEMORY_MAX_ENTRIES = 100_000
MAX_KEY_CHARS = 255


class StoreUnavailable(Exception):
    """The idempotency store (the ledger's Redis) did not answer."""


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """An answer as it was sent: status, our response headers, the body (a stream's whole SSE transcript)."""

    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes

    @property
    def size(self) -> int:
        return len(self.body) + sum(len(k) + len(v) for k, v in self.headers)


@dataclass(frozen=True, slots=True)
class Claimed:
    """The key was free: the caller owns it now and runs the call."""


@dataclass(frozen=True, slots=True)
class InFlight:
    """Another copy owns the key and is running (its fingerprint says whether it is the same request)."""

    fingerprint: str


@dataclass(frozen=True, slots=True)
class Done:
    """An answer is stored; `response` is None when the fingerprints differ (it is not read then)."""

    fingerprint: str
    response: StoredResponse | None


Claim = Claimed | InFlight | Done


class IdempotencyStore(Protocol):
    """Where keys and answers live. Contract:

    - `claim` is atomic: of any number of concurrent claims of a free key exactly one gets `Claimed`, which
      holds a lease of `lease_s`; `renew` extends it. A lease that is not renewed lapses (its owner died) and
      the key is free again.
    - `complete` stores the answer for `ttl_s` and ends the lease, unless another owner holds the key or an
      answer is stored already (then False, nothing changes). `release` frees the key if `owner` holds it.
      Both are safe to repeat. An answer over `max_response_bytes` is refused (False).
    - Every backend failure is raised as `StoreUnavailable`.
    """

    max_response_bytes: int

    async def claim(self, key: str, fingerprint: str, owner: str, lease_s: float) -> Claim: ...

    async def renew(self, key: str, owner: str, lease_s: float) -> bool: ...

    async def release(self, key: str, owner: str) -> None: ...

    async def complete(self, key: str, fingerprint: str, owner: str, response: StoredResponse,
                       ttl_s: float) -> bool: ...

    async def aclose(self) -> None: ...


def open_store(config: LedgerConfig, client: RedisClient | None = None) -> IdempotencyStore:
    """The store beside the budget ledger: the same Redis (through `client`, the ledger's, when given), or
    this process's memory."""
    if config.url.startswith("memory://"):
        return MemoryIdempotencyStore()
    return RedisIdempotencyStore(config.url, cluster=config.cluster, socket_timeout=config.timeout_s, client=client)


def entry_key(org: str, key_name: str, value: str) -> str:
    """The store key of (org, key, header value): hash-tagged by org like the ledger's counters."""
    digest = hashlib.sha256(f"{key_name}\n{value}".encode()).hexdigest()
    return f"sg:{{{quote(org, safe='')}}}:idem:{digest}"


def fingerprint(endpoint: Endpoint, raw: bytes) -> str:
    return hashlib.sha256(ENDPOINT_PATHS[endpoint].encode() + b"\n" + raw).hexdigest()


def valid_key(value: str) -> bool:
    return 1 <= len(value) <= MAX_KEY_CHARS and value.isascii() and value.isprintable()


# --- memory ------------------------------------------------------------------------------------------------

@dataclass(slots=True)
class _Entry:
    fingerprint: str
    expires: float
    owner: str | None = None  # set while a lease holds the key
    response: StoredResponse | None = None

    @property
    def size(self) -> int:
        return self.response.size if self.response is not None else 0


class MemoryIdempotencyStore:
    """One process's store (ledger `memory://`): bounded by total bytes and entries, least recently replayed
    answers dropped first; live leases are never dropped. Expired entries go on access and in a sweep."""

    def __init__(self, *, max_bytes: int = MEMORY_MAX_BYTES, max_entries: int = MEMORY_MAX_ENTRIES,
                 max_response_bytes: int = MAX_RESPONSE_BYTES, clock: Callable[[], float] = time.monotonic,
                 sweep_every_s: float = 60.0) -> None:
        self.max_bytes, self.max_entries = max_bytes, max_entries
        self.max_response_bytes = min(max_response_bytes, max_bytes)
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self.bytes = 0
        self._sweep_every = sweep_every_s
        self._next_sweep = clock() + sweep_every_s

    def __len__(self) -> int:
        return len(self._entries)

    async def claim(self, key: str, fingerprint: str, owner: str, lease_s: float) -> Claim:
        now = self._clock()
        if now >= self._next_sweep:
            self._sweep(now)
        entry = self._live(key, now)
        if entry is None:
            self._entries[key] = _Entry(fingerprint, now + lease_s, owner=owner)
            self._evict(now)
            return Claimed()
        if entry.response is None:
            return InFlight(entry.fingerprint)
        self._entries.move_to_end(key)  # recently replayed: dropped last
        return Done(entry.fingerprint, entry.response if entry.fingerprint == fingerprint else None)

    async def renew(self, key: str, owner: str, lease_s: float) -> bool:
        now = self._clock()
        entry = self._live(key, now)
        if entry is None or entry.owner != owner:
            return False
        entry.expires = now + lease_s
        return True

    async def release(self, key: str, owner: str) -> None:
        entry = self._live(key, self._clock())
        if entry is not None and entry.owner == owner:
            self._drop(key)

    async def complete(self, key: str, fingerprint: str, owner: str, response: StoredResponse,
                       ttl_s: float) -> bool:
        now = self._clock()
        entry = self._live(key, now)
        if response.size > self.max_response_bytes or (entry is not None and entry.owner != owner):
            return False
        if entry is not None:
            self._drop(key)
        self._entries[key] = _Entry(fingerprint, now + ttl_s, response=response)
        self.bytes += response.size
        self._evict(now)
        return True

    async def aclose(self) -> None:
        self._entries.clear()
        self.bytes = 0

    def _live(self, key: str, now: float) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is not None and entry.expires <= now:
            self._drop(key)
            return None
        return entry

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key)
        self.bytes -= entry.size

    def _evict(self, now: float) -> None:
        """Least recently used first; a live lease stays (dropping it would let a second copy run)."""
        excess_bytes, excess_n = self.bytes - self.max_bytes, len(self._entries) - self.max_entries
        if excess_bytes <= 0 and excess_n <= 0:
            return
        victims = []
        for key, entry in self._entries.items():
            if excess_bytes <= 0 and excess_n <= 0:
                break
            if entry.owner is not None and entry.expires > now:
                continue
            victims.append(key)
            excess_bytes, excess_n = excess_bytes - entry.size, excess_n - 1
        for key in victims:
            self._drop(key)

    def _sweep(self, now: float) -> None:
        self._next_sweep = now + self._sweep_every
        for key in [k for k, e in self._entries.items() if e.expires <= now]:
            self._drop(key)


# --- redis -------------------------------------------------------------------------------------------------
# Per entry two keys in one slot: "<key>:lease" = "<owner> <fingerprint>" (SET NX PX) while a copy runs, and
# "<key>:done" = hash {fp, status, headers, body} (EX 24 h). Owners are fixed-length hex tokens.

_CLAIM = """
local fp = redis.call('HGET', KEYS[2], 'fp')
if fp then
  if fp ~= ARGV[1] then return {'done', fp} end
  local r = redis.call('HMGET', KEYS[2], 'status', 'headers', 'body')
  return {'done', fp, r[1], r[2], r[3]}
end
if redis.call('SET', KEYS[1], ARGV[2] .. ' ' .. ARGV[1], 'NX', 'PX', ARGV[3]) then return {'claimed'} end
local held = redis.call('GET', KEYS[1])
if held == ARGV[2] .. ' ' .. ARGV[1] then return {'claimed'} end  -- our own claim again (a retried command)
return {'busy', string.sub(held, string.find(held, ' ', 1, true) + 1)}
"""
_MINE = "local held = redis.call('GET', KEYS[1])\nlocal mine = held and string.sub(held, 1, #ARGV[1] + 1) == ARGV[1] .. ' '\n"
_RENEW = _MINE + "if mine then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end\nreturn 0\n"
_RELEASE = _MINE + "if mine then return redis.call('DEL', KEYS[1]) end\nreturn 0\n"
_COMPLETE = _MINE + """
if (held and not mine) or redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('HSET', KEYS[2], 'fp', ARGV[2], 'status', ARGV[3], 'headers', ARGV[4], 'body', ARGV[5])
redis.call('EXPIRE', KEYS[2], ARGV[6])
if held then redis.call('DEL', KEYS[1]) end
return 1
"""


class RedisIdempotencyStore:
    """The store on the ledger's Redis (or Redis Cluster), shared by every replica; one Lua script per step."""

    def __init__(self, url: str, *, prefix: str = "", cluster: bool = False, socket_timeout: float = 1.0,
                 max_connections: int = 64, max_response_bytes: int = MAX_RESPONSE_BYTES,
                 client: RedisClient | None = None) -> None:
        if "{" in prefix or "}" in prefix:
            raise ValueError("the key prefix must not contain '{' or '}' (it would change the hash slot)")
        self._prefix = prefix
        self.max_response_bytes = max_response_bytes
        self._owns_client = client is None  # a client given is the proxy's shared one, closed by its owner
        self._client = client or connect(url, cluster=cluster, timeout_s=socket_timeout,
                                         max_connections=max_connections)
        self._scripts = {name: self._client.register_script(text) for name, text in
                         (("claim", _CLAIM), ("renew", _RENEW), ("release", _RELEASE), ("complete", _COMPLETE))}

    async def claim(self, key: str, fingerprint: str, owner: str, lease_s: float) -> Claim:
        reply = await self._run("claim", key, [fingerprint, owner, _ms(lease_s)])
        kind = reply[0]
        if kind == b"claimed":
            return Claimed()
        if kind == b"busy":
            return InFlight(reply[1].decode())
        if len(reply) < 5:
            return Done(reply[1].decode(), None)
        headers = tuple((k.encode("latin-1"), v.encode("latin-1")) for k, v in orjson.loads(reply[3]))
        return Done(reply[1].decode(), StoredResponse(int(reply[2]), headers, reply[4]))

    async def renew(self, key: str, owner: str, lease_s: float) -> bool:
        return bool(await self._run("renew", key, [owner, _ms(lease_s)]))

    async def release(self, key: str, owner: str) -> None:
        await self._run("release", key, [owner])

    async def complete(self, key: str, fingerprint: str, owner: str, response: StoredResponse,
                       ttl_s: float) -> bool:
        if response.size > self.max_response_bytes:
            return False
        headers = orjson.dumps([(k.decode("latin-1"), v.decode("latin-1")) for k, v in response.headers])
        args = [owner, fingerprint, response.status, headers, response.body, math.ceil(ttl_s)]
        return bool(await self._run("complete", key, args))

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def _run(self, script: str, key: str, args: list[Any]) -> Any:
        base = self._prefix + key
        try:
            return await self._scripts[script](keys=[base + ":lease", base + ":done"], args=args)
        except (RedisError, OSError, TimeoutError) as exc:
            raise StoreUnavailable(f"redis: {type(exc).__name__}") from None


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))
