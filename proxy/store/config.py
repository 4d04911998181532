"""The `store:` section of config.yaml: where usage rows go and where the durability journal lives."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from policies.config import env_value

SUPPORTED_DRIVERS = ("sqlite+aiosqlite", "postgresql+asyncpg")
_FALLBACK_JOURNAL = "spendgate.journal"


class StoreConfig(BaseModel):
    """Store settings. The url may carry a password: it is never shown in errors, reprs or logs."""

    # hide_input_in_errors: pydantic would otherwise echo the whole url (password included) in a
    # validation error that ends up on the console.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    url: str = "sqlite+aiosqlite:///spendgate.db"
    journal_path: str | None = None
    batch_max: int = Field(default=500, ge=1, le=10_000)
    flush_interval_ms: int = Field(default=200, ge=1, le=60_000)
    fsync: bool = True

    @field_validator("url", mode="before")
    @classmethod
    def _url_from_env(cls, value: Any) -> Any:
        """`url: env:DATABASE_URL` keeps a password out of the file."""
        return env_value(value) or value if isinstance(value, str) else value

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        try:
            url = make_url(value)
        except ArgumentError:
            raise ValueError(
                "not a database url; use sqlite+aiosqlite:///path.db or postgresql+asyncpg://user@host/db"
            ) from None
        if url.drivername not in SUPPORTED_DRIVERS:
            raise ValueError(
                f"unsupported driver {url.drivername!r}; use one of {', '.join(SUPPORTED_DRIVERS)}"
            )
        return value

    @property
    def sa_url(self) -> URL:
        return make_url(self.url)

    @property
    def dialect(self) -> str:
        """The backend: "sqlite" or "postgresql"."""
        return self.sa_url.get_backend_name()

    @property
    def redacted_url(self) -> str:
        """The url with its password masked: the only form of it that may be logged."""
        return self.sa_url.render_as_string(hide_password=True)

    @property
    def effective_journal_path(self) -> str:
        """`journal_path`, else `<dbfile>.journal` beside a SQLite file, else `spendgate.journal` in cwd."""
        if self.journal_path:
            return self.journal_path
        database = self.sa_url.database if self.dialect == "sqlite" else None
        if database and database != ":memory:" and not database.startswith("file:"):
            return f"{database}.journal"
        return _FALLBACK_JOURNAL

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        for name, value in super().__repr_args__():
            yield name, (self.redacted_url if name == "url" else value)
