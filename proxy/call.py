"""One proxied call in flight: its tags, route and body, and how it becomes its stored row."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import random
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import orjson

from policies.attribution import Attribution
from policies.engine import Admission
from pricing.cost import cost_nano
from pricing.usage import Usage
from proxy.metering import estimate_usage
from proxy.services import Services
from proxy.store.journal import JournalError
from proxy.store.records import CallRecord
from proxy.upstreams.base import ANTHROPIC_ENDPOINTS, ENDPOINT_PATHS, Deployment, Endpoint

log = logging.getLogger(__name__)


def new_request_id() -> str:
    # 128 random bits, like a uuid4. Request ids must be unique, not secret: the stdlib generator (seeded
    # from os.urandom, reseeded in forked children) costs ~0.3 us where os.urandom costs ~8 us here.
    return f"sg-{random.getrandbits(128):032x}"


@dataclass(slots=True)
class Call:
    """The state of one call while it is in flight; `record()` turns it into the stored row."""

    services: Services
    endpoint: Endpoint
    request_id: str
    started_at: datetime
    attribution: Attribution
    deployment: Deployment
    body: dict[str, Any]
    stream: bool
    client_wants_usage: bool = False
    raw: bytes = b""  # `body` as it goes on the wire
    admission: Admission | None = None  # the call's reservation on its budgets, if any matched
    enforcement: str | None = None  # "bypassed": the ledger was unreachable and on_unavailable is allow
    headers_out: dict[str, str] = field(default_factory=dict)  # budget warnings, clamping, rate limits
    tpm: int | None = None  # the key's tokens-per-minute limit: each row's tokens are charged to it

    def prepare(self, raw: bytes, changed: bool) -> None:
        """Point the body at this deployment's upstream model; serialise again only if anything changed."""
        if self.body["model"] != self.deployment.upstream_model:
            self.body["model"] = self.deployment.upstream_model
            changed = True
        self.raw = orjson.dumps(self.body) if changed else raw

    def retry_on(self, deployment: Deployment) -> Call:
        """The next attempt of this call on another deployment: a new request id that records `retry_of`."""
        body = dict(self.body)
        nxt = Call(self.services, self.endpoint, new_request_id(), datetime.now(UTC),
                   replace(self.attribution, retry_of=self.request_id), deployment, body, self.stream,
                   self.client_wants_usage, admission=self.admission, enforcement=self.enforcement,
                   headers_out=self.headers_out, tpm=self.tpm)
        nxt.prepare(self.raw, False)
        return nxt

    @property
    def anthropic(self) -> bool:
        return self.endpoint in ANTHROPIC_ENDPOINTS

    def cost(self, usage: Usage) -> int:
        price = self.deployment.price
        return cost_nano(usage, price) if price is not None else 0

    async def estimate(self, generated: str, reported: dict[str, int] | None = None) -> Usage:
        """Count with tiktoken when the provider did not say. Off the event loop: the encoding may still have
        to load, and a prompt may be megabytes."""
        return await asyncio.to_thread(
            estimate_usage, self.services.counter, endpoint=self.endpoint, body=self.body,
            model=self.deployment.upstream_model, generated=generated, reported=reported)

    def row(self, *, status: str, http_status: int, usage: Usage | None, source: str,
            error: str | None = None) -> CallRecord:
        usage = usage or Usage()
        a = self.attribution
        price = self.deployment.price
        return CallRecord(
            request_id=self.request_id, started_at=self.started_at, ended_at=datetime.now(UTC),
            status=status, http_status=http_status, org=a.org, endpoint=ENDPOINT_PATHS[self.endpoint],
            provider=self.deployment.provider, model=self.deployment.requested,
            upstream_model=self.deployment.upstream_model, project=a.project, agent=a.agent,
            station=a.station, run=a.run, issue=a.issue, actor=a.actor, retry_of=a.retry_of, key_name=a.key,
            input_tokens=usage.input_tokens, cached_input_tokens=usage.cached_input_tokens,
            cache_write_tokens=usage.cache_write_tokens, output_tokens=usage.output_tokens,
            reasoning_tokens=usage.reasoning_tokens, cost_nano=self.cost(usage), usage_source=source,
            stream=self.stream, catalog_version=self.services.catalog.version if price else "unpriced",
            error=error, enforcement=self.enforcement,
        )

    async def cancelled_row(self, reason: str) -> CallRecord:
        """The request was sent, so the provider may bill the prompt: charge it, estimated (never $0)."""
        return self.row(status="cancelled", http_status=499, usage=await self.estimate(""), source="estimated",
                        error=reason)

    async def record(self, row: CallRecord, *, final: bool = True) -> None:
        """Journal the row, then (for the call's last attempt) settle its reservation to the row's cost:
        0 for a call that failed, the prompt and what was generated for one cut short.

        Shielded as one task: a request task cancelled at any point of this (a hang-up, a shutdown) still gets
        its row journaled, its tokens charged and its spend booked; the caller hears the cancellation after.
        The task runs outside this call's context: the journal may start its long-lived group-commit task from
        it, and that task's log lines must not carry this call's request id."""
        self.services.metrics.call(row, self.deployment)
        booking = asyncio.get_running_loop().create_task(self._book(row, final), context=contextvars.Context())
        await asyncio.shield(booking)

    async def _book(self, row: CallRecord, final: bool) -> None:
        try:
            await self.services.writer.record(row)
        except JournalError as exc:
            # The row is still queued for SQL; only its crash-safety is lost. The call itself succeeded.
            log.error("journal append failed", extra={"request_id": row.request_id, "error": str(exc)})
        steps = []
        tokens = row.input_tokens + row.output_tokens
        if self.tpm is not None and tokens:
            # Awaited, so the key's next call already sees the debt. Never raises (the row is stored).
            a = self.attribution
            steps.append(self.services.limiter.charge(a.org, a.key, self.tpm, tokens))
        if final and self.admission is not None:
            steps.append(self.services.settle(self.admission, row.cost_nano))
        if len(steps) == 1:
            await steps[0]
        elif steps:
            await asyncio.gather(*steps)
