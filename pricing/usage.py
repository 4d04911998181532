"""Token usage of one call, in OpenAI's semantics, whatever the provider reported."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts of one call.

    `input_tokens` counts every prompt token, cached ones included; `cached_input_tokens` (cache reads) and
    `cache_write_tokens` are parts of it. `output_tokens` includes `reasoning_tokens`. Anthropic's usage is
    normalised to this shape: input = input + cache read + cache creation.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens
