"""spendgate's own JSON API as the demo uses it (events, calls, models), over the standard library: the demo's
only runtime dependency beyond spendgate is the openai SDK, which it uses for the model calls."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

MAX_RATE_LIMIT_WAITS = 5


class ApiError(Exception):
    """spendgate answered with an error status, or could not be reached (`status` None)."""

    def __init__(self, status: int | None, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}" if status else message)
        self.status = status


@dataclass(frozen=True, slots=True)
class SpendgateApi:
    """JSON requests to `url` (the proxy's base, without /v1) with `key`; 429s are waited out (Retry-After)."""

    url: str
    key: str
    timeout: float = 30.0

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, body: Any) -> Any:
        return self.request("POST", path, body)

    def request(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        headers = {"authorization": f"Bearer {self.key}", "accept": "application/json"}
        if data is not None:
            headers["content-type"] = "application/json"
        for _ in range(MAX_RATE_LIMIT_WAITS):
            req = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    return json.loads(resp.read() or b"null")
            except urllib.error.HTTPError as err:
                if err.code == 429:
                    time.sleep(_retry_after(err.headers.get("retry-after")))
                    continue
                raise ApiError(err.code, _message(err.read())) from None
            except (urllib.error.URLError, OSError) as err:
                reason = getattr(err, "reason", err)
                raise ApiError(None, f"cannot reach spendgate at {self.url}: {reason}") from None
        raise ApiError(429, f"{method} {path} still rate limited after {MAX_RATE_LIMIT_WAITS} waits")


def _retry_after(raw: str | None) -> float:
    try:
        return min(max(float(raw or 1), 0.1), 60.0)
    except ValueError:
        return 1.0


def _message(raw: bytes) -> str:
    """The message of either error shape (OpenAI's or the metrics APIs'), else the start of the body."""
    try:
        body = json.loads(raw)
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
    except ValueError:
        pass
    return raw[:300].decode("utf-8", "replace")
