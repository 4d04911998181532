"""Budget.from_config, scope matching ("*" vs absent vs literal), counters_for and the stable counter_key."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

import pytest

from policies.attribution import Attribution
from policies.budgets import Budget, call_tags, counter_key, counters_for, matched_scope, scope_dict
from policies.config import AlertRule, BudgetConfig
from policies.windows import TTL_MARGIN_S, WindowSpan

NOW = datetime(2026, 11, 25, 2, 30, tzinfo=UTC)
TAGS: dict[str, str | None] = {
    "org": "acme", "project": "web", "agent": "planner", "station": "qa", "run": "run-1", "issue": "ISS-7",
    "model": "gpt-4o-mini", "provider": "openai", "key": "ci",
}


def budget(**fields: Any) -> Budget:
    fields.setdefault("name", "b")
    fields.setdefault("window", "month")
    fields.setdefault("limit_usd", 10)
    return Budget.from_config(BudgetConfig(**fields))


def test_from_config_converts_money_zone_scope_and_alerts() -> None:
    b = budget(name="per-run", scope={"run": "*", "org": "acme"}, window="run", limit_usd=0.5,
               alerts=[{"at_pct": 90, "action": "webhook"}, {"at_pct": 50, "action": "warn"}],
               timezone="Europe/Berlin", clamp_max_tokens=True, mode="shadow")
    assert b.limit_nano == b.config_limit_nano == 500_000_000
    assert b.scope == (("org", "acme"), ("run", "*"))
    assert b.tz == ZoneInfo("Europe/Berlin")
    assert [a.at_pct for a in b.alerts] == [50, 90]
    assert b.clamp_max_tokens and not b.enforced and not b.overridden
    assert budget().tz == ZoneInfo("UTC") and budget().alerts == (AlertRule(at_pct=80, action="warn"),)


def test_limit_rounds_up_to_a_whole_nano_dollar() -> None:
    assert budget(limit_usd=1e-10).limit_nano == 1
    assert budget(limit_usd=0.1).limit_nano == 100_000_000


def test_with_limit_overrides_at_run_time_and_keeps_the_file_limit() -> None:
    b = budget(limit_usd=10).with_limit(3_000_000_000)
    assert b.limit_nano == 3_000_000_000 and b.config_limit_nano == 10_000_000_000 and b.overridden
    assert b.with_limit(0).limit_nano == 0
    with pytest.raises(ValueError, match="negative"):
        b.with_limit(-1)
    [counter] = counters_for([b], TAGS, NOW)
    assert counter.limit_nano == 3_000_000_000


@pytest.mark.parametrize(("scope", "expected"), [
    ({}, ()),  # absent dimensions: every call, one shared counter
    ({"org": "acme"}, (("org", "acme"),)),
    ({"org": "other"}, None),
    ({"run": "*"}, (("run", "run-1"),)),
    ({"org": "acme", "run": "*", "model": "gpt-4o-mini"},
     (("model", "gpt-4o-mini"), ("org", "acme"), ("run", "run-1"))),
    ({"org": "acme", "project": "api"}, None),  # every literal must match
    ({"key": "ci", "provider": "*"}, (("key", "ci"), ("provider", "openai"))),
])
def test_matching_literal_wildcard_and_absent(scope: dict[str, str], expected: Any) -> None:
    assert matched_scope(budget(scope=scope), TAGS) == expected


@pytest.mark.parametrize("missing", [None, ""])
def test_wildcard_does_not_match_a_call_without_that_tag(missing: str | None) -> None:
    untagged = {**TAGS, "run": missing}
    assert matched_scope(budget(scope={"run": "*"}), untagged) is None
    assert matched_scope(budget(scope={"run": "*"}), {"org": "acme"}) is None  # key absent altogether
    assert matched_scope(budget(scope={"org": "*"}), untagged) == (("org", "acme"),)


def test_a_literal_does_not_match_a_call_without_that_tag() -> None:
    assert matched_scope(budget(scope={"issue": "ISS-7"}), {**TAGS, "issue": None}) is None


def test_counters_for_gives_one_counter_per_matching_budget_with_its_window() -> None:
    org_month = budget(name="org-monthly", scope={"org": "acme"}, window="month", limit_usd=500)
    per_run = budget(name="per-run", scope={"run": "*"}, window="run", limit_usd=0.5)
    other = budget(name="other-org", scope={"org": "globex"}, window="day")
    berlin_day = budget(name="berlin-day", window="day", timezone="Europe/Berlin")
    counters = counters_for([org_month, per_run, other, berlin_day], TAGS, NOW)
    assert [c.budget.name for c in counters] == ["org-monthly", "per-run", "berlin-day"]
    month, run, day = counters
    assert month.key == "sg:{acme}:b:org-monthly:2026-11:org=acme"
    assert month.window == WindowSpan("2026-11", datetime(2026, 11, 1, tzinfo=UTC),
                                      datetime(2026, 12, 1, tzinfo=UTC))
    assert month.limit_nano == 500_000_000_000
    assert month.ttl_s == 5 * 86400 + 21 * 3600 + 30 * 60 + TTL_MARGIN_S
    assert run.key == "sg:{_}:b:per-run:run:run=run-1" and run.scope == (("run", "run-1"),)
    assert run.window.resets_at is None and run.ttl_s == 30 * 86400
    assert day.window.id == "2026-11-25" and day.window.starts_at == datetime(2026, 11, 24, 23, tzinfo=UTC)
    assert day.key == "sg:{_}:b:berlin-day:2026-11-25:"


def test_a_wildcard_budget_gives_one_counter_per_value() -> None:
    per_run = budget(name="per-run", scope={"run": "*"}, window="run")
    keys = {counters_for([per_run], {**TAGS, "run": run}, NOW)[0].key for run in ("a", "b", "c")}
    assert len(keys) == 3


def test_no_budgets_or_no_match_gives_no_counters() -> None:
    assert counters_for([], TAGS, NOW) == []
    assert counters_for([budget(scope={"org": "globex"})], TAGS, NOW) == []


# Exact keys: a refactor that changes any of these orphans every live counter in Redis.
@pytest.mark.parametrize(("name", "scope", "window_id", "key"), [
    ("org-monthly", (("org", "acme"),), "2026-11", "sg:{acme}:b:org-monthly:2026-11:org=acme"),
    ("per-run-ceiling", (("run", "r-1"),), "run", "sg:{_}:b:per-run-ceiling:run:run=r-1"),
    ("global", (), "total", "sg:{_}:b:global:total:"),
    ("team.v2", (("run", "42"), ("org", "acme"), ("agent", "qa")), "2026-W48",
     "sg:{acme}:b:team.v2:2026-W48:agent=qa,org=acme,run=42"),
    ("x", (("org", "a{b}:c|d"), ("issue", "I,1=2%")), "2026-11-25T02",
     "sg:{a%7Bb%7D%3Ac%7Cd}:b:x:2026-11-25T02:issue=I%2C1%3D2%25,org=a%7Bb%7D%3Ac%7Cd"),
    ("h", (("org", "acme"),), "2026-10-25T02+01:00", "sg:{acme}:b:h:2026-10-25T02%2B01%3A00:org=acme"),
    ("u", (("org", "ünï"),), "2026-11", "sg:{%C3%BCn%C3%AF}:b:u:2026-11:org=%C3%BCn%C3%AF"),
])
def test_counter_key_is_stable(name: str, scope: tuple[tuple[str, str], ...], window_id: str, key: str) -> None:
    assert counter_key(name, scope, window_id) == key
    assert counter_key(name, dict(scope), window_id) == key  # a mapping gives the same key


def redis_hash_tag(key: str) -> str:
    """Redis Cluster's rule: the part between the first '{' and the first '}' after it, if non-empty."""
    start = key.index("{")
    return key[start + 1:key.index("}", start)]


def test_distinct_scopes_never_share_a_key_and_the_hash_tag_is_the_org() -> None:
    tricky = ["a", "a,run=b", "a:b", "a|b", "a%2Cb", "a,b", "{a}", "a}", "=", "%", "_", "a=b"]
    dims = ["org", "run", "issue"]
    scopes: list[tuple[tuple[str, str], ...]] = [()]
    for n in (1, 2):
        for chosen in itertools.combinations(dims, n):
            for values in itertools.product(tricky, repeat=n):
                scopes.append(tuple(zip(chosen, values, strict=True)))
    keys: dict[str, tuple[tuple[str, str], ...]] = {}
    for scope in scopes:
        key = counter_key("b", scope, "2026-11")
        assert key not in keys, (scope, keys.get(key))
        keys[key] = scope
        org = dict(scope).get("org")
        assert redis_hash_tag(key) == (quote(org, safe="") if org else "_")
    assert len(keys) == len(scopes) > 300
    # Budget names and windows are part of the key too.
    assert counter_key("b", (("org", "a"),), "2026-11") != counter_key("c", (("org", "a"),), "2026-11")
    assert counter_key("b", (("org", "a"),), "2026-11") != counter_key("b", (("org", "a"),), "2026-12")


def test_call_tags_and_scope_dict() -> None:
    attribution = Attribution(org="acme", key="ci", run="run-1", retry_of="req_1")
    tags = call_tags(attribution, model="gpt-4o-mini", provider="openai")
    assert tags == {"org": "acme", "project": None, "agent": None, "station": None, "run": "run-1",
                    "issue": None, "model": "gpt-4o-mini", "provider": "openai", "key": "ci"}
    assert list(scope_dict((("run", "r"), ("model", "m"), ("org", "o")))) == ["org", "run", "model"]
