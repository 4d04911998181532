"""Idempotency-Key through a real spendgate (memory and Redis stores), with the official SDKs: copies of one
request make one upstream call and one usage row, and every copy gets the same bytes."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
import redis

from proxy.idempotency_store import (
    Claimed,
    Done,
    InFlight,
    MemoryIdempotencyStore,
    RedisIdempotencyStore,
    StoredResponse,
    entry_key,
    fingerprint,
)
from tests import redis_helpers
from tests.error_shapes import assert_anthropic_error, assert_openai_error
from tests.fakes.upstream import FakeUpstream
from tests.harness import ADMIN, AGENT, OTHER, Proxy, make_settings
from tests.redis_helpers import PrivateRedis

pytestmark = pytest.mark.integration
redis_url = redis_helpers.redis_url
redis_prefix = redis_helpers.redis_prefix

MSGS = [{"role": "user", "content": "Summarise the sprint in one line."}]
REPLAYED = "idempotent-replayed"


@pytest.fixture(params=["memory", "redis"])
def idem_proxy(request: pytest.FixtureRequest, upstream: FakeUpstream, tmp_path: Path,
               closed_port: int) -> Iterator[Proxy]:
    """A proxy whose idempotency store is in memory, or on a Redis of the test's own (the ledger's URL)."""
    upstream.clear()
    if request.param == "memory":
        with Proxy(make_settings(upstream, tmp_path, closed_port)) as p:
            yield p
        return
    with PrivateRedis(tmp_path) as server, \
            Proxy(make_settings(upstream, tmp_path, closed_port, ledger={"url": server.url})) as p:
        yield p


def new_key() -> str:
    return "idem-" + secrets.token_hex(8)


def post(proxy: Proxy, path: str, body: dict[str, Any] | bytes, key: str | None, api_key: str = ADMIN,
         **headers: str) -> httpx.Response:
    if key is not None:
        headers["idempotency-key"] = key
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    with proxy.client(api_key) as c:
        return c.post(path, content=content, headers={"content-type": "application/json", **headers})


def settled_rows(proxy: Proxy, want: int) -> list[dict[str, Any]]:
    """The usage rows once `want` are stored, and still exactly `want` a moment later (no stray row)."""
    deadline = time.monotonic() + 10
    while len(rows := proxy.calls(limit=1000)) < want and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.2)
    rows = proxy.calls(limit=1000)
    assert len(rows) == want, rows
    return rows


def upstream_calls(upstream: FakeUpstream) -> int:
    return len([r for r in upstream.requests if r.method == "POST"])


# --- replays -----------------------------------------------------------------------------------------------

def test_json_replay_with_the_openai_sdk(idem_proxy: Proxy, upstream: FakeUpstream) -> None:
    client = openai.OpenAI(base_url=idem_proxy.base, api_key=ADMIN, max_retries=0)
    key = new_key()
    first = client.chat.completions.with_raw_response.create(
        model="fake-in20-out5", messages=MSGS, extra_headers={"Idempotency-Key": key})
    again = client.chat.completions.with_raw_response.create(
        model="fake-in20-out5", messages=MSGS, extra_headers={"Idempotency-Key": key})
    assert REPLAYED not in first.headers and again.headers[REPLAYED] == "true"
    assert again.http_response.content == first.http_response.content
    for name in ("x-spendgate-request-id", "x-spendgate-cost-usd", "content-type"):
        assert again.headers[name] == first.headers[name]
    assert again.parse().usage.completion_tokens == 5
    assert upstream_calls(upstream) == 1
    rows = settled_rows(idem_proxy, 1)
    assert rows[0]["request_id"] == first.headers["x-spendgate-request-id"]


def test_stream_replay_is_the_transcript_byte_for_byte(idem_proxy: Proxy, upstream: FakeUpstream) -> None:
    body = {"model": "fake-in30-out8", "messages": MSGS, "stream": True}
    key = new_key()
    with idem_proxy.client() as c:
        with c.stream("POST", "/v1/chat/completions", json=body, headers={"idempotency-key": key}) as r:
            first = b"".join(r.iter_raw())
            first_headers = r.headers
        with c.stream("POST", "/v1/chat/completions", json=body, headers={"idempotency-key": key}) as r:
            again = b"".join(r.iter_raw())
            assert r.status_code == 200 and r.headers[REPLAYED] == "true"
            assert r.headers["content-type"].startswith("text/event-stream")
            assert r.headers["x-spendgate-request-id"] == first_headers["x-spendgate-request-id"]
    assert again == first
    assert b": spendgate cost_usd=" in first and first.rstrip().endswith(b"data: [DONE]")
    # The SDK reads a replayed stream like a live one (its body is serialised its own way: another key).
    client = openai.OpenAI(base_url=idem_proxy.base, api_key=ADMIN, max_retries=0)
    sdk_key = new_key()
    texts = ["".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
             for chunks in (list(client.chat.completions.create(model="fake-in30-out8", messages=MSGS, stream=True,
                                                                extra_headers={"Idempotency-Key": sdk_key}))
                            for _ in range(2))]
    assert texts[0] == texts[1] and texts[0].count("hello") == 8
    assert upstream_calls(upstream) == 2
    settled_rows(idem_proxy, 2)


def test_anthropic_json_and_stream_replays(idem_proxy: Proxy, upstream: FakeUpstream) -> None:
    client = anthropic.Anthropic(base_url=idem_proxy.url, api_key=ADMIN, max_retries=0)
    key, stream_key = new_key(), new_key()
    args: dict[str, Any] = {"model": "claude-fake-in12-out4", "max_tokens": 50, "messages": MSGS}
    first = client.messages.with_raw_response.create(**args, extra_headers={"Idempotency-Key": key})
    again = client.messages.with_raw_response.create(**args, extra_headers={"Idempotency-Key": key})
    assert again.headers[REPLAYED] == "true" and again.http_response.content == first.http_response.content
    events = [list(client.messages.create(**args, stream=True, extra_headers={"Idempotency-Key": stream_key}))
              for _ in range(2)]
    assert [e.type for e in events[0]] == [e.type for e in events[1]]
    assert events[0][-1].type == "message_stop"
    assert upstream_calls(upstream) == 2
    settled_rows(idem_proxy, 2)


def test_sdk_calls_without_the_header_are_never_deduplicated(idem_proxy: Proxy, upstream: FakeUpstream) -> None:
    client = openai.OpenAI(base_url=idem_proxy.base, api_key=ADMIN, max_retries=2)
    for _ in range(2):
        client.chat.completions.create(model="fake-in10-out2", messages=MSGS)
    assert upstream_calls(upstream) == 2
    assert all("idempotency-key" not in r.headers for r in upstream.requests)  # never forwarded either


# --- concurrency -------------------------------------------------------------------------------------------

def test_ten_concurrent_copies_make_one_upstream_call(idem_proxy: Proxy, upstream: FakeUpstream) -> None:
    body = {"model": "fake-slow300-in15-out6", "messages": MSGS}
    key = new_key()
    with ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(lambda _: post(idem_proxy, "/v1/chat/completions", body, key), range(10)))
    assert [a.status_code for a in answers] == [200] * 10
    assert len({a.content for a in answers}) == 1
    assert len({a.headers["x-spendgate-request-id"] for a in answers}) == 1
    assert sum(a.headers.get(REPLAYED) == "true" for a in answers) == 9
    assert upstream_calls(upstream) == 1
    settled_rows(idem_proxy, 1)


def test_concurrent_copies_of_a_stream_get_one_transcript(idem_proxy: Proxy, upstream: FakeUpstream) -> None:
    body = {"model": "fake-in10-out12-gap20", "messages": MSGS, "stream": True}
    key = new_key()

    def read() -> bytes:
        with idem_proxy.client() as c, c.stream("POST", "/v1/chat/completions", json=body,
                                                headers={"idempotency-key": key}) as r:
            assert r.status_code == 200
            return b"".join(r.iter_raw())

    with ThreadPoolExecutor(5) as pool:
        transcripts = list(pool.map(lambda _: read(), range(5)))
    assert len(set(transcripts)) == 1 and b"data: [DONE]" in transcripts[0]
    assert upstream_calls(upstream) == 1
    settled_rows(idem_proxy, 1)


# --- refusals ----------------------------------------------------------------------------------------------

def test_same_key_with_another_body_or_endpoint_is_422(idem_proxy: Proxy, upstream: FakeUpstream) -> None:
    key = new_key()
    assert post(idem_proxy, "/v1/chat/completions", {"model": "fake-in10-out2", "messages": MSGS}, key).status_code == 200
    other = post(idem_proxy, "/v1/chat/completions", {"model": "fake-in10-out3", "messages": MSGS}, key)
    assert_openai_error(other, 422, "idempotency_key_reused")
    endpoint = post(idem_proxy, "/v1/completions", {"model": "fake-in10-out2", "prompt": "hi"}, key)
    assert_openai_error(endpoint, 422, "idempotency_key_reused")
    akey = new_key()
    msg = {"model": "claude-fake-in10-out2", "max_tokens": 20, "messages": MSGS}
    assert post(idem_proxy, "/v1/messages", msg, akey).status_code == 200
    assert_anthropic_error(post(idem_proxy, "/v1/messages", {**msg, "max_tokens": 21}, akey), 422,
                           "invalid_request_error")
    assert upstream_calls(upstream) == 2  # nothing of the refused copies was forwarded
    settled_rows(idem_proxy, 2)  # nor recorded


def test_another_body_while_the_first_is_in_flight_is_422_at_once(idem_proxy: Proxy,
                                                                   upstream: FakeUpstream) -> None:
    key = new_key()
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(post, idem_proxy, "/v1/chat/completions",
                            {"model": "fake-slow800-in10-out2", "messages": MSGS}, key)
        deadline = time.monotonic() + 5
        while upstream_calls(upstream) == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        other = post(idem_proxy, "/v1/chat/completions", {"model": "fake-in10-out9", "messages": MSGS}, key)
        assert not first.done()  # answered while the first copy was still running
        assert_openai_error(other, 422, "idempotency_key_reused")
        assert first.result().status_code == 200
    assert upstream_calls(upstream) == 1


@pytest.mark.parametrize("value", ["x" * 256, "caf\u00e9".encode("latin-1"), ""])
def test_an_invalid_key_is_400_in_the_family_shape(proxy: Proxy, upstream: FakeUpstream, value: Any) -> None:
    body = {"model": "fake-in10-out2", "messages": MSGS}
    with proxy.client() as c:
        r = c.post("/v1/chat/completions", json=body, headers={"idempotency-key": value})
        err = assert_openai_error(r, 400, "invalid_request")
        assert err["param"] == "Idempotency-Key"
        r = c.post("/v1/messages", json={**body, "model": "claude-fake-in1", "max_tokens": 5},
                   headers={"idempotency-key": value})
        assert_anthropic_error(r, 400, "invalid_request_error")
    assert upstream_calls(upstream) == 0


def test_an_unknown_api_key_is_401_not_an_idempotency_answer(proxy: Proxy) -> None:
    r = post(proxy, "/v1/chat/completions", {"model": "fake-in10-out2", "messages": MSGS}, "k", api_key="nope")
    assert_openai_error(r, 401, "invalid_api_key")


# --- outcomes that are not kept ----------------------------------------------------------------------------

@pytest.mark.parametrize("status", [500, 429, 408])
def test_a_provider_failure_is_not_kept(idem_proxy: Proxy, upstream: FakeUpstream, status: int) -> None:
    body = {"model": f"fake-err{status}", "messages": MSGS}
    key = new_key()
    answers = [post(idem_proxy, "/v1/chat/completions", body, key) for _ in range(2)]
    assert [a.status_code for a in answers] == [status, status]
    assert all(REPLAYED not in a.headers for a in answers)
    assert upstream_calls(upstream) == 2  # the retry ran again


def test_a_provider_4xx_is_definitive_and_replayed(idem_proxy: Proxy, upstream: FakeUpstream) -> None:
    body = {"model": "fake-err400", "messages": MSGS}
    key = new_key()
    first, again = (post(idem_proxy, "/v1/chat/completions", body, key) for _ in range(2))
    assert first.status_code == again.status_code == 400
    assert again.headers[REPLAYED] == "true" and again.content == first.content
    assert upstream_calls(upstream) == 1


def test_an_unreachable_provider_is_not_kept(idem_proxy: Proxy) -> None:
    key = new_key()
    answers = [post(idem_proxy, "/v1/chat/completions", {"model": "dead-x", "messages": MSGS}, key)
               for _ in range(2)]
    assert [a.status_code for a in answers] == [502, 502]
    assert REPLAYED not in answers[1].headers
    settled_rows(idem_proxy, 2)


def test_client_hang_up_mid_stream_frees_the_key(idem_proxy: Proxy, upstream: FakeUpstream) -> None:
    body = {"model": "fake-in20-out60-gap10", "messages": MSGS, "stream": True}
    key = new_key()
    with idem_proxy.client() as c, c.stream("POST", "/v1/chat/completions", json=body,
                                            headers={"idempotency-key": key}) as r:
        first_id = r.headers["x-spendgate-request-id"]
        for line in r.iter_lines():
            if line.startswith("data:"):
                break  # hang up after the first event
    assert idem_proxy.call_row(first_id)["status"] == "cancelled"
    with idem_proxy.client() as c, c.stream("POST", "/v1/chat/completions", json=body,
                                            headers={"idempotency-key": key}) as r:
        transcript = b"".join(r.iter_raw())
        assert REPLAYED not in r.headers and r.headers["x-spendgate-request-id"] != first_id
    assert b"data: [DONE]" in transcript
    assert upstream_calls(upstream) == 2
    rows = settled_rows(idem_proxy, 2)
    assert sorted(r["status"] for r in rows) == ["cancelled", "ok"]


def test_a_budget_refusal_is_not_kept(upstream: FakeUpstream, tmp_path: Path, closed_port: int) -> None:
    upstream.clear()
    budget = {"name": "cap", "scope": {"org": "acme"}, "window": "day", "limit_usd": 0.0000001}
    with Proxy(make_settings(upstream, tmp_path, closed_port, budgets=[budget])) as proxy:
        body = {"model": "fake-in10-out2", "messages": MSGS, "max_tokens": 5}
        key = new_key()
        refused = post(proxy, "/v1/chat/completions", body, key)
        assert_openai_error(refused, 402, "budget_exceeded")
        with proxy.client() as c:
            assert c.put("/api/budgets/cap/limit", json={"limit_usd": 10}).status_code == 200
        ran = post(proxy, "/v1/chat/completions", body, key)
        assert ran.status_code == 200 and REPLAYED not in ran.headers
        assert post(proxy, "/v1/chat/completions", body, key).headers[REPLAYED] == "true"
    assert upstream_calls(upstream) == 1


def test_an_answer_over_the_size_cap_is_not_kept(proxy: Proxy, upstream: FakeUpstream) -> None:
    proxy.server.app.state.services.idempotency = MemoryIdempotencyStore(max_response_bytes=64)
    key = new_key()
    answers = [post(proxy, "/v1/chat/completions", {"model": "fake-in10-out20", "messages": MSGS}, key)
               for _ in range(2)]
    assert [a.status_code for a in answers] == [200, 200] and REPLAYED not in answers[1].headers
    assert upstream_calls(upstream) == 2


# --- scope -------------------------------------------------------------------------------------------------

def test_the_same_value_from_other_keys_or_orgs_is_another_entry(idem_proxy: Proxy,
                                                                 upstream: FakeUpstream) -> None:
    key = new_key()
    for api_key, model in ((ADMIN, "fake-in10-out2"), (AGENT, "fake-in10-out3"), (OTHER, "fake-in10-out4")):
        r = post(idem_proxy, "/v1/chat/completions", {"model": model, "messages": MSGS}, key, api_key=api_key)
        assert r.status_code == 200 and REPLAYED not in r.headers
    assert upstream_calls(upstream) == 3


# --- Redis: replicas, a dead owner, Redis down ---------------------------------------------------------------

@pytest.mark.redis
def test_copies_across_two_replicas_make_one_call(upstream: FakeUpstream, tmp_path: Path, closed_port: int) -> None:
    upstream.clear()
    with PrivateRedis(tmp_path) as server:
        (tmp_path / "one").mkdir(), (tmp_path / "two").mkdir()  # each replica its own journal (and store here)
        with Proxy(make_settings(upstream, tmp_path / "one", closed_port, ledger={"url": server.url})) as one, \
                Proxy(make_settings(upstream, tmp_path / "two", closed_port, ledger={"url": server.url})) as two:
            body = {"model": "fake-slow300-in11-out3", "messages": MSGS}
            key = new_key()
            with ThreadPoolExecutor(8) as pool:
                answers = list(pool.map(lambda i: post(one if i % 2 else two, "/v1/chat/completions", body, key),
                                        range(8)))
            assert {a.status_code for a in answers} == {200} and len({a.content for a in answers}) == 1
            assert sum(a.headers.get(REPLAYED) == "true" for a in answers) == 7
    assert upstream_calls(upstream) == 1


@pytest.mark.redis
def test_a_dead_owners_lease_lapses_and_a_copy_takes_over(upstream: FakeUpstream, tmp_path: Path,
                                                           closed_port: int) -> None:
    upstream.clear()
    with PrivateRedis(tmp_path) as server, \
            Proxy(make_settings(upstream, tmp_path, closed_port, ledger={"url": server.url})) as proxy:
        raw = json.dumps({"model": "fake-in10-out2", "messages": MSGS}).encode()
        key = new_key()
        lease = entry_key("acme", "admin", key) + ":lease"
        with redis.Redis.from_url(server.url) as client:  # a replica claimed it, then died
            client.set(lease, f"{'0' * 32} {fingerprint('chat', raw)}", px=1500)
        started = time.monotonic()
        r = post(proxy, "/v1/chat/completions", raw, key)
        assert r.status_code == 200 and REPLAYED not in r.headers
        assert time.monotonic() - started >= 1.0  # it waited for the lease to lapse, then ran the call
        assert post(proxy, "/v1/chat/completions", raw, key).headers[REPLAYED] == "true"
    assert upstream_calls(upstream) == 1


@pytest.mark.redis
@pytest.mark.parametrize("on_unavailable", ["block", "allow"])
def test_redis_down_follows_on_unavailable(upstream: FakeUpstream, tmp_path: Path, closed_port: int,
                                           on_unavailable: str) -> None:
    upstream.clear()
    with PrivateRedis(tmp_path) as server:
        ledger = {"url": server.url, "on_unavailable": on_unavailable}
        with Proxy(make_settings(upstream, tmp_path, closed_port, ledger=ledger)) as proxy:
            server.stop()
            body = {"model": "fake-in10-out2", "messages": MSGS}
            chat = post(proxy, "/v1/chat/completions", body, new_key())
            msg = post(proxy, "/v1/messages", {**body, "model": "claude-fake-in10-out2", "max_tokens": 9}, new_key())
            plain = post(proxy, "/v1/chat/completions", body, None)
            assert plain.status_code == 200  # without the header Redis is not asked
            if on_unavailable == "block":
                assert_openai_error(chat, 503, "service_unavailable")
                assert_anthropic_error(msg, 503, "overloaded_error")
                assert upstream_calls(upstream) == 1
            else:
                assert chat.status_code == msg.status_code == 200  # served, without idempotency
                assert upstream_calls(upstream) == 3


# --- the Redis store itself, on the shared Redis under a test prefix ------------------------------------------

@pytest.mark.redis
async def test_redis_store_contract(redis_url: str, redis_prefix: str) -> None:
    store = RedisIdempotencyStore(redis_url, prefix=redis_prefix)
    answer = StoredResponse(201, ((b"content-type", b"text/event-stream"), (b"x-a", b"\xe9")), b"data: \x00\xff\n\n")
    try:
        key, other = entry_key("acme", "k", "v"), entry_key("acme", "k2", "v")
        assert await store.claim(key, "fp", "a" * 32, 30) == Claimed()
        assert await store.claim(key, "fp2", "b" * 32, 30) == InFlight("fp")
        assert not await store.renew(key, "b" * 32, 30) and await store.renew(key, "a" * 32, 30)
        assert not await store.complete(key, "fp", "b" * 32, answer, 60)
        assert await store.complete(key, "fp", "a" * 32, answer, 60)
        assert await store.claim(key, "fp", "c" * 32, 30) == Done("fp", answer)
        assert await store.claim(key, "fp2", "c" * 32, 30) == Done("fp", None)
        assert not await store.complete(key, "fp", "a" * 32, answer, 60)  # stored once
        assert await store.claim(other, "fp", "a" * 32, 0.2) == Claimed()
        await store.release(other, "b" * 32)  # not the owner: nothing happens
        assert await store.claim(other, "fp", "b" * 32, 30) == InFlight("fp")
        await store.release(other, "a" * 32)
        assert await store.claim(other, "fp", "b" * 32, 0.2) == Claimed()
        await asyncio.sleep(0.3)  # not renewed: the lease lapses
        assert await store.claim(other, "fp", "c" * 32, 30) == Claimed()
        with redis.Redis.from_url(redis_url) as client:
            ttl = client.ttl(redis_prefix + key + ":done")
            assert 0 < ttl <= 60
    finally:
        await store.aclose()
