"""deploy/ and docs/deployment.md stay true to the code: the units run the real CLI with flags its parser
accepts, stop later than the drain can take, every `spendgate ...` command and config key the doc names
exists, and its yaml snippets load through the real settings loader (as test_docs does for config.md)."""

from __future__ import annotations

import argparse
import inspect
import os
import re
import shlex
import textwrap
from pathlib import Path

import pytest
from pydantic import BaseModel

import proxy.app
import proxy.server
from pricing.tokens import ensure_offline, tokenizer_dir
from proxy.cli import build_parser, cmd_reconcile, cmd_serve
from proxy.routes import health
from proxy.settings import ConfigError, ServerConfig, Settings, parse_settings
from proxy.store.config import StoreConfig
from tests.unit.proxy.test_docs import _model_args

ROOT = Path(__file__).resolve().parents[3]
DEPLOY = ROOT / "deploy"
DOC = ROOT / "docs" / "deployment.md"
CONFIG = "/etc/spendgate/config.yaml"
SERVE_UNITS = ("spendgate.service", "spendgate@.service")
INSTANCE = "4001"  # what %i stands for in the template's checks

Unit = dict[str, dict[str, list[str]]]


def read_unit(path: Path) -> Unit:
    """A systemd unit file: section -> key -> values (a key may repeat, e.g. SystemCallFilter)."""
    unit: Unit = {}
    section: dict[str, list[str]] | None = None
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], {})
            continue
        assert section is not None, f"{path.name}: {line!r} before any [section]"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not a key=value line: {line!r}"
        section.setdefault(key.strip(), []).append(value.strip())
    return unit


def one(unit: Unit, section: str, key: str) -> str:
    values = unit.get(section, {}).get(key)
    assert values, f"[{section}] {key}= is missing"
    assert len(values) == 1, f"[{section}] {key}= is set {len(values)} times"
    return values[0]


def seconds(value: str) -> float:
    """A systemd time span: `120`, `120s`, `2min`, `1min 30s`."""
    units = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        total += float(number) * units[unit]
    return total


def parse_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> argparse.Namespace:
    try:
        return build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"`spendgate {shlex.join(argv)}` is refused by proxy/cli.py: {capsys.readouterr().err.strip()}")


def spendgate_argv(command: str) -> list[str] | None:
    """The arguments after the spendgate executable in a shell command, or None if it runs something else."""
    words = command.split()
    if not words or not (words[0] == "spendgate" or "/bin/spendgate" in command):
        return None  # never shlex-split other commands (SQL, prose in backticks)
    tokens = shlex.split(command)
    for i, token in enumerate(tokens):
        if token.endswith("/bin/spendgate") or (i == 0 and token == "spendgate"):
            return tokens[i + 1:]
    return None


# -- the unit files -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SERVE_UNITS)
def test_serve_unit_runs_the_real_cli(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    unit = read_unit(DEPLOY / name)
    exec_start = one(unit, "Service", "ExecStart").replace("%i", INSTANCE)
    argv = spendgate_argv(exec_start)
    assert argv is not None and exec_start.startswith("/"), f"ExecStart must run the installed spendgate: {exec_start}"
    args = parse_cli(argv, capsys)
    assert args.func is cmd_serve
    assert args.config == CONFIG
    if "@" in name:  # one instance per port: the instance name is the port
        assert args.port == int(INSTANCE)
    assert one(unit, "Service", "EnvironmentFile") == "/etc/spendgate/spendgate.env"


def _drain_worst_case_s() -> float:
    """Drain (proxy/server.py) + uvicorn's graceful shutdown + the lifespan's wait for calls + the writer's flush."""
    serve_src = inspect.getsource(proxy.server.serve)
    app_src = inspect.getsource(proxy.app)
    parts = {
        "uvicorn timeout_graceful_shutdown": re.search(r"timeout_graceful_shutdown=(\d+(?:\.\d+)?)", serve_src),
        "lifespan wait_idle grace_s": re.search(r"wait_idle\(grace_s=(\d+(?:\.\d+)?)\)", app_src),
        "writer.close timeout": re.search(r"writer\.close, (\d+(?:\.\d+)?)\)", app_src),
    }
    missing = [what for what, match in parts.items() if match is None]
    assert not missing, f"the shutdown sequence changed ({missing}): re-check TimeoutStopSec and this test"
    return proxy.server.DRAIN_TIMEOUT_S + sum(float(m.group(1)) for m in parts.values() if m is not None)


@pytest.mark.parametrize("name", SERVE_UNITS)
def test_serve_unit_stops_later_than_the_drain(name: str) -> None:
    unit = read_unit(DEPLOY / name)
    service = unit["Service"]
    assert one(unit, "Service", "KillSignal") == "SIGTERM"  # the signal proxy/server.py drains on
    worst = _drain_worst_case_s()
    assert seconds(one(unit, "Service", "TimeoutStopSec")) > worst, f"the drain can take {worst:g} s"
    # And the doc states that arithmetic.
    assert f"At most {worst:g} s in all" in DOC.read_text(encoding="utf-8")
    assert one(unit, "Service", "Restart") == "on-failure"
    assert service.get("User") == ["spendgate"]
    assert int(one(unit, "Service", "LimitNOFILE")) >= 65536
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "PrivateTmp": "yes",
                       "ProtectHome": "yes"}.items():
        assert service.get(key) == [value], f"{name}: {key}={value}"


@pytest.mark.parametrize("name", SERVE_UNITS)
def test_journal_lives_in_the_writable_state_directory(name: str) -> None:
    """The units leave store.journal_path to its default, `spendgate.journal` in the working directory: that
    directory must be the unit's own state directory, writable under ProtectSystem=strict."""
    unit = read_unit(DEPLOY / name)
    state = one(unit, "Service", "StateDirectory")
    workdir = one(unit, "Service", "WorkingDirectory")
    assert workdir == f"/var/lib/{state}"
    assert workdir in unit["Service"].get("ReadWritePaths", [])
    if "@" in name:
        assert "%i" in state, "each instance needs its own state directory, hence its own journal"
    # The code's default really is relative (so per working directory) when the store is PostgreSQL.
    pg = StoreConfig(url="postgresql+asyncpg://spendgate@db.internal/spendgate")
    assert not Path(pg.effective_journal_path).is_absolute()
    relative = StoreConfig(url=pg.url, journal_path="spendgate.journal")
    assert not Path(relative.effective_journal_path).is_absolute()


def test_reconcile_unit_and_timer(capsys: pytest.CaptureFixture[str]) -> None:
    unit = read_unit(DEPLOY / "spendgate-reconcile.service")
    assert one(unit, "Service", "Type") == "oneshot"
    argv = spendgate_argv(one(unit, "Service", "ExecStart"))
    assert argv is not None
    args = parse_cli(argv, capsys)
    assert args.func is cmd_reconcile and args.config == CONFIG and not args.dry_run
    # The config must load, env: references included: the same environment as the server.
    assert one(unit, "Service", "EnvironmentFile") == "/etc/spendgate/spendgate.env"
    assert "2" in one(unit, "Service", "SuccessExitStatus").split()  # 2 = busy counters, left for the next run
    timer = read_unit(DEPLOY / "spendgate-reconcile.timer")
    assert one(timer, "Timer", "OnCalendar")
    assert one(timer, "Install", "WantedBy") == "timers.target"


# -- the environment file -----------------------------------------------------------------------------


def _env_example() -> tuple[dict[str, str], str]:
    text = (DEPLOY / "spendgate.env.example").read_text(encoding="utf-8")
    assigned = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition("=")
            assert sep and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key), f"not a KEY=value line: {line!r}"
            assigned[key] = value
    return assigned, text


def test_env_example(monkeypatch: pytest.MonkeyPatch) -> None:
    assigned, text = _env_example()
    assert assigned.get("LITELLM_LOCAL_MODEL_COST_MAP") == "True"
    # The file says spendgate sets TIKTOKEN_CACHE_DIR itself and overrides any other value: it does.
    assert "TIKTOKEN_CACHE_DIR" not in assigned
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "/elsewhere")
    ensure_offline()
    assert os.environ["TIKTOKEN_CACHE_DIR"] == str(tokenizer_dir())
    # Every env:NAME the example config and the doc use is named in the file (set or commented).
    refs = set(re.findall(r"env:([A-Za-z_][A-Za-z0-9_]*)", (ROOT / "config.yaml").read_text(encoding="utf-8")
                          + DOC.read_text(encoding="utf-8")))
    assert refs, "no env: reference found at all"
    for name in refs:
        assert re.search(rf"^#?\s*{name}=", text, re.M), f"{name} is not in deploy/spendgate.env.example"


# -- the load balancer example ------------------------------------------------------------------------


def test_haproxy_example_matches_the_server() -> None:
    lines = [line.split("#", 1)[0].strip() for line in
             (DEPLOY / "haproxy.cfg.example").read_text(encoding="utf-8").splitlines()]
    lines = [line for line in lines if line]
    server = ServerConfig()
    timeout_server = next(line.split()[2] for line in lines if line.startswith("timeout server "))
    assert seconds(timeout_server) > server.upstream_read_timeout_s
    limits = [int(m.group(1)) for line in lines if (m := re.search(r"content-length\) gt (\d+)", line))]
    assert limits == [server.max_body_bytes]
    check = next(line for line in lines if line.startswith("http-check send"))
    path = check.split(" uri ", 1)[1].split()[0]
    assert path == "/readyz" and any(route.path == path for route in health.routes)
    assert "http-check expect status 200" in lines
    assert not any(line.startswith("retry-on") for line in lines), "no L7 retries: a re-sent call is paid twice"
    assert not any("shutdown-sessions" in line for line in lines), "it would cut the streams a drain waits for"
    assert any("deny" in line and "{ path /metrics }" in line for line in lines)


# -- docs/deployment.md ---------------------------------------------------------------------------------


def _doc() -> str:
    return DOC.read_text(encoding="utf-8")


def _fenced(text: str, *langs: str) -> list[str]:
    """The bodies of the fenced blocks in these languages (indented ones, inside list items, too)."""
    blocks = re.findall(r"^[ \t]*```(\w*)\n(.*?)^[ \t]*```", text, re.M | re.S)
    return [textwrap.dedent(body) for lang, body in blocks if lang in langs]


def _doc_commands() -> list[list[str]]:
    text = _doc()
    commands: list[str] = []
    for block in _fenced(text, "sh", "bash"):
        for line in block.splitlines():
            line = re.sub(r"(^|\s)#.*$", "", line)
            commands += re.split(r"&&|\|\||;|\|", line)
    prose = re.sub(r"^[ \t]*```.*?^[ \t]*```", "", text, flags=re.M | re.S)
    commands += [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", prose)]
    found = []
    for command in commands:
        argv = spendgate_argv(command.strip()) if command.strip() else None
        if argv:  # a bare `spendgate` in prose is the user or the unit, not a command
            found.append(argv)
    return found


def test_every_spendgate_command_in_the_doc_exists(capsys: pytest.CaptureFixture[str]) -> None:
    commands = _doc_commands()
    for argv in commands:
        parse_cli(argv, capsys)
    named = {argv[0] for argv in commands if argv}
    assert {"serve", "check-config", "reconcile", "keys", "hash-key"} <= named, named


def test_yaml_snippets_load_through_the_settings_loader(monkeypatch: pytest.MonkeyPatch) -> None:
    snippets = _fenced(_doc(), "yaml")
    assert len(snippets) >= 3
    for snippet in snippets:
        for name in re.findall(r"env:([A-Za-z_][A-Za-z0-9_]*)", snippet):
            monkeypatch.setenv(name, "test-value")
        try:
            parse_settings(snippet, "docs/deployment.md")
        except ConfigError as exc:
            pytest.fail("a yaml snippet of docs/deployment.md does not load:\n" + "\n".join(exc.lines)
                        + "\n---\n" + snippet)


def test_the_cluster_refusal_quoted_is_what_the_check_prints() -> None:
    config = ('ledger: {url: "redis://redis-1.internal:6379", cluster: true}\n'
              "budgets:\n  - {name: web-daily, scope: {project: web}, window: day, limit_usd: 20}\n")
    with pytest.raises(ConfigError) as caught:
        parse_settings(config)
    (line,) = caught.value.lines
    message = line.split("budgets[0].scope: ", 1)[1]
    assert message in _doc()


def _section_models() -> dict[str, type[BaseModel]]:
    models = {}
    for section, field in Settings.model_fields.items():
        (model,) = _model_args(field.annotation)
        models[section] = model
    return models


def test_every_config_key_named_in_the_doc_exists() -> None:
    models = _section_models()
    named = set(re.findall(rf"`((?:{'|'.join(models)})\.[a-z_]+)", _doc()))
    assert {"store.journal_path", "ledger.cluster", "server.max_body_bytes"} <= named
    for dotted in named:
        section, key = dotted.split(".")
        assert key in models[section].model_fields, f"`{dotted}` in docs/deployment.md is not a config key"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_links_resolve() -> None:
    for target, anchor in re.findall(r"\]\(([^)#\s]+)(?:#([^)\s]+))?\)", _doc()):
        path = (DOC.parent / target).resolve()
        assert path.exists(), f"docs/deployment.md links to a missing {target}"
        if anchor:
            headings = re.findall(r"^#+ (.+)$", path.read_text(encoding="utf-8"), re.M)
            assert anchor in {_slug(h) for h in headings}, f"no heading #{anchor} in {target}"
    for mention in set(re.findall(r"deploy/[\w.@-]+", _doc())):
        assert (ROOT / mention).exists(), f"docs/deployment.md names a missing {mention}"
    for linking in (ROOT / "README.md", ROOT / "docs" / "operations.md"):
        assert "deployment.md" in linking.read_text(encoding="utf-8"), f"{linking.name} must link the doc"
