"""Loads config.yaml once, validates it whole, and reports every error as `file:line path: message`."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from policies.config import (
    ApprovalsConfig,
    BudgetConfig,
    LedgerConfig,
    WebhookConfig,
    check_budgets,
    check_webhooks,
    env_value,
)
from pricing.catalog import PriceOverride
from proxy.store.config import StoreConfig

_FROZEN = ConfigDict(extra="forbid", frozen=True)
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[A-Za-z0-9._:/*@+-]{1,128}$")
_MAX_RPM = 1_000_000  # per-key rate limits: far above any real limit; GCRA intervals stay >= 60 us
_MAX_TPM = 10_000_000_000
Loc = tuple[Any, ...]  # a path in the document: ('models', 0, 'name')
Problem = tuple[int, Loc, str]  # (line, path, message)


class ConfigError(Exception):
    """config.yaml is unreadable or invalid; `lines` holds one `file:line path: message` per problem."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


class ServerConfig(BaseModel):
    model_config = _FROZEN
    host: str = "127.0.0.1"
    port: int = Field(4000, ge=0, le=65535)
    max_body_bytes: int = Field(10 * 1024 * 1024, gt=0)
    max_header_bytes: int = Field(64 * 1024, gt=0)
    upstream_connect_timeout_s: float = Field(10.0, gt=0)
    upstream_read_timeout_s: float = Field(600.0, gt=0)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # SIGTERM: how long calls in flight may run on before the server stops anyway (systemd's TimeoutStopSec
    # or Kubernetes' grace period must be longer: this plus about 55 s, see docs/deployment.md).
    drain_timeout_s: float = Field(30.0, gt=0, le=3600)
    # SIGTERM: how long new calls are still served while /readyz already says not ready (0: refused at once).
    drain_delay_s: float = Field(0.0, ge=0, le=300)
    metrics_rate_limit_per_minute: int = Field(1000, ge=1)
    metrics_public: bool = False  # GET /metrics without a key from loopback / private addresses
    # Per-key rate limits for keys that set neither `rpm` nor `tpm` (None: unlimited).
    default_rpm: int | None = Field(None, gt=0, le=_MAX_RPM, strict=True)
    default_tpm: int | None = Field(None, gt=0, le=_MAX_TPM, strict=True)
    rate_limit_key_prefix: str = Field("", max_length=64)  # Redis keys: <prefix>sg:rl:{org}:<key name>:rpm

    @field_validator("rate_limit_key_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if re.search(r"[{}\s]", v):
            raise ValueError("must not contain braces or whitespace (a brace would change the Redis hash "
                             "slot)")
        return v


class PricingConfig(BaseModel):
    model_config = _FROZEN
    currency: Literal["USD", "EUR"] = "USD"
    fx_rate: float | None = Field(None, gt=0)
    compute_hourly_rate_usd: float = Field(0.08, ge=0)
    unpriced: Literal["error", "allow"] = "error"
    overrides: dict[str, PriceOverride] = Field(default_factory=dict)


class MockOptions(BaseModel):
    """Behaviour of the built-in `mock` provider (deterministic, for demos and benchmarks)."""

    model_config = _FROZEN
    latency_ms: int = Field(0, ge=0)
    chunk_gap_ms: int = Field(0, ge=0)
    output_tokens: int = Field(16, ge=1, le=100_000)


Provider = str  # openai | azure | anthropic | mock | any litellm provider (translated)


class ModelConfig(BaseModel):
    model_config = _FROZEN
    name: str
    provider: Provider
    upstream_model: str | None = None
    api_base: str | None = None
    api_key: SecretStr | None = None
    api_version: str | None = None
    price_as: str | None = None
    default_max_output_tokens: int | None = Field(None, gt=0)
    timeout_s: float | None = Field(None, gt=0)
    mock: MockOptions = MockOptions()  # frozen: one shared default is safe

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError("must be 1-128 characters of letters, digits and ._:/*@+-")
        return v

    @field_validator("api_key", mode="before")
    @classmethod
    def _secret_ref(cls, v: Any) -> Any:
        if v is None or isinstance(v, SecretStr):
            return v
        value = env_value(str(v))
        if value is None:
            # Never echo the value: it may be a pasted key.
            raise ValueError("secrets are given by reference only, e.g. `env:OPENAI_API_KEY`")
        return SecretStr(value)

    @field_validator("api_base")
    @classmethod
    def _api_base(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not re.match(r"^https?://[^\s/]+", v):
            raise ValueError("must be an http(s) URL")
        return v.rstrip("/")

    @property
    def is_wildcard(self) -> bool:
        return "*" in self.name


TagName = Literal["project", "agent", "station", "run", "issue", "actor", "retry_of"]


class KeyConfig(BaseModel):
    model_config = _FROZEN
    name: str
    key_sha256: str
    org: str
    project: str | None = None
    agent: str | None = None
    role: Literal["agent", "viewer", "admin"] = "agent"
    allowed_models: tuple[str, ...] | None = None  # model names or `*` patterns this key may call
    require_tags: tuple[TagName, ...] = ()  # tags every call of this key must carry (else 400)
    rpm: int | None = Field(None, gt=0, le=_MAX_RPM, strict=True)  # requests per minute (None: unlimited)
    tpm: int | None = Field(None, gt=0, le=_MAX_TPM, strict=True)  # tokens per minute (None: unlimited)

    @field_validator("key_sha256")
    @classmethod
    def _hex(cls, v: str) -> str:
        v = v.strip().lower()
        if not _HEX64.match(v):
            raise ValueError("must be the 64 hex digits printed by `spendgate hash-key KEY`")
        return v


class Settings(BaseModel):
    model_config = _FROZEN
    server: ServerConfig = ServerConfig()
    store: StoreConfig = Field(default_factory=StoreConfig)
    pricing: PricingConfig = PricingConfig()
    models: list[ModelConfig] = Field(default_factory=list)
    keys: list[KeyConfig] = Field(default_factory=list)
    ledger: LedgerConfig = LedgerConfig()
    budgets: list[BudgetConfig] = Field(default_factory=list)
    webhooks: list[WebhookConfig] = Field(default_factory=list)
    approvals: ApprovalsConfig = ApprovalsConfig()

    @field_validator("keys")
    @classmethod
    def _unique_keys(cls, v: list[KeyConfig]) -> list[KeyConfig]:
        for attr in ("name", "key_sha256"):
            values = [getattr(k, attr) for k in v]
            if len(values) != len(set(values)):
                raise ValueError(f"each key needs a unique {attr}")
        return v


def line_of(text: str, loc: Loc) -> int:
    """1-based line of `loc` (e.g. ('models', 2, 'price_as')) in YAML `text`, for checks made after parsing;
    the nearest enclosing entry's line when the key itself is absent."""
    try:
        lines, _ = _line_index(yaml.compose(text, Loader=yaml.SafeLoader))
    except yaml.YAMLError:
        return 1
    return _line_of(lines, loc)


def load_settings(path: str | Path) -> Settings:
    """Read and validate `path`; raise ConfigError listing every problem with its line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text (bad byte at offset {exc.start})"]) from None
    return parse_settings(text, str(path))


def parse_settings(text: str, source: str = "config.yaml") -> Settings:
    """Validate the YAML `text`; raise ConfigError listing every problem (sorted by line) at once."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        # Never str(exc): PyYAML quotes the offending source line, which may hold a pasted secret.
        problem = getattr(exc, "problem", None) or getattr(exc, "reason", None) or type(exc).__name__
        raise ConfigError([f"{source}{line}: not valid YAML: {problem}"]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"{source}:1: the top level must be a mapping of sections"])
    lines, problems = _line_index(node)
    repeats = _repeated_entries(data, lines)
    problems += repeats
    reported = {loc[:1] for _line, loc, _msg in repeats}
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors():
            loc = _clean_loc(err["loc"])
            # The list-level uniqueness validators say less (and point at the section) than the check above.
            if len(loc) == 1 and loc in reported and err["type"] == "value_error":
                continue
            problems.append((_line_of(lines, loc), loc, _message(loc, err)))
    else:
        # Checks across entries, made on the validated sections.
        for loc, message in (check_budgets(settings.budgets, settings.ledger)
                             + check_webhooks(settings.webhooks, settings.budgets)):
            problems.append((_line_of(lines, loc), loc, message))
        if not problems:
            return settings
    problems.sort(key=lambda p: p[0])
    raise ConfigError([f"{source}:{line} {_dotted(loc)}: {message}" for line, loc, message in problems])


def _line_index(node: yaml.Node | None) -> tuple[dict[Loc, int], list[Problem]]:
    """Map each path in the document (('models', 0, 'name')) to its 1-based line, and report repeated
    mapping keys: PyYAML silently keeps the last one, which would drop half of a section unnoticed."""
    index: dict[Loc, int] = {}
    repeated: list[Problem] = []
    on_path: set[int] = set()  # a recursive alias (`&a [*a]`) must not recurse forever

    def walk(n: yaml.Node, path: Loc) -> None:
        if id(n) in on_path:
            return
        on_path.add(id(n))
        if isinstance(n, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key, value in n.value:
                child = (*path, key.value)
                line = key.start_mark.line + 1
                if key.value in seen:
                    repeated.append((line, child, f"repeated key (first at line {seen[key.value]}); "
                                                  "YAML would silently keep only the last one"))
                seen[key.value] = line
                index[child] = line  # the last one wins, as it does in the loaded data
                walk(value, child)
        elif isinstance(n, yaml.SequenceNode):
            for i, item in enumerate(n.value):
                index[(*path, i)] = item.start_mark.line + 1
                walk(item, (*path, i))
        on_path.discard(id(n))

    if node is not None:
        index[()] = node.start_mark.line + 1
        walk(node, ())
    return index, repeated


def _repeated_entries(data: Mapping[str, Any], lines: Mapping[Loc, int]) -> list[Problem]:
    """Repeated model names and key names / hashes, each reported at the repeat's own line.

    Checked on the raw data so that they are reported together with every other problem (the Settings
    validators only run once every entry is valid)."""
    problems: list[Problem] = []
    # Model names may repeat: entries with one name form a fallback chain, tried in file order.
    checks = (("keys", "name", "key name"), ("keys", "key_sha256", "key hash"))
    for section, attr, what in checks:
        entries = data.get(section)
        if not isinstance(entries, list):
            continue
        first: dict[str, int] = {}
        for i, entry in enumerate(entries):
            value = entry.get(attr) if isinstance(entry, dict) else None
            if not isinstance(value, str):
                continue
            value = value.strip().lower() if attr == "key_sha256" else value
            if value in first:
                loc = (section, i, attr)
                shown = "" if attr == "key_sha256" else f" {value!r}"
                problems.append((_line_of(lines, loc), loc,
                                 f"{what}{shown} is repeated (first in {section}[{first[value]}]); "
                                 "each must be unique"))
            else:
                first[value] = i
    return problems


def _clean_loc(loc: Loc) -> Loc:
    return tuple(p for p in loc if not (isinstance(p, str) and p.startswith("function-")))


def _line_of(lines: Mapping[Loc, int], loc: Loc) -> int:
    probe = loc
    while probe and probe not in lines:
        probe = probe[:-1]
    return lines.get(probe, 1)


def _dotted(loc: Loc) -> str:
    dotted = ""
    for part in loc:
        dotted += f"[{part}]" if isinstance(part, int) else (f".{part}" if dotted else str(part))
    return dotted or "(top level)"


def _message(loc: Loc, err: Mapping[str, Any]) -> str:
    message = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        return "unknown key (check the spelling; see docs/config.md)"
    if "input" in err and err["type"] != "missing" and not _is_secret_path(loc):
        shown = err["input"]
        if isinstance(shown, (str, int, float, bool)):
            message += f" (got {shown!r})"
    return message


# Values never echoed in an error: provider keys and webhook secrets, URLs (a database password, a Slack
# webhook token), and key hashes (the usual mistake there is pasting the key itself).
_SECRET_KEYS = frozenset({"api_key", "secret", "url", "key_sha256", "password", "token"})


def _is_secret_path(loc: Loc) -> bool:
    return any(p in _SECRET_KEYS for p in loc if isinstance(p, str))
