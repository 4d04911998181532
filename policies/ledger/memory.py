"""`MemoryLedger`: the ledger for one process; atomic because no operation awaits between read and write."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from policies.ledger.base import (
    DEFAULT_MARKER_TTL_S,
    CounterSpec,
    CounterState,
    ReserveResult,
    check_amount,
    check_counters,
)

# Expired entries are dropped lazily on access; a full sweep every so many writes bounds memory.
_SWEEP_EVERY = 1024


@dataclass(slots=True)
class _Counter:
    spent: int = 0
    reserved: int = 0
    seed_version: str | None = None
    idle_until: float = 0.0
    holds: dict[str, tuple[int, float]] = field(default_factory=dict)  # reservation id -> (amount, expiry)


@dataclass(slots=True)
class _Reservation:
    amount: int
    keys: tuple[str, ...]
    expires: float
    state: str = "live"  # live | settled | released; settled and released ones are markers until `expires`


class MemoryLedger:
    """In-process ledger (see `Ledger` for the contract). Not shared between replicas by design.

    `clock` returns seconds on a monotonic scale (injectable so tests step time instead of sleeping).
    """

    def __init__(
        self, *, clock: Callable[[], float] = time.monotonic, marker_ttl_s: float = DEFAULT_MARKER_TTL_S
    ) -> None:
        self._clock = clock
        self._marker_ttl_s = marker_ttl_s
        self._counters: dict[str, _Counter] = {}
        self._reservations: dict[str, _Reservation] = {}
        self._writes = 0

    async def reserve(
        self,
        reservation_id: str,
        counters: Sequence[CounterSpec],
        amount_nano: int,
        ttl_s: float,
        *,
        force: bool = False,
    ) -> ReserveResult:
        check_counters(counters)
        check_amount("amount_nano", amount_nano)
        now = self._clock()
        if self._reservation(reservation_id, now) is not None:
            return ReserveResult(ok=True, states=self._states(counters, now))  # idempotent retry
        over = [
            i
            for i, spec in enumerate(counters)
            if (c := self._counter(spec.key, now)).spent + c.reserved + amount_nano > spec.limit_nano
        ]
        if over and not force:
            states = self._states(counters, now)
            return ReserveResult(ok=False, states=states, refused=states[over[0]])
        expires = now + ttl_s
        for spec in counters:
            c = self._write(spec, now)
            c.reserved += amount_nano
            c.holds[reservation_id] = (amount_nano, expires)
        self._reservations[reservation_id] = _Reservation(amount_nano, tuple(s.key for s in counters), expires)
        states = self._states(counters, now)
        return ReserveResult(ok=True, states=states, refused=states[over[0]] if over else None)

    async def settle(
        self, reservation_id: str, counters: Sequence[CounterSpec], actual_nano: int
    ) -> tuple[CounterState, ...]:
        check_counters(counters)
        check_amount("actual_nano", actual_nano)
        now = self._clock()
        res = self._reservation(reservation_id, now)
        if res is not None and res.state == "settled":
            return self._states(counters, now)
        if res is not None and res.state == "live":
            self._drop_holds(reservation_id, [*res.keys, *(s.key for s in counters)], now)
        # Live, released or gone alike: the call happened, so its actual cost is spent.
        for spec in counters:
            self._write(spec, now).spent += actual_nano
        self._reservations[reservation_id] = _Reservation(
            0, (), now + self._marker_ttl_s, state="settled"
        )
        return self._states(counters, now)

    async def release(self, reservation_id: str, counters: Sequence[CounterSpec] = ()) -> None:
        now = self._clock()
        res = self._reservation(reservation_id, now)
        if res is None or res.state != "live":
            return
        self._drop_holds(reservation_id, [*res.keys, *(s.key for s in counters)], now)
        self._reservations[reservation_id] = _Reservation(
            0, (), now + self._marker_ttl_s, state="released"
        )

    async def renew(self, reservation_id: str, ttl_s: float, counters: Sequence[CounterSpec] = ()) -> bool:
        now = self._clock()
        res = self._reservation(reservation_id, now)
        if res is None or res.state != "live":
            return False
        res.expires = now + ttl_s
        for key in res.keys:
            c = self._counter(key, now)
            if reservation_id in c.holds:
                c.holds[reservation_id] = (c.holds[reservation_id][0], res.expires)
        return True

    async def states(self, counters: Sequence[CounterSpec]) -> list[CounterState]:
        return list(self._states(counters, self._clock()))

    async def seed(self, counter: CounterSpec, spent_nano: int, version: str, *, keep_live: bool = False) -> bool:
        check_amount("spent_nano", spent_nano)
        now = self._clock()
        if keep_live and counter.key in self._counters:  # (the caller seeded this process's ledger before)
            return False
        if self._counter(counter.key, now).seed_version == version:
            return False
        c = self._write(counter, now)
        c.spent = spent_nano  # SET, never add: seeding twice or from several places gives one total
        c.seed_version = version
        return True

    async def ping(self) -> bool:
        return True

    async def aclose(self) -> None:
        self._counters.clear()
        self._reservations.clear()

    # -- internals: none of these awaits, which is what makes each public method atomic ----------------

    def _reservation(self, reservation_id: str, now: float) -> _Reservation | None:
        """The reservation or marker, or None once it expired (a live one that expired counts as gone)."""
        res = self._reservations.get(reservation_id)
        if res is not None and res.expires < now:
            del self._reservations[reservation_id]
            return None
        return res

    def _counter(self, key: str, now: float) -> _Counter:
        """The counter with its expired holds purged; a fresh zero counter if absent or idle-expired."""
        c = self._counters.get(key)
        if c is None or c.idle_until <= now:
            self._counters.pop(key, None)
            return _Counter()
        for rid, (amount, expires) in list(c.holds.items()):
            if expires < now:
                c.reserved -= amount
                del c.holds[rid]
        return c

    def _write(self, spec: CounterSpec, now: float) -> _Counter:
        """The counter, stored and with its idle expiry refreshed, ready to be written."""
        c = self._counter(spec.key, now)
        c.idle_until = now + spec.ttl_s
        self._counters[spec.key] = c
        self._writes += 1
        if self._writes % _SWEEP_EVERY == 0:
            self._sweep(now)
        return c

    def _drop_holds(self, reservation_id: str, keys: Iterable[str], now: float) -> None:
        for key in dict.fromkeys(keys):
            c = self._counter(key, now)
            hold = c.holds.pop(reservation_id, None)
            if hold is not None:
                c.reserved -= hold[0]

    def _states(self, counters: Sequence[CounterSpec], now: float) -> tuple[CounterState, ...]:
        return tuple(_state(spec, self._counter(spec.key, now)) for spec in counters)

    def _sweep(self, now: float) -> None:
        for rid in [r for r, res in self._reservations.items() if res.expires < now]:
            del self._reservations[rid]
        for key in [k for k, c in self._counters.items() if c.idle_until <= now]:
            del self._counters[key]


def _state(spec: CounterSpec, c: _Counter) -> CounterState:
    return CounterState(spec.key, c.spent, c.reserved, spec.limit_nano)
