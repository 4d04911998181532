"""Webhook delivery against a real receiver on loopback: signatures, retries, egress refusals, durability,
and two replicas sharing one PostgreSQL. No packet leaves 127.0.0.0/8: hostnames use a stubbed resolver."""

from __future__ import annotations

import asyncio
import base64
import logging
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import pytest_asyncio
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from policies.config import WebhookConfig
from policies.webhooks import Target, event_body, secret_bytes, verify
from proxy.store import outbox
from proxy.store.config import StoreConfig
from proxy.store.db import Store
from proxy.webhooks import WebhookDispatcher, pinned_request, send_test
from tests.fakes.servers import ThreadedServer
from tests.pg import pg_url  # noqa: F401 - fixture

pytestmark = pytest.mark.integration

SECRET = "whsec_" + base64.b64encode(b"spendgate-test-secret-0123456789").decode()
DATA = {"budget": "org-monthly", "scope": {"org": "acme"}, "at_pct": 80, "spent_usd": 400.0}


@dataclass
class Seen:
    headers: dict[str, str]
    body: bytes
    valid: bool


@dataclass
class Receiver:
    """What the receiver app got and how it answers next (shared with its server thread)."""

    seen: list[Seen] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)  # answered in order, then 200
    sleep_s: float = 0.0
    target_hits: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reset(self) -> None:
        with self.lock:
            self.seen, self.statuses, self.sleep_s, self.target_hits = [], [], 0.0, 0

    def app(self) -> Starlette:
        async def hook(request: Request) -> Response:
            body = await request.body()
            headers = dict(request.headers)
            with self.lock:
                self.seen.append(Seen(headers, body, verify(secret_bytes(SECRET), headers, body)))
                status = self.statuses.pop(0) if self.statuses else 200
                sleep_s = self.sleep_s
            for _ in range(int(sleep_s / 0.02)):
                if not self.sleep_s:  # ends early once a test resets it
                    break
                await asyncio.sleep(0.02)
            if 300 <= status < 400:
                return Response(status_code=status, headers={"location": "/target"})
            return Response(status_code=status)

        async def target(request: Request) -> Response:
            with self.lock:
                self.target_hits += 1
            return Response(status_code=200)

        return Starlette(routes=[Route("/hook", hook, methods=["POST"]),
                                 Route("/target", target, methods=["POST", "GET"])])


@pytest.fixture(scope="module")
def receiver_server() -> Iterator[tuple[Receiver, ThreadedServer]]:
    receiver = Receiver()
    with ThreadedServer(receiver.app()) as server:
        yield receiver, server


@pytest.fixture
def receiver(receiver_server: tuple[Receiver, ThreadedServer]) -> Receiver:
    receiver_server[0].reset()
    return receiver_server[0]


@pytest.fixture
def hook_url(receiver_server: tuple[Receiver, ThreadedServer]) -> str:
    return f"{receiver_server[1].url}/hook"


def webhook(url: str, *, name: str = "ops", allow_private: bool = True, events: list[str] | None = None,
            ) -> WebhookConfig:
    extra: dict[str, Any] = {"events": events} if events is not None else {}
    return WebhookConfig(name=name, url=url, secret=SecretStr(SECRET), allow_private_network=allow_private,
                         **extra)


@pytest_asyncio.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await Store.open(StoreConfig(url=f"sqlite+aiosqlite:///{tmp_path / 'hooks.db'}"))
    yield opened
    await opened.close()


Factory = Callable[..., WebhookDispatcher]


@pytest_asyncio.fixture
async def make() -> AsyncIterator[Factory]:
    """Dispatchers with test-sized timings; every one is closed at teardown."""
    made: list[WebhookDispatcher] = []

    def factory(store: Store, hooks: list[WebhookConfig], **options: Any) -> WebhookDispatcher:
        settings: dict[str, Any] = {"poll_s": 0.05, "base_delay_s": 0.01, "cap_delay_s": 0.05,
                                    "timeout_s": 2.0, "close_grace_s": 0.2}
        settings.update(options)
        made.append(WebhookDispatcher(store, hooks, **settings))
        return made[-1]

    yield factory
    for dispatcher in made:
        await dispatcher.close()


WAIT_S = 10.0


async def settled(store: Store, msg_id: str) -> outbox.OutboxItem:
    """The item once it is delivered or failed."""
    deadline = time.monotonic() + WAIT_S
    while True:
        item = await outbox.get(store, msg_id)
        assert item is not None
        if item.status != "pending":
            return item
        assert time.monotonic() < deadline, f"still pending: {item}"
        await asyncio.sleep(0.02)


async def wait_until(predicate: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_delivered_signed_with_the_exact_stored_body(store: Store, make: Factory, receiver: Receiver,
                                                           hook_url: str) -> None:
    dispatcher = make(store, [webhook(hook_url)])
    await dispatcher.start()
    [msg_id] = await dispatcher.emit("budget.threshold", DATA)
    item = await settled(store, msg_id)
    assert item.status == "delivered" and item.attempts == 1 and item.last_status == 200
    [seen] = receiver.seen
    assert seen.valid and seen.body == item.body
    assert seen.headers["webhook-id"] == msg_id and seen.headers["content-type"] == "application/json"
    assert seen.headers["host"] == hook_url.split("/")[2]
    payload = orjson.loads(seen.body)
    assert payload["type"] == "budget.threshold" and payload["data"] == DATA
    assert payload["timestamp"].endswith("Z")


async def test_emit_never_waits_and_close_keeps_the_in_flight_item(store: Store, make: Factory,
                                                                   receiver: Receiver, hook_url: str) -> None:
    receiver.sleep_s = 5.0
    first = make(store, [webhook(hook_url)], lease_s=0.5)
    await first.start()
    started = time.monotonic()
    [msg_id] = await first.emit("budget.exceeded", DATA)
    assert time.monotonic() - started < 0.5  # a bound, not a benchmark: delivery takes 5 s
    await wait_until(lambda: len(receiver.seen) == 1)  # the attempt is in flight

    started = time.monotonic()
    await first.close()
    assert time.monotonic() - started < 2.0
    item = await outbox.get(store, msg_id)
    assert item is not None and item.status == "pending" and item.attempts == 0

    receiver.sleep_s = 0.0
    second = make(store, [webhook(hook_url)])
    await second.start()  # a restart: the lease ends and the item goes out again
    assert (await settled(store, msg_id)).status == "delivered"
    assert [s.headers["webhook-id"] for s in receiver.seen] == [msg_id, msg_id]
    assert all(s.valid for s in receiver.seen)


async def test_items_emitted_before_start_are_delivered_by_a_later_start(
        store: Store, make: Factory, receiver: Receiver, hook_url: str) -> None:
    stopped = make(store, [webhook(hook_url)])
    ids = await stopped.emit("approval.requested", {"approval_id": "apr_1"})
    await stopped.close()
    assert receiver.seen == [] and await outbox.pending_count(store) == 1
    later = make(store, [webhook(hook_url)])
    await later.start()
    assert (await settled(store, ids[0])).status == "delivered"


async def test_retried_after_500s_then_delivered(store: Store, make: Factory, receiver: Receiver,
                                                 hook_url: str) -> None:
    receiver.statuses = [500, 500]
    dispatcher = make(store, [webhook(hook_url)])
    await dispatcher.start()
    [msg_id] = await dispatcher.emit("budget.threshold", DATA)
    item = await settled(store, msg_id)
    assert item.status == "delivered" and item.attempts == 3
    assert [d.status for d in await outbox.list_deliveries(store, msg_id)] == [500, 500, 200]
    assert len(receiver.seen) == 3 and all(s.valid for s in receiver.seen)


@pytest.mark.parametrize("status", [400, 410])
async def test_client_errors_fail_without_retry(store: Store, make: Factory, receiver: Receiver,
                                                hook_url: str, status: int) -> None:
    receiver.statuses = [status]
    dispatcher = make(store, [webhook(hook_url)])
    await dispatcher.start()
    [msg_id] = await dispatcher.emit("budget.threshold", DATA)
    item = await settled(store, msg_id)
    assert item.status == "failed" and item.attempts == 1 and item.last_status == status
    await asyncio.sleep(0.2)
    assert len(receiver.seen) == 1 and len(await outbox.list_deliveries(store, msg_id)) == 1


async def test_redirects_are_not_followed(store: Store, make: Factory, receiver: Receiver,
                                          hook_url: str) -> None:
    receiver.statuses = [302]
    dispatcher = make(store, [webhook(hook_url)])
    await dispatcher.start()
    [msg_id] = await dispatcher.emit("budget.threshold", DATA)
    item = await settled(store, msg_id)
    assert item.status == "failed" and item.last_status == 302 and "redirect" in (item.last_error or "")
    assert receiver.target_hits == 0 and len(receiver.seen) == 1


async def test_dead_receiver_is_retried_with_backoff_then_failed(store: Store, make: Factory,
                                                                 closed_port: int) -> None:
    dispatcher = make(store, [webhook(f"http://127.0.0.1:{closed_port}/hook")], max_attempts=3)
    await dispatcher.start()
    [msg_id] = await dispatcher.emit("budget.threshold", DATA)
    item = await settled(store, msg_id)
    assert item.status == "failed" and item.attempts == 3 and item.last_status is None
    log = await outbox.list_deliveries(store, msg_id)
    assert [d.status for d in log] == [None, None, None]
    assert all("connection failed" in (d.error or "") for d in log)
    assert log[0].at <= log[1].at <= log[2].at


async def test_loopback_without_allow_private_network_is_refused(store: Store, make: Factory,
                                                                 receiver: Receiver, hook_url: str) -> None:
    dispatcher = make(store, [webhook(hook_url, allow_private=False)])
    await dispatcher.start()
    [msg_id] = await dispatcher.emit("budget.threshold", DATA)
    item = await settled(store, msg_id)
    assert item.status == "failed" and item.attempts == 1
    error = item.last_error or ""
    assert error.startswith("egress refused") and "allow_private_network" in error
    assert receiver.seen == []


async def test_hostnames_connect_only_to_the_checked_address(store: Store, make: Factory, receiver: Receiver,
                                                             hook_url: str) -> None:
    port = int(hook_url.split(":")[2].split("/")[0])
    asked: list[tuple[str, int]] = []

    def resolve(host: str, p: int) -> list[str]:
        asked.append((host, p))
        return {"hooks.example.test": ["127.0.0.1"], "private.example.test": ["10.1.2.3"],
                "metadata.example.test": ["169.254.169.254"]}[host]

    hooks = [webhook(f"http://hooks.example.test:{port}/hook?token=abc"),
             webhook(f"http://private.example.test:{port}/hook", name="private", allow_private=False),
             webhook(f"http://metadata.example.test:{port}/hook", name="metadata")]
    dispatcher = make(store, hooks, resolve=resolve)
    await dispatcher.start()
    ids = await dispatcher.emit("budget.threshold", DATA)
    delivered, private, metadata = [await settled(store, i) for i in ids]
    assert delivered.status == "delivered"
    [seen] = receiver.seen
    assert seen.valid and seen.headers["host"] == f"hooks.example.test:{port}"
    assert private.status == "failed" and "non-public" in (private.last_error or "")
    assert metadata.status == "failed" and "metadata" in (metadata.last_error or "")
    assert ("hooks.example.test", port) in asked


async def test_only_subscribed_webhooks_get_an_event(store: Store, make: Factory, hook_url: str) -> None:
    dispatcher = make(store, [webhook(hook_url), webhook(hook_url, name="approvals",
                                                         events=["approval.requested"])])
    assert len(await dispatcher.emit("budget.threshold", DATA)) == 1
    assert len(await dispatcher.emit("approval.requested", DATA)) == 2
    with pytest.raises(ValueError):
        await dispatcher.emit("budget.nonsense", DATA)


async def test_logs_carry_neither_secret_nor_query(store: Store, make: Factory, receiver: Receiver,
                                                   hook_url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="proxy.webhooks")
    receiver.statuses = [500]
    dispatcher = make(store, [webhook(f"{hook_url}?token=querysecret")])
    await dispatcher.start()
    [msg_id] = await dispatcher.emit("budget.threshold", DATA)
    assert (await settled(store, msg_id)).status == "delivered"
    logged = [r for r in caplog.records if r.name == "proxy.webhooks"]
    assert len(logged) == 2 and all(getattr(r, "outbox_id", None) == msg_id for r in logged)
    text = " ".join(str(r.__dict__) for r in logged)
    assert "querysecret" not in text and SECRET not in text and SECRET.removeprefix("whsec_") not in text


async def test_send_test(receiver: Receiver, hook_url: str) -> None:
    hooks = [webhook(hook_url), webhook(hook_url, name="strict", allow_private=False)]
    assert await send_test(hooks, "ops") == (200, None)
    [seen] = receiver.seen
    assert seen.valid and orjson.loads(seen.body)["type"] == "budget.threshold"
    status, error = await send_test(hooks, "strict")
    assert status is None and (error or "").startswith("egress refused")
    assert (await send_test(hooks, "missing"))[0] is None
    receiver.statuses = [503]
    assert (await send_test(hooks, "ops"))[0] == 503
    assert len(receiver.seen) == 2


def test_pinned_request_keeps_host_and_tls_name() -> None:
    https = Target("https://hooks.example.com/in?k=v", "hooks.example.com", 443, ("93.184.216.34",))
    assert pinned_request(https, "93.184.216.34") == (
        "https://93.184.216.34:443/in?k=v", {"Host": "hooks.example.com"}, "hooks.example.com")
    v6 = Target("http://hooks.example.com:8080/", "hooks.example.com", 8080, ("2001:db8::1",))
    assert pinned_request(v6, "2001:db8::1") == (
        "http://[2001:db8::1]:8080/", {"Host": "hooks.example.com:8080"}, None)


@pytest.mark.postgres
async def test_two_replicas_deliver_each_event_exactly_once(pg_url: str,  # noqa: F811 - fixture
                                                            make: Factory, receiver: Receiver,
                                                            hook_url: str) -> None:
    stores = [await Store.open(StoreConfig(url=pg_url)) for _ in range(2)]
    try:
        now = datetime.now(UTC)
        body = event_body("budget.threshold", DATA, now.timestamp())
        ids = await outbox.enqueue(stores[0], [("ops", "budget.threshold", body)] * 40, now)
        receiver.sleep_s = 0.01  # widen the window in which both replicas claim
        replicas = [make(s, [webhook(hook_url)], batch=5) for s in stores]
        await asyncio.gather(*(r.start() for r in replicas))
        for msg_id in ids:
            assert (await settled(stores[1], msg_id)).status == "delivered"
        await asyncio.sleep(0.2)
        got = Counter(s.headers["webhook-id"] for s in receiver.seen)
        assert set(got) == set(ids) and set(got.values()) == {1}
        assert all(s.valid for s in receiver.seen)
        for r in replicas:
            await r.close()
    finally:
        for s in stores:
            await s.close()


def test_cli_webhook_test_sends_a_signed_sample(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from proxy.cli import main

    got: list[tuple[dict[str, str], bytes]] = []

    async def hook(request: Request) -> Response:
        got.append((dict(request.headers), await request.body()))
        return Response(status_code=204)

    monkeypatch.setenv("SG_CLI_HOOK_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    with ThreadedServer(Starlette(routes=[Route("/hook", hook, methods=["POST"])])) as receiver:
        config = tmp_path / "config.yaml"
        config.write_text(
            "models:\n  - {name: mock, provider: mock, price_as: gpt-4o-mini}\n"
            f"webhooks:\n  - {{name: ops, url: '{receiver.url}/hook', secret: 'env:SG_CLI_HOOK_SECRET', "
            "allow_private_network: true}\n")
        assert main(["webhook", "test", "ops", "--config", str(config)]) == 0
        assert main(["webhook", "test", "nope", "--config", str(config)]) == 1
    assert "ops: HTTP 204" in capsys.readouterr().out
    headers, body = got[0]
    assert verify(secret_bytes("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"), headers, body)
