"""The metrics family's part of /openapi.json: the event schema (from the pydantic models that validate
posted events), the query parameters of every read, and the seed error shape."""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter

from proxy.metrics.events import FactoryEvent
from proxy.metrics.timerange import TIME_RANGES

METRIC_TYPES = ("aggregate", "station", "cost", "provider", "handoff", "phase", "devops")
SEED_ERROR = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["code", "message", "status"],
    "properties": {"code": {"type": "string", "examples": ["INVALID_TIME_RANGE"]}, "message": {"type": "string"},
                   "status": {"type": "integer"}}}}}
_OBJ = {"type": "object"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _q(name: str, schema: dict[str, Any] | None = None, *, required: bool = False, where: str = "query") -> dict[str, Any]:
    return {"name": name, "in": where, "required": required, "schema": schema or {"type": "string"}}


def _get(summary: str, params: list[dict[str, Any]], answer: str, body: dict[str, Any] = _OBJ) -> dict[str, Any]:
    return {"get": {"summary": summary, "security": [{"bearer": []}, {"apiKey": []}], "parameters": params,
                    "responses": {"200": _json(body, answer), **_errors()}}}


def _errors() -> dict[str, Any]:
    statuses = ("400", "401", "403", "404", "429", "500")
    return {s: _json({"$ref": "#/components/schemas/SeedError"}, "Error (seed shape)") for s in statuses}


def factory_paths() -> tuple[dict[str, Any], dict[str, Any]]:
    """(paths, component schemas) of the metrics family."""
    event_schema = TypeAdapter(FactoryEvent).json_schema(ref_template="#/components/schemas/{model}")
    components: dict[str, Any] = dict(event_schema.pop("$defs", {}))
    components["FactoryEvent"] = event_schema
    components["SeedError"] = SEED_ERROR
    event_ref = {"$ref": "#/components/schemas/FactoryEvent"}
    time_range = _q("timeRange", {"type": "string", "enum": list(TIME_RANGES), "default": "30d"})
    project = _q("projectId", required=True)
    limit = _q("limit", {"type": "integer", "minimum": 1, "maximum": 500})
    security: list[dict[str, list[str]]] = [{"bearer": []}, {"apiKey": []}]
    paths: dict[str, Any] = {
        "/api/factory/events": {
            "post": {"summary": "Post one factory event or a batch (idempotent by id)", "security": security,
                     "requestBody": {"required": True, "content": {"application/json": {"schema": {"oneOf": [
                         event_ref, {"type": "object", "required": ["events"], "properties": {"events": {
                             "type": "array", "minItems": 1, "maxItems": 1000, "items": event_ref}}}]}}}},
                     "responses": {"200": _json({"type": "object", "properties": {
                         "accepted": {"type": "integer"}, "duplicates": {"type": "integer"}}}, "Stored"),
                         **_errors()}},
            **_get("Posted events, newest first", [*(_q(n) for n in ("type", "issue", "station", "run", "project",
                                                                     "agent", "cursor")), limit],
                   "{events: [...], next_cursor}")},
        "/api/factory/aggregate": {"post": {"summary": "Rebuild buckets and rollups from the raw rows (admin)",
                                            "security": security,
                                            "responses": {"200": _json(_OBJ, "{rebuilt, org}"), **_errors()}}},
        "/api/factory/metrics": _get("Factory metrics (seed Metrics API)", [
            _q("metricType", {"type": "string", "enum": list(METRIC_TYPES), "default": "aggregate"}), time_range],
            "{metrics: ...}"),
        "/api/factory/cost-per-issue": _get("Cost per issue over a window", [
            time_range, _q("from", {"type": "string", "format": "date"}), _q("to", {"type": "string", "format": "date"}),
            _q("sort", {"type": "string", "enum": ["cost", "-cost", "issue", "-issue", "lastSeen", "-lastSeen"]}),
            _q("project"), limit, _q("cursor")], "{issues: [...], next_cursor}"),
        "/api/factory/cost-per-issue/{issue}": _get("One issue's cost, drilled down", [
            _q("issue", required=True, where="path")], "{issue, totalCostUsd, ...}"),
        "/api/v1/admin/metrics/cost-optimization": _get("Cost optimisation report (X-Org-ID for org-* admins)", [
            _q("X-Org-ID", where="header")], "{total_cost_today, total_cost_month, projected_monthly, ...}"),
        "/api/ai-cost/monthly-summary": _get("This month's spend of a project", [project], "{totalCost, ...}"),
        "/api/ai-cost/monthly-trend": _get("The last 6 months of a project", [project], "[{month, cost, ...}]",
                                             {"type": "array"}),
        "/api/ai-cost/cross-project-summary": _get("This month per project", [], "{projects: [...], ...}"),
        "/api/ai-cost/recent-transactions": _get("A project's last 50 calls", [project], "[{id, cost, ...}]",
                                                   {"type": "array"}),
        "/api/ai-cost/org-summary": _get(
            "This month of the whole org, as monthly-summary, plus its 6-month trend (X-Org-ID for org-* admins)",
            [_q("X-Org-ID", where="header")], "{totalCost, ..., budgetName, monthlyTrend: [...]}"),
        "/api/factory/daily-spend": _get("Daily spend by provider, every UTC day of the window, oldest first", [
            _q("days", {"type": "integer", "enum": [7, 14, 30, 90], "default": 30})],
            "{days: [{date, cost, tokens, jobs, byProvider}], providers}"),
        "/api/ai-cost/budget-limit": {"put": {
            "summary": "Set the monthly budget limit of a project (admin)", "security": security,
            "parameters": [project],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["limitDollars"],
                "properties": {"limitDollars": {"type": "number", "minimum": 0}}}}}},
            "responses": {"200": _json(_OBJ, "The new limit"), **_errors()}}},
    }
    return paths, components
