"""Pydantic models of the `budgets`, `ledger`, `approvals` and `webhooks` sections of config.yaml.

Field checks live on the models; checks that look across entries (unique names, cluster mode) are plain
functions returning `(loc, message)` problems, so the loader can report them with every other error."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from typing import Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

_FROZEN = ConfigDict(extra="forbid", frozen=True)
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_ENV_REF = re.compile(r"^env:([A-Za-z_][A-Za-z0-9_]*)$")
# Scope values are tag values (DESIGN §4: short printable strings, at most 128 characters).
_MAX_TAG_CHARS = 128
# Redis counters are signed 64-bit integers of nano-USD; a cap of 1e9 USD (1e18 nano) stays far below 2**63
# even with reservations and approval grants stacked on top.
MAX_LIMIT_USD = 1e9

Dimension = Literal["org", "project", "agent", "station", "run", "issue", "model", "provider", "key"]
DIMENSIONS: tuple[Dimension, ...] = (
    "org", "project", "agent", "station", "run", "issue", "model", "provider", "key",
)
WindowName = Literal["run", "hour", "day", "week", "month", "total"]
EventName = Literal["budget.threshold", "budget.exceeded", "approval.requested", "approval.decided"]
EVENTS: tuple[EventName, ...] = ("budget.threshold", "budget.exceeded", "approval.requested",
                                 "approval.decided")
Loc = tuple[str | int, ...]  # a path in the document: ('budgets', 2, 'name')
Problem = tuple[Loc, str]


def _check_name(v: str) -> str:
    if not _NAME.match(v):
        raise ValueError("must be 1-64 characters of letters, digits and _ - .")
    return v


def _finite(v: float) -> float:
    if not math.isfinite(v):
        raise ValueError("must be a finite number")
    return v


class AlertRule(BaseModel):
    """Fire `action` once per counter and window when settled spend reaches `at_pct` % of the limit."""

    model_config = _FROZEN
    at_pct: float = Field(gt=0, le=1000, allow_inf_nan=False)
    action: Literal["warn", "webhook"]


class BudgetConfig(BaseModel):
    """One entry of `budgets:` (DESIGN §7)."""

    model_config = _FROZEN
    name: str
    # Literal value = only calls with that tag value; "*" = one counter per value (calls without the tag
    # do not match); an absent dimension = all calls together.
    scope: dict[Dimension, str] = Field(default_factory=dict)
    window: WindowName
    limit_usd: float = Field(gt=0, le=MAX_LIMIT_USD, allow_inf_nan=False)
    timezone: str | None = None  # IANA name; None means UTC
    alerts: list[AlertRule] = Field(default_factory=lambda: [AlertRule(at_pct=80, action="warn")])
    on_exceed: Literal["block", "approve", "warn", "webhook"] = "block"
    clamp_max_tokens: bool = False
    min_output_tokens: int = Field(256, ge=1)
    mode: Literal["enforce", "shadow"] = "enforce"

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _check_name(v)

    @field_validator("scope")
    @classmethod
    def _scope(cls, v: dict[Dimension, str]) -> dict[Dimension, str]:
        for dim, value in v.items():
            if not value or len(value) > _MAX_TAG_CHARS or not value.isprintable():
                raise ValueError(f"{dim}: a scope value is a tag value (1-{_MAX_TAG_CHARS} printable "
                                 'characters) or "*" for one counter per value')
        return v

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("unknown time zone; use an IANA name such as Europe/Berlin or UTC") from None
        return v

    @field_validator("alerts")
    @classmethod
    def _alerts(cls, v: list[AlertRule]) -> list[AlertRule]:
        if len(set(v)) != len(v):
            raise ValueError("the same alert is listed twice")
        return v

    @model_validator(mode="after")
    def _run_window(self) -> BudgetConfig:
        if self.window == "run" and "run" not in self.scope:
            raise ValueError('window "run" needs `run` in the scope (e.g. scope: {run: "*"}): '
                             "without it every run would share one counter that never resets")
        return self


def env_value(ref: str) -> str | None:
    """The value of the environment variable a `env:NAME` reference names (ValueError if it is unset or
    empty); None if `ref` is not such a reference."""
    match = _ENV_REF.match(ref)
    if not match:
        return None
    value = os.environ.get(match.group(1))
    if not value:
        raise ValueError(f"environment variable {match.group(1)} is not set")
    return value


class LedgerConfig(BaseModel):
    """The `ledger:` section: where counters live and what to do when that store is unreachable."""

    model_config = _FROZEN
    url: str = "memory://"
    on_unavailable: Literal["block", "allow"] = "block"
    reservation_ttl_s: int = Field(900, gt=0)
    cluster: bool = False  # Redis Cluster: every budget must be scoped by org (one hash slot per org)
    # Each Redis command's connect / read timeout (one retry after a dropped connection): an unreachable
    # or hung Redis is reported, and the call refused, within about twice this.
    timeout_s: float = Field(0.4, gt=0, le=30)

    @field_validator("url", mode="before")
    @classmethod
    def _url_from_env(cls, v: Any) -> Any:
        """`url: env:REDIS_URL` keeps a password out of the file."""
        return env_value(v) or v if isinstance(v, str) else v

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        # Messages never quote the URL: it may carry a password.
        if v == "memory://":
            return v
        try:
            parts = urlsplit(v)
            port = parts.port  # raises ValueError on a bad port
        except ValueError:
            raise ValueError("not a valid redis URL (check the port)") from None
        if parts.scheme not in ("redis", "rediss"):
            raise ValueError('must be "memory://" or a redis://... / rediss://... URL')
        if not parts.hostname:
            raise ValueError("a redis URL needs a host, e.g. redis://127.0.0.1:6379/0")
        if port == 0:
            raise ValueError("the port must be 1-65535")
        db = parts.path.lstrip("/")
        if db and not db.isdigit():
            raise ValueError("the path of a redis URL is the database number, e.g. /0")
        return v

    @property
    def is_memory(self) -> bool:
        return self.url == "memory://"

    @property
    def redacted_url(self) -> str:
        """The URL with any password replaced by `***`, safe for logs."""
        parts = urlsplit(self.url)
        if parts.password is None:
            return self.url
        user = parts.username or ""
        host = parts.netloc.rsplit("@", 1)[1]
        return parts._replace(netloc=f"{user}:***@{host}").geturl()


class ApprovalsConfig(BaseModel):
    """The `approvals:` section: how long a held call waits, and what an approval adds by default."""

    model_config = _FROZEN
    wait_seconds: float = Field(0, ge=0, allow_inf_nan=False)
    grant_usd: float = Field(5, gt=0, le=MAX_LIMIT_USD, allow_inf_nan=False)


class WebhookConfig(BaseModel):
    """One entry of `webhooks:`; the secret is given by reference only (`env:NAME`)."""

    model_config = _FROZEN
    name: str
    url: str
    secret: SecretStr
    events: list[EventName] = Field(default_factory=lambda: list(EVENTS))
    allow_private_network: bool = False

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _check_name(v)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        # Never echoed: webhook URLs often embed a token (Slack, Teams).
        try:
            parts = urlsplit(v)
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            raise ValueError("not a valid URL (check the port)") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http(s) URL with a host")
        return v

    @field_validator("secret", mode="before")
    @classmethod
    def _secret_ref(cls, v: Any) -> Any:
        if isinstance(v, SecretStr):
            return v
        value = env_value(str(v))
        if value is None:
            # Never echo the value: it may be the pasted secret itself.
            raise ValueError("secrets are given by reference only, e.g. `env:WEBHOOK_SECRET`")
        return SecretStr(value)

    @field_validator("events")
    @classmethod
    def _events(cls, v: list[EventName]) -> list[EventName]:
        if not v:
            raise ValueError("list at least one event (or remove the webhook)")
        if len(set(v)) != len(v):
            raise ValueError("an event is listed twice")
        return v


def repeated_names(section: str, what: str, names: Sequence[str]) -> list[Problem]:
    """One problem per entry of `section` whose name an earlier entry already has."""
    problems: list[Problem] = []
    first: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in first:
            problems.append(((section, i, "name"), f"{what} name {name!r} is repeated "
                             f"(first in {section}[{first[name]}]); each must be unique"))
        else:
            first[name] = i
    return problems


def check_budgets(budgets: Sequence[BudgetConfig], ledger: LedgerConfig) -> list[Problem]:
    """Checks across budget entries: unique names; in Redis Cluster mode every scope names `org`."""
    problems = repeated_names("budgets", "budget", [b.name for b in budgets])
    for i, budget in enumerate(budgets):
        if ledger.cluster and "org" not in budget.scope:
            # All keys of one counter set must share a hash slot; the slot is chosen by org.
            problems.append((("budgets", i, "scope"), "with ledger.cluster: true every budget's scope "
                             'must name org (a literal org or "*")'))
    return problems


def check_webhooks(webhooks: Sequence[WebhookConfig], budgets: Sequence[BudgetConfig]) -> list[Problem]:
    """Unique webhook names, and a `webhook` action only where some webhook receives that event."""
    problems = repeated_names("webhooks", "webhook", [hook.name for hook in webhooks])
    subscribed = {event for hook in webhooks for event in hook.events}
    for i, budget in enumerate(budgets):
        if budget.on_exceed == "webhook" and "budget.exceeded" not in subscribed:
            problems.append((("budgets", i, "on_exceed"),
                             "on_exceed: webhook, but no webhook receives budget.exceeded"))
        for j, alert in enumerate(budget.alerts):
            if alert.action == "webhook" and "budget.threshold" not in subscribed:
                problems.append((("budgets", i, "alerts", j, "action"),
                                 "action: webhook, but no webhook receives budget.threshold"))
    return problems
