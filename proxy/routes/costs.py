"""Cost reports in the seed error family: the cost-optimisation report (`GET /api/v1/admin/metrics/
cost-optimization`) and the AI cost API (`/api/ai-cost/*`). Each reads one org: the key's, or for an org-"*"
admin the one named by X-Org-ID (required here: these reports are per org)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from starlette.routing import Route

from proxy.errors import InvalidRequest, NotFound
from proxy.metrics import ai_cost
from proxy.metrics.cost_totals import usd
from proxy.metrics.month_budgets import project_budget
from proxy.metrics.optimization import cost_optimization
from proxy.requests import parse_json_object, read_body
from proxy.routes.budgets import apply_runtime_limit, parse_limit_usd
from proxy.routes.seed import ADMIN_ROLES, Caller, seed_endpoint

MAX_BODY_BYTES = 4096


def _org(caller: Caller) -> str:
    if caller.org is None:
        raise InvalidRequest("this key may read every org: name the org to report on in the X-Org-ID header")
    return caller.org


def _project(caller: Caller) -> str:
    project = (caller.request.query_params.get("projectId") or "").strip()
    if not project:
        raise InvalidRequest("the `projectId` query parameter is required", param="projectId")
    return project


async def cost_optimization_report(caller: Caller) -> dict[str, Any]:
    return await cost_optimization(caller.services.store, _org(caller), caller.services.engine.budgets,
                                   datetime.now(UTC), orgless=caller.principal.all_orgs)


async def monthly_summary(caller: Caller) -> dict[str, Any]:
    org, project = _org(caller), _project(caller)
    return await ai_cost.monthly_summary(caller.services.store, org, project, caller.services.engine.budgets,
                                         datetime.now(UTC), orgless=caller.principal.all_orgs)


async def monthly_trend(caller: Caller) -> list[dict[str, Any]]:
    org, project = _org(caller), _project(caller)
    return await ai_cost.monthly_trend(caller.services.store, org, project, datetime.now(UTC))


async def cross_project_summary(caller: Caller) -> dict[str, Any]:
    return await ai_cost.cross_project_summary(caller.services.store, _org(caller), caller.services.engine.budgets,
                                               datetime.now(UTC), orgless=caller.principal.all_orgs)


async def recent_transactions(caller: Caller) -> list[dict[str, Any]]:
    org, project = _org(caller), _project(caller)
    return await ai_cost.recent_transactions(caller.services.store, org, project)


async def set_budget_limit(caller: Caller) -> dict[str, Any]:
    """The limit of the monthly budget scoped to the project: the same runtime limit as
    `PUT /api/budgets/{name}/limit` (stored, applied live); a key of one org changes only budgets naming it."""
    org, project = _org(caller), _project(caller)
    services, principal = caller.services, caller.principal
    chosen = project_budget(services.engine.budgets, org, project, orgless=principal.all_orgs)
    if chosen is None or (not principal.all_orgs and dict(chosen.budget.scope).get("org") != org):
        raise NotFound(f"no monthly budget scoped to project {project!r} that this key may change")
    request = caller.request
    body = parse_json_object(await read_body(request, MAX_BODY_BYTES, request.headers.get("content-length")))
    limit_nano = parse_limit_usd(body.get("limitDollars"), "limitDollars")
    updated = await apply_runtime_limit(services, chosen.budget, limit_nano, principal.key_name)
    return {"projectId": project, "budget": updated.name, "limitDollars": usd(updated.limit_nano),
            "configLimitDollars": usd(updated.config_limit_nano)}


routes = [
    Route("/api/v1/admin/metrics/cost-optimization", seed_endpoint(cost_optimization_report), methods=["GET"]),
    Route("/api/ai-cost/monthly-summary", seed_endpoint(monthly_summary), methods=["GET"]),
    Route("/api/ai-cost/monthly-trend", seed_endpoint(monthly_trend), methods=["GET"]),
    Route("/api/ai-cost/cross-project-summary", seed_endpoint(cross_project_summary), methods=["GET"]),
    Route("/api/ai-cost/recent-transactions", seed_endpoint(recent_transactions), methods=["GET"]),
    Route("/api/ai-cost/budget-limit", seed_endpoint(set_budget_limit, roles=ADMIN_ROLES), methods=["PUT"]),
]
