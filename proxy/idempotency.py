"""`Idempotency-Key`: copies of one proxied request (retries, or the same call from two replicas) make one
upstream call and one usage row, and all get the first copy's answer, byte for byte.

Scope (org, key name, header value) for 24 h; fingerprint sha256(endpoint path, raw body). This response cache
is the one place spendgate keeps a completion: in the ledger's Redis (or this process's memory), never in SQL.
See docs/idempotency.md.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from proxy.call import new_request_id
from proxy.errors import (
    ErrorResponse,
    Family,
    IdempotencyInProgress,
    IdempotencyKeyReused,
    InvalidRequest,
    ProxyError,
    ServiceUnavailable,
    error_response,
)
from proxy.requests import read_body
from proxy.streaming import MeteredStream
from proxy.upstreams.base import ANTHROPIC_ENDPOINTS, ENDPOINT_PATHS, Endpoint

if TYPE_CHECKING:
    from proxy.services import Services

from proxy.idempotency_store import (
    MAX_KEY_CHARS,
    Claimed,
    Done,
    IdempotencyStore,
    InFlight,
    StoredResponse,
    StoreUnavailable,
    entry_key,
    fingerprint,
    valid_key,
)

log = logging.getLogger(__name__)

RESULT_TTL_S = 86_400  # a stored answer is replayed for 24 h
LEASE_TTL_S = 30.0  # the first copy's claim; renewed while it runs, so only a dead owner's lease lapses
RENEW_EVERY_S = 10.0
WAIT_MARGIN_S = 30.0  # copies wait up to server.upstream_read_timeout_s + this for the first one
_POLL_FIRST_S, _POLL_MAX_S = 0.02, 0.25
# Set again by whoever serves a replay (or meaningless on one): never stored.
_NOT_KEPT = frozenset({b"content-length", b"date", b"server", b"transfer-encoding", b"connection", b"keep-alive"})


# --- the request flow --------------------------------------------------------------------------------------

Inner = Callable[[Request, Endpoint, dict[str, str]], Awaitable["Response | MeteredStream | RecordedStream"]]


async def idempotent(request: Request, endpoint: Endpoint, headers: dict[str, str], value: str,
                     inner: Inner) -> Response | MeteredStream | RecordedStream:
    """Serve a proxied request that carries `Idempotency-Key: value`; `inner` is the usual flow."""
    services: Services = request.app.state.services
    family: Family = "anthropic" if endpoint in ANTHROPIC_ENDPOINTS else "openai"
    try:
        principal = services.keys.authenticate(headers)
    except ProxyError:
        return await inner(request, endpoint, headers)  # the usual 401, shaped and counted as usual
    started = time.perf_counter()
    try:
        if not valid_key(value):
            raise InvalidRequest(f"Idempotency-Key must be 1 to {MAX_KEY_CHARS} printable ASCII characters",
                                 param="Idempotency-Key")
        raw = await read_body(request, services.settings.server.max_body_bytes, headers.get("content-length"))
    except ProxyError as err:
        return _answered(services, endpoint, started, error_response(err, family, new_request_id()))
    replayable = Request(request.scope, _replaying(raw, request.receive))
    key, mine = entry_key(principal.org, principal.key_name, value), fingerprint(endpoint, raw)
    owner = secrets.token_hex(16)
    try:
        stored = await _turn(services, key, mine, owner)
    except ProxyError as err:
        return _answered(services, endpoint, started, error_response(err, family, new_request_id()))
    except StoreUnavailable as exc:
        log.error("idempotency store unavailable; serving without idempotency (ledger.on_unavailable: allow)",
                  extra={"error": str(exc)})
        return await inner(replayable, endpoint, headers)
    if stored is None:
        lease = _Lease(services.idempotency, key, mine, owner)
        return await _run_as_owner(lease, replayable, endpoint, headers, inner)
    log.info("idempotent replay", extra={"status": stored.status})
    return _answered(services, endpoint, started, replay(stored))


async def _turn(services: Services, key: str, mine: str, owner: str) -> StoredResponse | None:
    """The stored answer to replay, or None once this copy owns the key (it runs the call). While a copy
    with the same body runs, waits for its answer, or to take over if it ends without one."""
    deadline = time.monotonic() + services.settings.server.upstream_read_timeout_s + WAIT_MARGIN_S
    pause = _POLL_FIRST_S
    while True:
        try:
            claim = await services.idempotency.claim(key, mine, owner, LEASE_TTL_S)
        except StoreUnavailable:
            if services.settings.ledger.on_unavailable == "allow":
                raise
            raise ServiceUnavailable("the idempotency store (the ledger's Redis) is unreachable; "
                                     "retry shortly") from None
        match claim:
            case Claimed():
                return None
            case Done(fingerprint=fp, response=stored) if fp == mine and stored is not None:
                return stored
            case Done(fingerprint=fp) | InFlight(fingerprint=fp) if fp != mine:
                raise IdempotencyKeyReused("this Idempotency-Key was used with a different request body or "
                                           "endpoint; use a new key for a new request", param="Idempotency-Key")
        if time.monotonic() >= deadline:
            raise IdempotencyInProgress("a request with this Idempotency-Key is still in progress; retry later",
                                        headers={"retry-after": "1"})
        await asyncio.sleep(pause)
        pause = min(pause * 1.5, _POLL_MAX_S)


def replay(stored: StoredResponse) -> Response:
    """A stored answer as it was first sent (a stream's transcript in one body), marked as a replay."""
    response = Response(stored.body, status_code=stored.status)
    response.raw_headers = [*stored.headers, *response.raw_headers, (b"idempotent-replayed", b"true")]
    return response


def _answered(services: Services, endpoint: Endpoint, started: float, response: Response) -> Response:
    services.metrics.request(ENDPOINT_PATHS[endpoint], response.status_code, None, time.perf_counter() - started)
    return response


async def _run_as_owner(lease: _Lease, request: Request, endpoint: Endpoint, headers: dict[str, str],
                        inner: Inner) -> Response | MeteredStream | RecordedStream:
    try:
        reply = await inner(request, endpoint, headers)
    except BaseException:
        await asyncio.shield(lease.finish(None))
        raise
    if isinstance(reply, MeteredStream):
        return RecordedStream(reply, lease)
    await asyncio.shield(lease.finish(_definitive(reply, lease.store.max_response_bytes)
                                      if isinstance(reply, Response) else None))
    return reply


def _definitive(reply: Response, cap: int) -> StoredResponse | None:
    """The answer to keep: 2xx, or the provider's own 4xx other than 408/409/429. spendgate's own errors
    (refusals, rate limits, upstream failures) and provider 5xx are not kept: a retry runs the call again."""
    status = reply.status_code
    if isinstance(reply, ErrorResponse) or status >= 500 or status in (408, 409, 429):
        return None
    kept = _kept(reply.raw_headers)
    return StoredResponse(status, kept, bytes(reply.body)) if len(reply.body) <= cap else None


def _kept(headers: list[tuple[bytes, bytes]]) -> tuple[tuple[bytes, bytes], ...]:
    return tuple((k.lower(), v) for k, v in headers if k.lower() not in _NOT_KEPT)


def _replaying(raw: bytes, receive: Receive) -> Receive:
    """The request's receive, giving the body (already read here) once more to the usual flow."""
    pending = True

    async def replaying() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": raw, "more_body": False}
        return await receive()

    return replaying


class _Lease:
    """The first copy's hold on its key: renewed while the call runs, then completed or released."""

    def __init__(self, store: IdempotencyStore, key: str, fingerprint: str, owner: str) -> None:
        self.store, self.key, self.fingerprint, self.owner = store, key, fingerprint, owner
        self._renewer = asyncio.create_task(self._renew())

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(RENEW_EVERY_S)
            try:
                if not await self.store.renew(self.key, self.owner, LEASE_TTL_S):
                    log.warning("idempotency lease lost while the call ran (another copy may run it too)")
                    return
            except StoreUnavailable as exc:
                log.warning("could not renew an idempotency lease", extra={"error": str(exc)})

    async def finish(self, answer: StoredResponse | None) -> None:
        """Keep a definitive answer under the key, or free the key for the client's retry."""
        self._renewer.cancel()
        try:
            stored = answer is not None and await self.store.complete(
                self.key, self.fingerprint, self.owner, answer, RESULT_TTL_S)
            if not stored:
                await self.store.release(self.key, self.owner)
        except StoreUnavailable as exc:  # the call itself is done; its copies will take over when the lease lapses
            log.error("could not store an idempotent answer", extra={"error": str(exc)})


class RecordedStream:
    """The first copy's live stream: relayed exactly as usual while its transcript is kept, then stored if
    it completed (terminal event reached, client there to the end) or the key freed if it did not."""

    def __init__(self, stream: MeteredStream, lease: _Lease) -> None:
        self.stream, self.lease = stream, lease

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        cap = self.lease.store.max_response_bytes
        status, size = 200, 0
        headers: list[tuple[bytes, bytes]] = []
        parts: list[bytes] = []

        async def tee(message: Message) -> None:
            nonlocal status, headers, size
            if message["type"] == "http.response.start":
                status, headers = message["status"], list(message.get("headers", ()))
            elif size <= cap:
                body = message.get("body", b"")
                parts.append(body)
                size += len(body)
            await send(message)

        answer = None
        try:
            await self.stream(scope, receive, tee)
            if self.stream.completed and size <= cap:
                answer = StoredResponse(status, _kept(headers), b"".join(parts))
        finally:
            await asyncio.shield(self.lease.finish(answer))
