"""Costs to the nano-dollar, computed independently here from the raw catalog JSON with Decimal."""

from __future__ import annotations

import itertools
import json
from decimal import ROUND_CEILING, Decimal
from typing import Any

import pytest

from pricing.catalog import Catalog, ModelPrice, PriceOverride, catalog_path
from pricing.cost import CostRange, cost_nano, estimate
from pricing.usage import Usage


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    entries: dict[str, Any] = json.loads(catalog_path().read_text())
    return entries


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.load()


def nano(usd: Decimal) -> int:
    return int((usd * 10**9).to_integral_value(rounding=ROUND_CEILING))


def r(raw: dict[str, Any], model: str, key: str) -> Decimal:
    return Decimal(repr(raw[model][key]))


def test_gpt_4o_mini_with_cached_tokens(catalog: Catalog, raw: dict[str, Any]) -> None:
    usage = Usage(input_tokens=12_345, cached_input_tokens=4_096, output_tokens=789)
    m = "gpt-4o-mini"
    want = (
        (12_345 - 4_096) * r(raw, m, "input_cost_per_token")
        + 4_096 * r(raw, m, "cache_read_input_token_cost")
        + 789 * r(raw, m, "output_cost_per_token")
    )
    assert cost_nano(usage, catalog.get(m)) == nano(want)


def test_claude_sonnet_with_cache_read_and_write(catalog: Catalog, raw: dict[str, Any]) -> None:
    # Anthropic's usage normalised: input = input + cache read + cache creation.
    usage = Usage(
        input_tokens=1_200 + 30_000 + 5_000,
        cached_input_tokens=30_000,
        cache_write_tokens=5_000,
        output_tokens=2_000,
    )
    m = "claude-sonnet-4-5"
    want = (
        1_200 * r(raw, m, "input_cost_per_token")
        + 30_000 * r(raw, m, "cache_read_input_token_cost")
        + 5_000 * r(raw, m, "cache_creation_input_token_cost")
        + 2_000 * r(raw, m, "output_cost_per_token")
    )
    assert cost_nano(usage, catalog.get("claude-sonnet-4-5-20250929")) == nano(want)


def test_reasoning_tokens_at_their_own_rate(catalog: Catalog, raw: dict[str, Any]) -> None:
    m = next(
        n
        for n, e in sorted(raw.items())
        if "output_cost_per_reasoning_token" in e
        and "tiered_pricing" not in e
        and e["output_cost_per_reasoning_token"] != e.get("output_cost_per_token")
    )
    usage = Usage(input_tokens=1_000, output_tokens=3_000, reasoning_tokens=2_500)
    want = (
        1_000 * r(raw, m, "input_cost_per_token")
        + 500 * r(raw, m, "output_cost_per_token")
        + 2_500 * r(raw, m, "output_cost_per_reasoning_token")
    )
    assert cost_nano(usage, catalog.get(m)) == nano(want)


def test_gemini_above_the_200k_tier(catalog: Catalog, raw: dict[str, Any]) -> None:
    m = "gemini-2.5-pro"
    usage = Usage(input_tokens=250_000, cached_input_tokens=100_000, output_tokens=4_000)
    want = (
        150_000 * r(raw, m, "input_cost_per_token_above_200k_tokens")
        + 100_000 * r(raw, m, "cache_read_input_token_cost_above_200k_tokens")
        + 4_000 * r(raw, m, "output_cost_per_token_above_200k_tokens")
    )
    assert cost_nano(usage, catalog.get(m)) == nano(want)
    at_threshold = Usage(input_tokens=200_000, output_tokens=10)
    base = 200_000 * r(raw, m, "input_cost_per_token") + 10 * r(raw, m, "output_cost_per_token")
    assert cost_nano(at_threshold, catalog.get(m)) == nano(base)


def test_fractional_nano_rounds_up_by_exactly_one() -> None:
    # 0.0015 USD per 1M tokens is 1.5 nano-USD per token.
    price = PriceOverride(input_per_mtok=0.0015, output_per_mtok=0.0015).to_price("tiny")
    assert cost_nano(Usage(input_tokens=1), price) == 2
    assert cost_nano(Usage(input_tokens=3), price) == 5  # 4.5 -> 5
    assert cost_nano(Usage(input_tokens=2), price) == 3  # exact: no rounding


def test_zero_usage_costs_nothing(catalog: Catalog) -> None:
    assert cost_nano(Usage(), catalog.get("gpt-4o")) == 0


def test_inconsistent_usage_is_clamped_not_negative(catalog: Catalog) -> None:
    price = catalog.get("gpt-4o-mini")
    odd = Usage(input_tokens=10, cached_input_tokens=50, output_tokens=1, reasoning_tokens=5)
    want = 50 * price.cached_input + 5 * price.output  # type: ignore[operator]
    assert cost_nano(odd, price) == nano(want)


def test_override_is_used_for_cost() -> None:
    catalog = Catalog.load({"gpt-4o-mini": PriceOverride(input_per_mtok=1, output_per_mtok=2)})
    assert (
        cost_nano(Usage(input_tokens=1_000_000, output_tokens=1_000_000), catalog.get("gpt-4o-mini"))
        == 3 * 10**9
    )


BOUND_MODELS = (
    "gpt-4o-mini",
    "claude-sonnet-4-5",
    "gemini-2.5-pro",
    "dashscope/qwen-flash",
    "xai/grok-4.3",
    "gpt-5.6",
)


def usages(prompt_max: int, output_max: int, cache_write: bool) -> list[Usage]:
    found = []
    sizes = sorted({0, 1, prompt_max // 3, prompt_max // 2, prompt_max - 1, prompt_max})
    for prompt, output in itertools.product(sizes, sorted({0, 1, output_max // 2, output_max})):
        for cached, written, reasoning in itertools.product(
            (0, prompt // 2, prompt), (0, prompt), (0, output)
        ):
            if cached + written <= prompt and (cache_write or written == 0):
                found.append(Usage(prompt, output, cached, written, reasoning))
    return found


@pytest.mark.parametrize("model", BOUND_MODELS)
@pytest.mark.parametrize("cache_write", [False, True])
def test_max_is_a_true_upper_bound(catalog: Catalog, model: str, cache_write: bool) -> None:
    price = catalog.get(model)
    for prompt_max in (1, 1_000, 199_999, 200_000, 200_001, 256_001, 272_001, 600_000):
        rng = estimate(
            price,
            prompt_tokens=prompt_max // 2,
            prompt_tokens_max=prompt_max,
            max_output_tokens=4_096,
            cache_write_possible=cache_write,
        )
        assert rng.min_nano <= rng.expected_nano <= rng.max_nano
        for usage in usages(prompt_max, 4_096, cache_write):
            assert cost_nano(usage, price) <= rng.max_nano, (model, prompt_max, usage)


def test_max_multiplies_by_n(catalog: Catalog) -> None:
    price = catalog.get("gpt-4o")
    one = estimate(price, prompt_tokens=100, prompt_tokens_max=150, max_output_tokens=1_000)
    three = estimate(price, prompt_tokens=100, prompt_tokens_max=150, max_output_tokens=1_000, n=3)
    assert three.max_nano == 3 * one.max_nano == nano(3 * (150 * price.input + 1_000 * price.output))


def test_expected_and_min_figures(catalog: Catalog) -> None:
    price = catalog.get("gpt-4o-mini")
    assert price.cached_input is not None
    rng = estimate(price, prompt_tokens=1_000, prompt_tokens_max=4_000, max_output_tokens=2_000)
    assert rng == CostRange(
        min_nano=nano(1_000 * price.cached_input + price.output),
        expected_nano=nano(1_000 * price.input + 256 * price.output),
        max_nano=nano(4_000 * price.input + 2_000 * price.output),
    )
    small = estimate(
        price, prompt_tokens=10, prompt_tokens_max=10, max_output_tokens=50, expected_output_tokens=40, n=2
    )
    assert small.expected_nano == nano(10 * price.input + 2 * 40 * price.output)


def test_ranges_stay_ordered_at_the_edges(catalog: Catalog) -> None:
    price = catalog.get("gpt-4o-mini")
    cases: tuple[dict[str, int], ...] = (
        {"prompt_tokens": 0, "prompt_tokens_max": 0, "max_output_tokens": 0},
        {"prompt_tokens": 500, "prompt_tokens_max": 10, "max_output_tokens": 5},  # bound below the count
        {"prompt_tokens": 5, "prompt_tokens_max": 5, "max_output_tokens": 5, "expected_output_tokens": 10**6},
    )
    for kwargs in cases:
        rng = estimate(price, **kwargs)  # type: ignore[arg-type]
        assert 0 <= rng.min_nano <= rng.expected_nano <= rng.max_nano
    assert estimate(price, prompt_tokens=500, prompt_tokens_max=10, max_output_tokens=5).max_nano >= nano(
        500 * price.input + 5 * price.output
    )


def test_estimate_rejects_nonsense() -> None:
    price = ModelPrice("m", Decimal("0.000001"), Decimal("0.000002"))
    with pytest.raises(ValueError):
        estimate(price, prompt_tokens=1, prompt_tokens_max=1, max_output_tokens=1, n=0)
    with pytest.raises(ValueError):
        estimate(price, prompt_tokens=-1, prompt_tokens_max=1, max_output_tokens=1)
