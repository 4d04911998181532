"""/openapi.json lists every route the app serves, with the methods it serves them with."""

from __future__ import annotations

import re
from pathlib import Path

from starlette.routing import Route

from proxy.app import create_app, load_config
from proxy.openapi import build_openapi

ROOT = Path(__file__).resolve().parents[3]
UNDOCUMENTED = {"/openapi.json"}  # the document itself

# Provider routes spendgate cannot meter answer 501 and are not part of its API.
def _not_metered(path: str) -> bool:
    return "{rest:path}" in path or path == "/v1/moderations"


def _shape(path: str) -> str:
    """/a/{x:path}/b -> /a/{}/b: parameter names and converters do not matter to a client."""
    return re.sub(r"\{[^}]*\}", "{}", path)


def test_every_served_route_and_method_is_in_the_document() -> None:
    settings, catalog = load_config(ROOT / "config.yaml")
    app = create_app(settings, catalog=catalog)
    doc = build_openapi()["paths"]
    served = {(_shape(r.path), m.lower()) for r in app.routes if isinstance(r, Route) for m in (r.methods or ())
              if m != "HEAD" and r.path not in UNDOCUMENTED and not _not_metered(r.path)}
    documented = {(_shape(path), method) for path, ops in doc.items() for method in ops}
    assert served - documented == set()
    assert documented - served == set()


def test_posted_events_schema_comes_from_the_validating_models() -> None:
    schemas = build_openapi()["components"]["schemas"]
    assert "SessionCompleted" in schemas and "costUsd" in schemas["SessionCompleted"]["properties"]
    assert set(schemas["SeedError"]["properties"]["error"]["required"]) == {"code", "message", "status"}
