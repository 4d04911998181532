"""One proxied call end to end: authenticate, attribute, route, forward, relay, meter, price, record."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime
from time import perf_counter
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from policies.engine import Admission
from pricing.money import format_usd
from pricing.usage import Usage
from proxy.admission import ApprovalDenied, ApprovalRequired, BudgetExceeded
from proxy.attribution import attribute
from proxy.call import Call, new_request_id
from proxy.errors import Family, Forbidden, ProxyError, ServiceUnavailable, error_response
from proxy.gate import gate, regate
from proxy.idempotency import RecordedStream, idempotent
from proxy.logs import REQUEST_ID
from proxy.metering import generated_text_from_json, usage_from_json
from proxy.requests import check_body, forwarded_headers, parse_json_object, read_body
from proxy.services import Services
from proxy.streaming import MeteredStream
from proxy.upstreams.base import ANTHROPIC_ENDPOINTS, ENDPOINT_PATHS, Deployment, Endpoint, UpstreamRequest

# Endpoints where a stream carries usage only when asked with stream_options.include_usage.
_ASK_FOR_USAGE = frozenset({"chat", "completions"})


def header_map(request: Request) -> dict[str, str]:
    """The request headers as one dict, built once (Starlette's Headers scans its list on every get)."""
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in request.scope["headers"]}


Reply = Response | MeteredStream | RecordedStream  # what a proxied route answers: all are ASGI callables


async def handle(request: Request, endpoint: Endpoint) -> Reply:
    headers = header_map(request)
    idempotency_key = headers.get("idempotency-key")
    if idempotency_key is not None:  # retries made safe: proxy/idempotency.py (the hot path pays this lookup)
        return await idempotent(request, endpoint, headers, idempotency_key, _handle)
    return await _handle(request, endpoint, headers)


async def _handle(request: Request, endpoint: Endpoint, headers: dict[str, str]) -> Reply:
    services: Services = request.app.state.services
    request_id = new_request_id()
    # Every log line of this call carries its id (proxy/logs.py), the app's error handler's too: it stays set
    # until the request's task ends.
    REQUEST_ID.set(request_id)
    started = perf_counter()
    family: Family = "anthropic" if endpoint in ANTHROPIC_ENDPOINTS else "openai"
    services.begin_call()
    call: Call | None = None
    status = 500  # an exception nobody expected: the app's handler answers 500
    handed_off = False
    hangup: _Hangup | None = None
    try:
        try:
            call, chain, raw, changed = await _begin(services, request, headers, endpoint, request_id)
            hangup = _Hangup(request)  # after the body is read: from here on, receive() only tells of a hang-up
            await _admit(call, chain, raw, changed, headers, hangup)
        except ProxyError as err:
            status = err.status
            return error_response(err, family, request_id)
        query = request.scope.get("query_string", b"").decode("latin-1")
        try:
            call, response = await _forward(call, chain, query, headers, family, hangup)
        except Exception:
            # A failure no path above expected: give the reservation back now rather than at its expiry.
            if call.admission is not None:
                with contextlib.suppress(Exception):  # the original failure is the one to report
                    await asyncio.shield(_release(services, call.admission))
            raise
        if isinstance(response, MeteredStream):
            # The stream records its row, its metrics and the end of the call when it ends.
            response.started, response.on_done = started, services.end_call
            handed_off = True
        else:
            status = response.status_code
        return response
    except asyncio.CancelledError:
        status = 499  # the client went away before an answer (its row is recorded)
        if hangup is not None and hangup.absorb():
            return Response(status_code=499)
        raise
    finally:
        if hangup is not None:
            hangup.close()
        if not handed_off:
            services.end_call()
            services.metrics.request(ENDPOINT_PATHS[endpoint], status, call.deployment if call else None,
                                     perf_counter() - started)


class _Hangup:
    """A client that hangs up while its call waits on the provider cancels that wait (DESIGN, Disconnects): the
    upstream call is aborted at once and recorded as cancelled (its prompt charged), instead of running on
    until the provider answers or the read timeout ends it, with its reservation held all along.

    Only the waits on the provider are cancelled (`waiting()`): a cancellation anywhere else (say between a
    reserve and its bookkeeping) could leave a reservation open. Once the row is recorded, `absorb()` turns the
    cancellation into a quiet 499 instead of an exception uvicorn would log as an application error."""

    __slots__ = ("task", "armed", "fired", "_watcher")

    def __init__(self, request: Request) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.task, self.armed, self.fired = task, False, False
        self._watcher = asyncio.ensure_future(self._watch(request))

    async def _watch(self, request: Request) -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        self.fired = True
        if self.armed:
            self.task.cancel()

    @contextlib.contextmanager
    def waiting(self) -> Iterator[None]:
        if self.fired:  # gone already: the next await is cancelled
            self.task.cancel()
        self.armed = True
        try:
            yield
        finally:
            self.armed = False

    def absorb(self) -> bool:
        """True (and the cancellation undone) if this hang-up caused the task's cancellation."""
        if self.fired and self.task.cancelling():
            self.task.uncancel()
            return True
        return False

    def close(self) -> None:
        self._watcher.cancel()


async def _release(services: Services, admission: Admission) -> None:
    started = perf_counter()
    try:
        await services.engine.release(admission)
    finally:
        services.metrics.ledger("release", perf_counter() - started)


async def _begin(services: Services, request: Request, headers: dict[str, str], endpoint: Endpoint,
                 request_id: str) -> tuple[Call, tuple[Deployment, ...], bytes, bool]:
    """Authenticate, read, attribute and route: the call, its fallback chain, its raw body, and whether the
    body was changed already."""
    if services.draining:
        raise ServiceUnavailable("spendgate is shutting down; retry against another replica")
    started = datetime.now(UTC)
    principal = services.keys.authenticate(headers)
    # Per-key rate limits before the body is even read: an over-limit key costs almost nothing. Keys without
    # limits pay one dict miss, no round trip.
    limits = services.limiter.limits_for(services.settings, principal.key_name)
    rate = None
    if limits is not None:
        rate = await services.limiter.admit(principal.org, principal.key_name, limits,
                                            tokens=endpoint != "count_tokens")
    raw = await read_body(request, services.settings.server.max_body_bytes, headers.get("content-length"))
    body = parse_json_object(raw)
    check_body(endpoint, body)
    attribution, changed = attribute(principal, headers, body)
    if not principal.may_use(body["model"]):
        raise Forbidden(f"this key may not use model {body['model']!r}")
    chain = _servable(services, services.router.resolve(body["model"]), endpoint)
    stream = body.get("stream") is True and endpoint != "embeddings"
    options = body.get("stream_options")
    wants_usage = isinstance(options, dict) and options.get("include_usage") is True
    if stream and endpoint in _ASK_FOR_USAGE and not wants_usage:
        # Ask the provider for usage; the extra chunk is stripped again before the client sees it.
        body["stream_options"] = {**(options or {}), "include_usage": True}
        changed = True
    call = Call(services, endpoint, request_id, started, attribution, chain[0], body, stream, wants_usage)
    if rate is not None:
        call.headers_out.update(rate.headers())
        call.tpm = rate.tpm  # each of its rows' tokens are charged to the key's bucket
    return call, chain, raw, changed


async def _admit(call: Call, chain: tuple[Deployment, ...], raw: bytes, changed: bool,
                 headers: dict[str, str], hangup: _Hangup) -> None:
    """The budget gate (a refusal is recorded as a row, then raised), then the body as it goes upstream."""
    if call.services.engine.budgets and call.endpoint != "count_tokens":  # counting tokens is free: no gate
        try:
            changed = await gate(call, raw, chain, headers.get("x-spendgate-approval"),
                                 while_held=hangup.waiting) or changed
        except (BudgetExceeded, ApprovalRequired, ApprovalDenied) as refused:
            await call.record(call.row(status="refused", http_status=402, usage=None, source="provider",
                                       error=refused.code))
            raise
        except asyncio.CancelledError:
            if hangup.fired:  # the client left while its call waited for an admin's approval
                await call.record(call.row(status="cancelled", http_status=499, usage=None, source="provider",
                                           error="the client left while the call waited for approval"))
            raise
    call.prepare(raw, changed)


def _servable(services: Services, chain: tuple[Deployment, ...], endpoint: Endpoint) -> tuple[Deployment, ...]:
    """The chain less the deployments that cannot serve this endpoint; refused early if none can."""
    usable: list[Deployment] = []
    first_error: ProxyError | None = None
    for deployment in chain:
        try:
            services.upstream_for(deployment, endpoint)
        except ProxyError as err:
            first_error = first_error or err
            continue
        usable.append(deployment)
    if not usable:
        assert first_error is not None
        raise first_error
    return tuple(usable)


def _retryable(status: int) -> bool:
    """Failures worth another deployment: the provider is down, overloaded or rate-limiting us."""
    return status in (408, 429, 529) or 500 <= status < 600


async def _forward(call: Call, chain: tuple[Deployment, ...], query: str, headers: dict[str, str],
                   family: Family, hangup: _Hangup) -> tuple[Call, Response | MeteredStream]:
    """Try the chain in order; every failed attempt is its own row, and the next one records `retry_of`.
    Returns the last attempt and its answer."""
    forwarded = forwarded_headers(headers)
    for attempt, deployment in enumerate(chain):
        if attempt:
            previous, call = call.deployment, call.retry_on(deployment)
            REQUEST_ID.set(call.request_id)  # the log lines of this attempt carry its own id
            if deployment.provider != previous.provider:
                try:
                    if await regate(call, previous, chain[attempt:]):
                        call.prepare(call.raw, True)
                except (BudgetExceeded, ApprovalRequired, ApprovalDenied) as refused:
                    await call.record(call.row(status="refused", http_status=402, usage=None, source="provider",
                                               error=refused.code))
                    return call, error_response(refused, family, call.request_id)
                except ProxyError as err:  # the ledger is unreachable (block)
                    return call, error_response(err, family, call.request_id)
        last = attempt == len(chain) - 1
        upstream = call.services.upstream_for(deployment, call.endpoint)
        upstream_request = UpstreamRequest(
            endpoint=call.endpoint, deployment=deployment, body=call.body, raw=call.raw, stream=call.stream,
            query=query, headers=forwarded, request_id=call.request_id,
        )
        try:
            with hangup.waiting():
                resp = await upstream.open(upstream_request)
        except ProxyError as err:
            retry = not last and _retryable(err.status)
            await call.record(call.row(status="error", http_status=err.status, usage=None, source="provider",
                                       error=err.code), final=not retry)
            if retry:
                continue
            return call, error_response(err, family, call.request_id)
        except asyncio.CancelledError:
            await call.record(await call.cancelled_row("cancelled before the provider answered"))
            raise
        if not last and _retryable(resp.status):
            await _discard(call, resp)
            continue
        ours = {"x-spendgate-request-id": call.request_id, **call.headers_out}
        # A provider that answers a stream request with plain JSON (some ignore `stream`) is read whole.
        is_sse = resp.headers.get("content-type", "").startswith("text/event-stream")
        if resp.status >= 400 or not call.stream or not is_sse:
            return call, await _finish_whole(call, resp, ours, family, hangup)
        return call, MeteredStream(call, resp, ours)
    raise AssertionError("unreachable: the chain is never empty")


async def _discard(call: Call, resp: Any) -> None:
    """A failed attempt that will be retried elsewhere: read its error (for the connection's sake) and record it."""
    try:
        await resp.read()
    except ProxyError:
        pass
    except asyncio.CancelledError:
        await call.record(await call.cancelled_row("cancelled while a failed attempt was read"))
        raise
    finally:
        resp.close()
    await call.record(call.row(status="error", http_status=resp.status, usage=None, source="provider",
                               error=f"provider answered {resp.status}; retried on the next deployment"),
                      final=False)  # the reservation carries over to the next attempt


async def _finish_whole(call: Call, resp: Any, ours: dict[str, str], family: Family, hangup: _Hangup) -> Response:
    try:
        with hangup.waiting():
            body = await resp.read()
    except asyncio.CancelledError:
        await call.record(await call.cancelled_row("cancelled while the provider was answering"))
        raise
    except ProxyError as err:
        await call.record(call.row(status="error", http_status=err.status, usage=None, source="provider",
                                   error=err.code))
        return error_response(err, family, call.request_id)
    finally:
        resp.close()
    headers = {**resp.headers, **ours}
    if resp.status >= 400:
        # The provider refused: nothing was generated, nothing is charged; its answer passes through as is.
        await call.record(call.row(status="error", http_status=resp.status, usage=None, source="provider",
                                   error=f"provider answered {resp.status}"))
        return Response(body, status_code=resp.status, headers=headers)
    usage, source = await _usage_of_body(call, body)
    row = call.row(status="ok", http_status=resp.status, usage=usage, source=source)
    await call.record(row)  # durable in the journal before the client sees the answer
    headers["x-spendgate-cost-usd"] = format_usd(row.cost_nano)
    return Response(body, status_code=resp.status, headers=headers)


async def _usage_of_body(call: Call, body: bytes) -> tuple[Usage | None, str]:
    if call.endpoint == "count_tokens":
        return None, "provider"  # counting tokens is free
    usage = usage_from_json(body, call.anthropic)
    if usage is not None:
        return usage, "provider"
    return await call.estimate(generated_text_from_json(body, call.anthropic)), "estimated"
