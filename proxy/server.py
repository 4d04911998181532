"""The HTTP server of `spendgate serve`: uvicorn with a drain in front of its shutdown.

The first SIGTERM (or Ctrl+C) starts the drain: `/readyz` answers not ready at once, new calls are refused with
503 (after `server.drain_delay_s`, the load balancer's time to take the replica out) while the listening socket
stays open (a load balancer sees the replica leave instead of connection errors);
the calls already in flight run to the end and record their rows. Once none is left (or `drain_timeout_s`
has passed) uvicorn shuts down as usual: it waits for open responses, then the lifespan flushes the usage
writer into SQL. A second signal skips the rest of the drain.
"""

from __future__ import annotations

import logging
import time
from types import FrameType

import uvicorn
from starlette.applications import Starlette

log = logging.getLogger(__name__)

DRAIN_TIMEOUT_S = 30.0
STARTUP_FAILURE = 3  # uvicorn's exit status when the app could not start


class DrainingServer(uvicorn.Server):
    """uvicorn.Server whose first exit signal drains in-flight calls (`app.state.services`) before stopping."""

    def __init__(self, config: uvicorn.Config, app: Starlette, drain_timeout_s: float = DRAIN_TIMEOUT_S,
                 drain_delay_s: float = 0.0) -> None:
        super().__init__(config)
        self._app = app
        self._drain_timeout_s = drain_timeout_s
        self._drain_delay_s = drain_delay_s
        self._refuse_from: float | None = None
        self._drain_until: float | None = None
        self._drain_logged = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # A signal handler: set flags only (no logging, no awaiting); on_tick does the rest.
        services = getattr(self._app.state, "services", None)
        if self._drain_until is None and not self.should_exit and services is not None:
            # /readyz says not ready at once; new calls are still served for drain_delay_s (the load balancer's
            # time to notice), then refused with 503 while those in flight finish.
            services.leaving = True
            now = time.monotonic()
            self._refuse_from = now + self._drain_delay_s
            if self._drain_delay_s <= 0:
                services.draining = True
            self._drain_until = now + self._drain_delay_s + self._drain_timeout_s
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if await super().on_tick(counter):
            return True
        if self._drain_until is None:
            return False
        services = self._app.state.services
        if not services.draining:
            if self._refuse_from is not None and time.monotonic() < self._refuse_from:
                return False
            services.draining = True
        inflight = services.inflight
        if not self._drain_logged:
            self._drain_logged = True
            log.info("draining: new calls are refused, waiting for calls in flight", extra={"inflight": inflight})
        if inflight <= 0:
            log.info("drained: no call in flight")
            return True
        if time.monotonic() >= self._drain_until:
            log.error("drain timed out with calls still in flight", extra={"inflight": inflight})
            return True
        return False


def serve(app: Starlette, *, host: str, port: int, max_header_bytes: int,
          drain_timeout_s: float = DRAIN_TIMEOUT_S, drain_delay_s: float = 0.0) -> int:
    """Run until a signal has drained and stopped the server; returns the process exit status."""
    config = uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False, server_header=False,
                            timeout_graceful_shutdown=30, h11_max_incomplete_event_size=max_header_bytes)
    server = DrainingServer(config, app, drain_timeout_s, drain_delay_s)
    server.run()
    return 0 if server.started else STARTUP_FAILURE
