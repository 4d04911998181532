"""LiteLLM's own proxy as a `make bench` target: its own venv (created on demand from PyPI), an offline config
pointing at the bench's fake upstream, and the Server that runs it.

The venv is `bench/.litellm-venv` (git-ignored), with `litellm==<the version pinned in pyproject.toml>` and the
requirements of its `proxy` extra. Since 1.110 that extra pins `litellm-proxy==<version>`, which is not
published on PyPI, so when `pip install 'litellm[proxy]==V'` cannot resolve, the helper installs `litellm==V`
and the extra's other requirements (exact pins that do not resolve are taken unpinned). The proxy's code
itself ships inside the `litellm` wheel (`litellm/proxy`, the `litellm` CLI).

Offline: `LITELLM_LOCAL_MODEL_COST_MAP=True` (no price-map download), `LITELLM_TELEMETRY=False`, no
`DATABASE_URL` (no Prisma, no PostgreSQL), no Redis. Without a database LiteLLM cannot create virtual keys
(`/key/generate` answers 500: its Prisma client is required), so key / team / user `max_budget` cannot be set
at all offline; what it can enforce without a database is a *deployment* budget (`max_budget` +
`budget_duration` in a model's `litellm_params`, kept by the router in process memory), which is what the
cap-overshoot run uses.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import TextIO

from bench.procs import ROOT, Server, free_port
from tests.fakes.upstream import OPENAI_KEY

VENV = ROOT / "bench" / ".litellm-venv"
MASTER_KEY = "sk-litellm-bench-master"
MODEL = "fake-in200-out50"  # the model every bench request names
# The same prices spendgate uses for the fake models (price_as: gpt-4o-mini), so spend is comparable.
INPUT_COST, OUTPUT_COST = 0.15e-6, 0.60e-6
OFFLINE_ENV = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False", "LITELLM_LOG": "ERROR",
               "LITELLM_MODE": "PRODUCTION", "DISABLE_ADMIN_UI": "True"}
# Inherited variables that would give LiteLLM a database or a cache: never passed on.
UNSET_ENV = ("DATABASE_URL", "DIRECT_URL", "REDIS_URL", "REDIS_HOST", "REDIS_PORT", "REDIS_PASSWORD",
             "STORE_MODEL_IN_DB")


class Unavailable(RuntimeError):
    """LiteLLM could not be installed (the reason is the message); the bench runs without it."""


def pinned_version() -> str:
    """The litellm version pinned in pyproject.toml (`litellm==X`)."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in deps:
        m = re.fullmatch(r"\s*litellm\s*==\s*([^\s;,]+)\s*", dep)
        if m:
            return m.group(1)
    raise Unavailable("pyproject.toml pins no litellm==<version>")


def _pip(python: Path, args: list[str], log: Path) -> bool:
    with open(log, "ab") as out:
        out.write(f"\n$ pip install {' '.join(args)}\n".encode())
        out.flush()
        return subprocess.run([str(python), "-m", "pip", "install", "--disable-pip-version-check", *args],
                              stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode == 0


_EXTRA_REQS = """\
import json
from importlib.metadata import requires
from pip._vendor.packaging.requirements import Requirement
out = []
for text in requires("litellm") or []:
    req = Requirement(text)
    if req.marker and req.marker.evaluate({"extra": "proxy"}) and not req.marker.evaluate({"extra": ""}):
        out.append([req.name, str(req).split(";")[0].strip()])
print(json.dumps(out))
"""


def ensure_venv(log: TextIO = sys.stderr) -> Path:
    """The `litellm` CLI of bench/.litellm-venv, installing it first when needed; raises Unavailable."""
    version = pinned_version()
    python, cli, stamp = VENV / "bin" / "python", VENV / "bin" / "litellm", VENV / f".installed-{version}"
    if stamp.exists() and cli.exists():
        return cli
    install_log = ROOT / "bench" / "results" / "litellm-install.log"
    install_log.parent.mkdir(parents=True, exist_ok=True)
    install_log.write_text("")
    print(f"installing litellm[proxy]=={version} into {VENV.relative_to(ROOT)} (log: "
          f"{install_log.relative_to(ROOT)}) ...", file=log, flush=True)
    if not python.exists():
        res = subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], capture_output=True, text=True)
        if res.returncode != 0:
            raise Unavailable(f"python -m venv {VENV} failed: {res.stderr.strip()[-300:]}")
    if not _pip(python, ["-q", f"litellm[proxy]=={version}"], install_log):
        # litellm[proxy] pins litellm-proxy==V, which PyPI does not publish: install the rest of the extra.
        if not _pip(python, ["-q", f"litellm=={version}"], install_log):
            raise Unavailable(f"pip install litellm=={version} failed (see {install_log})")
        res = subprocess.run([str(python), "-c", _EXTRA_REQS], capture_output=True, text=True)
        if res.returncode != 0:
            raise Unavailable(f"could not read litellm's proxy extra: {res.stderr.strip()[-300:]}")
        reqs = []
        for name, spec in json.loads(res.stdout):
            if name == "litellm-proxy":
                continue
            reqs.append(name if "==" in spec else spec)  # exact pins of unpublished releases: take the latest
        if not _pip(python, ["-q", *reqs], install_log):
            raise Unavailable(f"pip install of litellm's proxy requirements failed (see {install_log})")
    if not cli.exists():
        raise Unavailable(f"{cli} missing after install (see {install_log})")
    stamp.write_text(version + "\n")
    return cli


def config(tmp: Path, upstream_port: int, cap_usd: float | None = None) -> Path:
    """LiteLLM config: the bench model to the fake upstream as an OpenAI-compatible deployment, priced as
    spendgate prices it; with `cap_usd`, a deployment budget (the budget LiteLLM enforces without a DB)."""
    budget = (f"      max_budget: {cap_usd!r}\n      budget_duration: 30d\n" if cap_usd is not None else "")
    text = f"""\
model_list:
  - model_name: {MODEL}
    litellm_params:
      model: openai/{MODEL}
      api_base: http://127.0.0.1:{upstream_port}/v1
      api_key: {OPENAI_KEY}
      input_cost_per_token: {INPUT_COST!r}
      output_cost_per_token: {OUTPUT_COST!r}
{budget}general_settings:
  master_key: {MASTER_KEY}
litellm_settings:
  telemetry: false
  set_verbose: false
"""
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "litellm.yaml"
    path.write_text(text)
    return path


def server(name: str, cli: Path, tmp: Path, upstream_port: int, cap_usd: float | None = None) -> Server:
    """LiteLLM's proxy as shipped (`litellm --config ...`: one uvicorn worker), not started."""
    port = free_port()
    cfg = config(tmp, upstream_port, cap_usd)
    return Server(name, port, MASTER_KEY, [str(cli), "--config", str(cfg), "--host", "127.0.0.1",
                                           "--port", str(port), "--num_workers", "1"],
                  tmp / "litellm.log", health="/health/liveliness", env=dict(OFFLINE_ENV), unset_env=UNSET_ENV,
                  start_timeout=120.0)
