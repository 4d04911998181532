"""Who a call is attributed to: the dimensions budgets match on and metrics group by."""

from __future__ import annotations

from dataclasses import dataclass

# Dimensions a client may tag (header `X-Spendgate-<Name>` or body metadata key of the same name).
TAG_DIMENSIONS = ("project", "agent", "station", "run", "issue", "actor", "retry_of")
ACTORS = ("agent", "human")


@dataclass(frozen=True, slots=True)
class Attribution:
    """The tags of one call. `org` always comes from the key, never from the client."""

    org: str
    key: str
    project: str | None = None
    agent: str | None = None
    station: str | None = None
    run: str | None = None
    issue: str | None = None
    actor: str = "agent"
    retry_of: str | None = None
