"""Budget policies: scopes, windows, the ledger, admission and settlement. Depends on `pricing` only."""
