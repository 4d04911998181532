"""Offline token counting; expected figures come from tiktoken directly, following OpenAI's cookbook."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import tiktoken

from pricing.tokens import TokenCounter, encoding_name_for, ensure_offline, tokenizer_dir

# The example conversation of OpenAI's "How to count tokens with tiktoken" cookbook.
COOKBOOK_MESSAGES = [
    {
        "role": "system",
        "content": "You are a helpful, pattern-following assistant that translates corporate jargon into plain English.",
    },
    {"role": "system", "name": "example_user", "content": "New synergies will help drive top-line growth."},
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Things working well together will increase revenue.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more bandwidth to touch base on opportunities for increased leverage.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the client deliverable.",
    },
]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]


@pytest.fixture(scope="module")
def counter() -> TokenCounter:
    return TokenCounter()


def enc(name: str) -> tiktoken.Encoding:
    ensure_offline()
    return tiktoken.get_encoding(name)


def n(text: str, name: str = "o200k_base") -> int:
    return len(enc(name).encode_ordinary(text))


def compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def cookbook_count(messages: list[dict[str, str]], name: str) -> int:
    total = 0
    for message in messages:
        total += 3
        for key, value in message.items():
            total += n(value, name)
            if key == "name":
                total += 1
    return total + 3


def test_encodings_load_with_the_network_blocked(tmp_path: Path) -> None:
    # A fresh interpreter so no encoding is cached in memory, an empty tiktoken cache so nothing is on disk
    # except litellm's bundled files, and sockets that cannot connect.
    script = (
        "import socket\n"
        "def refuse(*args, **kwargs):\n"
        "    raise OSError('network disabled in this test')\n"
        "socket.socket.connect = refuse\n"
        "socket.socket.connect_ex = refuse\n"
        "socket.create_connection = refuse\n"
        "socket.getaddrinfo = refuse\n"
        "from pricing.tokens import TokenCounter\n"
        "counter = TokenCounter()\n"
        "assert counter.count_text('hello world', 'gpt-4') == 2\n"
        "assert counter.count_text('hello world', 'gpt-4o') == 2\n"
        "import tiktoken\n"
        "tiktoken.get_encoding('cl100k_base'); tiktoken.get_encoding('o200k_base')\n"
    )
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(tmp_path), "DATA_GYM_CACHE_DIR": str(tmp_path)}
    root = Path(__file__).resolve().parents[3]
    subprocess.run([sys.executable, "-c", script], check=True, cwd=root, env=env, timeout=60)


def test_ensure_offline_points_at_the_bundled_files(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TIKTOKEN_CACHE_DIR", raising=False)
    ensure_offline()
    ensure_offline()
    assert os.environ["TIKTOKEN_CACHE_DIR"] == str(tokenizer_dir())
    assert tokenizer_dir().name == "tokenizers" and tokenizer_dir().is_dir()


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("gpt-4o", "o200k_base"),
        ("openai/gpt-4o-mini", "o200k_base"),
        ("gpt-4.1-nano", "o200k_base"),
        ("gpt-5-codex", "o200k_base"),
        ("o3-mini", "o200k_base"),
        ("chatgpt-4o-latest", "o200k_base"),
        ("ft:gpt-4o-mini:acme::abc", "o200k_base"),
        ("gpt-4-turbo", "cl100k_base"),
        ("gpt-3.5-turbo", "cl100k_base"),
        ("azure/gpt-35-turbo", "cl100k_base"),
        ("text-embedding-3-small", "cl100k_base"),
        ("text-embedding-ada-002", "cl100k_base"),
        ("claude-sonnet-4-5", None),
        ("gemini/gemini-2.5-pro", None),
        ("llama-3.1-70b", None),
    ],
)
def test_encoding_name_for(model: str, expected: str | None, counter: TokenCounter) -> None:
    assert encoding_name_for(model) == expected
    assert counter.exact_for(model) is (expected is not None)


def test_count_text(counter: TokenCounter) -> None:
    text = "Spendgate meters every call. <|endoftext|> is just text here."
    assert counter.count_text(text, "gpt-4o") == n(text)
    assert counter.count_text(text, "gpt-4") == n(text, "cl100k_base")
    assert counter.count_text(text, "claude-sonnet-4-5") == n(text, "cl100k_base")  # approximation
    assert counter.count_text(text) == n(text, "cl100k_base")
    assert counter.count_text("") == 0


def test_count_a_megabyte(counter: TokenCounter) -> None:
    text = "a" * 1_000_000
    assert counter.count_text(text, "gpt-4o") == n(text)
    assert 0 < counter.count_text(text, "gpt-4o") <= counter.upper_bound(len(text.encode()))


@pytest.mark.parametrize(
    ("model", "encoding", "cookbook"), [("gpt-3.5-turbo", "cl100k_base", 129), ("gpt-4o", "o200k_base", 124)]
)
def test_count_messages_matches_the_cookbook(
    counter: TokenCounter, model: str, encoding: str, cookbook: int
) -> None:
    assert (
        counter.count_messages(COOKBOOK_MESSAGES, model)
        == cookbook_count(COOKBOOK_MESSAGES, encoding)
        == cookbook
    )


def test_count_messages_with_parts_tools_and_results(counter: TokenCounter) -> None:
    messages: list[dict[str, Any]] = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is here?"},
                {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "look", "arguments": '{"at":"image"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "a cat"},
    ]
    want = (
        3 + n("user") + n("What is here?") + 85
        + 3 + n("assistant") + n("look") + n('{"at":"image"}')
        + 3 + n("tool") + n("a cat")
        + 3
    )  # fmt: skip
    assert counter.count_messages(messages, "gpt-4o") == want


def test_count_request_chat(counter: TokenCounter) -> None:
    body = {"model": "gpt-4o", "messages": COOKBOOK_MESSAGES, "tools": TOOLS}
    assert counter.count_request("chat", body) == cookbook_count(COOKBOOK_MESSAGES, "o200k_base") + n(
        compact(TOOLS)
    )
    # The model argument wins over the body's.
    assert counter.count_request("chat", body, model="gpt-3.5-turbo") == (
        cookbook_count(COOKBOOK_MESSAGES, "cl100k_base") + n(compact(TOOLS), "cl100k_base")
    )


def test_count_request_completions(counter: TokenCounter) -> None:
    assert counter.count_request("completions", {"model": "gpt-4o", "prompt": "Say hi"}) == n("Say hi")
    assert counter.count_request("completions", {"model": "gpt-4o", "prompt": ["a b", "c"]}) == n("a b") + n(
        "c"
    )
    assert counter.count_request("completions", {"model": "gpt-4o", "prompt": [1, 2, 3]}) == 3
    assert counter.count_request("completions", {"model": "gpt-4o", "prompt": [[1, 2], [3]]}) == 3


def test_count_request_embeddings(counter: TokenCounter) -> None:
    model = "text-embedding-3-small"
    assert counter.count_request("embeddings", {"model": model, "input": "hello there"}) == n(
        "hello there", "cl100k_base"
    )
    assert counter.count_request("embeddings", {"model": model, "input": ["x y", "z"]}) == n(
        "x y", "cl100k_base"
    ) + n("z", "cl100k_base")
    assert counter.count_request("embeddings", {"model": model, "input": [[5, 6, 7], [8]]}) == 4


def test_count_request_responses(counter: TokenCounter) -> None:
    simple = {"model": "gpt-4.1", "instructions": "Be terse.", "input": "Hello"}
    assert counter.count_request("responses", simple) == n("Be terse.") + n("Hello")
    items = [
        {"role": "user", "content": [{"type": "input_text", "text": "Weather?"}]},
        {"type": "function_call", "call_id": "c1", "name": "weather", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
    ]
    body = {"model": "gpt-4.1", "input": items, "tools": TOOLS}
    want = (
        3 + n("user") + n("Weather?")
        + 3 + n("weather") + 1 + n("{}")
        + 3 + n("sunny")
        + 3 + n(compact(TOOLS))
    )  # fmt: skip
    assert counter.count_request("responses", body) == want


def test_count_request_anthropic_messages(counter: TokenCounter) -> None:
    tools = [{"name": "search", "description": "Search", "input_schema": {"type": "object"}}]
    body = {
        "model": "claude-sonnet-4-5",
        "system": [{"type": "text", "text": "You are careful.", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": "Find it"},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "t1", "name": "search", "input": {"q": "it"}}],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "t1",
                        "content": [{"type": "text", "text": "found"}],
                    }
                ],
            },
        ],
        "tools": tools,
    }
    c = "cl100k_base"  # no Claude tokenizer: the cl100k approximation
    want = (
        n("You are careful.", c)
        + 3 + n("user", c) + n("Find it", c)
        + 3 + n("assistant", c) + n("search", c) + n(compact({"q": "it"}), c)
        + 3 + n("user", c) + n("found", c)
        + 3 + n(compact(tools), c)
    )  # fmt: skip
    assert counter.count_request("messages", body) == want


ODD_BODIES: list[Any] = [
    {},
    {"messages": "not a list", "prompt": {"a": 1}, "input": 42, "system": 7},
    {
        "messages": [
            None,
            1,
            "x",
            {"role": None, "content": {"weird": True}},
            {"content": [None, 3, {"type": None}]},
        ]
    },
    {"input": [{"content": [[[[[]]]]]}], "tools": "yes", "instructions": ["x"]},
    {"prompt": [True, None, [None, "a", 1]], "input": [{"role": "user", "content": {"text": 5}}]},
    {"model": 3, "messages": [{"content": [{"type": "tool_use", "input": {1, 2}}]}]},
]


@pytest.mark.parametrize("endpoint", ["chat", "completions", "embeddings", "responses", "messages"])
def test_odd_shapes_never_raise(counter: TokenCounter, endpoint: str) -> None:
    deep: Any = "deep"
    for _ in range(5_000):
        deep = [deep]
    for body in [
        *ODD_BODIES,
        {"messages": [{"content": deep}], "input": deep, "prompt": deep, "system": deep},
    ]:
        assert counter.count_request(endpoint, body) >= 0


def test_unknown_endpoint_is_a_programming_error(counter: TokenCounter) -> None:
    with pytest.raises(ValueError):
        counter.count_request("images", {})


def test_upper_bound_is_the_byte_length(counter: TokenCounter) -> None:
    text = "naïve 東京 🙂" * 100
    assert counter.upper_bound(len(text.encode())) == len(text.encode())
    assert counter.count_text(text, "gpt-4o") <= counter.upper_bound(len(text.encode()))
    assert counter.upper_bound(-5) == 0


def test_counting_from_threads() -> None:
    fresh = TokenCounter()
    texts = [f"message number {i} " * 50 for i in range(32)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        counts = list(pool.map(lambda t: fresh.count_text(t, "gpt-4o"), texts))
    assert counts == [n(t) for t in texts]
