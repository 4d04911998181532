"""Prompt token counts with tiktoken, offline: the encodings are litellm's bundled tokenizer files.

Counts are the *expected* prompt size. They are exact for OpenAI models on plain text; tool definitions,
images and non-OpenAI models (counted with cl100k_base as an approximation) are estimates, so a worst case
for a model without its own tokenizer must use `TokenCounter.upper_bound` instead.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import tiktoken

from pricing.catalog import litellm_package_dir

FALLBACK_ENCODING = "cl100k_base"
# A fixed figure per image: OpenAI's low-detail price; the real number depends on size and detail.
IMAGE_TOKENS = 85
TOKENS_PER_MESSAGE = (
    3  # <|start|>{role}\n ... <|end|>\n framing (OpenAI cookbook, gpt-3.5-turbo-0613 and later)
)
TOKENS_PER_NAME = 1
REPLY_PRIMING = 3  # every reply is primed with <|start|>assistant<|message|>
ENDPOINTS = ("chat", "completions", "embeddings", "responses", "messages")

# Order matters: "gpt-4o" must be tried before the cl100k "gpt-4" family.
_O200K_PREFIXES = ("gpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "o1", "o3", "o4", "chatgpt-4o", "codex")
_CL100K_PREFIXES = ("gpt-4", "gpt-3.5", "gpt-35", "text-embedding-3", "text-embedding-ada-002")
_IMAGE_PARTS = frozenset({"image_url", "input_image", "image"})
_TEXT_KEYS = ("text", "thinking", "refusal", "name", "arguments", "output", "transcript")
_NESTED_KEYS = ("content", "function", "summary", "output")
_JSON_KEYS = ("input",)  # an Anthropic tool_use block's input object
# Message fields that are not rendered into the prompt (ids, opaque blobs, item bookkeeping).
_UNCOUNTED_FIELDS = frozenset(
    {"id", "call_id", "tool_call_id", "type", "status", "encrypted_content", "signature"}
)
_MAX_DEPTH = 12  # bodies are untrusted: a deeply nested one is counted shallowly rather than crashing


def tokenizer_dir() -> Path:
    """litellm's bundled `litellm_core_utils/tokenizers` folder (tiktoken's cache layout)."""
    return litellm_package_dir() / "litellm_core_utils" / "tokenizers"


def ensure_offline() -> None:
    """Point tiktoken's cache at the bundled files so it never downloads. Idempotent; called lazily."""
    path = str(tokenizer_dir())
    if os.environ.get("TIKTOKEN_CACHE_DIR") != path:
        os.environ["TIKTOKEN_CACHE_DIR"] = path


def encoding_name_for(model: str) -> str | None:
    """The tiktoken encoding of an OpenAI model ("openai/gpt-4o" too), None if we lack its tokenizer."""
    name = model.rsplit("/", 1)[-1].strip().lower().removeprefix("ft:")
    if name.startswith(_O200K_PREFIXES):
        return "o200k_base"
    if name.startswith(_CL100K_PREFIXES):
        return "cl100k_base"
    return None


def _json_text(value: object) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    except (TypeError, ValueError, RecursionError):
        return ""


class TokenCounter:
    """Counts tokens of texts, chat messages and whole request bodies; never raises on odd body shapes.

    Encodings are loaded on first use and kept; a lock makes that safe from worker threads (encoding
    itself is thread-safe in tiktoken).
    """

    __slots__ = ("_encodings", "_lock")

    def __init__(self) -> None:
        self._encodings: dict[str, tiktoken.Encoding] = {}
        self._lock = threading.Lock()

    def _encoding(self, model: str | None) -> tiktoken.Encoding:
        name = (encoding_name_for(model) if model else None) or FALLBACK_ENCODING
        encoding = self._encodings.get(name)
        if encoding is None:
            with self._lock:
                encoding = self._encodings.get(name)
                if encoding is None:
                    ensure_offline()
                    encoding = self._encodings[name] = tiktoken.get_encoding(name)
        return encoding

    def is_loaded(self, model: str | None) -> bool:
        """Whether counting for `model` is ready (its encoding is loaded; loading takes ~0.1-0.5 s)."""
        return ((encoding_name_for(model) if model else None) or FALLBACK_ENCODING) in self._encodings

    def exact_for(self, model: str) -> bool:
        """Whether `model`'s own tokenizer is available (else counts are cl100k_base approximations)."""
        return encoding_name_for(model) is not None

    def count_text(self, text: str, model: str | None = None) -> int:
        return _Count(self._encoding(model)).text(text)

    def count_messages(self, messages: Sequence[Mapping[str, Any]], model: str | None = None) -> int:
        """Chat messages with OpenAI's framing: 3 per message, 1 per name, 3 to prime the reply."""
        return _Count(self._encoding(model)).messages(messages)

    def count_request(self, endpoint: str, body: Mapping[str, Any], model: str | None = None) -> int:
        """Expected prompt tokens of a request body; `endpoint` is one of `ENDPOINTS`.

        chat: messages + tools / functions / response_format; completions: prompt (+ suffix); embeddings:
        input; responses: instructions + input + tools / text format; messages (Anthropic): system +
        messages + tools. Token arrays count one per token. What is not text is ignored.
        """
        if endpoint not in ENDPOINTS:
            raise ValueError(f"unknown endpoint kind {endpoint!r}; expected one of {ENDPOINTS}")
        if not isinstance(body, Mapping):
            return 0
        if model is None and isinstance(body.get("model"), str):
            model = body["model"]
        count = _Count(self._encoding(model))
        if endpoint == "chat":
            tools = count.as_json(body, "tools", "functions", "response_format")
            return count.messages(body.get("messages")) + tools
        if endpoint == "completions":
            return count.prompt(body.get("prompt")) + count.content(body.get("suffix"))
        if endpoint == "embeddings":
            return count.prompt(body.get("input"))
        if endpoint == "responses":
            items = body.get("input")
            text_items = count.content(items) if isinstance(items, str) else count.messages(items)
            return count.content(body.get("instructions")) + text_items + count.as_json(body, "tools", "text")
        system = body.get("system")
        return count.content(system) + count.messages(body.get("messages")) + count.as_json(body, "tools")

    def upper_bound(self, body_bytes: int) -> int:
        """Prompt tokens can be no more than the prompt's UTF-8 byte length for a byte-level BPE tokenizer.

        This is the worst case for a model without its own tokenizer. It does not cover content the
        provider fetches and tokenizes itself (image URLs, file ids); cap those by the context window.
        """
        return max(body_bytes, 0)


class _Count:
    """One counting pass with one encoding over untrusted JSON-shaped values."""

    __slots__ = ("_encoding",)

    def __init__(self, encoding: tiktoken.Encoding) -> None:
        self._encoding = encoding

    def text(self, text: str) -> int:
        # encode_ordinary: user text that looks like "<|endoftext|>" is text, and must not raise.
        return len(self._encoding.encode_ordinary(text)) if text else 0

    def messages(self, messages: object) -> int:
        if not isinstance(messages, Sequence) or isinstance(messages, str | bytes):
            return 0
        return sum(self.message(message) for message in messages) + REPLY_PRIMING

    def message(self, message: object) -> int:
        if not isinstance(message, Mapping):
            return 0
        total = TOKENS_PER_MESSAGE
        for key, value in message.items():
            if key in _UNCOUNTED_FIELDS:
                continue
            # As in OpenAI's cookbook every other string field counts (role, content, name...).
            total += self.text(value) if isinstance(value, str) else self.content(value)
            if key == "name":
                total += TOKENS_PER_NAME
        return total

    def content(self, value: object, depth: int = 0) -> int:
        """Text inside a content value: a string, a list of parts / blocks, or one part."""
        if isinstance(value, str):
            return self.text(value)
        if depth > _MAX_DEPTH:
            return 0
        if isinstance(value, Sequence) and not isinstance(value, bytes):
            return sum(self.content(part, depth + 1) for part in value)
        if not isinstance(value, Mapping):
            return 0
        if value.get("type") in _IMAGE_PARTS:
            return IMAGE_TOKENS
        total = sum(self.text(value[key]) for key in _TEXT_KEYS if isinstance(value.get(key), str))
        total += sum(
            self.content(value[key], depth + 1)
            for key in _NESTED_KEYS
            if isinstance(value.get(key), Sequence | Mapping) and not isinstance(value.get(key), str)
        )
        return total + sum(
            self.text(_json_text(value[key])) for key in _JSON_KEYS if value.get(key) is not None
        )

    def prompt(self, value: object) -> int:
        """A completions prompt / embeddings input: text, texts, a token array, or token arrays."""
        if isinstance(value, str):
            return self.text(value)
        if not isinstance(value, Sequence) or isinstance(value, bytes):
            return 0
        total = 0
        for item in value:
            if isinstance(item, int) and not isinstance(item, bool):
                total += 1
            elif isinstance(item, str):
                total += self.text(item)
            elif isinstance(item, Sequence):
                total += sum(1 for token in item if isinstance(token, int) and not isinstance(token, bool))
        return total

    def as_json(self, body: Mapping[str, Any], *keys: str) -> int:
        """Tool definitions and schemas, counted as their compact JSON (providers render them similarly)."""
        return sum(self.text(_json_text(body[key])) for key in keys if body.get(key))
