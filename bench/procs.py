"""The processes `make bench` runs: fake upstream, bare forwarders, spendgate (bare and with budgets), the
bench's own redis-server; and what /proc says of them."""

from __future__ import annotations

import http.client
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from proxy.auth import hash_key
from tests.fakes.upstream import OPENAI_KEY

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
BENCH_KEY = "sg-bench-virtual-key"
KEY_ENV = "BENCH_UPSTREAM_KEY"
CLK_TCK = os.sysconf("SC_CLK_TCK")
SPENDGATE, BUDGETS_MEMORY, BUDGETS_REDIS = "spendgate", "spendgate+budgets (memory)", "spendgate+budgets (redis)"
LITELLM = "litellm proxy"


class StartError(RuntimeError):
    """A server did not come up (its exit code and the tail of its output are in the message)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(slots=True)
class Server:
    """One server subprocess: its name, port, the key clients present, the path a call goes to."""

    name: str
    port: int
    key: str
    argv: list[str]
    log_path: Path
    health: str = "/healthz"  # "redis": answers PING instead of an HTTP GET
    env: dict[str, str] = field(default_factory=dict)
    unset_env: tuple[str, ...] = ()  # inherited variables removed (e.g. LiteLLM's DATABASE_URL)
    start_timeout: float = 30.0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float | None = None) -> None:
        timeout = timeout or self.start_timeout
        env = {**os.environ, **self.env, KEY_ENV: OPENAI_KEY, "PYTHONUNBUFFERED": "1"}
        for name in self.unset_env:
            env.pop(name, None)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise StartError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            if _redis_pongs(self.port) if self.health == "redis" else _answers(self.port, self.health):
                return
            time.sleep(0.05)
        raise StartError(f"{self.name} did not answer GET {self.health} within {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no output)"
        return "\n".join(text.splitlines()[-lines:]) or "(no output)"


def _answers(port: int, path: str) -> bool:
    """True once the server answers any HTTP status on `path` (the fake upstream has no health route)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        conn.request("GET", path)
        return conn.getresponse().status < 500
    except OSError:
        return False
    finally:
        conn.close()


def _redis_pongs(port: int) -> bool:
    """True once a redis-server on `port` answers PING with +PONG."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (every thread), from /proc/<pid>/stat, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of proc(5)


def peak_rss_mb(pid: int) -> float:
    """VmHWM (peak resident set) of the process, in MB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def machine_info() -> list[str]:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = os.cpu_count() or 0
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    return [f"CPU: {model}; {cores} logical cores ({affinity} usable by this process)",
            f"Python {platform.python_version()} ({platform.python_implementation()}), {platform.platform()}",
            f"Clock ticks per second (CPU counter resolution): {CLK_TCK}"]


# The three budgets the budget variants carry: every call matches all of them (the load generator sends
# X-Spendgate-Agent and X-Spendgate-Run; the key pins org: bench), and the limits are never reached.
BUDGETS_YAML = """\
budgets:
  - {name: org-monthly, scope: {org: bench}, window: month, limit_usd: 1000000}
  - {name: per-agent-daily, scope: {agent: "*"}, window: day, limit_usd: 1000000}
  - {name: per-run, scope: {run: "*"}, window: run, limit_usd: 1000000}
"""


def spendgate_config(tmp: Path, port: int, upstream_port: int, ledger_url: str | None = None,
                     budgets_yaml: str = BUDGETS_YAML) -> Path:
    """A config.yaml for spendgate: SQLite store in `tmp`, every fake-* model to the fake upstream; with a
    `ledger_url`, also that ledger and the budgets (by default the three bench budgets)."""
    text = f"""\
server: {{host: 127.0.0.1, port: {port}, log_level: warning}}
store: {{url: "sqlite+aiosqlite:///{tmp / 'bench.db'}"}}
models:
  - name: "fake-*"
    provider: openai
    api_base: http://127.0.0.1:{upstream_port}/v1
    api_key: env:{KEY_ENV}
    price_as: gpt-4o-mini
keys:
  - {{name: bench, key_sha256: {hash_key(BENCH_KEY)}, org: bench, role: admin}}
"""
    if ledger_url is not None:
        text += f'ledger: {{url: "{ledger_url}"}}\n' + budgets_yaml
    path = tmp / "config.yaml"
    path.write_text(text)
    return path


def redis_server(tmp: Path) -> Server:
    """The bench's own redis-server on a free port (never the machine's shared one), no persistence."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise StartError("redis-server is not on PATH (the 'spendgate+budgets (redis)' target needs one; "
                         "apt-get install redis-server)")
    port = free_port()
    tmp.mkdir(parents=True, exist_ok=True)
    return Server("redis-server", port, "", [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                             "--appendonly", "no", "--daemonize", "no", "--dir", str(tmp)],
                  tmp / "redis.log", health="redis")


def _spendgate(name: str, tmp: Path, upstream_port: int, ledger_url: str | None = None,
               budgets_yaml: str = BUDGETS_YAML) -> Server:
    tmp.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = spendgate_config(tmp, port, upstream_port, ledger_url, budgets_yaml)
    spendgate_bin = str(Path(PYTHON).with_name("spendgate"))
    argv = [spendgate_bin, "serve", "--config", str(config)] if Path(spendgate_bin).exists() else \
        [PYTHON, "-m", "proxy.cli", "serve", "--config", str(config)]
    return Server(name, port, BENCH_KEY, argv, tmp / "spendgate.log")


def build_servers(tmp: Path) -> tuple[list[Server], list[Server]]:
    """The helper servers (fake upstream first, then redis-server) and the proxies in front of the upstream
    (none started). Each spendgate has its own directory under `tmp` (config, SQLite store, journal)."""
    up_port = free_port()
    upstream = Server("fake upstream", up_port, OPENAI_KEY,
                      [PYTHON, "-m", "tests.fakes.upstream", "--port", str(up_port)], tmp / "upstream.log",
                      health="/")
    redis = redis_server(tmp / "redis")
    up_url = f"http://127.0.0.1:{up_port}/v1"
    proxies = []
    for client in ("aiohttp", "httpx"):
        port = free_port()
        proxies.append(Server(f"bare {client}", port, "unused",
                              [PYTHON, "-m", "bench.forwarder", "--client", client, "--port", str(port),
                               "--upstream", up_url], tmp / f"forwarder-{client}.log"))
    proxies.append(_spendgate(SPENDGATE, tmp / "spendgate", up_port))
    proxies.append(_spendgate(BUDGETS_MEMORY, tmp / "spendgate-memory", up_port, "memory://"))
    proxies.append(_spendgate(BUDGETS_REDIS, tmp / "spendgate-redis", up_port, f"redis://127.0.0.1:{redis.port}/0"))
    return [upstream, redis], proxies


def capped_spendgate(name: str, tmp: Path, upstream_port: int, ledger_url: str, cap_usd: float) -> Server:
    """A spendgate for the cap-overshoot run: one blocking org budget of `cap_usd` on `ledger_url`."""
    budget = (f"budgets:\n  - {{name: cap, scope: {{org: bench}}, window: month, limit_usd: {cap_usd!r}, "
              "on_exceed: block}\n")
    return _spendgate(name, tmp, upstream_port, ledger_url, budget)
