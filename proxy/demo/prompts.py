"""Prompts of a requested size for the simulated agents: code-like filler cut from one seeded corpus."""

from __future__ import annotations

import random
from typing import Any

VOCAB = ("def", "class", "return", "self", "import", "request", "response", "handler", "config", "value",
         "token", "cart", "order", "invoice", "user", "session", "test", "assert", "error", "retry", "cache",
         "query", "price", "total", "status", "event", "payload", "schema", "migrate", "deploy")
TOKENS_PER_WORD = 2  # a word and a two-digit suffix ("cart17") are two tokens for OpenAI's tokenizers
CORPUS_WORDS = 60_000


class PromptBook:
    """Slices of one corpus built once from the seed, so building a 30k-token prompt costs a join."""

    def __init__(self, seed: int) -> None:
        rng = random.Random(seed)
        self._words = [f"{rng.choice(VOCAB)}{rng.randint(10, 99)}" for _ in range(CORPUS_WORDS)]

    def text(self, rng: random.Random, tokens: int) -> str:
        """About `tokens` tokens of filler, starting at a random place of the corpus (wrapping around)."""
        left = max(1, tokens // TOKENS_PER_WORD)
        start = rng.randrange(len(self._words))
        parts: list[str] = []
        while left:
            take = min(left, len(self._words) - start)
            parts.append(" ".join(self._words[start: start + take]))
            left -= take
            start = 0
        return " ".join(parts)

    def messages(self, rng: random.Random, *, agent: str, station: str, project: str, issue: str, title: str,
                 tokens: int) -> list[dict[str, Any]]:
        system = f"You are the {agent} agent of the {project} software factory, working at the {station} station."
        return [{"role": "system", "content": system},
                {"role": "user", "content": f"{issue}: {title}\n\nContext:\n{self.text(rng, tokens)}"}]
