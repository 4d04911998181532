"""OpenAI wire format to providers that need translation (Anthropic, Gemini, Bedrock, ...) through litellm.

litellm costs ~6 s and ~190 MB to import and ~10 ms of CPU per call, so it is imported only when the first
translated call arrives and never sits on the passthrough path.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

import orjson

from proxy.errors import InvalidRequest, UpstreamError, UpstreamTimeout
from proxy.upstreams.base import UpstreamRequest
from proxy.upstreams.http import without_key

_SKIP = frozenset({"model", "messages", "stream", "input", "prompt"})


def _sse(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def _dump(obj: Any) -> Any:
    return obj.model_dump(exclude_none=False) if hasattr(obj, "model_dump") else dict(obj)


class TranslatedResponse:
    def __init__(self, status: int, body: bytes | None = None, stream: Any = None) -> None:
        self.status = status
        self.headers = {"content-type": "text/event-stream" if stream is not None else "application/json"}
        self._body = body
        self._stream = stream

    async def read(self) -> bytes:
        return self._body or b""

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._stream:
                yield _sse(_dump(chunk))
        except Exception as exc:  # litellm raises its own family mid-stream
            raise _map_failure(exc) from None
        yield b"data: [DONE]\n\n"

    def close(self) -> None:
        if self._stream is not None and hasattr(self._stream, "aclose"):
            task = asyncio.ensure_future(self._stream.aclose())
            task.add_done_callback(lambda t: t.cancelled() or t.exception())


class TranslatedUpstream:
    def __init__(self) -> None:
        self._litellm: Any = None

    def _lib(self) -> Any:
        if self._litellm is None:
            # Never let litellm fetch its price map from the network, at import or later.
            os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
            import litellm

            litellm.telemetry = False
            litellm.drop_params = True
            self._litellm = litellm
        return self._litellm

    async def aclose(self) -> None:
        return None

    async def open(self, request: UpstreamRequest) -> TranslatedResponse:
        dep = request.deployment
        if request.endpoint not in ("chat", "completions", "embeddings"):
            raise InvalidRequest(
                f"model {dep.requested!r} is served by provider {dep.provider!r}, which spendgate reaches through "
                f"translation; {request.endpoint!r} calls need an OpenAI-compatible or Anthropic deployment",
                param="model")
        lib = await asyncio.to_thread(self._lib) if self._litellm is None else self._litellm
        body = request.body
        kwargs: dict[str, Any] = {k: v for k, v in body.items() if k not in _SKIP}
        kwargs.update(model=f"{dep.provider}/{dep.upstream_model}", api_base=dep.api_base,
                      timeout=dep.timeout_s or 600, num_retries=0)
        if dep.api_key is not None:
            kwargs["api_key"] = dep.api_key.get_secret_value()
        try:
            if request.endpoint == "embeddings":
                result = await lib.aembedding(input=body.get("input"), **kwargs)
            elif request.endpoint == "completions":
                result = await lib.atext_completion(prompt=body.get("prompt"), stream=request.stream, **kwargs)
            else:
                result = await lib.acompletion(messages=body.get("messages"), stream=request.stream, **kwargs)
        except Exception as exc:
            return _error_response(exc, dep.api_key.get_secret_value() if dep.api_key else None)
        if request.stream:
            return TranslatedResponse(200, stream=result)
        return TranslatedResponse(200, body=orjson.dumps(_dump(result)))


def _map_failure(exc: Exception) -> Exception:
    name = type(exc).__name__
    if "Timeout" in name:
        return UpstreamTimeout("the provider did not answer in time")
    return UpstreamError(f"the provider failed ({name})")


def _error_response(exc: Exception, secret: str | None) -> TranslatedResponse:
    status = getattr(exc, "status_code", None)
    if not isinstance(status, int) or not 400 <= status < 600:
        raise _map_failure(exc) from None
    message = str(getattr(exc, "message", exc))[:1000]
    if secret:  # the provider's answer may quote the key, whole or masked but for its start
        message = without_key(message.encode(), secret).decode(errors="replace")
    body = {"error": {"message": message, "type": "upstream_error", "code": status, "param": None}}
    return TranslatedResponse(status, body=orjson.dumps(body))
