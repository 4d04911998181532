"""Alembic migrations of the store schema; `proxy.store.db.Store.open` runs them to head."""
