"""What admission decides (`Decision = Allowed | Held | Denied`, a closed union callers `match` on), and
the pure arithmetic behind it: status colours, percentages, max-tokens clamping and threshold crossings."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal, TypeAlias

from policies.budgets import Counter
from policies.config import AlertRule

Status = Literal["green", "yellow", "red"]
YELLOW_PCT = 80


@dataclass(frozen=True, slots=True)
class BudgetWarning:
    """A soft budget (on_exceed warn/webhook) let the call through over its limit, or a warn threshold
    applies; becomes the `X-Spendgate-Budget-Warning` header."""

    counter: Counter
    pct: float
    message: str


@dataclass(frozen=True, slots=True)
class Allowed:
    """The call may go ahead; `clamp_to` rewrites its max-tokens field; `reservation_id` is what settle
    and release name (None when nothing was reserved: no matching budget, or the ledger was bypassed)."""

    warnings: tuple[BudgetWarning, ...] = ()
    clamp_to: int | None = None
    reservation_id: str | None = None


@dataclass(frozen=True, slots=True)
class Held:
    """Waiting for approval (402 approval_required); the call holds no reservation meanwhile."""

    approval_id: str
    counter: Counter


@dataclass(frozen=True, slots=True)
class Denied:
    """A blocking budget would be exceeded (402 budget_exceeded): `needed_nano` is the call's worst case."""

    counter: Counter
    spent_nano: int
    reserved_nano: int
    needed_nano: int

    @property
    def limit_nano(self) -> int:
        return self.counter.limit_nano


Decision: TypeAlias = Allowed | Held | Denied


def status_of(spent_nano: int, limit_nano: int) -> Status:
    """green / yellow (>= 80 %) / red (>= 100 %) of the limit, on SETTLED spend only: reservations are
    worst cases that mostly go unspent, and counting them would flash red on every long prompt."""
    if spent_nano >= limit_nano:
        return "red"
    if spent_nano * 100 >= limit_nano * YELLOW_PCT:
        return "yellow"
    return "green"


def pct(spent_nano: int, limit_nano: int) -> float:
    """Settled spend as a percentage of the limit (unrounded; the API edge rounds). A limit of 0 (spend
    stopped at run time) reads as 100 %: nothing is left."""
    if limit_nano <= 0:
        return 100.0
    return spent_nano * 100 / limit_nano


def clamp_tokens(
    remaining_nano: int,
    prompt_cost_nano: int,
    output_rate_per_token: Decimal,
    requested_max: int,
    min_output: int,
) -> int | None:
    """The largest max_tokens (<= `requested_max`) whose worst case fits in `remaining_nano`.

    `prompt_cost_nano` is the worst-case prompt cost and `output_rate_per_token` the highest nano-USD
    rate an output token can cost (already times `n`). Returns `requested_max` when it fits; None when
    what fits is below `min_output` (a truncated answer that short is worth less than a clear refusal)."""
    available = remaining_nano - prompt_cost_nano
    if available < 0:
        return None
    if output_rate_per_token <= 0:
        return requested_max
    # floor(available / rate) tokens cost at most `available` even after rounding up to the nano-USD,
    # since `available` is a whole number of nano-USD.
    fits = int(Decimal(available) // output_rate_per_token)
    if fits >= requested_max:
        return requested_max
    if fits < min_output:
        return None
    return fits


def thresholds_crossed(
    before_spent_nano: int, after_spent_nano: int, limit_nano: int, alerts: Iterable[AlertRule]
) -> list[AlertRule]:
    """The alerts whose threshold settled spend crossed going from `before` to `after`, lowest first.

    A threshold of at_pct % is reached when spend >= at_pct/100 x limit (exact: no float rounding decides
    whether 80 % was reached). Firing once per counter and window is the caller's job (Redis SET NX)."""
    crossed: list[AlertRule] = []
    for alert in alerts:
        threshold = Decimal(str(alert.at_pct)) * limit_nano  # x 100, like the spend sides below
        if before_spent_nano * 100 < threshold <= after_spent_nano * 100:
            crossed.append(alert)
    return sorted(crossed, key=lambda a: a.at_pct)
