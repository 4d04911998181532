"""Budget state for dashboards and agents: `GET /api/budgets`, `PUT /api/budgets/{name}/limit`,
`POST /api/estimate` (what a call would cost and the decision it would get, without calling the provider)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from policies.budgets import WILDCARD, Budget, Counter, call_tags, counter_key
from policies.config import MAX_LIMIT_USD
from policies.decisions import pct, status_of
from policies.errors import LedgerUnavailable
from policies.ledger.base import CounterSpec
from policies.windows import counter_ttl_s, window_of
from pricing.cost import estimate
from pricing.money import nano_to_usd, usd_to_nano
from proxy.admission import budget_detail, worst_case
from proxy.attribution import attribute
from proxy.auth import Principal
from proxy.errors import InvalidRequest, NotFound, ProxyError, ServiceUnavailable, error_response
from proxy.relay import header_map
from proxy.requests import check_body, parse_json_object, read_body
from proxy.routes.api import caller, json_response, org_scope
from proxy.services import Services
from proxy.store.queries import iso_utc
from proxy.store.runtime_limits import save_limit
from proxy.store.spend import counter_spend, recent_output_tokens


def _visible(budget: Budget, principal: Principal, org: str | None) -> bool:
    """Org-less budgets (their counters mix orgs) are for org-"*" admins; an org's keys see budgets naming
    their org, or `org: "*"` (then only their own counter)."""
    scoped = dict(budget.scope).get("org")
    if scoped is None or scoped == WILDCARD:
        return principal.all_orgs or scoped == WILDCARD
    return org is None or scoped == org


async def _counters(services: Services, budget: Budget, org: str | None, now: datetime) -> list[Counter]:
    window = window_of(budget.window, now, budget.tz)
    if any(value == WILDCARD for _, value in budget.scope):  # one counter per value seen: ask the store which
        org_filter = org if dict(budget.scope).get("org") == WILDCARD else None
        scopes = [scope for scope, _ in await counter_spend(services.store, budget, window, org_filter)]
    else:
        scopes = [budget.scope]  # a fixed scope has its one counter, spent or not (its spend is the ledger's)
    ttl = counter_ttl_s(window, now)
    return [Counter(budget, scope, window, counter_key(budget.name, scope, window.id), budget.limit_nano, ttl)
            for scope in scopes]


def _entry(counter: Counter, spent: int, reserved: int, now: datetime | None = None) -> dict[str, Any]:
    detail = budget_detail(counter, spent, reserved)
    detail.update(pct=round(pct(spent, counter.limit_nano), 2), status=status_of(spent, counter.limit_nano),
                  on_exceed=counter.budget.on_exceed, mode=counter.budget.mode,
                  forecast_exhausted_at=forecast(counter, spent, now or datetime.now(UTC)))
    return detail


def forecast(counter: Counter, spent: int, now: datetime) -> str | None:
    """When the budget runs out at the window's average rate so far (None: no spend yet, no calendar window,
    already exhausted, or not before the window resets)."""
    start, resets = counter.window.starts_at, counter.window.resets_at
    remaining = counter.limit_nano - spent
    if start is None or resets is None or spent <= 0 or remaining <= 0:
        return None
    elapsed = (now - start).total_seconds()
    if elapsed <= 0:
        return None
    seconds = remaining * elapsed / spent
    if seconds >= (resets - now).total_seconds():  # compared first: a tiny spend gives a date past year 9999
        return None
    return iso_utc(now + timedelta(seconds=seconds))


async def list_budgets(request: Request) -> Response:
    try:
        services, principal = caller(request)
        org = org_scope(principal, request)
        now = datetime.now(UTC)
        counters: list[Counter] = []
        for budget in services.engine.budgets:
            if _visible(budget, principal, org):
                counters += await _counters(services, budget, org, now)
        try:
            await services.seeder.ensure()  # a Redis that restarted empty shows the store's totals, not 0
            states = await services.engine.ledger.states(
                [CounterSpec(c.key, c.limit_nano, c.ttl_s) for c in counters])
        except LedgerUnavailable:
            raise ServiceUnavailable("the budget ledger is unreachable") from None
        entries = [_entry(c, s.spent_nano, s.reserved_nano, now) for c, s in zip(counters, states, strict=True)]
        return json_response({"budgets": entries, "next_cursor": None})
    except ProxyError as err:
        return error_response(err)


async def set_limit(request: Request) -> Response:
    """A runtime cap for every counter of one budget, kept in the store (applied at start too) until the
    file's `limit_usd` for that budget changes."""
    try:
        services, principal = caller(request)
        principal.require("admin")
        name = request.path_params["name"]
        index = next((i for i, b in enumerate(services.engine.budgets) if b.name == name), None)
        org = org_scope(principal, request)
        if index is None or not _visible(services.engine.budgets[index], principal, org) or (
                not principal.all_orgs and dict(services.engine.budgets[index].scope).get("org") != org):
            raise NotFound(f"no budget {name!r} this key may change")
        body = parse_json_object(await read_body(request, 4096, request.headers.get("content-length")))
        limit_nano = parse_limit_usd(body.get("limit_usd"), "limit_usd")
        budget = services.engine.budgets[index]
        updated = await apply_runtime_limit(services, budget, limit_nano, principal.key_name)
        return json_response({"name": name, "limit_usd": nano_to_usd(updated.limit_nano),
                      "config_limit_usd": nano_to_usd(budget.config_limit_nano)})
    except ProxyError as err:
        return error_response(err)


def parse_limit_usd(limit: Any, param: str) -> int:
    """A runtime limit as sent (USD, 0 to 1e9; 0 stops all spend) -> nano-USD; 400 otherwise."""
    if isinstance(limit, bool) or not isinstance(limit, int | float) or not 0 <= limit <= MAX_LIMIT_USD:
        raise InvalidRequest(f"`{param}` must be a number from 0 to 1e9", param=param)
    return usd_to_nano(limit)


async def apply_runtime_limit(services: Services, budget: Budget, limit_nano: int, updated_by: str | None) -> Budget:
    """Cap every counter of `budget` at `limit_nano`: saved in the store (applied again at start while the
    file's limit is unchanged) and switched live in the engine. Shared by `PUT /api/budgets/{name}/limit` and
    `PUT /api/ai-cost/budget-limit`."""
    updated = budget.with_limit(limit_nano)
    await save_limit(services.store, budget.name, updated.limit_nano, budget.config_limit_nano, updated_by,
                     datetime.now(UTC))
    budgets = list(services.engine.budgets)
    for i, current in enumerate(budgets):
        if current.name == budget.name:
            budgets[i] = updated
    services.engine.budgets = budgets
    return updated


async def estimate_call(request: Request) -> Response:
    """The cost range of a chat request and the decision it would get now, without calling the provider."""
    try:
        services, principal = caller(request)
        headers = header_map(request)
        raw = await read_body(request, services.settings.server.max_body_bytes, headers.get("content-length"))
        body = parse_json_object(raw)
        check_body("chat", body)
        attribution, _ = attribute(principal, headers, body)
        chain = services.router.resolve(body["model"])
        # Counting may load an encoding (~0.3 s) and a prompt may be large: off the event loop.
        worst = await asyncio.to_thread(worst_case, services.counter, "chat", body, raw, chain, exact=True)
        price = chain[0].price
        assert price is not None  # worst_case refuses unpriced models
        expected_prompt = await asyncio.to_thread(services.counter.count_request, "chat", body,
                                                  chain[0].upstream_model)
        history = await recent_output_tokens(services.store, org=attribution.org, agent=attribution.agent,
                                             model=body["model"])
        cost = estimate(price, prompt_tokens=expected_prompt, prompt_tokens_max=expected_prompt,
                        max_output_tokens=worst.max_tokens, expected_output_tokens=history)
        tags = call_tags(attribution, model=body["model"], provider=chain[0].provider)
        counters = services.engine.counters(tags)
        await services.seeder.ensure()
        states = await services.engine.ledger.states([CounterSpec(c.key, c.limit_nano, c.ttl_s) for c in counters])
        decision, budgets = "allow", []
        for counter, state in zip(counters, states, strict=True):
            fits = state.spent_nano + state.reserved_nano + worst.nano <= counter.limit_nano
            budgets.append(_entry(counter, state.spent_nano, state.reserved_nano) | {"fits": fits})
            if not fits and counter.budget.enforced:
                action = {"block": "clamp" if counter.budget.clamp_max_tokens else "block",
                          "approve": "hold"}.get(counter.budget.on_exceed, "warn")
                decision = max(decision, action, key=["allow", "warn", "clamp", "hold", "block"].index)
        return json_response({"model": body["model"], "min_usd": nano_to_usd(cost.min_nano),
                      "expected_usd": nano_to_usd(cost.expected_nano), "max_usd": nano_to_usd(worst.nano),
                      "max_output_tokens": worst.max_tokens, "expected_output_tokens_from_history": history,
                      "decision": decision, "budgets": budgets})
    except LedgerUnavailable:
        return error_response(ServiceUnavailable("the budget ledger is unreachable"))
    except ProxyError as err:
        return error_response(err)


routes = [
    Route("/api/budgets", list_budgets, methods=["GET"]),
    Route("/api/budgets/{name}/limit", set_limit, methods=["PUT"]),
    Route("/api/estimate", estimate_call, methods=["POST"]),
]
