"""Cost per issue (seed "Cost Per Issue", two legs: tokens and compute): the list over a window
(`GET /api/factory/cost-per-issue`) and one issue's drill-down (`GET /api/factory/cost-per-issue/{issue}`).
Read roles only (viewer, admin), scoped to the caller's org, errors in the seed shape."""

from __future__ import annotations

from typing import Any

from starlette.routing import Route

from proxy.errors import InvalidRequest, NotFound
from proxy.metrics.issue_detail import issue_detail
from proxy.metrics.issue_window import Cursor, DayWindow, Sort, parse_limit
from proxy.metrics.issues import IssueQuery, list_issues
from proxy.routes.seed import Caller, seed_endpoint

MAX_TAG = 128


def _tag(raw: str | None, name: str) -> str | None:
    """An optional filter value: blank means no filter; longer than any stored tag is a 400."""
    value = (raw or "").strip()
    if len(value) > MAX_TAG:
        raise InvalidRequest(f"`{name}` is longer than {MAX_TAG} characters", param=name)
    return value or None


async def cost_per_issue(caller: Caller) -> dict[str, Any]:
    params = caller.request.query_params
    sort = Sort.parse(params.get("sort"))
    raw_cursor = params.get("cursor")
    query = IssueQuery(
        org=caller.org, window=DayWindow.parse(params), sort=sort, limit=parse_limit(params.get("limit")),
        cursor=Cursor.decode(raw_cursor, sort) if raw_cursor else None, project=_tag(params.get("project"), "project"),
    )
    issues, next_cursor = await list_issues(caller.services.store, query)
    return {"issues": issues, "next_cursor": next_cursor}


async def cost_of_issue(caller: Caller) -> dict[str, Any]:
    issue = caller.request.path_params["issue"]
    if not issue or len(issue) > MAX_TAG:
        raise InvalidRequest(f"the issue id must be 1 to {MAX_TAG} characters", param="issue")
    detail = await issue_detail(caller.services.store, caller.org, issue)
    if detail is None:
        raise NotFound(f"no calls or events of issue {issue!r} in this org")
    return detail


routes = [
    Route("/api/factory/cost-per-issue", seed_endpoint(cost_per_issue), methods=["GET"]),
    Route("/api/factory/cost-per-issue/{issue:path}", seed_endpoint(cost_of_issue), methods=["GET"]),
]
