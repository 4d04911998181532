"""A completed call survives anything: `kill -9` under load (journal replayed idempotently at the next start)
and SIGTERM (in-flight calls finish and are recorded, new ones get 503, the writer flushes before exit).

The proxy runs as `spendgate serve` in a subprocess, on SQLite and on a fresh PostgreSQL database; clients
are the openai SDK in threads, and every completed call's cost is checked to the nano-dollar.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from sqlalchemy import text

from proxy.store.config import StoreConfig
from proxy.store.db import Store
from tests.fakes.servers import free_port
from tests.fakes.upstream import ANTHROPIC_KEY, OPENAI_KEY, FakeUpstream
from tests.harness import ADMIN, expected_nano, settings_data

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
BUDGET = {"name": "acme-day", "scope": {"org": "acme"}, "window": "day", "limit_usd": 1000}


class ProxyProcess:
    """`spendgate serve` in a subprocess on a fixed port, config and journal; start it again after a kill."""

    def __init__(self, upstream: FakeUpstream, tmp_path: Path, closed_port: int, store_url: str,
                 flush_interval_ms: int) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        data = settings_data(upstream, tmp_path, closed_port, store_url=store_url, budgets=[BUDGET])
        data["server"] = {"port": self.port, "log_level": "info"}
        data["store"]["flush_interval_ms"] = flush_interval_ms
        self.journal = Path(data["store"]["journal_path"])
        self.config = tmp_path / "spendgate.yaml"
        self.config.write_text(yaml.safe_dump(data))
        self.tmp_path = tmp_path
        self.runs = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.tmp_path / f"proxy-{self.runs}.log"

    def start(self) -> None:
        self.runs += 1
        env = {**os.environ, "SG_TEST_OPENAI_KEY": OPENAI_KEY, "SG_TEST_ANTHROPIC_KEY": ANTHROPIC_KEY}
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "proxy.cli", "serve", "--config", str(self.config)],
                                         cwd=ROOT, env=env, stdout=log, stderr=log)
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(self.url + "/readyz").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert self.proc.poll() is None and time.monotonic() < deadline, self.log.read_text()[-3000:]
            time.sleep(0.05)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def journal_records(self) -> int:
        """Records left in the journal's segment files (what the next start would replay)."""
        segments = self.journal.parent.glob(self.journal.name + ".*")
        return sum(p.read_bytes().count(b"\n") for p in segments if p.suffix != ".lock")


@dataclass(frozen=True, slots=True)
class Done:
    """A call whose response reached the client whole."""

    request_id: str
    input_tokens: int
    output_tokens: int
    stream: bool


class Load:
    """Client threads calling the proxy through the openai SDK until stopped; keeps what completed."""

    def __init__(self, url: str, threads: int, *, slow: bool) -> None:
        self.url, self.slow = url, slow
        self.done: list[Done] = []
        self.failed = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)

    def _run(self, seed: int) -> None:
        rng = random.Random(seed)
        client = openai.OpenAI(base_url=self.url + "/v1", api_key=ADMIN, max_retries=0, timeout=20)
        while not self._stop.is_set():
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


def stored_calls(url: str) -> dict[str, dict[str, Any]]:
    """Every call of org acme through GET /api/calls, paged; fails on a request id listed twice."""
    found: dict[str, dict[str, Any]] = {}
    cursor = None
    with httpx.Client(headers={"authorization": f"Bearer {ADMIN}"}, timeout=30) as client:
        while True:
            params: dict[str, Any] = {"limit": 1000} | ({"cursor": cursor} if cursor else {})
            page = client.get(url + "/api/calls", params=params).json()
            for row in page["calls"]:
                assert row["request_id"] not in found, f"{row['request_id']} listed twice"
                found[row["request_id"]] = row
            cursor = page["next_cursor"]
            if cursor is None:
                return found


def budget_spent_nano(url: str) -> int:
    with httpx.Client(headers={"authorization": f"Bearer {ADMIN}"}) as client:
        budgets = client.get(url + "/api/budgets").json()["budgets"]
    (entry,) = [b for b in budgets if b["name"] == BUDGET["name"]]
    assert entry["reserved_usd"] == 0
    return round(entry["spent_usd"] * 1e9)


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


def test_kill_9_under_load_loses_no_completed_call(upstream: FakeUpstream, tmp_path: Path, closed_port: int,
                                                   store_url: str) -> None:
    # Rows reach SQL only every 1.5 s, so each kill finds most completed calls in the journal alone.
    proxy = ProxyProcess(upstream, tmp_path, closed_port, store_url, flush_interval_ms=1500)
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
        assert budget_spent_nano(proxy.url) == cost  # the memory ledger was rebuilt from the store
    finally:
        proxy.stop()


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_sigterm_drains_in_flight_calls_and_refuses_new_ones(upstream: FakeUpstream, tmp_path: Path,
                                                             closed_port: int, store_url: str) -> None:
    # A long flush interval: the rows must reach SQL because the drain flushes them, not by chance.
    proxy = ProxyProcess(upstream, tmp_path, closed_port, store_url, flush_interval_ms=60_000)
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
    finally:
        proxy.stop()
