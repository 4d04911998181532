"""Per-token model prices as exact Decimals: litellm's bundled catalog file plus `pricing.overrides`.

The file is found with `importlib.util.find_spec` (litellm itself is never imported: ~6 s, ~190 MB), read
once, and each entry becomes a `ModelPrice` on the first lookup of its name.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

from pricing.errors import InvalidPrice, PricingError, UnknownModel

CATALOG_FILE = "model_prices_and_context_window_backup.json"
_INPUT, _OUTPUT, _READ, _WRITE, _REASONING = (
    "input_cost_per_token",
    "output_cost_per_token",
    "cache_read_input_token_cost",
    "cache_creation_input_token_cost",
    "output_cost_per_reasoning_token",
)
# Long-TTL cache writes (Anthropic's 1-hour cache and the like), e.g. cache_creation_input_token_cost_above_1hr.
_LONG_WRITE = re.compile(r"^cache_creation_input_token_cost_above_\d+hr$")
# Standard service tier only: the `$` leaves out the _batches / _flex / _priority / ... variants.
_TIER_KEY = re.compile(rf"^({_INPUT}|{_OUTPUT}|{_READ}|{_WRITE}(?:_above_\d+hr)?)_above_(\d+)(k?)_tokens$")
_DATE_SUFFIX = re.compile(r"[-@](?:\d{8}|\d{4}-\d{2}-\d{2})$")
# litellm bills these providers' upper tier from the threshold itself (>=), everyone else's above it (>).
_INCLUSIVE_THRESHOLD_PROVIDERS = frozenset({"xai"})


def litellm_package_dir() -> Path:
    """The installed litellm package folder, found without importing litellm."""
    spec = importlib.util.find_spec("litellm")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise PricingError("litellm is not installed: its bundled price catalog and tokenizers are needed")
    return Path(locations[0])


def catalog_path() -> Path:
    """litellm's bundled `model_prices_and_context_window_backup.json`."""
    return litellm_package_dir() / CATALOG_FILE


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


def _rate(entry: Mapping[str, Any], key: str, model: str) -> Decimal | None:
    value = entry.get(key)
    if value is None:
        return None
    rate = None
    # The file is parsed with parse_float=Decimal, so catalog floats are exact already; litellm also
    # accepts costs written as strings.
    if isinstance(value, int | str | Decimal) and not isinstance(value, bool):
        try:
            rate = Decimal(value)
        except InvalidOperation:
            pass
    if rate is None or not rate.is_finite() or rate < 0:
        raise InvalidPrice(f"{model}: {key} = {value!r} is not a finite non-negative price")
    return rate


def _token_limit(value: object) -> int | None:
    if isinstance(value, Decimal) and value.is_finite() and value == value.to_integral_value():
        value = int(value)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _long_write(rates: Mapping[str, Decimal]) -> Decimal | None:
    return max((rate for key, rate in rates.items() if _LONG_WRITE.match(key)), default=None)


def _threshold_tiers(model: str, entry: Mapping[str, Any], base: dict[str, Decimal]) -> tuple[PriceTier, ...]:
    """`*_above_<N>k_tokens` keys as tiers, read the way litellm's `_get_token_base_cost` bills them.

    "Nk" is N*1000 tokens (litellm's `_parse_token_threshold`); a rate a tier does not name keeps the value
    it had below that threshold.
    """
    by_threshold: dict[int, dict[str, Decimal]] = {}
    for key in entry:
        if (match := _TIER_KEY.match(key)) and (rate := _rate(entry, key, model)) is not None:
            by_threshold.setdefault(int(match[2]) * (1000 if match[3] else 1), {})[match[1]] = rate
    inclusive = entry.get("litellm_provider") in _INCLUSIVE_THRESHOLD_PROVIDERS
    running, tiers = dict(base), []
    for threshold in sorted(by_threshold):
        running.update(by_threshold[threshold])
        tiers.append(
            PriceTier(
                threshold - 1 if inclusive else threshold,  # ">= N" is "> N - 1"
                running[_INPUT],
                running[_OUTPUT],
                running.get(_READ),
                running.get(_WRITE),
                running.get(_REASONING),
                _long_write(running),
            )
        )
    return tuple(tiers)


def _table_tiers(model: str, entry: Mapping[str, Any], output: Decimal | None) -> list[PriceTier] | None:
    """A `tiered_pricing` table (Dashscope style) as tiers; None when a tier lacks an input or output rate.

    litellm picks the tier with `start < input_tokens <= end` (the highest start exceeded) and bills every
    token of the call at it; a rate a tier lacks is its input rate, except output: the model's own.
    """
    table = entry.get("tiered_pricing")
    rows = [row for row in table if isinstance(row, Mapping)] if isinstance(table, list) else []
    starts = [row.get("range") for row in rows]
    ranged = [
        (int(bounds[0]), row)
        for bounds, row in zip(starts, rows, strict=True)
        if isinstance(bounds, list) and len(bounds) == 2 and isinstance(bounds[0], int | Decimal)
    ]
    tiers = []
    for start, row in sorted(ranged, key=lambda pair: pair[0]):
        tier_input, tier_output = _rate(row, _INPUT, model), _rate(row, _OUTPUT, model)
        tier_output = output if tier_output is None else tier_output
        if tier_input is None or tier_output is None:
            return None
        read, write, reasoning = (_rate(row, key, model) for key in (_READ, _WRITE, _REASONING))
        tiers.append(PriceTier(start, tier_input, tier_output, read, write, reasoning))
    return tiers or None


def _parse_entry(model: str, entry: Mapping[str, Any]) -> ModelPrice | None:
    """One catalog entry as a ModelPrice; None when it has no per-token price, never a silent 0.

    Priced means an input and an output rate per token (or a complete `tiered_pricing` table); an
    embedding model may lack the output rate (it produces no output tokens).
    """
    keys = (_INPUT, _OUTPUT, _READ, _WRITE, _REASONING, *filter(_LONG_WRITE.match, entry))
    base = {key: rate for key in keys if (rate := _rate(entry, key, model)) is not None}
    if _OUTPUT not in base and entry.get("mode") == "embedding":
        base[_OUTPUT] = Decimal(0)
    provider, mode = entry.get("litellm_provider"), entry.get("mode")
    common: dict[str, Any] = {
        "max_input_tokens": _token_limit(entry.get("max_input_tokens")),
        "max_output_tokens": _token_limit(entry.get("max_output_tokens")),
        "provider": provider if isinstance(provider, str) else None,
        "mode": mode if isinstance(mode, str) else None,
    }
    if "tiered_pricing" in entry:
        table = _table_tiers(model, entry, base.get(_OUTPUT))
        if table is None:
            return None
        first = table[0]
        rates = (first.input, first.output, first.cached_input, first.cache_write, first.reasoning)
        return ModelPrice(model, *rates, tiers=tuple(table[1:]), **common)
    if _INPUT not in base or _OUTPUT not in base:
        return None
    return ModelPrice(
        model,
        base[_INPUT],
        base[_OUTPUT],
        base.get(_READ),
        base.get(_WRITE),
        base.get(_REASONING),
        tiers=_threshold_tiers(model, entry, base),
        cache_write_long=_long_write(base),
        **common,
    )


def _candidates(model: str, provider: str | None) -> Iterator[str]:
    """Names tried for `model`, most specific first (the order `Catalog.find` documents)."""
    names, rest = [model], model
    while "/" in rest:
        rest = rest.split("/", 1)[1]
        names.append(rest)
    if provider:
        names = [name for bare in names for name in (f"{provider}/{bare}", bare)]
    undated = [stripped for name in names if (stripped := _DATE_SUFFIX.sub("", name)) != name]
    yield from dict.fromkeys(names + undated)


class Catalog:
    """Model prices by name: `pricing.overrides` first, then litellm's bundled catalog.

    `find(model)` tries these names in order, and the first that exists decides (an entry without a
    per-token price gives None instead of falling through to a look-alike):
      1. an override of exactly `model`;
      2. the catalog key `model` (with `provider=`, "<provider>/<model>" first);
      3. provider prefixes stripped one at a time ("openai/gpt-4o" -> "gpt-4o"; with `provider=`, each
         bare name is also tried as "<provider>/<name>" first);
      4. each of those without a trailing date ("claude-sonnet-4-5-20250929" -> "claude-sonnet-4-5", also
         "-2025-09-29" and "@20250929"), for the dated ids Claude Code sends.
    At every step an override of that name comes before the catalog. "sample_spec" is not a model; an
    `alias_of` row is priced as the entry it names.

    Immutable once loaded; parsed entries are memoised per instance (idempotent), so threads may share it.
    """

    __slots__ = ("_entries", "_overrides", "_parsed", "_version")

    def __init__(self, entries: Mapping[str, Any], version: str, overrides: Mapping[str, ModelPrice]) -> None:
        self._entries = entries
        self._version = version
        self._overrides = dict(overrides)
        self._parsed: dict[str, ModelPrice | None] = {}

    @classmethod
    def load(cls, overrides: Mapping[str, PriceOverride] | None = None, path: Path | None = None) -> Catalog:
        """Read the catalog file (once, ~20 ms) and attach `overrides`."""
        path = catalog_path() if path is None else path
        try:
            data = path.read_bytes()
            # parse_float=Decimal keeps 1.5e-07 exactly 0.00000015: no binary float ever holds a price.
            entries = json.loads(data, parse_float=Decimal)
        except (OSError, ValueError) as exc:
            raise PricingError(f"cannot read the price catalog {path}: {exc}") from exc
        if not isinstance(entries, dict):
            raise PricingError(f"the price catalog {path} is not a JSON object")
        entries.pop("sample_spec", None)  # documents the format; not a model
        version = f"litellm-{_litellm_version()}+{hashlib.sha256(data).hexdigest()[:12]}"
        return cls(entries, version, {}).with_overrides(overrides or {})

    def with_overrides(self, overrides: Mapping[str, PriceOverride]) -> Catalog:
        """The same catalog with other overrides (a config reload), without reading the file again."""
        catalog = Catalog(
            self._entries, self._version, {name: o.to_price(name) for name, o in overrides.items()}
        )
        catalog._parsed = self._parsed  # parsed catalog entries do not depend on overrides
        return catalog

    @property
    def version(self) -> str:
        """'litellm-<version>+<first 12 hex of the file's sha256>', recorded with every priced row."""
        return self._version

    def find(self, model: str, *, provider: str | None = None) -> ModelPrice | None:
        """The price of `model` by the rules in the class docstring, or None."""
        if model in self._overrides:
            return self._overrides[model]
        for name in _candidates(model, provider):
            if name in self._overrides:
                return self._overrides[name]
            if name in self._entries:
                return self._entry(name)
        return None

    def get(self, model: str, *, provider: str | None = None) -> ModelPrice:
        """Like `find`, but raises `UnknownModel` when no price is known."""
        price = self.find(model, provider=provider)
        if price is None:
            raise UnknownModel(model)
        return price

    def __contains__(self, model: object) -> bool:
        return isinstance(model, str) and self.find(model) is not None

    def _entry(self, name: str) -> ModelPrice | None:
        if name not in self._parsed:
            entry = self._entries[name]
            target = entry.get("alias_of") if isinstance(entry, Mapping) else None
            if isinstance(target, str):
                # One hop, as litellm serves them: an alias of an alias is dropped.
                pointed = self._entries.get(target)
                usable = isinstance(pointed, Mapping) and "alias_of" not in pointed
                self._parsed[name] = self._entry(target) if usable else None
            else:
                self._parsed[name] = _parse_entry(name, entry) if isinstance(entry, Mapping) else None
        return self._parsed[name]


def _litellm_version() -> str:
    try:
        return importlib.metadata.version("litellm")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
