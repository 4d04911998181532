"""Errors raised by the budget policies: one root, a few leaves carrying data, never HTTP codes."""

from __future__ import annotations


class PolicyError(Exception):
    """Root of every error raised by `policies`."""


class LedgerUnavailable(PolicyError):
    """The ledger's store (Redis) cannot be reached or timed out; the caller chooses fail-closed or allow."""


class LedgerUnseeded(LedgerUnavailable):
    """The ledger answers but has forgotten its counters (a Redis that restarted empty, or was flushed): they
    must be rebuilt from the store before anything is admitted. Unhandled, it fails closed like any outage."""


class InvalidCounters(PolicyError):
    """The counters of one operation cannot be handled together (duplicates, or several cluster hash slots)."""
