"""`spendgate demo` against a real spendgate started from a copy of config.yaml (its mock models, demo key and
budgets, a SQLite store in tmp_path), checked only through the public APIs; and `--backfill`, written into
that store while the proxy runs, read back through the metrics API."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from proxy.app import load_config
from proxy.cli import main
from proxy.demo.command import DEFAULT_SEED
from proxy.demo.factory import STATIONS, build_plan
from proxy.demo.history import issues_on
from tests.fakes.servers import free_port
from tests.harness import Proxy

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
DEMO_KEY = "sk-spendgate-demo"
SEED, ISSUES = 5, 4  # a small factory whose plan has reworks and retries besides the runaway and the spike
RATE_NANO_PER_HOUR = 80_000_000  # config.yaml's compute_hourly_rate_usd, 0.08
EVENT_TYPES = {"issue.created", "issue.completed", "station.entered", "station.completed", "handoff.requested",
               "handoff.decided", "session.completed", "execution", "pipeline.run", "deployment",
               "incident.opened", "incident.resolved"}


@pytest.fixture
def demo_config(tmp_path: Path) -> Path:
    """A copy of the repository's config.yaml with its store in tmp_path."""
    text = (ROOT / "config.yaml").read_text(encoding="utf-8")
    assert "sqlite+aiosqlite:///spendgate.db" in text
    path = tmp_path / "config.yaml"
    path.write_text(text.replace("sqlite+aiosqlite:///spendgate.db", f"sqlite+aiosqlite:///{tmp_path / 'sg.db'}"))
    return path


@pytest.fixture
def demo_proxy(demo_config: Path) -> Iterator[Proxy]:
    """spendgate serving that copy of config.yaml."""
    settings, _ = load_config(demo_config)
    with Proxy(settings, config_path=demo_config) as proxy:
        yield proxy


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if captured.out.strip() else captured.err)


def pages(proxy: Proxy, path: str, key: str, **params: Any) -> list[dict[str, Any]]:
    """Every item of a cursor-paged list endpoint (`{key: [...], "next_cursor"}`)."""
    items: list[dict[str, Any]] = []
    cursor = None
    with proxy.client(DEMO_KEY) as c:
        while True:
            r = c.get(path, params={**params, **({"cursor": cursor} if cursor else {})})
            assert r.status_code == 200, r.text
            items += r.json()[key]
            cursor = r.json()["next_cursor"]
            if not cursor:
                return items


def stored_calls(proxy: Proxy, expected: int) -> list[dict[str, Any]]:
    """The calls, once the batch writer has stored all `expected` of them."""
    for _ in range(100):
        calls = pages(proxy, "/api/calls", "calls", limit=1000)
        if len(calls) >= expected:
            return calls
    raise AssertionError(f"{len(calls)} of {expected} calls stored")


def test_the_demo_drives_a_factory_through_the_proxy(demo_proxy: Proxy,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    proxy = demo_proxy
    code, summary = run_cli(capsys, "demo", "--url", proxy.url, "--key", DEMO_KEY, "--fast",
                            "--issues", str(ISSUES), "--seed", str(SEED), "--json")
    assert code == 0, summary
    calls = stored_calls(proxy, summary["calls"]["total"])
    assert len(calls) == summary["calls"]["total"] and summary["calls"]["failed"] == 0

    # The summary's spend is the metered cost of the calls, to the nano-dollar.
    assert sum(c["cost_nano"] for c in calls) == Decimal(summary["spend_usd"]) * 10**9 > 0
    answered = [c for c in calls if c["status"] == "ok"]
    assert len(answered) == summary["calls"]["answered"]
    assert {c["model"] for c in answered} == {"mock", "mock-claude"}
    assert all(c["project"] and c["agent"] and c["station"] and c["issue"] for c in answered)
    assert all(c["run"] for c in answered if c["station"] != "research")
    assert {c["station"] for c in answered} == set(STATIONS)
    assert len({c["agent"] for c in answered}) == 6 and len({c["project"] for c in answered}) >= 2
    ids = {c["request_id"] for c in calls}
    retries = [c for c in answered if c["retry_of"]]
    assert retries and all(c["retry_of"] in ids for c in retries)

    # A per-run cap stopped one run; the research approval budget held the spike, and that approval is pending.
    refused = [c for c in calls if c["status"] == "refused"]
    assert {c["http_status"] for c in refused} == {402}
    assert summary["calls"]["refused"]["budget_exceeded"] == 1
    assert summary["calls"]["refused"]["approval_required"] >= 1
    capped = next(r for r in summary["refusals"] if r["code"] == "budget_exceeded")
    assert capped["budget"] == "per-run-ceiling" and capped["run"]
    held = next(r for r in summary["refusals"] if r["code"] == "approval_required")
    with proxy.client(DEMO_KEY) as client:
        approvals = client.get("/api/approvals", params={"status": "pending"}).json()["approvals"]
    assert [(a["id"], a["budget"]) for a in approvals] == [(held["approval_id"], "research-approval")]
    assert held["budget"] == "research-approval"

    # The lifecycle events tell the same story.
    events = pages(proxy, "/api/factory/events", "events", limit=500)
    assert len(events) == summary["events"]["accepted"] == summary["events"]["posted"] > 0
    assert {e["type"] for e in events} == EVENT_TYPES
    assert any(e["type"] == "station.completed" and e["outcome"] == "rework" for e in events)
    assert all(e["metered"] is True for e in events if e["type"] == "session.completed")
    runs = {e["run"]: e for e in events if e["type"] == "pipeline.run"}
    assert runs[capped["run"]]["status"] == "cancelled"
    assert sum(r["status"] == "success" for r in runs.values()) == summary["runs"]["success"] >= 1
    assert sum(e["type"] == "issue.completed" for e in events) == summary["issues"]["completed"]
    assert {e["issue"] for e in events} == {c["issue"] for c in calls}


def test_the_demo_paces_and_draws_a_progress_bar(demo_proxy: Proxy, capsys: pytest.CaptureFixture[str]) -> None:
    """Paced over 0.05 minutes (3 s), the plain-text summary and a line per tenth of progress on stderr."""
    code = main(["demo", "--url", demo_proxy.url, "--minutes", "0.05", "--issues", "3", "--seed", "2"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "[############################] 100%" in err and "0:0" in err.splitlines()[-1]
    assert "402 budget_exceeded: per-run-ceiling stopped run" in out
    assert f"{demo_proxy.url}/dashboard#key={DEMO_KEY}" in out
    assert "/approve" in out and "approval_required: research-approval" in out


def test_the_demo_says_what_is_wrong_when_it_cannot_start(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["demo", "--url", url, "--fast"]) == 1
    assert f"spendgate at {url} did not list its models" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["demo", "--backfill", "0d"])
    assert "expected a number of days" in capsys.readouterr().err


def test_backfill_writes_history_once_and_the_metrics_show_it(demo_proxy: Proxy, demo_config: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """Written while the proxy runs (it needs none); the proxy reads the history at once."""
    proxy, config = demo_proxy, str(demo_config)
    code, first = run_cli(capsys, "demo", "--backfill", "7d", "--config", config, "--json")
    assert code == 0, first
    assert first["calls"]["written"] > 0 and first["events"]["written"] > 0 and first["calls"]["skipped"] == 0
    code, second = run_cli(capsys, "demo", "--backfill", "7d", "--config", config, "--json")
    assert code == 0, second
    assert (second["calls"]["written"], second["events"]["written"]) == (0, 0)
    assert (second["calls"]["skipped"], second["events"]["skipped"]) == (first["calls"]["written"],
                                                                         first["events"]["written"])
    today = datetime.now(UTC).date()
    assert first["issues"] == sum(issues_on(today - timedelta(days=k), k, seed=DEFAULT_SEED, org="demo") for k in range(1, 8))

    # Per day, what was written: the calls' cost plus the compute leg of every session and execution.
    calls = stored_calls(proxy, first["calls"]["written"])
    assert len(calls) == first["calls"]["written"]
    assert sum(c["cost_nano"] for c in calls) == round(first["calls"]["cost_usd"] * 10**9)
    per_day: defaultdict[date, int] = defaultdict(int)
    for c in calls:
        per_day[datetime.fromisoformat(c["started_at"]).date()] += c["cost_nano"]
    events = pages(proxy, "/api/factory/events", "events", limit=500)
    assert len(events) == first["events"]["written"]
    for e in events:
        if e["type"] in ("session.completed", "execution"):
            per_day[datetime.fromisoformat(e["ts"]).date()] += math.ceil(e["durationMs"] * RATE_NANO_PER_HOUR
                                                                         / 3_600_000)
    assert min(per_day) == today - timedelta(days=7) and max(per_day) == today - timedelta(days=1)

    with proxy.client(DEMO_KEY) as client:
        r = client.get("/api/factory/metrics", params={"metricType": "cost", "timeRange": "7d"})
    assert r.status_code == 200, r.text
    trend = r.json()["metrics"]["costTrend"]
    assert [p["date"] for p in trend] == [(today - timedelta(days=k)).isoformat() for k in range(6, -1, -1)]
    assert [p["cost"] for p in trend] == [round(per_day.get(date.fromisoformat(p["date"]), 0) / 1e9, 6)
                                          for p in trend]
    assert trend[-1]["cost"] == 0.0 and all(p["cost"] > 0 for p in trend[:-1])


def test_the_same_seed_plans_the_same_factory() -> None:
    assert build_plan(SEED, 12) == build_plan(SEED, 12) != build_plan(SEED + 1, 12)
    loops = [v.loop for issue in build_plan(SEED, 12).issues for v in issue.visits if v.loop]
    assert sorted(loops) == ["runaway", "spike"]
