"""The factory events of one issue (docs/events.md) with ids deterministic per issue: the demo and the backfill
both build them here and supply the timestamps (live: now; backfill: the simulated past)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from proxy.demo.factory import Handoff, Visit

Event = dict[str, Any]


def iso(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z")


class IssueEvents:
    """Builds the events of issue `issue` (project `project`, pipeline run `run`); ids are `<prefix>-<n>` in the
    order they are built, so building the same story twice gives the same ids (posting it twice adds nothing)."""

    def __init__(self, prefix: str, issue: str, project: str, run: str | None) -> None:
        self.prefix, self.issue, self.project, self.run = prefix, issue, project, run
        self._n = 0

    def event(self, type_: str, ts: datetime, **fields: Any) -> Event:
        self._n += 1
        event: Event = {"id": f"{self.prefix}-{self._n:03d}", "type": type_, "ts": iso(ts),
                        "project": self.project, "issue": self.issue}
        event.update({k: v for k, v in fields.items() if v is not None})
        return event

    def _at(self, visit: Visit) -> dict[str, Any]:
        return {"station": visit.station, "agent": visit.agent, "run": self.run if visit.in_run else None}

    def created(self, ts: datetime, title: str) -> Event:
        return self.event("issue.created", ts, title=title, actor="human")

    def completed(self, ts: datetime) -> Event:
        return self.event("issue.completed", ts)

    def entered(self, ts: datetime, visit: Visit) -> Event:
        return self.event("station.entered", ts, **self._at(visit))

    def station_completed(self, ts: datetime, visit: Visit, outcome: str, provider: str | None,
                          model: str | None, note: str | None = None) -> Event:
        return self.event("station.completed", ts, **self._at(visit), outcome=outcome, provider=provider,
                          model=model, meta={"note": note} if note else None)

    def session(self, ts: datetime, visit: Visit, *, provider: str, model: str, cost_usd: float,
                input_tokens: int, output_tokens: int) -> Event:
        """An agent session whose calls went through spendgate (`metered: true`: its cost is not added again;
        its duration adds the compute leg)."""
        return self.event("session.completed", ts, **self._at(visit), provider=provider, model=model,
                          sessionId=f"{self.prefix}-s{self._n + 1:03d}", costUsd=round(cost_usd, 9),
                          inputTokens=input_tokens, outputTokens=output_tokens, durationMs=visit.session_ms,
                          metered=True)

    def execution(self, ts: datetime, visit: Visit) -> Event | None:
        if visit.execution is None:
            return None
        kind, duration_ms = visit.execution
        return self.event("execution", ts, **self._at(visit), kind=kind, durationMs=duration_ms)

    def handoff(self, requested: datetime, decided: datetime, visit: Visit, handoff: Handoff) -> list[Event]:
        """The agent asks a human to accept its work; the human decides."""
        handoff_id = f"{self.prefix}-h{self._n + 1:03d}"
        at = self._at(visit)
        return [self.event("handoff.requested", requested, **at, handoffId=handoff_id, strategy="human_review"),
                self.event("handoff.decided", decided, **{**at, "agent": None}, handoffId=handoff_id,
                           decision=handoff.decision, overridden=handoff.overridden, actor="human")]

    def escalation(self, ts: datetime, visit: Visit, strategy: str, ref: str) -> Event:
        """A budget stopped the agent's work (`budget_exceeded`: `ref` is the budget) or holds it for an admin's
        approval (`budget_approval`: `ref` is the approval id): the work is handed to a human."""
        meta = {"approvalId": ref} if strategy == "budget_approval" else {"budget": ref}
        return self.event("handoff.requested", ts, **self._at(visit), handoffId=f"{ref}:{self.issue}",
                          strategy=strategy, meta=meta)

    def pipeline_run(self, started: datetime, *, status: str, duration_ms: int, trigger: str, branch: str,
                     commit: str, note: str | None = None) -> Event:
        return self.event("pipeline.run", started, run=self.run, name=f"{self.project}-pipeline", status=status,
                          durationMs=duration_ms, trigger=trigger, branch=branch, commit=commit,
                          meta={"note": note} if note else None)

    def deployment(self, ts: datetime, *, version: str, commit: str, rollback: bool = False) -> Event:
        return self.event("deployment", ts, run=self.run, version=version, environment="production",
                          status="success", isRollback=rollback, deployedBy="agent-release", commit=commit)

    def incident_opened(self, ts: datetime, incident_id: str, title: str) -> Event:
        return self.event("incident.opened", ts, incidentId=incident_id, title=title, severity="sev2")

    def incident_resolved(self, ts: datetime, incident_id: str) -> Event:
        return self.event("incident.resolved", ts, incidentId=incident_id)
