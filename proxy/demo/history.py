"""The simulated factory's past, day by day: how many issues a day got (growing toward today, quieter at
weekends) and each issue's calls and events with timestamps inside its day. Pure and deterministic: a day's
issue j is the same whenever it is generated, and a day further in the past never gets more issues, so a
later backfill only ever adds days it had not written."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from pricing.cost import cost_nano
from pricing.usage import Usage
from proxy.demo.factory import MINUTE_MS, Issue, Visit, regular_issue
from proxy.demo.lifecycle import Event, IssueEvents
from proxy.store.records import CallRecord
from proxy.upstreams.base import Deployment

ISSUES_PER_WEEKDAY = 10.0  # an average weekday's issues, at yesterday's level
GROWTH_PER_90_DAYS = 2.5  # the factory does 2.5x the work it did 90 days ago
WEEKDAY_FACTOR = (1.0, 1.1, 1.1, 1.0, 0.85, 0.25, 0.2)  # Monday .. Sunday
INCIDENT_RATE = 0.03  # share of deployments that cause an incident, rolled back
DAY_START, DAY_END = timedelta(hours=6), timedelta(hours=23, minutes=30)
OUTPUT_TOKENS_PER_S = 60


def issues_on(day: date, days_ago: int, *, seed: int, org: str) -> int:
    """Issues worked on `day`, `days_ago` days before today: fewer the further back (never more)."""
    noise = random.Random(f"{seed}|{org}|{day}|volume").uniform(0.75, 1.25)
    level = ISSUES_PER_WEEKDAY * GROWTH_PER_90_DAYS ** (-days_ago / 90)
    return max(0, round(level * WEEKDAY_FACTOR[day.weekday()] * noise))


@dataclass(frozen=True, slots=True)
class Models:
    """The routes history is priced with: the heavy and light models of the demo, as the config routes them."""

    heavy: Deployment
    light: Deployment
    catalog_version: str


@dataclass(slots=True)
class DayIssue:
    """One issue's rows: calls for `Store.insert_new_calls`, events for `ingest_events`."""

    calls: list[CallRecord]
    events: list[Event]


def issue_history(day: date, j: int, *, seed: int, org: str, models: Models) -> DayIssue:
    rng = random.Random(f"{seed}|{org}|{day}|{j}")
    issue = regular_issue(rng, j, incident=rng.random() < INCIDENT_RATE)
    return _Story(day, j, issue, rng, org, models).tell()


class _Story:
    """Lays an issue's visits end to end from a start time chosen so that all of it falls on `day`."""

    def __init__(self, day: date, j: int, issue: Issue, rng: random.Random, org: str, models: Models) -> None:
        self.day, self.j, self.issue, self.rng, self.org, self.models = day, j, issue, rng, org, models
        stamp = f"{day:%y%m%d}-{j + 1}"
        self.id = f"{issue.project.prefix}-{stamp}"
        self.run = f"run-{stamp}"
        self.commit = hashlib.sha1(f"{org}:{day}:{j}".encode()).hexdigest()[:12]
        self.events = IssueEvents(f"bf-{day:%Y%m%d}-{j:03d}", self.id, issue.project.name, self.run)
        self.result = DayIssue([], [])
        self.gaps = [rng.randint(2, 20) * MINUTE_MS for _ in issue.visits]
        self.decision_ms = rng.randint(10, 120) * MINUTE_MS

    def tell(self) -> DayIssue:
        length = timedelta(milliseconds=self._length_ms())
        room = max(DAY_START, DAY_END - length) - DAY_START
        midnight = datetime.combine(self.day, time.min, tzinfo=UTC)
        start = midnight + DAY_START + room * self.rng.random()
        # Filed up to five hours before work starts, never before the day (a day's rows stay in that day).
        created = max(midnight, start - timedelta(minutes=self.rng.randint(5, 300)))
        self.result.events.append(self.events.created(created, self.issue.title))
        t, run_start = start, None
        for visit, gap in zip(self.issue.visits, self.gaps, strict=True):
            if visit.in_run and run_start is None:
                run_start = t
            t = self._visit(t, visit) + timedelta(milliseconds=gap)
        if run_start is not None:
            self.result.events.append(self.events.pipeline_run(
                run_start, status="success", duration_ms=int((t - run_start).total_seconds() * 1000),
                trigger=self.issue.trigger, branch=f"{self.issue.kind}/{self.id.lower()}", commit=self.commit))
        self.result.events.append(self.events.completed(t))
        return self.result

    def _length_ms(self) -> int:
        total = sum(v.session_ms + (v.execution[1] if v.execution else 0) for v in self.issue.visits)
        return total + sum(self.gaps) + self.decision_ms + (3 * 60 * MINUTE_MS if self.issue.incident else 0)

    def _visit(self, t: datetime, visit: Visit) -> datetime:
        """Writes one visit starting at `t`; returns when it ended."""
        ev, out = self.events, self.result.events
        out.append(ev.entered(t, visit))
        route = self.models.heavy if visit.heavy else self.models.light
        cost, tokens_in, tokens_out = self._calls(t, visit, route)
        t += timedelta(milliseconds=visit.session_ms)
        out.append(ev.session(t, visit, provider=route.provider, model=route.requested, cost_usd=cost / 1e9,
                              input_tokens=tokens_in, output_tokens=tokens_out))
        if visit.execution is not None and (execution := ev.execution(t, visit)) is not None:
            out.append(execution)
            t += timedelta(milliseconds=visit.execution[1])
        if visit.handoff is not None:
            decided = t + timedelta(milliseconds=self.decision_ms)
            out.extend(ev.handoff(t, decided, visit, visit.handoff))
            t = decided
        out.append(ev.station_completed(t, visit, visit.outcome, route.provider, route.requested))
        if visit.station == "deploy":
            self._deploy(t)
        return t

    def _calls(self, t: datetime, visit: Visit, route: Deployment) -> tuple[int, int, int]:
        total = tokens_in = tokens_out = 0
        previous: str | None = None
        for k, spec in enumerate(visit.calls):
            started = t + timedelta(milliseconds=visit.session_ms * (k + 0.5) / len(visit.calls))
            ended = started + timedelta(seconds=1 + spec.output_tokens / OUTPUT_TOKENS_PER_S)
            nano = cost_nano(Usage(spec.prompt_tokens, spec.output_tokens), route.price) if route.price else 0
            request_id = f"bf-{self.org}-{self.day:%Y%m%d}-{self.j:03d}-{len(self.result.calls):03d}"
            self.result.calls.append(CallRecord(
                request_id=request_id, started_at=started, ended_at=ended, status="ok", http_status=200,
                org=self.org, endpoint="/v1/chat/completions", provider=route.provider, model=route.requested,
                upstream_model=route.upstream_model, project=self.issue.project.name, agent=visit.agent,
                station=visit.station, run=self.run if visit.in_run else None, issue=self.id, actor="agent",
                retry_of=previous if spec.retry else None, input_tokens=spec.prompt_tokens,
                output_tokens=spec.output_tokens, cost_nano=nano,
                catalog_version=self.models.catalog_version if route.price else "unpriced"))
            previous = request_id
            total += nano
            tokens_in += spec.prompt_tokens
            tokens_out += spec.output_tokens
        return total, tokens_in, tokens_out

    def _deploy(self, t: datetime) -> None:
        ev, out = self.events, self.result.events
        version = f"{self.day:%Y.%m.%d}.{self.j + 1}"
        out.append(ev.deployment(t, version=version, commit=self.commit))
        if self.issue.incident:
            incident = f"inc-{self.day:%y%m%d}-{self.j + 1}"
            opened = t + timedelta(minutes=self.rng.randint(10, 60))
            resolved = opened + timedelta(minutes=self.rng.randint(15, 110))
            out.append(ev.incident_opened(opened, incident, f"Error rate up after {version}"))
            out.append(ev.deployment(resolved, version=f"{self.day:%Y.%m.%d}.{self.j + 1}-rollback",
                                     commit=self.commit, rollback=True))
            out.append(ev.incident_resolved(resolved, incident))
