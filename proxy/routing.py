"""Model routes: the client's "model" -> a Deployment (provider, upstream model, price) from config.yaml."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable

from pricing.catalog import Catalog, ModelPrice
from proxy.errors import InvalidRequest, ModelNotFound
from proxy.settings import ModelConfig
from proxy.upstreams.base import Deployment

_MEMO_LIMIT = 10_000


class Router:
    """Exact names first, then wildcard patterns (`claude-*`) in config order.

    Entries sharing a name form a fallback chain: `resolve` returns them in file order, and a call that
    fails on one (connection error, timeout, 429 or 5xx before anything reached the client) moves on to
    the next.
    """

    def __init__(self, models: Iterable[ModelConfig], catalog: Catalog, *, allow_unpriced: bool) -> None:
        self._catalog = catalog
        self._allow_unpriced = allow_unpriced
        self.configs: list[ModelConfig] = list(models)
        self._chains: dict[str, list[ModelConfig]] = {}
        for m in self.configs:
            self._chains.setdefault(m.name, []).append(m)
        self._exact: dict[str, tuple[Deployment, ...]] = {
            name: tuple(self._deployment(m, name) for m in chain)
            for name, chain in self._chains.items() if "*" not in name
        }
        self._patterns = [name for name in self._chains if "*" in name]
        # Wildcard resolutions, memoised: building Deployments and pricing them on every call is wasted work.
        self._resolved: dict[str, tuple[Deployment, ...]] = {}

    def resolve(self, model: str) -> tuple[Deployment, ...]:
        """The deployments for `model`, first choice first (at least one)."""
        found = self._exact.get(model) or self._resolved.get(model)
        if found is not None:
            return found
        for pattern in self._patterns:
            if fnmatch.fnmatchcase(model, pattern):
                chain = tuple(self._deployment(m, model) for m in self._chains[pattern])
                if len(self._resolved) < _MEMO_LIMIT:  # bounded: clients choose these names
                    self._resolved[model] = chain
                return chain
        raise ModelNotFound(f"model {model!r} is not configured on this spendgate (see GET /v1/models)",
                            param="model")

    def model_names(self) -> list[str]:
        return list(self._chains)

    def _deployment(self, m: ModelConfig, requested: str) -> Deployment:
        upstream = m.upstream_model or requested
        return Deployment(
            name=m.name, requested=requested, provider=m.provider, upstream_model=upstream,
            price=self._price(m, requested), api_base=m.api_base, api_key=m.api_key,
            api_version=m.api_version, default_max_output_tokens=m.default_max_output_tokens,
            timeout_s=m.timeout_s, mock=m.mock, position=self._chains[m.name].index(m),
        )

    def _price(self, m: ModelConfig, requested: str) -> ModelPrice | None:
        # A wildcard route is priced by the model actually requested (Claude Code sends dated ids).
        target = m.price_as or (requested if m.is_wildcard else (m.upstream_model or m.name))
        price = self._catalog.find(target)
        if price is None and not self._allow_unpriced:
            raise InvalidRequest(
                f"model {requested!r} has no known price (no catalog entry {target!r}); set `price_as` or "
                "`pricing.overrides` in config.yaml", param="model")
        return price


def check_prices(models: Iterable[ModelConfig], catalog: Catalog, *,
                 allow_unpriced: bool) -> list[tuple[tuple[str, int, str], str]]:
    """Problems to report at config load, as (path, message): every fixed (non-wildcard) route must be priced."""
    problems: list[tuple[tuple[str, int, str], str]] = []
    for i, m in enumerate(models):
        if m.is_wildcard and not m.price_as:
            continue
        target = m.price_as or m.upstream_model or m.name
        if catalog.find(target) is None and not allow_unpriced:
            problems.append((("models", i, "price_as"),
                             f"no price known for {target!r}; name a catalog model in `price_as`, add it to "
                             "`pricing.overrides`, or set `pricing.unpriced: allow`"))
    return problems
