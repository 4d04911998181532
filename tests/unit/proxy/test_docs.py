"""Every config key of every section model is documented in docs/config.md (as datasette's test_docs does)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from policies.config import AlertRule, ApprovalsConfig, BudgetConfig, LedgerConfig, WebhookConfig
from pricing.catalog import PriceOverride
from proxy.settings import KeyConfig, MockOptions, ModelConfig, PricingConfig, ServerConfig, Settings
from proxy.store.config import StoreConfig

CONFIG_DOC = Path(__file__).resolve().parents[3] / "docs" / "config.md"
SECTION_MODELS: tuple[type[BaseModel], ...] = (
    Settings, ServerConfig, StoreConfig, PricingConfig, PriceOverride, ModelConfig, MockOptions, KeyConfig,
    LedgerConfig, BudgetConfig, AlertRule, WebhookConfig, ApprovalsConfig,
)


def config_keys() -> list[tuple[str, str]]:
    return [(model.__name__, key) for model in SECTION_MODELS for key in model.model_fields]


def test_every_section_model_of_settings_is_listed_here() -> None:
    """A new nested section model must be added to SECTION_MODELS, so its keys get checked too."""
    found: set[type[BaseModel]] = set()

    def walk(model: type[BaseModel]) -> None:
        if model in found:
            return
        found.add(model)
        for field in model.model_fields.values():
            for arg in _model_args(field.annotation):
                walk(arg)

    walk(Settings)
    assert found <= set(SECTION_MODELS), sorted(m.__name__ for m in found - set(SECTION_MODELS))


def _model_args(annotation: object) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in getattr(annotation, "__args__", ()) for m in _model_args(arg)]


@pytest.fixture(scope="module")
def documented() -> set[str]:
    if not CONFIG_DOC.exists():
        pytest.fail(f"{CONFIG_DOC} is missing; it must document: "
                    + ", ".join(sorted({key for _model, key in config_keys()})))
    return set(re.findall(r"`([^`\n]+)`", CONFIG_DOC.read_text(encoding="utf-8")))


@pytest.mark.parametrize("model, key", config_keys(), ids=[f"{m}.{k}" for m, k in config_keys()])
def test_config_key_is_documented(documented: set[str], model: str, key: str) -> None:
    assert key in documented, f"{model}.{key} is not documented in docs/config.md (write it as `{key}`)"
