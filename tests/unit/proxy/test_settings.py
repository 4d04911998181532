"""parse_settings / load_settings: a valid file loads; every problem is reported at once as
`file:line path: message`, on the line where it is; secrets are only references and never echoed."""

from __future__ import annotations

import hashlib
import textwrap
from pathlib import Path

import pytest
from pydantic import ValidationError

from proxy.settings import ConfigError, Settings, load_settings, parse_settings

REPO_CONFIG = Path(__file__).resolve().parents[3] / "config.yaml"
HASH_A = hashlib.sha256(b"key-a").hexdigest()
HASH_B = hashlib.sha256(b"key-b").hexdigest()


def yaml_text(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def line_of(text: str, needle: str, nth: int = 1) -> int:
    """1-based line of the nth line containing `needle`: the expected line is found, never hard-coded."""
    hits = [i for i, line in enumerate(text.splitlines(), start=1) if needle in line]
    return hits[nth - 1]


def errors(text: str, source: str = "config.yaml") -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_settings(text, source)
    assert str(info.value) == "\n".join(info.value.lines)
    return info.value.lines


# --- valid files -------------------------------------------------------------------------------------------


def test_the_repositorys_config_yaml_loads() -> None:
    settings = load_settings(REPO_CONFIG)
    assert {m.name for m in settings.models} >= {"mock", "mock-claude"}
    assert [k.name for k in settings.keys] == ["demo"]
    assert settings.keys[0].key_sha256 == hashlib.sha256(b"sk-spendgate-demo").hexdigest()
    assert "my-finetune" in settings.pricing.overrides


def test_a_full_model_entry_is_read_and_normalised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SG_TEST_OPENAI_KEY", "sk-from-env-123")
    settings = parse_settings(yaml_text("""
        server: {host: 0.0.0.0, port: 4100, max_body_bytes: 1000, log_level: debug}
        models:
          - name: gpt-4o-mini
            provider: openai
            upstream_model: gpt-4o-mini-2024-07-18
            api_base: https://api.openai.com/v1/
            api_key: env:SG_TEST_OPENAI_KEY
            price_as: gpt-4o-mini
            default_max_output_tokens: 4096
          - {name: "claude-*", provider: anthropic, api_base: "https://api.anthropic.com"}
          - {name: mock, provider: mock, mock: {latency_ms: 5, output_tokens: 3}}
        keys:
          - {name: planner, key_sha256: "HASH", org: acme, project: web, agent: planner, role: admin}
    """).replace("HASH", HASH_A.upper()))
    assert (settings.server.host, settings.server.port, settings.server.max_body_bytes) == ("0.0.0.0", 4100, 1000)
    gpt, claude, mock = settings.models
    assert gpt.api_key is not None and gpt.api_key.get_secret_value() == "sk-from-env-123"
    assert "sk-from-env-123" not in repr(settings)
    assert gpt.api_base == "https://api.openai.com/v1"  # trailing slash dropped
    assert gpt.default_max_output_tokens == 4096
    assert claude.is_wildcard and not gpt.is_wildcard
    assert (mock.mock.latency_ms, mock.mock.output_tokens) == (5, 3)
    key = settings.keys[0]
    assert key.key_sha256 == HASH_A  # upper-case hex is accepted and normalised
    assert (key.org, key.project, key.agent, key.role) == ("acme", "web", "planner", "admin")


@pytest.mark.parametrize("text", ["", "\n", "# only a comment\n", "---\n"])
def test_an_empty_file_gives_the_defaults(text: str) -> None:
    settings = parse_settings(text)
    assert settings == Settings()
    assert (settings.server.host, settings.server.port) == ("127.0.0.1", 4000)
    assert settings.models == [] and settings.keys == []
    assert settings.pricing.unpriced == "error"


def test_settings_are_frozen() -> None:
    settings = parse_settings("server: {port: 1}\n")
    with pytest.raises(ValidationError):
        settings.server.port = 2  # type: ignore[misc]


# --- error lines -------------------------------------------------------------------------------------------


def test_a_bad_value_is_reported_with_its_file_line_and_path() -> None:
    text = yaml_text("""
        models:
          - name: a
            provider: mock
          - name: b
            provider: mock
            default_max_output_tokens: -5
    """)
    line = line_of(text, "default_max_output_tokens")
    assert errors(text, "conf/spendgate.yaml") == [
        f"conf/spendgate.yaml:{line} models[1].default_max_output_tokens: "
        "Input should be greater than 0 (got -5)"
    ]


def test_every_problem_is_reported_at_once_each_on_its_own_line() -> None:
    text = yaml_text("""
        server:
          host: 127.0.0.1
          port: 70000
        pricing:
          currency: GBP
        models:
          - name: ok
            provider: mock
          - name: b
            default_max_output_tokens: 0
    """)
    lines = errors(text)
    assert len(lines) == 4, lines
    assert lines[0].startswith(f"config.yaml:{line_of(text, 'port:')} server.port: ")
    assert lines[0].endswith("(got 70000)")
    assert lines[1].startswith(f"config.yaml:{line_of(text, 'currency')} pricing.currency: ")
    # A missing field points at its entry; the entry's other problem at its own line.
    assert lines[2] == f"config.yaml:{line_of(text, 'name: b')} models[1].provider: Field required"
    assert lines[3].startswith(f"config.yaml:{line_of(text, 'default_max')} models[1].default_max_output_tokens:")


def test_unknown_keys_are_rejected_at_their_line() -> None:
    text = yaml_text("""
        server:
          hots: 0.0.0.0
        budgetz: []
        models:
          - {name: a, provider: mock, mock: {latency: 5}}
    """)
    assert errors(text) == [
        f"config.yaml:{line_of(text, 'hots')} server.hots: unknown key (check the spelling; see docs/config.md)",
        f"config.yaml:{line_of(text, 'budgetz')} budgetz: unknown key (check the spelling; see docs/config.md)",
        f"config.yaml:{line_of(text, 'latency')} models[0].mock.latency: unknown key "
        "(check the spelling; see docs/config.md)",
    ]


def test_a_nested_override_error_names_its_path() -> None:
    text = yaml_text("""
        pricing:
          overrides:
            my-model:
              input_per_mtok: 1.0
              output_per_mtok: -2
    """)
    assert errors(text) == [
        f"config.yaml:{line_of(text, 'output_per_mtok')} pricing.overrides.my-model.output_per_mtok: "
        "Input should be greater than or equal to 0 (got -2)"
    ]


def test_bad_yaml_reports_its_line() -> None:
    text = "server:\n  port: 1\n  host: [127.0.0.1\nmodels: []\n"
    (line,) = errors(text)
    assert line.startswith("config.yaml:4: not valid YAML: ")
    (tab,) = errors("server:\n\tport: 1\n")
    assert tab.startswith("config.yaml:2: not valid YAML: ")


def test_bad_yaml_never_quotes_the_source_line() -> None:
    (line,) = errors("models:\n  - name: a\n    api_key: sk-live-abcdef: [\n")
    assert "sk-live-abcdef" not in line


def test_the_top_level_must_be_a_mapping() -> None:
    assert errors("- a\n- b\n") == ["config.yaml:1: the top level must be a mapping of sections"]


def test_a_recursive_alias_is_an_error_not_a_crash() -> None:
    assert errors("loop: &x [*x]\n") == [
        "config.yaml:1 loop: unknown key (check the spelling; see docs/config.md)"
    ]


# --- secrets -----------------------------------------------------------------------------------------------


def test_env_reference_resolves(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SG_TEST_KEY", "sk-resolved-456")
    settings = parse_settings("models:\n  - {name: a, provider: openai, api_key: 'env:SG_TEST_KEY'}\n")
    key = settings.models[0].api_key
    assert key is not None and key.get_secret_value() == "sk-resolved-456"


@pytest.mark.parametrize("value", [None, ""])
def test_a_missing_env_variable_is_an_error_naming_it(monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    if value is None:
        monkeypatch.delenv("SG_TEST_UNSET_KEY", raising=False)
    else:
        monkeypatch.setenv("SG_TEST_UNSET_KEY", value)
    text = "models:\n  - name: a\n    provider: openai\n    api_key: env:SG_TEST_UNSET_KEY\n"
    assert errors(text) == ["config.yaml:4 models[0].api_key: environment variable SG_TEST_UNSET_KEY is not set"]


@pytest.mark.parametrize("literal", ["sk-live-abc", "env:", "env:1BAD", "ENV:OPENAI_API_KEY x"])
def test_a_literal_key_is_refused_and_never_echoed(literal: str) -> None:
    text = f"models:\n  - name: a\n    provider: openai\n    api_key: '{literal}'\n"
    assert errors(text) == [
        "config.yaml:4 models[0].api_key: secrets are given by reference only, e.g. `env:OPENAI_API_KEY`"
    ]


def test_a_literal_key_in_a_list_or_mapping_is_not_echoed_either() -> None:
    for value in ("[sk-live-abc]", "{k: sk-live-abc}"):
        (line,) = errors(f"models:\n  - name: a\n    provider: openai\n    api_key: {value}\n")
        assert "sk-live-abc" not in line and "models[0].api_key" in line


def test_a_store_url_password_is_never_echoed() -> None:
    (line,) = errors("store:\n  url: 'mysql://user:hunter2@db.internal/spend'\n")
    assert line.startswith("config.yaml:2 store.url: unsupported driver")
    assert "hunter2" not in line


def test_store_and_ledger_urls_may_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SG_TEST_DB_URL", "postgresql+asyncpg://spend:pw-in-env@db.internal/spend")
    monkeypatch.setenv("SG_TEST_REDIS_URL", "redis://:pw-in-env@redis.internal:6379/0")
    settings = parse_settings("store: {url: 'env:SG_TEST_DB_URL'}\nledger: {url: 'env:SG_TEST_REDIS_URL'}\n")
    assert settings.store.url.endswith("@db.internal/spend") and settings.ledger.url.startswith("redis://")
    assert "pw-in-env" not in settings.store.redacted_url and "pw-in-env" not in settings.ledger.redacted_url
    monkeypatch.setenv("SG_TEST_DB_URL", "mysql://user:pw-in-env@db.internal/spend")
    monkeypatch.delenv("SG_TEST_REDIS_URL")
    lines = errors("store: {url: 'env:SG_TEST_DB_URL'}\nledger: {url: 'env:SG_TEST_REDIS_URL'}\n")
    assert lines == ["config.yaml:1 store.url: unsupported driver 'mysql'; use one of sqlite+aiosqlite, "
                     "postgresql+asyncpg",
                     "config.yaml:2 ledger.url: environment variable SG_TEST_REDIS_URL is not set"]


def test_a_key_pasted_instead_of_its_hash_is_never_echoed() -> None:
    text = "keys:\n  - name: a\n    org: o\n    key_sha256: sg-THE-REAL-KEY-abcdef\n"
    (line,) = errors(text)
    assert line.startswith("config.yaml:4 keys[0].key_sha256: must be the 64 hex digits")
    assert "THE-REAL-KEY" not in line


@pytest.mark.parametrize("bad", [HASH_A[:63], HASH_A + "0", "g" * 64, "0x" + HASH_A[:62], ""])
def test_key_sha256_must_be_64_hex_digits(bad: str) -> None:
    (line,) = errors(f"keys:\n  - {{name: a, org: o, key_sha256: '{bad}'}}\n")
    assert "keys[0].key_sha256: must be the 64 hex digits printed by `spendgate hash-key KEY`" in line


# --- repeats -----------------------------------------------------------------------------------------------


def test_repeated_model_names_form_a_fallback_chain() -> None:
    settings = parse_settings(yaml_text("""
        models:
          - {name: a, provider: mock}
          - {name: b, provider: mock}
          - {name: a, provider: mock, price_as: gpt-4o}
    """))
    assert [(m.name, m.price_as) for m in settings.models] == [("a", None), ("b", None), ("a", "gpt-4o")]


def test_problems_in_a_fallback_chain_are_reported_together() -> None:
    text = yaml_text("""
        models:
          - {name: a, provider: mock}
          - {name: a, provider: mock, default_max_output_tokens: -1}
          - {name: c, provider: mock, mock: {output_tokens: 0}}
    """)
    lines = errors(text)
    assert len(lines) == 2, lines
    assert lines[0].startswith(f"config.yaml:{line_of(text, 'name: a', 2)} models[1].default_max_output_tokens:")
    assert lines[1].startswith(f"config.yaml:{line_of(text, 'name: c')} models[2].mock.output_tokens:")


def test_repeated_key_names_and_hashes_are_reported() -> None:
    text = yaml_text(f"""
        keys:
          - name: a
            key_sha256: {HASH_A}
            org: o
          - name: a
            key_sha256: {HASH_B}
            org: o
          - name: c
            key_sha256: {HASH_A.upper()}
            org: o
    """)
    assert errors(text) == [
        f"config.yaml:{line_of(text, 'name: a', 2)} keys[1].name: key name 'a' is repeated (first in keys[0]); "
        "each must be unique",
        f"config.yaml:{line_of(text, HASH_A.upper())} keys[2].key_sha256: key hash is repeated (first in keys[0]); "
        "each must be unique",
    ]


def test_settings_built_in_code_still_refuse_repeated_keys() -> None:
    assert len(Settings.model_validate({"models": [{"name": "a", "provider": "mock"}] * 2}).models) == 2
    key = {"name": "a", "org": "o", "key_sha256": HASH_A}
    with pytest.raises(ValidationError, match="unique"):
        Settings.model_validate({"keys": [key, {**key, "name": "b"}]})


def test_a_repeated_yaml_key_is_an_error_not_a_silent_override() -> None:
    text = yaml_text("""
        server:
          port: 4001
        server:
          port: 4002
    """)
    assert errors(text) == [
        f"config.yaml:{line_of(text, 'server', 2)} server: repeated key (first at line 1); "
        "YAML would silently keep only the last one"
    ]


# --- load_settings -----------------------------------------------------------------------------------------


def test_load_settings_names_the_file_in_every_line(tmp_path: Path) -> None:
    path = tmp_path / "spendgate.yaml"
    path.write_text("server:\n  port: -1\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert info.value.lines == [f"{path}:2 server.port: Input should be greater than or equal to 0 (got -1)"]


def test_an_unreadable_or_non_utf8_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(tmp_path / "missing.yaml")
    assert info.value.lines == [f"{tmp_path / 'missing.yaml'}: cannot read: No such file or directory"]
    latin1 = tmp_path / "latin1.yaml"
    raw = b"server:\n  host: caf\xe9\n"
    latin1.write_bytes(raw)
    with pytest.raises(ConfigError) as info:
        load_settings(latin1)
    assert info.value.lines == [f"{latin1}: not UTF-8 text (bad byte at offset {raw.index(0xE9)})"]
