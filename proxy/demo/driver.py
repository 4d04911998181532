"""Drives the simulated factory through a running spendgate: a few agents at once (threads, one openai client
each), paced over the requested minutes, events posted as the work happens, a progress bar, and the result."""

from __future__ import annotations

import secrets
import string
import threading
import time
import urllib.parse
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

from proxy.demo.agent import Agent
from proxy.demo.api import ApiError, SpendgateApi
from proxy.demo.factory import Plan, build_plan
from proxy.demo.issue_run import IssueRun, now
from proxy.demo.lifecycle import IssueEvents
from proxy.demo.pacing import Pacer
from proxy.demo.progress import Progress
from proxy.demo.prompts import PromptBook
from proxy.demo.sink import EventSink
from proxy.demo.tally import Tally

TAG_ALPHABET = string.ascii_lowercase + string.digits
PROVIDER_LOOKUP_S = 5.0


class DemoError(Exception):
    """The demo cannot start: spendgate unreachable, the key refused, or a model missing."""


@dataclass(frozen=True, slots=True)
class DemoOptions:
    url: str
    key: str
    minutes: float = 1.0
    fast: bool = False
    seed: int = 15
    issues: int = 12
    agents: int = 4
    heavy_model: str = "mock-claude"  # research, implementation, security
    light_model: str = "mock"  # testing, documentation, release
    tag: str = ""  # ids carry it so two demos never share an issue or a run; empty: a fresh random one


@dataclass(slots=True)
class DemoResult:
    options: DemoOptions
    plan: Plan
    tag: str
    tally: Tally
    sink: EventSink
    seconds: float
    interrupted: bool
    approvals: dict[str, dict[str, Any]] = field(default_factory=dict)  # approval id -> its row, if pending
    crashes: list[BaseException] = field(default_factory=list)  # bugs in a worker: reported after the summary


class ProviderBook:
    """The provider spendgate routed each model to, read back once from the first call's stored row."""

    def __init__(self, api: SpendgateApi) -> None:
        self._api = api
        self._known: dict[str, str] = {}
        self._lock = threading.Lock()

    def of(self, model: str, request_id: str) -> str:
        with self._lock:
            if model in self._known:
                return self._known[model]
        provider = self._lookup(request_id) or "spendgate"
        with self._lock:
            return self._known.setdefault(model, provider)

    def _lookup(self, request_id: str) -> str | None:
        deadline = time.monotonic() + PROVIDER_LOOKUP_S
        while request_id and time.monotonic() < deadline:
            try:
                row = self._api.get("/api/calls/" + urllib.parse.quote(request_id, safe=""))
                return str(row["provider"])
            except ApiError as err:
                if err.status != 404:  # not stored yet is 404: the writer batches every few ms
                    return None
            time.sleep(0.05)
        return None


class Floor:
    """What the issues being played share: pacing, the event sink, the tally, one openai client per thread."""

    def __init__(self, options: DemoOptions, tag: str, plan: Plan, err: TextIO) -> None:
        self.options, self.tag, self.seed = options, tag, options.seed
        self.heavy_model, self.light_model = options.heavy_model, options.light_model
        self.api = SpendgateApi(options.url, options.key)
        self.stop = threading.Event()
        self.pacer = Pacer(plan.expected_calls, 0.0 if options.fast else options.minutes * 60, self.stop)
        self.progress = Progress(err, seconds=0.0 if options.fast else options.minutes * 60)
        self.book = PromptBook(options.seed)
        self.sink = EventSink(self.api)
        self.tally = Tally()
        self.providers = ProviderBook(self.api)
        self._local = threading.local()
        self._agents: list[Agent] = []
        self._versions: dict[str, int] = {}
        self._incidents: list[tuple[IssueEvents, str, str, str]] = []
        self._lock = threading.Lock()

    def agent(self) -> Agent:
        agent: Agent | None = getattr(self._local, "agent", None)
        if agent is None:
            agent = self._local.agent = Agent(self.options.url, self.options.key)
            with self._lock:
                self._agents.append(agent)
        return agent

    def review_pause(self) -> None:
        """A human's review takes a moment of the paced demo (1.5 s a minute, at most 5 s); none with --fast."""
        if not self.options.fast:
            self.stop.wait(min(5.0, self.options.minutes * 1.5))

    def next_version(self, project: str) -> tuple[str, str | None]:
        """A new calendar version for `project`, and the one it replaces (None for the demo's first)."""
        with self._lock:
            n = self._versions.get(project, 0) + 1
            self._versions[project] = n
        day = datetime.now(UTC).strftime("%Y.%m.%d")
        return f"{day}-{self.tag}.{n}", (f"{day}-{self.tag}.{n - 1}" if n > 1 else None)

    def open_incident(self, events: IssueEvents, incident: str, rollback_to: str, commit: str) -> None:
        with self._lock:
            self._incidents.append((events, incident, rollback_to, commit))

    def resolve_incidents(self) -> None:
        """Each incident of the demo ends with a rollback deployment, at the end (so it stays open meanwhile)."""
        for events, incident, rollback_to, commit in self._incidents:
            ts = now()
            self.sink.add(events.deployment(ts, version=rollback_to, commit=commit, rollback=True),
                          events.incident_resolved(ts, incident))

    def close(self) -> None:
        for agent in self._agents:
            agent.close()


class Demo:
    def __init__(self, options: DemoOptions, err: TextIO) -> None:
        self.options = options
        self.tag = options.tag or "".join(secrets.choice(TAG_ALPHABET) for _ in range(4))
        self.plan = build_plan(options.seed, options.issues)
        self.floor = Floor(options, self.tag, self.plan, err)

    def check(self) -> None:
        """spendgate answers, the key is accepted, and both models are configured."""
        try:
            available = self.floor.agent().models()
        except Exception as exc:  # the SDK's connection and status errors alike: the demo cannot start
            raise DemoError(f"spendgate at {self.options.url} did not list its models ({exc}); is it running "
                            "(`make serve`) and is the key right?") from None
        missing = [m for m in dict.fromkeys((self.options.heavy_model, self.options.light_model))
                   if m not in available]
        if missing:
            raise DemoError(f"model(s) {', '.join(missing)} not configured on that spendgate (it has: "
                            f"{', '.join(available) or 'none'}); run it with config.yaml or pass --model NAME")

    def run(self) -> DemoResult:
        try:
            self.check()
            return self._play()
        finally:
            self.floor.close()

    def _play(self) -> DemoResult:
        floor = self.floor
        floor.sink.start()
        started = time.monotonic()
        floor.pacer.start()
        interrupted = False
        with ThreadPoolExecutor(self.options.agents, thread_name_prefix="demo-agent") as pool:
            futures = [pool.submit(IssueRun(floor, issue).play) for issue in self.plan.issues]
            try:
                self._watch(futures)
            except KeyboardInterrupt:
                interrupted = True
                floor.stop.set()
                self._watch(futures)
        floor.resolve_incidents()
        floor.sink.close()
        tally = floor.tally
        floor.progress.finish(tally.calls, tally.spend, tally.refusals)
        result = DemoResult(self.options, self.plan, self.tag, tally, floor.sink, time.monotonic() - started,
                            interrupted)
        result.approvals = self._pending_approvals()
        result.crashes = [exc for f in futures if (exc := f.exception()) is not None]
        return result

    def _watch(self, futures: Sequence[Future[None]]) -> None:
        tally = self.floor.tally
        pending = set(futures)
        while pending:
            _, pending = wait(pending, timeout=0.2)
            self.floor.progress.update(tally.calls, self.floor.pacer.total, tally.spend, tally.refusals)

    def _pending_approvals(self) -> dict[str, dict[str, Any]]:
        held = self.floor.tally.held
        if not held:
            return {}
        try:
            rows = self.floor.api.get("/api/approvals?status=pending&limit=1000")["approvals"]
        except ApiError:  # an agent key may not list approvals; the summary still has the ids
            return {}
        return {row["id"]: row for row in rows if row["id"] in held}
