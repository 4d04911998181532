"""The Decision union and the pure arithmetic of admission: status, pct, clamp, threshold crossings."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import ROUND_CEILING, Decimal
from typing import assert_never

import pytest

from policies.budgets import Budget, counters_for
from policies.config import AlertRule, BudgetConfig
from policies.decisions import (
    Allowed,
    BudgetWarning,
    Decision,
    Denied,
    Held,
    clamp_tokens,
    pct,
    status_of,
    thresholds_crossed,
)

BUDGET = Budget.from_config(BudgetConfig(name="b", scope={"org": "acme"}, window="day", limit_usd=1))
[COUNTER] = counters_for([BUDGET], {"org": "acme"}, datetime(2026, 11, 25, tzinfo=UTC))
WARN80 = AlertRule(at_pct=80, action="warn")
HOOK50 = AlertRule(at_pct=50, action="webhook")
HOOK100 = AlertRule(at_pct=100, action="webhook")


def describe(decision: Decision) -> str:
    match decision:
        case Allowed(clamp_to=clamp):
            return f"allowed clamp={clamp}"
        case Held(approval_id=approval_id):
            return f"held {approval_id}"
        case Denied(counter=counter, needed_nano=needed):
            return f"denied {counter.budget.name} needed={needed}"
        case _:
            assert_never(decision)


def test_decisions_are_a_closed_union_callers_match_on() -> None:
    assert describe(Allowed()) == "allowed clamp=None"
    assert describe(Allowed(warnings=(BudgetWarning(COUNTER, 85.0, "80% of b"),), clamp_to=300)) == \
        "allowed clamp=300"
    assert describe(Held("apr_1", COUNTER)) == "held apr_1"
    denied = Denied(COUNTER, spent_nano=900, reserved_nano=50, needed_nano=100)
    assert describe(denied) == "denied b needed=100"
    assert denied.limit_nano == 1_000_000_000
    with pytest.raises(AttributeError):
        denied.spent_nano = 0  # type: ignore[misc]


@pytest.mark.parametrize(("spent", "limit", "status"), [
    (0, 1000, "green"), (799, 1000, "green"), (800, 1000, "yellow"), (999, 1000, "yellow"),
    (1000, 1000, "red"), (5000, 1000, "red"), (3, 4, "green"), (4, 5, "yellow"), (0, 0, "red"),
    (7_999_999_999, 10_000_000_000, "green"), (8_000_000_000, 10_000_000_000, "yellow"),
])
def test_status_on_settled_spend(spent: int, limit: int, status: str) -> None:
    assert status_of(spent, limit) == status


def test_pct() -> None:
    assert pct(0, 1000) == 0.0
    assert pct(250, 1000) == 25.0
    assert pct(1500, 1000) == 150.0
    assert pct(1, 3) == pytest.approx(33.3333333)
    assert pct(0, 0) == 100.0  # a limit of 0 leaves nothing


def test_clamp_returns_the_request_when_it_fits() -> None:
    assert clamp_tokens(10_000, 2_000, Decimal(10), requested_max=800, min_output=256) == 800
    # The client asked for less than min_output and it fits: leave it alone.
    assert clamp_tokens(10_000, 2_000, Decimal(10), requested_max=100, min_output=256) == 100


def test_clamp_shrinks_to_what_remains() -> None:
    # 8000 nano left after the prompt at 10 nano per token: 800 tokens.
    assert clamp_tokens(10_000, 2_000, Decimal(10), requested_max=4096, min_output=256) == 800
    assert clamp_tokens(10_000, 2_000, Decimal(10), requested_max=4096, min_output=800) == 800


def test_clamp_refuses_below_min_output_or_when_the_prompt_alone_does_not_fit() -> None:
    assert clamp_tokens(10_000, 2_000, Decimal(10), requested_max=4096, min_output=801) is None
    assert clamp_tokens(1_000, 2_000, Decimal(10), requested_max=4096, min_output=1) is None
    assert clamp_tokens(0, 0, Decimal(10), requested_max=4096, min_output=1) is None


def test_clamp_with_free_output_keeps_the_request() -> None:
    assert clamp_tokens(5, 5, Decimal(0), requested_max=4096, min_output=256) == 4096


@pytest.mark.parametrize(("remaining", "prompt", "rate"), [
    (1_000_000, 12_345, Decimal("0.6")), (999_999, 1, Decimal("15.000001")), (7_777, 0, Decimal("2.5")),
    (10_000_000_000, 3_000_000, Decimal("0.075")), (101, 0, Decimal("0.3333333333")),
])
def test_clamped_worst_case_fits_and_one_more_token_would_not(remaining: int, prompt: int, rate: Decimal) -> None:
    n = clamp_tokens(remaining, prompt, rate, requested_max=10**15, min_output=1)
    assert n is not None

    def cost(tokens: int) -> int:  # rounded up to the nano-USD, as pricing does
        return prompt + int((tokens * rate).to_integral_value(rounding=ROUND_CEILING))

    assert cost(n) <= remaining < cost(n + 1)


def test_thresholds_fire_when_spend_crosses_them() -> None:
    limit = 1_000_000_000
    alerts = [HOOK100, WARN80, HOOK50]
    assert thresholds_crossed(0, 100, limit, alerts) == []
    assert thresholds_crossed(790_000_000, 810_000_000, limit, alerts) == [WARN80]
    assert thresholds_crossed(0, 2 * limit, limit, alerts) == [HOOK50, WARN80, HOOK100]  # lowest first
    assert thresholds_crossed(799_999_999, 800_000_000, limit, alerts) == [WARN80]  # reaching counts
    assert thresholds_crossed(800_000_000, 900_000_000, limit, alerts) == []  # already past: no repeat
    assert thresholds_crossed(900_000_000, 100, limit, alerts) == []  # spend going down crosses nothing


def test_threshold_arithmetic_is_exact() -> None:
    odd = AlertRule(at_pct=12.5, action="warn")
    assert thresholds_crossed(0, 124, 1000, [odd]) == []
    assert thresholds_crossed(0, 125, 1000, [odd]) == [odd]
    third = AlertRule(at_pct=33.3, action="warn")  # 33.3 % of 1000 = 333 exactly, not 332.99999...
    assert thresholds_crossed(332, 333, 1000, [third]) == [third]
    assert thresholds_crossed(333, 334, 1000, [third]) == []
    over = AlertRule(at_pct=150, action="webhook")  # alerts may sit above the limit (soft budgets)
    assert thresholds_crossed(1000, 1500, 1000, [over]) == [over]
    assert thresholds_crossed(0, 0, 0, [WARN80]) == []  # a zero limit fires nothing on no spend
