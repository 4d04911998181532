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
    """Exact names first, then wildcard patterns (`claude-*`) in config order."""

    def __init__(self, models: Iterable[ModelConfig], catalog: Catalog, *, allow_unpriced: bool) -> None:
        self._catalog = catalog
        self._allow_unpriced = allow_unpriced
        self._exact: dict[str, Deployment] = {}
        self._patterns: list[ModelConfig] = []
        # Wildcard resolutions, memoised: building a Deployment and pricing it on every call is wasted work.
        self._resolved: dict[str, Deployment] = {}
        self.configs: list[ModelConfig] = list(models)
        for m in self.configs:
            if m.is_wildcard:
                self._patterns.append(m)
            else:
                self._exact[m.name] = self._deployment(m, m.name)

    def resolve(self, model: str) -> Deployment:
        found = self._exact.get(model)
        if found is not None:
            return found
        found = self._resolved.get(model)
        if found is not None:
            return found
        for m in self._patterns:
            if fnmatch.fnmatchcase(model, m.name):
                deployment = self._deployment(m, model)
                if len(self._resolved) < _MEMO_LIMIT:  # bounded: clients choose these names
                    self._resolved[model] = deployment
                return deployment
        raise ModelNotFound(f"model {model!r} is not configured on this spendgate (see GET /v1/models)",
                            param="model")

    def model_names(self) -> list[str]:
        return [m.name for m in self.configs]

    def _deployment(self, m: ModelConfig, requested: str) -> Deployment:
        upstream = m.upstream_model or requested
        return Deployment(
            name=m.name, requested=requested, provider=m.provider, upstream_model=upstream,
            price=self._price(m, requested), api_base=m.api_base, api_key=m.api_key,
            api_version=m.api_version, default_max_output_tokens=m.default_max_output_tokens,
            timeout_s=m.timeout_s, mock=m.mock,
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


def check_prices(models: Iterable[ModelConfig], catalog: Catalog, *, allow_unpriced: bool) -> list[str]:
    """Problems to report at config load: every fixed (non-wildcard) route must be priced."""
    problems = []
    for i, m in enumerate(models):
        if m.is_wildcard and not m.price_as:
            continue
        target = m.price_as or m.upstream_model or m.name
        if catalog.find(target) is None and not allow_unpriced:
            problems.append(f"models[{i}].price_as: no price known for {target!r}; name a catalog model in "
                            "`price_as`, add it to `pricing.overrides`, or set `pricing.unpriced: allow`")
    return problems
