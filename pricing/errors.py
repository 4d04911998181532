"""The pricing package's exception family: one root, a few leaves carrying data (no HTTP codes here)."""

from __future__ import annotations


class PricingError(Exception):
    """Root of every error raised by `pricing` (e.g. the bundled catalog cannot be found or read)."""


class UnknownModel(PricingError):
    """No price is known for this model name (neither an override nor a priced catalog entry)."""

    def __init__(self, model: str) -> None:
        super().__init__(f"no price known for model {model!r}")
        self.model = model


class InvalidPrice(PricingError):
    """A price is not a finite, non-negative number (in the catalog file or an override)."""
