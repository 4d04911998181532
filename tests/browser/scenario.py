"""A populated factory for the dashboard's browser tests: five months of call history written to the store
before the proxy starts (so the budget counters are rebuilt from it), then live calls through the fake
upstream, lifecycle events, and one call held by an `approve` budget."""

from __future__ import annotations

import asyncio
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from proxy.store.config import StoreConfig
from proxy.store.db import Store
from proxy.store.records import CallRecord
from tests.fakes.upstream import FakeUpstream
from tests.harness import ADMIN, Proxy

PROJECTS = ("web", "api", "mobile")
AGENTS = (("implementation", "development"), ("research", "research"), ("testing", "qa"),
          ("security", "security"), ("release", "deploy"), ("documentation", "development"))
# provider, model, USD per 1M input / output tokens (what the history rows are priced at)
MODELS = (("openai", "gpt-4.1", 2.0, 8.0), ("anthropic", "claude-sonnet-4-5", 3.0, 15.0),
          ("google", "gemini-2.5-pro", 1.25, 10.0), ("deepseek", "deepseek-chat", 0.28, 0.42))
HISTORY_DAYS = 150
GATED_STATION = "gated"  # only the held call uses it: the `approve` budget below scopes it


def models(up: FakeUpstream) -> list[dict[str, Any]]:
    """Model routes with real names (the price table reads like a factory's), all served by the fake upstream:
    it takes its behaviour from the name's `in<N>` / `out<N>` parts and ignores the rest."""
    openai = {"provider": "openai", "api_base": up.openai_base, "api_key": "env:SG_TEST_OPENAI_KEY"}
    anthropic = {"provider": "anthropic", "api_base": up.url, "api_key": "env:SG_TEST_ANTHROPIC_KEY"}
    return [
        {"name": "gpt-4.1-mini*", "price_as": "gpt-4.1-mini", **openai},
        {"name": "gpt-4.1*", "price_as": "gpt-4.1", **openai},
        {"name": "claude-sonnet-4-5*", "price_as": "claude-sonnet-4-5", **anthropic},
        {"name": "claude-haiku-4-5*", "price_as": "claude-haiku-4-5", **anthropic},
        {"name": "deepseek-chat*", "price_as": "deepseek-chat", **openai, "provider": "deepseek"},
        {"name": "coder", "upstream_model": "gpt-4.1-in800-out120", "price_as": "gpt-4.1", **openai},
        {"name": "coder", "upstream_model": "deepseek-chat-in800-out120", "price_as": "deepseek-chat", **openai,
         "provider": "deepseek"},  # the fallback when the first answers 429 / 5xx
    ]


def budgets(month_spend_usd: float) -> list[dict[str, Any]]:
    """The org's month cap at ~62 % of what the history spent this month, and a budget of each kind."""
    return [
        {"name": "acme-monthly", "scope": {"org": "acme"}, "window": "month",
         "limit_usd": round(max(month_spend_usd, 1.0) / 0.62, 2), "on_exceed": "block"},
        {"name": "agent-daily", "scope": {"org": "acme", "agent": "*"}, "window": "day", "limit_usd": 4,
         "on_exceed": "warn"},
        {"name": "per-run", "scope": {"org": "acme", "run": "*"}, "window": "run", "limit_usd": 25,
         "on_exceed": "warn"},
        {"name": "gate", "scope": {"org": "acme", "station": GATED_STATION}, "window": "day",
         "limit_usd": 0.0001, "on_exceed": "approve"},
    ]


@dataclass
class History:
    records: list[CallRecord]
    runs: dict[str, datetime]  # run id -> its first call

    def month_spend_usd(self, now: datetime) -> float:
        first = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        return sum(r.cost_nano for r in self.records if r.started_at >= first and r.status != "refused") / 1e9


def history(now: datetime, seed: int = 7) -> History:
    """~8 calls a day (fewer further back), three projects, six agent types, four providers; runs of a few
    calls each, issue tags, a retry now and then (`retry_of` the failed attempt before it)."""
    rng = random.Random(seed)
    records: list[CallRecord] = []
    runs: dict[str, datetime] = {}
    for back in range(HISTORY_DAYS, -1, -1):
        day = (now - timedelta(days=back)).replace(hour=0, minute=0, second=0, microsecond=0)
        busy = 10 if back < 30 else 5
        for k in range(rng.randint(busy - 3, busy + 3)):
            started = day + timedelta(seconds=rng.randint(0, 86_399))
            if started >= now - timedelta(minutes=5):
                continue
            project = rng.choice(PROJECTS)
            agent, station = rng.choice(AGENTS)
            provider, model, price_in, price_out = rng.choices(MODELS, weights=(5, 4, 2, 1))[0]
            inp, out = rng.randint(2_000, 60_000), rng.randint(300, 8_000)
            run = f"run-{started:%m%d}-{project}-{k % 3}"
            runs.setdefault(run, started)
            failed = rng.random() < 0.06
            record = CallRecord(
                request_id=f"sg-hist-{back:03d}-{k:02d}", started_at=started,
                ended_at=started + timedelta(milliseconds=rng.randint(800, 40_000)),
                status="error" if failed else "ok", http_status=502 if failed else 200, org="acme",
                endpoint="/v1/chat/completions", provider=provider, model=model, upstream_model=model,
                project=project, agent=agent, station=station, run=run,
                issue=f"{project.upper()}-{100 + rng.randint(0, 40)}", key_name="admin",
                input_tokens=inp, output_tokens=out,
                cost_nano=0 if failed else round((inp * price_in + out * price_out) * 1000))
            records.append(record)
            if failed:  # the retry that followed
                records.append(CallRecord(**{**_fields(record), "request_id": record.request_id + "-retry",
                                             "started_at": record.ended_at,
                                             "ended_at": record.ended_at + timedelta(seconds=5),
                                             "status": "ok", "http_status": 200, "retry_of": record.request_id,
                                             "cost_nano": round((inp * price_in + out * price_out) * 1000)}))
    return History(records, runs)


def _fields(record: CallRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in CallRecord.__dataclass_fields__}


def write_history(store_url: str, data: History) -> None:
    """Insert the history through the store's own insert (rollups included). On a thread of its own: the
    Playwright sync API keeps an event loop running on the test's thread."""
    async def run() -> None:
        store = await Store.open(StoreConfig(url=store_url))
        try:
            await store.insert_new_calls(data.records)
        finally:
            await store.close()
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, run()).result()


def live_calls(proxy: Proxy) -> list[str]:
    """Calls through the fake upstream now, as agents make them (OpenAI and Anthropic wire formats)."""
    ids = []
    with httpx.Client(timeout=30) as client:
        for i, (agent, station) in enumerate(AGENTS[:4]):
            r = client.post(proxy.base + "/chat/completions", headers={
                "authorization": f"Bearer {ADMIN}", "x-spendgate-project": "web", "x-spendgate-agent": agent,
                "x-spendgate-station": station, "x-spendgate-run": "run-live", "x-spendgate-issue": "WEB-142"},
                json={"model": f"{'gpt-4.1' if i % 2 else 'gpt-4.1-mini'}-in{1200 + i * 300}-out{200 + i * 40}",
                      "messages": [{"role": "user", "content": "Implement the login form."}]})
            assert r.status_code == 200, r.text
            ids.append(r.headers["x-spendgate-request-id"])
        r = client.post(proxy.url + "/v1/messages", headers={
            "x-api-key": ADMIN, "anthropic-version": "2023-06-01", "x-spendgate-project": "api",
            "x-spendgate-agent": "research", "x-spendgate-station": "research", "x-spendgate-run": "run-live"},
            json={"model": "claude-sonnet-4-5-in900-out150", "max_tokens": 400,
                  "messages": [{"role": "user", "content": "Survey the options."}]})
        assert r.status_code == 200, r.text
        ids.append(r.headers["x-spendgate-request-id"])
    for request_id in ids:
        proxy.call_row(request_id)  # stored, so every API reads it
    return ids


def events(now: datetime, runs: dict[str, datetime]) -> list[dict[str, Any]]:
    """Pipeline runs, issue lifecycle with a rework, metered sessions (compute leg) and test runs."""
    out: list[dict[str, Any]] = []
    recent = sorted((r for r, t in runs.items() if now - t < timedelta(days=20)), key=runs.__getitem__)
    for i, run in enumerate(recent):
        out.append({"id": f"pipe-{run}", "type": "pipeline.run", "ts": runs[run].isoformat(), "run": run,
                    "project": run.split("-")[2], "name": "factory", "status": "failed" if i % 9 == 4 else "success",
                    "durationMs": 900_000, "trigger": ("push", "schedule", "manual")[i % 3], "branch": "main",
                    "commit": f"{i:07x}"})
    for n in range(12):
        issue, ts = f"WEB-{120 + n}", now - timedelta(days=n + 1, hours=3)
        out += [
            {"id": f"ic-{issue}", "type": "issue.created", "ts": (ts - timedelta(days=1)).isoformat(),
             "issue": issue, "project": "web", "title": f"Work item {n}"},
            {"id": f"se-{issue}", "type": "station.entered", "ts": (ts - timedelta(hours=5)).isoformat(),
             "issue": issue, "project": "web", "station": "development"},
            {"id": f"sc-{issue}", "type": "station.completed", "ts": (ts - timedelta(hours=2)).isoformat(),
             "issue": issue, "project": "web", "station": "development",
             "outcome": "rework" if n % 4 == 0 else "passed"},
            {"id": f"ss-{issue}", "type": "session.completed", "ts": (ts - timedelta(hours=1)).isoformat(),
             "issue": issue, "project": "web", "station": "development", "agent": "implementation",
             "costUsd": 0.0, "inputTokens": 0, "outputTokens": 0, "provider": "openai", "model": "gpt-4.1",
             "durationMs": 2_700_000},
            {"id": f"tr-{issue}", "type": "execution", "ts": (ts - timedelta(minutes=30)).isoformat(),
             "issue": issue, "project": "web", "station": "qa", "kind": "test_run", "durationMs": 600_000},
            {"id": f"id-{issue}", "type": "issue.completed", "ts": ts.isoformat(), "issue": issue, "project": "web"},
        ]
    return out


def post_events(proxy: Proxy, batch: list[dict[str, Any]]) -> None:
    with proxy.client(ADMIN) as c:
        for i in range(0, len(batch), 500):
            r = c.post("/api/factory/events", json={"events": batch[i: i + 500]})
            assert r.status_code == 200, r.text


def held_call(proxy: Proxy) -> tuple[dict[str, Any], str]:
    """A call over the `approve` budget: (its body, the approval id of the 402 approval_required)."""
    body = {"model": "gpt-4.1-mini-out5", "max_tokens": 1000, "messages": [{"role": "user", "content": "Scan the repo."}]}
    r = httpx.post(proxy.base + "/chat/completions", json=body, timeout=30, headers={
        "authorization": f"Bearer {ADMIN}", "x-spendgate-station": GATED_STATION, "x-spendgate-agent": "security",
        "x-spendgate-project": "web"})
    assert r.status_code == 402 and r.json()["error"]["code"] == "approval_required", r.text
    return body, r.json()["error"]["approval_id"]


def now_utc() -> datetime:
    return datetime.now(UTC)
