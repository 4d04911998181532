"""The one table from domain error to HTTP status and body, in the wire format of each endpoint family."""

from __future__ import annotations

from typing import Any, Literal

import orjson
from starlette.responses import Response

Family = Literal["openai", "anthropic", "seed"]

# Path prefixes answered in the seed "Metrics API" error shape (DESIGN §14, error families).
SEED_PREFIXES = ("/api/factory", "/api/ai-cost", "/api/v1/admin")


class ProxyError(Exception):
    """Root of every error the proxy answers on purpose; carries data, rendered by `error_response`."""

    status = 500
    code = "internal_error"
    type = "api_error"

    def __init__(self, message: str, *, param: str | None = None, headers: dict[str, str] | None = None,
                 extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = headers or {}
        self.extra = extra or {}


class InvalidRequest(ProxyError):
    """The request is malformed: bad JSON, wrong types, bad tag values."""

    status, code, type = 400, "invalid_request", "invalid_request_error"


class Unauthorized(ProxyError):
    """No key, or a key spendgate does not know."""

    status, code, type = 401, "invalid_api_key", "authentication_error"


class Forbidden(ProxyError):
    """The key's role may not do this."""

    status, code, type = 403, "forbidden", "permission_error"


class NotFound(ProxyError):
    """No such route or object."""

    status, code, type = 404, "not_found", "not_found_error"


class ModelNotFound(NotFound):
    """The requested model is not in config.yaml."""

    code = "model_not_found"


class MethodNotAllowed(ProxyError):
    """The route exists, the method does not."""

    status, code, type = 405, "method_not_allowed", "invalid_request_error"


class RequestTooLarge(ProxyError):
    """The body is over `server.max_body_bytes`."""

    status, code, type = 413, "request_too_large", "request_too_large"


class NotMetered(ProxyError):
    """A provider route spendgate cannot meter; nothing is forwarded unmetered."""

    status, code, type = 501, "not_supported", "invalid_request_error"


class UpstreamError(ProxyError):
    """The provider could not be reached or broke the protocol."""

    status, code, type = 502, "upstream_error", "api_error"


class UpstreamTimeout(ProxyError):
    """The provider did not answer in time."""

    status, code, type = 504, "upstream_timeout", "timeout_error"


class ServiceUnavailable(ProxyError):
    """spendgate itself cannot serve right now (starting, draining, store unreachable)."""

    status, code, type = 503, "service_unavailable", "api_error"


class RateLimited(ProxyError):
    """Too many requests from this key; `Retry-After` says when to come back."""

    status, code, type = 429, "rate_limited", "rate_limit_error"


class IdempotencyKeyReused(ProxyError):
    """The Idempotency-Key was used before with another body or endpoint."""

    status, code, type = 422, "idempotency_key_reused", "invalid_request_error"


class IdempotencyInProgress(ProxyError):
    """A copy of this request (same Idempotency-Key) is still running; retry later."""

    status, code, type = 409, "idempotency_request_in_progress", "invalid_request_error"


class DatabaseError(ProxyError):
    """The store failed transiently while answering (retry)."""

    status, code, type = 500, "database_error", "api_error"


class SeedError(ProxyError):
    """An error of the seed Metrics API with its own code (INVALID_METRIC_TYPE, INVALID_TIME_RANGE, ...)."""

    def __init__(self, status: int, seed_code: str, message: str, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.status = status
        self.seed_code = seed_code


# The seed family's code when the error does not name one: by status.
_SEED_CODES = {
    400: "INVALID_REQUEST", 401: "UNAUTHORIZED", 403: "FORBIDDEN", 404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED",
    409: "CONFLICT", 413: "REQUEST_TOO_LARGE", 422: "INVALID_REQUEST", 429: "RATE_LIMITED",
    500: "DATABASE_ERROR", 503: "SERVICE_UNAVAILABLE",
}


# Anthropic's error `type` vocabulary, by status.
_ANTHROPIC_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 402: "billing_error", 403: "permission_error",
    404: "not_found_error", 405: "invalid_request_error", 409: "invalid_request_error", 413: "request_too_large",
    422: "invalid_request_error",
    429: "rate_limit_error", 500: "api_error", 501: "invalid_request_error", 502: "api_error",
    503: "overloaded_error", 504: "timeout_error",
}


def error_body(err: ProxyError, family: Family) -> dict[str, Any]:
    if family == "seed":
        code = getattr(err, "seed_code", None) or _SEED_CODES.get(err.status, "INTERNAL_ERROR")
        # Exactly the seed's three fields: dashboards and scripts already parse this shape.
        return {"error": {"code": code, "message": err.message, "status": err.status}}
    if family == "anthropic":
        inner: dict[str, Any] = {"type": _ANTHROPIC_TYPES.get(err.status, "api_error"), "message": err.message}
        inner.update(err.extra)
        return {"type": "error", "error": inner}
    body: dict[str, Any] = {"message": err.message, "type": err.type, "code": err.code, "param": err.param}
    body.update(err.extra)
    return {"error": body}


class ErrorResponse(Response):
    """An error spendgate answered itself (not a provider's answer relayed)."""


def error_response(err: ProxyError, family: Family = "openai", request_id: str | None = None) -> ErrorResponse:
    headers = dict(err.headers)
    if request_id:
        headers["x-spendgate-request-id"] = request_id
    return ErrorResponse(orjson.dumps(error_body(err, family)), status_code=err.status,
                         media_type="application/json", headers=headers)


def family_for_path(path: str) -> Family:
    if path.startswith("/v1/messages"):
        return "anthropic"
    return "seed" if path.startswith(SEED_PREFIXES) else "openai"
