"""Raw passthrough to a provider that speaks the endpoint's wire format natively (OpenAI-compatible
servers for /v1/*, Anthropic for /v1/messages), over one shared aiohttp session. Bytes are not rebuilt."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Mapping

import aiohttp

from proxy.errors import UpstreamError, UpstreamTimeout
from proxy.upstreams.base import ANTHROPIC_ENDPOINTS, ENDPOINT_PATHS, Deployment, UpstreamRequest

log = logging.getLogger(__name__)

# Response headers worth relaying: what the provider says about the call and its rate limits.
_RELAYED_PREFIXES = ("x-ratelimit-", "anthropic-ratelimit-", "openai-")
_RELAYED = frozenset({"content-type", "retry-after", "x-request-id", "request-id", "anthropic-organization-id"})


def upstream_url(deployment: Deployment, endpoint: str, query: str) -> str:
    """api_base + the endpoint path. OpenAI-style api_base includes /v1; Anthropic's does not."""
    if not deployment.api_base:
        raise UpstreamError(f"model {deployment.name!r} has no api_base configured")
    path = ENDPOINT_PATHS[endpoint]  # type: ignore[index]
    if deployment.provider != "anthropic":
        path = path.removeprefix("/v1")
    params = [query] if query else []
    if deployment.provider == "azure" and deployment.api_version and "api-version=" not in query:
        params.append(f"api-version={deployment.api_version}")
    return deployment.api_base + path + ("?" + "&".join(params) if params else "")


def auth_headers(deployment: Deployment) -> dict[str, str]:
    if deployment.api_key is None:
        return {}
    key = deployment.api_key.get_secret_value()
    if deployment.provider == "anthropic":
        return {"x-api-key": key}
    if deployment.provider == "azure":
        return {"api-key": key}
    return {"authorization": "Bearer " + key}


def without_key(body: bytes, key: str) -> bytes:
    """`body` less the deployment's key: quoted whole, or masked but for its first 12 characters."""
    body = body.replace(key.encode(), b"[redacted]")
    if len(key) >= 20:
        body = re.sub(re.escape(key[:12].encode()) + rb"[^\s\"',;]*", b"[redacted]", body)
    return body


class HttpResponse:
    __slots__ = ("_resp", "_label", "_key", "status", "headers")

    def __init__(self, resp: aiohttp.ClientResponse, label: str, key: str | None = None) -> None:
        self._resp = resp
        self._label = label
        self._key = key  # a provider's error may quote the key it was sent; that body is relayed to the client
        self.status = resp.status
        self.headers: Mapping[str, str] = {
            k.lower(): v for k, v in resp.headers.items()
            if k.lower() in _RELAYED or k.lower().startswith(_RELAYED_PREFIXES)
        }

    async def read(self) -> bytes:
        try:
            body = await self._resp.read()
            return without_key(body, self._key) if self._key and self.status >= 400 else body
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise UpstreamTimeout(f"{self._label} did not finish its response in time") from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"{self._label} broke off its response ({type(exc).__name__})") from None
        finally:
            self.close()

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._resp.content.iter_any():
                yield chunk
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise UpstreamTimeout(f"{self._label} stopped streaming (read timeout)") from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"{self._label} broke off the stream ({type(exc).__name__})") from None

    def close(self) -> None:
        # release() returns a fully read connection to the pool; close() drops an unfinished one, which
        # stops the provider's generation (and so its spend) at once.
        if self._resp.content.at_eof():
            self._resp.release()
        else:
            self._resp.close()


class HttpUpstream:
    """Passthrough adapter; one instance per app, sharing the app's aiohttp session."""

    def __init__(self, session: aiohttp.ClientSession, *, connect_timeout: float, read_timeout: float) -> None:
        self._session = session
        self._connect = connect_timeout
        self._read = read_timeout
        # Per (route, endpoint): the fixed headers and timeout, built once instead of on every call.
        self._prepared: dict[tuple[str, int, str], tuple[dict[str, str], aiohttp.ClientTimeout]] = {}

    def _prepare(self, dep: Deployment, endpoint: str) -> tuple[dict[str, str], aiohttp.ClientTimeout]:
        key = (dep.name, dep.position, endpoint)
        found = self._prepared.get(key)
        if found is None:
            headers = {"content-type": "application/json", "accept": "*/*", "accept-encoding": "identity",
                       **auth_headers(dep)}
            if endpoint in ANTHROPIC_ENDPOINTS:
                headers["anthropic-version"] = "2023-06-01"
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=self._connect,
                                            sock_read=dep.timeout_s or self._read)
            found = self._prepared[key] = (headers, timeout)
        return found

    async def open(self, request: UpstreamRequest) -> HttpResponse:
        dep = request.deployment
        label = f"provider {dep.provider!r} (model {dep.name!r})"
        fixed, timeout = self._prepare(dep, request.endpoint)
        # The client's provider options (an allow-list: anthropic-version, -beta, openai-beta, accept) win
        # over the defaults; credentials cannot be among them.
        headers = {**fixed, **request.headers} if request.headers else fixed
        url = upstream_url(dep, request.endpoint, request.query)
        try:
            resp = await self._session.post(url, data=request.raw, headers=headers, timeout=timeout,
                                            allow_redirects=False)
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise UpstreamTimeout(f"{label} did not answer in time") from None
        except aiohttp.ClientError as exc:
            log.warning("upstream connection failed", extra={"provider": dep.provider, "model": dep.name,
                                                              "error": type(exc).__name__})
            raise UpstreamError(f"could not reach {label} ({type(exc).__name__})") from None
        except asyncio.CancelledError:
            raise
        return HttpResponse(resp, label, dep.api_key.get_secret_value() if dep.api_key else None)

    async def aclose(self) -> None:
        return None
