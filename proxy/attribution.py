"""Reads a call's tags: key pins win over `X-Spendgate-*` headers, which win over body `metadata`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from policies.attribution import ACTORS, TAG_DIMENSIONS, Attribution
from proxy.auth import Principal
from proxy.errors import InvalidRequest

MAX_TAG_CHARS = 128
_HEADER_FOR = {dim: "x-spendgate-" + dim.replace("_", "-") for dim in TAG_DIMENSIONS}


def attribute(
    principal: Principal, headers: Mapping[str, str], body: dict[str, Any] | None
) -> tuple[Attribution, bool]:
    """Build the Attribution and strip spendgate's own keys from `body["metadata"]` in place.

    Other metadata keys pass through untouched; a metadata object left empty is dropped. The second value
    says whether the body was changed (and so must be serialised again before forwarding).
    """
    from_meta = _take_metadata_tags(body) if body is not None else {}
    tags: dict[str, str] = {}
    for dim in TAG_DIMENSIONS:
        value = headers.get(_HEADER_FOR[dim])
        if value is not None:
            tags[dim] = _check(dim, value, f"header {_HEADER_FOR[dim]}")
        elif dim in from_meta:
            tags[dim] = from_meta[dim]
    if principal.project:
        tags["project"] = principal.project
    if principal.agent:
        tags["agent"] = principal.agent
    for required in principal.require_tags:
        if required not in tags:
            raise InvalidRequest(f"this key requires the `{required}` tag on every call: send header "
                                 f"{_HEADER_FOR[required]} (or metadata.{required})", param=required)
    actor = tags.pop("actor", "agent")
    if actor not in ACTORS:
        raise InvalidRequest(f"actor must be one of {', '.join(ACTORS)} (got {actor!r})", param="actor")
    return Attribution(org=principal.org, key=principal.key_name, actor=actor, **tags), bool(from_meta)


def _take_metadata_tags(body: dict[str, Any]) -> dict[str, str]:
    meta = body.get("metadata")
    if meta is None:
        return {}
    if not isinstance(meta, dict):
        raise InvalidRequest("metadata must be an object", param="metadata")
    found: dict[str, str] = {}
    for dim in TAG_DIMENSIONS:
        if dim in meta:
            found[dim] = _check(dim, meta.pop(dim), f"metadata.{dim}")
    if found and not meta:
        del body["metadata"]
    return found


def _check(dim: str, value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise InvalidRequest(f"{where} must be a string", param=dim)
    value = value.strip()
    if not value or len(value) > MAX_TAG_CHARS or not value.isprintable():
        raise InvalidRequest(
            f"{where} must be 1-{MAX_TAG_CHARS} printable characters (got {len(value)} characters)", param=dim
        )
    return value
