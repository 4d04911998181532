"""Run an ASGI app with uvicorn in a background thread on 127.0.0.1, for integration tests and the bench."""

from __future__ import annotations

import socket
import threading
import time
from types import TracebackType
from typing import Any

import uvicorn


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (ThreadedServer binds its own socket and has no such race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class ThreadedServer:
    """One uvicorn server on its own thread and event loop; several may run in one process.

    The listening socket is bound before the thread starts, so `.port` and `.url` are known at once and
    no other process can take the port. start() returns once the app's lifespan startup has run and the
    socket accepts connections; stop() asks uvicorn to exit, waits for in-flight requests up to
    `timeout_graceful_shutdown` seconds, then cancels them.
    """

    def __init__(
        self,
        app: Any,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        log_level: str = "warning",
        lifespan: str = "on",
        timeout_graceful_shutdown: int = 1,
        **config: Any,
    ) -> None:
        self.app = app
        self.host = host
        self._requested_port = port
        self.port = 0
        options: dict[str, Any] = {
            "log_level": log_level,
            "lifespan": lifespan,
            "timeout_graceful_shutdown": timeout_graceful_shutdown,
            "access_log": False,
            "log_config": None,  # never reconfigure the process's logging (pytest's capture, the proxy's)
            "ws": "none",
        }
        options.update(config)
        self._options = options
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> ThreadedServer:
        if self._thread is not None:
            raise RuntimeError("server already started")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self._requested_port))
        self._sock = sock
        self.port = int(sock.getsockname()[1])
        config = uvicorn.Config(self.app, host=self.host, port=self.port, **self._options)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name=f"uvicorn-{self.port}", daemon=True)
        self._thread.start()
        self._wait_started(timeout)
        return self

    def _run(self) -> None:
        assert self._server is not None and self._sock is not None
        try:
            self._server.run(sockets=[self._sock])
        except BaseException as exc:  # noqa: BLE001 - SystemExit from a failed lifespan startup, too
            self._error = exc

    def _wait_started(self, timeout: float) -> None:
        assert self._server is not None and self._thread is not None
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                reason = f"exited with {self._error!r}" if self._error else "did not start in time"
                raise RuntimeError(f"uvicorn server for {self.app!r} on {self.url} {reason}")
            time.sleep(0.005)
        with socket.create_connection((self.host, self.port), timeout=timeout):
            pass

    def stop(self, timeout: float = 5.0) -> None:
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.should_exit = True
        thread.join(timeout)
        if thread.is_alive():
            server.force_exit = True
            thread.join(2.0)
        if self._sock is not None:
            self._sock.close()
        self._server = self._thread = self._sock = None

    def __enter__(self) -> ThreadedServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
