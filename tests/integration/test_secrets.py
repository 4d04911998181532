"""No secret (provider key, virtual key) in a log line, an answer or a stored row, whatever goes wrong."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import httpx
import pytest

from tests.fakes.upstream import ANTHROPIC_KEY, OPENAI_KEY
from tests.harness import ADMIN, Proxy

pytestmark = pytest.mark.integration
MSGS = [{"role": "user", "content": "hi"}]
CALLS = [
    ("/v1/chat/completions", {"model": "fake-in5-out2", "messages": MSGS}),
    ("/v1/chat/completions", {"model": "fake-in5-out2", "messages": MSGS, "stream": True}),
    ("/v1/chat/completions", {"model": "fake-err500", "messages": MSGS}),
    ("/v1/chat/completions", {"model": "dead-x", "messages": MSGS}),
    ("/v1/chat/completions", {"model": "fast-timeout-hang", "messages": MSGS}),
    ("/v1/chat/completions", {"model": "fake-in5-out50-drop3", "messages": MSGS, "stream": True}),
    ("/v1/chat/completions", {"model": "claude-fake-err500", "messages": MSGS}),  # through litellm
    ("/v1/messages", {"model": "claude-fake-in5-out2", "max_tokens": 5, "messages": MSGS}),
    ("/v1/messages", {"model": "claude-fake-err401", "max_tokens": 5, "messages": MSGS}),
    ("/v1/chat/completions", {"model": "fake-x", "messages": MSGS, "api_key": "sk-attacker-supplied"}),
]


def test_keys_never_leak(proxy: Proxy, caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    caplog.set_level(logging.DEBUG)
    answers = []
    with httpx.Client(timeout=30) as c:
        for path, body in CALLS:
            r = c.post(proxy.url + path, json=body,
                       headers={"authorization": f"Bearer {ADMIN}", "anthropic-version": "2023-06-01"})
            answers.append(f"{r.status_code} {dict(r.headers)} {r.text}")
        answers.append(c.get(proxy.url + "/api/calls", headers={"authorization": f"Bearer {ADMIN}"}).text)
    proxy.server.stop()  # flush every row to SQL
    stored = "\n".join(" ".join(map(str, row)) for row in
                       sqlite3.connect(tmp_path / "spendgate.db").execute("select * from usage"))
    assert stored.count("acme") >= len(CALLS) - 1
    for secret in (OPENAI_KEY, ANTHROPIC_KEY, ADMIN):
        assert secret not in caplog.text, f"{secret} in the logs"
        assert all(secret not in a for a in answers), f"{secret} in an answer"
        assert secret not in stored, f"{secret} in the store"
