"""Admission and settlement: the one place where a call's worst case meets every budget it touches.

`admit` reserves the worst case on the blocking counters in one all-or-nothing ledger step (and on the
soft ones, forced, so they count what is in flight); `settle` turns the reservation into the real cost and
reports the alert thresholds that cost crossed; `release` gives it back. The caller (the proxy) maps the
`Decision` to HTTP and dispatches alerts; nothing here does I/O besides the ledger.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal

from policies.budgets import Budget, CallTags, Counter, counters_for
from policies.config import AlertRule
from policies.decisions import (
    Allowed,
    BudgetWarning,
    Decision,
    Denied,
    Held,
    clamp_tokens,
    pct,
    thresholds_crossed,
)
from policies.ledger.base import CounterSpec, CounterState, Ledger

_TAG_ORDER = ("org", "project", "agent", "station", "run", "issue", "model", "provider", "key")
_MEMO_LIMIT = 50_000
# Blocking actions: the call may not pass the limit. Soft actions let it through and say so.
_BLOCKING = frozenset({"block", "approve"})
HoldRequest = Callable[[Counter, int], Awaitable[str]]  # (counter, worst case) -> approval id
# Nano-USD approvals granted to counters in their current window, added to their limits.
ExtraLimits = Callable[[Sequence[Counter]], Awaitable[Mapping[str, int]]]


@dataclass(frozen=True, slots=True)
class ClampRoom:
    """What clamping needs to know about a call: its worst-case prompt cost, the highest nano-USD an output
    token can cost (times `n`), and the max tokens it asked for."""

    prompt_nano: int
    output_nano_per_token: Decimal
    requested_max: int


@dataclass(slots=True)
class Admission:
    """An admitted call's hold on the ledger, for `settle` / `release` (each at most once)."""

    reservation_id: str
    hard: tuple[Counter, ...]
    soft: tuple[Counter, ...]
    reserved_nano: int
    done: bool = False

    @property
    def counters(self) -> tuple[Counter, ...]:
        return self.hard + self.soft


@dataclass(frozen=True, slots=True)
class Crossing:
    """Settled spend crossed an alert threshold of a counter (fire once per counter and window: the caller
    dedupes on `dedupe_key`, e.g. with Redis SET NX)."""

    counter: Counter
    alert: AlertRule
    spent_nano: int

    @property
    def dedupe_key(self) -> str:
        return f"{self.counter.key}:alert:{self.alert.at_pct:g}"


@dataclass
class Engine:
    ledger: Ledger
    budgets: Sequence[Budget]
    reservation_ttl_s: float = 900.0
    on_hold: HoldRequest | None = None
    extra_limits: ExtraLimits | None = None
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))

    def __post_init__(self) -> None:
        self._memo: dict[tuple[object, ...], tuple[list[Counter], datetime | None]] = {}
        self._memo_budgets: Sequence[Budget] | None = None

    def counters(self, tags: CallTags) -> list[Counter]:
        """The counters a call with `tags` touches now. Memoised per tag values until the earliest of their
        windows resets (and whenever `budgets` is replaced): building windows and keys is ~25 us a call."""
        now = self.clock()
        if self._memo_budgets is not self.budgets:  # new config or a runtime limit: start afresh
            self._memo.clear()
            self._memo_budgets = self.budgets
        key = tuple(tags.get(dim) for dim in _TAG_ORDER)
        found = self._memo.get(key)
        if found is not None and (found[1] is None or now < found[1]):
            return found[0]
        counters = counters_for(self.budgets, tags, now)
        resets = [c.window.resets_at for c in counters if c.window.resets_at is not None]
        if len(self._memo) >= _MEMO_LIMIT:
            self._memo.clear()
        self._memo[key] = (counters, min(resets) if resets else None)
        return counters

    async def admit(self, tags: CallTags, worst_nano: int, reservation_id: str, clamp: ClampRoom | None = None,
                    *, on_hold: HoldRequest | None = None) -> tuple[Decision, Admission | None]:
        """Decide a call and, when it may go ahead, reserve its worst case. Raises LedgerUnavailable.

        `on_hold` (per call: it knows the caller) overrides the engine's for `approve` budgets."""
        counters = self.counters(tags)
        if not counters:
            return Allowed(), None
        if self.extra_limits is not None:
            granted = await self.extra_limits(counters)
            if granted:
                counters = [replace(c, limit_nano=c.limit_nano + granted.get(c.key, 0)) for c in counters]
        hard = tuple(c for c in counters if c.budget.enforced and c.budget.on_exceed in _BLOCKING)
        soft = tuple(c for c in counters if c not in hard)
        clamp_to: int | None = None
        if hard:
            result = await self.ledger.reserve(reservation_id, _specs(hard), worst_nano, self.reservation_ttl_s)
            if not result.ok:
                clamped = self._clamp(hard, result.states, clamp)
                if clamped is not None:
                    clamp_to, worst_nano = clamped
                    result = await self.ledger.reserve(reservation_id, _specs(hard), worst_nano,
                                                       self.reservation_ttl_s)
                if not result.ok:
                    return await self._refuse(hard, result.states, result.refused, worst_nano,
                                              on_hold or self.on_hold), None
        warnings: tuple[BudgetWarning, ...] = ()
        if soft:
            result = await self.ledger.reserve(_soft_id(reservation_id), _specs(soft), worst_nano,
                                               self.reservation_ttl_s, force=True)
            warnings = _warnings(soft, result.states, worst_nano)
        admission = Admission(reservation_id, hard, soft, worst_nano)
        return Allowed(warnings=warnings, clamp_to=clamp_to, reservation_id=reservation_id), admission

    async def settle(self, admission: Admission, actual_nano: int) -> list[Crossing]:
        """Book the real cost (idempotent per reservation); returns the alert thresholds it crossed."""
        if admission.done:
            return []
        admission.done = True
        crossings: list[Crossing] = []
        for group, rid in ((admission.hard, admission.reservation_id),
                           (admission.soft, _soft_id(admission.reservation_id))):
            if not group:
                continue
            states = await self.ledger.settle(rid, _specs(group), actual_nano)
            for counter, state in zip(group, states, strict=True):
                before = state.spent_nano - actual_nano  # the settle is atomic: this is the spend just before it
                for alert in _crossed(counter, before, state.spent_nano):
                    crossings.append(Crossing(counter, alert, state.spent_nano))
        return crossings

    async def release(self, admission: Admission) -> None:
        """Give the reservation back (the call failed or was refused upstream); idempotent."""
        if admission.done:
            return
        admission.done = True
        if admission.hard:
            await self.ledger.release(admission.reservation_id, _specs(admission.hard))
        if admission.soft:
            await self.ledger.release(_soft_id(admission.reservation_id), _specs(admission.soft))

    async def renew(self, admission: Admission) -> None:
        """Keep a long call's reservation alive past `reservation_ttl_s`."""
        if admission.done:
            return
        if admission.hard:
            await self.ledger.renew(admission.reservation_id, self.reservation_ttl_s, _specs(admission.hard))
        if admission.soft:
            await self.ledger.renew(_soft_id(admission.reservation_id), self.reservation_ttl_s,
                                    _specs(admission.soft))

    def _clamp(self, hard: Sequence[Counter], states: Sequence[CounterState],
               room: ClampRoom | None) -> tuple[int, int] | None:
        """(max tokens, new worst case) that fits every blocking counter, when all that are short allow it."""
        if room is None:
            return None
        short = [(c, s) for c, s in zip(hard, states, strict=True)
                 if s.spent_nano + s.reserved_nano + room.prompt_nano
                 + math.ceil(room.output_nano_per_token * room.requested_max) > s.limit_nano]
        if not short or not all(c.budget.clamp_max_tokens for c, _ in short):
            return None
        remaining = min(s.remaining_nano for s in states)
        min_output = max(c.budget.min_output_tokens for c, _ in short)
        tokens = clamp_tokens(remaining, room.prompt_nano, room.output_nano_per_token, room.requested_max,
                              min_output)
        if tokens is None or tokens >= room.requested_max:
            return None
        return tokens, room.prompt_nano + math.ceil(room.output_nano_per_token * tokens)

    async def _refuse(self, hard: Sequence[Counter], states: Sequence[CounterState],
                      refused: CounterState | None, worst_nano: int, on_hold: HoldRequest | None) -> Decision:
        state = refused or states[0]
        counter = _counter(hard, state) or hard[0]
        if counter.budget.on_exceed == "approve" and on_hold is not None:
            return Held(await on_hold(counter, worst_nano), counter)
        return Denied(counter, state.spent_nano, state.reserved_nano, worst_nano)


def _soft_id(reservation_id: str) -> str:
    # Soft counters are reserved in a second (forced) step, so they need a reservation id of their own.
    return reservation_id + ":soft"


def _specs(counters: Sequence[Counter]) -> list[CounterSpec]:
    return [CounterSpec(c.key, c.limit_nano, c.ttl_s) for c in counters]


def _counter(counters: Sequence[Counter], state: CounterState | None) -> Counter | None:
    if state is None:
        return None
    return next((c for c in counters if c.key == state.key), None)


def _warnings(soft: Sequence[Counter], states: Sequence[CounterState], worst_nano: int) -> tuple[BudgetWarning, ...]:
    found = []
    for counter, state in zip(soft, states, strict=True):
        if not counter.budget.enforced:
            continue  # shadow budgets are computed, never shown to the caller
        used = state.spent_nano + state.reserved_nano
        if used > state.limit_nano:
            share = pct(used, state.limit_nano)
            found.append(BudgetWarning(counter, share, f"budget {counter.budget.name!r} is at {share:.0f}% "
                                                       "of its limit with calls in flight"))
    return tuple(found)


def _crossed(counter: Counter, before: int, after: int) -> list[AlertRule]:
    return thresholds_crossed(before, after, counter.limit_nano, counter.budget.alerts)
