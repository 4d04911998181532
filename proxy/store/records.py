"""The one row per proxied call, as the hot path hands it to the store (never prompts or completions)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True, slots=True)
class CallRecord:
    """What one proxied call cost and who it is attributed to.

    `request_id` is unique: writing the same record twice (journal replay) stores it once.
    Money is nano-USD. Times are timezone-aware UTC.
    """

    request_id: str
    started_at: datetime
    ended_at: datetime
    status: str  # ok | error | cancelled | refused
    http_status: int
    org: str
    endpoint: str  # e.g. /v1/chat/completions
    provider: str  # provider name of the deployment, e.g. openai, anthropic, mock
    model: str  # the model the client asked for
    upstream_model: str = ""
    project: str | None = None
    agent: str | None = None
    station: str | None = None
    run: str | None = None
    issue: str | None = None
    actor: str | None = None
    retry_of: str | None = None
    key_name: str | None = None
    input_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    cost_nano: int = 0
    usage_source: str = "provider"  # provider | estimated
    stream: bool = False
    catalog_version: str = ""
    error: str | None = None  # short, secret-free reason for status error/cancelled
    enforcement: str | None = None  # "bypassed": budgets were not enforced (ledger unavailable, allow)
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def duration_ms(self) -> int:
        return max(0, int((self.ended_at - self.started_at).total_seconds() * 1000))
