"""One issue played through the factory: each visit's calls through spendgate, then the lifecycle events that
tell the same story; a budget refusal is handled the way an orchestrator would (escalate, cut short, stop)."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING

from proxy.demo.agent import Answered, Failed, Refused, Tags
from proxy.demo.factory import Issue, Visit
from proxy.demo.lifecycle import Event, IssueEvents
from proxy.demo.tally import RefusalNote

if TYPE_CHECKING:
    from proxy.demo.driver import Floor

MAX_FAILURES_IN_A_ROW = 10  # spendgate stopped answering: the demo stops instead of failing every call


def now() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True)
class Work:
    """What one visit's calls did."""

    calls: int = 0
    answered: int = 0
    spent: Decimal = Decimal(0)
    input_tokens: int = 0
    output_tokens: int = 0
    first_id: str = ""
    last_id: str | None = None

    def add(self, answer: Answered) -> None:
        self.answered += 1
        self.spent += answer.cost
        self.input_tokens += answer.input_tokens
        self.output_tokens += answer.output_tokens
        self.first_id = self.first_id or answer.request_id
        self.last_id = answer.request_id


class IssueRun:
    def __init__(self, floor: Floor, issue: Issue) -> None:
        self.floor, self.issue = floor, issue
        n = issue.seq + 1
        self.id = f"{issue.project.prefix}-{floor.tag}-{n}"
        self.run = f"run-{floor.tag}-{n}" if issue.has_run else None
        self.events = IssueEvents(f"demo-{floor.tag}-{n}", self.id, issue.project.name, self.run)
        self.rng = random.Random(f"{floor.seed}:{issue.seq}")
        self.commit = hashlib.sha1(f"{floor.tag}:{self.id}".encode()).hexdigest()[:12]
        self.run_started: datetime | None = None
        self.run_ms = 0
        self.run_status, self.run_note = "success", ""

    def play(self) -> None:
        floor, visits = self.floor, self.issue.visits
        if floor.stop.is_set():  # interrupted before this issue was picked up
            floor.pacer.adjust(-self.issue.expected_calls)
            floor.tally.add(issues_not_started=1)
            return
        floor.sink.add(self.events.created(now(), self.issue.title))
        reason, rest = None, visits[:0]
        for i, visit in enumerate(visits):
            if floor.stop.is_set():
                reason, rest = "interrupted", visits[i:]
                break
            if reason := self._visit(visit):
                rest = visits[i + 1:]
                break
        floor.pacer.adjust(-sum(v.expected_calls for v in rest))
        if reason:
            floor.tally.issue_open(self.id, reason)
            if reason == "interrupted":
                self.run_status = "cancelled"
        else:
            floor.sink.add(self.events.completed(now()))
            floor.tally.add(issues_completed=1)
        self._end_run()

    def _visit(self, visit: Visit) -> str | None:
        """Plays one visit; returns why the issue stops here, or None to go on."""
        if visit.in_run and self.run_started is None:
            self.run_started = now()
        self.floor.sink.add(self.events.entered(now(), visit))
        model = self.floor.heavy_model if visit.heavy else self.floor.light_model
        work = Work()
        refusal = self._calls(visit, model, work)
        self.floor.pacer.adjust(work.calls - visit.expected_calls)
        events, reason = self._outcome(visit, model, work, refusal)
        self.floor.sink.add(*events)
        return reason

    def _calls(self, visit: Visit, model: str, work: Work) -> Refused | None:
        floor = self.floor
        for spec in visit.calls:
            if floor.stop.is_set():
                return None
            floor.pacer.wait()
            tags = Tags(self.issue.project.name, visit.agent, visit.station, self.id,
                        self.run if visit.in_run else None, work.last_id if spec.retry else None)
            messages = floor.book.messages(self.rng, agent=visit.agent, station=visit.station,
                                           project=self.issue.project.name, issue=self.id,
                                           title=self.issue.title, tokens=spec.prompt_tokens)
            outcome = floor.agent().chat(model, messages, spec.max_tokens, tags)
            work.calls += 1
            match outcome:
                case Answered():
                    floor.tally.on_answer(outcome, retry=tags.retry_of is not None)
                    work.add(outcome)
                case Refused():
                    floor.tally.on_refusal(outcome, RefusalNote(
                        outcome.code, outcome.budget, outcome.window, outcome.approval_id, self.id, tags.run,
                        visit.station, work.spent, outcome.message))
                    return outcome
                case Failed():
                    if floor.tally.on_failure(outcome) >= MAX_FAILURES_IN_A_ROW:
                        floor.stop.set()
        return None

    def _outcome(self, visit: Visit, model: str, work: Work,
                 refusal: Refused | None) -> tuple[list[Event], str | None]:
        """The events closing a visit, and why the issue stops (None: it goes on)."""
        ts, ev = now(), self.events
        provider = self.floor.providers.of(model, work.first_id) if work.answered else None
        events: list[Event] = []
        if provider is not None:
            events.append(ev.session(ts, visit, provider=provider, model=model, cost_usd=float(work.spent),
                                     input_tokens=work.input_tokens, output_tokens=work.output_tokens))
            self.floor.tally.add(session_ms=visit.session_ms)
            self.run_ms += visit.session_ms if visit.in_run else 0
        if refusal is not None:
            more, reason = self._refused(ts, visit, refusal, provider, model)
            return events + more, reason
        if self.floor.stop.is_set():  # interrupted during the visit: it never completed
            return events, "interrupted"
        if (execution := ev.execution(ts, visit)) is not None and visit.execution is not None:
            events.append(execution)
            self.floor.tally.add(execution_ms=visit.execution[1])
            self.run_ms += visit.execution[1]
        if visit.handoff is not None:
            self.floor.review_pause()  # the human reviewer takes a moment; the agent waits for the decision
            events += ev.handoff(ts, now(), visit, visit.handoff)
        events.append(ev.station_completed(now(), visit, visit.outcome, provider, model))
        self.floor.tally.add(reworks=int(visit.outcome == "rework"))
        if visit.station == "deploy":
            events += self._deploy()
        return events, None

    def _refused(self, ts: datetime, visit: Visit, refusal: Refused, provider: str | None,
                 model: str) -> tuple[list[Event], str | None]:
        ev = self.events
        if refusal.code == "approval_required" and refusal.approval_id:
            events = [ev.escalation(ts, visit, "budget_approval", refusal.approval_id)]
            if visit.loop == "spike":  # the spike is nothing but research: it waits for the approval
                return events, f"waiting for approval {refusal.approval_id}"
            events.append(ev.station_completed(now(), visit, "passed", provider, model,
                                               note=f"cut short: held for budget approval {refusal.approval_id}"))
            return events, None
        budget = refusal.budget or refusal.code
        self.run_status, self.run_note = "cancelled", f"stopped by budget {budget}"
        return [ev.escalation(ts, visit, "budget_exceeded", budget)], f"stopped by budget {budget}"

    def _deploy(self) -> list[Event]:
        ts = now()
        version, previous = self.floor.next_version(self.issue.project.name)
        events = [self.events.deployment(ts, version=version, commit=self.commit)]
        self.floor.tally.add(deployments=1)
        if self.issue.incident:
            incident = f"inc-{self.floor.tag}-{self.issue.seq + 1}"
            events.append(self.events.incident_opened(ts, incident, f"Error rate up after {version}"))
            self.floor.open_incident(self.events, incident, previous or f"{version}-previous", self.commit)
            self.floor.tally.add(incidents=1)
        return events

    def _end_run(self) -> None:
        if self.run_started is None:
            return
        branch = f"{self.issue.kind}/{self.id.lower()}"
        self.floor.sink.add(self.events.pipeline_run(
            self.run_started, status=self.run_status, duration_ms=self.run_ms, trigger=self.issue.trigger,
            branch=branch, commit=self.commit, note=self.run_note or None))
        self.floor.tally.run_ended(self.run_status)
