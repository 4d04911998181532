"""One issue's drill-down assembled from grouped rows: two legs, retries, unpriced calls kept apart."""

from __future__ import annotations

from proxy.metrics.issue_breakdown import CallGroup, EventGroup, Totals, breakdown, by_model


def call(station: str | None, agent: str | None, model: str, cost: int, *, calls: int = 1, unpriced: bool = False,
         retry: bool = False) -> CallGroup:
    return CallGroup(station, agent, model, "openai", unpriced, retry, cost, calls, 10 * calls, 2 * calls)


def event(type_: str, station: str | None, *, cost: int, compute: int, ms: int = 0, metered: bool | None = None,
          model: str | None = None, count: int = 1) -> EventGroup:
    return EventGroup(type_, station, "a", "anthropic" if model else None, model, metered, cost, compute, ms,
                      100 if metered is False else 0, 20 if metered is False else 0, count)


CALLS = [call("dev", "coder", "m1", 1_000), call("dev", "coder", "m1", 500, retry=True),
         call("qa", "tester", "m2", 7, unpriced=True, calls=2)]
EVENTS = [event("session.completed", "dev", cost=300, compute=300, ms=1_800_000, metered=True, model="m1"),
          event("session.completed", "review", cost=2_050, compute=50, ms=600_000, metered=False, model="h"),
          event("execution", "qa", cost=40, compute=40, ms=1_000)]


def test_totals_two_legs_and_unpriced_excluded() -> None:
    t = Totals.of(CALLS, EVENTS)
    assert t.token_nano == 1_000 + 500 + 2_000  # the unpriced group's 7 is never counted
    assert t.compute_nano == 300 + 50 + 40
    assert t.retry_nano == 500
    assert t.session_ms == 2_400_000  # executions are not session hours
    assert t.unpriced_calls == 2


def test_by_model_is_the_token_leg_and_marks_unpriced() -> None:
    assert by_model(CALLS, EVENTS) == [
        {"model": "h", "provider": "anthropic", "costUsd": 2e-06, "calls": 1, "inputTokens": 100,
         "outputTokens": 20, "unpriced": False},
        {"model": "m1", "provider": "openai", "costUsd": 1.5e-06, "calls": 2, "inputTokens": 20,
         "outputTokens": 4, "unpriced": False},
        {"model": "m2", "provider": "openai", "costUsd": None, "calls": 2, "inputTokens": 20,
         "outputTokens": 4, "unpriced": True},
    ]


def test_breakdown_payload() -> None:
    body = breakdown("ENG-1", CALLS, EVENTS, rework_nano=123, call_list=[], truncated=False)
    assert body["totalCostUsd"] == round((3_500 + 390) / 1e9, 9)
    assert body["tokenCostUsd"] == 3.5e-06 and body["computeCostUsd"] == 3.9e-07
    assert body["computeHours"] == 0.666667 and body["reworkCostUsd"] == 1.23e-07
    assert body["byStation"] == [{"station": "review", "costUsd": 2.05e-06, "calls": 1},
                                 {"station": "dev", "costUsd": 1.8e-06, "calls": 2},
                                 {"station": "qa", "costUsd": 4e-08, "calls": 2}]
    assert body["byAgent"] == [{"agent": "a", "costUsd": 2.39e-06, "calls": 1},
                               {"agent": "coder", "costUsd": 1.5e-06, "calls": 2},
                               {"agent": "tester", "costUsd": 0.0, "calls": 2}]
    assert round(sum(s["costUsd"] for s in body["byStation"]), 9) == body["totalCostUsd"]


def test_equal_costs_order_by_name_with_none_last() -> None:
    body = breakdown("x", [call(None, None, "m", 5), call("b", "z", "m", 5), call("a", "y", "m", 5)], [],
                     rework_nano=0, call_list=[], truncated=False)
    assert [s["station"] for s in body["byStation"]] == ["a", "b", None]
    assert body["issue"] == "x" and body["unpricedCalls"] == 0 and body["retryCostUsd"] == 0
