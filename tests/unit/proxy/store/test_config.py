"""StoreConfig: url validation, derived journal path, and the password never shown."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from proxy.store.config import StoreConfig


def test_defaults_use_embedded_sqlite_with_journal_beside_it() -> None:
    config = StoreConfig()
    assert config.dialect == "sqlite"
    assert config.effective_journal_path == "spendgate.db.journal"
    assert (config.batch_max, config.flush_interval_ms, config.fsync) == (500, 200, True)


def test_postgres_journal_defaults_to_cwd_and_explicit_path_wins() -> None:
    config = StoreConfig(url="postgresql+asyncpg://u@127.0.0.1/db")
    assert config.dialect == "postgresql"
    assert config.effective_journal_path == "spendgate.journal"
    assert StoreConfig(url=config.url, journal_path="/x/j").effective_journal_path == "/x/j"
    assert StoreConfig(url="sqlite+aiosqlite:///:memory:").effective_journal_path == "spendgate.journal"


@pytest.mark.parametrize(
    "url", ["mysql+aiomysql://u:pw@h/db", "postgresql://u:secretpw@h/db", "sqlite:///x.db", "nonsense"]
)
def test_unsupported_urls_are_refused_without_echoing_them(url: str) -> None:
    with pytest.raises(ValidationError) as info:
        StoreConfig(url=url)
    text = str(info.value)
    assert "sqlite+aiosqlite" in text and "postgresql+asyncpg" in text
    assert "secretpw" not in text and "pw@" not in text


def test_unknown_keys_are_refused_and_config_is_frozen() -> None:
    with pytest.raises(ValidationError):
        StoreConfig(uri="sqlite+aiosqlite:///x.db")  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        StoreConfig().url = "x"


def test_password_is_masked_in_repr_str_and_redacted_url() -> None:
    config = StoreConfig(url="postgresql+asyncpg://spend:hunter2@127.0.0.1:5432/db")
    for text in (repr(config), str(config), config.redacted_url):
        assert "hunter2" not in text
    assert "spend:***@127.0.0.1" in config.redacted_url
