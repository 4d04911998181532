"""Redis (the shared budget ledger) down and back, through the real proxy: fail closed within a second, counters
rebuilt from the store before admission resumes (also after Redis restarted empty), a replica started during the
outage refuses rather than enforcing from memory, and settles that failed meanwhile are booked once it is back.
Every test runs its own redis-server (tests/redis_helpers.PrivateRedis), never the machine's."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import redis_helpers
from tests.fakes.upstream import FakeUpstream
from tests.harness import ADMIN, Proxy, make_settings
from tests.redis_helpers import PrivateRedis

pytestmark = [pytest.mark.integration, pytest.mark.redis]
MSGS = [{"role": "user", "content": "Summarise the design document in three bullet points."}]
AUTH = {"authorization": f"Bearer {ADMIN}"}
CAP = "cap:[('org', 'acme')]"
private_redis = redis_helpers.private_redis


def settings(upstream: FakeUpstream, tmp_path: Path, closed_port: int, redis: PrivateRedis,
             limit_usd: float = 1.0, **ledger: Any) -> Any:
    caps = [{"name": "cap", "scope": {"org": "acme"}, "window": "day", "limit_usd": limit_usd}]
    return make_settings(upstream, tmp_path, closed_port, budgets=caps, ledger={"url": redis.url, **ledger})


def post(proxy: Proxy, model: str = "fake-out20") -> httpx.Response:
    return httpx.post(proxy.base + "/chat/completions", json={"model": model, "messages": MSGS, "max_tokens": 20},
                      headers=AUTH, timeout=30)


def cap_of(proxy: Proxy) -> dict[str, Any]:
    r = httpx.get(proxy.url + "/api/budgets", headers=AUTH, timeout=10)
    assert r.status_code == 200, r.text
    return {f"{b['name']}:{sorted(b['scope'].items())}": b for b in r.json()["budgets"]}[CAP]


def store_total(proxy: Proxy, calls: int) -> int:
    """The store's spend once all `calls` rows have landed (the writer flushes every 200 ms)."""
    deadline = time.monotonic() + 10
    while True:
        rows = proxy.calls(limit=1000)
        if len(rows) >= calls or time.monotonic() > deadline:
            assert len(rows) == calls, rows
            return sum(r["cost_nano"] for r in rows)
        time.sleep(0.05)


def assert_counters_equal_store(proxy: Proxy, calls: int) -> None:
    """No reservation left open, and the counter holds exactly what the store holds (polled: a deferred
    settle is retried every 0.5 s)."""
    total = store_total(proxy, calls)
    deadline = time.monotonic() + 10
    while True:
        cap = cap_of(proxy)
        if (round(cap["spent_usd"] * 1e9) == total and cap["reserved_usd"] == 0) or time.monotonic() > deadline:
            assert cap["reserved_usd"] == 0
            assert round(cap["spent_usd"] * 1e9) == total > 0
            return
        time.sleep(0.1)


def readyz(proxy: Proxy) -> httpx.Response:
    return httpx.get(proxy.url + "/readyz", timeout=10)


def test_redis_down_fails_closed_within_a_second_and_resumes(upstream: FakeUpstream, tmp_path: Path,
                                                             closed_port: int, private_redis: PrivateRedis) -> None:
    with Proxy(settings(upstream, tmp_path, closed_port, private_redis)) as proxy:
        assert post(proxy).status_code == 200
        assert readyz(proxy).json()["checks"]["ledger"] is True
        private_redis.pause()  # hung: connections open, nothing answers
        try:
            started = time.monotonic()
            r = post(proxy)
            hung_s = time.monotonic() - started
            assert r.status_code == 503 and r.json()["error"]["code"] == "service_unavailable", r.text
            assert hung_s < 1.5, hung_s  # two tries of ledger.timeout_s (0.4 s), never a long stall
        finally:
            private_redis.resume()
        private_redis.stop()  # down: connection refused
        started = time.monotonic()
        r = post(proxy)
        assert r.status_code == 503 and time.monotonic() - started < 1.0, r.text
        ready = readyz(proxy)
        assert ready.status_code == 503 and ready.json()["checks"]["ledger"] is False
        assert all(row["status"] != "ok" or row["http_status"] == 200 for row in proxy.calls(limit=100))
        private_redis.start()  # back, empty: the counters are rebuilt from the store before the next admission
        assert post(proxy).status_code == 200
        assert readyz(proxy).status_code == 200
        assert_counters_equal_store(proxy, calls=2)  # the two 503s never reached the store: nothing to count


def test_redis_restarted_empty_rebuilds_before_admitting(upstream: FakeUpstream, tmp_path: Path,
                                                         closed_port: int, private_redis: PrivateRedis) -> None:
    """Without the rebuild a Redis that restarted empty would admit against counters of 0: the cap would
    reset to zero spend in the middle of its window."""
    probe = tmp_path / "probe"
    probe.mkdir()
    model = "fake-out20-in20"
    with Proxy(settings(upstream, probe, closed_port, private_redis)) as proxy:
        assert post(proxy, model).status_code == 200
        one_call = store_total(proxy, 1)
        estimate = httpx.post(proxy.url + "/api/estimate", headers=AUTH,
                              json={"model": model, "messages": MSGS, "max_tokens": 20}).json()
        worst = round(estimate["max_usd"] * 1e9)
    private_redis.stop()  # the probe's own store goes; so must its counter
    private_redis.start()
    # A cap that admits a fourth call's worst case only on top of at most two calls' spend (+ half of one):
    # three pass, then Redis forgets everything.
    limit = (2 * one_call + one_call // 2 + worst) / 1e9
    with Proxy(settings(upstream, tmp_path, closed_port, private_redis, limit_usd=limit)) as proxy:
        for _ in range(3):
            assert post(proxy, model).status_code == 200
        private_redis.stop()
        private_redis.start()
        r = post(proxy, model)
        assert r.status_code == 402, r.text  # decided on the rebuilt totals, not on zeros
        assert r.json()["error"]["budget"]["spent_usd"] * 1e9 == pytest.approx(3 * one_call, abs=1)
        assert_counters_equal_store(proxy, calls=4)  # three ok rows and one refused row (cost 0)


def test_replica_started_while_redis_is_down_refuses_until_it_is_back(
        upstream: FakeUpstream, tmp_path: Path, closed_port: int, private_redis: PrivateRedis) -> None:
    with Proxy(settings(upstream, tmp_path, closed_port, private_redis)) as proxy:
        for _ in range(2):
            assert post(proxy).status_code == 200
    private_redis.stop()
    # Starts (its lifespan does not fail), is not ready, and refuses: no enforcement from local memory.
    with Proxy(settings(upstream, tmp_path, closed_port, private_redis)) as proxy:
        ready = readyz(proxy)
        assert ready.status_code == 503 and ready.json()["checks"] == {"store": True, "accepting": True,
                                                                      "ledger": False}
        r = post(proxy)
        assert r.status_code == 503, r.text
        private_redis.start()  # empty: the first admission rebuilds from the store (the earlier run's spend)
        assert post(proxy).status_code == 200
        assert readyz(proxy).status_code == 200
        assert_counters_equal_store(proxy, calls=3)


def test_allow_mode_passes_unenforced_and_stays_ready(upstream: FakeUpstream, tmp_path: Path, closed_port: int,
                                                      private_redis: PrivateRedis) -> None:
    private_redis.stop()
    with Proxy(settings(upstream, tmp_path, closed_port, private_redis, on_unavailable="allow")) as proxy:
        ready = readyz(proxy)
        assert ready.status_code == 200 and ready.json()["checks"]["ledger"] is False
        r = post(proxy)
        assert r.status_code == 200
        assert proxy.call_row(r.headers["x-spendgate-request-id"])["enforcement"] == "bypassed"
        private_redis.start()
        r = post(proxy)
        assert r.status_code == 200
        assert proxy.call_row(r.headers["x-spendgate-request-id"])["enforcement"] is None
        assert_counters_equal_store(proxy, calls=2)  # the bypassed call is in the rebuilt counter too


def test_a_settle_that_failed_while_redis_hung_is_booked_once_it_answers(
        upstream: FakeUpstream, tmp_path: Path, closed_port: int, private_redis: PrivateRedis) -> None:
    with Proxy(settings(upstream, tmp_path, closed_port, private_redis)) as proxy:
        assert post(proxy).status_code == 200
        answers: list[httpx.Response] = []
        slow = threading.Thread(target=lambda: answers.append(post(proxy, "fake-out20-slow1200")))
        slow.start()
        time.sleep(0.6)  # admitted (reserved) by now; the provider answers while Redis hangs
        private_redis.pause()
        try:
            slow.join(timeout=20)
        finally:
            private_redis.resume()
        assert answers and answers[0].status_code == 200  # the call itself never fails on its settle
        assert_counters_equal_store(proxy, calls=2)  # the deferred settle was retried, once
        assert post(proxy).status_code == 200
        assert_counters_equal_store(proxy, calls=3)
