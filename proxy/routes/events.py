"""Placeholder: filled by the factory-metrics work in progress."""

from __future__ import annotations

from starlette.routing import Route

routes: list[Route] = []
