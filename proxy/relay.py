"""One proxied call end to end: authenticate, attribute, route, forward, relay, meter, price, record."""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from policies.attribution import Attribution
from policies.budgets import Counter, call_tags
from policies.decisions import Allowed, Denied, Held
from policies.engine import Admission
from policies.errors import LedgerUnavailable
from pricing.cost import cost_nano
from pricing.money import format_usd
from pricing.usage import Usage
from proxy.admission import ApprovalDenied, ApprovalRequired, BudgetExceeded, refusal, worst_case
from proxy.attribution import attribute
from proxy.errors import Family, Forbidden, InvalidRequest, ProxyError, ServiceUnavailable, error_response
from proxy.metering import estimate_usage, generated_text_from_json, usage_from_json
from proxy.requests import check_body, forwarded_headers, parse_json_object, read_body
from proxy.services import Services
from proxy.store.journal import JournalError
from proxy.store.records import CallRecord
from proxy.streaming import MeteredStream
from proxy.upstreams.base import ANTHROPIC_ENDPOINTS, ENDPOINT_PATHS, Deployment, Endpoint, UpstreamRequest

log = logging.getLogger(__name__)

# Endpoints where a stream carries usage only when asked with stream_options.include_usage.
_ASK_FOR_USAGE = frozenset({"chat", "completions"})


def new_request_id() -> str:
    # 128 random bits, like a uuid4. Request ids must be unique, not secret: the stdlib generator (seeded
    # from os.urandom, reseeded in forked children) costs ~0.3 us where os.urandom costs ~8 us here.
    return f"sg-{random.getrandbits(128):032x}"


def header_map(request: Request) -> dict[str, str]:
    """The request headers as one dict, built once (Starlette's Headers scans its list on every get)."""
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in request.scope["headers"]}


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
    headers_out: dict[str, str] = field(default_factory=dict)  # budget warnings, clamping

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
                   headers_out=self.headers_out)
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
        0 for a call that failed, the prompt and what was generated for one cut short."""
        # Shielded: a cancelled request task must still get its row into the journal and its spend booked.
        try:
            await asyncio.shield(self.services.writer.record(row))
        except JournalError as exc:
            # The row is still queued for SQL; only its crash-safety is lost. The call itself succeeded.
            log.error("journal append failed", extra={"request_id": row.request_id, "error": str(exc)})
        if final and self.admission is not None:
            await asyncio.shield(self.services.settle(self.admission, row.cost_nano))


Reply = Response | MeteredStream  # what a proxied route answers: both are ASGI callables


async def handle(request: Request, endpoint: Endpoint) -> Reply:
    services: Services = request.app.state.services
    request_id = new_request_id()
    family: Family = "anthropic" if endpoint in ANTHROPIC_ENDPOINTS else "openai"
    services.begin_call()
    handed_off = False
    try:
        headers = header_map(request)
        try:
            call, chain = await _admit(services, request, headers, endpoint, request_id)
        except ProxyError as err:
            return error_response(err, family, request_id)
        query = request.scope.get("query_string", b"").decode("latin-1")
        response = await _forward(call, chain, query, headers, family)
        if isinstance(response, MeteredStream):
            response.on_done = services.end_call  # the stream records its row after this returns
            handed_off = True
        return response
    finally:
        if not handed_off:
            services.end_call()


async def _admit(services: Services, request: Request, headers: dict[str, str], endpoint: Endpoint,
                 request_id: str) -> tuple[Call, tuple[Deployment, ...]]:
    if services.draining:
        raise ServiceUnavailable("spendgate is shutting down; retry against another replica")
    started = datetime.now(UTC)
    principal = services.keys.authenticate(headers)
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
    if services.engine.budgets and endpoint != "count_tokens":  # counting tokens is free: no gate
        try:
            changed = await _gate(call, raw, chain, headers.get("x-spendgate-approval")) or changed
        except (BudgetExceeded, ApprovalRequired, ApprovalDenied) as refused:
            await call.record(call.row(status="refused", http_status=402, usage=None, source="provider",
                                       error=refused.code))
            raise
    call.prepare(raw, changed)
    return call, chain


async def _gate(call: Call, raw: bytes, chain: tuple[Deployment, ...], approval_id: str | None) -> bool:
    """Admit the call against every budget it matches; True if the body was changed (max tokens written)."""
    services, body, who = call.services, call.body, call.attribution
    tags = call_tags(who, model=body["model"], provider=chain[0].provider)
    if not services.engine.counters(tags):
        return False
    if approval_id is not None:
        await _check_approval(services, approval_id, who.org)
    worst = worst_case(services.counter, call.endpoint, body, raw, chain)
    changed = False
    if worst.inserted and worst.max_field:
        body[worst.max_field] = worst.max_tokens  # the provider may then never exceed what is reserved
        changed = True

    async def hold(counter: Counter, worst_nano: int) -> str:
        return await services.approvals.hold(counter, worst_nano, org=who.org, requested_by=who.key)

    try:
        decision, call.admission = await services.engine.admit(tags, worst.nano, call.request_id, worst.clamp)
        if isinstance(decision, Denied):
            # Refused on the byte bound: count the prompt (off the loop) where the model's tokenizer is known,
            # and ask again with the tighter worst case; an `approve` budget now opens or joins its approval.
            exact = await asyncio.to_thread(worst_case, services.counter, call.endpoint, body, raw, chain,
                                            exact=True)
            worst = replace(worst, nano=min(worst.nano, exact.nano), clamp=exact.clamp or worst.clamp)
            decision, call.admission = await services.engine.admit(tags, worst.nano, call.request_id,
                                                                   worst.clamp, on_hold=hold)
        if isinstance(decision, Held) and services.approvals.wait_seconds > 0:
            # Held until an admin decides (or the wait ends); approved: admission runs again, with the grant.
            status = await services.approvals.wait(decision.approval_id)
            if status in ("denied", "expired"):
                raise _denied(decision.approval_id, status)
            if status == "approved":
                decision, call.admission = await services.engine.admit(
                    tags, worst.nano, call.request_id, worst.clamp, on_hold=hold)
    except LedgerUnavailable:
        if services.settings.ledger.on_unavailable != "allow":
            raise ServiceUnavailable("the budget ledger is unreachable, so no call can be admitted "
                                     "(ledger.on_unavailable: block)") from None
        log.error("ledger unavailable: call passes unenforced", extra={"request_id": call.request_id})
        call.enforcement = "bypassed"
        return changed
    match decision:
        case Denied():
            await services.alerts.exceeded(decision.counter, decision.spent_nano)
            raise refusal(decision)
        case Held():
            await services.alerts.exceeded(decision.counter, None)
            raise ApprovalRequired(
                f"budget {decision.counter.budget.name!r} needs an admin's approval for more spend; retry "
                f"with header X-Spendgate-Approval: {decision.approval_id} once approved",
                extra={"approval_id": decision.approval_id})
        case Allowed():
            if decision.clamp_to is not None and worst.max_field:
                body[worst.max_field] = decision.clamp_to
                call.headers_out["x-spendgate-max-tokens-clamped"] = str(decision.clamp_to)
                changed = True
            if decision.warnings:
                call.headers_out["x-spendgate-budget-warning"] = "; ".join(w.message for w in decision.warnings)
                for warning in decision.warnings:
                    await services.alerts.exceeded(warning.counter, None)
    return changed


async def _check_approval(services: Services, approval_id: str, org: str) -> None:
    """A retry naming an approval: a denied or expired one ends here; an approved one's grant is already in
    the counter's limit, and a pending one is joined again by admission."""
    status = await services.approvals.status(approval_id, org)
    if status is None:
        raise InvalidRequest("X-Spendgate-Approval names no approval this key can see", param="approval")
    if status in ("denied", "expired"):
        raise _denied(approval_id, status)


def _denied(approval_id: str, status: str) -> ApprovalDenied:
    return ApprovalDenied(f"approval {approval_id} was {status}; this call is refused",
                          extra={"approval_id": approval_id})


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
                   family: Family) -> Reply:
    """Try the chain in order; every failed attempt is its own row, and the next one records `retry_of`."""
    forwarded = forwarded_headers(headers)
    for attempt, deployment in enumerate(chain):
        if attempt:
            call = call.retry_on(deployment)
        last = attempt == len(chain) - 1
        upstream = call.services.upstream_for(deployment, call.endpoint)
        upstream_request = UpstreamRequest(
            endpoint=call.endpoint, deployment=deployment, body=call.body, raw=call.raw, stream=call.stream,
            query=query, headers=forwarded, request_id=call.request_id,
        )
        try:
            resp = await upstream.open(upstream_request)
        except ProxyError as err:
            retry = not last and _retryable(err.status)
            await call.record(call.row(status="error", http_status=err.status, usage=None, source="provider",
                                       error=err.code), final=not retry)
            if retry:
                continue
            return error_response(err, family, call.request_id)
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
            return await _finish_whole(call, resp, ours, family)
        return MeteredStream(call, resp, ours)
    raise AssertionError("unreachable: the chain is never empty")


async def _discard(call: Call, resp: Any) -> None:
    """A failed attempt that will be retried elsewhere: read its error (for the connection's sake) and record it."""
    try:
        await resp.read()
    except ProxyError:
        pass
    finally:
        resp.close()
    await call.record(call.row(status="error", http_status=resp.status, usage=None, source="provider",
                               error=f"provider answered {resp.status}; retried on the next deployment"),
                      final=False)  # the reservation carries over to the next attempt


async def _finish_whole(call: Call, resp: Any, ours: dict[str, str], family: Family) -> Response:
    try:
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
