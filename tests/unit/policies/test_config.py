"""Validation of the budgets / ledger / approvals / webhooks config models, and the cross-entry checks."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from policies.config import (
    EVENTS,
    AlertRule,
    ApprovalsConfig,
    BudgetConfig,
    LedgerConfig,
    WebhookConfig,
    check_budgets,
    check_webhooks,
)

MINIMAL: dict[str, Any] = {"name": "org-monthly", "scope": {"org": "acme"}, "window": "month", "limit_usd": 500}


def errors(model: type[BaseModel], data: dict[str, Any]) -> list[tuple[tuple[Any, ...], str]]:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(data)
    return [(err["loc"], err["msg"]) for err in caught.value.errors()]


def only_error(model: type[BaseModel], data: dict[str, Any]) -> tuple[tuple[Any, ...], str]:
    [err] = errors(model, data)
    return err


def test_budget_defaults() -> None:
    b = BudgetConfig.model_validate(MINIMAL)
    assert b.alerts == [AlertRule(at_pct=80, action="warn")]
    assert (b.on_exceed, b.clamp_max_tokens, b.min_output_tokens, b.mode, b.timezone) == \
        ("block", False, 256, "enforce", None)
    assert BudgetConfig.model_validate({**MINIMAL, "scope": {}}).scope == {}  # all calls together


def test_budget_is_frozen_and_forbids_unknown_keys() -> None:
    b = BudgetConfig.model_validate(MINIMAL)
    with pytest.raises(ValidationError):
        b.limit_usd = 1
    assert only_error(BudgetConfig, {**MINIMAL, "limt_usd": 5})[0] == ("limt_usd",)


def test_the_design_examples_validate() -> None:
    BudgetConfig.model_validate({**MINIMAL, "alerts": [{"at_pct": 80, "action": "webhook"}]})
    BudgetConfig.model_validate({"name": "per-run-ceiling", "scope": {"run": "*"}, "window": "run",
                                 "limit_usd": 0.50, "on_exceed": "block", "clamp_max_tokens": True})


@pytest.mark.parametrize("name", ["", "a" * 65, "has space", "a:b", "ünï", "a/b"])
def test_budget_name_is_checked(name: str) -> None:
    loc, msg = only_error(BudgetConfig, {**MINIMAL, "name": name})
    assert loc == ("name",) and "1-64 characters of letters, digits and _ - ." in msg


@pytest.mark.parametrize("name", ["a", "org-monthly", "team_2.v1", "a" * 64])
def test_good_budget_names(name: str) -> None:
    assert BudgetConfig.model_validate({**MINIMAL, "name": name}).name == name


def test_scope_dimensions_and_values_are_checked() -> None:
    loc, msg = only_error(BudgetConfig, {**MINIMAL, "scope": {"team": "x"}})
    assert loc[:2] == ("scope", "team") and "'org'" in msg and "'key'" in msg
    for bad in ["", "x" * 129, "tab\there"]:
        loc, msg = only_error(BudgetConfig, {**MINIMAL, "scope": {"run": bad}})
        assert loc == ("scope",) and "run: a scope value is a tag value" in msg
    scope = {"org": "acme", "project": "*", "agent": "qa", "station": "s", "run": "*", "issue": "I-1",
             "model": "gpt-4o", "provider": "openai", "key": "ci"}
    assert BudgetConfig.model_validate({**MINIMAL, "scope": scope}).scope == scope


@pytest.mark.parametrize("limit", [0, -5, float("inf"), float("nan"), 2e9, "lots"])
def test_limit_must_be_positive_finite_and_sane(limit: Any) -> None:
    loc, _msg = only_error(BudgetConfig, {**MINIMAL, "limit_usd": limit})
    assert loc == ("limit_usd",)


def test_limit_message_is_clear() -> None:
    assert only_error(BudgetConfig, {**MINIMAL, "limit_usd": -5}) == (("limit_usd",), "Input should be greater than 0")


def test_unknown_window_and_actions() -> None:
    assert only_error(BudgetConfig, {**MINIMAL, "window": "fortnight"})[0] == ("window",)
    assert only_error(BudgetConfig, {**MINIMAL, "on_exceed": "explode"})[0] == ("on_exceed",)
    assert only_error(BudgetConfig, {**MINIMAL, "mode": "dry"})[0] == ("mode",)
    assert only_error(BudgetConfig, {**MINIMAL, "min_output_tokens": 0})[0] == ("min_output_tokens",)


def test_run_window_needs_run_in_scope() -> None:
    loc, msg = only_error(BudgetConfig, {**MINIMAL, "window": "run"})
    assert loc == () and 'window "run" needs `run` in the scope' in msg
    assert BudgetConfig.model_validate({**MINIMAL, "window": "run", "scope": {"run": "r-7"}}).window == "run"


def test_timezone() -> None:
    assert BudgetConfig.model_validate({**MINIMAL, "timezone": "Europe/Berlin"}).timezone == "Europe/Berlin"
    for bad in ["Mars/Olympus", "../../etc/passwd", ""]:
        loc, msg = only_error(BudgetConfig, {**MINIMAL, "timezone": bad})
        assert loc == ("timezone",) and "unknown time zone" in msg


@pytest.mark.parametrize(("alert", "field"), [
    ({"at_pct": 0, "action": "warn"}, "at_pct"), ({"at_pct": 1000.5, "action": "warn"}, "at_pct"),
    ({"at_pct": float("nan"), "action": "warn"}, "at_pct"), ({"at_pct": 80, "action": "page"}, "action"),
    ({"at_pct": 80}, "action"), ({"at_pct": 80, "action": "warn", "extra": 1}, "extra"),
])
def test_alert_rules_are_checked(alert: dict[str, Any], field: str) -> None:
    loc, _msg = only_error(BudgetConfig, {**MINIMAL, "alerts": [alert]})
    assert loc == ("alerts", 0, field)


def test_alerts_may_be_empty_or_above_100_but_not_repeated() -> None:
    assert BudgetConfig.model_validate({**MINIMAL, "alerts": []}).alerts == []
    assert BudgetConfig.model_validate({**MINIMAL, "alerts": [{"at_pct": 1000, "action": "webhook"}]})
    rule = {"at_pct": 80, "action": "warn"}
    assert only_error(BudgetConfig, {**MINIMAL, "alerts": [rule, rule]}) == \
        (("alerts",), "Value error, the same alert is listed twice")


@pytest.mark.parametrize("url", ["memory://", "redis://127.0.0.1:6379/0", "redis://localhost",
                                 "rediss://user:pw@cache.example.com:6380/2", "redis://:pw@[::1]:6379"])
def test_good_ledger_urls(url: str) -> None:
    assert LedgerConfig(url=url).url == url


@pytest.mark.parametrize(("url", "hint"), [
    ("http://:hunter2@host", "memory://"), ("redis://:hunter2@:6379", "needs a host"),
    ("redis://:hunter2@host:99999", "port"), ("redis://:hunter2@host:0", "port"),
    ("redis://:hunter2@host/zero", "database number"), ("memory", "memory://"),
])
def test_bad_ledger_urls_never_echo_the_password(url: str, hint: str) -> None:
    loc, msg = only_error(LedgerConfig, {"url": url})
    assert loc == ("url",) and hint in msg and "hunter2" not in msg


def test_ledger_defaults_and_redaction() -> None:
    ledger = LedgerConfig()
    assert (ledger.url, ledger.on_unavailable, ledger.reservation_ttl_s, ledger.cluster) == \
        ("memory://", "block", 900, False)
    assert ledger.is_memory
    assert LedgerConfig(url="redis://u:hunter2@h:6379/0").redacted_url == "redis://u:***@h:6379/0"
    assert LedgerConfig(url="redis://h:6379/0").redacted_url == "redis://h:6379/0"
    assert only_error(LedgerConfig, {"reservation_ttl_s": 0})[0] == ("reservation_ttl_s",)
    assert only_error(LedgerConfig, {"on_unavailable": "ignore"})[0] == ("on_unavailable",)


def test_approvals() -> None:
    assert ApprovalsConfig() == ApprovalsConfig(wait_seconds=0, grant_usd=5)
    assert only_error(ApprovalsConfig, {"wait_seconds": -1})[0] == ("wait_seconds",)
    assert only_error(ApprovalsConfig, {"grant_usd": 0})[0] == ("grant_usd",)


HOOK: dict[str, Any] = {"name": "ops", "url": "https://hooks.example.com/budget", "secret": "env:SG_TEST_HOOK"}


def test_webhook_secret_by_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SG_TEST_HOOK", "whsec_c2VjcmV0")
    hook = WebhookConfig.model_validate(HOOK)
    assert hook.secret.get_secret_value() == "whsec_c2VjcmV0" and "whsec" not in repr(hook)
    assert tuple(hook.events) == EVENTS and not hook.allow_private_network


def test_webhook_secret_errors_never_echo_the_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SG_TEST_HOOK", raising=False)
    assert only_error(WebhookConfig, HOOK) == (("secret",), "Value error, environment variable SG_TEST_HOOK is not set")
    loc, msg = only_error(WebhookConfig, {**HOOK, "secret": "whsec_pasted"})
    assert loc == ("secret",) and "by reference only" in msg and "whsec_pasted" not in msg


@pytest.mark.parametrize("patch", [
    {"url": "ftp://x"}, {"url": "hooks.example.com"}, {"url": "https://"}, {"url": "https://h:70000/"},
    {"events": []}, {"events": ["budget.exploded"]}, {"events": ["budget.exceeded", "budget.exceeded"]},
    {"name": "a b"},
])
def test_webhook_fields_are_checked(patch: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SG_TEST_HOOK", "s")
    loc, _msg = only_error(WebhookConfig, {**HOOK, **patch})
    assert loc[0] == next(iter(patch))


def budgets(*entries: dict[str, Any]) -> list[BudgetConfig]:
    return [BudgetConfig.model_validate({**MINIMAL, **entry}) for entry in entries]


def test_check_budgets_reports_repeated_names_at_the_repeat() -> None:
    found = check_budgets(budgets({"name": "a"}, {"name": "b"}, {"name": "a"}), LedgerConfig())
    assert found == [(("budgets", 2, "name"),
                      "budget name 'a' is repeated (first in budgets[0]); each must be unique")]
    assert check_budgets(budgets({"name": "a"}, {"name": "b"}), LedgerConfig()) == []


def test_cluster_mode_requires_org_in_every_scope() -> None:
    entries = budgets({"name": "a"}, {"name": "b", "scope": {"run": "*"}, "window": "run"},
                      {"name": "c", "scope": {"org": "*"}})
    assert check_budgets(entries, LedgerConfig(url="redis://h", cluster=True)) == [
        (("budgets", 1, "scope"), 'with ledger.cluster: true every budget\'s scope must name org (a literal org or "*")')]
    assert check_budgets(entries, LedgerConfig(url="redis://h")) == []


def test_check_webhooks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SG_TEST_HOOK", "s")
    only_threshold = WebhookConfig.model_validate({**HOOK, "events": ["budget.threshold"]})
    entries = budgets({"on_exceed": "webhook", "alerts": [{"at_pct": 50, "action": "webhook"}]})
    assert check_webhooks([only_threshold, only_threshold], entries) == [
        (("webhooks", 1, "name"), "webhook name 'ops' is repeated (first in webhooks[0]); each must be unique"),
        (("budgets", 0, "on_exceed"), "on_exceed: webhook, but no webhook receives budget.exceeded")]
    assert check_webhooks([], entries)[-1] == (("budgets", 0, "alerts", 0, "action"),
                                               "action: webhook, but no webhook receives budget.threshold")
    assert check_webhooks([WebhookConfig.model_validate(HOOK)], entries) == []
