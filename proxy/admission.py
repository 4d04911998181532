"""The budget gate of a proxied call: its true worst case, and the engine's decision turned into HTTP.

The worst case is what budgets reserve, so it must bound what the provider can really charge: every prompt
token at the highest rate that can apply, the max output tokens the request allows (spendgate writes one
into the request when the client sent none, so the provider cannot exceed it), times `n`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from policies.budgets import Counter, scope_dict
from policies.decisions import Denied
from policies.engine import ClampRoom
from pricing.money import NANO_PER_USD, nano_to_usd
from pricing.tokens import TokenCounter
from proxy.errors import InvalidRequest, ProxyError
from proxy.store.queries import iso_utc
from proxy.upstreams.base import Deployment

# The max-output field of each endpoint, in the order spendgate looks for it; the first is the one it writes.
MAX_FIELDS: dict[str, tuple[str, ...]] = {
    "chat": ("max_tokens", "max_completion_tokens"),
    "completions": ("max_tokens",),
    "responses": ("max_output_tokens",),
    "messages": ("max_tokens",),
}
# Reasoning models refuse `max_tokens`; they take `max_completion_tokens`.
_COMPLETION_TOKENS_MODELS = ("o1", "o3", "o4", "gpt-5")
# Content whose token cost is not its byte length (an image URL of 100 bytes costs ~1000 tokens).
_OPAQUE_CONTENT = (b'"image_url"', b'"input_image"', b'"type":"image"', b'"type": "image"', b'"input_audio"',
                   b'"input_file"', b'"type":"document"', b'"type": "document"', b'"file_id"')
# Responses API features whose cost no request field bounds.
_UNBOUNDED_TOOLS = (b'"web_search', b'"file_search"', b'"code_interpreter"', b'"computer_use', b'"image_generation"')
EXACT_COUNT_MAX_BYTES = 1024 * 1024  # above this, counting is not worth it: the byte bound stands


class BudgetExceeded(ProxyError):
    """A blocking budget would be exceeded."""

    status, code, type = 402, "budget_exceeded", "insufficient_quota"


class ApprovalRequired(ProxyError):
    """The call is held until an admin approves more spend."""

    status, code, type = 402, "approval_required", "insufficient_quota"


class ApprovalDenied(ProxyError):
    """An admin denied the approval this call waited for."""

    status, code, type = 402, "approval_denied", "insufficient_quota"


@dataclass(frozen=True, slots=True)
class WorstCase:
    nano: int
    clamp: ClampRoom | None
    max_field: str | None  # the max-tokens field the call carries (or spendgate writes)
    max_tokens: int
    inserted: bool  # spendgate wrote `max_field` into the body


def max_output(endpoint: str, body: Mapping[str, Any], deployments: Sequence[Deployment]) -> tuple[str | None, int, bool]:
    """(field, value, inserted): the request's max output tokens, or the one spendgate will send."""
    fields = MAX_FIELDS.get(endpoint)
    if fields is None:
        return None, 0, False  # embeddings: no output tokens
    for name in fields:
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            return name, value, False
    first = deployments[0]
    limit = first.default_max_output_tokens or (first.price.max_output_tokens if first.price else None)
    if not limit:
        raise InvalidRequest(
            f"model {first.requested!r} has no known output limit, so the call cannot be bounded under a "
            f"budget: send `{fields[0]}` or set `default_max_output_tokens` on the model in config.yaml",
            param=fields[0])
    name = fields[0]
    if endpoint == "chat" and first.upstream_model.startswith(_COMPLETION_TOKENS_MODELS):
        name = "max_completion_tokens"
    return name, limit, True


def prompt_bounds(counter: TokenCounter, endpoint: str, body: Mapping[str, Any], raw: bytes,
                  deployment: Deployment, *, exact: bool = False) -> tuple[int, int]:
    """(expected, upper bound) prompt tokens. The bound: the UTF-8 byte length (byte-level BPE: at most one
    token per byte), or with `exact` the count for a model whose tokenizer we have (plus a margin for
    framing); the context window when content's cost is not in its bytes; never above the context window.

    Counting costs CPU and ~100 MB of encodings, so the gate first tries the byte bound and counts only when
    that would refuse the call (no false refusals near a cap, no counting on the common path)."""
    window = deployment.price.max_input_tokens if deployment.price else None
    if body.get("previous_response_id") or any(marker in raw for marker in _OPAQUE_CONTENT):
        if not window:
            raise InvalidRequest("this request's prompt cannot be bounded (images, files or a previous "
                                 "response) and the model's context window is unknown; a budget applies")
        return window, window
    bound = len(raw)
    expected = bound // 4
    model = deployment.upstream_model
    if exact and len(raw) <= EXACT_COUNT_MAX_BYTES and counter.exact_for(model):
        expected = counter.count_request(endpoint if endpoint != "count_tokens" else "messages", body, model)
        bound = min(bound, math.ceil(expected * 1.05) + 64)
    if window:
        bound, expected = min(bound, window), min(expected, window)
    return expected, bound


def worst_case(counter: TokenCounter, endpoint: str, body: dict[str, Any], raw: bytes,
               chain: Sequence[Deployment], *, exact: bool = False) -> WorstCase:
    """The most any deployment of the chain can charge for this request (a fallback may be pricier)."""
    if endpoint == "responses" and (body.get("background") or any(t in raw for t in _UNBOUNDED_TOOLS)):
        raise InvalidRequest("background calls and server-side tools cannot be bounded in advance, so they "
                             "cannot pass a budget that applies to this call", param="tools")
    field, max_tokens, inserted = max_output(endpoint, body, chain)
    asked_n = body.get("n")
    n = asked_n if endpoint in ("chat", "completions") and isinstance(asked_n, int) else 1
    cache_write = b'"cache_control"' in raw
    worst, prompt_nano, out_rate = 0, 0, Decimal(0)
    for deployment in chain:
        price = deployment.price
        if price is None:
            raise InvalidRequest(f"model {deployment.requested!r} has no known price, so it cannot pass a budget "
                                 "that applies to this call (set `price_as` or `pricing.overrides`)",
                                 param="model")
        _expected, bound = prompt_bounds(counter, endpoint, body, raw, deployment, exact=exact)
        # Every bound prompt token at the highest input-side rate that can apply (cache write when the request
        # carries cache_control), every output token at the highest output rate, times n; each part rounded
        # up, so their sum bounds what the provider can bill.
        prompt = math.ceil(bound * n * price.max_input_rate(bound, cache_write) * NANO_PER_USD)
        rate = price.max_output_rate(bound) * NANO_PER_USD * n
        worst = max(worst, prompt + math.ceil(rate * max_tokens))
        prompt_nano, out_rate = max(prompt_nano, prompt), max(out_rate, rate)
    clamp = ClampRoom(prompt_nano, out_rate, max_tokens) if field else None
    return WorstCase(worst, clamp, field, max_tokens, inserted)


def budget_detail(counter: Counter, spent_nano: int, reserved_nano: int) -> dict[str, Any]:
    """The `error.budget` object of a 402 (DESIGN §12)."""
    resets = counter.window.resets_at
    return {
        "name": counter.budget.name,
        "scope": scope_dict(counter.scope),
        "window": counter.budget.window,
        "limit_usd": nano_to_usd(counter.limit_nano),
        "spent_usd": nano_to_usd(spent_nano),
        "reserved_usd": nano_to_usd(reserved_nano),
        "resets_at": iso_utc(resets) if resets else None,
    }


def refusal(denied: Denied) -> BudgetExceeded:
    b = denied.counter.budget
    return BudgetExceeded(
        f"budget {b.name!r} would be exceeded: this call may cost up to ${nano_to_usd(denied.needed_nano)}, "
        f"${nano_to_usd(max(0, denied.limit_nano - denied.spent_nano - denied.reserved_nano))} of "
        f"${nano_to_usd(denied.limit_nano)} is left",
        extra={"budget": budget_detail(denied.counter, denied.spent_nano, denied.reserved_nano)})
