"""The simulated factory: projects, agent types at their stations, and the seeded plan of issues that the
demo drives through the proxy and the backfill writes as history. Pure: no I/O, no clock."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

STATIONS = ("research", "development", "security", "qa", "acceptance", "deploy")
MINUTE_MS = 60_000
# The runaway loop's context grows by this many tokens per attempt, from RUNAWAY_START: the per-run cap
# stops it after a handful of attempts; the bound only matters when no cap matches.
RUNAWAY_START, RUNAWAY_STEP, RUNAWAY_BOUND, RUNAWAY_EXPECTED = 6000, 2000, 25, 8
# The research spike reads large documents until the research station's approval budget holds it.
SPIKE_PROMPT, SPIKE_BOUND, SPIKE_EXPECTED = (16_000, 28_000), 40, 20


@dataclass(frozen=True, slots=True)
class Project:
    name: str
    prefix: str  # of its issue ids, e.g. WEB
    weight: int  # how much of the work it gets


PROJECTS = (Project("storefront", "WEB", 4), Project("payments", "PAY", 3), Project("mobile-api", "API", 2),
            Project("platform", "OPS", 1))


@dataclass(frozen=True, slots=True)
class Role:
    """An agent type at its station: how it calls the model and how long its sessions run."""

    agent: str
    heavy: bool  # on the heavy (frontier-priced) model, else the light one
    prompt: tuple[int, int]  # prompt tokens per call
    output: tuple[int, int]  # output tokens per call (history; the live mock answers with its configured size)
    calls: tuple[int, int]  # calls per visit
    max_tokens: int
    retry_rate: float  # share of calls retried because their output failed the agent's own checks
    session_min: tuple[int, int]  # session length in minutes
    execution: str | None  # compute work the station runs (events.md `execution` kinds)


ROLES = {
    "research": Role("research", True, (8000, 16000), (600, 1500), (1, 3), 1500, 0.0, (10, 30), None),
    "development": Role("implementation", True, (3000, 8000), (800, 2000), (2, 4), 2048, 0.15, (20, 60),
                        "container_build"),
    "security": Role("security", True, (2000, 6000), (300, 900), (1, 2), 1024, 0.0, (5, 15), "security_scan"),
    "qa": Role("testing", False, (2000, 6000), (300, 1200), (2, 4), 1024, 0.15, (10, 30), "test_run"),
    "acceptance": Role("documentation", False, (1500, 4000), (400, 1000), (1, 2), 1024, 0.0, (5, 15), None),
    "deploy": Role("release", False, (1000, 3000), (150, 400), (1, 1), 512, 0.0, (3, 10), "iac_validation"),
}
EXECUTION_MINUTES = {"container_build": (3, 8), "security_scan": (2, 6), "test_run": (5, 15),
                     "iac_validation": (1, 3)}
TITLES = {
    "feature": ("Add SSO login", "Saved carts across devices", "Export invoices as CSV", "Gift card balance API",
                "Search suggestions", "Webhook retries with backoff", "Dark mode for the admin", "Refund flow v2",
                "Rate limits per tenant", "Multi-currency prices"),
    "bug": ("Rounding error in invoice totals", "Checkout times out on slow networks", "Duplicate order emails",
            "Crash when the cart is empty", "Timezone bug in reports", "Stale cache after price change",
            "Login loop on Safari", "Pagination skips items"),
    "chore": ("Upgrade the ORM", "Remove the legacy v1 endpoints", "Rotate the signing keys",
              "Split the monolith's billing module", "Speed up the CI cache"),
}
Kind = Literal["feature", "bug", "chore", "spike"]


@dataclass(frozen=True, slots=True)
class CallSpec:
    prompt_tokens: int
    output_tokens: int
    max_tokens: int
    retry: bool  # retries the call before it (X-Spendgate-Retry-Of)


@dataclass(frozen=True, slots=True)
class Handoff:
    decision: Literal["approved", "rejected"]
    overridden: bool  # a human overrode the agent's recommendation


@dataclass(frozen=True, slots=True)
class Visit:
    """One stay of an issue at a station: the agent's calls, its session, compute work and outcome.

    A `loop` visit keeps calling until a budget refuses it (`calls` is only its bound); `expected_calls` is
    what pacing counts on."""

    station: str
    agent: str
    heavy: bool
    calls: tuple[CallSpec, ...]
    outcome: Literal["passed", "rework"]
    session_ms: int
    execution: tuple[str, int] | None  # (kind, duration_ms)
    handoff: Handoff | None
    loop: Literal["runaway", "spike"] | None
    expected_calls: int

    @property
    def in_run(self) -> bool:
        """Research happens before an issue's pipeline run exists; every later station is part of it."""
        return self.station != "research"


@dataclass(frozen=True, slots=True)
class Issue:
    seq: int
    project: Project
    kind: Kind
    title: str
    visits: tuple[Visit, ...]
    trigger: str  # what started its pipeline run
    incident: bool  # its deployment causes an incident, resolved by a rollback

    @property
    def has_run(self) -> bool:
        return any(v.in_run for v in self.visits)

    @property
    def expected_calls(self) -> int:
        return sum(v.expected_calls for v in self.visits)


@dataclass(frozen=True, slots=True)
class Plan:
    seed: int
    issues: tuple[Issue, ...]

    @property
    def expected_calls(self) -> int:
        return sum(i.expected_calls for i in self.issues)


def build_plan(seed: int, issues: int) -> Plan:
    """`issues` issues (at least 3): regular ones, one whose run loops until the per-run cap stops it (a quarter
    of the way in) and a research spike that runs into the approval budget (two fifths of the way in, so later
    issues' research is held too)."""
    rng = random.Random(seed)
    n = max(issues, 3)
    runaway, spike = n // 4, (n * 2) // 5
    if spike == runaway:
        spike += 1
    others = [s for s in range(n) if s not in (runaway, spike)]
    incident = others[min(1, len(others) - 1)]  # early, so the incident stays open for most of the demo
    return Plan(seed, tuple(
        spike_issue(rng, seq) if seq == spike else regular_issue(rng, seq, runaway=seq == runaway,
                                                                 incident=seq == incident)
        for seq in range(n)))


def regular_issue(rng: random.Random, seq: int, *, runaway: bool = False, incident: bool = False) -> Issue:
    """A feature, bug or chore: research (features, some others), development, security (not every chore),
    qa, acceptance with a human handoff, deploy; sometimes sent back once for rework."""
    kind: Kind = rng.choices(("feature", "bug", "chore"), (5, 4, 2))[0]
    project = rng.choices(PROJECTS, [p.weight for p in PROJECTS])[0]
    title = rng.choice(TITLES[kind])
    rework = rng.choices((None, "qa", "security", "acceptance"), (68, 20, 6, 6))[0]
    visits: list[Visit] = []
    if kind == "feature" or rng.random() < 0.3:
        visits.append(visit(rng, "research"))
    visits.append(runaway_visit(rng) if runaway else visit(rng, "development"))
    if kind != "chore" or rng.random() < 0.5 or rework == "security":
        visits.append(visit(rng, "security", rework=rework == "security"))
        if rework == "security":
            visits += [visit(rng, "development"), visit(rng, "security")]
    visits.append(visit(rng, "qa", rework=rework == "qa"))
    if rework == "qa":
        visits += [visit(rng, "development"), visit(rng, "qa")]
    visits.append(visit(rng, "acceptance", rework=rework == "acceptance"))
    if rework == "acceptance":
        visits += [visit(rng, "development"), visit(rng, "acceptance")]
    visits.append(visit(rng, "deploy"))
    trigger = rng.choices(("push", "pull_request", "schedule"), (5, 4, 1))[0]
    return Issue(seq, project, kind, title, tuple(visits), trigger, incident)


def spike_issue(rng: random.Random, seq: int) -> Issue:
    """A research spike: reads large documents until the research station's approval budget holds it."""
    role = ROLES["research"]
    calls = tuple(CallSpec(rng.randint(*SPIKE_PROMPT), rng.randint(*role.output), role.max_tokens, retry=False)
                  for _ in range(SPIKE_BOUND))
    research = Visit("research", role.agent, role.heavy, calls, "passed", _session_ms(rng, (40, 90)), None, None,
                     "spike", SPIKE_EXPECTED)
    return Issue(seq, PROJECTS[0], "spike", "Spike: evaluate vector databases for search", (research,), "manual",
                 incident=False)


def visit(rng: random.Random, station: str, *, rework: bool = False) -> Visit:
    role = ROLES[station]
    calls: list[CallSpec] = []
    for _ in range(rng.randint(*role.calls)):
        spec = CallSpec(rng.randint(*role.prompt), rng.randint(*role.output), role.max_tokens, retry=False)
        calls.append(spec)
        if rng.random() < role.retry_rate:
            calls.append(CallSpec(spec.prompt_tokens + rng.randint(200, 800), rng.randint(*role.output),
                                  role.max_tokens, retry=True))
    execution = None
    if role.execution is not None:
        execution = (role.execution, _session_ms(rng, EXECUTION_MINUTES[role.execution]))
    handoff = None
    if station == "acceptance":
        handoff = Handoff("rejected" if rework else "approved", overridden=rng.random() < 0.1)
    return Visit(station, role.agent, role.heavy, tuple(calls), "rework" if rework else "passed",
                 _session_ms(rng, role.session_min), execution, handoff, None, len(calls))


def runaway_visit(rng: random.Random) -> Visit:
    """Development stuck in a fix-and-retest loop: every attempt retries the last one with a longer test log."""
    role = ROLES["development"]
    calls = tuple(CallSpec(RUNAWAY_START + RUNAWAY_STEP * k, rng.randint(*role.output), role.max_tokens,
                           retry=k > 0) for k in range(RUNAWAY_BOUND))
    return Visit("development", role.agent, role.heavy, calls, "passed", _session_ms(rng, (60, 120)),
                 ("container_build", _session_ms(rng, EXECUTION_MINUTES["container_build"])), None, "runaway",
                 RUNAWAY_EXPECTED)


def _session_ms(rng: random.Random, minutes: tuple[int, int]) -> int:
    return rng.randint(*minutes) * MINUTE_MS + rng.randint(0, MINUTE_MS - 1)
