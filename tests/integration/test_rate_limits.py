"""Per-key rate limits through a real spendgate with the official SDKs: requests per minute (GCRA) and tokens
per minute (charged with the fake upstream's exact usage), 429 with Retry-After in each family's shape, shared
by replicas on one Redis, and what happens when that Redis is down."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
import redis

from proxy.auth import hash_key
from proxy.settings import Settings
from tests import redis_helpers
from tests.error_shapes import assert_anthropic_error, assert_openai_error, assert_seed_error
from tests.fakes.upstream import FakeUpstream
from tests.harness import ADMIN, KEYS, ROOT, Proxy, settings_data

pytestmark = pytest.mark.integration
redis_url = redis_helpers.redis_url
redis_prefix = redis_helpers.redis_prefix

LIMITED = "sk-test-rate-limited-0001"  # org acme, agent; limits set per test
MSGS = [{"role": "user", "content": "Summarise the sprint."}]


def settings(up: FakeUpstream, tmp_path: Path, closed_port: int, *, ledger: dict[str, Any] | None = None,
             server: dict[str, Any] | None = None, **limits: int) -> Settings:
    key = {"name": "limited", "key_sha256": hash_key(LIMITED), "org": "acme", "role": "agent", **limits}
    keys = [k for k in KEYS if k["name"] != "limited"] + [key]
    data = settings_data(up, tmp_path, closed_port, keys=keys,
                         server={"max_body_bytes": 200_000, "log_level": "warning", **(server or {})})
    if ledger is not None:
        data["ledger"] = ledger
    return Settings.model_validate(data)


def oai(proxy: Proxy, key: str = LIMITED) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.base, api_key=key, max_retries=0)


def chat(proxy: Proxy, model: str = "fake-in10-out5", key: str = LIMITED) -> Any:
    return oai(proxy, key).chat.completions.with_raw_response.create(model=model, messages=MSGS)


def refused(proxy: Proxy, model: str = "fake-in10-out5", key: str = LIMITED) -> httpx.Response:
    with pytest.raises(openai.RateLimitError) as caught:
        chat(proxy, model, key)
    r = caught.value.response
    assert_openai_error(r, 429, "rate_limited")
    return r


@pytest.fixture
def start(upstream: FakeUpstream, tmp_path: Path, closed_port: int) -> Iterator[Callable[..., Proxy]]:
    """Starts a proxy (memory store) whose `limited` key has the given limits; stopped after the test."""
    with contextlib.ExitStack() as stack:
        upstream.clear()
        yield lambda **limits: stack.enter_context(Proxy(settings(upstream, tmp_path, closed_port, **limits)))


def test_a_burst_of_rpm_passes_then_429_with_retry_after_and_no_row(start: Callable[..., Proxy]) -> None:
    limited = start(rpm=3)
    remaining = []
    for _ in range(3):
        raw = chat(limited)
        assert raw.headers["x-ratelimit-limit-requests"] == "3"
        assert "x-ratelimit-limit-tokens" not in raw.headers  # no tpm on this key
        remaining.append(raw.headers["x-ratelimit-remaining-requests"])
    assert remaining == ["2", "1", "0"]
    r = refused(limited)
    assert 19 <= int(r.headers["retry-after"]) <= 20  # one request per 20 s after the burst
    assert r.headers["x-ratelimit-remaining-requests"] == "0"
    assert r.headers["x-ratelimit-limit-requests"] == "3"
    assert "rate limit of 3 requests per minute" in r.json()["error"]["message"]
    last = limited.call_row(raw.headers["x-spendgate-request-id"])  # the batch before the 429 is in SQL
    assert last["status"] == "ok"
    with limited.client() as c:  # a rate-limited call was never forwarded and left no row
        assert c.get(f"/api/calls/{r.headers['x-spendgate-request-id']}").status_code == 404
    assert len(limited.calls(key=ADMIN)) == 3


def test_keys_without_limits_are_unaffected(start: Callable[..., Proxy]) -> None:
    limited = start(rpm=1)
    chat(limited)
    refused(limited)
    for _ in range(5):
        raw = chat(limited, key=ADMIN)
        assert not any(h.startswith("x-ratelimit-") for h in raw.headers)


def test_the_anthropic_family_gets_its_own_shape(start: Callable[..., Proxy]) -> None:
    limited = start(rpm=1)
    client = anthropic.Anthropic(base_url=limited.url, api_key=LIMITED, max_retries=0)
    ok = client.messages.with_raw_response.create(model="claude-fake-in12-out4", max_tokens=10, messages=MSGS)
    assert ok.headers["x-ratelimit-remaining-requests"] == "0"
    with pytest.raises(anthropic.RateLimitError) as caught:
        client.messages.create(model="claude-fake-in12-out4", max_tokens=10, messages=MSGS)
    r = caught.value.response
    assert_anthropic_error(r, 429, "rate_limit_error")
    assert 59 <= int(r.headers["retry-after"]) <= 60


def test_after_the_interval_the_key_is_admitted_again(start: Callable[..., Proxy]) -> None:
    limited = start(rpm=60)
    client = oai(limited)
    with pytest.raises(openai.RateLimitError) as caught:
        for _ in range(100):  # 60 at once, plus the few the time spent has refilled
            client.chat.completions.create(model="fake-in10-out5", messages=MSGS)
    r = caught.value.response
    assert r.headers["retry-after"] == "1"  # under the 1 s interval, rounded up to whole seconds
    assert r.headers["x-ratelimit-remaining-requests"] == "0"
    time.sleep(int(r.headers["retry-after"]))
    admitted = 0
    with pytest.raises(openai.RateLimitError):
        for _ in range(10):
            chat(limited)
            admitted += 1
    assert 1 <= admitted <= 2  # one request per second, not the whole burst again


def test_tokens_are_charged_with_real_usage_and_a_key_in_debt_waits(start: Callable[..., Proxy]) -> None:
    limited = start(tpm=200)
    first = chat(limited, "fake-in100-out50")
    assert first.headers["x-ratelimit-limit-tokens"] == "200"
    assert first.headers["x-ratelimit-remaining-tokens"] == "200"  # admission charges nothing
    second = chat(limited, "fake-in100-out50")  # 50 left (and a little refill): admitted
    assert 50 <= int(second.headers["x-ratelimit-remaining-tokens"]) <= 60
    r = refused(limited, "fake-in100-out50")  # level about -100: in debt
    assert r.headers["x-ratelimit-remaining-tokens"] == "0"
    assert 25 <= int(r.headers["retry-after"]) <= 30  # 100 tokens at 200 per minute
    assert "200 tokens per minute" in r.json()["error"]["message"]


def test_a_streamed_call_is_charged_when_its_stream_ends(start: Callable[..., Proxy]) -> None:
    limited = start(tpm=100)
    with oai(limited).chat.completions.with_streaming_response.create(
            model="fake-in100-out50", messages=MSGS, stream=True) as raw:
        assert raw.headers["x-ratelimit-remaining-tokens"] == "100"
        assert sum(1 for _ in raw.iter_lines()) > 0
    r = refused(limited)
    assert 25 <= int(r.headers["retry-after"]) <= 30  # 50 tokens in debt at 100 per minute


def test_a_key_in_debt_recovers_as_the_bucket_refills(start: Callable[..., Proxy]) -> None:
    limited = start(tpm=60_000)
    chat(limited, "fake-in60000-out500")  # 60,500 tokens: 500 in debt, refilled at 1,000 per second
    r = refused(limited)
    assert r.headers["retry-after"] == "1"
    time.sleep(0.6)
    assert chat(limited).status_code == 200


def test_count_tokens_counts_as_a_request_but_is_free_of_tokens(start: Callable[..., Proxy]) -> None:
    limited = start(rpm=5, tpm=100)
    chat(limited, "fake-in100-out50")  # the bucket is in debt now
    refused(limited)
    client = anthropic.Anthropic(base_url=limited.url, api_key=LIMITED, max_retries=0)
    raw = client.messages.with_raw_response.count_tokens(model="claude-fake-in42", messages=MSGS)
    assert raw.parse().input_tokens == 42
    assert raw.headers["x-ratelimit-remaining-requests"] == "3"  # the chat and this one
    assert "x-ratelimit-limit-tokens" not in raw.headers


def test_refusals_are_counted_in_prometheus_by_key_name(start: Callable[..., Proxy]) -> None:
    limited = start(rpm=1)
    chat(limited)
    refused(limited)
    refused(limited)
    text = httpx.get(limited.url + "/metrics", headers={"x-api-key": ROOT}).text
    assert 'spendgate_rate_limit_refusals_total{key="limited",limit="requests"} 2.0' in text
    assert LIMITED not in text


# --- on Redis ---------------------------------------------------------------------------------------------

@pytest.mark.redis
def test_replicas_on_one_redis_share_the_limits(upstream: FakeUpstream, tmp_path: Path, closed_port: int,
                                                redis_url: str, redis_prefix: str) -> None:
    common = {"ledger": {"url": redis_url}, "server": {"rate_limit_key_prefix": redis_prefix}}
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    a_dir.mkdir()
    b_dir.mkdir()
    with (Proxy(settings(upstream, a_dir, closed_port, rpm=4, tpm=1000, **common)) as a,
          Proxy(settings(upstream, b_dir, closed_port, rpm=4, tpm=1000, **common)) as b):
        assert [chat(p).headers["x-ratelimit-remaining-requests"] for p in (a, b, a)] == ["3", "2", "1"]
        chat(b, "fake-in900-out200")  # 1,100 tokens charged on b...
        r = refused(a)  # ...put the key in debt on a too
        assert r.headers["x-ratelimit-remaining-tokens"] == "0"
        with redis.Redis.from_url(redis_url) as client:
            keys = sorted(k.decode() for k in client.scan_iter(match=f"{redis_prefix}*"))
            assert keys == [f"{redis_prefix}sg:rl:{{acme}}:limited:{kind}" for kind in ("rpm", "tpm")]
            # Idle keys vanish: the GCRA state within a minute, the bucket once full again (~69 s here).
            assert 0 < client.pttl(keys[0]) <= 60_000 and 0 < client.pttl(keys[1]) <= 70_000
        with pytest.raises(openai.RateLimitError):
            chat(b, key=LIMITED)


@pytest.mark.redis
def test_the_metrics_api_cap_is_shared_through_redis(upstream: FakeUpstream, tmp_path: Path, closed_port: int,
                                                     redis_url: str, redis_prefix: str) -> None:
    common = {"ledger": {"url": redis_url},
              "server": {"rate_limit_key_prefix": redis_prefix, "metrics_rate_limit_per_minute": 3}}
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    a_dir.mkdir()
    b_dir.mkdir()
    with (Proxy(settings(upstream, a_dir, closed_port, **common)) as a,
          Proxy(settings(upstream, b_dir, closed_port, **common)) as b):
        path = "/api/ai-cost/monthly-summary"
        statuses = [p.client().get(path).status_code for p in (a, b, a)]
        assert 429 not in statuses
        r = b.client().get(path)
        assert_seed_error(r, 429, "RATE_LIMITED")
        assert 1 <= int(r.headers["retry-after"]) <= 20


@pytest.mark.parametrize("on_unavailable", ["block", "allow"])
def test_redis_down_blocks_or_passes_as_the_ledger_says(upstream: FakeUpstream, tmp_path: Path,
                                                        closed_port: int, on_unavailable: str) -> None:
    with redis_helpers.PrivateRedis(tmp_path) as server:
        config = settings(upstream, tmp_path, closed_port, rpm=2,
                          ledger={"url": server.url, "on_unavailable": on_unavailable, "timeout_s": 0.2})
        with Proxy(config) as proxy:
            assert chat(proxy).headers["x-ratelimit-remaining-requests"] == "1"
            server.stop()
            for _ in range(2):
                if on_unavailable == "block":
                    with pytest.raises(openai.InternalServerError) as caught:
                        chat(proxy)
                    assert_openai_error(caught.value.response, 503, "service_unavailable")
                else:
                    raw = chat(proxy)  # passes, unlimited, without rate limit headers
                    assert "x-ratelimit-limit-requests" not in raw.headers
            assert chat(proxy, key=ADMIN).status_code == 200  # a key without limits never asks Redis
            server.start()  # back, empty: the limits apply again
            assert [chat(proxy).status_code for _ in range(2)] == [200, 200]
            refused(proxy)
