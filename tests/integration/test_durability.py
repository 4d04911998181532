"""A completed call survives anything: `kill -9` under load (journal replayed idempotently at the next start)
and SIGTERM (in-flight calls finish and are recorded, new ones get 503, the writer flushes before exit).

The proxy runs as `spendgate serve` in a subprocess, on SQLite and on a fresh PostgreSQL database, with the
memory ledger and (on PostgreSQL) the Redis ledger on a private redis-server; clients are the openai SDK in
threads, and every completed call's cost is checked to the nano-dollar.
"""

from __future__ import annotations

import asyncio
import random
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from sqlalchemy import text

from proxy.app import load_config
from proxy.reconcile import reconcile_settings
from proxy.store.config import StoreConfig
from proxy.store.db import Store
from tests.fakes.proxy_process import ProxyProcess, stored_calls
from tests.fakes.upstream import FakeUpstream
from tests.fakes.workers import Workers
from tests.harness import ADMIN, expected_nano
from tests.redis_helpers import PrivateRedis

pytestmark = pytest.mark.integration
BUDGET = {"name": "acme-day", "scope": {"org": "acme"}, "window": "day", "limit_usd": 1000}
# Redis keeps the reservations of calls a kill cut in flight until they expire: a short TTL lets the test see
# them go (live streams renew theirs every TTL / 3, so none of the load's calls outlives its reservation).
REDIS_RESERVATION_TTL_S = 2


@pytest.fixture
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """`memory://`, or (param "redis") the url of a private redis-server stopped after the test."""
    if getattr(request, "param", "memory") == "memory":
        yield "memory://"
        return
    with PrivateRedis(tmp_path) as server:
        yield server.url


def ledger_section(ledger_url: str) -> dict[str, object]:
    if ledger_url == "memory://":
        return {"url": ledger_url}
    return {"url": ledger_url, "reservation_ttl_s": REDIS_RESERVATION_TTL_S}


@dataclass(frozen=True, slots=True)
class Done:
    """A call whose response reached the client whole."""

    request_id: str
    input_tokens: int
    output_tokens: int
    stream: bool


class Load(Workers):
    """Client threads calling the proxy through the openai SDK until stopped; keeps what completed."""

    def __init__(self, url: str, threads: int, *, slow: bool) -> None:
        self.url, self.slow = url, slow
        self.done: list[Done] = []
        self.failed = 0
        self._lock = threading.Lock()
        super().__init__(threads)

    def work(self, seed: int) -> None:
        rng = random.Random(seed)
        client = openai.OpenAI(base_url=self.url + "/v1", api_key=ADMIN, max_retries=0, timeout=20)
        while not self.stopped:
            tokens_in, tokens_out = rng.randint(5, 400), rng.randint(1, 60)
            model = f"fake-in{tokens_in}-out{tokens_out}"
            stream = rng.random() < 0.5
            if self.slow:  # calls stay in flight a while, so the kill finds many half done
                model += f"-chunks{rng.randint(2, 8)}-gap20" if stream else f"-slow{rng.randint(10, 80)}"
            try:
                done = (self._stream if stream else self._whole)(client, model, tokens_in, tokens_out)
            except (openai.APIError, httpx.HTTPError):
                with self._lock:
                    self.failed += 1
                continue
            with self._lock:
                self.done.append(done)
        client.close()

    @staticmethod
    def _whole(client: openai.OpenAI, model: str, tokens_in: int, tokens_out: int) -> Done:
        raw = client.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": "Count the tests."}])
        completion = raw.parse()
        assert completion.usage is not None and completion.usage.prompt_tokens == tokens_in
        return Done(raw.headers["x-spendgate-request-id"], tokens_in, tokens_out, False)

    @staticmethod
    def _stream(client: openai.OpenAI, model: str, tokens_in: int, tokens_out: int) -> Done:
        usage = None
        with client.chat.completions.with_streaming_response.create(
                model=model, stream=True, stream_options={"include_usage": True},
                messages=[{"role": "user", "content": "Count the tests."}]) as response:
            request_id = response.headers["x-spendgate-request-id"]
            for chunk in response.parse():
                usage = chunk.usage or usage
        # The SDK stops at [DONE]; a cut stream raises instead. The usage chunk comes just before [DONE].
        assert usage is not None and usage.completion_tokens == tokens_out
        return Done(request_id, tokens_in, tokens_out, True)


def budget_state(url: str, timeout: float = 10.0) -> tuple[int, int]:
    """(spent, reserved) nano-USD of the acme-day counter, once no reservation is left open (reservations
    of calls killed in flight expire after the Redis ledger's TTL; a memory ledger starts without any)."""
    deadline = time.monotonic() + timeout
    with httpx.Client(headers={"authorization": f"Bearer {ADMIN}"}) as client:
        while True:
            budgets = client.get(url + "/api/budgets").json()["budgets"]
            (entry,) = [b for b in budgets if b["name"] == BUDGET["name"]]
            spent, reserved = round(entry["spent_usd"] * 1e9), round(entry["reserved_usd"] * 1e9)
            if reserved == 0 or time.monotonic() > deadline:
                return spent, reserved
            time.sleep(0.1)


async def store_totals(store_url: str) -> tuple[int, int, int, int]:
    """(usage rows, their cost, calls and cost in the hourly rollup): a replayed row counted twice in the
    rollup would make the two disagree."""
    store = await Store.open(StoreConfig(url=store_url))
    try:
        async with store.engine.connect() as conn:
            rows, cost = (await conn.execute(text(
                "SELECT count(*), coalesce(sum(cost_nano), 0) FROM usage WHERE status <> 'refused'"))).one()
            calls, rolled = (await conn.execute(text(
                "SELECT coalesce(sum(calls), 0), coalesce(sum(cost_nano), 0) FROM metric_buckets "
                "WHERE grain = 'hour'"))).one()
    finally:
        await store.close()
    return int(rows), int(cost), int(calls), int(rolled)


def check_completed(done: list[Done], stored: dict[str, dict[str, Any]]) -> None:
    missing = [d.request_id for d in done if d.request_id not in stored]
    assert not missing, f"{len(missing)} of {len(done)} completed calls lost, e.g. {missing[:3]}"
    for d in done:
        row = stored[d.request_id]
        assert row["status"] == "ok" and row["usage_source"] == "provider"
        assert (row["input_tokens"], row["output_tokens"]) == (d.input_tokens, d.output_tokens)
        assert row["cost_nano"] == expected_nano("gpt-4o-mini", input=d.input_tokens, output=d.output_tokens)


@pytest.mark.parametrize("store_url, ledger_url", [("sqlite", "memory"), ("postgresql", "memory"),
                                                   ("postgresql", "redis")], indirect=True)
def test_kill_9_under_load_loses_no_completed_call(upstream: FakeUpstream, tmp_path: Path, closed_port: int,
                                                   store_url: str, ledger_url: str) -> None:
    # Rows reach SQL only every 1.5 s, so each kill finds most completed calls in the journal alone.
    proxy = ProxyProcess(upstream, tmp_path, closed_port, store_url, flush_interval_ms=1500, budgets=[BUDGET],
                         ledger=ledger_section(ledger_url))
    done: list[Done] = []
    try:
        for _ in range(2):  # the second kill lands on a process that replayed the first one's journal
            proxy.start()
            with Load(proxy.url, threads=12, slow=True) as load:
                time.sleep(2.0)
                assert len(load.done) > 20, f"only {len(load.done)} calls completed before the kill"
                proxy.signal(signal.SIGKILL)
                proxy.wait()
            done += load.done
            assert load.failed > 0  # calls were cut in flight
            assert proxy.journal_records() > 0
        proxy.start()  # replays before it answers /readyz
        assert "journal replay" in proxy.log.read_text()
        assert proxy.journal_records() == 0  # replayed records are in SQL, and the journal forgot them
        stored = stored_calls(proxy.url)
        check_completed(done, stored)
        rows, cost, rolled_calls, rolled_cost = asyncio.run(store_totals(store_url))
        assert rows == len(stored) and (rolled_calls, rolled_cost) == (rows, cost)  # nothing counted twice
        assert cost == sum(r["cost_nano"] for r in stored.values())
        spent, reserved = budget_state(proxy.url)
        assert reserved == 0  # the killed calls' reservations are gone (rebuilt memory ledger, or expired)
        if ledger_url == "memory://":
            assert spent == cost  # the memory ledger was rebuilt from the store
        else:
            # Redis outlives the proxy: its counter is kept, not rebuilt. A call journaled but killed before its
            # settle is in the store and not (yet) in the ledger; `spendgate reconcile` repairs exactly that.
            assert spent <= cost
            report = asyncio.run(reconcile_settings(load_config(proxy.config)[0], dry_run=False, lag_s=0.2))
            assert report.exit_code == 0, [(c.outcome, c.spent_drift_nano) for c in report.counters]
            assert budget_state(proxy.url) == (cost, 0)
    finally:
        proxy.stop()


def test_sigterm_drains_in_flight_calls_and_refuses_new_ones(upstream: FakeUpstream, tmp_path: Path,
                                                             closed_port: int, store_url: str) -> None:
    # A long flush interval: the rows must reach SQL because the drain flushes them, not by chance.
    proxy = ProxyProcess(upstream, tmp_path, closed_port, store_url, flush_interval_ms=60_000, budgets=[BUDGET])
    proxy.start()
    try:
        upstream.clear()
        client = openai.OpenAI(base_url=proxy.url + "/v1", api_key=ADMIN, max_retries=0, timeout=30)
        # (model, stream, input tokens, output tokens): every call takes 2.5 s or more.
        calls = [(f"fake-in{30 + i}-out{8 + i}-slow2500", False, 30 + i, 8 + i) for i in range(3)]
        calls += [(f"fake-in{50 + i}-out{12 + i}-chunks6-gap300", True, 50 + i, 12 + i) for i in range(3)]
        results: list[Done | BaseException] = []

        def one(model: str, stream: bool, tokens_in: int, tokens_out: int) -> None:
            try:
                results.append((Load._stream if stream else Load._whole)(client, model, tokens_in, tokens_out))
            except BaseException as exc:  # reported by the assertion below
                results.append(exc)

        threads = [threading.Thread(target=one, args=call) for call in calls]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10
        while len(upstream.requests) < len(calls):  # every call has reached the provider
            assert time.monotonic() < deadline
            time.sleep(0.02)
        proxy.signal(signal.SIGTERM)
        time.sleep(0.2)
        ready = httpx.get(proxy.url + "/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["accepting"] is False
        with pytest.raises(openai.APIStatusError) as refused:
            client.chat.completions.create(model="fake-in9-out2", messages=[{"role": "user", "content": "hi"}])
        assert refused.value.status_code == 503 and refused.value.code == "service_unavailable"
        for t in threads:
            t.join(30)
        assert proxy.wait() == 0
        completed = [r for r in results if isinstance(r, Done)]
        assert len(completed) == len(calls), [r for r in results if not isinstance(r, Done)]
        assert proxy.journal_records() == 0  # flushed to SQL before exit, so nothing is left to replay
        proxy.start()
        assert "journal replay" not in proxy.log.read_text()
        stored = stored_calls(proxy.url)
        check_completed(completed, stored)
        assert len(stored) == len(calls)  # the call refused during the drain left no row
        assert budget_state(proxy.url) == (sum(r["cost_nano"] for r in stored.values()), 0)
    finally:
        proxy.stop()


def test_sigterm_with_a_drain_delay_serves_new_calls_until_the_balancer_noticed(
        upstream: FakeUpstream, tmp_path: Path, closed_port: int) -> None:
    """server.drain_delay_s: /readyz says not ready at once, but calls that still arrive in the delay (the load
    balancer has not noticed yet) are served, not refused; after it, new calls get 503 and the process ends."""
    proxy = ProxyProcess(upstream, tmp_path, closed_port, f"sqlite+aiosqlite:///{tmp_path / 'delay.db'}",
                         flush_interval_ms=50)
    data = yaml.safe_load(proxy.config.read_text())
    data["server"]["drain_delay_s"] = 1.5
    proxy.config.write_text(yaml.safe_dump(data))
    proxy.start()
    try:
        body = {"model": "fake-in9-out2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
        auth = {"authorization": f"Bearer {ADMIN}"}
        proxy.signal(signal.SIGTERM)
        signalled = time.monotonic()
        time.sleep(0.2)
        ready = httpx.get(proxy.url + "/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["accepting"] is False
        served = httpx.post(proxy.url + "/v1/chat/completions", json=body, headers=auth, timeout=10)
        assert served.status_code == 200 and time.monotonic() - signalled < 1.5
        time.sleep(max(0.0, 1.8 - (time.monotonic() - signalled)))
        try:
            late = httpx.post(proxy.url + "/v1/chat/completions", json=body, headers=auth, timeout=10)
            assert late.status_code == 503  # (or the socket is already closed, below)
        except httpx.ConnectError:
            pass
        assert proxy.wait() == 0
        proxy.start()
        assert len(stored_calls(proxy.url)) == 1  # the call served in the delay was recorded
    finally:
        proxy.stop()
