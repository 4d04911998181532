"""The factory lifecycle events of `POST /api/factory/events`: their schema (camelCase, as the seeds send
them), validation with messages that name the event and field, and the row each becomes in `factory_events`.

Unknown fields are refused (a typo such as `costUSD` must not silently drop money); free-form data goes in
`meta`. Every event needs an `id` (idempotency: the same id twice in one org is stored once) and an ISO 8601
`ts` with a UTC offset.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    field_validator,
)

from pricing.money import usd_to_nano
from proxy.errors import InvalidRequest

MAX_BATCH = 1000
MAX_FUTURE = timedelta(hours=24)  # clock skew allowed on `ts`
MAX_DURATION_MS = 10 * 366 * 24 * 3_600_000
MAX_TOKENS = 10**12
MAX_USD = 1_000_000
MS_PER_HOUR = 3_600_000

Tag = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=128)]
Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=512)]
DurationMs = Annotated[StrictInt, Field(ge=0, le=MAX_DURATION_MS)]
Tokens = Annotated[StrictInt, Field(ge=0, le=MAX_TOKENS)]
Usd = Annotated[float, Field(ge=0, le=MAX_USD, allow_inf_nan=False)]


class _Event(BaseModel):
    """Fields every event may carry. `org`, when given, must be the key's org."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)
    id: Tag
    ts: AwareDatetime
    org: Tag | None = None
    project: Tag | None = None
    issue: Tag | None = None
    station: Tag | None = None
    run: Tag | None = None
    agent: Tag | None = None
    actor: Literal["agent", "human"] = "agent"
    meta: dict[str, Any] | None = None

    @field_validator("id", "org", "project", "issue", "station", "run", "agent")
    @classmethod
    def _printable(cls, v: str | None) -> str | None:
        if v is not None and not v.isprintable():
            raise ValueError("must be printable characters")
        return v

    @field_validator("ts")
    @classmethod
    def _not_future(cls, v: datetime) -> datetime:
        if v > datetime.now(UTC) + MAX_FUTURE:
            raise ValueError("is more than 24 hours in the future")
        if v.year < 2000:
            raise ValueError("is before the year 2000")
        return v.astimezone(UTC)

    @field_validator("meta")
    @classmethod
    def _small_meta(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is not None and len(orjson.dumps(v)) > 4096:
            raise ValueError("must serialise to at most 4096 bytes")
        return v


class IssueCreated(_Event):
    type: Literal["issue.created"]
    issue: Tag
    title: Text | None = None


class IssueCompleted(_Event):
    type: Literal["issue.completed"]
    issue: Tag


class StationEntered(_Event):
    type: Literal["station.entered"]
    issue: Tag
    station: Tag


class StationCompleted(_Event):
    type: Literal["station.completed"]
    issue: Tag
    station: Tag
    outcome: Literal["passed", "rework"]
    provider: Tag | None = None
    model: Tag | None = None


class HandoffRequested(_Event):
    type: Literal["handoff.requested"]
    issue: Tag
    handoffId: Tag | None = None  # noqa: N815 - the seeds' camelCase
    strategy: Tag = "human_review"


class HandoffDecided(_Event):
    type: Literal["handoff.decided"]
    issue: Tag
    handoffId: Tag | None = None  # noqa: N815
    decision: Literal["approved", "rejected"]
    overridden: StrictBool = False


class SessionCompleted(_Event):
    """An agent (or human) session. Its `costUsd` counts only with `metered: false` (work the proxy did not
    see); every session adds its compute leg: durationMs x `pricing.compute_hourly_rate_usd`."""

    type: Literal["session.completed"]
    provider: Tag
    model: Tag | None = None
    sessionId: Tag | None = None  # noqa: N815
    costUsd: Usd = 0.0  # noqa: N815
    inputTokens: Tokens = 0  # noqa: N815
    outputTokens: Tokens = 0  # noqa: N815
    durationMs: DurationMs = 0  # noqa: N815
    metered: StrictBool = True


class Execution(_Event):
    """Compute work: its cost is `costUsd` when given, else durationMs x the compute hourly rate."""

    type: Literal["execution"]
    kind: Literal["container_build", "test_run", "security_scan", "iac_validation"]
    durationMs: DurationMs  # noqa: N815
    costUsd: Usd | None = None  # noqa: N815


class PipelineRun(_Event):
    """A CI pipeline run; `ts` is when it started."""

    type: Literal["pipeline.run"]
    name: Tag
    status: Tag
    durationMs: DurationMs | None = None  # noqa: N815
    trigger: Tag | None = None
    branch: Text | None = None
    commit: Tag | None = None


class Deployment(_Event):
    """A deployment; `ts` is when it was deployed."""

    type: Literal["deployment"]
    version: Tag
    environment: Tag
    status: Tag
    isRollback: StrictBool = False  # noqa: N815
    deployedBy: Tag | None = None  # noqa: N815
    commit: Tag | None = None


class IncidentOpened(_Event):
    type: Literal["incident.opened"]
    incidentId: Tag  # noqa: N815
    title: Text | None = None
    severity: Tag | None = None


class IncidentResolved(_Event):
    type: Literal["incident.resolved"]
    incidentId: Tag  # noqa: N815


FactoryEvent = (IssueCreated | IssueCompleted | StationEntered | StationCompleted | HandoffRequested
                | HandoffDecided | SessionCompleted | Execution | PipelineRun | Deployment | IncidentOpened
                | IncidentResolved)
EVENT_TYPES = ("issue.created", "issue.completed", "station.entered", "station.completed", "handoff.requested",
               "handoff.decided", "session.completed", "execution", "pipeline.run", "deployment",
               "incident.opened", "incident.resolved")
_ADAPTER: TypeAdapter[FactoryEvent] = TypeAdapter(Annotated[FactoryEvent, Field(discriminator="type")])


def parse_events(body: Any) -> list[FactoryEvent]:
    """One event or `{"events": [...]}` -> validated events; InvalidRequest names each bad field."""
    if isinstance(body, dict) and set(body) == {"events"}:
        items = body["events"]
        if not isinstance(items, list) or not items:
            raise InvalidRequest("`events` must be a non-empty array of events", param="events")
        if len(items) > MAX_BATCH:
            raise InvalidRequest(f"at most {MAX_BATCH} events per request (got {len(items)})", param="events")
        where = [f"events[{i}]" for i in range(len(items))]
    elif isinstance(body, dict):
        items, where = [body], ["event"]
    else:
        raise InvalidRequest("the body must be an event object or {\"events\": [...]}")
    parsed: list[FactoryEvent] = []
    problems: list[str] = []
    for item, name in zip(items, where, strict=True):
        try:
            parsed.append(_ADAPTER.validate_python(item))
        except ValidationError as exc:
            problems.extend(_describe(name, item, exc))
    if problems:
        shown = problems[:10]
        more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
        raise InvalidRequest("invalid event: " + "; ".join(shown) + more, param=shown[0].split(":")[0])
    return parsed


def _describe(name: str, item: Any, exc: ValidationError) -> list[str]:
    if isinstance(item, dict) and item.get("type") not in EVENT_TYPES:
        return [f"{name}.type: must be one of {', '.join(EVENT_TYPES)} (got {item.get('type')!r})"]
    lines = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = [str(p) for p in err["loc"]]
        if loc and loc[0] in EVENT_TYPES:  # the discriminator's branch name adds nothing for the reader
            loc = loc[1:]
        field = ".".join(loc)
        message = "unknown field (put free-form data in `meta`)" if err["type"] == "extra_forbidden" else err["msg"]
        lines.append(f"{name}.{field}: {message}" if field else f"{name}: {message}")
    return lines


def compute_nano(duration_ms: int, rate_usd_per_hour: float) -> int:
    """The compute leg of `duration_ms` at the hourly rate, in nano-USD, rounded up (never under-charged)."""
    rate = usd_to_nano(rate_usd_per_hour)
    return -(-duration_ms * rate // MS_PER_HOUR)


def event_row(event: FactoryEvent, org: str, *, rate_usd_per_hour: float, received_at: datetime) -> dict[str, Any]:
    """The `factory_events` row of one event (columns as in proxy/store/models.py)."""
    row: dict[str, Any] = {
        "org": org, "id": event.id, "type": event.type, "ts": event.ts, "received_at": received_at,
        "project": event.project, "issue": event.issue, "station": event.station, "run": event.run,
        "agent": event.agent, "actor": event.actor, "provider": None, "model": None, "ref": None, "kind": None,
        "outcome": None, "status": None, "overridden": None, "is_rollback": None, "metered": None,
        "cost_nano": 0, "compute_nano": 0, "input_tokens": 0, "output_tokens": 0, "duration_ms": None,
        "payload": orjson.dumps(event.model_dump(mode="json", exclude_none=True)).decode(),
    }
    row.update(_specific(event, rate_usd_per_hour))
    return row


def _specific(event: FactoryEvent, rate: float) -> dict[str, Any]:
    match event:
        case StationCompleted():
            return {"outcome": event.outcome, "provider": event.provider, "model": event.model}
        case HandoffRequested():
            return {"ref": event.handoffId, "kind": event.strategy}
        case HandoffDecided():
            return {"ref": event.handoffId, "outcome": event.decision, "overridden": event.overridden}
        case SessionCompleted():
            compute = compute_nano(event.durationMs, rate)
            tokens = 0 if event.metered else usd_to_nano(event.costUsd)
            return {"provider": event.provider, "model": event.model, "ref": event.sessionId,
                    "metered": event.metered, "duration_ms": event.durationMs, "compute_nano": compute,
                    "cost_nano": compute + tokens, "input_tokens": event.inputTokens,
                    "output_tokens": event.outputTokens}
        case Execution():
            cost = usd_to_nano(event.costUsd) if event.costUsd is not None else compute_nano(event.durationMs, rate)
            return {"kind": event.kind, "duration_ms": event.durationMs, "compute_nano": cost, "cost_nano": cost}
        case PipelineRun():
            return {"kind": event.name, "status": event.status, "duration_ms": event.durationMs, "ref": event.commit}
        case Deployment():
            return {"status": event.status, "is_rollback": event.isRollback, "ref": event.commit}
        case IncidentOpened() | IncidentResolved():
            return {"ref": event.incidentId, "status": "open" if event.type == "incident.opened" else "resolved"}
    return {}
