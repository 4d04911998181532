"""The OpenAPI document served at /openapi.json, generated from the pydantic models of the HTTP edge."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from proxy.attribution import MAX_TAG_CHARS
from proxy.metrics.openapi import factory_paths
from proxy.requests import MAX_N, MAX_TOKENS_CAP

_OPEN = ConfigDict(extra="allow")  # provider fields spendgate does not read pass through untouched
Tag = Field(None, min_length=1, max_length=MAX_TAG_CHARS)
MaxTokens = Field(None, ge=1, le=MAX_TOKENS_CAP)


class Metadata(BaseModel):
    """spendgate's tags (removed before forwarding); other keys pass through to the provider."""

    model_config = _OPEN
    project: str | None = Tag
    agent: str | None = Tag
    station: str | None = Tag
    run: str | None = Tag
    issue: str | None = Tag
    actor: Literal["agent", "human"] | None = None
    retry_of: str | None = Tag


class ChatCompletionRequest(BaseModel):
    model_config = _OPEN
    model: str = Field(min_length=1)
    messages: list[dict[str, Any]] = Field(min_length=1)
    stream: bool | None = None
    stream_options: dict[str, Any] | None = None
    max_tokens: int | None = MaxTokens
    max_completion_tokens: int | None = MaxTokens
    n: int | None = Field(None, ge=1, le=MAX_N)
    metadata: Metadata | None = None


class CompletionRequest(BaseModel):
    model_config = _OPEN
    model: str = Field(min_length=1)
    prompt: str | list[Any]
    stream: bool | None = None
    max_tokens: int | None = MaxTokens
    n: int | None = Field(None, ge=1, le=MAX_N)
    metadata: Metadata | None = None


class EmbeddingRequest(BaseModel):
    model_config = _OPEN
    model: str = Field(min_length=1)
    input: str | list[Any]
    metadata: Metadata | None = None


class ResponsesRequest(BaseModel):
    model_config = _OPEN
    model: str = Field(min_length=1)
    input: str | list[Any] | None = None
    stream: bool | None = None
    max_output_tokens: int | None = MaxTokens
    metadata: Metadata | None = None


class MessagesRequest(BaseModel):
    model_config = _OPEN
    model: str = Field(min_length=1)
    messages: list[dict[str, Any]] = Field(min_length=1)
    max_tokens: int | None = MaxTokens
    stream: bool | None = None
    metadata: Metadata | None = None


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    code: str | int | None
    param: str | None


class OpenAIError(BaseModel):
    error: OpenAIErrorDetail


class AnthropicErrorDetail(BaseModel):
    type: str
    message: str


class AnthropicError(BaseModel):
    type: Literal["error"]
    error: AnthropicErrorDetail


class Call(BaseModel):
    """One recorded call (DESIGN §12)."""

    request_id: str
    started_at: str
    ended_at: str
    duration_ms: int
    status: Literal["ok", "error", "cancelled", "refused"]
    http_status: int
    org: str
    project: str | None
    agent: str | None
    station: str | None
    run: str | None
    issue: str | None
    actor: str | None
    retry_of: str | None
    endpoint: str
    provider: str
    model: str
    upstream_model: str | None
    input_tokens: int
    cached_input_tokens: int
    cache_write_tokens: int
    output_tokens: int
    reasoning_tokens: int
    cost_usd: float
    cost_nano: int
    usage_source: Literal["provider", "estimated"]
    enforcement: Literal["bypassed"] | None = None  # budgets not enforced: the ledger was down (allow)


class CallsPage(BaseModel):
    calls: list[Call]
    next_cursor: str | None


_PROXIED = [
    ("/v1/chat/completions", ChatCompletionRequest, "OpenAIError", "Chat completion (JSON or SSE stream)"),
    ("/v1/completions", CompletionRequest, "OpenAIError", "Legacy completion"),
    ("/v1/embeddings", EmbeddingRequest, "OpenAIError", "Embeddings"),
    ("/v1/responses", ResponsesRequest, "OpenAIError", "Responses API"),
    ("/v1/messages", MessagesRequest, "AnthropicError", "Anthropic Messages (JSON or SSE stream)"),
    ("/v1/messages/count_tokens", MessagesRequest, "AnthropicError", "Anthropic token count (free)"),
]
# Before OpenAPI 3.2's itemSchema, the schema of text/event-stream describes one event, read as an object.
_SSE_EVENT = {"type": "object", "properties": {"event": {"type": "string"}, "data": {"type": "string"},
                                               "id": {"type": "string"}, "retry": {"type": "integer"}}}
_ERROR_STATUSES = ("400", "401", "404", "409", "413", "422", "502", "504")
_IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key", "in": "header", "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[\\x20-\\x7e]+$"},
    "description": "Makes retries safe (docs/idempotency.md): copies of one request with the same key make one "
                   "upstream call; a replay carries `Idempotent-Replayed: true`; the same key with another body "
                   "is 422 (`idempotency_key_reused`); 409 while a copy is still running past the wait."}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _dashboard_paths(security: list[dict[str, list[str]]]) -> dict[str, Any]:
    """The web page, its assets, and the two small reads it needs (any valid key)."""
    html = {"description": "The dashboard page (it asks for a key; nothing it loads comes from another host)",
            "content": {"text/html": {"schema": {"type": "string"}}}}
    me = {"type": "object", "properties": {
        **{k: {"type": ["string", "null"]} for k in ("key_name", "org", "role", "project", "agent")},
        "currency": {"type": "string", "enum": ["USD", "EUR"]}, "fx_rate": {"type": ["number", "null"]}}}
    errors = {s: _json(_ref("OpenAIError"), "Error") for s in ("401",)}
    return {
        "/dashboard": {"get": {"summary": "The spend dashboard (HTML)", "responses": {"200": html}}},
        "/dashboard/assets/{name}": {"get": {
            "summary": "A script, style sheet or icon of the dashboard",
            "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {"200": {"description": "The file"}, "404": {"description": "No such asset"}}}},
        "/api/me": {"get": {"summary": "The presented key: name, org, role, pins, and the display currency",
                            "security": security, "responses": {"200": _json(me, "Who the key is"), **errors}}},
        "/api/prices": {"get": {
            "summary": "Configured model routes and their prices in USD per 1M tokens (no api_base, no key)",
            "security": security,
            "responses": {"200": _json({"type": "object"}, "{models: [...], catalog_version}"), **errors}}},
    }


def build_openapi(version: str = "0.1.0") -> dict[str, Any]:
    models = [ChatCompletionRequest, CompletionRequest, EmbeddingRequest, ResponsesRequest, MessagesRequest,
              OpenAIError, AnthropicError, CallsPage, Call]
    _, top = models_json_schema([(m, "validation") for m in models],  # type: ignore[misc]
                                ref_template="#/components/schemas/{model}")
    security: list[dict[str, list[str]]] = [{"bearer": []}, {"apiKey": []}]
    paths: dict[str, Any] = {}
    for path, request, error, summary in _PROXIED:
        responses = {"200": {"description": "The provider's answer, relayed (application/json or text/event-stream)",
                             "content": {"application/json": {"schema": {"type": "object"}},
                                         "text/event-stream": {"schema": _SSE_EVENT}}}}
        responses.update({s: _json(_ref(error), "Error in the endpoint's wire format") for s in _ERROR_STATUSES})
        paths[path] = {"post": {"summary": summary, "security": security, "responses": responses,
                                "parameters": [_IDEMPOTENCY_KEY],
                                "requestBody": {"required": True, "content": {"application/json": {
                                    "schema": _ref(request.__name__)}}}}}
    calls_params: list[dict[str, Any]] = [{"name": n, "in": "query", "required": False, "schema": {"type": "string"}}
                    for n in ("run", "issue", "agent", "station", "project", "cursor")]
    calls_params.append({"name": "limit", "in": "query", "required": False,
                         "schema": {"type": "integer", "minimum": 1, "maximum": 1000}})
    api_errors = {s: _json(_ref("OpenAIError"), "Error") for s in ("400", "401", "404")}
    paths["/api/calls"] = {"get": {"summary": "Recorded calls, newest first", "security": security,
                                   "parameters": calls_params,
                                   "responses": {"200": _json(_ref("CallsPage"), "One page"), **api_errors}}}
    paths["/api/calls/{request_id}"] = {"get": {
        "summary": "One recorded call", "security": security,
        "parameters": [{"name": "request_id", "in": "path", "required": True, "schema": {"type": "string"}}],
        "responses": {"200": _json(_ref("Call"), "The call"), **api_errors}}}
    paths["/v1/models"] = {"get": {"summary": "Configured model names", "security": security, "responses": {
        "200": _json({"type": "object"}, "Model list"), "401": _json(_ref("OpenAIError"), "Error")}}}
    admin_errors = {s: _json(_ref("OpenAIError"), "Error") for s in ("400", "401", "403", "404", "409", "503")}
    obj = {"type": "object"}
    paths["/api/budgets"] = {"get": {"summary": "Every budget counter the key may see", "security": security,
                                     "responses": {"200": _json(obj, "{budgets: [...], next_cursor}"),
                                                   **admin_errors}}}
    paths["/api/budgets/{name}/limit"] = {"put": {
        "summary": "Change a budget's limit at run time (admin)", "security": security,
        "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
        "requestBody": {"required": True, "content": {"application/json": {"schema": {
            "type": "object", "required": ["limit_usd"],
            "properties": {"limit_usd": {"type": "number", "minimum": 0, "maximum": 1e9}}}}}},
        "responses": {"200": _json(obj, "The new limit"), **admin_errors}}}
    paths["/api/estimate"] = {"post": {
        "summary": "Cost range and budget decision of a chat request, without calling the provider",
        "security": security, "requestBody": {"required": True, "content": {"application/json": {
            "schema": _ref("ChatCompletionRequest")}}},
        "responses": {"200": _json(obj, "{min_usd, expected_usd, max_usd, decision, budgets}"), **admin_errors}}}
    paths["/api/approvals"] = {"get": {
        "summary": "Approvals of the caller's org", "security": security,
        "parameters": [{"name": "status", "in": "query", "required": False, "schema": {
            "type": "string", "enum": ["pending", "approved", "denied", "expired"]}},
            {"name": "limit", "in": "query", "required": False,
             "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}],
        "responses": {"200": _json(obj, "{approvals: [...]}"), **admin_errors}}}
    for action in ("approve", "deny"):
        paths[f"/api/approvals/{{id}}/{action}"] = {"post": {
            "summary": f"{action.capitalize()} a pending approval (admin)", "security": security,
            "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
            "requestBody": {"required": False, "content": {"application/json": {"schema": {
                "type": "object", "properties": {"grant_usd": {"type": "number", "exclusiveMinimum": 0}}}}}},
            "responses": {"200": _json(obj, "The approval"), **admin_errors}}}
    for probe in ("/healthz", "/readyz"):
        paths[probe] = {"get": {"summary": "Probe", "responses": {"200": _json({"type": "object"}, "OK"),
                                                                  "503": _json({"type": "object"}, "Not ready")}}}
    text = {"schema": {"type": "string"}}
    paths["/metrics"] = {"get": {
        "summary": 'Prometheus metrics (docs/observability.md): admin keys of org "*" only, or no key from a '
                   "loopback or private address when server.metrics_public is on",
        "security": security,
        "responses": {"200": {"description": "Text exposition (OpenMetrics when the Accept header asks for it)",
                              "content": {"text/plain": text, "application/openmetrics-text": text}},
                      **{s: _json(_ref("OpenAIError"), "Error") for s in ("401", "403")}}}}
    paths.update(_dashboard_paths(security))
    factory, factory_schemas = factory_paths()
    paths.update(factory)
    return {
        "openapi": "3.1.0",
        "info": {"title": "spendgate", "version": version,
                 "description": "OpenAI- and Anthropic-compatible LLM proxy with inline metering"},
        "paths": paths,
        "components": {"schemas": {**top.get("$defs", {}), **factory_schemas}, "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"}}},
    }
