"""Catalog lookup and parsing, checked against litellm's raw JSON read independently here."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from pricing.catalog import Catalog, ModelPrice, PriceOverride, catalog_path
from pricing.errors import InvalidPrice, PricingError, UnknownModel


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    entries: dict[str, Any] = json.loads(catalog_path().read_text())
    return entries


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.load()


def rate(raw: dict[str, Any], model: str, key: str) -> Decimal:
    return Decimal(repr(raw[model][key]))


def write_catalog(tmp_path: Path, entries: dict[str, Any]) -> Path:
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(entries))
    return path


def test_catalog_path_is_litellms_bundled_file() -> None:
    path = catalog_path()
    assert path.name == "model_prices_and_context_window_backup.json"
    assert path.parent.name == "litellm" and path.is_file()


def test_version_names_litellm_and_file_hash(catalog: Catalog) -> None:
    digest = hashlib.sha256(catalog_path().read_bytes()).hexdigest()[:12]
    assert catalog.version == f"litellm-{importlib.metadata.version('litellm')}+{digest}"


def test_prices_are_exact_decimals(catalog: Catalog, raw: dict[str, Any]) -> None:
    price = catalog.get("gpt-4o-mini")
    assert price.input == Decimal("0.00000015") == rate(raw, "gpt-4o-mini", "input_cost_per_token")
    assert price.output == rate(raw, "gpt-4o-mini", "output_cost_per_token")
    assert price.cached_input == rate(raw, "gpt-4o-mini", "cache_read_input_token_cost")
    assert (price.provider, price.mode, price.source) == ("openai", "chat", "catalog")
    assert price.max_input_tokens == raw["gpt-4o-mini"]["max_input_tokens"]


def test_anthropic_cache_rates(catalog: Catalog, raw: dict[str, Any]) -> None:
    price = catalog.get("claude-sonnet-4-5")
    assert price.cache_write == rate(raw, "claude-sonnet-4-5", "cache_creation_input_token_cost")
    assert price.cache_write_long == rate(
        raw, "claude-sonnet-4-5", "cache_creation_input_token_cost_above_1hr"
    )


def test_unknown_model_raises(catalog: Catalog) -> None:
    with pytest.raises(UnknownModel) as caught:
        catalog.get("no-such-model-zz9")
    assert caught.value.model == "no-such-model-zz9"
    assert isinstance(caught.value, PricingError)
    assert catalog.find("no-such-model-zz9") is None
    assert "no-such-model-zz9" not in catalog


def test_provider_prefix_is_stripped(catalog: Catalog) -> None:
    assert catalog.get("openai/gpt-4o").model == "gpt-4o"
    assert catalog.get("anthropic/claude-sonnet-4-5").model == "claude-sonnet-4-5"
    assert catalog.get("openrouter/anthropic/claude-sonnet-4-5").model == "claude-sonnet-4-5"


def test_exact_prefixed_key_wins_over_stripped(catalog: Catalog, raw: dict[str, Any]) -> None:
    assert "gemini/gemini-2.5-pro" in raw
    assert catalog.get("gemini/gemini-2.5-pro").model == "gemini/gemini-2.5-pro"
    assert catalog.get("gemini-2.5-pro", provider="gemini").model == "gemini/gemini-2.5-pro"


def test_dated_ids_fall_back_to_the_undated_entry(catalog: Catalog, raw: dict[str, Any]) -> None:
    assert "claude-sonnet-4-5-20250929" in raw  # present itself: used as is
    assert catalog.get("claude-sonnet-4-5-20250929").model == "claude-sonnet-4-5-20250929"
    for dated in (
        "claude-sonnet-4-5-20991231",
        "claude-sonnet-4-5-2099-12-31",
        "anthropic/claude-sonnet-4-5-20991231",
    ):
        assert catalog.get(dated).model == "claude-sonnet-4-5"


def test_entries_without_token_prices_are_not_priced(catalog: Catalog, raw: dict[str, Any]) -> None:
    unpriced = sorted(
        name
        for name, entry in raw.items()
        if entry.get("mode") == "chat"
        and "input_cost_per_token" not in entry
        and "output_cost_per_token" not in entry
        and "tiered_pricing" not in entry
        and "alias_of" not in entry
    )
    assert unpriced, "the catalog should contain chat entries priced in other units"
    for name in unpriced[:20]:
        assert catalog.find(name) is None
        assert name not in catalog
    assert catalog.find("sample_spec") is None


def test_overrides_win_and_convert_exactly(raw: dict[str, Any]) -> None:
    overrides = {
        "gpt-4o-mini": PriceOverride(input_per_mtok=0.1, output_per_mtok=0.3, cached_input_per_mtok=0.05),
        "my-finetune": PriceOverride(input_per_mtok=3.0, output_per_mtok=12.0, max_output_tokens=4096),
    }
    catalog = Catalog.load(overrides)
    price = catalog.get("gpt-4o-mini")
    assert price.source == "override"
    assert (price.input, price.output, price.cached_input) == (
        Decimal("0.0000001"),
        Decimal("0.0000003"),
        Decimal("0.00000005"),
    )
    assert catalog.get("my-finetune").max_output_tokens == 4096
    assert catalog.get("openai/my-finetune").source == "override"
    assert Catalog.load().get("gpt-4o-mini").input == rate(raw, "gpt-4o-mini", "input_cost_per_token")


def test_with_overrides_keeps_the_file(catalog: Catalog) -> None:
    swapped = catalog.with_overrides({"gpt-4o": PriceOverride(input_per_mtok=1, output_per_mtok=2)})
    assert swapped.version == catalog.version
    assert swapped.get("gpt-4o").source == "override"
    assert catalog.get("gpt-4o").source == "catalog"


def test_override_validation() -> None:
    with pytest.raises(ValidationError):
        PriceOverride(input_per_mtok=-1, output_per_mtok=1)
    with pytest.raises(ValidationError):
        PriceOverride(input_per_mtok=1, output_per_mtok=1, typo_per_mtok=2)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        PriceOverride(input_per_mtok=float("inf"), output_per_mtok=1)


def test_threshold_tiers_use_thousands(catalog: Catalog, raw: dict[str, Any]) -> None:
    price = catalog.get("gemini-2.5-pro")
    (tier,) = price.tiers
    assert tier.threshold_tokens == 200_000
    assert tier.input == rate(raw, "gemini-2.5-pro", "input_cost_per_token_above_200k_tokens")
    assert price.rates_for(200_000).input == price.input  # strictly above the threshold
    assert price.rates_for(200_001).input == tier.input
    assert price.rates_for(200_001).output == rate(
        raw, "gemini-2.5-pro", "output_cost_per_token_above_200k_tokens"
    )


def test_xai_thresholds_are_inclusive(catalog: Catalog, raw: dict[str, Any]) -> None:
    name = "xai/grok-4.3"
    price = catalog.get(name)
    assert price.rates_for(200_000).input == rate(raw, name, "input_cost_per_token_above_200k_tokens")
    assert price.rates_for(199_999).input == rate(raw, name, "input_cost_per_token")


def test_tiered_pricing_table(catalog: Catalog, raw: dict[str, Any]) -> None:
    name = "dashscope/qwen-flash"
    low, high = raw[name]["tiered_pricing"]
    price = catalog.get(name)
    assert price.rates_for(256_000).input == Decimal(repr(low["input_cost_per_token"]))
    assert price.rates_for(256_001).input == Decimal(repr(high["input_cost_per_token"]))
    assert price.rates_for(256_001).output == Decimal(repr(high["output_cost_per_token"]))


def test_alias_rows_price_as_their_target(catalog: Catalog, raw: dict[str, Any]) -> None:
    alias, entry = next((name, e) for name, e in raw.items() if "alias_of" in e and e["alias_of"] in raw)
    assert catalog.get(alias) == catalog.get(entry["alias_of"])


def test_max_rates_cover_reachable_tiers_and_cache_writes(catalog: Catalog) -> None:
    price = catalog.get("claude-sonnet-4-5")
    assert price.max_input_rate(1000, cache_write_possible=False) == price.input
    assert price.max_input_rate(1000, cache_write_possible=True) == price.cache_write_long
    gemini = catalog.get("gemini-2.5-pro")
    assert gemini.max_input_rate(200_000, cache_write_possible=False) == gemini.input
    assert gemini.max_input_rate(200_001, cache_write_possible=False) == gemini.tiers[0].input
    assert gemini.max_output_rate(200_001) == gemini.tiers[0].output


def test_reasoning_rate_counts_in_max_output_rate(catalog: Catalog, raw: dict[str, Any]) -> None:
    name = next(
        n
        for n, e in sorted(raw.items())
        if "output_cost_per_reasoning_token" in e
        and "tiered_pricing" not in e
        and e.get("output_cost_per_reasoning_token", 0) > e.get("output_cost_per_token", 0)
    )
    price = catalog.get(name)
    assert price.reasoning == rate(raw, name, "output_cost_per_reasoning_token")
    assert price.max_output_rate(1) == price.reasoning > price.output


def test_parsing_rules_on_a_small_file(tmp_path: Path) -> None:
    path = write_catalog(
        tmp_path,
        {
            "sample_spec": {"input_cost_per_token": 0.0, "output_cost_per_token": 0.0},
            "as-strings": {"input_cost_per_token": "1e-6", "output_cost_per_token": "2e-6"},
            "embedder": {"input_cost_per_token": 1e-07, "mode": "embedding"},
            "output-only": {"output_cost_per_token": 1e-06, "input_cost_per_video_per_second": 0.001},
            "chat-no-output": {"input_cost_per_token": 1e-06, "mode": "chat"},
            "free": {"input_cost_per_token": 0, "output_cost_per_token": 0},
            "priority-only-tier": {
                "input_cost_per_token": 1e-06,
                "output_cost_per_token": 2e-06,
                "input_cost_per_token_above_128k_tokens_priority": 9e-06,
            },
            "negative": {"input_cost_per_token": -1e-06, "output_cost_per_token": 1e-06},
        },
    )
    catalog = Catalog.load(path=path)
    assert catalog.find("sample_spec") is None
    assert catalog.get("as-strings").input == Decimal("0.000001")
    assert catalog.get("embedder").output == 0
    assert catalog.find("output-only") is None
    assert catalog.find("chat-no-output") is None
    assert catalog.get("free") == ModelPrice("free", Decimal(0), Decimal(0))
    assert catalog.get("priority-only-tier").tiers == ()
    with pytest.raises(InvalidPrice):
        catalog.find("negative")


def test_a_missing_file_is_a_pricing_error(tmp_path: Path) -> None:
    with pytest.raises(PricingError):
        Catalog.load(path=tmp_path / "missing.json")


def test_litellm_is_never_imported() -> None:
    script = (
        "import sys\n"
        "from pricing.catalog import Catalog\n"
        "from pricing.tokens import TokenCounter\n"
        "Catalog.load().get('gpt-4o')\n"
        "TokenCounter().count_text('hello', 'gpt-4o')\n"
        "assert 'litellm' not in sys.modules, 'litellm was imported'\n"
    )
    root = Path(__file__).resolve().parents[3]
    subprocess.run([sys.executable, "-c", script], check=True, cwd=root, timeout=60)
