"""The one interface every provider adapter implements, and the deployment it is called for.

Contract of `Upstream.open(request)`:
- It sends the request and returns once the provider's status and headers are known (for the mock: at once).
  Connection failures raise `UpstreamError`, a provider that does not answer in time `UpstreamTimeout`;
  a provider's own error (4xx/5xx) is NOT raised: it is an `UpstreamResponse` with that status.
- The response body is in the wire format of the endpoint that was called (OpenAI for /v1/chat/completions,
  Anthropic for /v1/messages), whatever the provider speaks: translation is the adapter's job.
- The caller owns the response: it reads it with `read()` or iterates `chunks()` once, and always calls
  `close()` at the end (idempotent). `close()` before the end aborts the provider call at once, which is
  how a client that hangs up stops the spend.
- Errors while reading the body raise `UpstreamError` / `UpstreamTimeout` from `read()` / `chunks()`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from pydantic import SecretStr

from pricing.catalog import ModelPrice
from proxy.settings import MockOptions

Endpoint = Literal["chat", "completions", "embeddings", "responses", "messages", "count_tokens"]

ENDPOINT_PATHS: dict[Endpoint, str] = {
    "chat": "/v1/chat/completions",
    "completions": "/v1/completions",
    "embeddings": "/v1/embeddings",
    "responses": "/v1/responses",
    "messages": "/v1/messages",
    "count_tokens": "/v1/messages/count_tokens",
}
ANTHROPIC_ENDPOINTS: frozenset[str] = frozenset({"messages", "count_tokens"})


@dataclass(frozen=True, slots=True)
class Deployment:
    """A configured model route resolved for one requested model name."""

    name: str  # the config entry's name (may be a wildcard pattern)
    requested: str  # what the client sent as "model"
    provider: str
    upstream_model: str
    price: ModelPrice | None
    api_base: str | None = None
    api_key: SecretStr | None = field(default=None, repr=False)
    api_version: str | None = None
    default_max_output_tokens: int | None = None
    timeout_s: float | None = None
    mock: MockOptions = MockOptions()  # frozen: one shared default is safe
    position: int = 0  # place in its name's fallback chain (0 = first choice)


@dataclass(slots=True)
class UpstreamRequest:
    endpoint: Endpoint
    deployment: Deployment
    body: dict[str, Any]  # parsed, already rewritten (upstream model, usage options, our metadata removed)
    raw: bytes  # `body` serialised: what goes on the wire for passthrough adapters
    stream: bool
    query: str = ""  # the query string as the client sent it
    headers: Mapping[str, str] = field(default_factory=dict)  # provider headers the client sent (allow-list)
    request_id: str = ""


class UpstreamResponse(Protocol):
    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]:
        """Headers worth relaying (content-type, provider request id, rate limits)."""
        ...

    async def read(self) -> bytes: ...

    def chunks(self) -> AsyncIterator[bytes]: ...

    def close(self) -> None: ...


class Upstream(Protocol):
    async def open(self, request: UpstreamRequest) -> UpstreamResponse: ...

    async def aclose(self) -> None: ...
