"""One helper per error family (DESIGN §14): every endpoint of a family answers errors in one shape."""

from __future__ import annotations

from typing import Any

import httpx

SECRETS_NEVER_SHOWN = ("Traceback", "sk-fake-upstream", "sk-ant-fake-upstream")


def _common(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, f"expected {status}, got {r.status_code}: {r.text}"
    assert r.headers["content-type"].startswith("application/json"), r.headers
    for secret in SECRETS_NEVER_SHOWN:
        assert secret not in r.text
    return dict(r.json())


def assert_openai_error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    body = _common(r, status)
    assert set(body) == {"error"}, body
    err = body["error"]
    assert {"message", "type", "code", "param"} <= set(err), err
    assert err["code"] == code and isinstance(err["message"], str) and err["message"], err
    return dict(err)


def assert_anthropic_error(r: httpx.Response, status: int, type_: str) -> dict[str, Any]:
    body = _common(r, status)
    assert body["type"] == "error" and set(body) == {"type", "error"}, body
    err = body["error"]
    assert err["type"] == type_ and isinstance(err["message"], str) and err["message"], err
    return dict(err)


def assert_seed_error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The seed Metrics API family (`/api/factory/*`, `/api/ai-cost/*`, `/api/v1/admin/*`)."""
    body = _common(r, status)
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"code", "message", "status"}, err
    assert err["code"] == code and err["status"] == status, err
    assert isinstance(err["message"], str) and err["message"], err
    return dict(err)
