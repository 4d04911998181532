"""The budget gate of a call: admission against every matching budget, approvals, and what the client sees."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import replace
from time import perf_counter

from policies.budgets import CallTags, Counter, call_tags
from policies.decisions import Allowed, Decision, Denied, Held
from policies.engine import Admission, HoldRequest
from policies.errors import LedgerUnavailable, LedgerUnseeded
from policies.ledger.base import CounterSpec
from proxy.admission import ApprovalDenied, ApprovalRequired, refusal, worst_case
from proxy.call import Call
from proxy.errors import InvalidRequest, ServiceUnavailable
from proxy.services import Services
from proxy.upstreams.base import Deployment

log = logging.getLogger(__name__)


async def gate(call: Call, raw: bytes, chain: tuple[Deployment, ...], approval_id: str | None,
               while_held: Callable[[], AbstractContextManager[None]] = contextlib.nullcontext) -> bool:
    """Admit the call against every budget it matches; True if the body was changed (max tokens written).
    `while_held` wraps the wait for an admin's approval (the proxy cancels it when the client hangs up: a held
    call holds no reservation, so nothing is left behind)."""
    services, body, who = call.services, call.body, call.attribution
    # The model the client asked for (the body may already name a deployment's upstream model on a fallback),
    # and the provider of the deployment about to be tried.
    tags = call_tags(who, model=chain[0].requested, provider=chain[0].provider)
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

    async def admit(on_hold: HoldRequest | None = None) -> tuple[Decision, Admission | None]:
        started = perf_counter()
        try:
            if not services.seeder.ready:  # counters not (re)built from the store yet: never admit against 0
                await services.seeder.ensure(_specs(services, tags))
            for _ in range(3):  # Redis restarted empty (or, in cluster mode, a slot not marked yet): rebuild
                try:
                    return await services.engine.admit(tags, worst.nano, call.request_id, worst.clamp,
                                                       on_hold=on_hold)
                except LedgerUnseeded as forgot:
                    await services.seeder.admit_again(forgot, _specs(services, tags))
            raise LedgerUnavailable("the budget ledger keeps forgetting its counters")
        finally:
            services.metrics.ledger("admit", perf_counter() - started)

    try:
        decision, call.admission = await admit()
        if isinstance(decision, Denied):
            # Refused on the byte bound: count the prompt (off the loop) where the model's tokenizer is known,
            # and ask again with the tighter worst case; an `approve` budget now opens or joins its approval.
            exact = await asyncio.to_thread(worst_case, services.counter, call.endpoint, body, raw, chain,
                                            exact=True)
            worst = replace(worst, nano=min(worst.nano, exact.nano), clamp=exact.clamp or worst.clamp)
            decision, call.admission = await admit(hold)
        if isinstance(decision, Held) and services.approvals.wait_seconds > 0:
            # Held until an admin decides (or the wait ends); approved: admission runs again, with the grant.
            with while_held():
                status = await services.approvals.wait(decision.approval_id)
            if status in ("denied", "expired"):
                services.metrics.decision(decision.counter.budget.name, "denied")
                raise _denied(decision.approval_id, status)
            if status == "approved":
                services.metrics.decision(decision.counter.budget.name, "held")
                decision, call.admission = await admit(hold)
    except LedgerUnavailable:
        if services.settings.ledger.on_unavailable != "allow":
            raise ServiceUnavailable("the budget ledger is unreachable, so no call can be admitted "
                                     "(ledger.on_unavailable: block)") from None
        log.error("ledger unavailable: call passes unenforced", extra={"request_id": call.request_id})
        call.enforcement = "bypassed"
        for counter in services.engine.counters(tags):
            if counter.budget.enforced:
                services.metrics.decision(counter.budget.name, "bypassed")
        return changed
    match decision:
        case Denied():
            services.metrics.decision(decision.counter.budget.name, "denied")
            await services.alerts.exceeded(decision.counter, decision.spent_nano)
            raise refusal(decision)
        case Held():
            services.metrics.decision(decision.counter.budget.name, "held")
            await services.alerts.exceeded(decision.counter, None)
            raise ApprovalRequired(
                f"budget {decision.counter.budget.name!r} needs an admin's approval for more spend; retry "
                f"with header X-Spendgate-Approval: {decision.approval_id} once approved",
                extra={"approval_id": decision.approval_id})
        case Allowed():
            _count_allowed(services, call.admission, decision)
            if decision.clamp_to is not None and worst.max_field:
                body[worst.max_field] = decision.clamp_to
                call.headers_out["x-spendgate-max-tokens-clamped"] = str(decision.clamp_to)
                changed = True
            if decision.warnings:
                call.headers_out["x-spendgate-budget-warning"] = "; ".join(w.message for w in decision.warnings)
                for warning in decision.warnings:
                    await services.alerts.exceeded(warning.counter, None)
    return changed


async def regate(call: Call, previous: Deployment, chain: tuple[Deployment, ...]) -> bool:
    """A fallback to a deployment of another provider (`chain[0]`, after `previous`): when that changes which
    budget counters the call touches (a `provider`-scoped budget), give back the reservation made for the
    previous provider and admit the call again for this one, so spend is booked where it is actually made.
    True if the body changed. Raises like `gate` (the caller records the refusal)."""
    services, who = call.services, call.attribution
    if not services.engine.budgets or call.endpoint == "count_tokens":
        return False
    old = services.engine.counters(call_tags(who, model=previous.requested, provider=previous.provider))
    new = services.engine.counters(call_tags(who, model=chain[0].requested, provider=chain[0].provider))
    if [c.key for c in old] == [c.key for c in new]:
        return False
    if call.admission is not None:
        await services.engine.release(call.admission)
        call.admission = None
    return await gate(call, call.raw, chain, None)


def _specs(services: Services, tags: CallTags) -> list[CounterSpec]:
    return [CounterSpec(c.key, c.limit_nano, c.ttl_s) for c in services.engine.counters(tags)]


def _count_allowed(services: Services, admission: Admission | None, decision: Allowed) -> None:
    """One decision per enforced budget the call matched: warned (a soft budget past its limit), clamped
    (a blocking budget that clamps max tokens, when the call was clamped), else allowed."""
    if admission is None:
        return
    warned = {w.counter.key for w in decision.warnings} if decision.warnings else ()
    for counter in admission.hard:
        budget = counter.budget
        clamped = decision.clamp_to is not None and budget.clamp_max_tokens
        services.metrics.decision(budget.name, "clamped" if clamped else "allowed")
    for counter in admission.soft:
        if counter.budget.enforced:  # shadow budgets only count, they decide nothing
            services.metrics.decision(counter.budget.name, "warned" if counter.key in warned else "allowed")


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
