"""The fake upstream's behaviour, read from the model name, and the token plan of one call.

Grammar: the model string is split on "-"; every part that matches an option below applies, the others are
ignored (so "gpt-4o-mini-in100-out20" and "fake-out20-in100" mean the same):

    in<N>       prompt tokens reported (default: the counting rule below)
    out<N>      output tokens per choice, reasoning included (default 5, or reason + 5)
    cached<N>   cached (read) prompt tokens, part of in
    cw<N>       cache-write prompt tokens, part of in (Anthropic only)
    reason<N>   reasoning tokens, part of out; the visible text has out - reason tokens (reported by
                OpenAI chat / responses usage; Anthropic has no such field)
    chunks<K>   stream the visible text in K content events instead of one per token
    err<S>      answer HTTP status S with the provider's error body
    slow<MS>    wait MS ms before the response headers
    gap<MS>     wait MS ms between SSE events
    drop<K>     streams: close the connection abruptly after K content events (none if fewer)
    nousage     no usage anywhere (Anthropic streams end after content_block_stop)
    hang        never answer; wait until the client goes away
    tool        answer with a tool call instead of text (chat completions and Anthropic messages)

Default prompt count: tiktoken cl100k_base tokens of every text in the request (message contents and
their text parts, system / instructions, prompt, embedding inputs) + 3 per message (or per prompt /
input item) + 3. When in<N> is not given it is raised to at least cached + cw.
The visible text of K tokens is "hello" followed by K-1 times " hello" (K tokens in cl100k and o200k).
A request's max tokens caps out (finish "length" / stop_reason "max_tokens").
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_OUT = 5
WORD, NEXT_WORD = "hello", " hello"

_NUMERIC = re.compile(r"^(in|out|cached|cw|reason|chunks|err|slow|gap|drop)(\d+)$")
_FLAGS = frozenset({"nousage", "hang", "tool"})


@dataclass(frozen=True, slots=True)
class Options:
    """What the model name asked for; None means "not given"."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    cached: int = 0
    cache_write: int = 0
    reasoning: int = 0
    chunks: int | None = None
    error_status: int | None = None
    slow_ms: int = 0
    gap_ms: int = 0
    drop_after: int | None = None
    nousage: bool = False
    hang: bool = False
    tool: bool = False


_FIELD = {
    "in": "input_tokens",
    "out": "output_tokens",
    "cached": "cached",
    "cw": "cache_write",
    "reason": "reasoning",
    "chunks": "chunks",
    "err": "error_status",
    "slow": "slow_ms",
    "gap": "gap_ms",
    "drop": "drop_after",
}


@functools.lru_cache(maxsize=4096)
def parse_options(model: str) -> Options:
    values: dict[str, Any] = {}
    for part in model.split("-"):
        if part in _FLAGS:
            values[part] = True
        elif match := _NUMERIC.match(part):
            values[_FIELD[match.group(1)]] = int(match.group(2))
    return Options(**values)


@dataclass(frozen=True, slots=True)
class Plan:
    """Token counts of one call (per choice for output) and the text to send."""

    input_tokens: int
    output_tokens: int
    cached: int
    cache_write: int
    reasoning: int
    pieces: tuple[str, ...]  # the visible text, one entry per content event
    truncated: bool  # out was capped by the request's max tokens
    usage: bool
    gap_s: float
    drop_after: int | None

    @property
    def text(self) -> str:
        return "".join(self.pieces)


class PlanError(ValueError):
    """The model name's options contradict each other (a mistake in the test, reported as a 400)."""


def hello_text(tokens: int) -> str:
    return WORD + NEXT_WORD * (tokens - 1) if tokens > 0 else ""


def make_plan(opts: Options, count_prompt: Callable[[], int], max_tokens: int | None = None) -> Plan:
    """Resolve defaults; count_prompt is only called (tiktoken) when in<N> is not given."""
    cached, cw, reason = opts.cached, opts.cache_write, opts.reasoning
    if opts.input_tokens is None:
        input_tokens = max(count_prompt(), cached + cw)
    elif cached + cw > opts.input_tokens:
        raise PlanError(f"cached ({cached}) + cw ({cw}) exceed in ({opts.input_tokens})")
    else:
        input_tokens = opts.input_tokens
    if opts.output_tokens is None:
        out = DEFAULT_OUT + reason if reason else DEFAULT_OUT
    elif reason > opts.output_tokens:
        raise PlanError(f"reason ({reason}) exceeds out ({opts.output_tokens})")
    else:
        out = opts.output_tokens
    truncated = isinstance(max_tokens, int) and 0 <= max_tokens < out
    if truncated:
        out = max_tokens  # type: ignore[assignment]
        reason = min(reason, out)
    return Plan(
        input_tokens=input_tokens,
        output_tokens=out,
        cached=cached,
        cache_write=cw,
        reasoning=reason,
        pieces=_pieces(out - reason, opts.chunks),
        truncated=truncated,
        usage=not opts.nousage,
        gap_s=opts.gap_ms / 1000,
        drop_after=opts.drop_after,
    )


def _pieces(tokens: int, chunks: int | None) -> tuple[str, ...]:
    if tokens <= 0:
        return ()
    if chunks is None or chunks >= tokens:
        return (WORD,) + (NEXT_WORD,) * (tokens - 1)
    chunks = max(chunks, 1)
    size, extra = divmod(tokens, chunks)
    out, start = [], 0
    for i in range(chunks):
        n = size + (1 if i < extra else 0)
        out.append((WORD if start == 0 else NEXT_WORD) + NEXT_WORD * (n - 1))
        start += n
    return tuple(out)


# --- default prompt count -------------------------------------------------------------------------


@functools.cache
def tiktoken_encoding(name: str = "cl100k_base") -> Any:
    """An encoding loaded from litellm's bundled files (offline), as the proxy does (DESIGN section 10)."""
    spec = importlib.util.find_spec("litellm")  # locates the package without importing it
    if spec is not None and spec.submodule_search_locations:
        bundled = Path(next(iter(spec.submodule_search_locations))) / "litellm_core_utils" / "tokenizers"
        os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(bundled))
    import tiktoken

    return tiktoken.get_encoding(name)


def count_prompt_tokens(texts: list[str], messages: int) -> int:
    enc = tiktoken_encoding()
    return sum(len(enc.encode_ordinary(t)) for t in texts) + 3 * messages + 3


def _texts_of_content(content: Any) -> Iterator[str]:
    if isinstance(content, str):
        yield content
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, str):
                yield part
            elif isinstance(part, dict):
                if isinstance(part.get("text"), str):
                    yield part["text"]
                if "content" in part:  # Anthropic tool_result blocks nest content
                    yield from _texts_of_content(part["content"])


def prompt_counter(body: dict[str, Any], kind: str) -> Callable[[], int]:
    """A lazy default prompt count for a request body of the given endpoint kind."""

    def count() -> int:
        texts: list[str] = []
        if kind in ("chat", "messages"):
            items = body.get("messages") or []
            texts.extend(_texts_of_content(body.get("system")))
        elif kind == "responses":
            raw = body.get("input")
            items = [{"content": raw}] if isinstance(raw, str) else raw or []
            texts.extend(_texts_of_content(body.get("instructions")))
        else:  # completions (prompt) and embeddings (input)
            raw = body.get("prompt" if kind == "completions" else "input")
            if isinstance(raw, str) or (isinstance(raw, list) and raw and isinstance(raw[0], int)):
                raw = [raw]
            items = [{"content": r} for r in raw or []]
        extra = 0
        for item in items if isinstance(items, list) else []:
            if isinstance(item, dict):
                content = item.get("content")
                if isinstance(content, list) and content and all(isinstance(t, int) for t in content):
                    extra += len(content)  # already token ids
                else:
                    texts.extend(_texts_of_content(content))
        n_items = len(items) if isinstance(items, list) else 0
        return count_prompt_tokens(texts, n_items) + extra

    return count
