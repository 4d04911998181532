"""Webhook delivery: `emit` writes events to the store's outbox; a background task delivers them.

A call never waits on a receiver: `emit` only inserts outbox rows and wakes the worker. Each attempt checks
egress first (policies.webhooks.check_egress), then connects only to the addresses that check approved
(no DNS rebinding), signs the stored body (Standard Webhooks) and never follows a redirect. Secrets and
URLs (which often carry tokens) are never logged; attempts are logged by outbox id and webhook name.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import secrets
import socket
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from policies.config import WebhookConfig
from policies.webhooks import (
    EgressRefused,
    Resolver,
    Target,
    check_egress,
    event_body,
    retry_delay,
    secret_bytes,
    should_retry,
    signed_headers,
)
from proxy.store import outbox
from proxy.store.db import Store

log = logging.getLogger(__name__)

TIMEOUT_S = 10.0
CLOSE_GRACE_S = 2.0
SEND_CONCURRENCY = 8
SAMPLE_DATA: Mapping[str, Any] = {
    "test": True, "budget": "example-monthly", "scope": {"org": "example"}, "window": "month",
    "at_pct": 80, "action": "webhook", "spent_usd": 400.0, "limit_usd": 500.0,
}


@dataclass(frozen=True, slots=True)
class Attempt:
    """The outcome of one POST: `refused` means the egress check said no (never retried)."""

    status: int | None
    error: str | None
    refused: bool = False


async def _lookup(resolve: Resolver | None, host: str, port: int) -> list[str]:
    """Addresses for `host`, resolved before the (synchronous) egress check sees them."""
    with contextlib.suppress(ValueError):
        return [str(ipaddress.ip_address(host))]
    if resolve is not None:
        return list(resolve(host, port))
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def pinned_request(target: Target, address: str) -> tuple[str, dict[str, str], str | None]:
    """(URL naming the checked IP, Host header, TLS server name) for a request pinned to `address`.

    Connecting to the IP means aiohttp never resolves the name again; the Host header and, for https,
    the SNI / certificate name stay the original host's, so virtual hosts and TLS still work.
    """
    parts = urlsplit(target.url)
    ip = ipaddress.ip_address(address)
    literal = f"[{ip}]" if ip.version == 6 else str(ip)
    default_port = 443 if parts.scheme == "https" else 80
    netloc = f"{literal}:{target.port}"
    host = target.host if ":" not in target.host else f"[{target.host}]"
    host_header = host if target.port == default_port else f"{host}:{target.port}"
    url = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
    return url, {"Host": host_header}, (target.host if parts.scheme == "https" else None)


def _describe(exc: BaseException) -> str:
    """A log-safe reason: never str(exc) of a client error, which may quote the URL and its query."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"connection failed ({type(exc.os_error).__name__})"
    return f"request failed ({type(exc).__name__})"


async def post_once(session: aiohttp.ClientSession, webhook: WebhookConfig, msg_id: str, body: bytes, *,
                    now: float, resolve: Resolver | None = None, timeout_s: float = TIMEOUT_S) -> Attempt:
    """Check egress, then POST the signed body to the checked addresses (next address on connect failure)."""
    parts = urlsplit(webhook.url)
    host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
    try:
        addresses = await _lookup(resolve, host, port)
    except OSError as exc:  # a failed lookup may be transient: retry like a connection failure
        return Attempt(None, f"lookup of the webhook host failed ({type(exc).__name__})")
    try:
        target = check_egress(webhook.url, allow_private=webhook.allow_private_network,
                              resolve=lambda _h, _p: addresses)
    except EgressRefused as exc:
        return Attempt(None, f"egress refused: {exc}", refused=True)
    headers = signed_headers(secret_bytes(webhook.secret.get_secret_value()), msg_id, int(now), body)
    error = "no address"
    try:
        async with asyncio.timeout(timeout_s):  # one budget for the whole attempt, all addresses included
            for address in target.addresses:
                url, host_header, server_hostname = pinned_request(target, address)
                try:
                    async with session.post(url, data=body, headers={**headers, **host_header},
                                            allow_redirects=False, server_hostname=server_hostname) as resp:
                        status = resp.status
                except aiohttp.ClientConnectorError as exc:
                    error = _describe(exc)
                    continue
                if 300 <= status < 400:
                    return Attempt(status, f"redirect ({status}) not followed")
                return Attempt(status, None if 200 <= status < 300 else f"receiver answered {status}")
    except (TimeoutError, aiohttp.ClientError) as exc:
        return Attempt(None, _describe(exc))
    return Attempt(None, error)


def _new_session() -> aiohttp.ClientSession:
    # No cookies and no proxies from the environment: each delivery is independent and goes direct.
    return aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(), trust_env=False)


class WebhookDispatcher:
    """Writes events to the outbox and delivers them from a background task (one per process).

    Contract: `emit` is durable once it returns and never waits for delivery. `close()` lets an in-flight
    attempt finish for a moment, then cancels it; whatever is undelivered stays in the outbox and is
    delivered by the next `start()` (of this process or any replica sharing the store).
    """

    def __init__(
        self,
        store: Store,
        webhooks: Sequence[WebhookConfig],
        session: aiohttp.ClientSession | None = None,
        *,
        resolve: Resolver | None = None,
        max_attempts: int = 12,
        base_delay_s: float = 1.0,
        cap_delay_s: float = 3600,
        poll_s: float = 1.0,
        clock: Callable[[], float] = time.time,
        lease_s: float = 30.0,
        timeout_s: float = TIMEOUT_S,
        batch: int = 50,
        close_grace_s: float = CLOSE_GRACE_S,
    ) -> None:
        self._store = store
        self._webhooks = {w.name: w for w in webhooks}
        self._session = session
        self._own_session = session is None
        self._resolve = resolve
        self._max_attempts = max_attempts
        self._base_delay_s, self._cap_delay_s = base_delay_s, cap_delay_s
        self._poll_s, self._clock, self._lease_s = poll_s, clock, lease_s
        self._timeout_s, self._batch, self._close_grace_s = timeout_s, batch, close_grace_s
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._next_due: float | None = None  # earliest retry this process scheduled (sleep no longer)

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    def configure(self, webhooks: Sequence[WebhookConfig]) -> None:
        """New receivers from a config reload; queued items of a removed webhook fail on their next attempt."""
        self._webhooks = {w.name: w for w in webhooks}

    async def start(self) -> None:
        if self._task is not None:
            return
        if self._session is None:
            self._session = _new_session()
        self._closing = False
        self._task = asyncio.create_task(self._run(), name="webhook-dispatcher")

    async def close(self) -> None:
        self._closing = True
        self._wake.set()
        task, self._task = self._task, None
        if task is not None:
            # TimeoutError: still busy after the grace period; any other error is logged just below.
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(task), self._close_grace_s)
            if task.done() and not task.cancelled() and task.exception() is not None:
                log.warning("webhook dispatcher stopped on %s", type(task.exception()).__name__)
            if not task.done():
                # An attempt cut short keeps its lease; the item is claimed again once the lease ends.
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def emit(self, event_type: str, data: Mapping[str, Any]) -> list[str]:
        """Queue one delivery per webhook subscribed to `event_type`; returns the outbox ids."""
        body = event_body(event_type, data, self._clock())  # first: an unknown event type raises ValueError
        subscribers = [w.name for w in self._webhooks.values() if event_type in w.events]
        if not subscribers:
            return []
        ids = await outbox.enqueue(self._store, [(name, event_type, body) for name in subscribers], self._now())
        self._wake.set()
        return ids

    async def _run(self) -> None:
        while not self._closing:
            # Cleared before claiming: an emit landing after the claim sets it again, so no wake-up is lost.
            self._wake.clear()
            try:
                items = await outbox.claim_due(self._store, self._now(), self._batch, self._lease_s)
            except Exception as exc:  # store down: keep polling, the outbox keeps the items
                log.warning("webhook outbox claim failed: %s", type(exc).__name__)
                items = []
            if items:
                limit = asyncio.Semaphore(SEND_CONCURRENCY)
                await asyncio.gather(*(self._deliver_guarded(item, limit) for item in items))
                if len(items) == self._batch:
                    continue
            await self._sleep()

    async def _sleep(self) -> None:
        timeout = self._poll_s
        if self._next_due is not None:
            timeout = max(0.0, min(timeout, self._next_due - self._clock()))
            self._next_due = None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)

    async def _deliver_guarded(self, item: outbox.OutboxItem, limit: asyncio.Semaphore) -> None:
        async with limit:
            if self._closing:
                return  # not started: the lease runs out and the next start delivers it
            try:
                await self._deliver(item)
            except Exception as exc:  # one bad item never stops the worker
                log.warning("webhook delivery failed", extra={"outbox_id": item.id, "webhook": item.webhook,
                                                              "error": type(exc).__name__})

    async def _deliver(self, item: outbox.OutboxItem) -> None:
        webhook = self._webhooks.get(item.webhook)
        started = time.monotonic()
        if webhook is None:
            result = Attempt(None, f"webhook {item.webhook!r} is no longer configured", refused=True)
        else:
            assert self._session is not None
            result = await post_once(self._session, webhook, item.id, item.body, now=self._clock(),
                                     resolve=self._resolve, timeout_s=self._timeout_s)
        duration_ms = int((time.monotonic() - started) * 1000)
        attempt = item.attempts + 1
        next_at: datetime | None = None
        final: outbox.FinalStatus
        if result.status is not None and 200 <= result.status < 300:
            final = "delivered"
        elif result.refused or not should_retry(result.status) or attempt >= self._max_attempts:
            final = "failed"
        else:
            final = "pending"
            delay = retry_delay(attempt, base_s=self._base_delay_s, cap_s=self._cap_delay_s)
            next_at = self._now() + timedelta(seconds=delay)
            due = self._clock() + delay
            self._next_due = due if self._next_due is None else min(self._next_due, due)
        await outbox.record_attempt(self._store, item, status=result.status, error=result.error,
                                    duration_ms=duration_ms, now=self._now(), next_attempt_at=next_at,
                                    final_status=final)
        log.info("webhook %s attempt %d to %s: %s (%s)", item.id, attempt, item.webhook, final,
                 result.status if result.status is not None else result.error, extra={"outbox_id": item.id, "webhook": item.webhook, "attempt": attempt,
                                           "status": result.status, "outcome": final, "error": result.error})


async def send_test(webhooks: Iterable[WebhookConfig], name: str, *, resolve: Resolver | None = None,
                    session: aiohttp.ClientSession | None = None,
                    timeout_s: float = TIMEOUT_S) -> tuple[int | None, str | None]:
    """Send one signed sample `budget.threshold` event to webhook `name` now (no outbox, no retry)."""
    webhook = next((w for w in webhooks if w.name == name), None)
    if webhook is None:
        return None, f"no webhook named {name!r} in config.yaml"
    now = time.time()
    body = event_body("budget.threshold", SAMPLE_DATA, now)
    msg_id = f"msg_test_{secrets.token_hex(8)}"
    own = session is None
    client = session or _new_session()
    try:
        result = await post_once(client, webhook, msg_id, body, now=now, resolve=resolve, timeout_s=timeout_s)
    finally:
        if own:
            await client.close()
    log.info("webhook test", extra={"outbox_id": msg_id, "webhook": name, "status": result.status})
    return result.status, result.error
