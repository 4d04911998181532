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
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from pricing.errors import InvalidPrice, PricingError, UnknownModel
from pricing.prices import ModelPrice, PriceOverride, PriceTier, Rates

__all__ = ["Catalog", "ModelPrice", "PriceOverride", "PriceTier", "Rates", "catalog_path"]

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
