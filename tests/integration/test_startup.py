"""Start-up stays offline and light: no litellm import, no packet beyond loopback, tiktoken from bundled files."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent("""
    import socket, sys, os
    real_connect = socket.socket.connect
    def loopback_only(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and not (host.startswith("127.") or host in ("::1", "localhost")) \\
                and self.family != socket.AF_UNIX:
            raise OSError(f"network blocked in this test: {address!r}")
        return real_connect(self, address)
    socket.socket.connect = loopback_only
    socket.getaddrinfo = lambda *a, **k: (_ for _ in ()).throw(OSError("DNS blocked in this test"))
    os.environ.pop("TIKTOKEN_CACHE_DIR", None)

    from starlette.testclient import TestClient
    from proxy.app import create_app
    from proxy.settings import load_settings

    settings = load_settings(sys.argv[1])
    with TestClient(create_app(settings), base_url="http://127.0.0.1") as client:
        r = client.post("/v1/chat/completions", headers={"authorization": "Bearer sk-spendgate-demo"},
                        json={"model": "mock", "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200, r.text
        assert int(r.json()["usage"]["prompt_tokens"]) > 0
    assert "litellm" not in sys.modules, "litellm was imported on the passthrough path"
    print("OK")
""")


def test_start_and_serve_offline_without_importing_litellm(tmp_path: Path) -> None:
    config = (ROOT / "config.yaml").read_text().replace("sqlite+aiosqlite:///spendgate.db",
                                                        f"sqlite+aiosqlite:///{tmp_path}/s.db")
    (tmp_path / "config.yaml").write_text(config)
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "config.yaml")], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-3000:]
