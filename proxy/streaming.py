"""Relays an SSE stream to the client event by event, metering it, and records the call however it ends:
completed, provider failure mid-stream, client hang-up (the provider call is aborted at once) or cancellation."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson
from starlette.types import Receive, Scope, Send

from policies.errors import LedgerUnavailable
from pricing.money import format_usd
from proxy.errors import ProxyError, error_body
from proxy.metering import StreamMeter
from proxy.sse import comment
from proxy.upstreams.base import ENDPOINT_PATHS

if TYPE_CHECKING:
    from proxy.call import Call

log = logging.getLogger(__name__)

class MeteredStream:
    """An ASGI response (Starlette accepts any callable with this shape) for one metered stream."""

    def __init__(self, call: Call, upstream: Any, headers: dict[str, str]) -> None:
        self.call = call
        self.upstream = upstream
        self.headers = {**upstream.headers, **headers, "cache-control": "no-cache"}
        self.headers.setdefault("content-type", "text/event-stream")
        self.meter = StreamMeter(anthropic=call.anthropic,
                                 strip_usage_chunk=call.endpoint in ("chat", "completions")
                                 and not call.client_wants_usage)
        self.client_gone = False
        self._row: Any = None
        self.on_done: Callable[[], None] | None = None
        self.started = time.perf_counter()  # when the request arrived (set by the relay)
        self._first_byte = False
        # A stream may outlive `reservation_ttl_s`: its reservation is renewed while it runs.
        self._renew_every = call.services.engine.reservation_ttl_s / 3
        self._renew_at = time.monotonic() + self._renew_every

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        watcher = asyncio.ensure_future(self._watch_disconnect(receive))
        status, error = "ok", None
        try:
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(k.encode(), v.encode()) for k, v in self.headers.items()]})
            async for chunk in self.upstream.chunks():
                await self._relay(self.meter.feed(chunk), send)
                if self.client_gone:
                    break
            else:
                await self._relay(self.meter.tail(), send)  # a last event without its blank line
            if not self.meter.finished and not self.client_gone:
                status, error = "error", "the provider ended the stream before its final event"
        except ProxyError as err:
            if self.client_gone:  # our own abort of the provider call, not a provider failure
                status, error = "cancelled", "client disconnected mid-stream"
            else:
                status, error = "error", err.code
                await send({"type": "http.response.body", "body": self._error_event(err), "more_body": True})
        except asyncio.CancelledError:
            status, error = "cancelled", "request task cancelled"
            raise
        finally:
            watcher.cancel()
            self.upstream.close()
            if self.client_gone and status == "ok" and not self.meter.finished:
                status, error = "cancelled", "client disconnected mid-stream"
            try:
                if not self.meter.finished or status != "ok":
                    await self._record(status, error)
            finally:
                if self.on_done is not None:
                    self.on_done()
                self.call.services.metrics.request(ENDPOINT_PATHS[self.call.endpoint], 200, self.call.deployment,
                                                   time.perf_counter() - self.started)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    @property
    def completed(self) -> bool:
        """The stream reached its terminal event and the client was there for all of it."""
        return self._row is not None and self._row.status == "ok" and not self.client_gone

    async def _relay(self, out: bytes, send: Send) -> None:
        if not out:
            return
        if self.call.admission is not None and time.monotonic() >= self._renew_at:
            await self._renew()
        if self.meter.finished and self._row is None:
            out = await self._finish(out)
        await send({"type": "http.response.body", "body": out, "more_body": True})
        if not self._first_byte:
            self._first_byte = True
            self.call.services.metrics.stream_started(ENDPOINT_PATHS[self.call.endpoint], self.call.deployment,
                                                      time.perf_counter() - self.started)

    async def _renew(self) -> None:
        self._renew_at = time.monotonic() + self._renew_every
        assert self.call.admission is not None
        started = time.perf_counter()
        try:
            await self.call.services.engine.renew(self.call.admission)
        except LedgerUnavailable:
            log.error("could not renew a live stream's reservation", extra={"request_id": self.call.request_id})
        finally:
            self.call.services.metrics.ledger("renew", time.perf_counter() - started)

    async def _watch_disconnect(self, receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.client_gone = True
                self.upstream.close()  # stop the provider's generation, and so the spend, at once
                return

    async def _finish(self, block: bytes) -> bytes:
        """The stream reached its terminal event: record the call, then send the cost comment before it."""
        row = await self._record("ok", None)
        note = comment(f"spendgate cost_usd={format_usd(row.cost_nano)} request_id={self.call.request_id}")
        cut = self.meter.terminal_offset
        if cut < 0:
            return block + note
        return block[:cut] + note + block[cut:]

    async def _record(self, status: str, error: str | None) -> Any:
        if self._row is not None:
            return self._row
        usage, source = self.meter.usage, "provider"
        if usage is None:
            usage = await self.call.estimate(self.meter.generated_text(), self.meter.fields)
            source = "estimated"
        row = self.call.row(status=status, http_status=200, usage=usage, source=source, error=error)
        self._row = row
        await self.call.record(row)
        return row

    def _error_event(self, err: ProxyError) -> bytes:
        data = orjson.dumps(error_body(err, "anthropic" if self.call.anthropic else "openai"))
        prefix = b"event: error\n" if self.call.anthropic else b""
        return prefix + b"data: " + data + b"\n\n"
