"""The `spendgate` command line: hash-key, keys new, check-config (no server is started)."""

from __future__ import annotations

import hashlib
import io
import re
import textwrap
from pathlib import Path

import pytest

from proxy.cli import main

REPO_CONFIG = Path(__file__).resolve().parents[3] / "config.yaml"
UNPRICED_MODEL = """
    models:
      - name: totally-unknown-model
        provider: openai
        api_base: http://127.0.0.1:1/v1
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def test_hash_key_prints_the_sha256(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hash-key", "abc"]) == 0
    out = capsys.readouterr().out
    assert out == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\n"
    assert out.strip() == hashlib.sha256(b"abc").hexdigest()


def test_hash_key_reads_the_key_from_stdin_with_a_dash(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("sk-from-stdin\n"))
    assert main(["hash-key", "-"]) == 0
    assert capsys.readouterr().out.strip() == hashlib.sha256(b"sk-from-stdin").hexdigest()


def test_keys_new_prints_a_fresh_key_and_its_matching_hash(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "new"]) == 0
    captured = capsys.readouterr()
    key = re.search(r"^key:\s+(\S+)$", captured.out, re.M)
    digest = re.search(r"^key_sha256:\s+([0-9a-f]{64})$", captured.out, re.M)
    assert key and digest, captured.out
    assert len(key.group(1)) >= 40  # 256 bits of urlsafe base64 plus the prefix
    assert digest.group(1) == hashlib.sha256(key.group(1).encode()).hexdigest()
    assert "key_sha256" in captured.err  # the advice goes to stderr, so stdout stays machine-readable
    assert main(["keys", "new"]) == 0
    assert key.group(1) not in capsys.readouterr().out  # a new key each time


def test_check_config_accepts_the_repositorys_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "--config", str(REPO_CONFIG)]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith(f"{REPO_CONFIG}: ok (")
    assert captured.err == ""


def test_check_config_reads_spendgate_config_from_the_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "models:\n  - {name: m, provider: mock, price_as: gpt-4o-mini}\n")
    monkeypatch.setenv("SPENDGATE_CONFIG", str(path))
    assert main(["check-config"]) == 0
    assert capsys.readouterr().out == f"{path}: ok (1 models, 0 keys)\n"


def test_check_config_prints_every_error_line_on_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, """
        server:
          port: -1
        models:
          - name: a
            provider: mock
            default_max_output_tokens: -5
    """)
    assert main(["check-config", "--config", str(path)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        f"{path}:2 server.port: Input should be greater than or equal to 0 (got -1)",
        f"{path}:6 models[0].default_max_output_tokens: Input should be greater than 0 (got -5)",
    ]


def test_check_config_on_a_missing_file_fails_cleanly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "--config", str(tmp_path / "nope.yaml")]) == 1
    assert "cannot read" in capsys.readouterr().err


def test_a_model_without_a_price_fails_check_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, UNPRICED_MODEL)
    assert main(["check-config", "--config", str(path)]) == 1
    err = capsys.readouterr().err
    assert "models[0].price_as" in err and "totally-unknown-model" in err
    written = path.read_text().splitlines()
    name_line = written.index(next(line for line in written if "name:" in line)) + 1
    assert err.startswith(f"{path}:{name_line} models[0].price_as:")  # the entry's line, like other errors
    assert "`price_as`" in err and "pricing.overrides" in err and "pricing.unpriced: allow" in err


def test_unpriced_allow_lets_the_unpriced_model_pass(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, UNPRICED_MODEL + "    pricing: {unpriced: allow}\n")
    assert main(["check-config", "--config", str(path)]) == 0
    assert capsys.readouterr().out == f"{path}: ok (1 models, 0 keys)\n"


def test_an_override_prices_the_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, UNPRICED_MODEL + """
    pricing:
      overrides:
        totally-unknown-model: {input_per_mtok: 1, output_per_mtok: 2}
    """)
    assert main(["check-config", "--config", str(path)]) == 0, capsys.readouterr().err


def test_unknown_commands_exit_with_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == 2
    assert "usage: spendgate" in capsys.readouterr().err
