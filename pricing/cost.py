"""Usage x price -> nano-USD, exactly; and the (min, expected, max) cost range of a call before it runs."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, localcontext

from pricing.catalog import ModelPrice
from pricing.money import usd_to_nano
from pricing.usage import Usage

DEFAULT_EXPECTED_OUTPUT_TOKENS = 256
# Token counts (<= ~10 digits) times catalog rates (<= ~17 significant digits), summed over five terms,
# never come near 60 digits, so every Decimal operation below is exact.
_PRECISION = 60


def _ceil_nano(usd: Decimal) -> int:
    with localcontext() as ctx:
        ctx.prec = _PRECISION
        # Round UP, once, at the very end: we never under-charge or under-reserve.
        return usd_to_nano(usd)


def _usd(*terms: tuple[int, Decimal]) -> Decimal:
    with localcontext() as ctx:
        ctx.prec = _PRECISION
        return sum((tokens * rate for tokens, rate in terms), Decimal(0))


def cost_nano(usage: Usage, price: ModelPrice) -> int:
    """The exact cost of one call in nano-USD, rounded up.

    `usage` has OpenAI's semantics: cache reads and writes are parts of `input_tokens`, reasoning tokens are
    part of `output_tokens`. The tier is chosen by `input_tokens`; a cache or reasoning rate the model lacks
    is billed at the input or output rate.
    """
    rates = price.rates_for(usage.input_tokens)
    cached = max(usage.cached_input_tokens, 0)
    written = max(usage.cache_write_tokens, 0)
    reasoning = max(usage.reasoning_tokens, 0)
    usd = _usd(
        (max(usage.input_tokens - cached - written, 0), rates.input),
        (cached, rates.cached_input),
        (written, rates.cache_write),
        (max(usage.output_tokens - reasoning, 0), rates.output),
        (reasoning, price.reasoning_rate_for(usage.input_tokens)),
    )
    return _ceil_nano(usd)


@dataclass(frozen=True, slots=True)
class CostRange:
    """What a call may cost, in nano-USD; `min_nano <= expected_nano <= max_nano` always holds."""

    min_nano: int
    expected_nano: int
    max_nano: int


def estimate(
    price: ModelPrice,
    *,
    prompt_tokens: int,
    prompt_tokens_max: int,
    max_output_tokens: int,
    n: int = 1,
    expected_output_tokens: int | None = None,
    cache_write_possible: bool = False,
) -> CostRange:
    """The cost range of a call before it is sent.

    `max_nano` is a TRUE upper bound (budgets reserve it, and the no-overshoot promise rests on it): every
    one of `prompt_tokens_max` prompt tokens at the highest input-side rate any tier reachable at that size
    can charge (cache read, and cache write incl. long TTL when `cache_write_possible`), every one of
    `max_output_tokens` at the highest output or reasoning rate, all times `n`.

    `expected_nano` bills `prompt_tokens` once at the normal rate plus `n` completions of
    `expected_output_tokens` (default: min(max_output_tokens, 256)) at the output rate; `min_nano` is the
    prompt at its cheapest rate (all cached) plus one output token. Both are clamped into [min, max].
    """
    if min(prompt_tokens, prompt_tokens_max, max_output_tokens) < 0 or n < 1:
        raise ValueError("token counts must be >= 0 and n >= 1")
    bound = max(prompt_tokens_max, prompt_tokens)  # a "maximum" below the count would not bound it
    max_nano = _ceil_nano(
        _usd(
            (bound * n, price.max_input_rate(bound, cache_write_possible)),
            (max_output_tokens * n, price.max_output_rate(bound)),
        )
    )
    rates = price.rates_for(prompt_tokens)
    if expected_output_tokens is None:
        expected_output_tokens = DEFAULT_EXPECTED_OUTPUT_TOKENS
    expected_output = min(max(expected_output_tokens, 0), max_output_tokens)
    # Providers bill the prompt once however many choices `n` asks for.
    expected_nano = _ceil_nano(_usd((prompt_tokens, rates.input), (expected_output * n, rates.output)))
    cheapest_input = min(rates.input, rates.cached_input)
    min_nano = _ceil_nano(_usd((prompt_tokens, cheapest_input), (min(1, max_output_tokens), rates.output)))
    min_nano = min(min_nano, max_nano)
    return CostRange(min_nano, min(max(expected_nano, min_nano), max_nano), max_nano)
