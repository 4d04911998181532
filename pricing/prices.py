"""Model prices as exact Decimal USD per token: the values every cost and estimate is computed from."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import NamedTuple

from pydantic import BaseModel, ConfigDict, Field


class Rates(NamedTuple):
    """USD per token at one prompt size; a cache rate the model lacks is already resolved to the input rate."""

    input: Decimal
    output: Decimal
    cached_input: Decimal
    cache_write: Decimal


@dataclass(frozen=True, slots=True)
class PriceTier:
    """Rates for every token of a call whose `input_tokens > threshold_tokens`.

    A `None` cache rate is billed at this tier's input rate, a `None` reasoning rate at its output rate.
    `cache_write_long` is the highest long-TTL cache-write rate (only the worst case uses it).
    """

    threshold_tokens: int
    input: Decimal
    output: Decimal
    cached_input: Decimal | None
    cache_write: Decimal | None
    reasoning: Decimal | None = None
    cache_write_long: Decimal | None = None

    def rates(self) -> Rates:
        read = self.input if self.cached_input is None else self.cached_input
        return Rates(
            self.input, self.output, read, self.input if self.cache_write is None else self.cache_write
        )


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """Prices of one model in exact USD per token; `tiers` ascend by threshold.

    Not modelled yet: batch / flex / priority service tiers and off-peak discounts (standard rates are used,
    so only a priority-tier call could cost more than priced), per-image / per-second prices, and the TTL of
    a cache write (`Usage` has no split, so writes are costed at the 5-minute rate; the worst case uses the
    long-TTL rate).
    """

    model: str
    input: Decimal
    output: Decimal
    cached_input: Decimal | None = None
    cache_write: Decimal | None = None
    reasoning: Decimal | None = None
    tiers: tuple[PriceTier, ...] = ()
    max_input_tokens: int | None = None
    max_output_tokens: int | None = None
    provider: str | None = None
    mode: str | None = None
    source: str = "catalog"
    cache_write_long: Decimal | None = None

    def tier_for(self, input_tokens: int) -> PriceTier:
        """The highest tier whose threshold `input_tokens` exceeds, else the base prices (as threshold 0)."""
        base = (
            self.input,
            self.output,
            self.cached_input,
            self.cache_write,
            self.reasoning,
            self.cache_write_long,
        )
        chosen = PriceTier(0, *base)
        for tier in self.tiers:
            if input_tokens > tier.threshold_tokens:
                chosen = tier
        return chosen

    def rates_for(self, input_tokens: int) -> Rates:
        """(input, output, cached_input, cache_write) USD per token for a prompt of `input_tokens`."""
        return self.tier_for(input_tokens).rates()

    def reasoning_rate_for(self, input_tokens: int) -> Decimal:
        """USD per reasoning token for a prompt of `input_tokens` (the output rate unless billed apart)."""
        tier = self.tier_for(input_tokens)
        return tier.output if tier.reasoning is None else tier.reasoning

    def _reachable(self, input_tokens_bound: int) -> Iterator[PriceTier]:
        yield self.tier_for(0)
        yield from (tier for tier in self.tiers if input_tokens_bound > tier.threshold_tokens)

    def max_input_rate(self, input_tokens_bound: int, cache_write_possible: bool) -> Decimal:
        """Highest USD per prompt token that a call of at most `input_tokens_bound` prompt tokens can pay."""
        found: list[Decimal] = []
        for tier in self._reachable(input_tokens_bound):
            rates = tier.rates()
            found += [rates.input, rates.cached_input]
            if cache_write_possible:
                found += [rates.cache_write, tier.cache_write_long or rates.cache_write]
        return max(found)

    def max_output_rate(self, input_tokens_bound: int) -> Decimal:
        """Highest USD per output token, reasoning included, at prompts of at most `input_tokens_bound`."""
        return max(max(t.output, t.reasoning or t.output) for t in self._reachable(input_tokens_bound))


class PriceOverride(BaseModel):
    """One `pricing.overrides` entry, in USD per 1M tokens; it wins over the catalog."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input_per_mtok: float = Field(ge=0, allow_inf_nan=False)
    output_per_mtok: float = Field(ge=0, allow_inf_nan=False)
    cached_input_per_mtok: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    cache_write_per_mtok: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    reasoning_per_mtok: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    max_input_tokens: int | None = Field(default=None, gt=0)
    max_output_tokens: int | None = Field(default=None, gt=0)

    def to_price(self, model: str) -> ModelPrice:
        def per_token(usd_per_mtok: float | None) -> Decimal | None:
            # str() first: 0.3 per million is exactly 0.0000003 per token, not a binary neighbour of it.
            return None if usd_per_mtok is None else Decimal(str(usd_per_mtok)).scaleb(-6)

        return ModelPrice(
            model=model,
            input=Decimal(str(self.input_per_mtok)).scaleb(-6),
            output=Decimal(str(self.output_per_mtok)).scaleb(-6),
            cached_input=per_token(self.cached_input_per_mtok),
            cache_write=per_token(self.cache_write_per_mtok),
            reasoning=per_token(self.reasoning_per_mtok),
            max_input_tokens=self.max_input_tokens,
            max_output_tokens=self.max_output_tokens,
            source="override",
        )
