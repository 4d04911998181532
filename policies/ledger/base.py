"""The ledger contract: atomic budget counters with reservations, shared by the memory and Redis backends."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from policies.errors import InvalidCounters

# A settled or released reservation id is remembered this long, so a retried settle never counts twice.
DEFAULT_MARKER_TTL_S = 86_400


@dataclass(frozen=True, slots=True)
class CounterSpec:
    """One budget counter as the caller sees it now: its key, its current limit and its idle expiry.

    `limit_nano` is not stored: it is the limit in force for this call (runtime limit changes apply at once).
    `ttl_s` is how long the counter's keys live after their last write (refreshed on every write).
    """

    key: str
    limit_nano: int
    ttl_s: int


@dataclass(frozen=True, slots=True)
class CounterState:
    """A counter's totals after an operation, in nano-USD."""

    key: str
    spent_nano: int
    reserved_nano: int
    limit_nano: int

    @property
    def remaining_nano(self) -> int:
        return max(0, self.limit_nano - self.spent_nano - self.reserved_nano)


@dataclass(frozen=True, slots=True)
class ReserveResult:
    """Outcome of `Ledger.reserve`: `states` lists every counter after the operation, in the caller's order.

    `refused` is the first counter (caller's order) the amount would push past its limit, as it stands after
    the operation; with `force=True` the reservation is made anyway (`ok` is True) and `refused` still names
    that counter, so a soft budget knows it was exceeded.
    """

    ok: bool
    states: tuple[CounterState, ...]
    refused: CounterState | None = None


class Ledger(Protocol):
    """Budget counters with reservations. Money is int nano-USD; every method may raise `LedgerUnavailable`.

    Atomicity: each method is one indivisible step against the store (one Lua script in Redis, one
    uninterrupted run on the event loop in memory). `reserve` is all or nothing over its counters: it checks
    `spent + reserved + amount <= limit` on every counter and adds `amount` to every counter's `reserved`
    only if all pass, so a blocking cap holds under any concurrency and across replicas sharing one store,
    and a call is refused only when it would really pass a limit (no false refusals).

    Reservations: a reservation (id, amount, counters, expiry) lives until settled, released or expired.
    Expiry is judged by the store's clock (Redis server TIME, so replicas with skewed clocks agree). An
    expired reservation's amount goes back to the counters lazily: every operation that touches a counter
    first purges that counter's expired reservations. `renew` pushes the expiry of a live reservation
    forward (long streams renew while they run).

    Idempotency: `reserve` of an id that is live, settled or released changes nothing and answers ok with
    the current states. `settle` of an id moves its amount from `reserved` to `actual` in `spent` once; a
    second settle changes nothing (a settled marker is kept `marker_ttl_s`). If the reservation is gone
    (expired or released) `settle` still adds `actual` to `spent` once: a real call's cost is never dropped.
    `release` is idempotent; a released id settles as "gone". `seed` has SET semantics keyed by version.
    Since every write is idempotent, a retry after a timeout is always safe.

    Expiry of counters: a counter's keys expire `ttl_s` after their last write; a counter never written (or
    expired) reads as spent 0, reserved 0.

    Redis Cluster: all counter keys of one call must share one `{hash tag}` (the budgets module tags keys by
    org); otherwise `InvalidCounters`. In cluster mode `release` and `renew` need the reservation's counters
    (or an id reserved by this process) to find its hash slot.
    """

    async def reserve(
        self,
        reservation_id: str,
        counters: Sequence[CounterSpec],
        amount_nano: int,
        ttl_s: float,
        *,
        force: bool = False,
    ) -> ReserveResult:
        """Atomically reserve `amount_nano` on every counter, or on none (unless `force`)."""
        ...

    async def settle(
        self, reservation_id: str, counters: Sequence[CounterSpec], actual_nano: int
    ) -> tuple[CounterState, ...]:
        """Turn the reservation into `actual_nano` of spend on `counters`; idempotent per id."""
        ...

    async def release(self, reservation_id: str, counters: Sequence[CounterSpec] = ()) -> None:
        """Give the reserved amount back (failed call); idempotent. A released id then settles as gone."""
        ...

    async def renew(self, reservation_id: str, ttl_s: float, counters: Sequence[CounterSpec] = ()) -> bool:
        """Set a live reservation's expiry to now + `ttl_s`; False if it is no longer live."""
        ...

    async def states(self, counters: Sequence[CounterSpec]) -> list[CounterState]:
        """Current totals of `counters` (expired reservations purged first)."""
        ...

    async def seed(self, counter: CounterSpec, spent_nano: int, version: str, *, keep_live: bool = False) -> bool:
        """SET `spent` to the store's total unless already seeded with `version`; True if it applied.

        `keep_live`: leave a counter that already exists as it is when this ledger's lifetime was seeded before
        (Redis: its slot's seeded marker names `version`; memory: the caller says so by passing it): it has
        counted every settle since it was created, including spend the store does not hold yet."""
        ...

    async def ping(self) -> bool:
        """True if the store answers, False if not (the one method that does not raise LedgerUnavailable)."""
        ...

    async def aclose(self) -> None:
        """Release connections; the ledger is unusable afterwards."""
        ...


def check_counters(counters: Sequence[CounterSpec]) -> None:
    """Reject duplicate keys: one call counts once per counter."""
    keys = [c.key for c in counters]
    if len(set(keys)) != len(keys):
        raise InvalidCounters(f"duplicate counter keys in one operation: {sorted(keys)}")


def check_amount(name: str, value: int) -> None:
    """Amounts are non-negative ints of nano-USD (bool is an int subclass and is refused too)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be a non-negative int of nano-USD (got {value!r})")
