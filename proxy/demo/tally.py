"""What the demo did, counted across its worker threads: calls, metered spend, refusals, issues and runs."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal

from proxy.demo.agent import Answered, Failed, Refused

MAX_ERRORS_KEPT = 5


@dataclass(frozen=True, slots=True)
class RefusalNote:
    """The first refusal of one kind: a budget stopping a run, or an approval holding a station."""

    code: str
    budget: str | None
    window: str | None
    approval_id: str | None
    issue: str
    run: str | None
    station: str
    spent_before: Decimal  # what the issue had spent at that station when refused
    message: str


@dataclass(slots=True)
class Tally:
    calls: int = 0
    answered: int = 0
    failed: int = 0
    retries: int = 0
    clamped: int = 0
    warned: int = 0
    spend: Decimal = Decimal(0)
    input_tokens: int = 0
    output_tokens: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    notes: list[RefusalNote] = field(default_factory=list)
    held: Counter[str] = field(default_factory=Counter)  # approval id -> calls it held
    errors: list[str] = field(default_factory=list)
    issues_completed: int = 0
    issues_open: dict[str, str] = field(default_factory=dict)  # issue -> why it is still open
    issues_not_started: int = 0  # interrupted first
    reworks: int = 0
    runs: Counter[str] = field(default_factory=Counter)  # pipeline run status -> count
    deployments: int = 0
    incidents: int = 0
    session_ms: int = 0
    execution_ms: int = 0
    consecutive_failures: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def refusals(self) -> int:
        return sum(self.refused.values())

    def on_answer(self, answer: Answered, *, retry: bool) -> None:
        with self._lock:
            self.calls += 1
            self.answered += 1
            self.retries += int(retry)
            self.clamped += int(answer.clamped)
            self.warned += int(answer.warned)
            self.spend += answer.cost
            self.input_tokens += answer.input_tokens
            self.output_tokens += answer.output_tokens
            self.consecutive_failures = 0

    def on_refusal(self, refusal: Refused, note: RefusalNote) -> None:
        with self._lock:
            self.calls += 1
            self.refused[refusal.code] += 1
            self.consecutive_failures = 0
            if refusal.approval_id:
                self.held[refusal.approval_id] += 1
            key = (note.code, note.budget, note.approval_id)
            if all((n.code, n.budget, n.approval_id) != key for n in self.notes):
                self.notes.append(note)

    def on_failure(self, failure: Failed) -> int:
        """Counts a failed call; returns how many calls in a row have failed."""
        with self._lock:
            self.calls += 1
            self.failed += 1
            self.consecutive_failures += 1
            if len(self.errors) < MAX_ERRORS_KEPT:
                status = f"HTTP {failure.status}: " if failure.status else ""
                self.errors.append(status + failure.message)
            return self.consecutive_failures

    def add(self, **amounts: int) -> None:
        """Adds to the integer counters named (issues_completed=1, reworks=1, ...)."""
        with self._lock:
            for name, amount in amounts.items():
                setattr(self, name, getattr(self, name) + amount)

    def run_ended(self, status: str) -> None:
        with self._lock:
            self.runs[status] += 1

    def issue_open(self, issue: str, reason: str) -> None:
        with self._lock:
            self.issues_open[issue] = reason
