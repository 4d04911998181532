"""`GET /api/factory/metrics?metricType=...&timeRange=...` (seed "Metrics API"): read roles only (viewer,
admin), scoped to the caller's org; the payloads are built in proxy/metrics/report.py."""

from __future__ import annotations

from typing import Any

from starlette.routing import Route

from proxy.metrics.report import builder_for, metrics
from proxy.metrics.timerange import TimeRange
from proxy.routes.seed import READ_ROLES, Caller, seed_endpoint


async def factory_metrics(caller: Caller) -> Any:
    params = caller.request.query_params
    metric_type = params.get("metricType")
    builder_for(metric_type)  # INVALID_METRIC_TYPE is reported before INVALID_TIME_RANGE
    window = TimeRange.parse(params.get("timeRange"))
    return await metrics(caller.services.store, caller.org, metric_type, window)


routes = [Route("/api/factory/metrics", seed_endpoint(factory_metrics, roles=READ_ROLES), methods=["GET"])]
